"""Block-wise weight quantization in numpy: scales, GPTQ rounding, ORT's packed layouts.

Blocks run along the reduction (input) dimension: for a MatMul weight W [K, N] each output
column n has ceil(K / block) blocks, each with a float scale and a uint zero point, so
w ~= (q - zp) * scale with q in [0, 2^bits). That is the layout of ORT's MatMulNBits
(B [N, blocks, block*bits/8], scales [N*blocks], zero_points packed) and, per row, of
GatherBlockQuantized for embedding tables.

Two ways to pick the integers:
  rtn:  round to nearest, with a small search over clipping ranges per block (min MSE)
  gptq: error-compensating rounding (quant/gptq.py, shared with the GGUF side): input rows
        one at a time, each row's rounding error pushed onto the rows not yet quantized through
        the inverse Hessian H = X^T X of the layer's calibration inputs. Each block's grid is
        fitted to its rows as the earlier errors left them. Same grid, less output error.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from liteinfer.quant.gptq import gptq_round

CLIP_GRID = (1.0, 0.95, 0.9, 0.85, 0.8, 0.75)


@dataclass
class BlockQuant:
    """q [K, N] uint8 integers, scale/zero [blocks, N]: w[k, n] = (q - zero) * scale of block k // block."""

    q: np.ndarray
    scale: np.ndarray
    zero: np.ndarray
    bits: int
    block: int

    def dequant(self) -> np.ndarray:
        s = np.repeat(self.scale, self.block, axis=0)[: self.q.shape[0]]
        z = np.repeat(self.zero, self.block, axis=0)[: self.q.shape[0]]
        return ((self.q.astype(np.float32) - z) * s).astype(np.float32)


def _grid(w: np.ndarray, bits: int) -> tuple[np.ndarray, np.ndarray]:
    """Min-MSE asymmetric scale and zero point per column of a block w [rows, N]."""
    qmax = (1 << bits) - 1
    lo, hi = np.minimum(w.min(0), 0.0), np.maximum(w.max(0), 0.0)
    best_s = best_z = None
    best_err = np.full(w.shape[1], np.inf)
    for c in CLIP_GRID:
        s = np.maximum((hi - lo) * c / qmax, 1e-12)
        z = np.clip(np.round(-lo * c / s), 0, qmax)
        err = (((np.clip(np.round(w / s + z), 0, qmax) - z) * s - w) ** 2).sum(0)
        better = err < best_err
        if best_s is None:
            best_s, best_z = s.copy(), z.copy()
        best_s[better], best_z[better], best_err[better] = s[better], z[better], err[better]
    return best_s.astype(np.float32), best_z.astype(np.float32)


def quantize_rtn(w: np.ndarray, bits: int, block: int) -> BlockQuant:
    """Round to nearest on a per-(block, column) min-MSE grid."""
    k, n = w.shape
    nb = -(-k // block)
    qmax = (1 << bits) - 1
    q = np.zeros((k, n), dtype=np.uint8)
    scale = np.zeros((nb, n), dtype=np.float32)
    zero = np.zeros((nb, n), dtype=np.float32)
    for b in range(nb):
        rows = w[b * block : (b + 1) * block]
        s, z = _grid(rows, bits)
        scale[b], zero[b] = s, z
        q[b * block : (b + 1) * block] = np.clip(np.round(rows / s + z), 0, qmax)
    return BlockQuant(q, scale, zero, bits, block)


def quantize_gptq(w: np.ndarray, hessian: np.ndarray, bits: int, block: int, damp: float = 0.01) -> BlockQuant:
    """GPTQ onto the same block grid; `hessian` is X^T X [K, K] of the layer inputs."""
    return gptq_segments(w, hessian, [(bits, block, w.shape[0])], damp)[0]


def gptq_segments(w: np.ndarray, hessian: np.ndarray, segments: list[tuple[int, int, int]],
                  damp: float = 0.01) -> list[BlockQuant]:
    """GPTQ with consecutive row segments on different grids: [(bits, block, rows), ...].

    One pass over all K rows in order, so a later segment absorbs the rounding error of the
    earlier ones (a mixed int4/int8 weight puts its int8 rows last). One BlockQuant per segment.
    """
    k, n = w.shape
    if sum(s[2] for s in segments) != k:
        raise ValueError("segments must cover every row")
    w = w.astype(np.float64)  # a copy
    w[np.diag(hessian) == 0] = 0.0  # dead inputs (never nonzero in calibration) count as zero weights
    out: list[BlockQuant] = []
    owner: dict[int, tuple[BlockQuant, int, int]] = {}  # block start -> (its BlockQuant, segment start, block)
    spans, start = [], 0
    for bits, block, rows in segments:
        nb = -(-rows // block)
        bq = BlockQuant(np.zeros((rows, n), dtype=np.uint8), np.zeros((nb, n), dtype=np.float32),
                        np.zeros((nb, n), dtype=np.float32), bits, block)
        out.append(bq)
        for b in range(nb):
            lo, hi = start + b * block, start + min((b + 1) * block, rows)
            spans.append((lo, hi))
            owner[lo] = (bq, start, b)
        start += rows

    def start_block(lo: int, hi: int, rows: np.ndarray):
        bq, first, b = owner[lo]
        s, z = _grid(rows.astype(np.float32), bq.bits)
        bq.scale[b], bq.zero[b] = s, z
        s64, z64, qmax = s.astype(np.float64), z.astype(np.float64), (1 << bq.bits) - 1

        def round_row(i: int, row: np.ndarray) -> np.ndarray:
            qi = np.clip(np.round(row / s64 + z64), 0, qmax)
            bq.q[i - first] = qi
            return (qi - z64) * s64

        return round_row

    gptq_round(w, hessian, spans, start_block, damp)
    return out


@dataclass
class SplitQuant:
    """A MatMul weight [K, N] whose input rows `idx4` are 4-bit and `idx8` (the salient ones) 8-bit.

    Runs as two MatMulNBits over Gathers of the input: x[:, idx4] @ W4 + x[:, idx8] @ W8.
    """

    idx4: np.ndarray  # int32 row indices, ascending
    idx8: np.ndarray
    low: BlockQuant
    high: BlockQuant

    def dequant(self) -> np.ndarray:
        w = np.zeros((len(self.idx4) + len(self.idx8), self.low.q.shape[1]), dtype=np.float32)
        w[self.idx4], w[self.idx8] = self.low.dequant(), self.high.dequant()
        return w


SPLIT_LOW_BLOCK, SPLIT_HIGH_BLOCK = 32, 64


def quantize_table(table: np.ndarray, bits: int, block: int) -> BlockQuant:
    """An embedding table [V, D] on GatherBlockQuantized's grid (blocks along D, fp16 scales):
    the transposed BlockQuant, round to nearest (a lookup has no input Hessian)."""
    bq = quantize_rtn(np.ascontiguousarray(table.T), bits, block)
    bq.scale = bq.scale.astype(np.float16).astype(np.float32)
    return bq


@dataclass
class RowSplit:
    """An embedding table [V, D] whose `hot` rows (the tokens calibration text uses most) are on
    a finer grid than the rest: two GatherBlockQuantized tables and a row map (see quantize.py)."""

    hot: np.ndarray  # int32 row ids, ascending
    cold: np.ndarray
    high: BlockQuant  # transposed tables, as quantize_table returns them
    low: BlockQuant

    def dequant(self) -> np.ndarray:
        """The transposed table [D, V] the two lookups compute (like BlockQuant.dequant of a Gather)."""
        w = np.zeros((self.high.q.shape[0], len(self.hot) + len(self.cold)), dtype=np.float32)
        w[:, self.hot], w[:, self.cold] = self.high.dequant(), self.low.dequant()
        return w


def hot_rows(vocab: int, count: int, counts: np.ndarray | None) -> np.ndarray:
    """The `count` rows to keep fine: most used in the calibration tokens first, then the lowest
    ids (BPE and WordPiece vocabularies put frequent pieces early). Ascending int32."""
    order = np.arange(vocab)
    if counts is not None:
        order = np.lexsort((order, -counts.astype(np.int64)))  # count desc, then id asc
    return np.sort(order[:count]).astype(np.int32)


def quantize_row_split(table: np.ndarray, hot: np.ndarray, high: tuple[int, int], low: tuple[int, int]) -> RowSplit:
    """Rows `hot` on the (bits, block) grid `high`, the others on `low`."""
    cold = np.setdiff1d(np.arange(table.shape[0], dtype=np.int32), hot)
    return RowSplit(hot, cold, quantize_table(table[hot], *high), quantize_table(table[cold], *low))


def split_rows(k: int, share: float) -> int:
    """Rows of a [K, N] weight that go to 8 bits: a multiple of the 8-bit block (no padded block)."""
    return min(k, int(k * share / SPLIT_HIGH_BLOCK + 0.5) * SPLIT_HIGH_BLOCK)


def quantize_split(w: np.ndarray, share: float, hessian: np.ndarray | None = None) -> SplitQuant:
    """int4-b32 with the `share` most salient input rows in int8-b64 (GPTQ when `hessian` is given).

    Salience of input row k: H_kk * ||W_k||^2, the output energy that row carries (||W_k||^2
    alone without calibration data). GPTQ runs over the 4-bit rows first, then the 8-bit ones,
    which absorb the coarse rows' error.
    """
    k = w.shape[0]
    energy = (w.astype(np.float64) ** 2).sum(1)
    salience = energy * np.diag(hessian) if hessian is not None else energy
    idx8 = np.sort(np.argsort(-salience, kind="stable")[: split_rows(k, share)]).astype(np.int32)
    idx4 = np.setdiff1d(np.arange(k, dtype=np.int32), idx8)
    segments = [(4, SPLIT_LOW_BLOCK, len(idx4)), (8, SPLIT_HIGH_BLOCK, len(idx8))]
    if hessian is not None:
        perm = np.concatenate([idx4, idx8])
        low, high = gptq_segments(w[perm], hessian[np.ix_(perm, perm)], segments)
    else:
        low, high = quantize_rtn(w[idx4], 4, SPLIT_LOW_BLOCK), quantize_rtn(w[idx8], 8, SPLIT_HIGH_BLOCK)
    return SplitQuant(idx4, idx8, low, high)


# ---------------------------------------------------------------- ORT layouts


def pack_rows(q: np.ndarray, bits: int) -> np.ndarray:
    """Pack uint values along the last axis, lowest bits first: 4-bit puts element 2i in the low
    nibble, 2-bit puts element 4i in bits 0-1 (ORT's MatMulNBits / GatherBlockQuantized order)."""
    if bits == 8:
        return q.astype(np.uint8)
    per = 8 // bits
    if q.shape[-1] % per:
        pad = per - q.shape[-1] % per
        q = np.concatenate([q, np.zeros((*q.shape[:-1], pad), dtype=q.dtype)], axis=-1)
    q = q.astype(np.uint8)
    out = np.zeros((*q.shape[:-1], q.shape[-1] // per), dtype=np.uint8)
    for j in range(per):
        out |= q[..., j::per] << (bits * j)
    return out


def matmulnbits_tensors(bq: BlockQuant) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(B uint8 [N, blocks, blob], scales float32 [N*blocks], zero_points uint8) for MatMulNBits."""
    k, n = bq.q.shape
    nb = bq.scale.shape[0]
    padded = np.zeros((nb * bq.block, n), dtype=np.uint8)
    padded[:k] = bq.q
    blocks = padded.T.reshape(n, nb, bq.block)
    b = pack_rows(blocks, bq.bits)  # [N, nb, block*bits/8]
    scales = np.ascontiguousarray(bq.scale.T).reshape(-1).astype(np.float32)
    zp = pack_rows(bq.zero.T.astype(np.uint8), bq.bits).reshape(-1)  # [N, ceil(nb*bits/8)]
    return np.ascontiguousarray(b), scales, zp


def gather_tensors(bq: BlockQuant) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(data uint8 [V, D*bits/8], scales fp16 [V, D/block], zero_points uint8) for GatherBlockQuantized.

    `bq` holds the transposed table (K = D along rows, N = V columns) so blocks run along D.
    Scales are float16 (the op then returns float16, cast back to float32): a 2-bit row with
    fp32 scales per 32 would spend a third of its bytes on them. `quantize_table` rounds the
    scales to fp16 first, so `dequant` is what the op computes.
    """
    data = pack_rows(np.ascontiguousarray(bq.q.T), bq.bits)
    scales = np.ascontiguousarray(bq.scale.T).astype(np.float16)
    zp = pack_rows(bq.zero.T.astype(np.uint8), bq.bits)
    return data, scales, zp
