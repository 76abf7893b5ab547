"""One-shot model services: an ONNX model (engines/onnx.py) behind a dynamic batcher.

    svc = OneShotService.load("minilm-l6-v2", settings)      # or a path to any liteinfer .onnx
    vecs = svc.embed(["a text", "another"])                   # sync (CLI, benchmarks)
    vecs = await svc.embed_async(texts)                       # from the server's event loop
    preds = svc.classify([jpeg_bytes], top_k=5)               # ImageClassifier models

Inputs are validated and prepared (tokenized / decoded) by the caller before they are queued,
so bad input fails at once with a LiteInferError (HTTP 400) and never takes a queue slot.
The batcher then runs prepared items from all callers together.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from liteinfer.core.config import OneShotSettings
from liteinfer.core.errors import LiteInferError

# catalog names that become ONNX files on first use (converted once, cached by source hash)
BUILTIN = {
    "minilm-l6-v2": ("embedding", "liteinfer.convert.bert", "cached_minilm"),
    "efficientnet-lite0": ("classifier", "liteinfer.convert.torch_export", "cached_efficientnet_lite0"),
}


def resolve_oneshot(name: str) -> Path:
    """A liteinfer .onnx path for a file path or a built-in name (converted on first use)."""
    import importlib

    p = Path(name).expanduser()
    if p.exists():
        if p.is_dir() or p.suffix != ".onnx":
            raise LiteInferError(f"{p}: expected a .onnx file (convert models with `liteinfer convert`)")
        return p
    if name in BUILTIN:
        _, module, fn = BUILTIN[name]
        return getattr(importlib.import_module(module), fn)()
    if p.suffix == ".onnx" or "/" in name:
        raise LiteInferError(f"model file not found: {name}")
    raise LiteInferError(f"unknown one-shot model {name!r} (known: {', '.join(BUILTIN)}; or a path to a .onnx file)")


class OneShotService:
    """A loaded Embedder or ImageClassifier and the batcher that feeds it."""

    def __init__(self, model, settings: OneShotSettings | None = None, name: str | None = None, on_batch=None):
        from liteinfer.scheduler.dynamic import DynamicBatcher
        from liteinfer.scheduler.dynamic_policy import OneShotController

        self.model = model
        self.settings = settings or OneShotSettings()
        self.kind = model.kind
        self.name = name or model.meta.name or model.path.stem
        s = self.settings
        controller = OneShotController.from_settings(s) if s.adaptive else None
        if self.kind == "embedding":
            run, length = self._run_embed, len
        else:
            run, length = self._run_classify, None
        self.batcher = DynamicBatcher(run, max_batch=s.max_batch, max_delay_ms=s.max_delay_ms, max_queue=s.max_queue,
                                      length=length, controller=controller, on_batch=on_batch, name=self.name)

    @classmethod
    def load(cls, name: str, settings: OneShotSettings | None = None, kind: str | None = None, **kw) -> OneShotService:
        from liteinfer.engines.onnx import load_model

        model = load_model(resolve_oneshot(name), settings)
        if kind is not None and model.kind != kind:
            want = "an embedding" if kind == "embedding" else "an image classifier"
            raise LiteInferError(f"{name}: a {model.kind} model, not {want} model")
        return cls(model, settings, name=Path(name).stem if name.endswith(".onnx") else name, **kw)

    # ---------------------------------------------------------------- batched calls (worker thread)

    def _run_embed(self, items: list[list[int]]) -> list:
        return list(self.model.run(items, max_batch=len(items)))

    def _run_classify(self, items: list) -> list:
        import numpy as np

        from liteinfer.engines.onnx import softmax

        return list(softmax(self.model.logits(np.stack(items).astype(np.float32))))

    # ---------------------------------------------------------------- embeddings

    def prepare_texts(self, texts: list[str]) -> list[list[int]]:
        self._need("embedding")
        if not texts:
            raise LiteInferError("input is empty")
        items = []
        for i, t in enumerate(texts):
            try:
                items.append(self.model.prepare(t))
            except LiteInferError as e:
                raise LiteInferError(f"input[{i}]: {e}" if len(texts) > 1 else str(e)) from None
        return items

    def embed(self, texts: list[str]):
        """[n, dim] float32, L2-normalized."""
        import numpy as np

        return np.stack(self.batcher.map(self.prepare_texts(texts)))

    async def embed_async(self, texts: list[str]):
        import numpy as np

        return np.stack(await self.batcher.submit_many(self.prepare_texts(texts)))

    def count_tokens(self, items: list[list[int]]) -> int:
        return sum(len(x) for x in items)

    # ---------------------------------------------------------------- classification

    def prepare_images(self, images: list[Any]) -> list:
        self._need("classifier")
        if not images:
            raise LiteInferError("no input images")
        items = []
        for i, im in enumerate(images):
            try:
                items.append(self.model.prepare(im))
            except LiteInferError as e:
                raise LiteInferError(f"image[{i}]: {e}" if len(images) > 1 else str(e)) from None
        return items

    def top_k(self, probs, k: int) -> list:
        import numpy as np

        from liteinfer.engines.onnx import Prediction

        top = np.argsort(-probs)[: max(1, k)]
        return [Prediction(self.model.label(int(i)), int(i), float(probs[i])) for i in top]

    def classify(self, images: list[Any], top_k: int = 5) -> list[list]:
        return [self.top_k(p, top_k) for p in self.batcher.map(self.prepare_images(images))]

    async def classify_async(self, images: list[Any], top_k: int = 5) -> list[list]:
        items = await asyncio.to_thread(self.prepare_images, images)  # image decoding is not free
        return [self.top_k(p, top_k) for p in await self.batcher.submit_many(items)]

    # ---------------------------------------------------------------- lifecycle

    def _need(self, kind: str) -> None:
        if self.kind != kind:
            raise LiteInferError(f"{self.name} is a {self.kind} model, not {kind}")

    def stats(self) -> dict:
        return {"model": self.name, "kind": self.kind, **self.batcher.stats()}

    def close(self) -> None:
        self.batcher.close()
        self.model.close()
