"""Calibrated int8 weights for Conv nodes: GPTQ rounding per output channel, then bias correction.

Round-to-nearest per-channel int8 weights cost EfficientNet-Lite0 15% top-1 agreement with FP32
on near-tie crops (KL 0.030), although each layer's weights are off by only 0.5-1%: its stem and
depthwise convs carry folded-BN gains of ~17, and every layer's rounding error also shifts the
mean of its output channels, which the next ReLU6 and the following layers amplify. Two
calibrated fixes, measured on 200 crops with all 49 convs quantized:

  GPTQ onto the per-channel grid (inputs = im2col patches)     KL 0.030 -> 0.0039
  + bias correction: b -= (W_q - W) . E[patch]                 KL 0.0039 -> 0.0011

A Conv weight [M, C/g, kH, kW] is, per group, a MatMul weight [K = C/g*kH*kW, M/g] over its
input patches, so GPTQ needs per group H = P^T P of the patches (every SUBSAMPLE-th output
position: neighbouring patches overlap and add little) and the mean patch for the bias.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view
from onnx import helper

from liteinfer.quant.onnx import blockwise
from liteinfer.quant.onnx.calibration import add_outputs, quiet_session

SUBSAMPLE = 4  # every 4th output position of each image feeds the statistics


@dataclass
class ConvStats:
    hessian: np.ndarray  # [g, K, K] sum of patch outer products
    patch_sum: np.ndarray  # [g, K]
    count: int = 0

    @property
    def mean(self) -> np.ndarray:
        return self.patch_sum / max(self.count, 1)


def conv_attrs(node) -> tuple[int, list[int], list[int], list[int]]:
    """(group, strides, pads, dilations) of an ONNX Conv node."""
    a = {x.name: helper.get_attribute_value(x) for x in node.attribute}
    return int(a.get("group", 1)), list(a.get("strides", [1, 1])), list(a.get("pads", [0, 0, 0, 0])), \
        list(a.get("dilations", [1, 1]))


def patches(x: np.ndarray, node, kernel: tuple[int, int]) -> np.ndarray:
    """Input patches [N, C, P, kH*kW] of a 2-D Conv over x [N, C, H, W] (subsampled positions)."""
    _, strides, pads, dil = conv_attrs(node)
    kh, kw = kernel
    x = np.pad(x, ((0, 0), (0, 0), (pads[0], pads[2]), (pads[1], pads[3])))
    span = ((kh - 1) * dil[0] + 1, (kw - 1) * dil[1] + 1)
    v = sliding_window_view(x, span, axis=(2, 3))[:, :, :: strides[0], :: strides[1], :: dil[0], :: dil[1]]
    n, c, ph, pw = v.shape[:4]
    return v.reshape(n, c, ph * pw, kh * kw)[:, :, ::SUBSAMPLE]


def accumulate(stats: ConvStats | None, x: np.ndarray, node, shape: tuple[int, ...]) -> ConvStats:
    """Add one batch of Conv inputs x [N, C, H, W] to the statistics of a weight of `shape`."""
    group = conv_attrs(node)[0]
    m, cg, kh, kw = shape
    p = patches(x.astype(np.float32), node, (kh, kw))
    n, _, npos, k = p.shape
    p = p.reshape(n, group, cg, npos, k).transpose(1, 0, 3, 2, 4).reshape(group, n * npos, cg * k)
    h = np.einsum("gpi,gpj->gij", p, p, optimize=True).astype(np.float64)
    s = p.sum(1, dtype=np.float64)
    if stats is None:
        return ConvStats(h, s, n * npos)
    stats.hessian += h
    stats.patch_sum += s
    stats.count += n * npos
    return stats


def collect_conv_stats(model, convs: list[tuple[str, str, tuple[int, ...]]], feeds: list[dict],
                       threads: int | None = None) -> dict[str, ConvStats]:
    """ConvStats by weight name for (node name, weight name, shape) of 4-D Conv weights."""
    nodes = {n.name: n for n in model.graph.node}
    convs = [c for c in convs if c[0] in nodes and len(c[2]) == 4]
    if not convs or not feeds:
        return {}
    inputs = sorted({nodes[c[0]].input[0] for c in convs})
    sess = quiet_session(add_outputs(model, inputs), threads)
    stats: dict[str, ConvStats] = {}
    for feed in feeds:
        acts = dict(zip(inputs, sess.run(inputs, feed), strict=True))
        for node, weight, shape in convs:
            stats[weight] = accumulate(stats.get(weight), acts[nodes[node].input[0]], nodes[node], shape)
    return stats


@dataclass
class ConvQuant:
    """uint8 weights with a per-output-channel scale and zero point, and the corrected bias."""

    q: np.ndarray  # uint8, the weight's shape
    scale: np.ndarray  # float32 [M]
    zero: np.ndarray  # uint8 [M]
    bias: np.ndarray  # float32 [M]

    def dequant(self) -> np.ndarray:
        shape = (-1, *([1] * (self.q.ndim - 1)))
        return ((self.q.astype(np.float32) - self.zero.reshape(shape)) * self.scale.reshape(shape)).astype(np.float32)


def quantize_conv(w: np.ndarray, bias: np.ndarray | None, stats: ConvStats) -> ConvQuant:
    """GPTQ per group onto a per-output-channel 8-bit grid, then the bias absorbs the mean shift."""
    m, cg, kh, kw = w.shape
    group = stats.hessian.shape[0]
    mg, k = m // group, cg * kh * kw
    q = np.zeros((m, k), dtype=np.uint8)
    scale = np.zeros(m, dtype=np.float32)
    zero = np.zeros(m, dtype=np.float32)
    for g in range(group):
        rows = slice(g * mg, (g + 1) * mg)
        bq = blockwise.quantize_gptq(w[rows].reshape(mg, k).T.astype(np.float32), stats.hessian[g], 8, k)
        q[rows], scale[rows], zero[rows] = bq.q.T, bq.scale[0], bq.zero[0]
    out = ConvQuant(q.reshape(w.shape), scale, zero.astype(np.uint8), np.zeros(m, np.float32))
    delta = (out.dequant() - w).reshape(group, mg, k)
    shift = np.einsum("gmk,gk->gm", delta, stats.mean).reshape(m)
    b = bias if bias is not None else np.zeros(m, np.float32)
    out.bias = (b - shift).astype(np.float32)
    return out
