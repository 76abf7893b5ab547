"""`liteinfer convert minilm|torch ...`: the ONNX converters' subcommands (convert/cli.py lists them)."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_minilm(conv: argparse._SubParsersAction) -> None:
    p = conv.add_parser("minilm", help="all-MiniLM-L6-v2 (or any BERT sentence encoder folder) -> FP32 ONNX, no torch")
    p.add_argument("out", type=Path, help="output .onnx file")
    p.add_argument("--source", default="minilm-l6-v2",
                   help="catalog name or folder with config.json, model.safetensors, tokenizer.json")
    p.add_argument("--no-verify", action="store_true", help="skip the check against the numpy reference")
    p.set_defaults(func=_minilm_main)


def _minilm_main(args: argparse.Namespace) -> int:
    # on use: keeps `liteinfer --help` fast
    from liteinfer.convert.bert import convert_bert, verify_against_reference

    # on use: keeps `liteinfer --help` fast
    from liteinfer.core.catalog import pull

    folder = pull(args.source)
    out = convert_bert(folder, args.out, name=args.source if not Path(args.source).exists() else "")
    msg = f"wrote {out} ({out.stat().st_size / 1e6:.1f} MB)"
    if not args.no_verify:
        msg += f"; cosine to numpy reference {verify_against_reference(folder, out):.6f}"
    print(msg)
    return 0


def add_torch(conv: argparse._SubParsersAction) -> None:
    p = conv.add_parser("torch", help="PyTorch image classifier -> FP32 ONNX (needs the torch extra)")
    p.add_argument("model", help="efficientnet-lite0, or package.module:Class (with --weights)")
    p.add_argument("out", type=Path, help="output .onnx file")
    p.add_argument("--weights", type=Path, help="state_dict .pth for package.module:Class")
    p.add_argument("--labels", type=Path, help="text file, one class name per line")
    p.add_argument("--size", type=int, default=224, help="square input side (default 224)")
    p.add_argument("--resize", type=int, default=None, help="shorter side before center crop (default --size)")
    p.add_argument("--gray", action="store_true", help="single-channel (L) input")
    p.add_argument("--mean", type=float, nargs="+", default=None, help="per-channel mean of pixels/255")
    p.add_argument("--std", type=float, nargs="+", default=None, help="per-channel std of pixels/255")
    p.set_defaults(func=_torch_main)


def _torch_main(args: argparse.Namespace) -> int:
    # on use: keeps `liteinfer --help` fast
    from liteinfer.convert import torch_export as te

    # on use: keeps `liteinfer --help` fast
    from liteinfer.core.errors import LiteInferError

    # on use: pulls in pydantic (start-up, memory)
    from liteinfer.engines.onnx_meta import ImagePrep

    if args.model == "efficientnet-lite0":
        out = te.export_efficientnet_lite0(args.out)
    else:
        te.require_torch()
        if args.labels and not args.labels.is_file():
            raise LiteInferError(f"labels file not found: {args.labels}")
        labels = [ln.strip() for ln in args.labels.read_text().splitlines() if ln.strip()] if args.labels else []
        channels = 1 if args.gray else 3
        prep = ImagePrep(
            size=args.size, resize=args.resize or args.size, mode="L" if args.gray else "RGB",
            mean=args.mean or [0.5] * channels, std=args.std or [0.5] * channels,
        )
        module = te.load_module_spec(args.model, args.weights)
        out = te.export_module(module, args.out, prep, labels, name=args.model, source=str(args.weights or ""))
    print(f"wrote {out} ({out.stat().st_size / 1e6:.1f} MB)")
    return 0
