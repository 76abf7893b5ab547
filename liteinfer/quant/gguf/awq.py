"""AWQ-style activation-aware scaling, folded exactly into the model before llama.cpp quantizes it.

A weight column that meets large activations matters more: scaling it up by s_j (and its input
down by 1/s_j) gives it a finer share of its block's grid. Where the input comes out of an
RMSNorm (q/k/v after attn_norm, gate/up after ffn_norm, output after output_norm) the 1/s
folds into the norm's weight; for ffn_down it folds into ffn_up's rows (down's input is
silu(gate) * up, linear in up). In full precision the model is the same function
(W' = W diag(s), g' = g / s); only the rounding changes.

Per group of projections sharing one input, s = a^alpha with a = sqrt(mean x^2) per input
channel (the importance matrix), and alpha from a grid in [0, 1] that minimizes the group's
output error sum ||(Q(W diag s) diag(1/s) - W) X||^2 on calibration activations (X^T X from
the reference forward pass), where Q is llama.cpp's own rounding of the tensor's target type
(ggml_quantize_chunk, with the importance matrix llama.cpp will see: imatrix / s^2).
alpha = 0 is s = 1, the unscaled model, so a group is never made worse on calibration data.
"""

from __future__ import annotations

import ctypes
from dataclasses import dataclass
from pathlib import Path

import gguf
import llama_cpp
import numpy as np
from gguf import GGUFReader
from gguf.quants import dequantize
from tqdm import tqdm

from liteinfer.core.errors import LiteInferError
from liteinfer.core.files import atomic_output
from liteinfer.core.gguf_write import writer_like
from liteinfer.quant.gguf.quantize import quantize

ALPHAS = tuple(np.round(np.linspace(0.0, 1.0, 11), 2))
FLOAT = {"F32", "F16", "BF16"}


@dataclass
class Group:
    producer: str  # the norm weight (1-D) or ffn_up (rows) that absorbs 1/s
    consumers: tuple[str, ...]  # projections whose input columns are scaled by s


@dataclass
class GroupResult:
    producer: str
    alpha: float
    err_plain: float  # calibration output error without scaling (alpha = 0)
    err: float  # at the chosen alpha

    @property
    def gain(self) -> float:
        return self.err / self.err_plain - 1 if self.err_plain > 0 else 0.0


def groups(names: set[str]) -> list[Group]:
    """The scalable groups among the tensor names present (layers read off the names)."""
    layers = sorted({int(n.split(".")[1]) for n in names if n.startswith("blk.")})
    out = []
    for i in layers:
        b = f"blk.{i}."
        out += [Group(b + "attn_norm.weight", tuple(b + f"attn_{p}.weight" for p in "qkv")),
                Group(b + "ffn_norm.weight", (b + "ffn_gate.weight", b + "ffn_up.weight")),
                Group(b + "ffn_up.weight", (b + "ffn_down.weight",))]
    if "output.weight" in names:  # untied head only: a tied one is also the embedding table
        out.append(Group("output_norm.weight", ("output.weight",)))
    return [g for g in out if g.producer in names and all(c in names for c in g.consumers)]


_CHUNK = None


def _ggml_quantize_chunk():
    """llama.cpp's own row quantizer (libggml-base, shipped inside llama-cpp-python)."""
    global _CHUNK
    if _CHUNK is None:
        libs = sorted((Path(llama_cpp.__file__).parent / "lib").glob("libggml-base.*"))
        if not libs:
            raise LiteInferError("AWQ needs libggml-base from llama-cpp-python; not found")
        f = ctypes.CDLL(str(libs[0])).ggml_quantize_chunk
        f.restype = ctypes.c_size_t
        f.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64, ctypes.c_int64,
                      ctypes.c_int64, ctypes.c_void_p]
        _CHUNK = f
    return _CHUNK


def roundtrip(w: np.ndarray, qtype: str, imatrix: np.ndarray | None = None) -> np.ndarray:
    """w [rows, cols] quantized to qtype by llama.cpp (weighted by imatrix [cols]) and back."""
    t = gguf.GGMLQuantizationType[qtype.upper()]
    if t.name in FLOAT:
        return w.astype(np.float16).astype(np.float32) if t.name == "F16" else w.copy()
    block, size = gguf.GGML_QUANT_SIZES[t]
    rows, cols = w.shape
    src = np.ascontiguousarray(w, dtype=np.float32)
    out = np.zeros((rows, cols // block * size), dtype=np.uint8)
    im = None if imatrix is None else np.ascontiguousarray(imatrix, dtype=np.float32)
    _ggml_quantize_chunk()(int(t), src.ctypes.data, out.ctypes.data, 0, rows, cols,
                           None if im is None else im.ctypes.data)
    return dequantize(out, t).reshape(rows, cols)


def output_error(w: np.ndarray, qtype: str, h: np.ndarray, s: np.ndarray, imatrix: np.ndarray | None) -> float:
    """||(Q(W diag s) diag(1/s) - W) X||^2 with H = X^T X."""
    im = None if imatrix is None else imatrix / (s * s)
    d = (roundtrip(w * s, qtype, im) / s - w).astype(np.float64)
    return float(((d @ h) * d).sum())


def group_error(g: Group, weights, hessians, types, imatrix, s: np.ndarray) -> float:
    """The group's summed output error with scales s."""
    return sum(output_error(weights[c], types[c], hessians[c], s, imatrix.get(c) if imatrix else None)
               for c in g.consumers)


def channel_scales(a: np.ndarray, alpha: float) -> np.ndarray:
    """s = a^alpha, normalized so that max * min = 1 (AWQ's normalization); dead channels get 1."""
    if alpha == 0:
        return np.ones_like(a, dtype=np.float32)
    a = np.maximum(a.astype(np.float64), a.max() * 1e-4 + 1e-12)
    s = a ** alpha
    return (s / np.sqrt(s.max() * s.min())).astype(np.float32)


def search(weights: dict[str, np.ndarray], hessians: dict[str, np.ndarray], types: dict[str, str],
           imatrix: dict[str, np.ndarray] | None, alphas=ALPHAS,
           progress: bool = False) -> tuple[dict[str, np.ndarray], list[GroupResult]]:
    """Best scales per group: {producer name: s}, and what each group's search found.

    weights: GGUF-named float32 weights (GGUF layout: [out, in]); hessians: X^T X per consumer;
    types: each consumer's target llama.cpp type; imatrix: what llama.cpp will weigh with, if any.
    """
    todo = groups(set(weights))
    if progress:
        todo = tqdm(todo, desc="awq", unit="group", leave=False)
    scales, results = {}, []
    for g in todo:
        first = g.consumers[0]
        if first not in hessians:
            continue
        # sqrt(sum x^2) per channel: the token count cancels in the scales' normalization
        a = np.sqrt(np.maximum(np.diag(hessians[first]), 0))
        errs = [group_error(g, weights, hessians, types, imatrix, channel_scales(a, al)) for al in alphas]
        best = int(np.argmin(errs))
        # alpha = 0 is on the default grid: its error is already measured
        plain = errs[list(alphas).index(0.0)] if 0.0 in alphas else \
            group_error(g, weights, hessians, types, imatrix, channel_scales(a, 0.0))
        results.append(GroupResult(g.producer, float(alphas[best]), plain, errs[best]))
        if alphas[best] != 0:
            scales[g.producer] = channel_scales(a, float(alphas[best]))
    return scales, results


def fold(weights: dict[str, np.ndarray], scales: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The changed tensors: consumers' columns times s, the producer divided by s (exact in FP)."""
    out: dict[str, np.ndarray] = {}
    get = lambda n: out.get(n, weights[n])  # noqa: E731 - ffn_up is both a consumer and a producer
    for g in groups(set(weights)):
        s = scales.get(g.producer)
        if s is None:
            continue
        for c in g.consumers:
            out[c] = (get(c) * s[None, :]).astype(np.float32)
        p = get(g.producer)
        out[g.producer] = (p / s if p.ndim == 1 else p / s[:, None]).astype(np.float32)
    return out


def scale_imatrix(imatrix: dict[str, np.ndarray], scales: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The importance matrix of the scaled model: the consumers' inputs are x / s."""
    out = dict(imatrix)
    for g in groups(set(imatrix) | set(scales)):
        if g.producer in scales:
            for c in g.consumers:
                if c in out:
                    out[c] = (out[c] / scales[g.producer] ** 2).astype(np.float32)
    return out


def check_source(path: str | Path):
    """GGUFReader of an F32/F16/BF16 llama GGUF; anything else is a one-line error."""
    try:
        r = GGUFReader(str(path))
    except Exception as e:
        raise LiteInferError(f"{path}: not a readable GGUF ({type(e).__name__})") from None
    arch = r.fields.get("general.architecture")
    arch = arch.contents() if arch is not None else None
    if arch != "llama":
        raise LiteInferError(f"--awq supports llama-architecture models; {Path(path).name} is {arch!r}")
    quant = sorted({t.tensor_type.name for t in r.tensors if t.tensor_type.name not in FLOAT})
    if quant:
        raise LiteInferError(f"--awq needs an F32/F16/BF16 source; {Path(path).name} has {', '.join(quant)} "
                             "tensors (scaling a quantized model moves it off its grid)")
    return r


def read_float_gguf(path: str | Path):
    """(reader, float32 weights by GGUF name, in GGUF layout [out, in]) of a float llama GGUF."""
    r = check_source(path)
    return r, {t.name: dequantize(t.data, t.tensor_type).astype(np.float32).reshape(
        [int(d) for d in reversed(t.shape)]) for t in r.tensors}


def write_like(reader, dst: str | Path, changed: dict[str, np.ndarray]) -> None:
    """dst = the reader's model (metadata, tokenizer, tensor order) with `changed` tensors in F32."""
    with atomic_output(dst) as tmp:
        w = writer_like(reader, tmp)
        for t in reader.tensors:
            if t.name in changed:
                data = changed[t.name]
            elif t.tensor_type.name in ("F32", "F16"):
                data = np.asarray(t.data)
            else:  # BF16: numpy has no such dtype
                data = dequantize(t.data, t.tensor_type).astype(np.float32)
            w.add_tensor(t.name, np.ascontiguousarray(data))
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
        w.close()


def target_types(src: Path, ftype: str, imatrix: dict | None, work: Path, threads: int | None = None) -> dict:
    """Each tensor's type under llama.cpp's ftype mixture (read off a trial quantization)."""
    trial = work / "awq-trial.gguf"
    tensors = quantize(src, trial, ftype, imatrix=imatrix, threads=threads)
    trial.unlink()
    return {t.name: t.type_name for t in tensors}


def awq_model(src: str | Path, dst: str | Path, hessians: dict[str, np.ndarray], types: dict[str, str],
              imatrix: dict[str, np.ndarray] | None = None, alphas=ALPHAS,
              progress: bool = False) -> tuple[dict[str, np.ndarray], list[GroupResult]]:
    """Search the scales on src's calibration Hessians, write the folded F32 model to dst."""
    reader, weights = read_float_gguf(src)
    scales, results = search(weights, hessians, types, imatrix, alphas, progress)
    write_like(reader, dst, fold(weights, scales))
    return scales, results


def summary(results: list[GroupResult]) -> str:
    if not results:
        return "awq: no groups scaled"
    alphas = np.array([r.alpha for r in results])
    total = sum(r.err for r in results) / max(sum(r.err_plain for r in results), 1e-30) - 1
    return (f"awq: {int((alphas > 0).sum())}/{len(results)} groups scaled (mean alpha {alphas.mean():.2f}), "
            f"calibration output error {total:+.1%} (median group {np.median([r.gain for r in results]):+.1%})")
