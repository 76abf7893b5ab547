"""ONNX Runtime engine for one-shot models: sentence embeddings and image classifiers.

    from liteinfer.engines.onnx import load_model
    model = load_model("minilm.onnx")          # Embedder or ImageClassifier, from the metadata
    model.embed(["a text", "another"])         # Embedder: [n, dim] float32, L2-normalized
    clf.classify([jpeg_bytes], top_k=5)        # ImageClassifier: [[Prediction(label, index, score)]]

For a request batcher the work splits in two steps with the same shape for both kinds:
    item = model.prepare(x)      # per request, cheap; raises LiteInferError on bad input (-> 4xx)
    outs = model.run(items)      # one batch; returns one result per item, in order
`prepare` validates and tokenizes / decodes; `run` pads (texts grouped by length so short ones
are not padded to the longest) and calls ORT. Results do not depend on how items are batched.

Every model is one .onnx file whose metadata (engines/onnx_meta.py) says what it is, how to
preprocess and its labels; FP32, converted and quantized models all load the same way.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from liteinfer.core.config import OneShotSettings
from liteinfer.core.errors import LiteInferError
from liteinfer.engines.onnx_meta import TOKENIZER_KEY, ModelMeta, meta_from_props
from liteinfer.hardware.cores import usable_cores


def open_session(path: str | Path, settings: OneShotSettings | None = None):
    """An ORT CPU session; threads from settings.intra_op_threads or the usable physical cores."""
    # on use: onnxruntime loads with the first model, not with the module (memory, start-up time)
    import onnxruntime as ort


    path = Path(path)
    if not path.is_file():
        raise LiteInferError(f"model file not found: {path}")
    settings = settings or OneShotSettings()
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = settings.intra_op_threads or usable_cores()
    opts.inter_op_num_threads = 1
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.log_severity_level = 3  # ORT warnings about unused initializers are not the user's business
    # ORT's pool threads spin after each run; in a server the next run waits for the HTTP
    # layer, which those spinning threads starve on a small machine
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    try:
        return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    except Exception as e:  # ORT raises Fail / InvalidGraph / InvalidProtobuf on bad files
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise LiteInferError(f"{path}: not a loadable ONNX model ({msg[:200]})") from None


class OnnxModel:
    """A session plus its metadata; the base of Embedder and ImageClassifier."""

    def __init__(self, path: str | Path, settings: OneShotSettings | None = None, session=None):
        self.path = Path(path)
        self.session = session or open_session(path, settings)
        self.meta: ModelMeta = meta_from_props(self.session.get_modelmeta().custom_metadata_map)
        self.input_names = [i.name for i in self.session.get_inputs()]

    @property
    def kind(self) -> str:
        return self.meta.kind

    def close(self) -> None:
        self.session = None


# ---------------------------------------------------------------- embeddings


class Embedder(OnnxModel):
    """Sentence embeddings: tokenizers -> ORT (mean pooling + L2 norm inside the graph)."""

    def __init__(self, path: str | Path, settings: OneShotSettings | None = None, session=None):
        # on use: tokenizers only for text models (memory)
        from tokenizers import Tokenizer

        super().__init__(path, settings, session)
        if self.meta.kind != "embedding" or self.meta.text is None:
            raise LiteInferError(f"{self.path}: a {self.meta.kind} model, not an embedding model")
        props = self.session.get_modelmeta().custom_metadata_map

        if TOKENIZER_KEY not in props:
            raise LiteInferError(f"{self.path}: text model carries no tokenizer in its metadata")
        self.tokenizer = Tokenizer.from_str(props[TOKENIZER_KEY])
        self.tokenizer.no_truncation()
        self.tokenizer.no_padding()
        self.max_length = self.meta.text.max_length
        self.output = self.meta.text.output
        out = {o.name: o for o in self.session.get_outputs()}
        if self.output not in out:
            raise LiteInferError(f"{self.path}: no output named {self.output!r}")
        self.dim = int(out[self.output].shape[-1])

    def prepare(self, text: str) -> list[int]:
        """Token ids (special tokens included); empty or too-long text -> LiteInferError."""
        if not isinstance(text, str):
            raise LiteInferError(f"input must be a string, got {type(text).__name__}")
        if not text.strip():
            raise LiteInferError("input text is empty")
        ids = self.tokenizer.encode(text).ids
        if len(ids) > self.max_length:
            raise LiteInferError(f"input is {len(ids)} tokens, this model takes at most {self.max_length}")
        return ids

    def run(self, items: list[list[int]], max_batch: int = 64):
        """Embeddings [len(items), dim] for prepared token lists, batched by similar length."""
        # on use: numpy with a model, not with the module (memory)
        import numpy as np

        out = np.zeros((len(items), self.dim), dtype=np.float32)
        order = sorted(range(len(items)), key=lambda i: len(items[i]))
        for start in range(0, len(order), max_batch):
            idx = order[start : start + max_batch]
            width = max(len(items[i]) for i in idx)
            ids = np.zeros((len(idx), width), dtype=np.int64)
            mask = np.zeros((len(idx), width), dtype=np.int64)
            for row, i in enumerate(idx):
                ids[row, : len(items[i])] = items[i]
                mask[row, : len(items[i])] = 1
            out[idx] = self.session.run([self.output], {"input_ids": ids, "attention_mask": mask})[0]
        return out

    def embed(self, texts: list[str] | str, max_batch: int = 64):
        """L2-normalized embeddings [n, dim] float32 for a list of texts (or one text -> [1, dim])."""
        if isinstance(texts, str):
            texts = [texts]
        if not texts:
            raise LiteInferError("no input texts")
        return self.run([self.prepare(t) for t in texts], max_batch=max_batch)

    def count_tokens(self, texts: list[str]) -> int:
        return sum(len(self.tokenizer.encode(t).ids) for t in texts)


# ---------------------------------------------------------------- image classification


@dataclass(frozen=True)
class Prediction:
    label: str
    index: int
    score: float  # softmax probability


class ImageClassifier(OnnxModel):
    """Image classification: PIL decode, resize + center crop, normalize, ORT, softmax top-k."""

    def __init__(self, path: str | Path, settings: OneShotSettings | None = None, session=None):
        super().__init__(path, settings, session)
        if self.meta.kind != "classifier" or self.meta.image is None:
            raise LiteInferError(f"{self.path}: a {self.meta.kind} model, not an image classifier")
        self.prep = self.meta.image
        self.labels = self.meta.labels

    def prepare(self, image: Any):
        """Network input [C, H, W] float32 from bytes, a path, a PIL image or an HxW(xC) uint8 array."""
        # on use: numpy and PIL only for image models (memory)
        import numpy as np
        from PIL import Image, UnidentifiedImageError

        p = self.prep
        try:
            if isinstance(image, (bytes, bytearray)):
                if not image:
                    raise LiteInferError("image is empty")
                img = Image.open(io.BytesIO(image))
            elif isinstance(image, (str, Path)):
                img = Image.open(image)
            elif isinstance(image, np.ndarray):
                img = Image.fromarray(image)
            elif isinstance(image, Image.Image):
                img = image
            else:
                raise LiteInferError(f"unsupported image type {type(image).__name__}")
            img.load()
            img = img.convert(p.mode)
        except LiteInferError:
            raise
        except (UnidentifiedImageError, OSError, ValueError, TypeError, Image.DecompressionBombError) as e:
            raise LiteInferError(f"not a readable image ({type(e).__name__})") from None
        w, h = img.size
        if w < 1 or h < 1:
            raise LiteInferError("image has no pixels")
        scale = p.resize / min(w, h)
        img = img.resize((max(p.size, round(w * scale)), max(p.size, round(h * scale))), Image.BILINEAR)
        w, h = img.size
        left, top = (w - p.size) // 2, (h - p.size) // 2
        img = img.crop((left, top, left + p.size, top + p.size))
        x = np.asarray(img, dtype=np.float32)
        if p.invert:
            x = 255.0 - x
        x = x / 255.0
        if x.ndim == 2:
            x = x[:, :, None]
        x = (x - np.array(p.mean, dtype=np.float32)) / np.array(p.std, dtype=np.float32)
        return np.ascontiguousarray(x.transpose(2, 0, 1))

    def logits(self, batch):
        """Raw model outputs [n, classes] for a preprocessed [n, C, H, W] batch."""
        return self.session.run([self.prep.output], {self.prep.input: batch})[0]

    def run(self, items: list, top_k: int = 5, max_batch: int = 64) -> list[list[Prediction]]:
        # on use: numpy with a model (memory)
        import numpy as np

        results: list[list[Prediction]] = []
        for start in range(0, len(items), max_batch):
            logits = self.logits(np.stack(items[start : start + max_batch]).astype(np.float32))
            probs = softmax(logits)
            for row in probs:
                top = np.argsort(-row)[:top_k]
                results.append([Prediction(self.label(int(i)), int(i), float(row[i])) for i in top])
        return results

    def classify(self, images: list, top_k: int = 5) -> list[list[Prediction]]:
        if not isinstance(images, list):
            images = [images]
        if not images:
            raise LiteInferError("no input images")
        return self.run([self.prepare(im) for im in images], top_k=top_k)

    def label(self, index: int) -> str:
        return self.labels[index] if index < len(self.labels) else str(index)


def softmax(x):
    # on use: numpy with a model (memory)
    import numpy as np

    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def load_model(path: str | Path, settings: OneShotSettings | None = None) -> Embedder | ImageClassifier:
    """Open any liteinfer ONNX model; its metadata decides the class."""
    session = open_session(path, settings)
    meta = meta_from_props(session.get_modelmeta().custom_metadata_map)
    cls = {"embedding": Embedder, "classifier": ImageClassifier}[meta.kind]
    return cls(path, settings, session=session)
