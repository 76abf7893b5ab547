"""`liteinfer convert hf` for every supported family: a tiny random model made with `transformers`
(hidden 64, 2 layers, a byte-level BPE trained here), converted, run by llama.cpp, and its logits
compared with the transformers forward pass; tokenization against the `tokenizers` library's,
the chat template carried over; BF16 sharded sources; an unsupported architecture's error."""

from __future__ import annotations

import copy
import json
import subprocess
import sys

import numpy as np
import pytest
from _tiny_llama import CHATML, SAMPLE, train_bpe

from liteinfer.core.config import EngineSettings
from liteinfer.engines.llama import LlamaEngine

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

pytestmark = pytest.mark.torch

DIM, LAYERS, HEADS, KV, FFN = 64, 2, 4, 2, 128
TEXTS = [SAMPLE, " leading space and  double", "don't 42nd 1,000,000 I'll", "x" * 200, "a\n\n\nb\tc"]


def _config(family: str, vocab: int, eot: int):
    t = transformers
    common = dict(vocab_size=vocab, hidden_size=DIM, intermediate_size=FFN, num_hidden_layers=LAYERS,
                  num_attention_heads=HEADS, num_key_value_heads=KV, max_position_embeddings=512,
                  bos_token_id=eot, eos_token_id=eot, pad_token_id=None, initializer_range=0.15,
                  tie_word_embeddings=False)
    if family == "llama":
        return t.LlamaConfig(**common), t.LlamaForCausalLM
    if family == "mistral":
        return t.MistralConfig(**common, sliding_window=None), t.MistralForCausalLM
    if family == "qwen2":
        return t.Qwen2Config(**common, use_sliding_window=False), t.Qwen2ForCausalLM
    if family == "qwen3":
        return t.Qwen3Config(**common, head_dim=32, use_sliding_window=False), t.Qwen3ForCausalLM
    if family == "gemma2":
        return t.Gemma2Config(**{**common, "tie_word_embeddings": True}, head_dim=16, sliding_window=256,
                              query_pre_attn_scalar=16), t.Gemma2ForCausalLM
    if family == "gemma3":
        return t.Gemma3TextConfig(**{**common, "tie_word_embeddings": True}, head_dim=16, sliding_window=256,
                                  query_pre_attn_scalar=16), t.Gemma3ForCausalLM
    if family == "phi3":
        return t.Phi3Config(**common), t.Phi3ForCausalLM
    if family == "gpt2":
        return t.GPT2Config(vocab_size=vocab, n_embd=DIM, n_layer=LAYERS, n_head=HEADS, n_positions=512,
                            bos_token_id=eot, eos_token_id=eot, initializer_range=0.15), t.GPT2LMHeadModel
    raise AssertionError(family)


FAMILIES = {"llama": "llama", "mistral": "llama", "qwen2": "qwen2", "qwen3": "qwen3", "gemma2": "gemma2",
            "gemma3": "gemma3", "phi3": "phi3", "gpt2": "gpt2"}  # family -> general.architecture


@pytest.fixture(scope="module")
def bpe():
    return train_bpe(384)


def make_model(folder, family: str, bpe, dtype=None, shard: str | None = None, seed: int = 0):
    """A tiny random HF folder of `family`; returns (folder, float32 model with the saved weights)."""
    torch.manual_seed(seed)
    eot = bpe.token_to_id("<|endoftext|>")
    cfg, cls = _config(family, bpe.get_vocab_size(), eot)
    cfg.architectures = [cls.__name__]
    model = cls(cfg).eval()
    with torch.no_grad():  # norms away from 1 and biases away from 0, so their conversion shows
        for name, p in model.named_parameters():
            if "norm" in name or "ln_" in name or name.endswith("bias"):
                p.add_(0.1 * torch.randn_like(p))
    saved = model
    if dtype is not None:  # the reference keeps float32 buffers (RoPE frequencies) and the rounded weights
        saved = copy.deepcopy(model).to(dtype)
        with torch.no_grad():
            for p in model.parameters():
                p.copy_(p.to(dtype).float())
    saved.save_pretrained(folder, safe_serialization=True, **({"max_shard_size": shard} if shard else {}))
    bpe.save(str(folder / "tokenizer.json"))
    tok_cls = "GPT2Tokenizer" if family == "phi3" else "PreTrainedTokenizerFast"  # Phi-4 style BPE
    (folder / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": tok_cls, "bos_token": "<|endoftext|>", "eos_token": "<|endoftext|>",
        "add_bos_token": False, "chat_template": CHATML}))
    return folder, model


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "liteinfer", *map(str, args)], capture_output=True, text=True)


def _engine(path):
    return LlamaEngine(path, EngineSettings(n_ctx=256, n_batch=256, n_seq_max=1, type_k="f32", type_v="f32",
                                            flash_attn=False))


def _hf_logits(model, ids):
    with torch.no_grad():
        return model(torch.tensor([ids])).logits[0].double().numpy()


# llama.cpp computes GELU through a float16 table: Gemma and GPT-2 land ~1e-3 off, the SiLU
# families ~1e-6; a wrong tensor layout, bias or norm is off by tens of percent
REL = 1e-2


def _check_logits(eng, model, prompts, rel=REL):
    for ids in prompts:
        got = eng.logits(ids).astype(np.float64)
        want = _hf_logits(model, ids)
        assert got.shape == want.shape
        err = np.abs(got - want).max() / np.abs(want).max()
        assert err < rel, (err, ids[:8])
        # argmax may differ only where the reference's top two are nearly tied
        top2 = np.sort(want, -1)[:, -2:]
        clear = (top2[:, 1] - top2[:, 0]) > 2 * rel * np.abs(want).max()
        assert (got.argmax(-1) == want.argmax(-1))[clear].all()


@pytest.mark.parametrize("family", list(FAMILIES))
def test_family_converts_and_matches_transformers(family, bpe, tmp_path):
    from tokenizers import Tokenizer

    src, model = make_model(tmp_path / family / "model", family, bpe)  # general.name "phi3" makes llama.cpp look up SPM tokens
    out = tmp_path / f"{family}.gguf"
    r = _cli("convert", "hf", src, out)
    assert r.returncode == 0, r.stderr[-2000:]
    hf_tok = Tokenizer.from_file(str(src / "tokenizer.json"))
    prompts = [hf_tok.encode(t).ids[:64] for t in TEXTS[:3]]
    eng = _engine(out)
    try:
        assert eng.metadata("general.architecture") == FAMILIES[family]
        assert eng.metadata("tokenizer.ggml.pre") == "gpt-2"  # our detection: llama.cpp's hash does not know it
        _check_logits(eng, model, prompts)
        for text in TEXTS:
            assert eng.tokenize(text, add_special=False) == hf_tok.encode(text).ids, text
        prompt = eng.apply_chat_template([{"role": "user", "content": "hi"}])
        assert prompt == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
        assert eng.tokenize(prompt, add_special=False)[0] == hf_tok.token_to_id("<|im_start|>")
    finally:
        eng.close()


@pytest.mark.parametrize("family,dtype", [("qwen2", "bfloat16"), ("llama", "float16")])
def test_half_precision_sharded_sources(family, dtype, bpe, tmp_path):
    """BF16/F16 checkpoints split over several safetensors files with an index."""
    src, model = make_model(tmp_path / family / "model", family, bpe, dtype=getattr(torch, dtype), shard="40KB", seed=1)
    assert (src / "model.safetensors.index.json").is_file() and len(list(src.glob("*.safetensors"))) > 2
    out = tmp_path / f"{family}-{dtype}.gguf"
    r = _cli("convert", "hf", src, out, "--outtype", "f32")
    assert r.returncode == 0, r.stderr[-2000:]
    eng = _engine(out)
    try:
        _check_logits(eng, model, [list(range(3, 60))])
    finally:
        eng.close()


def test_unsupported_architecture(bpe, tmp_path):
    src, _ = make_model(tmp_path / "gpt2", "gpt2", bpe)
    cfg = json.loads((src / "config.json").read_text())
    cfg["architectures"] = ["FalconForCausalLM"]
    (src / "config.json").write_text(json.dumps(cfg))
    out = tmp_path / "out.gguf"
    r = _cli("convert", "hf", src, out)
    assert r.returncode == 1
    assert r.stderr.startswith("error:") and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert "FalconForCausalLM" in r.stderr and "not supported" in r.stderr
    for name in ("Llama", "Mistral", "Qwen2", "Qwen3", "Gemma 2", "Gemma 3", "Phi-3", "GPT-2"):
        assert name in r.stderr, name
    assert not out.exists()
