"""`liteinfer convert hf`: a tiny random llama built here, converted, run by llama.cpp, and
compared with an independent numpy forward pass; tokenizer and chat template carried over."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from _tiny_llama import SAMPLE, make_tiny_llama

from liteinfer.convert.hf import convert_hf
from liteinfer.convert.reference import ReferenceLlama
from liteinfer.core.config import EngineSettings
from liteinfer.engines.llama import LlamaEngine


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "liteinfer", *map(str, args)], capture_output=True, text=True)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return make_tiny_llama(tmp_path_factory.mktemp("hf") / "tiny")


@pytest.fixture(scope="module")
def tiny_gguf(tiny, tmp_path_factory):
    out = tmp_path_factory.mktemp("gguf") / "tiny-f32.gguf"
    r = _cli("convert", "hf", tiny, out)
    assert r.returncode == 0, r.stderr
    return out


def _engine(path):
    return LlamaEngine(path, EngineSettings(n_ctx=256, n_batch=256, n_seq_max=1, type_k="f32", type_v="f32",
                                            flash_attn=False))


def test_logits_match_numpy_reference(tiny, tiny_gguf):
    from tokenizers import Tokenizer

    ids = Tokenizer.from_file(str(tiny / "tokenizer.json")).encode(SAMPLE).ids[:96]
    eng = _engine(tiny_gguf)
    try:
        got = eng.logits(ids)
    finally:
        eng.close()
    want = ReferenceLlama(tiny).forward(ids)
    assert got.shape == want.shape
    scale = np.abs(want).max()
    assert np.abs(got - want).max() < 1e-3 * scale, np.abs(got - want).max()
    assert (got.argmax(-1) == want.argmax(-1)).all()


def test_tokenizer_and_chat_template(tiny, tiny_gguf):
    from tokenizers import Tokenizer

    hf = Tokenizer.from_file(str(tiny / "tokenizer.json"))
    eng = _engine(tiny_gguf)
    try:
        assert eng.metadata("tokenizer.ggml.pre") == "gpt-2"  # chosen from tokenizer.json's structure
        for text in [SAMPLE, " leading space", "trailing spaces   ", "a\n\n\nb", "x" * 300, "don't 42nd 1,000,000"]:
            assert eng.tokenize(text, add_special=False) == hf.encode(text).ids, text
            assert eng.detokenize(hf.encode(text).ids) == text
        prompt = eng.apply_chat_template([{"role": "user", "content": "hi"}])
        assert prompt == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
        ids = eng.tokenize(prompt, add_special=False)
        assert ids[0] == hf.token_to_id("<|im_start|>")  # special tokens parse as one token
    finally:
        eng.close()


def test_tied_embeddings_and_f16(tmp_path):
    src = make_tiny_llama(tmp_path / "tied", tied=True, layers=1, seed=1)
    out = convert_hf(src, tmp_path / "tied-f16.gguf", outtype="f16", progress=False)
    ids = list(range(3, 60))
    eng = _engine(out)
    try:
        got = eng.logits(ids)
    finally:
        eng.close()
    want = ReferenceLlama(src).forward(ids)
    assert np.abs(got - want).max() < 2e-2 * np.abs(want).max()  # f16 weights
    assert (got.argmax(-1) == want.argmax(-1)).mean() > 0.95


def test_bf16_safetensors(tmp_path, tiny):
    """BF16 checkpoints (most HF models) are read without torch."""
    from safetensors.numpy import load_file

    src = tmp_path / "bf16"
    src.mkdir()
    for f in ("config.json", "tokenizer.json", "tokenizer_config.json"):
        (src / f).write_bytes((tiny / f).read_bytes())
    tensors = load_file(str(tiny / "model.safetensors"))
    header, blobs, off = {}, [], 0
    for name, arr in tensors.items():
        b = (arr.astype(np.float32).view(np.uint32) >> 16).astype("<u2").tobytes()  # truncate to bf16
        header[name] = {"dtype": "BF16", "shape": list(arr.shape), "data_offsets": [off, off + len(b)]}
        blobs.append(b)
        off += len(b)
    h = json.dumps(header).encode()
    (src / "model.safetensors").write_bytes(len(h).to_bytes(8, "little") + h + b"".join(blobs))
    out = convert_hf(src, tmp_path / "bf16.gguf", outtype="bf16", progress=False)
    eng = _engine(out)
    try:
        got = eng.logits(list(range(3, 40)))
    finally:
        eng.close()
    want = ReferenceLlama(src).forward(list(range(3, 40)))
    assert np.abs(got - want).max() < 2e-2 * np.abs(want).max()


def _broken_models(tmp_path, tiny):
    def copy(name, skip=(), edit=None):
        d = tmp_path / name
        d.mkdir()
        for f in tiny.iterdir():
            if f.name not in skip:
                (d / f.name).write_bytes(f.read_bytes())
        if edit:
            edit(d)
        return d

    def arch(d):
        cfg = json.loads((d / "config.json").read_text())
        cfg["architectures"] = ["BertModel"]
        (d / "config.json").write_text(json.dumps(cfg))

    def truncate(d):
        data = (d / "model.safetensors").read_bytes()
        (d / "model.safetensors").write_bytes(data[: len(data) // 2])

    def pre(d):
        tok = json.loads((d / "tokenizer.json").read_text())
        tok["pre_tokenizer"] = {"type": "Whitespace"}
        (d / "tokenizer.json").write_text(json.dumps(tok))

    return {
        "not a folder": tmp_path / "nothing-here",
        "no config.json": copy("noconfig", skip=("config.json",)),
        "not supported": copy("bert", edit=arch),
        "truncated": copy("trunc", edit=truncate),
        "no tokenizer.json": copy("notok", skip=("tokenizer.json",)),
        "pre-tokenizer": copy("pre", edit=pre),
    }


def test_bad_inputs(tmp_path, tiny):
    for expect, src in _broken_models(tmp_path, tiny).items():
        out = tmp_path / "out.gguf"
        r = _cli("convert", "hf", src, out)
        assert r.returncode == 1, (expect, r.stderr)
        assert r.stderr.startswith("error:") and len(r.stderr.strip().splitlines()) == 1, r.stderr
        assert expect in r.stderr, (expect, r.stderr)
        assert not out.exists() and not list(tmp_path.glob(".out.gguf*"))


@pytest.mark.torch
def test_tiny_lm_example_end_to_end(tmp_path):
    """examples/tiny_lm with a toy config: train -> HF folder -> convert -> quantize -> load -> generate."""
    pytest.importorskip("torch")
    from pathlib import Path

    from liteinfer.engines.generate import generate
    from liteinfer.engines.llama import SamplingParams

    root = Path(__file__).resolve().parents[1]
    out = tmp_path / "tiny_lm"
    r = subprocess.run([sys.executable, str(root / "examples/tiny_lm/train.py"), "--tiny", "--out", str(out)],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    for f in ("config.json", "model.safetensors", "tokenizer.json", "calib.txt", "heldout.txt", "model-f32.gguf"):
        assert (out / f).is_file(), f
    q = tmp_path / "tiny-q8.gguf"
    rq = _cli("quantize", out / "model-f32.gguf", q, "--type", "q8_0")
    assert rq.returncode == 0, rq.stderr
    eng = LlamaEngine(q, EngineSettings(n_ctx=128, n_seq_max=1))
    try:
        res = generate(eng, "Q: What is", SamplingParams(temperature=0.0, max_tokens=8))
        prompt = eng.apply_chat_template([{"role": "user", "content": "hi"}])
    finally:
        eng.close()
    assert res.completion_tokens > 0 or res.finish_reason == "stop"
    assert prompt.startswith("<|im_start|>user")
