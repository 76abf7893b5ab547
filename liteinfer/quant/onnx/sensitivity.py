"""Sensitivity-driven mixed precision for ONNX models: measure, allocate, verify.

1. Sensitivity: for every weight node and every candidate type, quantize that node alone and
   measure the loss on calibration data against the FP32 outputs (1 - mean cosine for
   embeddings, mean KL divergence of the softmax for classifiers).
2. Allocation: start with every node at its smallest type; repeatedly upgrade the node whose
   next type buys the most loss reduction per byte (losses are treated as additive). This gives
   a path of plans from smallest to largest.
3. Verification: binary search along the path for the smallest plan whose real model (built
   and run, not predicted) meets the floor: mean cosine for embeddings; for classifiers the
   accuracy ratio to FP32 on labelled data, or top-1 agreement with FP32 without labels.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
from onnx import helper

from liteinfer.core.errors import LiteInferError
from liteinfer.evaluate.onnx import cosine_rows, kl_divergence
from liteinfer.quant.onnx.calibration import quiet_session
from liteinfer.quant.onnx.quantize import Quantizer, Target, type_bytes, weights_bytes

LOSSLESS = ("fp16", "fp32")  # not measured: their loss is ~0 by construction


@dataclass
class Scorer:
    """Runs candidate models on calibration feeds and compares them with the FP32 outputs."""

    kind: str  # embedding | classifier
    output: str
    feeds: list[dict]
    labels: np.ndarray | None = None
    threads: int | None = None
    ref: np.ndarray | None = None

    def run(self, model) -> np.ndarray:
        sess = quiet_session(model, self.threads)
        return np.concatenate([sess.run([self.output], f)[0] for f in self.feeds])

    def set_reference(self, model) -> None:
        self.ref = self.run(model)

    def loss(self, out: np.ndarray) -> float:
        if self.kind == "embedding":
            return float(1.0 - cosine_rows(self.ref, out).mean())
        return float(kl_divergence(self.ref, out).mean())

    def score(self, out: np.ndarray) -> float:
        if self.kind == "embedding":
            return float(cosine_rows(self.ref, out).mean())
        if self.labels is not None:
            ref_acc = float(np.mean(self.ref.argmax(1) == self.labels))
            return float(np.mean(out.argmax(1) == self.labels)) / max(ref_acc, 1e-12)
        return float(np.mean(out.argmax(1) == self.ref.argmax(1)))

    @property
    def metric(self) -> str:
        if self.kind == "embedding":
            return "mean cosine to FP32"
        return "accuracy ratio to FP32" if self.labels is not None else "top-1 agreement with FP32"


@dataclass
class Step:
    plan: dict[str, str]
    est_bytes: int
    pred_loss: float


@dataclass
class MixedResult:
    plan: dict[str, str]
    score: float
    est_bytes: int
    fp32_bytes: int
    sensitivity: dict[str, dict[str, float]]
    tried: list[tuple[int, int, float]] = field(default_factory=list)  # (path index, bytes, score)
    metric: str = ""


def measure_sensitivity(q: Quantizer, scorer: Scorer, types: list[str],
                        progress: Callable[[str], None] | None = None) -> dict[str, dict[str, float]]:
    """loss[node][type] with only that node quantized; lossless types get 0.

    Weight-only types (MatMul, Gather) are measured by feeding the dequantized weight into one
    FP32 session whose weights are overridable inputs: the same numbers as the real kernel up
    to its int8 activation rounding, without building a model per trial. Conv int8 (activation
    quantization too) is measured on a built model.
    """
    sens: dict[str, dict[str, float]] = {}
    todo = [(t, qt) for t in q.targets.values() for qt in _choices(t, types) if qt not in LOSSLESS]
    fake = [(t, qt) for t, qt in todo if _weight_only(t, qt)]
    conv_bias = {n.name: n.input[2] for n in q.model.graph.node if n.op_type == "Conv" and len(n.input) > 2}
    overridable = {t.weight for t, _ in fake} | {conv_bias[t.node] for t, _ in fake if t.node in conv_bias}
    session = _overridable_session(q, overridable, scorer.threads) if fake else None
    for i, (t, qt) in enumerate(todo):
        if _weight_only(t, qt):
            over = {}
            if t.op == "Conv":  # int8w: GPTQ weights and the corrected bias when calibrated
                w, bias = q.dequant_conv(t)
                if bias is not None and t.node in conv_bias:
                    over[conv_bias[t.node]] = bias
            else:
                w = q.block_quant(t, qt).dequant()
                w = np.ascontiguousarray(w.T) if t.op == "Gather" else w
            over[t.weight] = w
            out = np.concatenate([session.run([scorer.output], {**f, **over})[0] for f in scorer.feeds])
        else:
            out = scorer.run(q.build({t.node: qt}))
        sens.setdefault(t.node, {})[qt] = scorer.loss(out)
        if progress:
            progress(f"sensitivity {i + 1}/{len(todo)}: {t.node} {qt} loss {sens[t.node][qt]:.2e}")
    for t in q.targets.values():
        for qt in _choices(t, types):
            if qt in LOSSLESS:
                sens.setdefault(t.node, {})[qt] = 0.0
    return sens


def _weight_only(t: Target, qtype: str) -> bool:
    return t.op in ("MatMul", "Gather") or qtype == "int8w"


def _overridable_session(q: Quantizer, weights: set[str], threads: int | None):
    """An FP32 session where the named initializers are graph inputs, so a run can replace them."""
    model = copy.deepcopy(q.model)
    for init in model.graph.initializer:
        if init.name in weights:
            model.graph.input.append(helper.make_tensor_value_info(init.name, init.data_type, list(init.dims)))
    return quiet_session(model, threads)


def _choices(t: Target, types: list[str]) -> list[str]:
    allowed = [qt for qt in t.choices if qt in types]
    if t.op == "Conv" and "int8w" in allowed and "int8" in allowed:
        # static int8 is dominated: a larger file (QDQ graph) and ~30x the loss of calibrated
        # int8w; not measuring it saves one quantize_static build per conv
        allowed.remove("int8")
    return sorted(allowed, key=lambda qt: type_bytes(t, qt))


def greedy_path(targets: list[Target], sens: dict[str, dict[str, float]], types: list[str],
                max_bytes: int | None = None) -> list[Step]:
    """Plans from smallest to largest; each step upgrades the best loss-per-byte node.

    With `max_bytes` (estimated weight bytes) an upgrade that would not fit is skipped, so
    the path goes on with smaller ones: unbounded, EfficientNet's path jumped from an int4
    classifier straight past FP32/4 (int4x8, +235 KB) and the last plan within it was 4.42 MB.
    """
    choices = {t.node: _choices(t, types) for t in targets}
    state = {t.node: 0 for t in targets}
    by_node = {t.node: t for t in targets}

    def snapshot() -> Step:
        plan = {n: choices[n][i] for n, i in state.items()}
        est = sum(type_bytes(by_node[n], qt) for n, qt in plan.items())
        return Step(plan, est, sum(sens[n][qt] for n, qt in plan.items()))

    path = [snapshot()]
    while True:
        best, best_gain = None, 0.0
        total = path[-1].est_bytes
        for n, i in state.items():
            cur_loss, cur_bytes = sens[n][choices[n][i]], type_bytes(by_node[n], choices[n][i])
            for j in range(i + 1, len(choices[n])):
                extra = type_bytes(by_node[n], choices[n][j]) - cur_bytes
                if max_bytes is not None and total + extra > max_bytes:
                    continue
                gain = (cur_loss - sens[n][choices[n][j]]) / max(extra, 1)
                if gain > best_gain:
                    best, best_gain = (n, j), gain
        if best is None:
            return path
        state[best[0]] = best[1]
        path.append(snapshot())


def knapsack_plan(targets: list[Target], sens: dict[str, dict[str, float]], types: list[str],
                  max_bytes: int, unit: int = 1024) -> Step | None:
    """The plan of least summed loss within `max_bytes` (multiple-choice knapsack, bytes in `unit`s).

    The greedy path is optimal only at its own steps: between them, one large upgrade (an int4
    classifier to int4x8, +145 KB) loses to many small ones bought first, so at a budget the
    path can end on a plan that predicts ~40% more loss than the best one within it.
    """
    cap = max_bytes // unit
    if cap < 0:
        return None
    best = np.zeros(cap + 1)  # least loss of the nodes so far within b units
    picks = []
    for t in targets:
        opts = [(qt, -(-type_bytes(t, qt) // unit), sens[t.node][qt]) for qt in _choices(t, types)]
        new = np.full(cap + 1, np.inf)
        arg = np.zeros(cap + 1, dtype=np.int8)
        for c, (_, size, loss) in enumerate(opts):
            if size > cap:
                continue
            cand = np.full(cap + 1, np.inf)
            cand[size:] = best[: cap + 1 - size] + loss
            better = cand < new
            new[better], arg[better] = cand[better], c
        best = new
        picks.append((t, opts, arg))
    if not np.isfinite(best[cap]):
        return None
    plan, b = {}, cap
    for t, opts, arg in reversed(picks):
        qt, size, _ = opts[arg[b]]
        plan[t.node] = qt
        b -= size
    plan = {t.node: plan[t.node] for t in targets}
    return Step(plan, sum(type_bytes(t, plan[t.node]) for t in targets), sum(sens[n][qt] for n, qt in plan.items()))


def search(q: Quantizer, scorer: Scorer, types: list[str], min_score: float | None,
           max_bytes: int | None = None, progress: Callable[[str], None] | None = None,
           sens_scorer: Scorer | None = None, sensitivity: dict | None = None) -> MixedResult:
    """The smallest plan on the greedy path meeting `min_score` (and `max_bytes` when given).

    `sens_scorer` (default `scorer`) may hold a smaller slice of the calibration data: the
    per-node trials only rank nodes, the floor is checked on the whole set. `sensitivity`: a
    previous result for the same model, data and types (skips the measurement).
    """
    if not q.targets:
        raise LiteInferError("the model has no MatMul/Gemm/Conv/Gather weights to quantize")
    fp32_total = weights_bytes(q.model)
    fixed = fp32_total - sum(4 * t.numel for t in q.targets.values())
    if any(not _choices(t, types) for t in q.targets.values()):
        raise LiteInferError(f"--types {','.join(types)} leaves some nodes without a type (add fp16)")
    smallest = fixed + sum(type_bytes(t, _choices(t, types)[0]) for t in q.targets.values())
    if max_bytes is not None and smallest > max_bytes:  # fail before the expensive part
        raise LiteInferError(
            f"size budget {max_bytes / 1e6:.2f} MB cannot be met: the smallest plan takes {smallest / 1e6:.2f} MB"
        )
    t0 = time.time()
    sens = sensitivity or measure_sensitivity(q, sens_scorer or scorer, types, progress)
    # the budget in estimated weight bytes, less a margin for the nodes a plan adds (DequantizeLinear,
    # Cast, Gather) and its metadata; built files are checked against the real budget below
    cap = None if max_bytes is None else max_bytes - fixed - 32768
    targets = list(q.targets.values())
    path = _best_path(targets, sens, types, greedy_path(targets, sens, types, cap), cap)
    if progress:
        progress(f"sensitivity done in {time.time() - t0:.0f} s; {len(path)} plans on the path")
    tried: list[tuple[int, int, float]] = []
    scores: dict[int, float] = {}

    def real(i: int) -> float:
        if i not in scores:
            scores[i] = scorer.score(scorer.run(q.build(path[i].plan)))
            tried.append((i, fixed + path[i].est_bytes, scores[i]))
            if progress:
                progress(f"plan {i}: {(fixed + path[i].est_bytes) / 1e6:.2f} MB, score {scores[i]:.4f}")
        return scores[i]

    if cap is not None:
        path += _use_slack(q, targets, sens, types, path[-1], max_bytes)
    within = [i for i, s in enumerate(path) if max_bytes is None or fixed + s.est_bytes <= max_bytes]
    # estimates miss format overhead (QDQ scales, int32 biases): trust only a built model's bytes
    if max_bytes is not None and within:
        # whole-file bytes: QDQ nodes add graph size too; 16 KB for the plan written into metadata
        budget = max_bytes + (q.model.ByteSize() - weights_bytes(q.model))
        fits = lambda k: q.build(path[within[k]].plan).ByteSize() + 16384 <= budget  # noqa: E731
        lo, hi = -1, len(within) - 1  # largest k that fits (bytes grow along the path)
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if fits(mid):
                lo = mid
            else:
                hi = mid - 1
        if lo < 0:
            smallest_file = q.build(path[0].plan).ByteSize() + 16384
            raise LiteInferError(
                f"size budget cannot be met: the smallest plan's file takes {smallest_file / 1e6:.2f} MB, "
                f"the budget leaves {budget / 1e6:.2f} MB"
            )
        within = within[: lo + 1]
    if not within:
        raise LiteInferError(
            f"size budget {max_bytes / 1e6:.2f} MB cannot be met: the smallest plan takes "
            f"{(fixed + path[0].est_bytes) / 1e6:.2f} MB"
        )
    if min_score is None:  # size-targeted: the largest plan that fits
        best = within[-1]
        real(best)
    else:
        lo, hi = 0, within[-1]
        if real(hi) < min_score:
            raise LiteInferError(
                f"accuracy floor {min_score} cannot be met{' within the size budget' if max_bytes else ''}: "
                f"the best plan scores {scores[hi]:.4f} ({scorer.metric})"
            )
        while lo < hi:  # smallest index meeting the floor, assuming score grows along the path
            mid = (lo + hi) // 2
            if real(mid) >= min_score:
                hi = mid
            else:
                lo = mid + 1
        best = hi
    return MixedResult(path[best].plan, scores[best], fixed + path[best].est_bytes, fp32_total, sens,
                       sorted(tried), scorer.metric)


def _use_slack(q: Quantizer, targets: list[Target], sens: dict, types: list[str], top: Step,
               max_bytes: int) -> list[Step]:
    """Larger knapsack plans that still fit once the real file size of the plan at the budget is
    known (the 32 KB margin for added nodes and metadata is ~2x what EfficientNet's plans add)."""
    budget = max_bytes + (q.model.ByteSize() - weights_bytes(q.model))
    out: list[Step] = []
    for _ in range(3):
        slack = budget - (q.build(top.plan).ByteSize() + 16384)
        if slack < 1024:
            break
        step = knapsack_plan(targets, sens, types, top.est_bytes + slack)
        if step is None or step.pred_loss >= top.pred_loss or q.build(step.plan).ByteSize() + 16384 > budget:
            break
        out.append(step)
        top = step
    return out


def _best_path(targets: list[Target], sens: dict, types: list[str], greedy: list[Step], cap: int | None) -> list[Step]:
    """At each size the greedy path reaches (and at the budget), the knapsack-optimal plan of that size."""
    levels = sorted({s.est_bytes for s in greedy} | ({cap} if cap is not None else set()))
    path: list[Step] = []
    for level in levels:
        step = knapsack_plan(targets, sens, types, level)
        if step is None:
            continue
        if path and step.pred_loss >= path[-1].pred_loss:
            continue  # no better than a smaller plan already on the path
        path.append(step)
    return path or greedy


def format_plan(q: Quantizer, result: MixedResult) -> str:
    """Readable plan: one line per node with type, bytes and measured loss, then totals."""
    lines = [f"{'node':<28} {'op':<7} {'shape':<14} {'type':<10} {'KB':>8}  loss(alone)"]
    for node, qt in result.plan.items():
        t = q.targets[node]
        loss = result.sensitivity.get(node, {}).get(qt, 0.0)
        shape = "x".join(map(str, t.shape))
        lines.append(f"{node[:28]:<28} {t.op:<7} {shape:<14} {qt:<10} {type_bytes(t, qt) / 1024:>8.1f}  {loss:.2e}")
    counts: dict[str, int] = {}
    for qt in result.plan.values():
        counts[qt] = counts.get(qt, 0) + 1
    mix = ", ".join(f"{k}: {v}" for k, v in sorted(counts.items()))
    lines.append(
        f"plan: {mix}; weights {result.est_bytes / 1e6:.2f} MB of {result.fp32_bytes / 1e6:.2f} MB FP32 "
        f"(1/{result.fp32_bytes / result.est_bytes:.2f}); {result.metric}: {result.score:.4f}"
    )
    return "\n".join(lines)
