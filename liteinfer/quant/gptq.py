"""GPTQ (Frantar et al. 2022): error-compensating rounding, the part both backends share.

Round-to-nearest minimizes each weight's own error. GPTQ rounds a layer's weights one input
at a time and pushes each input's rounding error onto the inputs not yet rounded, through the
inverse of the layer's input Hessian H = X^T X (calibration activations): that minimizes the
layer-output error ||(W - Q) X||^2 instead. Here: H's damping, inputs that calibration never
excited (dead: H_jj = 0), the Cholesky factor of H^-1 (round-to-nearest when it has none), and
the loop. The grid, and the codes, are the caller's:

    quant/gguf/gptq.py       llama.cpp's own block scales, read off a quantized GGUF
    quant/onnx/blockwise.py  int4/int8 block scales, fitted as the loop reaches each block
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence

import numpy as np

RoundRow = Callable[[int, np.ndarray], np.ndarray]
"""(input index i, the weights of input i [n_out]) -> those weights on the grid; the caller
keeps the codes it chose."""

StartBlock = Callable[[int, int, np.ndarray], RoundRow]
"""(lo, hi, the block's rows w[lo:hi] as the earlier errors left them) -> the block's RoundRow."""

_FACTORS: dict[bytes, np.ndarray | None] = {}  # q/k/v (gate/up) share one Hessian: factor it once


def hinv_factor(h: np.ndarray, damp: float = 0.01) -> np.ndarray | None:
    """Upper Cholesky factor U of the damped H^-1 (H^-1 = U^T U), or None when it has none.

    Dead inputs get a unit diagonal (their row of U is then zero off the diagonal: their
    error goes nowhere), and damp * mean(diag H) is added to the diagonal.
    """
    h = np.array(h, dtype=np.float64)
    key = hashlib.blake2b(h.tobytes() + str(damp).encode(), digest_size=16).digest()
    if key not in _FACTORS:
        dead = np.diag(h) == 0
        h[dead, dead] = 1.0
        h += damp * np.mean(np.diag(h)) * np.eye(len(h))
        try:
            u = np.linalg.cholesky(np.linalg.inv(h)).T
        except np.linalg.LinAlgError:
            u = None
        if u is not None and not np.isfinite(u).all():
            u = None
        if len(_FACTORS) >= 8:
            _FACTORS.pop(next(iter(_FACTORS)))
        _FACTORS[key] = u
    return _FACTORS[key]


def spans(n: int, size: int) -> list[tuple[int, int]]:
    """(lo, hi) ranges of `size` rows covering 0..n."""
    return [(lo, min(lo + size, n)) for lo in range(0, n, size)]


def gptq_round(w: np.ndarray, h: np.ndarray, blocks: Sequence[tuple[int, int]], start_block: StartBlock,
               damp: float = 0.01) -> bool:
    """GPTQ over the rows of w [n_in, n_out] (one row per input), block by block.

    blocks: (lo, hi) row ranges covering 0..n_in in order. Within a block each row is rounded and
    its error spread over the block's later rows; at the block's end its errors update all
    the rows after it in one product (the paper's lazy batch update). start_block is called
    as each block starts and returns the function that rounds the block's rows.
    `w` is not modified. Returns False when H^-1 has no Cholesky factor: every row is then
    rounded to nearest, with no error moved.
    """
    w = np.array(w, dtype=np.float64, order="C")  # rows contiguous: the loop walks them
    u = hinv_factor(h, damp)
    for lo, hi in blocks:
        round_row = start_block(lo, hi, w[lo:hi])
        if u is None:
            for i in range(lo, hi):
                round_row(i, w[i])
            continue
        errs = np.zeros((hi - lo, w.shape[1]))
        for i in range(lo, hi):
            err = (w[i] - round_row(i, w[i])) / u[i, i]
            w[i + 1 : hi] -= np.outer(u[i, i + 1 : hi], err)
            errs[i - lo] = err
        w[hi:] -= u[lo:hi, hi:].T @ errs
    return u is not None
