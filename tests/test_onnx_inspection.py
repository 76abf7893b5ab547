"""The inspection example end to end with a short training run: train, export, int8, evaluate."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.torch
ROOT = Path(__file__).resolve().parents[1]


def test_pipeline_short_training(tmp_path):
    pytest.importorskip("torch")
    if not Path("/usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz").exists():
        pytest.skip("dataset-fashion-mnist is not installed")
    env = {**os.environ, "PY": sys.executable, "OUT": str(tmp_path), "TRAIN_ARGS": "--epochs 1 --limit 6000"}
    r = subprocess.run(["bash", str(ROOT / "examples/inspection/pipeline.sh")], env=env, capture_output=True,
                       text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-2000:]
    assert (tmp_path / "fashion_cnn.int8.onnx").stat().st_size < (tmp_path / "fashion_cnn.onnx").stat().st_size / 3

    from liteinfer.evaluate.onnx import evaluate

    m = evaluate(tmp_path / "fashion_cnn.int8.onnx", tmp_path / "fashion_test.npz", tmp_path / "fashion_cnn.onnx",
                 limit=3000)
    assert m["ref_accuracy"] > 0.5  # a short run still learns (chance: 0.1)
    assert m["accuracy_ratio"] >= 0.98, m
    last = json.loads(r.stdout.strip().splitlines()[-1])
    assert last["n"] == 5 and 0 <= last["accuracy"] <= 1

    # mixed precision on the same model: the search meets its floor on the calibration data
    from liteinfer.cli import main

    mixed = tmp_path / "fashion_cnn.mixed.onnx"
    assert main(["quantize", str(tmp_path / "fashion_cnn.onnx"), str(mixed), "--mixed", "--min-accuracy", "0.99",
                 "--calib", str(tmp_path / "fashion_calib.npz")]) == 0
    mm = evaluate(mixed, tmp_path / "fashion_test.npz", tmp_path / "fashion_cnn.onnx", limit=3000)
    assert mm["accuracy_ratio"] >= 0.97, mm  # floor was met on calibration images; test split close
    assert mm["size_ratio"] < 1.0
