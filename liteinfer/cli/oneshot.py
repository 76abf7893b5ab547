"""`liteinfer embed` and `liteinfer classify`: one-shot models from the command line.

    liteinfer embed "a text" "another" [-m minilm-l6-v2 | model.onnx] [--json]
    liteinfer classify cat.jpg shoe.png [-m model.onnx] [--top-k 3] [--json]

Both run through the same service (engine + dynamic batcher) as the server, so a list of
inputs is batched the same way. `-` reads one input per line from stdin (texts) or the paths.
This module also gives the one-shot services the built-in model names (minilm-l6-v2,
efficientnet-lite0), converted on first use by convert/: tooling that only the CLI may import.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from liteinfer.core.config import load_config
from liteinfer.core.errors import LiteInferError


def _inputs(values: list[str]) -> list[str]:
    out: list[str] = []
    for v in values:
        out.extend(line for line in sys.stdin.read().splitlines() if line.strip()) if v == "-" else out.append(v)
    return out


# the converters (safetensors, onnx, torch) load when a built-in model is first named: start-up time
def _minilm() -> Path:
    # on use: converting MiniLM loads onnx (start-up time of every command)
    from liteinfer.convert.bert import cached_minilm

    return cached_minilm()


def _efficientnet_lite0() -> Path:
    # on use: exporting needs torch, an optional extra
    from liteinfer.convert.torch_export import cached_efficientnet_lite0

    return cached_efficientnet_lite0()


BUILTIN_MODELS = {"minilm-l6-v2": _minilm, "efficientnet-lite0": _efficientnet_lite0}


def register_builtin_models() -> None:
    """Let `liteinfer serve --embedding-model minilm-l6-v2` (and embed / classify) name them."""
    # on use: services pull in the schedulers and engines (start-up time of every command)
    from liteinfer.services import ONESHOT_SOURCES

    ONESHOT_SOURCES.update(BUILTIN_MODELS)


def _service(args, kind: str):
    from liteinfer.services import OneShotService  # onnxruntime & co. load with the command, not with --help

    config = load_config(args.config)
    default = {"embedding": config.embedding_model or "minilm-l6-v2",
               "classifier": config.classifier_model or "efficientnet-lite0"}[kind]
    settings = config.oneshot.model_copy(update={"adaptive": False})  # a CLI call is one burst
    return OneShotService.open(args.model or default, settings, kind=kind, config=config)


def embed_main(args: argparse.Namespace) -> int:
    texts = _inputs(args.text)
    if not texts:
        raise LiteInferError("no input text (give TEXT arguments, or - for stdin)")
    svc = _service(args, "embedding")
    try:
        vecs = svc.embed(texts)
    finally:
        svc.close()
    if args.json:
        data = [{"index": i, "text": t, "embedding": [round(float(x), 7) for x in v]}
                for i, (t, v) in enumerate(zip(texts, vecs))]
        json.dump({"model": svc.name, "dim": int(vecs.shape[1]), "data": data}, sys.stdout)
        print()
        return 0
    print(f"{svc.name}: {len(texts)} x {vecs.shape[1]} (L2-normalized)")
    for i, (t, v) in enumerate(zip(texts, vecs)):
        head = ", ".join(f"{x:+.4f}" for x in v[:6])
        print(f"[{i}] [{head}, ...]  {t[:60]!r}")
    if len(texts) > 1:  # the cosine matrix is what people look at first
        sim = vecs @ vecs.T
        print("cosine similarity:")
        for i in range(len(texts)):
            print(f"[{i}] " + " ".join(f"{sim[i, j]:6.3f}" for j in range(len(texts))))
    return 0


def classify_main(args: argparse.Namespace) -> int:
    paths = _inputs(args.image)
    if not paths:
        raise LiteInferError("no input image (give IMAGE paths, or - for stdin)")
    for p in paths:
        if not Path(p).is_file():
            raise LiteInferError(f"image not found: {p}")
    if args.top_k < 1:
        raise LiteInferError("--top-k must be at least 1")
    svc = _service(args, "classifier")
    try:
        preds = svc.classify([Path(p).read_bytes() for p in paths], top_k=args.top_k)
    finally:
        svc.close()
    if args.json:
        data = [{"index": i, "image": p, "labels": [{"label": x.label, "class_id": x.index, "score": round(x.score, 6)}
                                                   for x in row]}
                for i, (p, row) in enumerate(zip(paths, preds))]
        json.dump({"model": svc.name, "data": data}, sys.stdout)
        print()
        return 0
    for p, row in zip(paths, preds):
        print(f"{p}: " + " | ".join(f"{x.label} {x.score:.3f}" for x in row))
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    register_builtin_models()
    p = sub.add_parser("embed", help="sentence embeddings (ONNX, e.g. all-MiniLM-L6-v2)")
    p.add_argument("text", nargs="*", help="texts to embed; - reads one per line from stdin")
    p.add_argument("-m", "--model", default=None, help="minilm-l6-v2 (default) or a liteinfer .onnx file")
    p.add_argument("--config", default=None, help="device_config.json (oneshot settings, embedding_model)")
    p.add_argument("--json", action="store_true", help="print JSON: model, dim, data[].embedding")
    p.set_defaults(func=embed_main)

    p = sub.add_parser("classify", help="image classification (ONNX, e.g. EfficientNet-Lite0, the inspection CNN)")
    p.add_argument("image", nargs="*", help="image files; - reads paths from stdin")
    p.add_argument("-m", "--model", default=None, help="efficientnet-lite0 (default) or a liteinfer .onnx file")
    p.add_argument("--top-k", type=int, default=5)
    p.add_argument("--config", default=None, help="device_config.json (oneshot settings, classifier_model)")
    p.add_argument("--json", action="store_true", help="print JSON: model, data[].labels")
    p.set_defaults(func=classify_main)
