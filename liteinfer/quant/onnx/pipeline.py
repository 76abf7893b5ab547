"""`liteinfer quantize model.onnx out.onnx ...`: the whole ONNX path in one function.

    quantize_onnx(src, out, qtype="int8", calib=...)                      one type everywhere
    quantize_onnx(src, out, mixed=True, min_accuracy=0.99, calib=...)     sensitivity-driven mix

Reads the model's liteinfer metadata to know how to turn the calibration file into inputs,
collects Hessians for GPTQ, builds, checks that ORT loads the result, and writes it atomically
with the plan recorded in the metadata. Any bad input stops before an output file exists.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from liteinfer.core.errors import LiteInferError
from liteinfer.core.files import scratch_dir
from liteinfer.engines.onnx import load_model
from liteinfer.engines.onnx_meta import read_meta, write_meta
from liteinfer.evaluate.onnx import CALIB_TOKENS, load_eval_set, read_images, read_texts, text_feeds
from liteinfer.quant.onnx.calibration import collect_hessians, quiet_session, token_counts
from liteinfer.quant.onnx.conv_gptq import collect_conv_stats
from liteinfer.quant.onnx.quantize import (
    QTYPES,
    Quantizer,
    find_targets,
    load_onnx,
    prepare_model,
    save_model,
    weights_bytes,
)
from liteinfer.quant.onnx.sensitivity import MixedResult, Scorer, format_plan, search

CALIB_LIMIT = {"embedding": 160, "classifier": 160}  # inputs for GPTQ statistics and the floor
SENS_LIMIT = {"embedding": 32, "classifier": 100}  # held-out inputs for each per-node trial


@dataclass
class OnnxQuantReport:
    out: Path
    plan: dict[str, str]
    fp32_bytes: int
    out_bytes: int
    score: float | None
    metric: str
    plan_text: str
    seconds: float
    sensitivity: dict | None = None  # loss[node][type] of a --mixed run, reusable
    warning: str = ""  # e.g. a floor the held-out inputs are too few to resolve


def _calib_sets(fp32_path: Path, calib: str | Path, limit: int | None):
    """(model, fit set, held-out check set, sensitivity slice, output name, usage feeds) from one source.

    GPTQ statistics and int8 activation ranges come from the fit part; the accuracy floor is
    checked on the held-out quarter, which the quantizer never fitted: a score measured on the
    fitting data would flatter GPTQ. The per-node losses are measured on held-out inputs too:
    on fitted crops EfficientNet's int4 classifier lost 10x less than on others (5.5e-5 vs
    ~5e-4 KL), so the search ranked it too cheap to upgrade.
    Usage feeds (embedding models): every text of the file except the held-out ones, past the
    limit too; only their token ids are counted, to pick the embedding rows kept on a fine grid.
    """
    model = load_model(fp32_path)
    n = limit or CALIB_LIMIT[model.kind]
    count = len(read_texts(calib, limit=n)) if model.kind == "embedding" else len(read_images(calib, model.labels, limit=n)[0])
    cut = 0  # too few to hold any out: fit, check and rank on the same inputs
    if count < 4:
        fit = check = load_eval_set(model, calib, limit=n, calibration=True)
    else:
        cut = count - max(1, count // 4)
        fit = load_eval_set(model, calib, limit=n, calibration=True, part=slice(0, cut))
        check = load_eval_set(model, calib, limit=n, calibration=True, part=slice(cut, None))
    sens = load_eval_set(model, calib, limit=n, calibration=True, part=slice(cut, cut + SENS_LIMIT[model.kind]))
    output = model.meta.text.output if model.kind == "embedding" else model.prep.output
    usage = fit.feeds
    if model.kind == "embedding" and cut:
        texts = read_texts(calib)
        usage = text_feeds(model, texts[:cut] + texts[count:], max_tokens=CALIB_TOKENS).feeds
    return model, fit, check, sens, output, usage


def quantize_onnx(src: str | Path, out: str | Path, qtype: str | None = None, mixed: bool = False,
                  calib: str | Path | None = None, min_accuracy: float | None = None,
                  max_size_mb: float | None = None, types: list[str] | None = None,
                  calib_limit: int | None = None, accuracy_level: int = 4, gptq: bool = True,
                  progress: Callable[[str], None] | None = None, sensitivity: dict | None = None) -> OnnxQuantReport:
    t0 = time.time()
    src, out = Path(src), Path(out)
    if not mixed and qtype is None:
        raise LiteInferError("give --type TYPE or --mixed")
    if qtype is not None and qtype not in QTYPES:
        raise LiteInferError(f"unknown quantization type {qtype!r} (known: {', '.join(QTYPES)})")
    types = types or list(QTYPES)
    for t in types:
        if t not in QTYPES:
            raise LiteInferError(f"unknown quantization type {t!r} (known: {', '.join(QTYPES)})")
    if min_accuracy is not None and not 0 < min_accuracy <= 1:
        raise LiteInferError(f"--min-accuracy must be in (0, 1], got {min_accuracy}")
    if mixed and min_accuracy is None and max_size_mb is None:
        raise LiteInferError("--mixed needs --min-accuracy and/or --max-size")
    if mixed and calib is None:
        raise LiteInferError("--mixed needs calibration data (--calib)")
    if out.resolve() == src.resolve():
        raise LiteInferError("output would overwrite the input model")

    fp32 = load_onnx(src)
    meta = read_meta(fp32)
    model = fit = check = sens = output = usage = None
    if calib is not None:
        model, fit, check, sens, output, usage = _calib_sets(src, calib, calib_limit)
    # targets of the prepared graph: a Gemm is a MatMul target (and gets GPTQ) only after the rewrite
    prepared = prepare_model(fp32)
    targets = find_targets(prepared)
    need_calib = qtype == "int8" and any(t.op == "Conv" for t in targets)
    if need_calib and fit is None:
        raise LiteInferError("int8 convolutions are calibrated (static QDQ): give --calib DATA")

    hessians = {}
    key = _stats_key(src, calib, calib_limit)
    if fit is not None and gptq and (mixed or (qtype or "").startswith("int4")):
        if progress:
            progress("collecting layer input statistics for GPTQ")
        hessians = _memo(("hessians", key), lambda: collect_hessians(prepared, targets, fit.feeds))
    conv_stats = {}
    if fit is not None and gptq and (mixed or qtype == "int8w") and any(t.op == "Conv" for t in targets):
        if progress:
            progress("collecting conv input patch statistics (GPTQ + bias correction)")
        convs = [(t.node, t.weight, t.shape) for t in targets if t.op == "Conv"]
        conv_stats = _memo(("conv", key), lambda: collect_conv_stats(prepared, convs, fit.feeds))
    counts = token_counts(prepared, targets, usage) if usage else {}
    # scratch beside the output (.OUT.q.PID.XXXX): a killed run's folder is removed by the next run
    with scratch_dir(out, "q") as work:
        q = Quantizer(fp32, hessians, fit.feeds if fit else None, accuracy_level=accuracy_level, conv_stats=conv_stats,
                        work=work, token_counts=counts)
        if not q.targets:
            raise LiteInferError(f"{src}: no MatMul/Gemm/Conv/Gather weights to quantize")

        scorer = sens_scorer = None
        if check is not None:
            scorer = Scorer(model.kind, output, check.feeds, check.labels)
            scorer.set_reference(q.model)
            sens_scorer = Scorer(model.kind, output, sens.feeds, sens.labels)
            sens_scorer.set_reference(q.model)

        # the size budget is for the file: graph, metadata and tokenizer take their share first
        overhead = src.stat().st_size - weights_bytes(q.model)
        if mixed:
            max_bytes = int(max_size_mb * 1e6) - overhead if max_size_mb is not None else None
            result = search(q, scorer, types, min_accuracy, max_bytes, progress, sens_scorer, sensitivity)
            sensitivity = result.sensitivity
            plan, score = result.plan, result.score
            plan_text = format_plan(q, result)
        else:
            plan = {n: (qtype if qtype in t.choices else "int8") for n, t in q.targets.items()}
            score = None
            plan_text = ""
        quantized = q.build(plan)
        if scorer is not None and score is None:
            score = scorer.score(scorer.run(quantized))
        if not mixed:
            fake = MixedResult(plan, score if score is not None else float("nan"), weights_bytes(quantized),
                               weights_bytes(q.model), {}, metric=scorer.metric if scorer else "not measured (no --calib)")
            plan_text = format_plan(q, fake)
            if min_accuracy is not None and score is not None and score < min_accuracy:
                raise LiteInferError(f"{qtype} scores {score:.4f} ({scorer.metric}), below --min-accuracy {min_accuracy}")
            if max_size_mb is not None and weights_bytes(quantized) + overhead > max_size_mb * 1e6:
                raise LiteInferError(
                    f"{qtype} takes {(weights_bytes(quantized) + overhead) / 1e6:.2f} MB, over --max-size {max_size_mb}"
                )
        meta.quantization = {
            "plan": plan, "methods": {n: q.method.get(n, "") for n in plan}, "score": score,
            "metric": scorer.metric if scorer else "", "source": src.name, "accuracy_level": accuracy_level,
        }
        write_meta(quantized, meta)
        _check_loads(quantized)
        size = save_model(quantized, out)
    warning = ""
    if min_accuracy is not None and min_accuracy < 1 and scorer is not None and model.kind == "classifier":
        # agreement moves in steps of 1/n: with n < 2 / (1 - floor) held-out inputs the check
        # allows at most one miss, so it cannot tell a plan at the floor from one well below it
        n_check = len(scorer.ref)
        if n_check < 2 / (1 - min_accuracy):
            need = math.ceil(2 / (1 - min_accuracy) - 1e-9) * 4
            warning = (f"the floor {min_accuracy} was checked on {n_check} held-out inputs (a quarter of the "
                       f"calibration data), too few to resolve it; give >= {need} (--calib-limit {need})")
    return OnnxQuantReport(out, plan, src.stat().st_size, size, score, scorer.metric if scorer else "",
                           plan_text, time.time() - t0, sensitivity if mixed else None, warning)


_STATS: dict[tuple, object] = {}  # calibration statistics of recent runs in this process


def _stats_key(src: Path, calib: str | Path | None, limit: int | None) -> tuple | None:
    """Same model file, same calibration file, same limit: the same statistics (stat-checked)."""
    if calib is None or not Path(calib).exists():
        return None
    a, b = src.stat(), Path(calib).stat()
    return (str(src.resolve()), a.st_mtime_ns, a.st_size, str(Path(calib).resolve()), b.st_mtime_ns, b.st_size, limit)


def _memo(key: tuple, compute: Callable[[], dict]) -> dict:
    """Reuse statistics across quantize_onnx calls in one process (a benchmark builds several
    variants from one calibration set; EfficientNet's conv statistics take minutes)."""
    if key[1] is None:
        return compute()
    if key not in _STATS:
        if len(_STATS) >= 4:
            _STATS.pop(next(iter(_STATS)))
        _STATS[key] = compute()
    return _STATS[key]


def _check_loads(model) -> None:
    try:
        quiet_session(model)
    except Exception as e:
        raise LiteInferError(f"internal: quantized model does not load in onnxruntime ({str(e)[:200]})") from None
