"""ONNX quantization: block-wise kernels against ORT, quantize -> load -> run, and bad inputs."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from onnx_models import SENTENCES, minilm_fp32

from liteinfer.cli import main
from liteinfer.quant.onnx import blockwise

CALIB = "/usr/share/games/fortunes/computers"


def test_gptq_beats_round_to_nearest_on_correlated_inputs():
    rng = np.random.default_rng(0)
    k, n = 128, 64
    mix = rng.standard_normal((k, k)) * 0.3 + np.eye(k)
    x = (rng.standard_normal((2048, k)) @ mix).astype(np.float32)  # correlated features
    w = rng.standard_normal((k, n)).astype(np.float32)
    h = x.T.astype(np.float64) @ x
    err_rtn = np.linalg.norm(x @ (blockwise.quantize_rtn(w, 4, 32).dequant() - w))
    err_gptq = np.linalg.norm(x @ (blockwise.quantize_gptq(w, h, 4, 32).dequant() - w))
    assert err_gptq < 0.8 * err_rtn, (err_gptq, err_rtn)


@pytest.mark.parametrize("bits,block", [(4, 32), (4, 128), (8, 32)])
def test_matmulnbits_layout_matches_onnxruntime(bits, block):
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(1)
    k, n = 200, 48  # K not a multiple of the block: padding path
    w = rng.standard_normal((k, n)).astype(np.float32)
    bq = blockwise.quantize_rtn(w, bits, block)
    b, s, zp = blockwise.matmulnbits_tensors(bq)
    node = helper.make_node("MatMulNBits", ["x", "B", "s", "zp"], ["y"], domain="com.microsoft",
                            K=k, N=n, bits=bits, block_size=block, accuracy_level=0)
    g = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, k])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, n])],
                          [numpy_helper.from_array(a, nm) for a, nm in ((b, "B"), (s, "s"), (zp, "zp"))])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)])
    sess = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
    x = rng.standard_normal((3, k)).astype(np.float32)
    np.testing.assert_allclose(sess.run(None, {"x": x})[0], x @ bq.dequant(), rtol=1e-4, atol=1e-3)


@pytest.mark.parametrize("qtype", ["int2-b32", "int2-b64", "int4-b32", "int8", "int2x4-10", "int2x8-10"])
def test_embedding_types_run_in_onnxruntime_as_simulated(qtype):
    """Every embedding-table type (GatherBlockQuantized 2/4/8-bit with fp16 scales, and the
    two-grid row split) looks up exactly the rows `dequant` simulates, at the bytes type_bytes
    charges; the split keeps the rows calibration uses most on the fine grid."""
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    from liteinfer.quant.onnx.quantize import Quantizer, type_bytes, weights_bytes

    rng = np.random.default_rng(3)
    vocab, dim = 1000, 64
    table = rng.standard_normal((vocab, dim)).astype(np.float32)
    node = helper.make_node("Gather", ["table", "ids"], ["y"], name="emb", axis=0)
    g = helper.make_graph([node], "g", [helper.make_tensor_value_info("ids", TensorProto.INT64, [None, None])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, None, dim])],
                          [numpy_helper.from_array(table, "table")])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    from liteinfer.quant.onnx.calibration import token_counts
    from liteinfer.quant.onnx.quantize import find_targets

    # used in calibration (padding masked out): hot although their ids are not low
    feeds = [{"ids": np.array([[7, 500, 7, 999, 0]]), "attention_mask": np.array([[1, 1, 1, 1, 0]])},
             {"ids": np.array([[500, 7, 7]])}]
    counts = token_counts(m, find_targets(m), feeds)["ids"]
    assert counts[[7, 500, 999, 0]].tolist() == [4, 2, 1, 0] and counts.sum() == 7
    q = Quantizer(m, token_counts={"ids": counts})
    built = q.build({"emb": qtype})
    assert abs(weights_bytes(built) - type_bytes(q.targets["emb"], qtype)) <= 32
    sess = ort.InferenceSession(built.SerializeToString(), providers=["CPUExecutionProvider"])
    ids = np.array([[0, 7, 500, 999, 3, 998]], np.int64)
    sim = q.block_quant(q.targets["emb"], qtype).dequant().T  # [vocab, dim]
    np.testing.assert_allclose(sess.run(None, {"ids": ids})[0][0], sim[ids[0]], rtol=2e-3, atol=2e-3)
    err = np.abs(sim - table).mean(1)
    if "x" in qtype:  # the used rows and the lowest ids on the fine grid, the rest 2-bit
        assert err[[7, 500, 999, 0, 1]].max() < 0.5 * err[[200, 600, 998]].min(), err
    bits = int(qtype[3]) if "x" not in qtype else 2
    assert np.mean(err) < {2: 0.4, 4: 0.12, 8: 0.01}[bits]


def test_split_int4x8_between_int4_and_int8_and_runs_in_onnxruntime():
    """int4x8-*: the most salient input rows in 8 bits cut GPTQ's int4 output error, and the
    built graph (two Gathers + two MatMulNBits) computes exactly the simulated weight."""
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    from liteinfer.quant.onnx.quantize import Quantizer, type_bytes, weights_bytes

    rng = np.random.default_rng(2)
    k, n = 256, 64
    scale = np.where(rng.random(k) < 0.1, 8.0, 1.0)  # a few loud input features, as after a norm
    x = ((rng.standard_normal((1024, k)) @ (rng.standard_normal((k, k)) * 0.2 + np.eye(k))) * scale).astype(np.float32)
    w = rng.standard_normal((k, n)).astype(np.float32)
    h = x.T.astype(np.float64) @ x
    err = {name: float(np.linalg.norm(x @ (wq - w))) for name, wq in (
        ("int4", blockwise.quantize_gptq(w, h, 4, 32).dequant()),
        ("x8-25", blockwise.quantize_split(w, 0.25, h).dequant()),
        ("x8-50", blockwise.quantize_split(w, 0.5, h).dequant()),
        ("int8", blockwise.quantize_gptq(w, h, 8, 32).dequant()),
    )}
    assert err["int8"] < err["x8-50"] < err["x8-25"] < 0.8 * err["int4"], err
    sq = blockwise.quantize_split(w, 0.25, h)
    assert len(sq.idx8) == 64 and set(sq.idx8) | set(sq.idx4) == set(range(k))
    assert np.diag(h)[sq.idx8].mean() > np.diag(h)[sq.idx4].mean()  # the loud rows went to 8 bits

    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "W"], ["y"], name="mm")], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, k])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, n])], [numpy_helper.from_array(w, "W")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    q = Quantizer(model, hessians={"x": h}, accuracy_level=0)
    built = q.build({"mm": "int4x8-25"})
    assert weights_bytes(built) == type_bytes(q.targets["mm"], "int4x8-25")
    sess = ort.InferenceSession(built.SerializeToString(), providers=["CPUExecutionProvider"])
    xs = x[:8]
    np.testing.assert_allclose(sess.run(None, {"x": xs})[0], xs @ q.block_quant(q.targets["mm"], "int4x8-25").dequant(),
                               rtol=1e-4, atol=1e-2)
    assert q.method["mm"] == "gptq"


def test_sensitivity_inputs_are_held_out(tmp_path):
    """--mixed ranks nodes on the held-out quarter of the calibration data, never on the part
    GPTQ fitted (there the fitted nodes look several times cheaper than they are)."""
    from liteinfer.quant.onnx.pipeline import _calib_sets

    texts = tmp_path / "calib.txt"
    texts.write_text("\n".join(f"calibration sentence number {i} about computers and disks" for i in range(40)))
    _, fit, check, sens, _, _ = _calib_sets(minilm_fp32(), texts, 16)
    assert (fit.count, check.count, sens.count) == (12, 4, 4)
    ids = lambda es: sorted(tuple(r[m.astype(bool)]) for f in es.feeds  # noqa: E731
                            for r, m in zip(f["input_ids"], f["attention_mask"], strict=True))
    assert ids(sens) == ids(check) and not set(ids(sens)) & set(ids(fit))


def test_knapsack_beats_greedy_path_at_a_budget():
    """Under a size budget the greedy path (best loss per byte first) buys small upgrades and
    then cannot afford the big one that matters; the knapsack plan within the same budget can."""
    from liteinfer.quant.onnx.quantize import Target, type_bytes
    from liteinfer.quant.onnx.sensitivity import greedy_path, knapsack_plan

    types = ["int4-b32", "int4x8-25", "int8w", "fp16"]
    fc = Target("fc", "MatMul", "w", (1280, 1000), "x", ["int4-b32", "int4x8-25", "fp16"])
    convs = [Target(f"c{i}", "Conv", f"c{i}", (64, 640, 1, 1), None, ["int8w", "fp16"]) for i in range(5)]
    sens = {"fc": {"int4-b32": 5.7e-4, "int4x8-25": 2.6e-4, "fp16": 0.0}}
    sens |= {c.node: {"int8w": 1e-4, "fp16": 0.0} for c in convs}
    targets = [fc, *convs]
    base = sum(type_bytes(t, t.choices[0]) for t in targets)
    # the fc upgrade (and 8 KB: the knapsack counts in KB, rounded up per node), not a conv more
    budget = base + type_bytes(fc, "int4x8-25") - type_bytes(fc, "int4-b32") + 8192
    greedy = [s for s in greedy_path(targets, sens, types, budget) if s.est_bytes <= budget][-1]
    best = knapsack_plan(targets, sens, types, budget)
    assert greedy.plan["fc"] == "int4-b32" and best.plan["fc"] == "int4x8-25"
    assert best.est_bytes <= budget and best.pred_loss < greedy.pred_loss
    assert knapsack_plan(targets, sens, types, base - 1) is None  # nothing fits


def _embed_cos(path_a: Path, path_b: Path) -> float:
    from liteinfer.engines.onnx import load_model

    a, b = load_model(path_a).embed(SENTENCES), load_model(path_b).embed(SENTENCES)
    return float(np.mean(np.sum(a * b, axis=1)))


def test_minilm_uniform_int4_and_int8(tmp_path, capsys):
    src = minilm_fp32()
    out4, out8 = tmp_path / "int4.onnx", tmp_path / "int8.onnx"
    assert main(["quantize", str(src), str(out4), "--type", "int4-b32", "--no-gptq"]) == 0
    assert main(["quantize", str(src), str(out8), "--type", "int8"]) == 0
    fp32 = src.stat().st_size
    assert out4.stat().st_size < fp32 / 6  # int4 everywhere, embedding table included
    assert out8.stat().st_size < fp32 / 3
    assert _embed_cos(src, out8) > 0.999
    assert _embed_cos(src, out4) > 0.95
    assert "wrote" in capsys.readouterr().out


def test_minilm_mixed_meets_floor(tmp_path, capsys):
    src, out = minilm_fp32(), tmp_path / "mixed.onnx"
    rc = main(["quantize", str(src), str(out), "--mixed", "--min-accuracy", "0.99", "--calib", CALIB,
               "--calib-limit", "24", "--types", "int4-b128,int8,fp16"])
    printed = capsys.readouterr().out
    assert rc == 0, printed
    assert "plan:" in printed and "MatMul" in printed
    from liteinfer.engines.onnx import load_model

    model = load_model(out)
    assert model.meta.quantization["score"] >= 0.99
    assert set(model.meta.quantization["plan"].values()) <= {"int4-b128", "int8", "fp16"}
    assert out.stat().st_size < src.stat().st_size / 3
    assert _embed_cos(src, out) > 0.98  # held-out sentences, not the calibration text


KILLED_QUANTIZE = """
import os, signal, sys
import onnx
from liteinfer.cli import main
real = onnx.save
def save_then_die(*args, **kwargs):
    real(*args, **kwargs)  # the output is written, not yet renamed into place
    os.kill(os.getpid(), signal.SIGKILL)
onnx.save = save_then_die
main(sys.argv[1:])
"""


def test_killed_quantize_leaves_files_the_next_run_cleans(tmp_path):
    """The quantizer's scratch folder lies beside the output, not in the system temp folder:
    a SIGKILLed run leaves it there under a recognisable name, and the next run removes it."""
    src, out_dir, tmp_dir = minilm_fp32(), tmp_path / "out", tmp_path / "sys-tmp"
    out_dir.mkdir()
    tmp_dir.mkdir()
    out = out_dir / "int8.onnx"
    r = subprocess.run([sys.executable, "-c", KILLED_QUANTIZE, "quantize", str(src), str(out), "--type", "int8"],
                       env={**os.environ, "TMPDIR": str(tmp_dir)}, capture_output=True, text=True)
    assert r.returncode == -signal.SIGKILL, r.stderr
    left = sorted(p.name for p in out_dir.iterdir())
    assert len(left) == 2 and all(n.startswith(".int8.onnx.") for n in left), left
    assert [p.name for p in tmp_dir.iterdir() if p.name != ".ses"] == []  # .ses: onnxruntime's session file
    assert main(["quantize", str(src), str(out), "--type", "int8"]) == 0
    assert sorted(p.name for p in out_dir.iterdir()) == ["int8.onnx"]


def _fails(args: list[str], capsys, out: Path) -> str:
    assert main(args) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "\n" not in err, err
    assert not out.exists() and not list(out.parent.glob(f".{out.name}*"))
    return err


def test_bad_inputs(tmp_path, capsys):
    src, out = minilm_fp32(), tmp_path / "out.onnx"
    cut = tmp_path / "cut.onnx"
    cut.write_bytes(src.read_bytes()[:1_000_000])
    assert "not a valid ONNX model" in _fails(["quantize", str(cut), str(out), "--type", "int8"], capsys, out)
    assert "unknown quantization type" in _fails(["quantize", str(src), str(out), "--type", "int3"], capsys, out)
    empty = tmp_path / "empty.txt"
    empty.write_text("\n\n")
    assert "empty calibration" in _fails(
        ["quantize", str(src), str(out), "--mixed", "--min-accuracy", "0.98", "--calib", str(empty)], capsys, out)
    assert "cannot be met" in _fails(
        ["quantize", str(src), str(out), "--mixed", "--min-accuracy", "0.98", "--max-size", "5",
         "--calib", CALIB, "--calib-limit", "4"], capsys, out)
    assert "min-accuracy" in _fails(
        ["quantize", str(src), str(out), "--mixed", "--min-accuracy", "1.5", "--calib", CALIB], capsys, out)
