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

Hook = Callable[[str, np.ndarray], None]


class ReferenceLlama:
    def __init__(self, folder: str | Path):
        from liteinfer.convert.hf import load_config
        from liteinfer.convert.safetensors_io import read_folder

        self.cfg = cfg = load_config(Path(folder))
        raw = read_folder(Path(folder))
        self.w = {k: np.asarray(v, dtype=np.float32) for k, v in raw.items()}
        self.n_layer = cfg["num_hidden_layers"]
        self.n_head = cfg["num_attention_heads"]
        self.n_kv = cfg.get("num_key_value_heads", self.n_head)
        self.head_dim = cfg.get("head_dim") or cfg["hidden_size"] // self.n_head
        self.eps = float(cfg.get("rms_norm_eps", 1e-5))
        self.theta = float(cfg.get("rope_theta", 10000.0))
        if "lm_head.weight" not in self.w:  # tied embeddings
            self.w["lm_head.weight"] = self.w["model.embed_tokens.weight"]

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

    def forward(self, ids: list[int] | np.ndarray, hook: Hook | None = None) -> np.ndarray:
        """Logits [len(ids), n_vocab] for one sequence starting at position 0."""
        ids = np.asarray(ids)
        t = len(ids)
        pos = np.arange(t)
        x = self.w["model.embed_tokens.weight"][ids]
        mask = np.triu(np.full((t, t), -np.inf, dtype=np.float32), 1)
        rep = self.n_head // self.n_kv
        for i in range(self.n_layer):
            p, g = f"model.layers.{i}.", f"blk.{i}."
            h = self.rms(x, self.w[p + "input_layernorm.weight"])
            q = self.linear(p + "self_attn.q_proj.weight", g + "attn_q.weight", h, hook)
            k = self.linear(p + "self_attn.k_proj.weight", g + "attn_k.weight", h, hook)
            v = self.linear(p + "self_attn.v_proj.weight", g + "attn_v.weight", h, hook)
            q = self.rope(q.reshape(t, self.n_head, self.head_dim), pos)
            k = self.rope(k.reshape(t, self.n_kv, self.head_dim), pos)
            v = v.reshape(t, self.n_kv, self.head_dim)
            k, v = np.repeat(k, rep, axis=1), np.repeat(v, rep, axis=1)
            scores = np.einsum("qhd,khd->hqk", q, k) / np.sqrt(self.head_dim) + mask
            scores = np.exp(scores - scores.max(-1, keepdims=True))
            att = scores / scores.sum(-1, keepdims=True)
            y = np.einsum("hqk,khd->qhd", att, v).reshape(t, -1)
            x = x + self.linear(p + "self_attn.o_proj.weight", g + "attn_output.weight", y, hook)
            h = self.rms(x, self.w[p + "post_attention_layernorm.weight"])
            gate = self.linear(p + "mlp.gate_proj.weight", g + "ffn_gate.weight", h, hook)
            up = self.linear(p + "mlp.up_proj.weight", g + "ffn_up.weight", h, hook)
            act = gate / (1.0 + np.exp(-gate)) * up
            x = x + self.linear(p + "mlp.down_proj.weight", g + "ffn_down.weight", act, hook)
        h = self.rms(x, self.w["model.norm.weight"])
        return self.linear("lm_head.weight", "output.weight", h, hook)
