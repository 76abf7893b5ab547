"""A GGUF file's header (metadata scalars, tensor table) read in plain Python.

What a validity check before loading needs, without the `gguf` package: that one imports
numpy and turns every metadata array (SmolLM2's 49k vocabulary strings and merges) into
Python objects, ~20 MB of anonymous memory a server keeps after one look at the header
(measured: 46 MB against 27 before `GGUFReader` on the default model).
"""

from __future__ import annotations

import math
import mmap
import os
import struct
from dataclasses import dataclass, field

GGUF_MAGIC = b"GGUF"
DEFAULT_ALIGNMENT = 32

# ggml type id -> (weights per block, bytes per block), as in the block structs of the llama.cpp
# that llama-cpp-python 0.3.36 vendors (ggml-common.h; the gguf package lists Q8_1, id 9, at 40)
TYPE_SIZES: dict[int, tuple[int, int]] = {
    0: (1, 4), 1: (1, 2), 2: (32, 18), 3: (32, 20), 6: (32, 22), 7: (32, 24), 8: (32, 34), 9: (32, 36),
    10: (256, 84), 11: (256, 110), 12: (256, 144), 13: (256, 176), 14: (256, 210), 15: (256, 292),
    16: (256, 66), 17: (256, 74), 18: (256, 98), 19: (256, 50), 20: (32, 18), 21: (256, 110),
    22: (256, 82), 23: (256, 136), 24: (1, 1), 25: (1, 2), 26: (1, 4), 27: (1, 8), 28: (1, 8),
    29: (256, 56), 30: (1, 2), 34: (256, 54), 35: (256, 66), 39: (32, 17), 40: (64, 36), 41: (128, 18),
    42: (64, 18),
}


# ggml type id -> its name, lower case as in llama.cpp's `--type` names ("q4_k", "f16")
TYPE_NAMES: dict[int, str] = {
    0: "f32", 1: "f16", 2: "q4_0", 3: "q4_1", 6: "q5_0", 7: "q5_1", 8: "q8_0", 9: "q8_1", 10: "q2_k",
    11: "q3_k", 12: "q4_k", 13: "q5_k", 14: "q6_k", 15: "q8_k", 16: "iq2_xxs", 17: "iq2_xs", 18: "iq3_xxs",
    19: "iq1_s", 20: "iq4_nl", 21: "iq3_s", 22: "iq2_s", 23: "iq4_xs", 24: "i8", 25: "i16", 26: "i32",
    27: "i64", 28: "f64", 29: "iq1_m", 30: "bf16", 34: "tq1_0", 35: "tq2_0", 39: "mxfp4", 40: "nvfp4",
    41: "q1_0", 42: "q2_0",
}


class NotGGUFError(ValueError):
    """The file does not start with the GGUF magic."""


# GGUF metadata value types: struct formats of the fixed-size ones (8 = string, 9 = array)
_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}


@dataclass(frozen=True)
class TensorInfo:
    """One row of the tensor table."""

    name: str
    ggml_type: int
    shape: tuple[int, ...]  # ggml order: (row width, rows, ...)
    offset: int  # from the start of the data section
    n_bytes: int

    @property
    def type_name(self) -> str:
        """The type's name: "f32", "q4_k", ..."""
        return TYPE_NAMES[self.ggml_type]

    @property
    def n_elements(self) -> int:
        return math.prod(self.shape)

    @property
    def quantizable(self) -> bool:
        """What llama.cpp's quantizer may touch: 2-D+ weights that are not norms."""
        return len(self.shape) >= 2 and self.name.endswith("weight") and "_norm" not in self.name


@dataclass
class GGUFHeader:
    version: int
    metadata: dict[str, object] = field(default_factory=dict)  # scalars and strings; arrays as their length
    tensors: list[TensorInfo] = field(default_factory=list)
    data_offset: int = 0  # where the tensor data section starts in the file

    @property
    def data_end(self) -> int:
        """The file size the tensor table needs."""
        return self.data_offset + max((t.offset + t.n_bytes for t in self.tensors), default=0)


class _Cursor:
    def __init__(self, buf) -> None:
        self.buf, self.pos = buf, 0

    def take(self, fmt: str):
        (value,) = struct.unpack_from(fmt, self.buf, self.pos)
        self.pos += struct.calcsize(fmt)
        return value

    def string(self, keep: bool = True) -> str | None:
        n = self.take("<Q")
        if self.pos + n > len(self.buf):
            raise ValueError("string runs past the end of the file")
        raw = self.buf[self.pos:self.pos + n] if keep else None
        self.pos += n
        return raw.decode("utf-8", "replace") if keep else None

    def value(self, vtype: int):
        if vtype in _SCALARS:
            return self.take(_SCALARS[vtype])
        if vtype == 8:
            return self.string()
        if vtype == 9:
            etype, count = self.take("<I"), self.take("<Q")
            if etype in _SCALARS:  # skip fixed-size elements in one jump
                self.pos += count * struct.calcsize(_SCALARS[etype])
            else:
                for _ in range(count):
                    self.skip(etype)
            return count
        raise ValueError(f"unknown metadata value type {vtype}")

    def skip(self, vtype: int) -> None:
        if vtype == 8:
            self.string(keep=False)
        else:
            self.value(vtype)


def read_header(path: str | os.PathLike) -> GGUFHeader:
    """Parse the header; NotGGUFError for another format, ValueError (with the reason) when
    the GGUF header is not sound."""
    with open(path, "rb") as f:
        magic = f.read(4)
        if magic != GGUF_MAGIC:
            raise NotGGUFError(f"not a GGUF file (magic {magic!r})")
        if os.fstat(f.fileno()).st_size < 24:
            raise ValueError("file too short for a GGUF header")
        with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as buf:
            try:
                return _parse(_Cursor(buf))
            except (struct.error, IndexError, OverflowError) as e:
                raise ValueError(f"header ends early or is garbled ({e})") from None


def _parse(c: _Cursor) -> GGUFHeader:
    c.pos = 4  # past the magic
    header = GGUFHeader(version=c.take("<I"))
    if header.version not in (2, 3):
        raise ValueError(f"unsupported GGUF version {header.version}")
    n_tensors, n_kv = c.take("<Q"), c.take("<Q")
    for _ in range(n_kv):
        key = c.string()
        header.metadata[key] = c.value(c.take("<I"))
    for _ in range(n_tensors):
        name = c.string()
        n_dims = c.take("<I")
        if n_dims > 4:
            raise ValueError(f"tensor {name}: {n_dims} dimensions")
        shape = tuple(c.take("<Q") for _ in range(n_dims))
        ggml_type, offset = c.take("<I"), c.take("<Q")
        if ggml_type not in TYPE_SIZES:
            raise ValueError(f"tensor {name}: unknown ggml type {ggml_type}")
        block, size = TYPE_SIZES[ggml_type]
        n = 1
        for d in shape:
            n *= d
        if shape and shape[0] % block:
            raise ValueError(f"tensor {name}: row of {shape[0]} is not whole blocks of {block}")
        header.tensors.append(TensorInfo(name, ggml_type, shape, offset, n // block * size))
    align = header.metadata.get("general.alignment", DEFAULT_ALIGNMENT)
    if not isinstance(align, int) or align <= 0:
        raise ValueError(f"bad general.alignment {align!r}")
    header.data_offset = -(-c.pos // align) * align
    return header
