"""`liteinfer eval acc` (next-token top-1 accuracy, alone and against a reference) on the real
SmolLM2 GGUF, and `eval retrieval` (queries vs passages made from fortunes, cosine to FP32) on
the real MiniLM ONNX model and its int8 quantization."""

from __future__ import annotations

import json
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from _tiny_llama import corpus
from onnx_models import minilm_fp32

from liteinfer.cli import main
from liteinfer.evaluate.llm import Reference, accuracy
from liteinfer.evaluate.retrieval import make_pairs, retrieval_top1

FORTUNES = Path("/usr/share/games/fortunes/fortunes")
CTX = 64


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "liteinfer", *map(str, args)], capture_output=True, text=True)


@pytest.fixture(scope="module")
def texts(tmp_path_factory):
    d = tmp_path_factory.mktemp("acc")
    docs = corpus()[-80:]
    prose = d / "prose.txt"
    prose.write_text("\n\n".join(docs))
    words = " ".join(docs).split()
    random.Random(0).shuffle(words)  # same words, no language: next-token accuracy must collapse
    shuffled = d / "shuffled.txt"
    shuffled.write_text(" ".join(words))
    return prose, shuffled


def test_next_token_accuracy_reads_the_next_token(default_model_path, texts):
    prose, shuffled = texts
    real = accuracy(default_model_path, prose.read_text(), ctx=CTX, max_tokens=256)
    noise = accuracy(default_model_path, shuffled.read_text(), ctx=CTX, max_tokens=256)
    assert real["tokens"] == noise["tokens"] == 4 * CTX // 2
    # a model that reads English predicts English's next token often; an off-by-one would not
    assert real["accuracy"] > 0.25 and real["accuracy"] > 2 * noise["accuracy"], (real, noise)
    same = Reference(default_model_path, prose.read_text(), ctx=CTX, max_tokens=256).compare(default_model_path)
    assert same["ref_accuracy"] == pytest.approx(real["accuracy"]) and same["accuracy_ratio"] == 1.0


def test_cli_acc(default_model_path, texts):
    prose, _ = texts
    r = _cli("eval", "acc", "-m", default_model_path, "--text", prose, "--ctx", CTX, "--max-tokens", 256, "--json")
    assert r.returncode == 0, r.stderr
    assert set(json.loads(r.stdout)) == {"accuracy", "tokens", "windows"}
    r = _cli("eval", "acc", "-m", default_model_path, "--ref", default_model_path, "--text", prose, "--ctx", CTX,
             "--max-tokens", 256)
    assert r.returncode == 0, r.stderr
    assert "ratio 1.0000" in r.stdout and "next-token top-1 accuracy" in r.stdout
    r = _cli("eval", "acc", "-m", default_model_path, "--text", prose.parent / "missing.txt")
    assert r.returncode == 1 and r.stderr.startswith("error:") and "not found" in r.stderr


def test_retrieval_pairs_and_top1():
    texts = [f"record {i} " + " ".join(f"w{i}_{j}" for j in range(14)) for i in range(5)] + ["too short"]
    q, p = make_pairs(texts + texts[:1])  # duplicates and short records are dropped
    assert len(q) == len(p) == 5
    assert [f"{a} {b}" for a, b in zip(q, p, strict=True)] == texts[:5]  # query: the first third
    assert all(len(a.split()) == 16 // 3 for a in q)
    e = np.random.default_rng(0).standard_normal((6, 8))
    assert retrieval_top1(e, e) == 1.0 and retrieval_top1(e, np.roll(e, 1, axis=0)) == 0.0


@pytest.mark.skipif(not FORTUNES.is_file(), reason="fortunes not installed (scripts/system_deps.sh)")
def test_retrieval_minilm_fp32_and_int8(tmp_path):
    src, q8 = minilm_fp32(), tmp_path / "int8.onnx"
    assert main(["quantize", str(src), str(q8), "--type", "int8"]) == 0
    r = _cli("eval", "retrieval", "-m", q8, "--ref", src, "--text", FORTUNES, "--limit", 100, "--json")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["passages"] == 100, out
    assert out["ref_retrieval_top1"] > 10 / 100, out  # ten times chance: the rest of a fortune from its first third
    assert out["mean_cosine"] > 0.99 and out["retrieval_ratio"] > 0.85, out  # int8: a hit or two either way
    assert out["size_ratio"] < 0.4
    r = _cli("eval", "retrieval", "-m", src, "--text", FORTUNES, "--limit", 50)
    assert r.returncode == 0 and "retrieval top-1" in r.stdout, r.stderr
    short = tmp_path / "short.txt"
    short.write_text("one line\n")
    r = _cli("eval", "retrieval", "-m", src, "--text", short)
    assert r.returncode == 1 and r.stderr.startswith("error:") and "too few records" in r.stderr, r.stderr
