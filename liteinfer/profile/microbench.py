"""Short measurements the planner needs: memory bandwidth and the engine's real speed.

Each is a function that returns numbers (the tuner, the planner and `liteinfer bench` share
them). The engine measurement drives the same engine API (start / step / release) the
scheduler uses.
"""

from __future__ import annotations

import os
import time
from typing import Any

# A neutral English paragraph: tokenizes to ~1 token per 4 characters on BPE vocabularies.
_TEXT = (
    "The quick brown fox jumps over the lazy dog while the small machine counts tokens. "
    "Local inference keeps data on the device, saves bandwidth and works without a network. "
)


def memory_bandwidth(size_mb: int = 64, seconds: float = 0.4) -> dict[str, float]:
    """Copy bandwidth in GB/s (bytes read + bytes written), best of repeated numpy copies.

    The buffers are larger than any last-level cache we expect on small machines, so this is
    DRAM bandwidth as one thread sees it, the number that bounds LLM decode speed.
    """
    # on use: numpy is heavy (start-up, memory)
    import numpy as np

    n = max(1, size_mb) * 2**20 // 8
    src = np.ones(n, dtype=np.float64)
    dst = np.empty_like(src)
    np.copyto(dst, src)  # touch the pages before timing
    best = float("inf")
    runs = 0
    deadline = time.perf_counter() + seconds
    while runs < 3 or time.perf_counter() < deadline:
        t0 = time.perf_counter()
        np.copyto(dst, src)
        best = min(best, time.perf_counter() - t0)
        runs += 1
        if runs >= 200:
            break
    return {"copy_gbs": round(2 * src.nbytes / best / 1e9, 2), "size_mb": size_mb, "runs": runs}


def prompt_tokens(engine, n: int, salt: int = 0) -> list[int]:
    """n prompt tokens; `salt` changes the first token so sequences share no prefix."""
    text = f"{salt}: " + _TEXT * (n // 20 + 2)
    return engine.tokenize(text, add_special=True)[:n]


def set_threads(engine, n: int) -> None:
    """Change an engine's thread count without reloading it (decode and batch threads)."""
    engine._ll.llama_set_n_threads(engine.ctx, n, n)
    engine.n_threads = n


def probe_step_seconds(engine) -> float:
    """Seconds of one small engine step (a 4-token prompt): a cheap first look at a setting."""
    # on use: pulls in pydantic (start-up, memory)
    from liteinfer.engines.llama import SamplingParams

    old_prefix = engine.prefix_cache
    engine.prefix_cache = False
    seq = engine.start(prompt_tokens(engine, 4, salt=7), SamplingParams(temperature=0.0))
    try:
        t0 = time.perf_counter()
        engine.step([(seq, seq.n_pending)])
        return time.perf_counter() - t0
    finally:
        engine.release(seq, keep_prefix=False)
        engine.prefix_cache = old_prefix


def _decode_point(engine, b: int, params, seconds: float, deadline: float) -> float:
    """Decode tok/s with `b` sequences stepping together (after their prefill and a warm-up step)."""
    seqs = [engine.start(prompt_tokens(engine, 16, salt=i + 2), params) for i in range(b)]
    try:
        engine.step([(s, s.n_pending) for s in seqs])  # prefill all
        engine.step([(s, 1) for s in seqs])  # warm-up step
        steps, t0 = 0, time.perf_counter()
        while steps < 2 or time.perf_counter() - t0 < seconds:
            engine.step([(s, 1) for s in seqs])
            steps += 1
            if steps >= 512 or time.perf_counter() > deadline:
                break  # one step is enough for a number when the machine is this slow
        return round(b * steps / (time.perf_counter() - t0), 1)
    finally:
        for s in seqs:
            engine.release(s, keep_prefix=False)


def _measure_engine(engine, batches: tuple[int, ...] = (1, 4, 16), prompt_len: int = 128,
                             seconds_per_point: float = 0.6, budget_s: float = 15.0,
                             passes: int = 1) -> dict[str, Any]:
    """Prompt tok/s, then decode tok/s at each batch size, within a time budget.

    Each point runs whole steps for at least `seconds_per_point` (and 2 steps); points that
    would start after `budget_s` are skipped, so a slow or busy machine still finishes.
    With passes=2 the batch sizes run again in reverse order while time is left, and each
    keeps its best: a point disturbed by other work counts less, and drift over the run
    does not tilt the curve.
    """
    # on use: pulls in pydantic (start-up, memory)
    from liteinfer.engines.llama import SamplingParams

    params = SamplingParams(temperature=0.0, max_tokens=1 << 20)
    old_prefix = engine.prefix_cache
    engine.prefix_cache = False  # every run computes its prompt: no reuse between runs
    out: dict[str, Any] = {}
    start = time.perf_counter()
    deadline = start + budget_s
    try:
        # Prompt processing: one sequence, whole prompt in one step.
        toks = prompt_tokens(engine, min(prompt_len, engine.n_batch, engine.max_seq_len - 2), salt=1)
        seq = engine.start(toks, params)
        t0 = time.perf_counter()
        engine.step([(seq, seq.n_pending)])
        out["prompt_tok_s"] = round(len(toks) / (time.perf_counter() - t0), 1)
        engine.release(seq, keep_prefix=False)

        usable = [b for b in batches if b <= engine.settings.n_seq_max and b <= engine.n_batch]
        order = usable + (usable[::-1] if passes > 1 else [])
        batched: dict[str, float] = {}
        for i, b in enumerate(order):
            if batched and time.perf_counter() > deadline:
                skipped = [x for x in usable if str(x) not in batched]
                if skipped:
                    out["skipped_batches"] = skipped
                break
            rate = _decode_point(engine, b, params, seconds_per_point / (2 if i >= len(usable) else 1), deadline)
            batched[str(b)] = max(rate, batched.get(str(b), 0.0))
        out["batched_decode_tok_s"] = {str(b): batched[str(b)] for b in usable if str(b) in batched}
        out["decode_tok_s"] = batched.get("1")
    finally:
        engine.prefix_cache = old_prefix
    return out


def measure_engine(engine, batches: tuple[int, ...] = (1, 4, 16), quick: bool = False,
                   budget_s: float | None = None) -> dict[str, Any]:
    """Prompt tok/s, batch-1 decode tok/s and batched decode tok/s per batch size: the one
    engine measurement that the planner, tuner and benchmarks share."""
    budget = budget_s if budget_s is not None else (6.0 if quick else 12.0)
    return _measure_engine(engine, batches, prompt_len=64 if quick else 128,
                           seconds_per_point=0.3 if quick else 0.6, budget_s=budget,
                           passes=1 if quick else 2)


def model_facts(engine) -> dict[str, Any]:
    """Sizes the planner needs: weights bytes, KV bytes per token (f16), training context."""
    size = os.path.getsize(engine.path)
    kv = None
    try:
        n_layer = int(engine.metadata(f"{engine.metadata('general.architecture')}.block_count"))
        arch = engine.metadata("general.architecture")
        n_head = int(engine.metadata(f"{arch}.attention.head_count"))
        n_head_kv = int(engine.metadata(f"{arch}.attention.head_count_kv") or n_head)
        n_embd = int(engine.metadata(f"{arch}.embedding_length"))
        head_dim = n_embd // n_head
        kv = n_layer * n_head_kv * head_dim * 2 * 2  # K and V, 2 bytes each (f16)
    except (TypeError, ValueError, ZeroDivisionError):
        pass
    return {"model_bytes": size, "kv_bytes_per_token_f16": kv, "n_ctx_train": engine.n_ctx_train}
