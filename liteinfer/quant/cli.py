"""`liteinfer quantize IN OUT ...`: one command, one backend per model format.

The backend is picked from the input (BACKENDS: a predicate and a main function); each
backend adds its own options through ARGUMENTS. ONNX models go to quant/onnx/cli.py. GGUF
LLMs (and Hugging Face llama folders, converted first) go through llama.cpp's quantizer
(quant/gguf/): uniform types, or `--mixed` per-tensor plans from measured sensitivity under
a size budget, saved as a recipe JSON.

`liteinfer` imports this module to register the command: the backends' modules (numpy,
gguf, llama.cpp, onnx) are imported inside the functions that run it, so every other
command starts without them.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from liteinfer.core.errors import LiteInferError
from liteinfer.core.files import scratch_dir
from liteinfer.quant.gguf.recipe import Recipe, load_recipe, save_recipe
from liteinfer.quant.onnx.cli import add_onnx_arguments, is_onnx, run_onnx


def add_gguf_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("GGUF (llama.cpp) options")
    g.add_argument("--type", default=None, help="uniform type: q4_k_m (default), q4_0, q8_0, q5_k_m, q6_k, iq4_xs, ...")
    g.add_argument("--mixed", action="store_true", help="per-tensor types from measured sensitivity")
    g.add_argument("--target-bpw", type=float, default=None, help="--mixed size budget in bits per weight")
    g.add_argument("--target-size", default=None, metavar="MB|FP32/N",
                   help="--mixed size budget: MB, or FP32/8 (the whole file at most 1/8 of the model's FP32 GGUF)")
    g.add_argument("--recipe", default=None, help="apply a saved recipe JSON (per-tensor types)")
    g.add_argument("--save-recipe", default=None, help="where --mixed writes its recipe (default OUT.recipe.json)")
    g.add_argument("--imatrix", default=None, help="importance matrix (GGUF, ours or llama-imatrix's)")
    g.add_argument("--save-imatrix", default=None, help="write the importance matrix computed from --calib")
    g.add_argument("--candidates", default=None, help="--mixed candidate types, comma-separated "
                   "(default q2_0,q2_k,q3_k,mxfp4,iq4_xs,q4_k,q5_k,q6_k,q8_0)")
    g.add_argument("--sensitivity", default="auto", choices=["auto", "kl", "proxy"],
                   help="per-tensor cost: KL divergence (exact, slower) or weighted weight error")
    g.add_argument("--ctx", type=int, default=256, help="calibration window length (tokens)")
    g.add_argument("--calib-windows", type=int, default=16, help="calibration windows for the imatrix")
    g.add_argument("--gptq", action="store_true",
                   help="GPTQ error-compensating rounding on llama.cpp's grid (needs --calib)")
    g.add_argument("--awq", action="store_true",
                   help="AWQ-style activation-aware scales folded into the norms first (needs --calib)")
    g.add_argument("--threads", type=int, default=None)


def gguf_main(args: argparse.Namespace) -> int:
    if os.getloadavg()[0] > (os.cpu_count() or 1):  # BLAS threads spin on a busy machine
        os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    from liteinfer.quant.gguf import quantize as q  # on use: start-up time (module docstring)

    src, dst = Path(args.input), Path(args.output)
    if dst.resolve() == src.resolve():
        raise LiteInferError("output must differ from the input")
    if args.type and not args.mixed:
        q.ftype_id(args.type)  # unknown type: fail before any work
    if args.mixed and args.recipe:
        raise LiteInferError("--mixed plans a recipe, --recipe applies one: give only one")
    if args.mixed and args.target_bpw is None and args.target_size is None:
        raise LiteInferError("--mixed needs --target-bpw or --target-size")
    recipe = None
    if args.recipe:  # read once, before any work: a bad recipe is a one-line error
        recipe = load_recipe(args.recipe)
    # beside the output as .OUT.q.PID.XXXX: a killed run's folder is removed by the next run for OUT
    with scratch_dir(dst, "q") as tmp:
        if src.is_dir():  # a Hugging Face folder: convert to F32 GGUF first
            from liteinfer.convert.hf import convert_hf  # on use: start-up time

            src = convert_hf(src, Path(tmp) / "source-f32.gguf", progress=False)
        src_tensors = q.read_tensors(src)  # truncated / not GGUF: one-line error
        show = sys.stderr.isatty()
        if recipe is not None and recipe.awq and not args.awq:
            print("this recipe was planned on AWQ-scaled weights: scaling the same way (--awq)", file=sys.stderr)
            args.awq = True
        if args.awq:  # the folded F32 model becomes the source of everything below
            src = _awq(args, src, Path(tmp), show, recipe)
        q.warn_requantize(src_tensors)
        if args.gptq and not args.calib:
            raise LiteInferError("--gptq needs calibration text: --calib FILE")
        if args.mixed or args.recipe:
            tensors = _mixed(args, src, dst, show, recipe, Path(tmp))
        elif args.gptq:
            from liteinfer.quant.gguf.mixed import calibrate, quantize_refined  # on use: start-up time

            cal = calibrate(src, args.calib, args.ctx, args.calib_windows, args.imatrix, show, hessians=True)
            _save_imatrix(args, cal)
            tensors = quantize_refined(src, dst, args.type or "q4_k_m", cal.imatrix, None, cal, show, args.threads)
        else:
            imat = _imatrix(args, src, show)
            tensors = q.quantize(src, dst, args.type or "q4_k_m", imatrix=imat, threads=args.threads)
    size = dst.stat().st_size
    ratio = sum(t.n_bytes for t in src_tensors) / sum(t.n_bytes for t in tensors)
    print(f"wrote {dst} ({size / 1e6:.2f} MB, {q.model_bpw(tensors):.3f} bits per weight, "
          f"1/{ratio:.2f} of the input's tensor bytes)")
    return 0


def _awq(args, src: Path, work: Path, show: bool, recipe: Recipe | None = None) -> Path:
    """Scales searched for the target types on --calib activations, folded into work/awq-f32.gguf."""
    from liteinfer.quant.gguf import awq  # on use: start-up time
    from liteinfer.quant.gguf.imatrix import load_imatrix, save_imatrix  # on use: start-up time
    from liteinfer.quant.gguf.mixed import calibrate  # on use: start-up time

    if not args.calib:
        raise LiteInferError("--awq needs calibration text: --calib FILE")
    names = [t.name for t in awq.check_source(src).tensors]  # llama, float weights: before any work
    cal = calibrate(src, args.calib, args.ctx, args.calib_windows, progress=show, hessians=True)
    imat = load_imatrix(args.imatrix) if args.imatrix else cal.imatrix
    if recipe is not None:
        types = recipe.overrides()
    elif args.mixed:  # the plan is not known yet: scale for the 4-bit grid it mostly picks
        types = dict.fromkeys(names, "q4_k")
    else:
        types = awq.target_types(src, args.type or "q4_k_m", imat, work, args.threads)
    out = work / "awq-f32.gguf"
    scales, results = awq.awq_model(src, out, cal.hessians, types, imat, progress=show)
    print(awq.summary(results))
    if args.imatrix:  # the given matrix describes the unscaled inputs: x / s now
        scaled = awq.scale_imatrix(imat, scales)
        args.imatrix = str(work / "awq-imatrix.gguf")
        save_imatrix(args.imatrix, scaled, dict.fromkeys(scaled, 1), "awq-scaled", 1, 1)
    return out


def _imatrix(args, src: Path, show: bool):
    """Importance matrix from --imatrix, else computed from --calib text, else None."""
    if args.imatrix:
        from liteinfer.quant.gguf.imatrix import load_imatrix  # on use: start-up time

        return load_imatrix(args.imatrix)
    if not args.calib:
        return None
    from liteinfer.quant.gguf.mixed import calibrate  # on use: start-up time

    cal = calibrate(src, args.calib, args.ctx, args.calib_windows, progress=show)
    _save_imatrix(args, cal)
    return cal.imatrix


def _save_imatrix(args, cal) -> None:
    if args.save_imatrix and cal.counts:
        from liteinfer.quant.gguf.imatrix import save_imatrix  # on use: start-up time

        save_imatrix(args.save_imatrix, cal.sums, cal.counts, str(args.calib), cal.info.windows, cal.info.ctx)


def _mixed(args, src: Path, dst: Path, show: bool, recipe: Recipe | None = None, work: Path | None = None):
    from liteinfer.quant.gguf.mixed import (  # on use: start-up time
        apply_recipe,
        calibrate,
        check_budget,
        plan_mixed,
        target_size_mb,
    )
    from liteinfer.quant.gguf.quantize import ggml_type  # on use: start-up time
    from liteinfer.quant.gguf.sensitivity import DEFAULT_TYPES  # on use: start-up time

    if recipe is not None:
        if recipe.rounding == "gptq" or args.gptq:
            if not args.calib:
                raise LiteInferError("this recipe uses GPTQ rounding: give --calib FILE")
            cal = calibrate(src, args.calib, args.ctx, args.calib_windows, args.imatrix, show, hessians=True)
            return apply_recipe(src, dst, recipe, cal.imatrix, cal, gptq=True, progress=show)
        imat = _imatrix(args, src, show)
        return apply_recipe(src, dst, recipe, imat)
    if not args.calib:
        raise LiteInferError("--mixed needs calibration text: --calib FILE")
    types = [t.strip() for t in args.candidates.split(",") if t.strip()] if args.candidates else list(DEFAULT_TYPES)
    for t in types:
        ggml_type(t)
    if args.target_size is not None:
        args.target_size = target_size_mb(args.target_size, src)  # FP32/N: from this source's tensor table
    check_budget(src, args.target_bpw, args.target_size, types)
    cal = calibrate(src, args.calib, args.ctx, args.calib_windows, args.imatrix, show, hessians=args.gptq)
    _save_imatrix(args, cal)
    recipe = plan_mixed(src, cal, args.target_bpw, args.target_size, types, args.sensitivity, progress=show,
                        gptq=args.gptq, workdir=work)
    recipe.imatrix = args.imatrix or args.save_imatrix
    recipe.awq = bool(args.awq)
    tensors = apply_recipe(src, dst, recipe, cal.imatrix, cal, gptq=args.gptq, progress=show)
    recipe_path = Path(args.save_recipe or f"{dst}.recipe.json")
    save_recipe(recipe, recipe_path)
    from liteinfer.quant.gguf.typemap import plot_type_map, write_type_map  # on use: start-up time

    maps = [str(write_type_map(recipe, f"{dst}.typemap.txt"))]
    try:
        maps.append(str(plot_type_map(recipe, f"{dst}.typemap.png")))
    except ImportError:
        print("type map PNG skipped: matplotlib is not installed: pip install 'liteinfer[plots]'", file=sys.stderr)
    counts: dict[str, int] = {}
    for t in recipe.tensors.values():
        counts[t.type] = counts.get(t.type, 0) + 1
    mix = ", ".join(f"{n} x {t}" for t, n in sorted(counts.items(), key=lambda kv: -kv[1]))
    kld = f", predicted KLD {recipe.predicted_kld:.3g}" if recipe.predicted_kld is not None else ""
    print(f"plan ({recipe.method}): {mix}; {recipe.bpw:.3f} bpw{kld}; recipe {recipe_path}; "
          f"per-layer type map {', '.join(maps)}")
    return tensors


def _is_gguf_input(path: str) -> bool:
    return True  # the default backend: GGUF files and Hugging Face folders


# (predicate on the input path, main function): the first match handles the command.
BACKENDS = [(is_onnx, run_onnx), (_is_gguf_input, gguf_main)]
ARGUMENTS = [add_gguf_args, add_onnx_arguments]


def main(args: argparse.Namespace) -> int:
    for accepts, run in BACKENDS:
        if accepts(str(args.input)):
            return run(args)
    raise LiteInferError(f"no quantizer for {args.input}")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("quantize", help="quantize a model (GGUF LLM: uniform or sensitivity-driven mixed types)")
    p.add_argument("input", help="model to quantize (.gguf, Hugging Face llama folder, ...)")
    p.add_argument("output", help="output model file")
    p.add_argument("--calib", default=None, help="calibration data (LLMs: a text file, never the evaluation text)")
    for add in ARGUMENTS:
        add(p)
    p.set_defaults(func=main)
