"""The ONNX half of `liteinfer quantize`: quant/cli.py sends `*.onnx` inputs here.

    liteinfer quantize model.onnx out.onnx --type int8 --calib DATA
    liteinfer quantize model.onnx out.onnx --mixed --min-accuracy 0.98 --calib DATA [--max-size MB]

DATA: a text file for embedding models; an .npz (images, labels) or an image folder for
classifiers. The mixed search prints its plan: one line per weight node with type and loss.
"""

from __future__ import annotations

import argparse
import json
import sys

DEFAULT_TYPES = ("int2-b64", "int2-b32", "int2x4-10", "int2x4-25", "int2x8-10", "int4-b128", "int4-b64", "int4-b32",
                 "int4x8-25", "int4x8-50", "int8", "int8w", "fp16")


def add_onnx_arguments(p: argparse.ArgumentParser) -> None:
    """Flags only the ONNX path reads (`--type`, `--mixed`, `--calib` are shared with GGUF)."""
    g = p.add_argument_group("ONNX models (*.onnx)")
    g.add_argument("--min-accuracy", type=float, default=None,
                   help="floor for --mixed: mean cosine to FP32 (embeddings), accuracy ratio or top-1 "
                        "agreement to FP32 (classifiers)")
    g.add_argument("--max-size", type=float, default=None, metavar="MB", help="output file size budget (--mixed: the largest plan within it, or the smallest meeting --min-accuracy)")
    g.add_argument("--types", default=None,
                   help="comma list of candidate types for --mixed (default: int2-b64,int2-b32,int2x4-10,"
                        "int2x4-25,int2x8-10,int4-b128,int4-b64,int4-b32,int4x8-25,int4x8-50,int8,int8w,fp16; "
                        "int2* are for embedding tables only)")
    g.add_argument("--calib-limit", type=int, default=None, help="use at most N calibration inputs")
    g.add_argument("--accuracy-level", type=int, default=4, choices=[0, 1, 2, 3, 4],
                   help="MatMulNBits compute type (4 = int8 activations, fastest on CPU)")
    g.add_argument("--no-gptq", action="store_true", help="round to nearest instead of GPTQ")


def is_onnx(path: str) -> bool:
    return path.endswith(".onnx")


def run_onnx(args: argparse.Namespace) -> int:
    from liteinfer.quant.onnx.pipeline import quantize_onnx  # onnx, onnxruntime: on use (CLI start-up time)

    def say(msg: str) -> None:
        if sys.stderr.isatty() or getattr(args, "verbose", False):
            print(msg, file=sys.stderr, flush=True)

    types = [t.strip() for t in args.types.split(",")] if getattr(args, "types", None) else list(DEFAULT_TYPES)
    r = quantize_onnx(
        args.input, args.output, qtype=getattr(args, "type", None), mixed=bool(getattr(args, "mixed", False)),
        calib=getattr(args, "calib", None), min_accuracy=args.min_accuracy, max_size_mb=args.max_size if args.max_size is not None else getattr(args, "target_size", None),
        types=types, calib_limit=args.calib_limit, accuracy_level=args.accuracy_level,
        gptq=not args.no_gptq, progress=say,
    )
    if r.warning:
        print(f"warning: {r.warning}", file=sys.stderr)
    if getattr(args, "json", False):
        print(json.dumps({"out": str(r.out), "fp32_bytes": r.fp32_bytes, "out_bytes": r.out_bytes,
                          "size_ratio": r.out_bytes / r.fp32_bytes, "score": r.score, "metric": r.metric,
                          "plan": r.plan, "seconds": round(r.seconds, 1), "warning": r.warning}))
        return 0
    print(r.plan_text)
    score = f"; {r.metric} {r.score:.4f}" if r.score is not None else ""
    print(f"wrote {r.out}: {r.out_bytes / 1e6:.2f} MB, 1/{r.fp32_bytes / r.out_bytes:.2f} of "
          f"{r.fp32_bytes / 1e6:.2f} MB{score} ({r.seconds:.0f} s)")
    return 0
