"""AWQ-style scaling (`liteinfer quantize --awq`): the fold is exact in full precision, the
searched scales lower the quantized output error, the CLI path runs end to end, bad input fails."""

from __future__ import annotations

import re

import numpy as np
import pytest
from _tiny_llama import corpus, make_tiny_llama

from liteinfer.convert.hf import convert_hf
from liteinfer.convert.reference import ReferenceLlama
from liteinfer.core.config import EngineSettings
from liteinfer.engines.llama import LlamaEngine
from liteinfer.quant.gguf import awq


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    d = tmp_path_factory.mktemp("awq")
    src = convert_hf(make_tiny_llama(d / "hf", layers=2), d / "f32.gguf", progress=False)
    (d / "calib.txt").write_text("\n\n".join(corpus()[:200]))
    return d, src


@pytest.fixture(scope="module")
def cal(work):
    from liteinfer.quant.gguf.mixed import calibrate

    d, src = work
    return calibrate(src, d / "calib.txt", ctx=64, n_windows=4, hessians=True)


def _logits(path, ids):
    eng = LlamaEngine(path, EngineSettings(n_ctx=128, n_batch=128, n_seq_max=1, type_k="f32", type_v="f32",
                                           flash_attn=False))
    try:
        return eng.logits(ids)
    finally:
        eng.close()


def test_fold_keeps_the_f32_model(work, cal):
    """Arbitrary scales on every group: same logits (numpy reference and llama.cpp), other weights."""
    d, src = work
    reader, weights = awq.read_float_gguf(src)
    rng = np.random.default_rng(1)
    groups = awq.groups(set(weights))
    assert {g.producer.split(".")[-2] for g in groups} == {"attn_norm", "ffn_norm", "ffn_up", "output_norm"}
    scales = {g.producer: np.exp(rng.uniform(-1, 1, weights[g.consumers[0]].shape[1])).astype(np.float32)
              for g in groups}
    changed = awq.fold(weights, scales)
    out = d / "folded.gguf"
    awq.write_like(reader, out, changed)
    assert np.abs(changed["blk.0.attn_q.weight"] - weights["blk.0.attn_q.weight"]).max() > 0.01
    ids = cal.windows[0][:64]
    want, got = ReferenceLlama.from_gguf(src).forward(ids), ReferenceLlama.from_gguf(out).forward(ids)
    assert np.abs(got - want).max() < 1e-4 * np.abs(want).max()
    a, b = _logits(src, ids), _logits(out, ids)
    assert np.abs(a - b).max() < 1e-3 * np.abs(a).max()
    # the importance matrix of the folded model is the old one over s^2
    from liteinfer.quant.gguf.imatrix import compute_imatrix

    new = compute_imatrix(ReferenceLlama.from_gguf(out), cal.windows[:1]).imatrix()
    old = compute_imatrix(cal.ref, cal.windows[:1]).imatrix()
    scaled = awq.scale_imatrix(old, scales)
    for name in ("blk.1.attn_v.weight", "blk.0.ffn_down.weight", "output.weight"):
        np.testing.assert_allclose(scaled[name], new[name], rtol=1e-3, atol=1e-9)


def test_roundtrip_is_llama_cpp_rounding():
    import gguf
    from gguf.quants import dequantize, quantize

    w = np.random.default_rng(0).standard_normal((8, 256)).astype(np.float32)
    t = gguf.GGMLQuantizationType.Q4_0
    assert np.array_equal(awq.roundtrip(w, "q4_0"), dequantize(quantize(w, t), t))
    err4 = np.abs(awq.roundtrip(w, "q4_k") - w).mean()
    assert 0 < np.abs(awq.roundtrip(w, "q6_k") - w).mean() < err4 < 0.2


def test_output_error_and_outlier_channels():
    """The Hessian form equals ||dW X||^2, and on inputs with outlier channels scaling helps a lot."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((512, 256)).astype(np.float32)
    x[:, :4] *= 20  # a few salient channels, as in real LLM activations
    w = (rng.standard_normal((64, 256)) / 16).astype(np.float32)
    h = x.astype(np.float64).T @ x
    s = awq.channel_scales(np.sqrt(np.diag(h)), 0.5)
    direct = (awq.roundtrip(w * s, "q4_0") / s - w) @ x.T
    assert awq.output_error(w, "q4_0", h, s, None) == pytest.approx(float((direct.astype(np.float64) ** 2).sum()),
                                                                    rel=1e-4)
    names = [f"blk.0.attn_{p}.weight" for p in "qkv"]
    weights = {"blk.0.attn_norm.weight": np.ones(256, np.float32), **dict.fromkeys(names, w)}
    scales, res = awq.search(weights, dict.fromkeys(names, h), dict.fromkeys(names, "q4_0"), None)
    assert [r.producer for r in res] == ["blk.0.attn_norm.weight"]
    assert res[0].alpha > 0 and res[0].gain < -0.3, res


@pytest.mark.parametrize("qtype", ["q4_0", "q4_k"])
def test_search_lowers_calibration_error(work, cal, qtype):
    _, src = work
    _, weights = awq.read_float_gguf(src)
    scales, res = awq.search(weights, cal.hessians, dict.fromkeys(weights, qtype), cal.imatrix)
    assert len(res) == 7  # 2 layers x (attn_norm, ffn_norm, ffn_up) + output_norm
    assert all(r.err <= r.err_plain for r in res)
    assert sum(r.err < r.err_plain for r in res) > len(res) // 2, awq.summary(res)
    assert set(scales) == {r.producer for r in res if r.alpha > 0}


def test_cli_awq_runs_and_composes(work):
    from liteinfer.cli import main

    d, src = work
    fast = ["--ctx", "64", "--calib-windows", "4", "--threads", "1", "--calib", str(d / "calib.txt")]
    for extra in ([], ["--gptq"]):
        out = d / f"awq{'-gptq' if extra else ''}.gguf"
        assert main(["quantize", str(src), str(out), "--type", "q4_0", "--awq", *fast, *extra]) == 0
        ids = [5, 9, 23, 40, 41, 7, 100, 3]
        a, b = _logits(src, ids), _logits(out, ids)
        # a random model's top-1 flips on rounding noise (its logits are near ties), so compare
        # the whole logit vectors: the quantized model must still compute the same function
        cos = (a * b).sum(-1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1))
        assert np.isfinite(b).all() and cos.min() > 0.9, cos
    assert not list(d.glob("*awq-f32*"))  # the folded source stays in the temp folder


def _tensor_bytes(path, name):
    from liteinfer.core.gguf_header import read_header

    h = read_header(path)
    t = next(t for t in h.tensors if t.name == name)
    with open(path, "rb") as f:
        f.seek(h.data_offset + t.offset)
        return f.read(t.n_bytes)


def test_recipe_records_awq_and_replays_it(work, capfd):
    """A recipe planned on AWQ-scaled weights says so, and --recipe scales the same way (the
    scales fold into the norms: they change), while the same types without AWQ keep them."""
    import json

    from liteinfer.cli import main

    d, src = work
    fast = ["--ctx", "64", "--calib-windows", "4", "--threads", "1", "--calib", str(d / "calib.txt")]
    planned, recipe = d / "mixed-awq.gguf", d / "mixed-awq.recipe.json"
    assert main(["quantize", str(src), str(planned), "--mixed", "--target-bpw", "5", "--awq",
                 "--save-recipe", str(recipe), *fast]) == 0
    assert json.loads(recipe.read_text())["awq"] is True
    replay = d / "replay.gguf"
    capfd.readouterr()
    assert main(["quantize", str(src), str(replay), "--recipe", str(recipe), *fast]) == 0
    assert "AWQ-scaled" in capfd.readouterr().err
    plain_recipe = d / "plain.recipe.json"
    plain_recipe.write_text(json.dumps({**json.loads(recipe.read_text()), "awq": False}))
    plain = d / "plain.gguf"
    assert main(["quantize", str(src), str(plain), "--recipe", str(plain_recipe), *fast]) == 0
    norm = "blk.0.attn_norm.weight"  # F32 in every file: where the 1/s of q/k/v's scales fold in
    assert _tensor_bytes(plain, norm) == _tensor_bytes(src, norm)
    assert _tensor_bytes(replay, norm) != _tensor_bytes(src, norm)
    assert _tensor_bytes(planned, norm) != _tensor_bytes(src, norm)


def test_bad_inputs(work, capfd):
    import gguf

    from liteinfer.cli import main
    from liteinfer.quant.gguf.quantize import quantize

    d, src = work
    q4 = d / "already-q4.gguf"
    quantize(src, q4, "q4_0", threads=1)
    other = d / "gpt2.gguf"
    w = gguf.GGUFWriter(str(other), "gpt2")
    w.add_tensor("token_embd.weight", np.zeros((8, 32), np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    calib = str(d / "calib.txt")
    cases = {"needs calibration": [src, "--awq"], "F32/F16/BF16 source": [q4, "--awq", "--calib", calib],
             "llama-architecture": [other, "--awq", "--calib", calib]}
    for expect, args in cases.items():
        out = d / "bad-out.gguf"
        rc = main(["quantize", str(args[0]), str(out), *map(str, args[1:])])
        err = [ln for ln in capfd.readouterr().err.strip().splitlines() if not ln.startswith("warning:")]
        assert rc == 1 and len(err) == 1 and err[0].startswith("error:"), (expect, err)
        assert re.search(expect, err[0]), (expect, err[0])
        assert not out.exists() and not list(d.glob(".bad-out*")), expect
