"""Quantize -> load -> run for image classifiers: EfficientNet-Lite0 static int8 convs (+ int4 FC)."""

from __future__ import annotations

import numpy as np
import pytest

from liteinfer.cli import main

pytestmark = pytest.mark.torch


@pytest.fixture(scope="module")
def enet_and_calib(tmp_path_factory):
    pytest.importorskip("torch")
    pytest.importorskip("efficientnet_lite_pytorch")
    data = pytest.importorskip("skimage.data")
    from onnx_models import efficientnet_fp32

    tmp = tmp_path_factory.mktemp("enet")
    rng = np.random.default_rng(0)
    crops = []
    for name in ("astronaut", "coffee", "chelsea", "rocket", "hubble_deep_field", "immunohistochemistry"):
        img = getattr(data, name)()
        h, w = img.shape[:2]
        for _ in range(2):
            side = int(min(h, w) * rng.uniform(0.5, 1.0))
            y, x = rng.integers(0, h - side + 1), rng.integers(0, w - side + 1)
            crops.append(np.ascontiguousarray(img[y : y + side, x : x + side]))
    calib = tmp / "calib"
    calib.mkdir()
    from PIL import Image

    for i, c in enumerate(crops):  # a folder of images: the other calibration format
        Image.fromarray(c).save(calib / f"{i:02d}.png")
    return efficientnet_fp32(), calib, tmp


@pytest.mark.parametrize("qtype,max_ratio", [("int8", 1 / 3.3), ("int8w", 1 / 3.3), ("int4-b32", 1 / 3.7)])
def test_enet_quantize_load_run(enet_and_calib, qtype, max_ratio, capsys):
    data = pytest.importorskip("skimage.data")
    from liteinfer.engines.onnx import load_model

    src, calib, tmp = enet_and_calib
    out = tmp / f"{qtype}.onnx"
    assert main(["quantize", str(src), str(out), "--type", qtype, "--calib", str(calib)]) == 0, capsys.readouterr().err
    assert out.stat().st_size < src.stat().st_size * max_ratio
    fp32, quant = load_model(src), load_model(out)
    assert quant.meta.quantization["plan"] and quant.labels == fp32.labels
    methods = quant.meta.quantization["methods"]
    if qtype == "int8w":  # calibrated: GPTQ over im2col patches + bias correction on every conv
        assert {m for n, m in methods.items() if "Conv" in n} == {"gptq+bias"}
    if qtype == "int4-b32":  # the classifier is a Gemm: GPTQ must reach it through the rewrite
        assert [m for n, m in methods.items() if "Gemm" in n] == ["gptq"]
    for name in ("coffee", "rocket"):
        img = getattr(data, name)()
        assert quant.classify([img])[0][0].index == fp32.classify([img])[0][0].index


def test_int8_convs_need_calibration(enet_and_calib, capsys):
    src, _, tmp = enet_and_calib
    out = tmp / "nocalib.onnx"
    assert main(["quantize", str(src), str(out), "--type", "int8"]) == 1
    assert "calib" in capsys.readouterr().err and not out.exists()


def test_enet_mixed_reaches_quarter_size(enet_and_calib, capsys):
    """--mixed --max-size FP32/4: int8w convs (GPTQ + bias), some fp16, and an int4 classifier
    fit in 1/4 (the knapsack plan at the budget, after the built file's slack is used)."""
    data = pytest.importorskip("skimage.data")
    from liteinfer.engines.onnx import load_model

    src, calib, tmp = enet_and_calib
    out = tmp / "mixed-quarter.onnx"
    quarter = src.stat().st_size / 4e6
    rc = main(["quantize", str(src), str(out), "--mixed", "--max-size", f"{quarter:.3f}", "--calib", str(calib),
               "--types", "int4-b32,int8w,fp16"])
    printed = capsys.readouterr()
    assert rc == 0, printed.err
    assert src.stat().st_size / 4 - 64_000 <= out.stat().st_size <= src.stat().st_size / 4  # the budget is used
    assert "plan:" in printed.out and "int8w" in printed.out  # the plan is printed
    plan = load_model(out).meta.quantization["plan"]
    assert [q for n, q in plan.items() if "Gemm" in n] == ["int4-b32"]
    assert sum(q == "int8w" for q in plan.values()) >= 20 and "fp16" in plan.values()
    fp32, quant = load_model(src), load_model(out)
    for name in ("coffee", "rocket"):
        img = getattr(data, name)()
        assert quant.classify([img])[0][0].index == fp32.classify([img])[0][0].index


def test_enet_floor_too_few_held_out_warns(enet_and_calib, capsys):
    """12 calibration crops leave 3 held out: agreement moves in steps of 1/3, too coarse for 0.6."""
    src, calib, tmp = enet_and_calib
    out = tmp / "floor.onnx"
    rc = main(["quantize", str(src), str(out), "--type", "int8w", "--calib", str(calib), "--min-accuracy", "0.6"])
    printed = capsys.readouterr()
    assert rc == 0, printed.err
    assert "warning: the floor 0.6 was checked on 3 held-out inputs" in printed.err
