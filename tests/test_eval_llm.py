"""`liteinfer eval ppl|kld` on the real engine: perplexity checked against the numpy reference,
KL divergence and top-1 agreement ordered as quantization error says, and bad inputs."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import numpy as np
import pytest
from _tiny_llama import corpus, make_tiny_llama

from liteinfer.convert.hf import convert_hf
from liteinfer.convert.reference import ReferenceLlama
from liteinfer.evaluate.llm import Reference, log_softmax, make_windows, perplexity
from liteinfer.quant.gguf.quantize import quantize

CTX = 64


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "liteinfer", *map(str, args)], capture_output=True, text=True)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    d = tmp_path_factory.mktemp("eval")
    hf = make_tiny_llama(d / "hf", layers=2)
    f32 = convert_hf(hf, d / "f32.gguf", progress=False)
    q8 = d / "q8_0.gguf"
    q4 = d / "q4_0.gguf"
    quantize(f32, q8, "q8_0")
    quantize(f32, q4, "q4_0")
    text = d / "heldout.txt"
    text.write_text("\n\n".join(corpus()[-60:]))
    return {"dir": d, "hf": hf, "f32": f32, "q8": q8, "q4": q4, "text": text}


def test_perplexity_matches_numpy_reference(models):
    from tokenizers import Tokenizer

    text = models["text"].read_text()
    r = perplexity(models["f32"], text, ctx=CTX, max_tokens=640)
    ids = Tokenizer.from_file(str(models["hf"] / "tokenizer.json")).encode(text).ids
    ref = ReferenceLlama(models["hf"])
    nll, n = 0.0, 0
    for w in make_windows(ids, CTX, 640):
        lp = log_softmax(ref.forward(w))[CTX // 2 - 1 : len(w) - 1]
        nll -= lp[np.arange(len(lp)), w[CTX // 2 :]].sum()
        n += len(lp)
    assert r.tokens == n
    assert abs(r.ppl - math.exp(nll / n)) / r.ppl < 1e-3


def test_cli_ppl_and_kld(models):
    r = _cli("eval", "ppl", "-m", models["q8"], "--text", models["text"], "--ctx", CTX, "--max-tokens", 512, "--json")
    assert r.returncode == 0, r.stderr
    ppl = json.loads(r.stdout)
    assert ppl["ppl"] > 1 and ppl["tokens"] > 0
    r = _cli("eval", "kld", "-m", models["q4"], "--ref", models["f32"], "--text", models["text"], "--ctx", CTX,
             "--max-tokens", 512)
    assert r.returncode == 0, r.stderr
    assert "KLD" in r.stdout and "top-1" in r.stdout


def test_kld_orders_quantization_error(models):
    ref = Reference(models["f32"], models["text"].read_text(), ctx=CTX, max_tokens=1024)
    same = ref.compare(models["f32"])
    q8 = ref.compare(models["q8"])
    q4 = ref.compare(models["q4"])
    assert same["kld"] < 1e-4 and same["top1"] == 1.0 and abs(same["ppl_ratio"] - 1) < 1e-4
    assert 0 < q8["kld"] < q4["kld"]
    assert q8["top1"] >= q4["top1"] and q8["top1"] > 0.9
    assert q8["kld_max"] >= q8["kld_p99"] >= 0


def test_bad_inputs(models, tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_text("   \n")
    short = tmp_path / "short.txt"
    short.write_text("hi")
    other = make_tiny_llama(tmp_path / "other", layers=1, vocab=300)
    other_gguf = convert_hf(other, tmp_path / "other.gguf", progress=False)
    cases = {
        "empty text": ["ppl", "-m", models["f32"], "--text", empty],
        "not found": ["ppl", "-m", models["f32"], "--text", tmp_path / "missing.txt"],
        "too short": ["ppl", "-m", models["f32"], "--text", short],
        "vocabulary": ["kld", "-m", other_gguf, "--ref", models["f32"], "--text", models["text"], "--ctx", CTX],
        "not a GGUF": ["ppl", "-m", models["text"], "--text", models["text"]],
    }
    for expect, args in cases.items():
        r = _cli("eval", *args)
        assert r.returncode == 1, (expect, r.stderr)
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error:") and expect in lines[0], (expect, r.stderr)
