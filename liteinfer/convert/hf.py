"""Hugging Face llama-family safetensors folder -> GGUF, with the `gguf` package.

What goes in: config.json hyperparameters, every weight (Q/K rows permuted from HF's
rotate-half RoPE layout to llama.cpp's interleaved one), the byte-level BPE tokenizer
(tokens, types, merges, special ids) and the chat template from tokenizer_config.json.

The pre-tokenizer. llama.cpp's own converter identifies the pre-tokenizer by hashing the
token ids of a fixed string, so any newly trained vocabulary comes out "unknown" (a retrained
BPE changes the ids, not the splitting rule). The splitting rule is what llama.cpp needs, and
tokenizer.json states it: we read the pre_tokenizer structure and name the llama.cpp
pre-tokenizer that implements the same regex ("gpt-2" for a plain ByteLevel with GPT-2's
regex, "smollm" for digits-split + ByteLevel, "llama-bpe" for Llama 3's split regex). An
unknown structure is an error unless the user names one (`--pre`); tests check that
llama.cpp's tokenization then equals the `tokenizers` library's on varied text.
"""

from __future__ import annotations

import json
from pathlib import Path

from liteinfer.convert.safetensors_io import read_folder
from liteinfer.core.errors import LiteInferError
from liteinfer.core.files import atomic_output

SUPPORTED_ARCHS = {"LlamaForCausalLM", "MistralForCausalLM"}
OUTTYPES = ("f32", "f16", "bf16")
LLAMA3_REGEX = "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}"


def detect_pre_tokenizer(tok: dict) -> str:
    """llama.cpp pre-tokenizer name whose regex matches tokenizer.json's pre_tokenizer."""
    pre = tok.get("pre_tokenizer") or {}
    steps = pre.get("pretokenizers", [pre]) if pre.get("type") == "Sequence" else [pre]
    kinds = [s.get("type") for s in steps]
    if tok.get("normalizer") not in (None, {}):
        raise LiteInferError("tokenizer.json has a normalizer; only plain byte-level BPE is supported (use --pre)")
    if kinds == ["ByteLevel"] and steps[0].get("use_regex", True) and not steps[0].get("add_prefix_space"):
        return "gpt-2"
    if kinds == ["Digits", "ByteLevel"] and steps[0].get("individual_digits") and steps[1].get("use_regex", True):
        return "smollm"
    if kinds == ["Split", "ByteLevel"] and not steps[1].get("use_regex", True):
        regex = (steps[0].get("pattern") or {}).get("Regex", "")
        if regex.startswith(LLAMA3_REGEX):
            return "llama-bpe"
    raise LiteInferError(
        f"pre-tokenizer {kinds} is not one llama.cpp implements under a known name; pass --pre NAME "
        "(e.g. gpt-2, llama-bpe, smollm) if you know which regex it uses"
    )


def _permute(w, n_head: int):
    """HF stores Q/K rows as [first halves | second halves] per head; llama.cpp interleaves."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def tensor_map(n_layers: int) -> dict[str, str]:
    m = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight",
         "lm_head.weight": "output.weight"}
    parts = {"input_layernorm": "attn_norm", "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k",
             "self_attn.v_proj": "attn_v", "self_attn.o_proj": "attn_output",
             "post_attention_layernorm": "ffn_norm", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
             "mlp.down_proj": "ffn_down"}
    for i in range(n_layers):
        for hf, gg in parts.items():
            m[f"model.layers.{i}.{hf}.weight"] = f"blk.{i}.{gg}.weight"
    return m


def read_config(folder: Path) -> dict:
    folder = Path(folder)
    if not folder.is_dir():
        raise LiteInferError(f"{folder}: not a folder (expected a Hugging Face model folder)")
    cfg_path = folder / "config.json"
    if not cfg_path.is_file():
        raise LiteInferError(f"{folder}: no config.json (not a Hugging Face model folder)")
    try:
        cfg = json.loads(cfg_path.read_text())
    except ValueError as e:
        raise LiteInferError(f"{cfg_path}: not valid JSON ({e})") from None
    if not isinstance(cfg, dict):
        raise LiteInferError(f"{cfg_path}: not a JSON object")
    return cfg


def builtin_limit(cfg: dict) -> str | None:
    """Why our numpy converter cannot take this llama-family config (None: it can)."""
    if cfg.get("rope_scaling"):
        return f"rope_scaling {cfg['rope_scaling']} is not supported yet"
    if cfg.get("attention_bias") or cfg.get("mlp_bias"):
        return "attention/MLP biases are not supported (llama family without bias)"
    if cfg.get("sliding_window"):
        return "sliding-window attention is not supported"
    return None


def load_config(folder: Path) -> dict:
    """config.json of a llama-family folder our numpy converter (and ReferenceLlama) takes."""
    cfg = read_config(folder)
    archs = set(cfg.get("architectures") or [])
    if not archs & SUPPORTED_ARCHS:
        raise LiteInferError(f"{folder}: architecture {sorted(archs)} not supported (llama family only)")
    limit = builtin_limit(cfg)
    if limit:
        raise LiteInferError(f"{folder}: {limit}")
    return cfg


def _builtin_takes(folder: Path, cfg: dict) -> bool:
    """Llama/Mistral with a plain byte-level BPE tokenizer.json (or none: the error says so)."""
    if not set(cfg.get("architectures") or []) & SUPPORTED_ARCHS or builtin_limit(cfg):
        return False
    tok_path = folder / "tokenizer.json"
    if not tok_path.is_file():
        return not (folder / "tokenizer.model").is_file()
    try:
        model = json.loads(tok_path.read_text()).get("model") or {}
    except ValueError:
        return True  # the builtin path reports the broken file
    return model.get("type") == "BPE" and not model.get("byte_fallback")


def convert_any(folder: str | Path, out: str | Path, outtype: str = "f32", pre: str | None = None,
                progress: bool = True) -> Path:
    """OUT.gguf from a HF folder of any supported family: ours for plain Llama/Mistral, else llama.cpp's."""
    # on use: the llama.cpp bridge is only needed here (start-up)
    from liteinfer.convert.llamacpp import FAMILIES, convert_llamacpp, supported_text

    folder, out = Path(folder), Path(out)
    if outtype not in OUTTYPES:
        raise LiteInferError(f"unknown --outtype {outtype!r} (choose from {', '.join(OUTTYPES)})")
    cfg = read_config(folder)
    archs = cfg.get("architectures") or []
    arch = next((a for a in archs if a in FAMILIES), None)
    if arch is None:
        raise LiteInferError(f"{folder}: architecture {archs or cfg.get('model_type')} is not supported; "
                             f"supported: {supported_text()}")
    if _builtin_takes(folder, cfg):
        return convert_hf(folder, out, outtype=outtype, pre=pre, progress=progress)
    return convert_llamacpp(folder, out, arch, outtype=outtype, pre=pre, progress=progress)


def convert_hf(folder: str | Path, out: str | Path, outtype: str = "f32", pre: str | None = None,
               progress: bool = True) -> Path:
    """Write OUT.gguf from a llama-family HF folder; returns the output path."""
    # on use: gguf is heavy (start-up, memory)
    import gguf

    # on use: numpy is heavy (start-up, memory)
    import numpy as np


    folder, out = Path(folder), Path(out)
    if outtype not in OUTTYPES:
        raise LiteInferError(f"unknown --outtype {outtype!r} (choose from {', '.join(OUTTYPES)})")
    cfg = load_config(folder)
    tok_path = folder / "tokenizer.json"
    if not tok_path.is_file():
        raise LiteInferError(f"{folder}: no tokenizer.json (a byte-level BPE tokenizer is required)")
    tok = json.loads(tok_path.read_text())
    if (tok.get("model") or {}).get("type") != "BPE" or tok["model"].get("byte_fallback"):
        raise LiteInferError(f"{tok_path}: only byte-level BPE tokenizers are supported")
    pre = pre or detect_pre_tokenizer(tok)

    n_layer, n_head = cfg["num_hidden_layers"], cfg["num_attention_heads"]
    n_kv = cfg.get("num_key_value_heads", n_head)
    dim = cfg["hidden_size"]
    head_dim = cfg.get("head_dim") or dim // n_head
    weights = read_folder(folder)
    names = tensor_map(n_layer)
    unknown = [k for k in weights if k not in names and not k.endswith("rotary_emb.inv_freq")]
    if unknown:
        raise LiteInferError(f"{folder}: unexpected tensors for a llama model: {unknown[:3]}")
    missing = [k for k in names if k not in weights and k != "lm_head.weight"]
    if missing:
        raise LiteInferError(f"{folder}: missing tensors: {missing[:3]}")

    ftype = {"f32": gguf.LlamaFileType.ALL_F32, "f16": gguf.LlamaFileType.MOSTLY_F16,
             "bf16": gguf.LlamaFileType.MOSTLY_BF16}[outtype]
    qtype = {"f32": gguf.GGMLQuantizationType.F32, "f16": gguf.GGMLQuantizationType.F16,
             "bf16": gguf.GGMLQuantizationType.BF16}[outtype]
    with atomic_output(out) as tmp:
        w = gguf.GGUFWriter(str(tmp), "llama")
        w.add_name(cfg.get("_name_or_path") or folder.name)
        w.add_context_length(cfg.get("max_position_embeddings", 2048))
        w.add_embedding_length(dim)
        w.add_block_count(n_layer)
        w.add_feed_forward_length(cfg["intermediate_size"])
        w.add_head_count(n_head)
        w.add_head_count_kv(n_kv)
        w.add_rope_dimension_count(head_dim)
        if head_dim != dim // n_head:
            w.add_key_length(head_dim)
            w.add_value_length(head_dim)
        w.add_rope_freq_base(float(cfg.get("rope_theta", 10000.0)))
        w.add_layer_norm_rms_eps(float(cfg.get("rms_norm_eps", 1e-5)))
        w.add_vocab_size(cfg["vocab_size"])
        w.add_file_type(ftype)
        _add_tokenizer(w, folder, tok, cfg["vocab_size"], pre)
        for hf_name, arr in weights.items():
            if hf_name.endswith("rotary_emb.inv_freq"):
                continue
            data = np.asarray(arr, dtype=np.float32)
            if hf_name.endswith("q_proj.weight"):
                data = _permute(data, n_head)
            elif hf_name.endswith("k_proj.weight"):
                data = _permute(data, n_kv)
            if data.ndim >= 2 and qtype != gguf.GGMLQuantizationType.F32:
                w.add_tensor(names[hf_name], gguf.quants.quantize(data, qtype), raw_dtype=qtype)
            else:  # norms stay F32: they are tiny and llama.cpp wants them F32
                w.add_tensor(names[hf_name], np.ascontiguousarray(data))
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file(progress=progress)
        w.close()
    return out


def _add_tokenizer(w, folder: Path, tok: dict, n_vocab: int, pre: str) -> None:
    # on use: gguf is heavy (start-up, memory)
    import gguf

    vocab: dict[str, int] = dict(tok["model"]["vocab"])
    added = {t["id"]: t for t in tok.get("added_tokens", [])}
    for t in added.values():
        vocab[t["content"]] = t["id"]
    if max(vocab.values()) >= n_vocab:
        raise LiteInferError(f"{folder}: tokenizer has ids beyond config vocab_size {n_vocab}")
    by_id = {i: s for s, i in vocab.items()}
    tokens, types = [], []
    for i in range(n_vocab):
        if i not in by_id:  # padding rows of the embedding (vocab_size rounded up)
            tokens.append(f"[PAD{i}]")
            types.append(gguf.TokenType.UNUSED)
        elif i in added:
            tokens.append(by_id[i])
            types.append(gguf.TokenType.CONTROL if added[i].get("special") else gguf.TokenType.USER_DEFINED)
        else:
            tokens.append(by_id[i])
            types.append(gguf.TokenType.NORMAL)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre(pre)
    w.add_token_list(tokens)
    w.add_token_types(types)
    # merges, bos/eos/pad ids, add_bos flag and the chat template, read the way llama.cpp's
    # converter reads them (tokenizer.json + tokenizer_config.json + config.json)
    special = gguf.SpecialVocab(folder, load_merges=True, n_vocab=n_vocab)
    if not special.merges:
        raise LiteInferError(f"{folder}: tokenizer.json has no BPE merges")
    special.add_to_gguf(w, quiet=True)
