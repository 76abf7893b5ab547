"""Per-tensor sensitivity to quantization, and the type choice under a size budget.

Measurement. For each candidate type, llama.cpp quantizes the whole model to that type
once (with the importance matrix); we read each tensor back, dequantized, so the rounding is
exactly llama.cpp's, fallbacks and all (a k-quant on a row width that is not a multiple of
256 silently becomes a legacy type, and its true size is what we count). Then the cost of
(tensor, type) is the KL divergence of the model's next-token distribution on calibration
text when that tensor alone is replaced by its quantized version, from the FP reference's
(numpy forward pass, restarted at the tensor's layer). For models too large for that,
`proxy` mode uses E||dW x||^2 / E||W x||^2 (the importance-weighted relative output error).

Allocation. Minimize the sum of costs (KL is roughly additive for small perturbations)
subject to total bytes <= budget: a Lagrangian sweep (each tensor picks the type minimizing
cost + lambda * bytes, lambda bisected to the budget), then greedy upgrades with the best
cost-drop per byte until the slack is used.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from liteinfer.core.errors import LiteInferError
from liteinfer.quant.gguf.gptq import refine_file, targets
from liteinfer.quant.gguf.quantize import bits_per_weight, quantize, read_dequantized, read_tensors

# q2_0 (64-wide blocks) and mxfp4 (32-wide) are the types under 4.5 bits that rows of a width
# other than a multiple of 256 can take (llama.cpp swaps k-quants there for q4_0/iq4_nl and up)
DEFAULT_TYPES = ("q2_0", "q2_k", "q3_k", "mxfp4", "iq4_xs", "q4_k", "q5_k", "q6_k", "q8_0")

# The token embedding and the output head (one tensor when tied, as in SmolLM2) take no type under
# 6 bits (llama.cpp's own mixtures keep them at q6_k and up too): the proxy cost is a relative error
# per tensor and does not see that the head's error goes straight into every logit. Measured on
# SmolLM2-135M (docs/quantization.md): the tied embedding at q2_0 gave top-1 accuracy 0; at 4.25-4.5
# bits, with the other tensors near-exact, perplexity x1.5.
OUTSIDE_BLOCKS = ("token_embd.weight", "output.weight")
OUTSIDE_MIN_BPW = 6.0


@dataclass
class Option:
    type: str  # the type llama.cpp actually produces (after any fallback)
    n_bytes: int
    cost: float


@dataclass
class Sensitivity:
    options: dict[str, list[Option]] = field(default_factory=dict)  # tensor -> candidates
    fixed_bytes: int = 0  # tensors llama.cpp never quantizes (norms)
    n_elements: int = 0
    method: str = "kl"


def log_softmax(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    m = x.max(-1, keepdims=True)
    return x - m - np.log(np.exp(x - m).sum(-1, keepdims=True))


def _layer_of(name: str, n_layer: int) -> int:
    if name.startswith("blk."):
        return int(name.split(".")[1])
    return n_layer if name == "output.weight" else 0


def _progress(total: int, desc: str, show: bool):
    return tqdm(total=total, desc=desc, unit="step", leave=False, disable=not show)


def measure(src: Path, ref, windows: list[list[int]], imatrix: dict[str, np.ndarray], types=DEFAULT_TYPES,
            method: str = "kl", progress: bool = False, workdir: Path | None = None,
            hessians: dict | None = None, n_tokens: dict | None = None) -> Sensitivity:
    """Cost and size of every (quantizable tensor, candidate type) pair.

    With `hessians`, each candidate is GPTQ-refined first, so costs are those of the rounding
    that will actually be used.
    """
    tensors = read_tensors(src)
    quant = [t for t in tensors if t.quantizable]
    sens = Sensitivity(fixed_bytes=sum(t.n_bytes for t in tensors if not t.quantizable),
                       n_elements=sum(t.n_elements for t in tensors), method=method)
    n_layer = ref.n_layer
    base_lp, resid = [], []
    if method == "kl":  # the FP model's distributions and residual streams, computed once
        for w in windows:
            xs = ref.residuals(w)
            resid.append(xs)
            base_lp.append(log_softmax(ref.head(xs[-1])))
    bar = _progress(len(types) * (1 + len(quant)), "sensitivity", progress)
    with tempfile.TemporaryDirectory(dir=workdir) as tmp:
        for tname in types:
            out = Path(tmp) / f"{tname}.gguf"
            quantize(src, out, ftype="q8_0", imatrix=imatrix, overrides={t.name: tname for t in quant})
            if hessians:
                weights, hess, counts = targets(ref, hessians, n_tokens or {})
                refine_file(out, weights, hess, n_tokens=counts)
            bar.update(1)
            # ggml's own dequantizer: reads every type llama.cpp writes (gguf-py lacks q2_0)
            for name, qtype, n_bytes, deq in read_dequantized(out, {t.name for t in quant}):
                if method == "kl":
                    cost = _kl_cost(ref, name, deq, windows, resid, base_lp, n_layer)
                else:
                    cost = _proxy_cost(ref.gguf_weight(name), deq, imatrix.get(name))
                sens.options.setdefault(name, []).append(Option(qtype, int(n_bytes), float(cost)))
                bar.update(1)
    bar.close()
    for name in OUTSIDE_BLOCKS:  # the embedding / output head: no type under 6 bits when there is one
        keep = [o for o in sens.options.get(name, []) if bits_per_weight(o.type) >= OUTSIDE_MIN_BPW]
        if keep:
            sens.options[name] = keep
    return sens


def _kl_cost(ref, name: str, deq: np.ndarray, windows, resid, base_lp, n_layer: int) -> float:
    orig = {hf: ref.w[hf] for hf in ref.hf_names(name)}
    ref.set_gguf_weight(name, deq)
    try:
        start = _layer_of(name, n_layer)
        kls = []
        for w, xs, lp0 in zip(windows, resid, base_lp, strict=True):
            x = ref.embed(w) if name == "token_embd.weight" else xs[start]
            lp = log_softmax(ref.forward_from(start, x))
            kls.append((np.exp(lp0) * (lp0 - lp)).sum(-1))
        return float(np.concatenate(kls).mean())
    finally:
        ref.w.update(orig)


def _proxy_cost(w: np.ndarray, deq: np.ndarray, imat: np.ndarray | None) -> float:
    d2 = ((w - deq) ** 2).astype(np.float64)
    w2 = (w.astype(np.float64)) ** 2
    if imat is None:  # token embedding: every row is one token, no activations to weigh by
        return float(d2.sum() / w2.sum())
    return float((d2 @ imat).sum() / (w2 @ imat).sum())


def smallest_bpw(tensors, types) -> float:
    """A lower bound on any plan's bits per weight (nominal type sizes, before fallbacks)."""
    low = min(bits_per_weight(t) for t in types)
    bits = sum(t.n_elements * low if t.quantizable else 8 * t.n_bytes for t in tensors)
    return bits / sum(t.n_elements for t in tensors)


def allocate(sens: Sensitivity, budget_bytes: float) -> dict[str, Option]:
    """The cheapest-cost plan whose total size (quantizable + fixed tensors) fits the budget."""
    names = sorted(sens.options)
    avail = budget_bytes - sens.fixed_bytes
    opts = {n: sorted(sens.options[n], key=lambda o: o.n_bytes) for n in names}
    smallest = sum(o[0].n_bytes for o in opts.values())
    if smallest > avail:
        bpw = 8 * (smallest + sens.fixed_bytes) / sens.n_elements
        raise LiteInferError(f"size budget cannot be met: the smallest plan is {bpw:.2f} bits per weight "
                             f"({(smallest + sens.fixed_bytes) / 1e6:.2f} MB of tensors)")

    def pick(lam: float) -> dict[str, Option]:
        return {n: min(o, key=lambda x: x.cost + lam * x.n_bytes) for n, o in opts.items()}

    lo, hi = 0.0, 1.0
    while sum(o.n_bytes for o in pick(hi).values()) > avail:
        hi *= 4
        if hi > 1e12:
            break
    for _ in range(60):
        mid = (lo + hi) / 2
        if sum(o.n_bytes for o in pick(mid).values()) > avail:
            lo = mid
        else:
            hi = mid
    plan = pick(hi)
    if sum(o.n_bytes for o in plan.values()) > avail:  # lambda search hit its cap
        plan = {n: o[0] for n, o in opts.items()}
    # spend the slack: best cost reduction per extra byte first
    while True:
        used = sum(o.n_bytes for o in plan.values())
        best, best_gain = None, 0.0
        for n, o in opts.items():
            for cand in o:
                extra = cand.n_bytes - plan[n].n_bytes
                gain = plan[n].cost - cand.cost
                if extra > 0 and gain > 0 and used + extra <= avail and gain / extra > best_gain:
                    best, best_gain = (n, cand), gain / extra
        if best is None:
            return plan
        plan[best[0]] = best[1]
