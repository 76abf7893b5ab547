"""BERT-family sentence encoders (all-MiniLM-L6-v2) from safetensors to ONNX, without torch.

The graph is written node by node with onnx.helper from the safetensors weights: dynamic batch
and sequence length, inputs input_ids / attention_mask (int64), outputs last_hidden_state and
sentence_embedding (masked mean pooling + L2 normalization, as the model card's
sentence-transformers pipeline does). Token type ids are always 0 for single sentences, so the
type-0 embedding is folded into the position table instead of being a third input.

Every linear layer is a plain MatMul with a [in, out] weight initializer followed by an Add, the
shape weight-only quantizers (MatMulNBits) look for. `numpy_forward` is the reference that the
conversion is checked against.
"""

from __future__ import annotations

import hashlib
import json
from math import erf
from pathlib import Path

from liteinfer.core.catalog import cache_dir, pull
from liteinfer.core.errors import LiteInferError
from liteinfer.core.files import atomic_output
from liteinfer.engines.onnx import Embedder
from liteinfer.engines.onnx_meta import ModelMeta, TextPrep, write_meta

OPSET = 17  # LayerNormalization
CONVERTER_VERSION = "2"


def load_bert(folder: Path) -> tuple[dict, dict]:
    """(config.json, weights as float32 numpy arrays) of a sentence-transformers BERT folder."""
    # on use: safetensors is heavy (start-up, memory)
    from safetensors.numpy import load_file

    folder = Path(folder)
    cfg_path, weights_path = folder / "config.json", folder / "model.safetensors"
    if not cfg_path.is_file() or not weights_path.is_file():
        raise LiteInferError(f"{folder}: expected config.json and model.safetensors (a BERT model folder)")
    cfg = json.loads(cfg_path.read_text())
    if cfg.get("model_type") != "bert":
        raise LiteInferError(f"{folder}: model_type {cfg.get('model_type')!r} is not bert")
    if cfg.get("hidden_act", "gelu") != "gelu":
        raise LiteInferError(f"{folder}: hidden_act {cfg['hidden_act']!r} is not supported (gelu only)")
    try:
        raw = load_file(str(weights_path))
    except Exception as e:  # safetensors raises its own error types on damaged files
        raise LiteInferError(f"{weights_path}: unreadable safetensors ({e})") from None
    weights = {k.removeprefix("bert."): v.astype("float32") for k, v in raw.items() if v.dtype.kind == "f"}
    return cfg, weights


def max_length_of(folder: Path, cfg: dict) -> int:
    st = Path(folder) / "sentence_bert_config.json"
    if st.is_file():
        return int(json.loads(st.read_text()).get("max_seq_length", cfg["max_position_embeddings"]))
    return int(cfg["max_position_embeddings"])


class _Graph:
    """Tiny helper: named initializers and nodes with generated output names."""

    def __init__(self):
        self.nodes, self.inits, self._n = [], [], 0

    def const(self, name: str, array) -> str:
        # on use: onnx is heavy (start-up, memory)
        from onnx import numpy_helper

        self.inits.append(numpy_helper.from_array(array, name))
        return name

    def op(self, op_type: str, *inputs: str, out: str | None = None, name: str | None = None, **attrs) -> str:
        # on use: onnx is heavy (start-up, memory)
        from onnx import helper

        self._n += 1
        out = out or f"{op_type.lower()}_{self._n}"
        name = name or f"{op_type}_{self._n}"
        self.nodes.append(helper.make_node(op_type, list(inputs), [out], name=name, **attrs))
        return out

    def linear(self, x: str, w, b, name: str) -> str:
        """y = x @ W.T + b with the weight stored transposed ([in, out]) for MatMul."""
        # on use: numpy is heavy (start-up, memory)
        import numpy as np

        wt = self.const(f"{name}.weight", np.ascontiguousarray(w.T))
        bias = self.const(f"{name}.bias", b)
        return self.op("Add", self.op("MatMul", x, wt, out=f"{name}.matmul", name=name), bias, out=f"{name}.out")


def build_graph(cfg: dict, w: dict):
    """The onnx.ModelProto of a BERT encoder with mean pooling, from config + weights."""
    # on use: numpy is heavy (start-up, memory)
    import numpy as np

    # on use: onnx is heavy (start-up, memory)
    from onnx import TensorProto, helper

    d, heads = cfg["hidden_size"], cfg["num_attention_heads"]
    hd, eps = d // heads, float(cfg.get("layer_norm_eps", 1e-12))
    g = _Graph()
    i64 = lambda name, v: g.const(name, np.array(v, dtype=np.int64))  # noqa: E731
    f32 = lambda name, v: g.const(name, np.array(v, dtype=np.float32))  # noqa: E731

    # Embeddings: word + (position + token type 0), then LayerNorm.
    word = g.const("embeddings.word_embeddings.weight", w["embeddings.word_embeddings.weight"])
    pos_table = w["embeddings.position_embeddings.weight"] + w["embeddings.token_type_embeddings.weight"][0]
    pos = g.const("embeddings.position_embeddings.weight", pos_table.astype(np.float32))
    seq_len = g.op("Gather", g.op("Shape", "input_ids"), i64("one", 1), axis=0)
    positions = g.op("Range", i64("zero", 0), seq_len, i64("one_step", 1))
    emb = g.op("Add", g.op("Gather", word, "input_ids", out="embeddings.word", name="embeddings.word"), g.op("Gather", pos, positions, name="embeddings.position"))
    x = g.op(
        "LayerNormalization", emb, g.const("embeddings.ln.w", w["embeddings.LayerNorm.weight"]),
        g.const("embeddings.ln.b", w["embeddings.LayerNorm.bias"]), axis=-1, epsilon=eps,
    )

    # Attention bias: 0 where attended, -1e9 at padding, shaped [B, 1, 1, S].
    mask_f = g.op("Cast", "attention_mask", to=TensorProto.FLOAT, out="mask_f")
    neg = g.op("Mul", g.op("Sub", f32("f_one", 1.0), mask_f), f32("neg_big", -1e9))
    bias = g.op("Unsqueeze", neg, i64("axes_1_2", [1, 2]))
    split_heads = i64("split_heads", [0, 0, heads, hd])
    merge_heads = i64("merge_heads", [0, 0, d])
    scale = f32("attn_scale", 1.0 / np.sqrt(hd))

    for i in range(cfg["num_hidden_layers"]):
        p = f"encoder.layer.{i}."
        lw = lambda k: w[p + k]  # noqa: E731, B023

        def heads_of(t: str, perm: list[int]) -> str:
            return g.op("Transpose", g.op("Reshape", t, split_heads), perm=perm)

        q = heads_of(g.linear(x, lw("attention.self.query.weight"), lw("attention.self.query.bias"), f"l{i}.q"), [0, 2, 1, 3])
        k = heads_of(g.linear(x, lw("attention.self.key.weight"), lw("attention.self.key.bias"), f"l{i}.k"), [0, 2, 3, 1])
        v = heads_of(g.linear(x, lw("attention.self.value.weight"), lw("attention.self.value.bias"), f"l{i}.v"), [0, 2, 1, 3])
        scores = g.op("Add", g.op("Mul", g.op("MatMul", q, k), scale), bias)
        ctx = g.op("MatMul", g.op("Softmax", scores, axis=-1), v)
        ctx = g.op("Reshape", g.op("Transpose", ctx, perm=[0, 2, 1, 3]), merge_heads)
        attn = g.linear(ctx, lw("attention.output.dense.weight"), lw("attention.output.dense.bias"), f"l{i}.o")
        x = g.op(
            "LayerNormalization", g.op("Add", x, attn), g.const(f"l{i}.ln1.w", lw("attention.output.LayerNorm.weight")),
            g.const(f"l{i}.ln1.b", lw("attention.output.LayerNorm.bias")), axis=-1, epsilon=eps,
        )
        h = g.linear(x, lw("intermediate.dense.weight"), lw("intermediate.dense.bias"), f"l{i}.ffn1")
        # exact (erf) GELU, as BERT uses; ORT fuses this pattern into one Gelu kernel
        erf = g.op("Erf", g.op("Mul", h, f32(f"l{i}.inv_sqrt2", 1 / np.sqrt(2))))
        h = g.op("Mul", g.op("Mul", h, f32(f"l{i}.half", 0.5)), g.op("Add", erf, f32(f"l{i}.one", 1.0)))
        out = g.linear(h, lw("output.dense.weight"), lw("output.dense.bias"), f"l{i}.ffn2")
        x = g.op(
            "LayerNormalization", g.op("Add", x, out), g.const(f"l{i}.ln2.w", lw("output.LayerNorm.weight")),
            g.const(f"l{i}.ln2.b", lw("output.LayerNorm.bias")), axis=-1, epsilon=eps,
        )
    g.op("Identity", x, out="last_hidden_state")

    # Masked mean pooling, then L2 normalization (sentence-transformers Pooling + Normalize).
    m3 = g.op("Unsqueeze", mask_f, i64("axes_2", [2]))
    summed = g.op("ReduceSum", g.op("Mul", x, m3), i64("axes_1", [1]), keepdims=0)
    count = g.op("Max", g.op("ReduceSum", mask_f, i64("axes_1b", [1]), keepdims=1), f32("min_count", 1e-9))
    mean = g.op("Div", summed, count)
    norm = g.op("Max", g.op("ReduceL2", mean, axes=[-1], keepdims=1), f32("min_norm", 1e-12))
    g.op("Div", mean, norm, out="sentence_embedding")

    dyn = ["batch", "sequence"]
    graph = helper.make_graph(
        g.nodes, "bert_mean_pooling",
        [helper.make_tensor_value_info(n, TensorProto.INT64, dyn) for n in ("input_ids", "attention_mask")],
        [
            helper.make_tensor_value_info("last_hidden_state", TensorProto.FLOAT, [*dyn, d]),
            helper.make_tensor_value_info("sentence_embedding", TensorProto.FLOAT, ["batch", d]),
        ],
        g.inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="liteinfer")
    model.ir_version = 8
    return model


def numpy_forward(cfg: dict, w: dict, input_ids, attention_mask) -> tuple:
    """Reference forward pass in float64 numpy: (last_hidden_state, sentence_embedding)."""

    # on use: numpy is heavy (start-up, memory)
    import numpy as np

    verf = np.vectorize(erf)
    w = {k: v.astype(np.float64) for k, v in w.items()}
    d, heads = cfg["hidden_size"], cfg["num_attention_heads"]
    hd, eps = d // heads, cfg.get("layer_norm_eps", 1e-12)
    b, s = input_ids.shape

    def ln(x, name):
        mu = x.mean(-1, keepdims=True)
        var = ((x - mu) ** 2).mean(-1, keepdims=True)
        return (x - mu) / np.sqrt(var + eps) * w[name + ".weight"] + w[name + ".bias"]

    def lin(x, name):
        return x @ w[name + ".weight"].T + w[name + ".bias"]

    x = (
        w["embeddings.word_embeddings.weight"][input_ids]
        + w["embeddings.position_embeddings.weight"][:s]
        + w["embeddings.token_type_embeddings.weight"][0]
    )
    x = ln(x, "embeddings.LayerNorm")
    mask = attention_mask.astype(np.float64)
    bias = (1.0 - mask)[:, None, None, :] * -1e9
    for i in range(cfg["num_hidden_layers"]):
        p = f"encoder.layer.{i}."
        q, k, v = (lin(x, p + f"attention.self.{n}").reshape(b, s, heads, hd).transpose(0, 2, 1, 3) for n in ("query", "key", "value"))
        sc = q @ k.transpose(0, 1, 3, 2) / np.sqrt(hd) + bias
        sc = np.exp(sc - sc.max(-1, keepdims=True))
        ctx = (sc / sc.sum(-1, keepdims=True)) @ v
        x = ln(x + lin(ctx.transpose(0, 2, 1, 3).reshape(b, s, d), p + "attention.output.dense"), p + "attention.output.LayerNorm")
        h = lin(x, p + "intermediate.dense")
        h = 0.5 * h * (1.0 + verf(h / np.sqrt(2.0)))
        x = ln(x + lin(h, p + "output.dense"), p + "output.LayerNorm")
    pooled = (x * mask[:, :, None]).sum(1) / np.maximum(mask.sum(1, keepdims=True), 1e-9)
    emb = pooled / np.maximum(np.linalg.norm(pooled, axis=-1, keepdims=True), 1e-12)
    return x, emb


def source_hash(folder: Path) -> str:
    """Content hash of the weights, config and tokenizer, plus the converter version."""
    h = hashlib.sha256(CONVERTER_VERSION.encode())
    for name in ("config.json", "model.safetensors", "tokenizer.json"):
        p = Path(folder) / name
        if p.is_file():
            with open(p, "rb") as f:
                for chunk in iter(lambda: f.read(1 << 22), b""):
                    h.update(chunk)
    return h.hexdigest()[:16]


def convert_bert(folder: Path, out: Path, name: str = "") -> Path:
    """Write a self-contained embedding .onnx (graph, weights, tokenizer, metadata) atomically."""
    # on use: onnx is heavy (start-up, memory)
    import onnx


    folder = Path(folder)
    cfg, weights = load_bert(folder)
    tok = folder / "tokenizer.json"
    if not tok.is_file():
        raise LiteInferError(f"{folder}: no tokenizer.json")
    model = build_graph(cfg, weights)
    meta = ModelMeta(
        kind="embedding", name=name or folder.name, source=str(folder),
        text=TextPrep(max_length=min(max_length_of(folder, cfg), cfg["max_position_embeddings"])),
    )
    write_meta(model, meta, tok.read_text())
    onnx.checker.check_model(model, full_check=False)
    with atomic_output(out) as tmp:
        onnx.save(model, str(tmp))
    return Path(out)


def cached_minilm() -> Path:
    """all-MiniLM-L6-v2 as FP32 ONNX in the cache, converted once per source hash."""

    folder = pull("minilm-l6-v2")
    out = cache_dir().parent / "onnx" / f"minilm-l6-v2-{source_hash(folder)}.onnx"
    if not out.exists():
        convert_bert(folder, out, name="minilm-l6-v2")
    return out


def verify_against_reference(folder: Path, onnx_path: Path, texts: tuple[str, ...] = (
    "The quick brown fox jumps over the lazy dog.", "Embeddings map sentences to vectors.",
)) -> float:
    """Lowest cosine between the ONNX model's and the numpy reference's embeddings."""
    # on use: numpy is heavy (start-up, memory)
    import numpy as np


    emb = Embedder(onnx_path)
    cfg, weights = load_bert(folder)
    worst = 1.0
    for text in texts:
        ids = emb.prepare(text)
        _, ref = numpy_forward(cfg, weights, np.array([ids]), np.ones((1, len(ids)), dtype=np.int64))
        worst = min(worst, float(emb.run([ids])[0] @ ref[0]))
    return worst
