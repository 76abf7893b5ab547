"""GPTQ on llama.cpp's own grid: the codes of a quantized GGUF re-chosen, scales untouched.

llama.cpp's quantizer picks each block's scales (importance-weighted, with the imatrix) and
rounds every weight to the nearest code on that grid. Here the grid stays and the codes are
chosen by GPTQ (quant/gptq.py) with the layer's calibration Hessian, which minimizes the
layer-output error instead of each weight's own. The scales stay byte-for-byte llama.cpp's;
only the code bits change, so the file is rewritten in place (same type, same size) and
llama.cpp's kernels run it unchanged.

Supported grids (value = A * code + B per weight): Q4_0, Q8_0, Q4_K, Q5_K, Q6_K. Other
types (Q2_K, Q3_K, IQ*) keep llama.cpp's rounding.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from gguf import GGMLQuantizationType
from gguf.quants import dequantize
from tqdm import tqdm

from liteinfer.core.catalog import check_gguf
from liteinfer.quant.gptq import gptq_round, spans

QK = 256
SUPPORTED = {"q4_0", "q8_0", "q4_k", "q5_k", "q6_k"}


def _f16(b: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(b).view(np.float16).astype(np.float64)


def _k_scale_min(scales: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Q4_K/Q5_K 6-bit sub-block scales and mins (8 each) from their 12 packed bytes."""
    s = scales.reshape(-1, 3, 4)
    d, m, md = s[:, 0], s[:, 1], s[:, 2]
    sc = np.concatenate([d & 0x3F, (md & 0x0F) | ((d >> 2) & 0x30)], axis=-1)
    mn = np.concatenate([m & 0x3F, (md >> 4) | ((m >> 2) & 0x30)], axis=-1)
    return sc.astype(np.float64), mn.astype(np.float64)


def grid(qtype: str, blocks: np.ndarray) -> tuple[np.ndarray, np.ndarray, int, int]:
    """Per-weight (A, B) with value = A*code + B, and the code range, for raw blocks [n, bytes]."""
    if qtype == "q4_0":
        d = np.repeat(_f16(blocks[:, :2]), 32, axis=1)
        return d, -8 * d, 0, 15
    if qtype == "q8_0":
        d = np.repeat(_f16(blocks[:, :2]), 32, axis=1)
        return d, np.zeros_like(d), -127, 127
    if qtype in ("q4_k", "q5_k"):
        d, dmin = _f16(blocks[:, 0:2]), _f16(blocks[:, 2:4])
        sc, mn = _k_scale_min(blocks[:, 4:16])
        a = np.repeat(d * sc, 32, axis=1)
        b = np.repeat(-dmin * mn, 32, axis=1)
        return a, b, 0, 15 if qtype == "q4_k" else 31
    if qtype == "q6_k":
        scales = blocks[:, 192:208].view(np.int8).astype(np.float64)
        d = _f16(blocks[:, 208:210])
        a = np.repeat(d * scales, 16, axis=1)
        return a, -32 * a, 0, 63
    raise ValueError(f"no GPTQ grid for {qtype}")


def encode(qtype: str, blocks: np.ndarray, codes: np.ndarray) -> np.ndarray:
    """The same blocks with their code bits replaced (scales untouched). codes [n, block]."""
    out = blocks.copy()
    c = codes.astype(np.int64)
    if qtype == "q4_0":
        out[:, 2:18] = (c[:, :16] | (c[:, 16:] << 4)).astype(np.uint8)
    elif qtype == "q8_0":
        out[:, 2:34] = c.astype(np.int8).view(np.uint8)
    elif qtype in ("q4_k", "q5_k"):
        lo = c & 0x0F
        sub = lo.reshape(-1, 4, 2, 32)  # 4 chunks of 64 weights: sub-blocks 2k (low nibble), 2k+1 (high)
        qs = (sub[:, :, 0] | (sub[:, :, 1] << 4)).reshape(-1, 128).astype(np.uint8)
        if qtype == "q4_k":
            out[:, 16:144] = qs
        else:
            hi = ((c >> 4) & 1).reshape(-1, 8, 32)  # bit s of qh[j] = high bit of sub-block s, weight j
            qh = np.zeros((c.shape[0], 32), dtype=np.int64)
            for s in range(8):
                qh |= hi[:, s] << s
            out[:, 16:48] = qh.astype(np.uint8)
            out[:, 48:176] = qs
    elif qtype == "q6_k":
        e = c.reshape(-1, 2, 128)  # two halves of 128
        lo, hi = e & 0x0F, (e >> 4) & 0x03
        ql = (lo[:, :, :64] | (lo[:, :, 64:] << 4)).reshape(-1, 128)
        h4 = hi.reshape(-1, 2, 4, 32)
        qh = (h4[:, :, 0] | (h4[:, :, 1] << 2) | (h4[:, :, 2] << 4) | (h4[:, :, 3] << 6)).reshape(-1, 64)
        out[:, 0:128] = ql.astype(np.uint8)
        out[:, 128:192] = qh.astype(np.uint8)
    else:
        raise ValueError(f"no GPTQ encoder for {qtype}")
    return out


def gptq_codes(w: np.ndarray, h: np.ndarray, a: np.ndarray, b: np.ndarray, cmin: int, cmax: int,
               damp: float = 0.01, block: int = 128) -> np.ndarray:
    """Codes [rows, cols] for weights w [rows, cols] on the grid (a, b) given input Hessian h [cols, cols].

    Rows are outputs (llama.cpp's layout), so GPTQ walks the columns. Without a Cholesky
    factor of H^-1 the codes are the nearest ones on the grid.
    """
    codes = np.zeros(w.shape, dtype=np.int64)
    a_in, b_in = a.T, b.T  # one row per input column, as gptq_round walks them
    safe_a = np.where(a_in == 0, 1.0, a_in)

    def round_column(j: int, col: np.ndarray) -> np.ndarray:
        c = np.clip(np.rint((col - b_in[j]) / safe_a[j]), cmin, cmax)
        codes[:, j] = c
        return a_in[j] * c + b_in[j]

    gptq_round(w.T, h, spans(w.shape[1], block), lambda lo, hi, rows: round_column, damp)
    return codes


def targets(ref, hessians: dict[str, np.ndarray], counts: dict[str, int]) -> tuple[dict, dict, dict]:
    """FP weights (llama.cpp layout), Hessians and their token counts by GGUF tensor name.

    A tied embedding is one tensor in two roles; its GPTQ target is the output projection (the
    Hessian of the final norm's output), where its rounding error reaches the logits directly.
    """
    hess, counts = dict(hessians), dict(counts)
    if getattr(ref, "tied", False) and "output.weight" in hess:
        hess["token_embd.weight"] = hess.pop("output.weight")
        counts["token_embd.weight"] = counts.get("output.weight", 0)
    return {n: ref.gguf_weight(n) for n in hess}, hess, counts


def refine_file(path: str | Path, weights: dict[str, np.ndarray], hessians: dict[str, np.ndarray],
                progress: bool = False, n_tokens: dict[str, int] | None = None) -> dict[str, float]:
    """Rewrite the codes of every supported tensor in a quantized GGUF, in place.

    weights: FP weights in llama.cpp's layout by tensor name; hessians: X^T X per tensor.
    n_tokens: calibration tokens behind each Hessian; with fewer than twice the input width,
    H is poorly determined and GPTQ would fit the calibration text, so it is damped 10x harder.
    Returns the relative change of the layer-output error ||dW X|| per tensor (negative = better).
    """
    header = check_gguf(Path(path))  # our header reader: gguf-py's stops at types it lacks (q2_0)
    mm = np.memmap(path, dtype=np.uint8, mode="r+")
    todo = [t for t in header.tensors if t.type_name in SUPPORTED and t.name in hessians and t.name in weights]
    gains = {}
    if progress:
        todo = tqdm(todo, desc="gptq", unit="tensor", leave=False)
    for t in todo:
        qtype = t.type_name
        rows, cols = int(t.shape[1]), int(t.shape[0])
        start = header.data_offset + t.offset
        data = mm[start:start + t.n_bytes]
        raw = np.asarray(data).reshape(rows, -1)
        bpr = raw.shape[1]  # bytes per row
        per_block = {"q4_0": 32, "q8_0": 32}.get(qtype, QK)
        nb = cols // per_block
        blocks = raw.reshape(rows * nb, bpr // nb)
        a, b, cmin, cmax = grid(qtype, blocks)
        a, b = a.reshape(rows, cols), b.reshape(rows, cols)
        w, h = weights[t.name], hessians[t.name]
        few = n_tokens is not None and n_tokens.get(t.name, 0) < 2 * cols
        codes = gptq_codes(w, h, a, b, cmin, cmax, damp=0.1 if few else 0.01)
        before = np.rint((_dequant(blocks, qtype, rows, cols) - b) / np.where(a == 0, 1, a))
        err_old = _out_err(w, a * before + b, h)
        err_new = _out_err(w, a * codes + b, h)
        if err_new < err_old:  # never make a tensor worse than llama.cpp's rounding
            new = encode(qtype, blocks, codes.reshape(rows * nb, per_block))
            data[...] = new.reshape(-1)
            gains[t.name] = err_new / err_old - 1
        else:
            gains[t.name] = 0.0
    mm.flush()
    del mm
    return gains


def _dequant(blocks: np.ndarray, qtype: str, rows: int, cols: int) -> np.ndarray:
    return dequantize(blocks.reshape(rows, -1), GGMLQuantizationType[qtype.upper()]).reshape(rows, cols)


def _out_err(w: np.ndarray, q: np.ndarray, h: np.ndarray) -> float:
    d = w.astype(np.float64) - q
    return float(((d @ h) * d).sum())
