#!/usr/bin/env bash
# The inspection model end to end: train -> FP32 ONNX -> int8 (static QDQ) -> accuracy vs FP32.
#   bash examples/inspection/pipeline.sh                 # full run (3 epochs, a few minutes)
#   TRAIN_ARGS="--epochs 1 --limit 3000" bash examples/inspection/pipeline.sh   # quick check
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${PY:-.venv/bin/python}
OUT=${OUT:-$HOME/.cache/liteinfer/inspection}
# shellcheck disable=SC2086
nice -n 10 "$PY" examples/inspection/train.py --out-dir "$OUT" ${TRAIN_ARGS:-}
"$PY" -m liteinfer quantize "$OUT/fashion_cnn.onnx" "$OUT/fashion_cnn.int8.onnx" --type int8 \
    --calib "$OUT/fashion_calib.npz"
"$PY" -m liteinfer eval classify -m "$OUT/fashion_cnn.int8.onnx" --ref "$OUT/fashion_cnn.onnx" \
    --data "$OUT/fashion_test.npz"
"$PY" -m liteinfer eval classify -m "$OUT/fashion_cnn.int8.onnx" --data "$OUT/fashion_test.npz" --limit 5 --json
