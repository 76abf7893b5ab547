"""What a model file is, from its own header: a GGUF's metadata and tensor table, or a
safetensors folder's config.json and tensor header. No numpy, no engine: `liteinfer models`,
`liteinfer show` and the Ollama routes (/api/tags, /api/show) read models this way.
"""

from __future__ import annotations

import json
import math
import struct
from collections import Counter
from pathlib import Path

from liteinfer.core.gguf_header import read_header

# llama.cpp's llama_ftype (general.file_type): the name the quantizer gives a whole file
FILE_TYPES = {0: "F32", 1: "F16", 2: "Q4_0", 3: "Q4_1", 7: "Q8_0", 8: "Q5_0", 9: "Q5_1", 10: "Q2_K", 11: "Q3_K_S",
              12: "Q3_K_M", 13: "Q3_K_L", 14: "Q4_K_S", 15: "Q4_K_M", 16: "Q5_K_S", 17: "Q5_K_M", 18: "Q6_K",
              19: "IQ2_XXS", 20: "IQ2_XS", 21: "Q2_K_S", 22: "IQ3_XS", 23: "IQ3_XXS", 24: "IQ1_S", 25: "IQ4_NL",
              26: "IQ3_S", 27: "IQ3_M", 28: "IQ2_S", 29: "IQ2_M", 30: "IQ4_XS", 31: "IQ1_M", 32: "BF16",
              36: "TQ1_0", 37: "TQ2_0"}
# GGUF architectures that embed rather than generate
EMBEDDING_ARCHS = {"bert", "nomic-bert", "jina-bert-v2", "t5encoder", "modern-bert"}


def size_label(n: int) -> str:
    """A parameter count the way model cards write it: 135M, 1.24B."""
    for unit, scale in (("T", 1e12), ("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= scale:
            return f"{n / scale:.3g}{unit}"
    return str(n)


def gguf_info(path: Path) -> dict:
    """Architecture, parameters, context, quantization, per-type tensor counts, chat template,
    license: what the GGUF header says (ValueError / NotGGUFError when it is not sound)."""
    header = read_header(path)
    meta = header.metadata
    arch = str(meta.get("general.architecture", ""))
    n_params = int(meta.get("general.parameter_count") or sum(math.prod(t.shape) for t in header.tensors))
    types = Counter(t.type_name for t in header.tensors)
    weight_bytes = Counter()
    for t in header.tensors:
        if t.quantizable:
            weight_bytes[t.type_name] += t.n_bytes
    quant = FILE_TYPES.get(meta.get("general.file_type"))  # type: ignore[arg-type]
    if quant is None and weight_bytes:  # no file type recorded: the type most weight bytes have
        quant = weight_bytes.most_common(1)[0][0].upper()

    def arch_key(name: str):
        return meta.get(f"{arch}.{name}")

    return {
        "format": "gguf",
        "kind": "embedding" if arch in EMBEDDING_ARCHS else "llm",
        "architecture": arch,
        "name": meta.get("general.name") or "",
        "parameters": n_params,
        "parameter_size": str(meta.get("general.size_label") or size_label(n_params)),
        "quantization": quant or "",
        "context_length": arch_key("context_length"),
        "embedding_length": arch_key("embedding_length"),
        "layers": arch_key("block_count"),
        "heads": arch_key("attention.head_count"),
        "kv_heads": arch_key("attention.head_count_kv"),
        "tensors": dict(sorted(types.items(), key=lambda kv: (-kv[1], kv[0]))),
        "chat_template": meta.get("tokenizer.chat_template") or "",
        "license": str(meta.get("general.license") or ""),
        "gguf_version": header.version,
    }


def _safetensors_header(path: Path) -> dict:
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        if n > 100 << 20:
            raise ValueError(f"{path}: safetensors header of {n} bytes")
        return json.loads(f.read(n))


def folder_info(path: Path) -> dict:
    """A Hugging Face-style folder: config.json's architecture and sizes, parameters and dtypes
    from the safetensors headers, the license from the README's front matter."""
    cfg = {}
    if (path / "config.json").is_file():
        cfg = json.loads((path / "config.json").read_text())
    n_params, dtypes, elements = 0, Counter(), Counter()
    for st in sorted(path.glob("*.safetensors")):
        for name, t in _safetensors_header(st).items():
            if name != "__metadata__":
                n = math.prod(t["shape"])
                n_params += n
                dtypes[t["dtype"]] += 1
                elements[t["dtype"]] += n
    arch = (cfg.get("architectures") or [cfg.get("model_type", "")])[0]
    license_ = ""
    readme = path / "README.md"
    if readme.is_file():
        text = readme.read_text(errors="replace")
        if text.startswith("---"):
            for line in text.split("---", 2)[1].splitlines():
                if line.strip().startswith("license:"):
                    license_ = line.split(":", 1)[1].strip()
    onnx = sorted(path.glob("*.onnx"))
    return {
        "format": "safetensors" if dtypes else ("onnx" if onnx else "folder"),
        "kind": "",
        "architecture": arch,
        "name": cfg.get("_name_or_path", ""),
        "parameters": n_params,
        "parameter_size": size_label(n_params) if n_params else "",
        "quantization": elements.most_common(1)[0][0] if elements else "",  # the dtype most weights have
        "context_length": cfg.get("max_position_embeddings"),
        "embedding_length": cfg.get("hidden_size"),
        "layers": cfg.get("num_hidden_layers"),
        "heads": cfg.get("num_attention_heads"),
        "kv_heads": cfg.get("num_key_value_heads"),
        "tensors": dict(sorted(dtypes.items(), key=lambda kv: (-kv[1], kv[0]))),
        "chat_template": "",
        "license": license_,
    }


def model_info(path: Path) -> dict:
    """gguf_info for a .gguf file (or a folder holding one), folder_info for other folders."""
    path = Path(path)
    if path.is_dir():
        ggufs = sorted(path.glob("*.gguf"))
        return gguf_info(ggufs[0]) if ggufs else folder_info(path)
    if path.suffix == ".onnx":
        return {"format": "onnx", "kind": "", "architecture": "", "name": "", "parameters": 0, "parameter_size": "",
                "quantization": "", "context_length": None, "embedding_length": None, "layers": None,
                "heads": None, "kv_heads": None, "tensors": {}, "chat_template": "", "license": ""}
    return gguf_info(path)
