"""Build a tiny random llama-architecture Hugging Face folder with numpy, safetensors and
tokenizers (a freshly trained byte-level BPE): the converter's and quantizer's test model.

Widths are multiples of 256 so llama.cpp's k-quants apply without fallbacks.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

FORTUNES = Path("/usr/share/games/fortunes/fortunes")
CHATML = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content']"
    " + '<|im_end|>' + '\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
SAMPLE = (
    "Hello world!  It's 3.14159 o'clock; isn't it?\n\n  Tabs\tand    spaces...\n"
    "Ünïcödé, émojis 🦙🚀, Ελληνικά, 中文 1234567 ''' ``` \"\"\" ---=== I'll, we'VE, you'D.\n\n\n"
)


def corpus() -> list[str]:
    if FORTUNES.is_file():
        docs = FORTUNES.read_text(encoding="latin-1").split("\n%\n")
        return [d for d in docs if d.strip()][:600]
    return [SAMPLE * 3, "The quick brown fox jumps over the lazy dog. " * 50]


def train_bpe(vocab: int):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab, special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(corpus(), trainer=trainer)
    return tok


def make_tiny_llama(folder: Path, dim: int = 256, layers: int = 2, heads: int = 4, kv_heads: int = 2,
                    ffn: int = 512, vocab: int = 512, tied: bool = False, seed: int = 0) -> Path:
    from safetensors.numpy import save_file

    folder.mkdir(parents=True, exist_ok=True)
    tok = train_bpe(vocab)
    n_vocab = tok.get_vocab_size()
    rng = np.random.default_rng(seed)
    hd = dim // heads

    def lin(out, inp):  # scaled so activations stay O(1) through the layers
        return (rng.standard_normal((out, inp)) / np.sqrt(inp)).astype(np.float32)

    w = {"model.embed_tokens.weight": rng.standard_normal((n_vocab, dim)).astype(np.float32),
         "model.norm.weight": (1 + 0.1 * rng.standard_normal(dim)).astype(np.float32)}
    if not tied:
        w["lm_head.weight"] = lin(n_vocab, dim) * 4
    for i in range(layers):
        p = f"model.layers.{i}."
        w[p + "input_layernorm.weight"] = (1 + 0.1 * rng.standard_normal(dim)).astype(np.float32)
        w[p + "post_attention_layernorm.weight"] = (1 + 0.1 * rng.standard_normal(dim)).astype(np.float32)
        w[p + "self_attn.q_proj.weight"] = lin(heads * hd, dim) * 2
        w[p + "self_attn.k_proj.weight"] = lin(kv_heads * hd, dim) * 2
        w[p + "self_attn.v_proj.weight"] = lin(kv_heads * hd, dim)
        w[p + "self_attn.o_proj.weight"] = lin(dim, heads * hd) * 0.5
        w[p + "mlp.gate_proj.weight"] = lin(ffn, dim)
        w[p + "mlp.up_proj.weight"] = lin(ffn, dim)
        w[p + "mlp.down_proj.weight"] = lin(dim, ffn) * 0.5
    save_file(w, str(folder / "model.safetensors"))
    eot = tok.token_to_id("<|endoftext|>")
    (folder / "config.json").write_text(json.dumps({
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_act": "silu",
        "hidden_size": dim, "intermediate_size": ffn, "num_hidden_layers": layers,
        "num_attention_heads": heads, "num_key_value_heads": kv_heads, "vocab_size": n_vocab,
        "max_position_embeddings": 512, "rms_norm_eps": 1e-5, "rope_theta": 10000.0,
        "tie_word_embeddings": tied, "bos_token_id": eot, "eos_token_id": eot, "torch_dtype": "float32"}))
    tok.save(str(folder / "tokenizer.json"))
    (folder / "tokenizer_config.json").write_text(json.dumps({
        "bos_token": "<|endoftext|>", "eos_token": "<|endoftext|>", "add_bos_token": False,
        "chat_template": CHATML}))
    return folder
