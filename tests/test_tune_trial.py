"""The measuring loop on the real default model: the serving path (the scheduler and its
controller) and the engine-only loop do the same fixed work; closed-loop concurrency."""

from __future__ import annotations

import pytest

from liteinfer.core.config import SchedulerSettings
from liteinfer.tune.trial import end_of_text_tokens, run_scheduler_workload, run_workload

TEXTS = ["Hello", "What is the capital of France?", "Write a haiku about the sea.", "Count to five."]


@pytest.fixture(scope="module")
def prompts(engine):
    return [engine.tokenize(t) for t in TEXTS]


def test_end_of_text_tokens(engine):
    eog = end_of_text_tokens(engine)
    assert eog and all(engine.is_eog(t) for t in eog)
    assert engine.tokenize("<|im_end|>", add_special=False)[0] in eog


def test_both_runners_do_the_same_fixed_work(engine, prompts):
    max_tokens = [12, 3, 7, 5]
    s = run_scheduler_workload(engine, prompts, max_tokens, SchedulerSettings(max_batch=4))
    e = run_workload(engine, prompts, max_tokens, max_batch=4, prefill_chunk=256)
    for m in (s, e):
        assert m["generated_tokens"] == 27 and m["requests"] == 4
        assert len(m["latency_ms"]) == len(m["ttft_ms"]) == 4
        assert all(lat >= t > 0 for lat, t in zip(m["latency_ms"], m["ttft_ms"], strict=True))
        assert 1 <= m["mean_batch"] <= 4
    # the longest request decodes alone at the end: at least its 12 tokens are 12 steps
    assert s["steps"] >= 12 and e["steps"] >= 12


def test_scheduler_runner_obeys_its_settings_and_concurrency(engine, prompts):
    one = run_scheduler_workload(engine, prompts, [4] * 4, SchedulerSettings(max_batch=1, adaptive=False))
    assert one["mean_batch"] == 1.0 and one["steps"] >= 16  # one sequence a step: 4 x 4 tokens at least
    closed = run_scheduler_workload(engine, prompts, [4] * 4, SchedulerSettings(max_batch=4), concurrency=1)
    assert closed["mean_batch"] == 1.0 and closed["generated_tokens"] == 16
    # one client at a time: the requests never overlap, so their latencies add up to at most the run
    assert sum(closed["latency_ms"]) <= closed["seconds"] * 1000 + 1
    # all at once, one at a time: each waits for those before it (latency counts the queue)
    burst = run_workload(engine, prompts, [4] * 4, max_batch=1, prefill_chunk=256)
    assert burst["ttft_ms"] == sorted(burst["ttft_ms"]) and sum(burst["latency_ms"]) > burst["seconds"] * 1000 * 2
    closed_engine = run_workload(engine, prompts, [4] * 4, max_batch=4, prefill_chunk=256, concurrency=1)
    assert closed_engine["mean_batch"] == 1.0
    assert sum(closed_engine["latency_ms"]) <= closed_engine["seconds"] * 1000 + 1
