"""The quantization report: every number measured in this run, one table per section.

    .venv/bin/python benchmarks/quant_report.py [--quick] [--only tiny,tiny-awq,smollm,curve-types,curve-mixed,onnx]
        [--json OUT] [--reprint JSON]

LLM sections (reference = FP32 weights unless said otherwise; held-out text never used for
calibration; KLD = mean KL(reference || candidate) per token, top-1 = argmax agreement):
  tiny FP32 LM (examples/tiny_lm, trained here on Debian fortunes): llama.cpp's uniform types
      (q4_0 plain, and q3_k_m/q4_k_m/iq4_xs/q5_k_m/q6_k with an importance matrix) against
      liteinfer's sensitivity-driven mixed plans at several budgets. "vs curve" compares a
      row's KLD with llama.cpp's imatrix size-to-KLD curve (q3_k_m..q6_k, log-KLD linearly
      interpolated at the row's bits per weight); the target is <= -20%. "+AWQ" rows: the
      same type after AWQ-style scales folded into the norms (liteinfer/quant/gguf/awq.py);
      `--only tiny-awq` runs just those rows and their baselines.
  SmolLM2-135M: the reference is its shipped Q4_1 weights (no FP32 copy ships), so every row
      is a requantization; its 576-wide rows are not multiples of 256, so llama.cpp swaps
      k-quants for legacy types (grid-alignment caveat: the numbers say little about k-quants).
  SmolLM2-135M curve (`--only curve-types`, `--only curve-mixed`: two commands, each under ten
      minutes): the reference is an F32 GGUF of its shipped Q4_1 weights dequantized exactly
      (~/.cache/liteinfer/smollm2-f32/, written on first use), the "FP32 file" every size is a
      fraction of (header and vocabulary counted). curve-types: llama.cpp's file types with the
      imatrix; curve-mixed: `--mixed` at FP32/4 .. FP32/10 (proxy sensitivity, default candidates)
      and +GPTQ at FP32/8. Each point: size fraction, ppl ratio, next-token top-1 accuracy ratio
      (eval acc's), KLD; then each target FP32/N with the best row at or under it, and the tensors
      with the largest proxy error. Target: ppl <= x1.02 and top-1 >= x0.98 at FP32/8.
      `--reprint a.json` prints the tables of a saved run again.
One-shot section: benchmarks/quant_report_onnx.py's rows (MiniLM, EfficientNet, fashion-MNIST).
Targets: perplexity within 2% of FP32 at <= 1/6 of the FP32 size; KLD 20% below the curve.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

# numpy's BLAS threads spin on each other on an oversubscribed machine; one is faster there
if os.getloadavg()[0] > (os.cpu_count() or 1):
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    os.environ.setdefault("OMP_NUM_THREADS", "1")

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

CURVE = ["q3_k_m", "q4_k_m", "q5_k_m", "q6_k"]  # llama.cpp's imatrix curve


def say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


@dataclass
class LLMCase:
    name: str
    ref: Path  # reference GGUF (also the quantization source)
    calib: Path
    heldout: Path
    ref_note: str
    ctx: int = 256
    max_tokens: int = 16384
    calib_windows: int = 16
    uniform: tuple = ("q4_0", "q4_0+im", "q3_k_m+im", "q4_k_m+im", "iq4_xs+im", "q5_k_m+im", "q6_k+im")
    gptq_uniform: tuple = ("q4_0", "q4_k_m", "q5_k_m")  # llama.cpp's types + imatrix, then GPTQ codes
    mixed_bpw: tuple = (4.5, 32 / 6)  # plain rounding: the allocation's own gain
    mixed_gptq_bpw: tuple = (4.0, 4.5, 5.0, 32 / 6)
    method: str = "auto"
    # AWQ-style scales folded into the norms first (F32/F16 sources only): type[+im][+gptq]
    awq: tuple = ("q4_0", "q4_0+im", "q3_k_m+im", "q4_k_m+im", "q4_k_m+im+gptq")


def llm_rows(case: LLMCase, tmp: Path) -> list[dict]:
    from liteinfer.evaluate.llm import Reference, read_text
    from liteinfer.quant.gguf.mixed import (
        apply_recipe,
        calibrate,
        measure_sensitivity,
        plan_mixed,
        quantize_refined,
    )
    from liteinfer.quant.gguf.quantize import model_bpw, quantize, read_tensors

    t0 = time.time()
    ref = Reference(case.ref, read_text(case.heldout), case.ctx, case.max_tokens)
    ref_mb = case.ref.stat().st_size / 1e6
    ref_tensors = read_tensors(case.ref)
    rows = [{"model": case.name, "variant": f"reference ({case.ref_note})", "mb": ref_mb, "ratio": 1.0,
             "bpw": model_bpw(ref_tensors), "ppl": ref.ppl, "ppl_ratio": 1.0, "kld": 0.0, "top1": 1.0,
             "seconds": time.time() - t0}]
    say(f"[{case.name}] reference ppl {ref.ppl:.3f} on {ref.tokens} held-out tokens ({time.time() - t0:.0f}s)")
    cal = calibrate(case.ref, case.calib, case.ctx, case.calib_windows, hessians=bool(case.gptq_uniform
                                                                                    or case.mixed_gptq_bpw
                                                                                    or case.awq))
    say(f"[{case.name}] calibration: {cal.info.windows} windows, {cal.info.tokens} tokens")

    def add(variant: str, path: Path, seconds: float, extra: dict | None = None) -> None:
        m = ref.compare(path)
        tensors = read_tensors(path)
        rows.append({"model": case.name, "variant": variant, "mb": path.stat().st_size / 1e6,
                     "ratio": case.ref.stat().st_size / path.stat().st_size, "bpw": model_bpw(tensors),
                     **{k: m[k] for k in ("ppl", "ppl_ratio", "kld", "top1", "kld_p99")}, "seconds": seconds,
                     **(extra or {})})
        r = rows[-1]
        say(f"[{case.name}] {variant:<22} {r['bpw']:.3f} bpw  KLD {r['kld']:.5f}  top-1 {r['top1']:.3f}  "
            f"ppl x{r['ppl_ratio']:.4f}")

    for u in case.uniform:
        qtype, use_im = u.split("+")[0], u.endswith("+im")
        out = tmp / f"{case.name}-{qtype}{'-im' if use_im else ''}.gguf"
        t = time.time()
        quantize(case.ref, out, qtype, imatrix=cal.imatrix if use_im else None)
        add(f"llama.cpp {qtype}{' +imatrix' if use_im else ''}", out, time.time() - t, {"kind": "uniform"})
        out.unlink()

    for qtype in case.gptq_uniform:
        out = tmp / f"{case.name}-{qtype}-gptq.gguf"
        t = time.time()
        quantize_refined(case.ref, out, qtype, cal.imatrix, None, cal)
        add(f"llama.cpp {qtype} +imatrix +GPTQ", out, time.time() - t, {"kind": "gptq"})
        out.unlink()

    for u in case.awq:
        t = time.time()
        qtype, flags = u.split("+")[0], set(u.split("+")[1:])
        out = awq_variant(case, cal, qtype, "im" in flags, "gptq" in flags, tmp)
        add(f"llama.cpp {qtype}{' +imatrix' if 'im' in flags else ''}{' +GPTQ' if 'gptq' in flags else ''} +AWQ",
            out, time.time() - t, {"kind": "awq"})
        out.unlink()

    for gptq, budgets in ((False, case.mixed_bpw), (True, case.mixed_gptq_bpw)):
        if not budgets:
            continue
        t = time.time()
        sens = measure_sensitivity(case.ref, cal, method=case.method, gptq=gptq)
        measure_s = time.time() - t
        say(f"[{case.name}] sensitivity ({sens.method}{', gptq' if gptq else ''}) measured in {measure_s:.0f}s")
        for bpw in budgets:
            out = tmp / f"{case.name}-mixed-{bpw:.2f}.gguf"
            t = time.time()
            recipe = plan_mixed(case.ref, cal, target_bpw=bpw, sens=sens, gptq=gptq)
            apply_recipe(case.ref, out, recipe, cal.imatrix, cal, gptq=gptq)
            types: dict[str, int] = {}
            for tp in recipe.tensors.values():
                types[tp.type] = types.get(tp.type, 0) + 1
            add(f"liteinfer mixed{' +GPTQ' if gptq else ''} @{bpw:.2f}", out, measure_s + time.time() - t,
                {"kind": "mixed", "mix": " ".join(f"{k}:{v}" for k, v in sorted(types.items())),
                 "predicted_kld": recipe.predicted_kld})
            out.unlink()
    _curve(rows)
    return rows


def awq_variant(case: LLMCase, cal, qtype: str, use_im: bool, gptq: bool, tmp: Path) -> Path:
    """AWQ scales searched for qtype's tensor types, folded, then calibrated and quantized again."""
    from liteinfer.quant.gguf.awq import awq_model, summary, target_types
    from liteinfer.quant.gguf.mixed import calibrate, quantize_refined

    im = cal.imatrix if use_im else None
    folded, out = tmp / f"{case.name}-awq-f32.gguf", tmp / f"{case.name}-{qtype}-awq.gguf"
    _, results = awq_model(case.ref, folded, cal.hessians, target_types(case.ref, qtype, im, tmp), im)
    say(f"[{case.name}] {qtype}{' +im' if use_im else ''}: {summary(results)}")
    cal2 = calibrate(folded, case.calib, case.ctx, case.calib_windows, hessians=gptq)  # the folded model's imatrix
    quantize_refined(folded, out, qtype, cal2.imatrix if use_im else None, None, cal2 if gptq else None)
    folded.unlink()
    return out


def _curve(rows: list[dict]) -> None:
    """KLD relative to llama.cpp's imatrix curve (log-KLD interpolated at each row's bpw)."""
    pts = sorted((r["bpw"], r["kld"]) for r in rows if r.get("kind") == "uniform"
                 and any(r["variant"] == f"llama.cpp {c} +imatrix" for c in CURVE) and r["kld"] > 0)
    if len(pts) < 2:
        return
    for r in rows:
        if r.get("kind") is None or r["kld"] <= 0:
            continue
        x = r["bpw"]
        if x < pts[0][0] or x > pts[-1][0]:  # outside the curve: extrapolate from the nearest segment
            lo, hi = (pts[0], pts[1]) if x < pts[0][0] else (pts[-2], pts[-1])
        else:
            lo = max(p for p in pts if p[0] <= x)
            hi = min(p for p in pts if p[0] >= x)
        f = (x - lo[0]) / (hi[0] - lo[0]) if hi[0] != lo[0] else 0.0
        curve = math.exp(math.log(lo[1]) + f * (math.log(hi[1]) - math.log(lo[1])))
        r["vs_curve"] = r["kld"] / curve - 1


def format_llm(rows: list[dict]) -> str:
    head = (f"{'model':<10} {'variant':<40} {'MB':>7} {'size':>7} {'bpw':>6} {'ppl':>9} {'ppl x':>7} "
            f"{'KLD':>8} {'vs curve':>8} {'top-1':>6}")
    lines = [head, "-" * len(head)]
    for r in rows:
        vc = f"{r['vs_curve']:+.0%}" if "vs_curve" in r else ""
        lines.append(f"{r['model']:<10} {r['variant']:<40} {r['mb']:>7.2f} {'1/' + format(r['ratio'], '.2f'):>7} "
                     f"{r['bpw']:>6.3f} {r['ppl']:>9.3f} {r['ppl_ratio']:>7.4f} {r['kld']:>8.5f} {vc:>8} "
                     f"{r['top1']:>6.3f}")
    return "\n".join(lines)


def verdict(rows: list[dict], fp32_mb: float) -> str:
    """The LLM targets (module docstring), checked on the best liteinfer row that is small enough."""
    small = [r for r in rows if r.get("kind") == "mixed" and r["mb"] <= fp32_mb / 6 + 1e-9]
    if not small:
        return "no liteinfer row at <= 1/6 of the FP32 size"
    best = min(small, key=lambda r: r["kld"])
    ppl_ok = best["ppl_ratio"] <= 1.02
    vc = best.get("vs_curve")
    curve_ok = vc is not None and vc <= -0.20
    return (f"target ppl within 2% at <= 1/6 FP32: {best['variant']} at 1/{best['ratio']:.2f} has ppl x"
            f"{best['ppl_ratio']:.4f} -> {'MET' if ppl_ok else 'NOT MET'}; KLD vs llama.cpp curve "
            f"{'n/a' if vc is None else format(vc, '+.0%')} (target <= -20%) -> {'MET' if curve_ok else 'NOT MET'}")


def tiny_case(quick: bool) -> LLMCase | None:
    d = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "liteinfer" / "tiny_lm"
    gguf = d / "model-f32.gguf"
    if not gguf.is_file():
        say(f"skip tiny LM: {gguf} missing (run examples/tiny_lm/train.py)")
        return None
    case = LLMCase("tiny-lm", gguf, d / "calib.txt", d / "heldout.txt", "FP32 weights", method="kl")
    if quick:
        case.max_tokens, case.calib_windows, case.mixed_bpw, case.mixed_gptq_bpw = 2048, 4, (4.5,), (4.5,)
        case.uniform, case.gptq_uniform = ("q4_0", "q4_k_m+im", "q6_k+im"), ("q4_k_m",)
        case.awq = ("q4_k_m+im",)
    return case


def tiny_awq_case(quick: bool) -> LLMCase | None:
    """The AWQ step alone: each +AWQ row next to the same type without it (and the imatrix curve)."""
    case = tiny_case(quick)
    if case and not quick:
        case.uniform = ("q4_0", "q4_0+im", "q3_k_m+im", "q4_k_m+im", "q5_k_m+im", "q6_k+im")
        case.gptq_uniform, case.mixed_bpw, case.mixed_gptq_bpw = ("q4_k_m",), (), ()
    elif case:
        case.mixed_bpw, case.mixed_gptq_bpw = (), ()
    return case


def fortunes_split(folder: Path) -> Path:
    """The tiny LM's calibration / held-out split (same seed, same files as examples/tiny_lm)."""
    sys.path.insert(0, str(ROOT / "examples" / "tiny_lm"))
    from data import load_fortunes, split

    train, held = split(load_fortunes(), seed=0)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "calib.txt").write_text("\n\n".join(train[:1500]))
    (folder / "heldout.txt").write_text("\n\n".join(held))
    return folder


def smollm_case(quick: bool) -> LLMCase | None:
    from liteinfer.core.catalog import resolve_llm

    tiny = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "liteinfer" / "tiny_lm"
    if not (tiny / "calib.txt").is_file():
        tiny = fortunes_split(Path(tempfile.mkdtemp(prefix="liteinfer-fortunes-")))
    case = LLMCase("smollm2", resolve_llm("smollm2-135m"), tiny / "calib.txt", tiny / "heldout.txt",
                   "shipped Q4_1 weights, not FP32", max_tokens=4096, calib_windows=8,
                   uniform=("q4_0+im", "q3_k_m+im", "q4_k_m+im", "q5_k_m+im", "q6_k+im"),
                   gptq_uniform=("q4_0",), mixed_bpw=(6.2,), mixed_gptq_bpw=(), method="proxy",
                   awq=())  # AWQ needs a float source; this one ships as Q4_1
    if quick:
        case.max_tokens, case.calib_windows, case.uniform, case.gptq_uniform = 1024, 2, ("q4_k_m+im",), ()
    return case


# ---- SmolLM2-135M: the size-accuracy curve from 1/4 to 1/10 of its FP32 file ----
FRACTIONS = (4, 5, 6, 7, 8, 9, 10)  # the whole file at most FP32/N (header and vocabulary counted)
# llama.cpp's file types, each with the imatrix from the calibration text; on SmolLM2's 576-wide rows
# its k-quants fall back to legacy types, so the grid lands where it lands and each target is read
# off the nearest row at or under it
CURVE_TYPES = ("q8_0", "q6_k", "q5_k_m", "q4_k_m", "iq4_nl", "q4_0", "q3_k_m", "q2_k", "q2_0")
# liteinfer --mixed candidates: the defaults (which include mxfp4 and q2_0, the block-32/64 types
# below 4.5 bits that 576-wide rows can take)
CURVE_TYPES_RUN = list(CURVE_TYPES)  # curve-types' file types this run (--types)
CURVE_FRACTIONS = list(FRACTIONS)  # curve-mixed's budgets this run (--fractions)
CURVE_GPTQ_AT = (8,)
CURVE_GPTQ_RUN = list(CURVE_GPTQ_AT)  # --gptq-at  # the same plan, GPTQ rounding: one fraction (its sensitivity is not re-measured)


def smollm_f32(quick: bool) -> tuple[Path, Path, Path]:
    """SmolLM2-135M as F32 (its shipped Q4_1 weights dequantized exactly: no FP32 copy ships),
    plus the fortunes calibration / held-out split."""
    from liteinfer.core.catalog import resolve_llm
    from liteinfer.quant.gguf.quantize import quantize

    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "liteinfer"
    ref = cache / "smollm2-f32" / "model-f32.gguf"
    if not ref.is_file():
        ref.parent.mkdir(parents=True, exist_ok=True)
        say(f"writing {ref} (Q4_1 dequantized to F32)")
        quantize(resolve_llm("smollm2-135m"), ref, "f32")
    tiny = cache / "tiny_lm"
    if not (tiny / "calib.txt").is_file():
        tiny = fortunes_split(cache / "smollm2-f32" / "text")
    return ref, tiny / "calib.txt", tiny / "heldout.txt"


def curve_rows(quick: bool, tmp: Path, part: str) -> list[dict]:
    """part: 'types' (llama.cpp's file types +imatrix) or 'mixed' (liteinfer --mixed at every FP32/N)."""
    from liteinfer.evaluate.llm import Reference, read_text
    from liteinfer.quant.gguf.mixed import (
        apply_recipe,
        calibrate,
        fp32_bytes,
        measure_sensitivity,
        plan_mixed,
        target_size_mb,
    )
    from liteinfer.quant.gguf.quantize import model_bpw, quantize, read_tensors

    src, calib, heldout = smollm_f32(quick)
    max_tokens = 1024 if quick else 2560  # windows of 256, second halves scored: 1280 tokens
    t0 = time.time()
    ref = Reference(src, read_text(heldout), 256, max_tokens)
    fp32 = fp32_bytes(src)
    say(f"[curve] FP32 {fp32 / 1e6:.2f} MB, ppl {ref.ppl:.3f}, top-1 accuracy {ref.correct / ref.tokens:.4f} "
        f"on {ref.tokens} held-out tokens ({time.time() - t0:.0f}s)")
    rows: list[dict] = []
    if part == "types":
        rows.append({"model": "smollm2", "variant": "FP32 (Q4_1 weights dequantized)", "mb": fp32 / 1e6,
                     "ratio": 1.0, "bpw": 32.0, "ppl": ref.ppl, "ppl_ratio": 1.0, "kld": 0.0, "top1": 1.0,
                     "accuracy": ref.correct / ref.tokens, "accuracy_ratio": 1.0, "kind": "fp32"})
    cal = calibrate(src, calib, 256, 2 if quick else 16, hessians=part == "mixed" and bool(CURVE_GPTQ_RUN))
    say(f"[curve] calibration: {cal.info.windows} windows, {cal.info.tokens} tokens ({time.time() - t0:.0f}s)")

    def add(variant: str, path: Path, kind: str, extra: dict | None = None) -> None:
        t = time.time()
        m = ref.compare(path)
        tensors = read_tensors(path)
        size = path.stat().st_size
        rows.append({"model": "smollm2", "variant": variant, "mb": size / 1e6, "ratio": fp32 / size,
                     "bpw": model_bpw(tensors), "kind": kind,
                     **{k: m[k] for k in ("ppl", "ppl_ratio", "kld", "kld_p99", "top1", "accuracy",
                                          "accuracy_ratio")}, **(extra or {})})
        r = rows[-1]
        say(f"[curve] {variant:<34} 1/{r['ratio']:.2f} {r['bpw']:.3f} bpw  ppl x{r['ppl_ratio']:.4f}  "
            f"top-1 acc x{r['accuracy_ratio']:.4f}  KLD {r['kld']:.4f} ({time.time() - t:.0f}s eval)")
        path.unlink()

    if part == "types":
        for qtype in (("q4_0", "q2_0") if quick else CURVE_TYPES_RUN):
            out = tmp / f"curve-{qtype}.gguf"
            try:
                quantize(src, out, qtype, imatrix=cal.imatrix)
                add(f"llama.cpp {qtype} +imatrix", out, "llama.cpp")
            except Exception as e:  # one failed type is a row's note, not a lost run
                say(f"[curve] llama.cpp {qtype}: FAILED {e}")
        return rows
    t = time.time()
    sens = measure_sensitivity(src, cal, method="proxy", workdir=tmp)
    say(f"[curve] sensitivity (proxy, {len(next(iter(sens.options.values())))} candidates) in {time.time() - t:.0f}s")
    sens_row = {"kind": "sensitivity", "variant": "per-tensor sensitivity", "options": {
        name: [(o.type, o.n_bytes, o.cost) for o in opts] for name, opts in sens.options.items()}}
    say(sensitivity_table([sens_row], top=20))  # now: a run cut short still shows it
    for n in ((8,) if quick else CURVE_FRACTIONS):
        out = tmp / f"curve-mixed-{n}.gguf"
        try:
            recipe = plan_mixed(src, cal, target_mb=target_size_mb(f"FP32/{n}", src), sens=sens)
            apply_recipe(src, out, recipe, cal.imatrix)
            mix = _mix(recipe)
            say(f"[curve] FP32/{n} plan: {mix}")
            add(f"liteinfer --mixed FP32/{n}", out, "mixed", {"target": n, "mix": mix})
            if n in CURVE_GPTQ_RUN and not quick:
                out = tmp / f"curve-mixed-{n}-gptq.gguf"
                t = time.time()
                apply_recipe(src, out, recipe, cal.imatrix, cal, gptq=True)
                say(f"[curve] GPTQ rounding in {time.time() - t:.0f}s")
                add(f"liteinfer --mixed FP32/{n} +GPTQ", out, "mixed+gptq", {"target": n, "mix": mix})
        except Exception as e:  # e.g. a budget no plan fits: the row says so
            say(f"[curve] liteinfer --mixed FP32/{n}: FAILED {e}")
    rows.append(sens_row)
    return rows


def _mix(recipe) -> str:
    types: dict[str, int] = {}
    for tp in recipe.tensors.values():
        types[tp.type] = types.get(tp.type, 0) + 1
    return " ".join(f"{k}:{v}" for k, v in sorted(types.items()))


def curve_table(rows: list[dict]) -> str:
    """Every measured point, then each target FP32/N with the best llama.cpp row at or under it."""
    pts = [r for r in rows if r.get("kind") not in ("sensitivity", None)]
    pts.sort(key=lambda r: -r["mb"])
    head = f"{'variant':<36} {'MB':>7} {'size':>7} {'bpw':>6} {'ppl x':>7} {'top-1 acc x':>11} {'KLD':>7}  mix"
    lines = [head, "-" * len(head)]
    for r in pts:
        lines.append(f"{r['variant']:<36} {r['mb']:>7.2f} {'1/' + format(r['ratio'], '.2f'):>7} {r['bpw']:>6.3f} "
                     f"{r['ppl_ratio']:>7.4f} {r['accuracy_ratio']:>11.4f} {r['kld']:>7.4f}  {r.get('mix', '')}")
    lines += ["", "targets (ppl <= x1.02 and top-1 accuracy >= x0.98 of FP32):"]
    for n in FRACTIONS:
        for label, kinds in (("llama.cpp", ("llama.cpp",)), ("liteinfer", ("mixed", "mixed+gptq"))):
            fit = [r for r in pts if r["kind"] in kinds and r["ratio"] >= n - 1e-6]
            if not fit:
                lines.append(f"  1/{n:<3} {label:<10} no file this small")
                continue
            best = min(fit, key=lambda r: r["kld"])
            ok = best["ppl_ratio"] <= 1.02 and best["accuracy_ratio"] >= 0.98
            lines.append(f"  1/{n:<3} {label:<10} {best['variant']:<34} 1/{best['ratio']:.2f} ppl x{best['ppl_ratio']:.4f} "
                         f"top-1 x{best['accuracy_ratio']:.4f} -> {'MET' if ok else 'not met'}")
    return "\n".join(lines)


def sensitivity_table(rows: list[dict], top: int = 12) -> str:
    """The tensors with the largest measured error at mxfp4 (4.25 bits), each type's cost beside."""
    sens = next((r["options"] for r in rows if r.get("kind") == "sensitivity"), None)
    if not sens:
        return ""

    def at(opts, qtype):
        return next((c for t, _, c in opts if t == qtype), 0.0)

    out = [f"{'tensor':<26}  proxy cost E|dW x|^2 / E|W x|^2 by the type llama.cpp wrote (smallest first)"]
    for name, opts in sorted(sens.items(), key=lambda kv: -at(kv[1], "mxfp4"))[:top]:
        seen: dict[str, float] = {}
        for t, _, c in sorted(opts, key=lambda o: o[1]):
            seen.setdefault(t, c)
        out.append(f"{name:<26}  " + "  ".join(f"{t} {c:.2e}" for t, c in seen.items()))
    return "\n".join(out)


Section = tuple[str, Callable[[bool, Path], list[dict]], Callable[[list[dict]], str]]


def _llm_section(make: Callable[[bool], LLMCase | None]):
    def rows(quick: bool, tmp: Path) -> list[dict]:
        case = make(quick)
        return llm_rows(case, tmp) if case else []
    return rows


def _onnx_rows(quick: bool, tmp: Path) -> list[dict]:
    from quant_report_onnx import onnx_rows

    return onnx_rows(quick, say=say)


def _onnx_format(rows: list[dict]) -> str:
    from quant_report_onnx import format_rows

    return format_rows(rows)


SECTIONS: dict[str, Section] = {
    "tiny": ("LLM: tiny FP32 LM (examples/tiny_lm)", _llm_section(tiny_case), format_llm),
    "tiny-awq": ("LLM: tiny FP32 LM, the AWQ step alone", _llm_section(tiny_awq_case), format_llm),
    "smollm": ("LLM: SmolLM2-135M (reference: shipped Q4_1; requantization)", _llm_section(smollm_case), format_llm),
    "curve-types": ("LLM: SmolLM2-135M curve, llama.cpp's types +imatrix (reference: Q4_1 dequantized to F32)",
                    lambda quick, tmp: curve_rows(quick, tmp, "types"), lambda rows: curve_table(rows)),
    "curve-mixed": ("LLM: SmolLM2-135M curve, liteinfer --mixed at FP32/4..FP32/10",
                    lambda quick, tmp: curve_rows(quick, tmp, "mixed"),
                    lambda rows: curve_table(rows) + "\n\n" + sensitivity_table(rows)),
    "onnx": ("One-shot models (ONNX Runtime)", _onnx_rows, _onnx_format),
}


def reprint(path: Path) -> None:
    """Print the tables again from a --json file (e.g. after a formatting change)."""
    data = json.loads(path.read_text())
    for key, rows in data.items():
        if rows and key.startswith("curve"):
            print(f"\n## {SECTIONS[key][0]}\n{SECTIONS[key][2](rows)}")
        if rows and key in ("tiny", "tiny-awq", "smollm"):
            for r in rows:
                r.pop("vs_curve", None)
            _curve(rows)
            print(f"\n## {SECTIONS[key][0]}\n{format_llm(rows)}")
            if key == "tiny":
                print(verdict(rows, rows[0]["mb"]))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer variants and tokens (a smoke run)")
    ap.add_argument("--only", default=None, help=f"comma-separated sections ({', '.join(SECTIONS)})")
    ap.add_argument("--json", type=Path, default=None, help="also write all rows as JSON")
    ap.add_argument("--reprint", type=Path, default=None, help="print the tables of a saved --json and exit")
    ap.add_argument("--types", default=None, help="curve-types: the llama.cpp file types, e.g. q2_k,q2_0")
    ap.add_argument("--gptq-at", default=None, help="curve-mixed: the FP32/N budgets with a +GPTQ row (default 8; '' none)")
    ap.add_argument("--fractions", default=None, help="curve-mixed: the FP32/N budgets, e.g. 8,9,10 (default 4..10)")
    args = ap.parse_args()
    if args.types:
        CURVE_TYPES_RUN[:] = args.types.split(",")
    if args.gptq_at is not None:
        CURVE_GPTQ_RUN[:] = [int(n) for n in args.gptq_at.split(",") if n]
    if args.fractions:
        CURVE_FRACTIONS[:] = [int(n) for n in args.fractions.split(",")]
    if args.reprint:
        reprint(args.reprint)
        return 0
    load = os.getloadavg()[0]
    if load > 1.5:
        say(f"warning: load average {load:.1f}: other work is running; timings are upper bounds")
    chosen = args.only.split(",") if args.only else list(SECTIONS)
    out: dict[str, list[dict]] = {}
    with tempfile.TemporaryDirectory(prefix="liteinfer-qr-") as tmp:
        for key in chosen:
            title, make_rows, fmt = SECTIONS[key]
            rows = make_rows(args.quick, Path(tmp))
            out[key] = rows
            if rows:
                print(f"\n## {title}\n{fmt(rows)}", flush=True)
                if key == "tiny":
                    print(verdict(rows, rows[0]["mb"]))
    if args.json:
        from liteinfer.core.files import atomic_write_text

        atomic_write_text(args.json, json.dumps(out, indent=2, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
