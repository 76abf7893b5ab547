"""Serve Q4_1 GGUFs through llama.cpp's fast Q4_0 kernels, with the same weights.

On x86, llama.cpp has no batched kernel for Q4_1: each (row, token) pair is a separate dot
product, while Q4_0 gets repacked 8x8 GEMM tiles (and llamafile's tinyBLAS). Measured here
with SmolLM2-135M at 16 concurrent clients: 208-228 tok/s as Q4_1, 529 tok/s requantized to Q4_0.
Requantizing would change the model, but Q4_1 splits exactly:

    Q4_1:  w = d*q + m            (q in 0..15, d and m per block of 32)
    Q4_0:  w = d*(q - 8)          same nibbles, same d
    so     W = W_q4_0 + C         where C is constant on each block: c = m + 8d

C @ x only needs each block's sum of x: C @ x = B @ (A @ x), with A (n_in/32 x n_in) the
0/1 block-sum matrix and B (n_out x n_in/32) the offsets c. That is a rank-n_in/32 LoRA,
which llama.cpp adds to every projection in its graph (`build_lora_mm`). The split costs
one byte per 8 weights of F32 offsets and ~7% more FLOPs, and leaves the weights unchanged;
the only numerical difference is that the offset term sums x in F16 instead of from x's Q8_1
copy. The pair is built once per model and cached; `prepare` builds it in a child process, so
the serving process never holds the GGUF reader's parsed metadata (~15 MB that malloc keeps).
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from liteinfer.core.catalog import cache_dir
from liteinfer.core.files import atomic_output
from liteinfer.core.gguf_write import writer_like

if TYPE_CHECKING:  # numpy is imported where the split is built: the server imports this module
    import numpy as np  # for prepare() only, and numpy would be ~15 MB of its RSS

QK = 32  # weights per Q4_0/Q4_1 block
# projections llama.cpp runs through build_lora_mm; token_embd is a row lookup: left as Q4_1
SPLIT_SUFFIXES = ("attn_q.weight", "attn_k.weight", "attn_v.weight", "attn_output.weight",
                  "ffn_gate.weight", "ffn_up.weight", "ffn_down.weight")


def _splittable(t) -> bool:
    return (t.tensor_type.name == "Q4_1" and len(t.shape) == 2
            and (t.name.endswith(SPLIT_SUFFIXES) or t.name == "output.weight"))


def needs_split(path: str | os.PathLike) -> bool:
    """True when the GGUF has Q4_1 projection weights (what the split speeds up)."""
    # on use: gguf and numpy only when a Q4_1 model is split (memory)
    from gguf import GGUFReader

    return any(_splittable(t) for t in GGUFReader(str(path)).tensors)


def split_block_bytes(raw: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Q4_1 blocks (n, 20 bytes: f16 d, f16 m, 16 nibble bytes) -> Q4_0 blocks (n, 18) and the
    per-block offsets c = m + 8d (float32)."""
    # on use: numpy, as above (memory)
    import numpy as np

    blocks = raw.reshape(-1, 20)
    d = blocks[:, 0:2].copy().view(np.float16).astype(np.float32)[:, 0]
    m = blocks[:, 2:4].copy().view(np.float16).astype(np.float32)[:, 0]
    q4_0 = np.concatenate([blocks[:, 0:2], blocks[:, 4:20]], axis=1)
    return q4_0, m + 8.0 * d


def block_sum_q8_0(n_blocks: int, rank: int) -> np.ndarray:
    """The 0/1 block-sum matrix (rank x n_blocks*32; row j sums block j, padding rows zero) as
    Q8_0 bytes, exactly: scale 1.0 and codes 1 in block j of row j, zero blocks elsewhere.
    Half the size of F16, and it sums x's Q8_0 copy as llama.cpp's Q4_1 path sums Q8_1's."""
    # on use: numpy, as above (memory)
    import numpy as np

    blocks = np.zeros((rank, n_blocks, 2 + QK), dtype=np.uint8)
    one = np.array([1.0], dtype=np.float16).view(np.uint8)
    j = np.arange(n_blocks)
    blocks[j, j, 0:2] = one
    blocks[j, j, 2:] = 1
    return blocks.reshape(rank, n_blocks * (2 + QK))


def _folder(src: Path) -> Path:
    """The cache folder for one source file (its path, size and mtime), beside the models."""
    st = src.stat()
    key = hashlib.sha256(f"{src.resolve()}:{st.st_size}:{st.st_mtime_ns}:v6".encode()).hexdigest()[:16]
    return cache_dir().parent / "q4_1_split" / key


def cache_folder(src: str | os.PathLike) -> Path:
    """Where the split of `src` is cached (`liteinfer rm` deletes it with the model)."""
    return _folder(Path(src))


def prepare(src: str | os.PathLike) -> tuple[Path, Path] | None:
    """The cached (model, offsets) pair for src, or None when src has no Q4_1 projections.
    A cache miss is resolved by a child process (python -m liteinfer.engines.q4_1_split SRC)."""
    src = Path(src)
    folder = _folder(src)
    for _ in range(2):
        if (folder / "no-q4_1").exists():
            return None
        if (folder / "model.gguf").exists() and (folder / "offsets.gguf").exists():
            return folder / "model.gguf", folder / "offsets.gguf"
        done = subprocess.run([sys.executable, "-m", "liteinfer.engines.q4_1_split", str(src)],
                              capture_output=True, text=True)
        if done.returncode != 0:
            raise OSError(done.stderr.strip().splitlines()[-1] if done.stderr.strip() else "split failed")
    raise OSError(f"split of {src} did not reach the cache {folder}")


def _fuse_qkv(entries: list, offsets: dict[str, np.ndarray]) -> list:
    """One blk.N.attn_qkv tensor (rows of q, k, v stacked) where all three were split: llama.cpp
    runs it as one matmul plus one offset term instead of three of each (fewer graph nodes:
    each costs a thread barrier, which is most of a one-sequence step)."""
    # on use: numpy, as above (memory)
    import numpy as np

    by_name = {name: (data, ttype) for name, data, ttype in entries}
    bases = {n.removesuffix(".attn_q.weight") for n in offsets if n.endswith(".attn_q.weight")}
    fused = {b for b in bases if all(f"{b}.attn_{x}.weight" in offsets for x in "kv")}
    out = []
    for name, data, ttype in entries:
        base, _, part = name.rpartition(".attn_")
        if base not in fused or part not in ("q.weight", "k.weight", "v.weight"):
            out.append((name, data, ttype))
        elif part == "q.weight":  # the fused tensor takes attn_q's place
            parts = [f"{base}.attn_{x}.weight" for x in "qkv"]
            out.append((f"{base}.attn_qkv.weight", np.concatenate([by_name[p][0] for p in parts]), ttype))
            offsets[f"{base}.attn_qkv.weight"] = np.concatenate([offsets.pop(p) for p in parts])
    return out


def split_model(src: str | os.PathLike) -> tuple[Path, Path]:
    """(Q4_0 model, offsets LoRA) for a Q4_1 GGUF, built once into the cache."""
    # on use: gguf and numpy, as above (memory)
    import gguf
    import numpy as np


    src = Path(src)
    folder = _folder(src)
    model_out, lora_out = folder / "model.gguf", folder / "offsets.gguf"
    if model_out.exists() and lora_out.exists():
        return model_out, lora_out
    folder.mkdir(parents=True, exist_ok=True)
    reader = gguf.GGUFReader(str(src))
    arch = reader.fields["general.architecture"].contents()

    offsets: dict[str, np.ndarray] = {}
    with atomic_output(model_out) as tmp:
        w = writer_like(reader, tmp)
        entries: list[tuple[str, np.ndarray, object]] = []  # (name, data, type) in file order
        for t in reader.tensors:
            data, ttype = t.data, t.tensor_type
            if _splittable(t):
                n_in, n_out = int(t.shape[0]), int(t.shape[1])
                q4_0, c = split_block_bytes(np.asarray(t.data))
                data = q4_0.reshape(n_out, -1)
                ttype = gguf.GGMLQuantizationType.Q4_0
                offsets[t.name] = c.reshape(n_out, n_in // QK)
            entries.append((t.name, data, ttype))
        if arch == "llama":
            entries = _fuse_qkv(entries, offsets)
        for name, data, ttype in entries:
            w.add_tensor_info(name, data.shape, data.dtype, data.nbytes, ttype)
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_ti_data_to_file()
        for _, data, _ in entries:
            w.write_tensor_data(data)
        w.close()

    with atomic_output(lora_out) as tmp:
        w = gguf.GGUFWriter(str(tmp), arch)
        w.add_string("general.type", "adapter")
        w.add_string("adapter.type", "lora")
        w.add_float32("adapter.lora.alpha", 0.0)  # 0 = no alpha/rank rescaling: scale is exactly 1
        for name, c in offsets.items():
            n_out, n_blocks = c.shape
            # rank padded to a multiple of 16: llamafile's GEMM needs k % 16 == 0, and
            # without it ggml falls back to one dot product per (row, token): 3x slower here
            r = -(-n_blocks // 16) * 16
            w.add_tensor(f"{name}.lora_a", block_sum_q8_0(n_blocks, r), raw_dtype=gguf.GGMLQuantizationType.Q8_0)
            b = np.zeros((n_out, r), dtype=np.float16)
            b[:, :n_blocks] = c
            w.add_tensor(f"{name}.lora_b", b)
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
        w.close()
    return model_out, lora_out


def main(argv: list[str] | None = None) -> int:
    src = Path((argv or sys.argv[1:])[0])
    if needs_split(src):
        split_model(src)
    else:
        folder = _folder(src)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "no-q4_1").touch()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
