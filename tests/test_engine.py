"""The llama.cpp engine on the real default model: determinism, batching, KV, templates."""

from __future__ import annotations

import subprocess
import sys
import textwrap

from liteinfer.engines.generate import generate
from liteinfer.engines.llama import SamplingParams
from liteinfer.engines.text_stream import TextStream

PROMPTS = [
    "What is the capital of France?",
    "Write a haiku about the sea.",
    "List three fruits.",
    "Why is the sky blue?",
]
# Batched kernels may round differently; a differing greedy token is accepted only where the
# top two logits were this close (a near tie), and comparison stops there.
TIE_TOLERANCE = 0.5
GREEDY = SamplingParams(temperature=0.0, max_tokens=24)


def _chat_tokens(engine, text):
    return engine.tokenize(engine.apply_chat_template([{"role": "user", "content": text}]))


def _run(engine, seqs, max_tokens):
    """Drive sequences to completion, all in one step per iteration."""
    live = list(seqs)
    while live:
        results = engine.step([(s, s.n_pending) for s in live])
        for s, tok in results:
            if engine.is_eog(tok) or len(s.generated) >= max_tokens:
                live.remove(s)
    return seqs


def _assert_same_or_tie(alone, batched):
    a, b = alone.generated, batched.generated
    for i, (x, y) in enumerate(zip(a, b)):
        if x != y:
            margin = min(alone.margins[i], batched.margins[i])
            assert margin < TIE_TOLERANCE, f"token {i} differs ({x} vs {y}) with top-2 margin {margin:.3f}"
            return
    assert len(a) == len(b)


def test_greedy_is_stable_across_runs(engine):
    engine.clear_prefix_cache()
    first = generate(engine, PROMPTS[0], GREEDY, chat=True)
    engine.clear_prefix_cache()
    second = generate(engine, PROMPTS[0], GREEDY, chat=True)
    assert first.text and first.text == second.text


def test_four_sequences_in_one_batch_match_each_alone(engine):
    engine.prefix_cache = False
    try:
        alone = []
        for p in PROMPTS:
            s = engine.start(_chat_tokens(engine, p), GREEDY, record_margins=True)
            _run(engine, [s], GREEDY.max_tokens)
            engine.release(s)
            alone.append(s)
        batch = [engine.start(_chat_tokens(engine, p), GREEDY, record_margins=True) for p in PROMPTS]
        steps_before = engine.stats.steps
        _run(engine, batch, GREEDY.max_tokens)
        # all four advanced together: about max_tokens steps, not 4x that
        assert engine.stats.steps - steps_before <= GREEDY.max_tokens + 1
        for s in batch:
            engine.release(s)
        texts = {engine.detokenize(s.generated) for s in batch}
        assert len(texts) == 4, "sequences leaked into each other"
        for a, b in zip(alone, batch):
            _assert_same_or_tie(a, b)
    finally:
        engine.prefix_cache = True


def test_prefix_reuse_gives_the_same_tokens(engine):
    engine.clear_prefix_cache()
    cold = generate(engine, PROMPTS[3], GREEDY, chat=True)
    warm_seq = engine.start(_chat_tokens(engine, PROMPTS[3]), GREEDY)
    assert warm_seq.n_reused > 20  # the system prompt + question came from the cache
    _run(engine, [warm_seq], GREEDY.max_tokens)
    engine.release(warm_seq)
    assert engine.detokenize(warm_seq.generated).startswith(cold.text[:20])


def test_cancel_frees_the_sequence_kv(engine):
    s = engine.start(_chat_tokens(engine, PROMPTS[1]), GREEDY)
    engine.step([(s, s.n_pending)])
    engine.step([(s, 1)])
    assert engine.slot_kv_len(s.slot) == s.n_cached > 0
    active = engine.n_active
    engine.release(s, keep_prefix=False)
    assert engine.slot_kv_len(s.slot) == 0
    assert engine.n_active == active - 1


def test_chat_template_comes_from_the_gguf(engine):
    text = engine.apply_chat_template([{"role": "user", "content": "hi"}])
    assert "<|im_start|>user\nhi<|im_end|>" in text
    assert text.endswith("<|im_start|>assistant\n")
    toks = engine.tokenize(text)
    im_start = engine.tokenize("<|im_start|>", add_special=False)
    assert len(im_start) == 1 and im_start[0] in toks  # parsed as one special token
    result = generate(engine, "Say hello.", SamplingParams(temperature=0, max_tokens=64), chat=True)
    assert result.finish_reason == "stop"  # the model ended its turn with <|im_end|>


def test_stop_string_cuts_text(engine):
    r = generate(engine, "The capital of France is", SamplingParams(temperature=0, max_tokens=30, stop=["."]))
    assert r.finish_reason == "stop"
    assert r.text.strip() == "Paris"


def test_text_stream_holds_back_partial_stop(engine):
    ts = TextStream(engine, stop=["STOP"])
    out = "".join(ts.push(t) for t in engine.tokenize("hello ST", add_special=False))
    assert out == "hello " and ts.pending == "ST"
    out2 = "".join(ts.push(t) for t in engine.tokenize("OP now", add_special=False))
    assert ts.stopped and out2 == ""


def test_multi_sequence_decode_does_not_crash_on_this_cpu(default_model_path):
    """AMX repack buffers segfault multi-token batched decode on Intel AMX CPUs unless
    disabled (build flags + use_extra_bufts): run the crashing pattern in a child process."""
    code = textwrap.dedent(f"""
        from liteinfer.engines.llama import LlamaEngine, SamplingParams
        eng = LlamaEngine({str(default_model_path)!r})
        seqs = [eng.start(eng.tokenize(p), SamplingParams(temperature=0)) for p in ["a b c", "d e f", "g h", "i"]]
        for _ in range(8):
            eng.step([(s, s.n_pending) for s in seqs])
        print("ok", sum(len(s.generated) for s in seqs))
    """)
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.split() == ["ok", "32"]

