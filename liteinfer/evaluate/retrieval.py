"""Retrieval accuracy of an ONNX embedding model: queries against a few hundred passages.

The retrieval set is made from any local text (fortune files, Debian docs): each record of
MIN_WORDS to MAX_WORDS words is cut after its first third; the first third is the query and the rest
its passage. Retrieval top-1 is the fraction of queries whose most similar passage (cosine,
among all passages) is their own. Against a reference (the FP32 model) we report both models'
retrieval top-1, their ratio, and the cosine of each embedding (queries and passages) to the
reference's.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from liteinfer.core.errors import LiteInferError
from liteinfer.engines.onnx import load_model
from liteinfer.evaluate.onnx import cosine_rows, read_texts, run_outputs, text_feeds

MIN_WORDS = 12
MAX_WORDS = 150  # longer records would be cut at the model's token limit
DEFAULT_PASSAGES = 300


def make_pairs(texts: list[str], limit: int | None = DEFAULT_PASSAGES) -> tuple[list[str], list[str]]:
    """(queries, passages): the first third of each long-enough record, and the rest of it."""
    queries, passages, seen = [], [], set()
    for t in texts:
        words = t.split()
        if not MIN_WORDS <= len(words) <= MAX_WORDS or t in seen:
            continue
        seen.add(t)
        k = max(4, len(words) // 3)
        queries.append(" ".join(words[:k]))
        passages.append(" ".join(words[k:]))
        if limit and len(passages) >= limit:
            break
    if len(passages) < 2:
        raise LiteInferError(f"too few records of {MIN_WORDS}-{MAX_WORDS} words for a retrieval set ({len(passages)})")
    return queries, passages


def retrieval_top1(queries: np.ndarray, passages: np.ndarray) -> float:
    q = queries / np.maximum(np.linalg.norm(queries, axis=1, keepdims=True), 1e-12)
    p = passages / np.maximum(np.linalg.norm(passages, axis=1, keepdims=True), 1e-12)
    return float(np.mean((q @ p.T).argmax(1) == np.arange(len(q))))


def _embed(model, texts: list[str]) -> np.ndarray:
    return run_outputs(model.session, model.meta.text.output, text_feeds(model, texts))


def evaluate_retrieval(model_path: str | Path, data: str | Path, ref_path: str | Path | None = None,
                       limit: int | None = DEFAULT_PASSAGES) -> dict:
    model = load_model(model_path)
    if model.kind != "embedding":
        raise LiteInferError(f"{model_path}: a {model.kind} model; retrieval needs an embedding model")
    queries, passages = make_pairs(read_texts(data), limit)
    q, p = _embed(model, queries), _embed(model, passages)
    out: dict = {"model": str(model_path), "size_bytes": Path(model_path).stat().st_size,
                 "passages": len(passages), "retrieval_top1": retrieval_top1(q, p)}
    if ref_path is None:
        return out
    ref = load_model(ref_path)
    if ref.kind != "embedding":
        raise LiteInferError(f"{ref_path}: a {ref.kind} model, not an embedding model like {model_path}")
    rq, rp = _embed(ref, queries), _embed(ref, passages)
    cos = cosine_rows(np.concatenate([rq, rp]), np.concatenate([q, p]))
    out["ref_size_bytes"] = Path(ref_path).stat().st_size
    out["size_ratio"] = out["size_bytes"] / out["ref_size_bytes"]
    out["ref_retrieval_top1"] = retrieval_top1(rq, rp)
    out["retrieval_ratio"] = out["retrieval_top1"] / max(out["ref_retrieval_top1"], 1e-12)
    out.update({"mean_cosine": float(cos.mean()), "min_cosine": float(cos.min()),
                "p05_cosine": float(np.percentile(cos, 5))})
    return out
