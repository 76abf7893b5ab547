"""Sensitivity-driven mixed precision for GGUF: calibrate, measure, allocate, quantize.

    calibrate()      tokenize calibration text, numpy reference model, importance matrix
    plan_mixed()     per-tensor costs (sensitivity.measure) -> plan under the budget -> Recipe
    apply_recipe()   llama.cpp quantizes with one exact type override per tensor
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

from liteinfer.convert.reference import ReferenceLlama
from liteinfer.core.config import EngineSettings
from liteinfer.core.errors import LiteInferError
from liteinfer.core.files import atomic_output
from liteinfer.engines.llama import LlamaEngine
from liteinfer.evaluate.llm import read_text
from liteinfer.quant.gguf.gptq import refine_file, targets
from liteinfer.quant.gguf.imatrix import calibration_windows, compute_imatrix, load_imatrix
from liteinfer.quant.gguf.quantize import bits_per_weight, quantize, read_tensors
from liteinfer.quant.gguf.recipe import Calibration, Recipe, TensorPlan
from liteinfer.quant.gguf.sensitivity import DEFAULT_TYPES, allocate, measure, smallest_bpw

KL_MAX_WORK = 2e11  # params x calibration tokens x candidates above which `auto` uses the proxy


@dataclass
class Calib:
    ref: object  # ReferenceLlama
    windows: list[list[int]]
    imatrix: dict
    sums: dict
    counts: dict
    info: Calibration
    hessians: dict | None = None  # X^T X per tensor (GPTQ)


def tokenize_file(model: Path, text: str) -> list[int]:
    eng = LlamaEngine(model, EngineSettings(n_ctx=64, n_batch=64, n_ubatch=64, n_seq_max=1))
    try:
        return eng.tokenize(text, add_special=False)
    finally:
        eng.close()


def calibrate(src: Path, text_path: str | Path, ctx: int = 256, n_windows: int = 16,
              imatrix_path: str | Path | None = None, progress: bool = False, hessians: bool = False) -> Calib:
    text = read_text(text_path)  # missing / empty file: one-line error
    windows = calibration_windows(tokenize_file(src, text), ctx, n_windows)
    ref = ReferenceLlama.from_gguf(src)
    hess = None
    if imatrix_path and not hessians:
        imat, sums, counts = load_imatrix(imatrix_path), {}, {}
    else:
        stats = compute_imatrix(ref, windows, progress=progress, full=hessians)
        imat, sums, counts, hess = stats.imatrix(), stats.sums(), stats.count, stats.xtx or None
        if imatrix_path:  # a given imatrix still decides llama.cpp's grid
            imat = load_imatrix(imatrix_path)
    info = Calibration(text=str(text_path), ctx=ctx, windows=len(windows), tokens=sum(map(len, windows)))
    return Calib(ref, windows, imat, sums, counts, info, hess)


def budget_bytes(src_tensors, target_bpw: float | None, target_mb: float | None, src: Path) -> float:
    n = sum(t.n_elements for t in src_tensors)
    if target_bpw is not None:
        if target_bpw <= 0:
            raise LiteInferError("--target-bpw must be positive")
        return target_bpw * n / 8
    if target_mb is None or target_mb <= 0:
        raise LiteInferError("--mixed needs --target-bpw or --target-size (MB, positive)")
    overhead = src.stat().st_size - sum(t.n_bytes for t in src_tensors)  # header, vocab, alignment
    return target_mb * 1e6 - overhead


def fp32_bytes(src: Path) -> int:
    """The model's FP32 file size: every tensor at 4 bytes per weight, plus the source's own
    header, vocabulary and alignment (a tensor's padding is ignored)."""
    tensors = read_tensors(src)
    return 4 * sum(t.n_elements for t in tensors) + src.stat().st_size - sum(t.n_bytes for t in tensors)


def target_size_mb(value: str | float, src: Path) -> float:
    """--target-size: MB (`65.5`), or a fraction of the FP32 file (`FP32/8`: the whole file, header
    and vocabulary included, at most 1/8 of the same model's FP32 GGUF)."""
    text = str(value).strip()
    try:
        if text.upper().startswith("FP32/"):
            n = float(text[5:])
            if n <= 0 or n != n:
                raise ValueError
            return fp32_bytes(src) / n / 1e6
        mb = float(text)
    except ValueError:
        raise LiteInferError(f"--target-size {text!r}: give MB (65.5) or a fraction of the FP32 file (FP32/8)") from None
    if mb <= 0 or mb != mb:
        raise LiteInferError(f"--target-size {text!r}: must be positive")
    return mb


def check_budget(src: Path, target_bpw: float | None, target_mb: float | None, types) -> None:
    """Fail before calibrating when no plan can fit (cheap: nominal sizes only)."""
    tensors = read_tensors(src)
    budget = budget_bytes(tensors, target_bpw, target_mb, src)
    low = smallest_bpw(tensors, types)
    if low * sum(t.n_elements for t in tensors) / 8 > budget:
        raise LiteInferError(
            f"size budget cannot be met: even all-{min(types, key=bits_per_weight)} is {low:.2f} bits per weight")


def measure_sensitivity(src: Path, cal: Calib, types=None, method: str = "auto", progress: bool = False,
                        gptq: bool = False, workdir: Path | None = None):
    """Per-tensor (type, bytes, cost) options; one measurement serves any number of budgets.
    Its trial models are written under `workdir` (the command's scratch folder beside the output)."""
    types = tuple(types or DEFAULT_TYPES)
    # KL needs only a few windows; the imatrix used them all
    windows = cal.windows[: max(1, min(len(cal.windows), 4))]
    if method == "auto":
        work = sum(t.n_elements for t in read_tensors(src)) * sum(map(len, windows)) * len(types)
        method = "kl" if work <= KL_MAX_WORK else "proxy"
    if method not in ("kl", "proxy"):
        raise LiteInferError(f"unknown sensitivity method {method!r} (kl, proxy, auto)")
    return measure(src, cal.ref, windows, cal.imatrix, types, method, progress,
                   hessians=cal.hessians if gptq else None, n_tokens=cal.counts, workdir=workdir)


def plan_mixed(src: Path, cal: Calib, target_bpw: float | None = None, target_mb: float | None = None,
               types=None, method: str = "auto", progress: bool = False, sens=None, gptq: bool = False,
               workdir: Path | None = None) -> Recipe:
    budget = budget_bytes(read_tensors(src), target_bpw, target_mb, src)
    sens = sens or measure_sensitivity(src, cal, types, method, progress, gptq, workdir)
    plan = allocate(sens, budget)
    total = sens.fixed_bytes + sum(o.n_bytes for o in plan.values())
    return Recipe(
        source=Path(src).name, method=sens.method, target_bpw=target_bpw,
        target_bytes=int(budget) if target_mb is not None else None,
        bpw=8 * total / sens.n_elements,
        predicted_kld=sum(o.cost for o in plan.values()) if sens.method == "kl" else None,
        calibration=cal.info, candidates=list(types or DEFAULT_TYPES), rounding="gptq" if gptq else "llama.cpp",
        tensors={n: TensorPlan(type=o.type, bytes=o.n_bytes, cost=o.cost) for n, o in sorted(plan.items())},
    )


def apply_recipe(src: Path, dst: Path, recipe: Recipe, imatrix: dict | None, cal: Calib | None = None,
                 gptq: bool = False, progress: bool = False):
    have = {t.name for t in read_tensors(src) if t.quantizable}
    planned = set(recipe.tensors)
    if planned != have:
        missing, extra = sorted(have - planned), sorted(planned - have)
        raise LiteInferError(f"recipe does not fit {src.name}: missing {missing[:2]}, unknown {extra[:2]}")
    if imatrix is None:
        print("warning: no importance matrix (give --calib or --imatrix): plain rounding", file=sys.stderr)
    return quantize_refined(src, dst, "q8_0", imatrix, recipe.overrides(), cal if gptq else None, progress)


def quantize_refined(src: Path, dst: Path, ftype: str, imatrix: dict | None, overrides: dict | None = None,
                     cal: Calib | None = None, progress: bool = False, threads: int | None = None):
    """llama.cpp's quantizer, then (given calibration with Hessians) GPTQ codes on its grid."""
    if cal is None:
        return quantize(src, dst, ftype, imatrix=imatrix, overrides=overrides, threads=threads)
    if not cal.hessians:
        raise LiteInferError("GPTQ needs calibration activations (--calib)")
    with atomic_output(dst) as tmp:
        quantize(src, tmp, ftype, imatrix=imatrix, overrides=overrides, threads=threads)
        weights, hess, counts = targets(cal.ref, cal.hessians, cal.counts)
        refine_file(tmp, weights, hess, progress=progress, n_tokens=counts)
    return read_tensors(dst)
