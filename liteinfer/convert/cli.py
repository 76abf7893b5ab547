"""`liteinfer convert <source> ...`: model conversion commands.

Each source format is one `add_*` function that adds a subparser to `convert`'s own
subparsers; a new converter (e.g. `convert torch`) is one more function in SOURCES.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from liteinfer.convert.cli_onnx import add_minilm, add_torch


def add_hf(conv: argparse._SubParsersAction) -> None:
    p = conv.add_parser("hf", help="Hugging Face model folder (Llama, Mistral, Qwen2/3, Gemma 2/3, Phi-3, GPT-2) -> GGUF")
    p.add_argument("src", type=Path, help="folder with config.json, *.safetensors, tokenizer.json")
    p.add_argument("out", type=Path, help="output .gguf file")
    p.add_argument("--outtype", default="f32", choices=["f32", "f16", "bf16"], help="weight type (default f32)")
    p.add_argument("--pre", default=None,
                   help="llama.cpp pre-tokenizer name (default: read from tokenizer.json's structure)")
    p.set_defaults(func=_hf_main)


def _hf_main(args: argparse.Namespace) -> int:
    # on use: keeps `liteinfer --help` fast
    from liteinfer.convert.hf import convert_any

    out = convert_any(args.src, args.out, outtype=args.outtype, pre=args.pre, progress=sys.stderr.isatty())
    print(f"wrote {out} ({out.stat().st_size / 1e6:.1f} MB)")
    return 0


SOURCES = [add_hf, add_minilm, add_torch]


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("convert", help="convert models (HF safetensors -> GGUF, ...)")
    conv = p.add_subparsers(dest="source", metavar="SOURCE")
    for add in SOURCES:
        add(conv)
    p.set_defaults(func=lambda a: p.print_help() or 2)
