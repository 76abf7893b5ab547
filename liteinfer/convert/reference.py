"""A numpy forward pass of a Hugging Face llama model: the independent check on conversion.

RMSNorm, RoPE in HF's rotate-half layout, grouped-query causal attention, SwiGLU MLP, all in
float32 (float64 accumulation where it is cheap). It reads the HF folder directly, so comparing
its logits with llama.cpp's on the converted GGUF tests the converter end to end (tensor
names, Q/K permutation, hyperparameters).

`hook(name, x)` sees the input of every linear layer under its GGUF tensor name
(`blk.0.attn_q.weight`, ...): the importance matrix and calibrated rounding use it.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

from liteinfer.convert.hf import _permute, load_config, tensor_map
from liteinfer.convert.safetensors_io import read_folder
from liteinfer.core.errors import LiteInferError

Hook = Callable[[str, np.ndarray], None]


class ReferenceLlama:
    def __init__(self, folder: str | Path | None = None, cfg: dict | None = None, weights: dict | None = None):
        """From a HF folder, or from an HF-style config dict and HF-named float32 weights."""
        if folder is not None:

            cfg = load_config(Path(folder))
            weights = read_folder(Path(folder))
        assert cfg is not None and weights is not None
        self.cfg = cfg
        self.w = {k: np.asarray(v, dtype=np.float32) for k, v in weights.items()}
        self.n_layer = cfg["num_hidden_layers"]
        self.n_head = cfg["num_attention_heads"]
        self.n_kv = cfg.get("num_key_value_heads", self.n_head)
        self.head_dim = cfg.get("head_dim") or cfg["hidden_size"] // self.n_head
        self.eps = float(cfg.get("rms_norm_eps", 1e-5))
        self.theta = float(cfg.get("rope_theta", 10000.0))
        self.tied = "lm_head.weight" not in self.w
        if self.tied:  # one matrix serves as embedding and output
            self.w["lm_head.weight"] = self.w["model.embed_tokens.weight"]

    def hf_names(self, gguf_name: str) -> list[str]:
        """The HF weight(s) behind a GGUF tensor name (a tied embedding is two)."""

        names = [hf for hf, gg in tensor_map(self.n_layer).items() if gg == gguf_name]
        if gguf_name == "token_embd.weight" and self.tied:
            names.append("lm_head.weight")
        return names

    def gguf_weight(self, gguf_name: str) -> np.ndarray:
        """A weight in llama.cpp's layout (Q/K rows permuted back to interleaved)."""

        w = self.w[self.hf_names(gguf_name)[0]]
        if gguf_name.endswith("attn_q.weight"):
            return _permute(w, self.n_head)
        if gguf_name.endswith("attn_k.weight"):
            return _permute(w, self.n_kv)
        return w

    def set_gguf_weight(self, gguf_name: str, w: np.ndarray) -> None:
        """Replace a weight given in llama.cpp's layout (as dequantized from a GGUF)."""
        if gguf_name.endswith("attn_q.weight"):
            w = unpermute(w, self.n_head)
        elif gguf_name.endswith("attn_k.weight"):
            w = unpermute(w, self.n_kv)
        for hf in self.hf_names(gguf_name):
            self.w[hf] = np.asarray(w, dtype=np.float32)

    @classmethod
    def from_gguf(cls, path: str | Path) -> ReferenceLlama:
        """Any llama GGUF (quantized tensors dequantized); Q/K rows un-permuted to HF's layout."""

        cfg, tensors = read_gguf_llama(path)
        names = {gg: hf for hf, gg in tensor_map(cfg["num_hidden_layers"]).items()}
        weights = {}
        for gg, arr in tensors.items():
            if gg.endswith("attn_q.weight"):
                arr = unpermute(arr, cfg["num_attention_heads"])
            elif gg.endswith("attn_k.weight"):
                arr = unpermute(arr, cfg["num_key_value_heads"])
            weights[names[gg]] = arr
        return cls(cfg=cfg, weights=weights)

    def rms(self, x: np.ndarray, weight: np.ndarray) -> np.ndarray:
        var = np.mean(x.astype(np.float64) ** 2, axis=-1, keepdims=True)
        return (x / np.sqrt(var + self.eps)).astype(np.float32) * weight

    def rope(self, x: np.ndarray, pos: np.ndarray) -> np.ndarray:
        hd = self.head_dim
        inv = 1.0 / (self.theta ** (np.arange(0, hd, 2, dtype=np.float64) / hd))
        ang = np.outer(pos, inv)
        cos = np.cos(np.concatenate([ang, ang], -1)).astype(np.float32)
        sin = np.sin(np.concatenate([ang, ang], -1)).astype(np.float32)
        half = hd // 2
        rotated = np.concatenate([-x[..., half:], x[..., :half]], -1)
        return x * cos[:, None, :] + rotated * sin[:, None, :]

    def linear(self, hf: str, gg: str, x: np.ndarray, hook: Hook | None) -> np.ndarray:
        if hook:
            hook(gg, x)
        return x @ self.w[hf].T

    def embed(self, ids) -> np.ndarray:
        return self.w["model.embed_tokens.weight"][np.asarray(ids)]

    def layer(self, i: int, x: np.ndarray, hook: Hook | None = None) -> np.ndarray:
        """One decoder block on the residual stream x [t, dim] (positions 0..t-1)."""
        t = x.shape[0]
        pos = np.arange(t)
        mask = np.triu(np.full((t, t), -np.inf, dtype=np.float32), 1)
        rep = self.n_head // self.n_kv
        p, g = f"model.layers.{i}.", f"blk.{i}."
        h = self.rms(x, self.w[p + "input_layernorm.weight"])
        q = self.linear(p + "self_attn.q_proj.weight", g + "attn_q.weight", h, hook)
        k = self.linear(p + "self_attn.k_proj.weight", g + "attn_k.weight", h, hook)
        v = self.linear(p + "self_attn.v_proj.weight", g + "attn_v.weight", h, hook)
        q = self.rope(q.reshape(t, self.n_head, self.head_dim), pos)
        k = self.rope(k.reshape(t, self.n_kv, self.head_dim), pos)
        v = v.reshape(t, self.n_kv, self.head_dim)
        k, v = np.repeat(k, rep, axis=1), np.repeat(v, rep, axis=1)
        q, k, v = q.transpose(1, 0, 2), k.transpose(1, 2, 0), v.transpose(1, 0, 2)  # heads first
        scores = q @ k / np.float32(np.sqrt(self.head_dim)) + mask
        scores = np.exp(scores - scores.max(-1, keepdims=True))
        att = scores / scores.sum(-1, keepdims=True)
        y = (att @ v).transpose(1, 0, 2).reshape(t, -1)
        x = x + self.linear(p + "self_attn.o_proj.weight", g + "attn_output.weight", y, hook)
        h = self.rms(x, self.w[p + "post_attention_layernorm.weight"])
        gate = self.linear(p + "mlp.gate_proj.weight", g + "ffn_gate.weight", h, hook)
        up = self.linear(p + "mlp.up_proj.weight", g + "ffn_up.weight", h, hook)
        act = gate / (1.0 + np.exp(-gate)) * up
        return x + self.linear(p + "mlp.down_proj.weight", g + "ffn_down.weight", act, hook)

    def head(self, x: np.ndarray, hook: Hook | None = None) -> np.ndarray:
        h = self.rms(x, self.w["model.norm.weight"])
        return self.linear("lm_head.weight", "output.weight", h, hook)

    def forward(self, ids: list[int] | np.ndarray, hook: Hook | None = None) -> np.ndarray:
        """Logits [len(ids), n_vocab] for one sequence starting at position 0."""
        x = self.embed(ids)
        for i in range(self.n_layer):
            x = self.layer(i, x, hook)
        return self.head(x, hook)

    def residuals(self, ids) -> list[np.ndarray]:
        """The residual stream entering each layer, and the final one: n_layer + 1 arrays."""
        xs = [self.embed(ids)]
        for i in range(self.n_layer):
            xs.append(self.layer(i, xs[-1]))
        return xs

    def forward_from(self, layer: int, x: np.ndarray) -> np.ndarray:
        """Logits from the residual stream entering `layer` (n_layer: just the head)."""
        for i in range(layer, self.n_layer):
            x = self.layer(i, x)
        return self.head(x)


def unpermute(w: np.ndarray, n_head: int) -> np.ndarray:
    """Inverse of the converter's Q/K permutation: llama.cpp's interleaved rows back to HF's halves."""
    return w.reshape(n_head, w.shape[0] // n_head // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def read_gguf_llama(path: str | Path) -> tuple[dict, dict]:
    """(HF-style config, GGUF-named float32 weights) of a llama-architecture GGUF."""
    # on use: gguf is heavy (start-up, memory)
    from gguf import GGUFReader

    # on use: gguf is heavy (start-up, memory)
    from gguf.quants import dequantize


    r = GGUFReader(str(path))

    def kv(key, default=None):
        f = r.fields.get(key)
        return f.contents() if f is not None else default

    arch = kv("general.architecture")
    if arch != "llama":
        raise LiteInferError(f"{path}: architecture {arch!r} is not llama")
    n_head = int(kv("llama.attention.head_count"))
    cfg = {"num_hidden_layers": int(kv("llama.block_count")), "hidden_size": int(kv("llama.embedding_length")),
           "intermediate_size": int(kv("llama.feed_forward_length")), "num_attention_heads": n_head,
           "num_key_value_heads": int(kv("llama.attention.head_count_kv", n_head)),
           "rms_norm_eps": float(kv("llama.attention.layer_norm_rms_epsilon", 1e-5)),
           "rope_theta": float(kv("llama.rope.freq_base", 10000.0))}
    key_len = kv("llama.attention.key_length")
    if key_len:
        cfg["head_dim"] = int(key_len)
    weights = {}
    for t in r.tensors:
        arr = dequantize(t.data, t.tensor_type).astype(np.float32, copy=False)
        weights[t.name] = arr.reshape([int(d) for d in reversed(t.shape)])
    return cfg, weights
