"""Read a Hugging Face safetensors folder as numpy arrays, BF16 included.

safetensors' numpy loader refuses bfloat16, and most HF checkpoints are BF16, so we parse
the (simple) format ourselves: 8-byte little-endian header length, a JSON header, raw data.
Arrays are memory-mapped: converting a model never holds two copies of it in RAM.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

from liteinfer.core.errors import LiteInferError

_DTYPES = {"F32": "<f4", "F16": "<f2", "BF16": "<u2", "F64": "<f8", "I64": "<i8", "I32": "<i4", "U8": "u1"}


def safetensors_files(folder: Path) -> list[Path]:
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        names = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        return [folder / n for n in names]
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise LiteInferError(f"{folder}: no .safetensors files")
    return files


def read_safetensors(path: Path) -> dict:
    """name -> float32 (or integer) numpy array, memory-mapped where the dtype allows."""
    # on use: numpy is heavy (start-up, memory)
    import numpy as np

    size = path.stat().st_size
    with open(path, "rb") as f:
        raw = f.read(8)
        if len(raw) < 8:
            raise LiteInferError(f"{path}: not a safetensors file (too short)")
        (n,) = struct.unpack("<Q", raw)
        if n <= 0 or n > min(size - 8, 100 << 20):
            raise LiteInferError(f"{path}: not a safetensors file (bad header length)")
        try:
            header = json.loads(f.read(n))
        except ValueError:
            raise LiteInferError(f"{path}: not a safetensors file (header is not JSON)") from None
    base = 8 + n
    mm = np.memmap(path, dtype=np.uint8, mode="r")
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        dtype = _DTYPES.get(info["dtype"])
        if dtype is None:
            raise LiteInferError(f"{path}: tensor {name} has unsupported dtype {info['dtype']}")
        start, end = info["data_offsets"]
        if base + end > size:
            raise LiteInferError(f"{path}: truncated (tensor {name} ends past the file)")
        arr = mm[base + start : base + end].view(dtype).reshape(info["shape"])
        if info["dtype"] == "BF16":  # bf16 is the top half of an f32
            arr = (arr.astype(np.uint32) << 16).view(np.float32)
        out[name] = arr
    return out


def read_folder(folder: Path) -> dict:
    tensors: dict = {}
    for f in safetensors_files(folder):
        tensors.update(read_safetensors(f))
    return tensors
