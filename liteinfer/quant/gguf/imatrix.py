"""Importance matrix: the mean squared input activation of every linear layer, per column.

llama.cpp's quantizer weighs each weight's rounding error by it (so columns that see large
activations are rounded more carefully). llama-cpp-python does not expose llama-imatrix, so
we compute it with the numpy reference forward pass on calibration text: the same statistic
(sum of x_j^2 over tokens / token count, for each linear input x), and the numbers feed our
own sensitivity measurement and calibrated rounding too. Files use llama-imatrix's GGUF
format (`<tensor>.in_sum2`, `<tensor>.counts`), so llama-quantize reads ours and we read its.
"""

from __future__ import annotations

from pathlib import Path

import gguf
import numpy as np
from tqdm import tqdm

from liteinfer.core.errors import LiteInferError
from liteinfer.core.files import atomic_output


def calibration_windows(tokens: list[int], ctx: int, max_windows: int) -> list[list[int]]:
    wins = [tokens[i : i + ctx] for i in range(0, len(tokens), ctx)]
    wins = [w for w in wins if len(w) >= min(ctx, 16)][:max_windows]
    if not wins:
        raise LiteInferError("calibration text is empty or too short (need at least 16 tokens)")
    return wins


class ActivationStats:
    """Hook for ReferenceLlama.forward: sums of x^2 per column, and X^T X when `full`."""

    def __init__(self, full: bool = False):
        self.sum2: dict[str, np.ndarray] = {}
        self.count: dict[str, int] = {}
        self.full = full  # also the full X^T X per tensor (GPTQ's Hessian)
        self.xtx: dict[str, np.ndarray] = {}
        self._last: tuple[np.ndarray, np.ndarray] | None = None  # q/k/v (gate/up) share one input

    def __call__(self, name: str, x: np.ndarray) -> None:
        x64 = x.astype(np.float64)
        self.sum2[name] = self.sum2.get(name, 0) + (x64 * x64).sum(0)
        self.count[name] = self.count.get(name, 0) + x.shape[0]
        if self.full:
            if self._last is None or self._last[0] is not x:  # holding x keeps its identity unique
                self._last = (x, x64.T @ x64)
            self.xtx[name] = self.xtx.get(name, 0) + self._last[1]

    def imatrix(self) -> dict[str, np.ndarray]:
        # float32 sums / count: exactly what load_imatrix gives back from a saved file
        return {k: v.astype(np.float32) / float(self.count[k]) for k, v in self.sum2.items()}

    def sums(self) -> dict[str, np.ndarray]:
        return {k: v.astype(np.float32) for k, v in self.sum2.items()}


def compute_imatrix(ref, windows: list[list[int]], progress: bool = False, full: bool = False) -> ActivationStats:
    """Run the reference model over the windows, collecting activation statistics."""
    stats = ActivationStats(full)
    it = windows
    if progress:
        it = tqdm(windows, desc="imatrix", unit="win", leave=False)
    for w in it:
        ref.forward(w, hook=stats)
    return stats


def save_imatrix(path: str | Path, sums: dict[str, np.ndarray], counts: dict[str, int], dataset: str,
                 chunk_count: int, chunk_size: int) -> None:
    """llama-imatrix's GGUF layout: sums of squares and token counts per tensor."""
    with atomic_output(path) as tmp:
        w = gguf.GGUFWriter(str(tmp), arch="")
        w.add_type("imatrix")
        w.add_array("imatrix.datasets", [dataset])
        w.add_uint32("imatrix.chunk_count", chunk_count)
        w.add_uint32("imatrix.chunk_size", chunk_size)
        for name in sorted(sums):
            w.add_tensor(f"{name}.in_sum2", np.asarray(sums[name], dtype=np.float32)[None, :])
            w.add_tensor(f"{name}.counts", np.array([[float(counts[name])]], dtype=np.float32))
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
        w.close()


def load_imatrix(path: str | Path) -> dict[str, np.ndarray]:
    """Mean squared activations per tensor from a GGUF imatrix file (ours or llama-imatrix's)."""
    path = Path(path)
    if not path.is_file():
        raise LiteInferError(f"imatrix file not found: {path}")
    with open(path, "rb") as f:
        if f.read(4) != b"GGUF":
            raise LiteInferError(f"{path}: not a GGUF imatrix (legacy .dat files: re-save with llama-imatrix)")
    try:
        r = gguf.GGUFReader(str(path))
    except Exception as e:
        raise LiteInferError(f"{path}: damaged imatrix ({type(e).__name__})") from None
    sums, counts = {}, {}
    for t in r.tensors:
        if t.name.endswith(".in_sum2"):
            sums[t.name[: -len(".in_sum2")]] = np.asarray(t.data, dtype=np.float32).reshape(-1)
        elif t.name.endswith(".counts"):
            counts[t.name[: -len(".counts")]] = float(np.asarray(t.data).reshape(-1)[0])
    if not sums:
        raise LiteInferError(f"{path}: no importance data in the file")
    return {k: (v / counts[k] if counts.get(k) else v) for k, v in sums.items()}
