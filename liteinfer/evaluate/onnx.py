"""Accuracy of ONNX one-shot models: the data they read and the numbers they are judged by.

Data (also the quantizer's calibration sets):
  text:    a text file, one input per non-empty line (or fortune-style files split on '%')
  images:  an .npz with `images` (uint8 [N, H, W] or [N, H, W, C]) and optional `labels`,
           or a folder of images (labels from class-named subfolders when they match the model)

Metrics:
  classifier: accuracy on labelled data, top-1 agreement with a reference model (FP32)
  embedding:  cosine to the reference model's embeddings, retrieval agreement (for each text,
              is its nearest neighbour among the others the same under both models)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from liteinfer.core.errors import LiteInferError
from liteinfer.engines.onnx import load_model

CALIB_TOKENS = 64
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"}


def read_texts(path: str | Path, limit: int | None = None, min_chars: int = 8) -> list[str]:
    """Inputs from a text file: one per line, or '%'-separated records (fortune files)."""
    path = Path(path)
    if not path.is_file():
        raise LiteInferError(f"text file not found: {path}")
    raw = path.read_text(errors="replace")
    chunks = raw.split("\n%\n") if "\n%\n" in raw else raw.splitlines()
    texts = [" ".join(c.split()) for c in chunks]
    texts = [t for t in texts if len(t) >= min_chars]
    if limit:
        texts = texts[:limit]
    if not texts:
        raise LiteInferError(f"{path}: no usable text (empty calibration data)")
    return texts


def read_images(path: str | Path, labels: list[str] | None = None, limit: int | None = None) -> tuple[list, np.ndarray | None]:
    """(images, labels or None) from an .npz or a folder; images as arrays or file paths."""
    path = Path(path)
    if path.is_file() and path.suffix == ".npz":
        try:
            data = np.load(path)
            images = data["images"]
        except (OSError, ValueError, KeyError) as e:
            raise LiteInferError(f"{path}: expected an .npz with an 'images' array ({e})") from None
        y = data["labels"].astype(np.int64) if "labels" in data else None
        if limit:
            images, y = images[:limit], (y[:limit] if y is not None else None)
        if len(images) == 0:
            raise LiteInferError(f"{path}: no images (empty calibration data)")
        return list(images), y
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)[: limit or None]
        if not files:
            raise LiteInferError(f"{path}: no images (empty calibration data)")
        index = {name: i for i, name in enumerate(labels or [])}
        ys = [index.get(f.parent.name) for f in files]
        y = np.array(ys, dtype=np.int64) if all(v is not None for v in ys) else None
        return files, y
    raise LiteInferError(f"{path}: expected an .npz file or a folder of images")


@dataclass
class EvalSet:
    """Model-ready batches for one model kind: ORT feeds, plus what is needed to score them."""

    feeds: list[dict] = field(default_factory=list)
    labels: np.ndarray | None = None
    count: int = 0


def text_feeds(embedder, texts: list[str], batch: int = 32, max_tokens: int | None = None,
               by_length: bool = False) -> EvalSet:
    """Token batches, truncated to max_tokens (default: the model's limit) and padded per batch.

    Input order is kept unless `by_length` (calibration: less padding, same statistics).
    """
    feeds = []
    ids_all = []
    limit = min(max_tokens or embedder.max_length, embedder.max_length)
    for t in texts:
        ids = embedder.tokenizer.encode(t).ids
        if len(ids) > limit:  # keep [SEP] at the end
            ids = ids[: limit - 1] + ids[-1:]
        ids_all.append(ids)
    if by_length:
        ids_all.sort(key=len)
    for i in range(0, len(ids_all), batch):
        part = ids_all[i : i + batch]
        width = max(len(x) for x in part)
        ids = np.zeros((len(part), width), dtype=np.int64)
        mask = np.zeros_like(ids)
        for r, x in enumerate(part):
            ids[r, : len(x)], mask[r, : len(x)] = x, 1
        feeds.append({"input_ids": ids, "attention_mask": mask})
    return EvalSet(feeds=feeds, count=len(texts))


def image_feeds(classifier, images: list, labels: np.ndarray | None, batch: int = 32) -> EvalSet:
    arrays = [classifier.prepare(im) for im in images]
    feeds = [
        {classifier.prep.input: np.stack(arrays[i : i + batch]).astype(np.float32)}
        for i in range(0, len(arrays), batch)
    ]
    return EvalSet(feeds=feeds, labels=labels, count=len(arrays))


def load_eval_set(model, data: str | Path, limit: int | None = None, calibration: bool = False,
                  part: slice | None = None) -> EvalSet:
    """An EvalSet for `model` (Embedder or ImageClassifier) from a text file / npz / folder.

    `part` selects inputs after reading (calibration splits: fit / held-out check).
    `calibration`: texts cut to CALIB_TOKENS and sorted by length; every forward pass of a
    sensitivity search runs over this set, and long records add cost, not information.
    """
    part = part or slice(None)
    if model.kind == "embedding":
        texts = read_texts(data, limit=limit)[part]
        if not texts:
            raise LiteInferError(f"{data}: too few texts for this split (empty calibration data)")
        if calibration:
            return text_feeds(model, texts, max_tokens=CALIB_TOKENS, by_length=True)
        return text_feeds(model, texts)
    images, labels = read_images(data, model.labels, limit=limit)
    images, labels = images[part], (labels[part] if labels is not None else None)
    if not images:
        raise LiteInferError(f"{data}: too few images for this split (empty calibration data)")
    return image_feeds(model, images, labels)


def run_outputs(session, output: str, evalset: EvalSet) -> np.ndarray:
    return np.concatenate([session.run([output], feed)[0] for feed in evalset.feeds])


# ---------------------------------------------------------------- metrics


def cosine_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a / np.maximum(np.linalg.norm(a, axis=1, keepdims=True), 1e-12)
    b = b / np.maximum(np.linalg.norm(b, axis=1, keepdims=True), 1e-12)
    return np.sum(a * b, axis=1)


def retrieval_agreement(ref: np.ndarray, test: np.ndarray) -> float:
    """Fraction of rows whose nearest other row is the same under both embeddings."""
    def nearest(e):
        sim = e @ e.T
        np.fill_diagonal(sim, -np.inf)
        return sim.argmax(1)

    return float(np.mean(nearest(ref) == nearest(test)))


def kl_divergence(ref_logits: np.ndarray, test_logits: np.ndarray) -> np.ndarray:
    def log_softmax(x):
        x = x - x.max(1, keepdims=True)
        return x - np.log(np.exp(x).sum(1, keepdims=True))

    lp, lq = log_softmax(ref_logits.astype(np.float64)), log_softmax(test_logits.astype(np.float64))
    return np.sum(np.exp(lp) * (lp - lq), axis=1)


def compare_embeddings(ref: np.ndarray, test: np.ndarray) -> dict:
    cos = cosine_rows(ref, test)
    return {
        "n": int(len(cos)), "mean_cosine": float(cos.mean()), "min_cosine": float(cos.min()),
        "p05_cosine": float(np.percentile(cos, 5)), "retrieval_agreement": retrieval_agreement(ref, test),
    }


def compare_logits(ref: np.ndarray, test: np.ndarray, labels: np.ndarray | None) -> dict:
    agree = ref.argmax(1) == test.argmax(1)
    ref_p = np.exp(ref - ref.max(1, keepdims=True))
    confident = (ref_p.max(1) / ref_p.sum(1)) >= 0.5  # inputs the reference is sure about
    out = {
        "n": int(len(ref)),
        "top1_agreement": float(np.mean(agree)),
        # top-1 flips among near-ties say little: report agreement where the reference has p >= 0.5
        "n_confident": int(confident.sum()),
        "top1_agreement_confident": float(np.mean(agree[confident])) if confident.any() else float("nan"),
        "mean_kld": float(kl_divergence(ref, test).mean()),
    }
    if labels is not None:
        out["ref_accuracy"] = float(np.mean(ref.argmax(1) == labels))
        out["accuracy"] = float(np.mean(test.argmax(1) == labels))
        out["accuracy_ratio"] = out["accuracy"] / max(out["ref_accuracy"], 1e-12)
    return out


def evaluate(model_path: str | Path, data: str | Path, ref_path: str | Path | None = None,
             limit: int | None = None) -> dict:
    """Metrics of one model on data, compared with a reference model when given."""

    model = load_model(model_path)
    evalset = load_eval_set(model, data, limit=limit)
    output = model.meta.text.output if model.kind == "embedding" else model.prep.output
    test = run_outputs(model.session, output, evalset)
    result: dict = {"model": str(model_path), "kind": model.kind, "size_bytes": Path(model_path).stat().st_size}
    if ref_path is None:
        if model.kind == "embedding":
            raise LiteInferError("embedding evaluation compares with a reference model: give --ref FP32.onnx")
        if evalset.labels is None:
            raise LiteInferError(f"{data}: no labels, and no --ref model to compare with")
        result["accuracy"] = float(np.mean(test.argmax(1) == evalset.labels))
        result["n"] = evalset.count
        return result
    ref = load_model(ref_path)
    if ref.kind != model.kind:
        raise LiteInferError(f"reference is a {ref.kind} model, {model_path} is a {model.kind} model")
    ref_out = run_outputs(ref.session, output, evalset)
    result["ref_size_bytes"] = Path(ref_path).stat().st_size
    result["size_ratio"] = result["size_bytes"] / result["ref_size_bytes"]
    if model.kind == "embedding":
        result.update(compare_embeddings(ref_out, test))
    else:
        result.update(compare_logits(ref_out, test, evalset.labels))
    return result
