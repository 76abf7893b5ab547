"""GGUF quantization through llama.cpp's own quantizer (llama_model_quantize).

Uniform types (`q4_k_m`, `q4_0`, ...) use llama.cpp's mixture rules; per-tensor plans use
its tensor-type overrides (one exact-name regex per tensor) with `pure` set, so the plan is
applied as written. The importance matrix is passed in memory (no file round trip).
Output goes through atomic_output: a failed quantization leaves no file behind.
"""

from __future__ import annotations

import ctypes
import re
import sys
from pathlib import Path

import gguf
import llama_cpp
import numpy as np

from liteinfer.core.catalog import check_gguf
from liteinfer.core.errors import LiteInferError
from liteinfer.core.files import atomic_output
from liteinfer.core.gguf_header import TYPE_NAMES, TensorInfo
from liteinfer.hardware.cores import usable_cores

# user-facing file types -> gguf.LlamaFileType member names (llama.cpp's `--type` names)
FTYPES = {
    "f32": "ALL_F32", "f16": "MOSTLY_F16", "bf16": "MOSTLY_BF16", "q8_0": "MOSTLY_Q8_0",
    "q4_0": "MOSTLY_Q4_0", "q4_1": "MOSTLY_Q4_1", "q5_0": "MOSTLY_Q5_0", "q5_1": "MOSTLY_Q5_1",
    "q2_k": "MOSTLY_Q2_K", "q3_k_s": "MOSTLY_Q3_K_S", "q3_k_m": "MOSTLY_Q3_K_M", "q3_k_l": "MOSTLY_Q3_K_L",
    "q4_k_s": "MOSTLY_Q4_K_S", "q4_k_m": "MOSTLY_Q4_K_M", "q5_k_s": "MOSTLY_Q5_K_S", "q5_k_m": "MOSTLY_Q5_K_M",
    "q6_k": "MOSTLY_Q6_K", "iq4_xs": "MOSTLY_IQ4_XS", "iq4_nl": "MOSTLY_IQ4_NL", "iq3_s": "MOSTLY_IQ3_S",
    "iq3_xxs": "MOSTLY_IQ3_XXS", "iq2_xs": "MOSTLY_IQ2_XS", "iq2_xxs": "MOSTLY_IQ2_XXS",
}
# file types llama.cpp has and gguf-py 0.19's LlamaFileType lacks (llama-quantize's ids)
EXTRA_FTYPES = {"q1_0": 40, "q2_0": 41}
NEEDS_IMATRIX = {"iq2_xs", "iq2_xxs"}
FLOAT_TYPES = {"F32", "F16", "BF16"}


def ggml_type(name: str) -> int:
    """ggml tensor type id for a tensor type name ("q4_k", "Q8_0", "f16", "q2_0")."""
    try:
        return int(gguf.GGMLQuantizationType[name.upper()])
    except KeyError:
        pass
    ids = {v: k for k, v in TYPE_NAMES.items()}  # types newer than gguf-py (q2_0)
    if name.lower() in ids and _ggml().type_size(ids[name.lower()]):
        return ids[name.lower()]
    raise LiteInferError(f"unknown tensor type {name!r}")


def ftype_id(name: str) -> int:
    if name.lower() in EXTRA_FTYPES:
        return EXTRA_FTYPES[name.lower()]
    key = FTYPES.get(name.lower())
    if key is None:
        raise LiteInferError(f"unknown quantization type {name!r} (known: {', '.join([*FTYPES, *EXTRA_FTYPES])})")
    return int(gguf.LlamaFileType[key])


def bits_per_weight(type_name: str) -> float:
    t = ggml_type(type_name)
    return 8.0 * _ggml().type_size(t) / _ggml().block_size(t)


class _Ggml:
    """libggml-base inside llama-cpp-python: sizes and dequantization of every ggml type,
    including those gguf-py does not know yet (q2_0, q1_0)."""

    def __init__(self):
        libs = sorted((Path(llama_cpp.__file__).parent / "lib").glob("libggml-base.*"))
        if not libs:
            raise LiteInferError("libggml-base from llama-cpp-python not found")
        lib = ctypes.CDLL(str(libs[0]))
        lib.ggml_type_size.restype, lib.ggml_type_size.argtypes = ctypes.c_size_t, [ctypes.c_int]
        lib.ggml_blck_size.restype, lib.ggml_blck_size.argtypes = ctypes.c_int64, [ctypes.c_int]
        lib.ggml_get_type_traits.restype, lib.ggml_get_type_traits.argtypes = ctypes.POINTER(_Traits), [ctypes.c_int]
        self.lib = lib

    def type_size(self, t: int) -> int:
        return int(self.lib.ggml_type_size(t)) if t in TYPE_NAMES else 0

    def block_size(self, t: int) -> int:
        return int(self.lib.ggml_blck_size(t))

    def to_float(self, data: np.ndarray, t: int, n: int) -> np.ndarray:
        """n values of type t (raw bytes in `data`) as float32, by ggml's own to_float."""
        if t == 0:
            return np.frombuffer(data, dtype=np.float32, count=n).copy()
        tr = self.lib.ggml_get_type_traits(t).contents
        if not tr.to_float or tr.blck_size != self.block_size(t):
            raise LiteInferError(f"ggml has no dequantizer for tensor type {TYPE_NAMES.get(t, t)}")
        src = np.ascontiguousarray(data, dtype=np.uint8)
        out = np.empty(n, dtype=np.float32)
        _TO_FLOAT(tr.to_float)(src.ctypes.data, out.ctypes.data, n)
        return out


_TO_FLOAT = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64)


class _Traits(ctypes.Structure):  # struct ggml_type_traits (ggml.h)
    _fields_ = [("type_name", ctypes.c_char_p), ("blck_size", ctypes.c_int64),
                ("blck_size_interleave", ctypes.c_int64), ("type_size", ctypes.c_size_t),
                ("is_quantized", ctypes.c_bool), ("to_float", ctypes.c_void_p), ("from_float_ref", ctypes.c_void_p)]


_GGML: _Ggml | None = None


def _ggml() -> _Ggml:
    global _GGML
    if _GGML is None:
        _GGML = _Ggml()
    return _GGML


def read_dequantized(path: str | Path, names: set[str] | None = None):
    """(name, type name, n_bytes, float32 array in numpy order) for each tensor of a GGUF of any
    ggml type (gguf-py's reader stops at types it does not know)."""
    header = check_gguf(Path(path))
    raw = np.memmap(path, dtype=np.uint8, mode="r")
    for t in header.tensors:
        if names is not None and t.name not in names:
            continue
        start = header.data_offset + t.offset
        w = _ggml().to_float(raw[start:start + t.n_bytes], t.ggml_type, t.n_elements)
        yield t.name, t.type_name, t.n_bytes, w.reshape(list(reversed(t.shape)))


def read_tensors(path: str | Path) -> list[TensorInfo]:
    """The tensor table of a GGUF, validated first (magic, header, size: a one-line error)."""
    return check_gguf(Path(path)).tensors


def model_bpw(tensors: list[TensorInfo]) -> float:
    return 8.0 * sum(t.n_bytes for t in tensors) / sum(t.n_elements for t in tensors)


class _LlamaLog:
    """Capture llama.cpp's log lines while quantizing (its errors become our one-line error)."""

    def __init__(self):
        self.lines: list[str] = []
        self._ll = llama_cpp

        @llama_cpp.llama_log_callback
        def cb(level, text, user_data):  # noqa: ARG001 - llama.cpp callback signature
            self.lines.append(text.decode(errors="replace"))

        self._cb = cb  # keep the ctypes callback alive while llama.cpp holds it

    def __enter__(self):
        self._ll.llama_log_set(self._cb, ctypes.c_void_p(0))
        return self

    def __exit__(self, *exc):
        # leave a discarding logger installed: the default one writes to stderr
        @self._ll.llama_log_callback
        def quiet(level, text, user_data):  # noqa: ARG001
            pass

        _LlamaLog._quiet = quiet
        self._ll.llama_log_set(quiet, ctypes.c_void_p(0))

    def error(self) -> str:
        text = "".join(self.lines)
        for pat in (r"error[^\n]*?: ([^\n]+)", r"failed[^\n]*"):
            found = re.findall(pat, text, flags=re.IGNORECASE)
            if found:
                return found[-1].strip()
        return text.strip().splitlines()[-1] if text.strip() else "unknown error"


def quantize(src: str | Path, dst: str | Path, ftype: str = "q4_k_m", imatrix: dict | None = None,
             overrides: dict[str, str] | None = None, threads: int | None = None,
             allow_requantize: bool = True) -> list[TensorInfo]:
    """Quantize src GGUF to dst; `overrides` maps tensor name -> type name and is applied exactly.

    Returns the output's tensor table. Raises LiteInferError on any failure (dst not created).
    """
    src, dst = Path(src), Path(dst)
    src_tensors = read_tensors(src)  # validates magic, header and size first
    if ftype.lower() in NEEDS_IMATRIX and not imatrix:
        raise LiteInferError(f"{ftype} needs an importance matrix (--imatrix or calibration text)")
    p = llama_cpp.llama_model_quantize_default_params()
    p.ftype = ftype_id(ftype)
    p.nthread = threads or usable_cores()
    p.allow_requantize = allow_requantize
    keep = []  # ctypes buffers must outlive the call
    if overrides:
        known = {t.name for t in src_tensors}
        bad = sorted(set(overrides) - known)
        if bad:
            raise LiteInferError(f"plan names tensors that {src.name} does not have: {bad[:3]}")
        arr = (llama_cpp.llama_model_tensor_override * (len(overrides) + 1))()
        for i, (name, tname) in enumerate(sorted(overrides.items())):
            pat = f"^{re.escape(name)}$".encode()
            keep.append(pat)
            arr[i].pattern = pat
            arr[i].type = ggml_type(tname)
        arr[len(overrides)].pattern = None
        p.tt_overrides = arr
        p.pure = True  # apply the plan as written; no per-layer bumps from llama.cpp's mixtures
    if imatrix:
        arr = (llama_cpp.llama_model_imatrix_data * (len(imatrix) + 1))()
        for i, (name, values) in enumerate(sorted(imatrix.items())):
            v = np.ascontiguousarray(values, dtype=np.float32)
            keep += [name.encode(), v]
            arr[i].name = keep[-2]
            arr[i].data = v.ctypes.data_as(ctypes.POINTER(ctypes.c_float))
            arr[i].size = v.size
        arr[len(imatrix)].name = None
        p.imatrix = arr
    with atomic_output(dst) as tmp, _LlamaLog() as log:
        rc = llama_cpp.llama_model_quantize(str(src).encode(), str(tmp).encode(), ctypes.byref(p))
        if rc != 0:
            raise LiteInferError(f"llama.cpp could not quantize {src.name}: {log.error()}")
    del keep
    return read_tensors(dst)


def warn_requantize(tensors: list[TensorInfo]) -> str | None:
    quantized = sorted({t.type_name for t in tensors if t.quantizable and t.type_name.upper() not in FLOAT_TYPES})
    if quantized:
        msg = (f"warning: the input is already quantized ({', '.join(quantized)}): its weights are dequantized "
               "and quantized again, which compounds rounding error; prefer an F32/F16/BF16 source")
        print(msg, file=sys.stderr)
        return msg
    return None
