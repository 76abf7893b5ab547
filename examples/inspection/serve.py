"""Serve the inspection classifier over HTTP: POST /v1/classify with dynamic request batching.

    python examples/inspection/serve.py --model OUT/fashion_cnn.int8.onnx [--config device_config.json] [--port 8000]

`liteinfer serve --no-llm --classifier-model MODEL`: one-shot models only (no LLM loaded),
so it stays small. The batching settings (oneshot.max_batch, max_delay_ms, adaptive,
target_p95_ms) come from the device config that `liteinfer profile` wrote; without one, the
defaults. To serve it next to a chat
model instead: `liteinfer serve --classifier-model OUT/fashion_cnn.int8.onnx`.
"""

from __future__ import annotations

import argparse
import sys

from liteinfer.cli import main as liteinfer


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True, help="classifier .onnx (FP32 or quantized)")
    ap.add_argument("--config", default=None, help="device_config.json from `liteinfer profile`")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=8000)
    args = ap.parse_args(argv)
    forward = ["serve", "--no-llm", "--classifier-model", args.model, "--host", args.host, "--port", str(args.port)]
    if args.config:
        forward += ["--config", args.config]
    return liteinfer(forward)


if __name__ == "__main__":
    sys.exit(main())
