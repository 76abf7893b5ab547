"""Running an ONNX model on calibration data in ONNX Runtime: sessions and layer statistics.

The Hessians GPTQ needs (X^T X of each MatMul weight's input) come from the FP32 model run
with the inputs of those MatMuls added as outputs; the Conv patch statistics (conv_gptq.py),
the sensitivity trials and the load check of a quantized model use the same session helper.
"""

from __future__ import annotations

import copy
from typing import TYPE_CHECKING

import numpy as np
import onnxruntime as ort
from onnx import helper

if TYPE_CHECKING:  # for the annotation only: quantize.py imports conv_gptq.py, which imports this
    from liteinfer.quant.onnx.quantize import Target


def quiet_session(model, threads: int | None = None) -> ort.InferenceSession:
    """An in-memory ONNX Runtime CPU session for calibration, trials and checks: warnings off
    (unused-initializer notices from folded constants), threads as given or ORT's default."""
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    if threads:
        opts.intra_op_num_threads = threads
    return ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])


def add_outputs(model, names: list[str]):
    """A copy of the model that also returns the named intermediate tensors."""
    m = copy.deepcopy(model)
    existing = {o.name for o in m.graph.output}
    for n in names:
        if n not in existing:
            m.graph.output.append(helper.make_empty_tensor_value_info(n))
    return m


def collect_hessians(model, targets: list[Target], feeds: list[dict], threads: int | None = None) -> dict[str, np.ndarray]:
    """X^T X of each MatMul target's input over the calibration feeds (padding rows skipped)."""
    acts = sorted({t.activation for t in targets if t.op == "MatMul" and t.activation})
    if not acts:
        return {}
    sess = quiet_session(add_outputs(model, acts), threads)
    hess: dict[str, np.ndarray] = {}
    for feed in feeds:
        outs = sess.run(acts, feed)
        keep = feed["attention_mask"].reshape(-1).astype(bool) if "attention_mask" in feed else None
        for name, x in zip(acts, outs, strict=True):
            x = x.reshape(-1, x.shape[-1]).astype(np.float32)
            if keep is not None and len(keep) == len(x):
                x = x[keep]
            hess[name] = hess.get(name, 0) + (x.T @ x).astype(np.float64)
    return hess


def token_counts(model, targets: list[Target], feeds: list[dict]) -> dict[str, np.ndarray]:
    """How often the calibration inputs look up each row of every embedding-table target, by the
    Gather's index input (graph inputs only, e.g. input_ids; padding skipped)."""
    nodes = {n.name: n for n in model.graph.node}
    out: dict[str, np.ndarray] = {}
    for t in targets:
        ids = nodes[t.node].input[1] if t.op == "Gather" and t.node in nodes else None
        if ids is None or not feeds or ids not in feeds[0]:
            continue
        counts = np.zeros(t.shape[0], dtype=np.int64)
        for feed in feeds:
            x = np.asarray(feed[ids]).reshape(-1)
            if "attention_mask" in feed and feed["attention_mask"].size == x.size:
                x = x[feed["attention_mask"].reshape(-1).astype(bool)]
            np.add.at(counts, x[(x >= 0) & (x < len(counts))], 1)
        out[ids] = counts
    return out

