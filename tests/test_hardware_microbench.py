"""The planner's measurements on the real engine: numbers come back and the engine is left clean."""

from __future__ import annotations

from liteinfer.profile.microbench import (
    measure_engine,
    memory_bandwidth,
    model_facts,
    probe_step_seconds,
    prompt_tokens,
    set_threads,
)


def test_memory_bandwidth_is_a_plausible_number():
    r = memory_bandwidth(size_mb=16, seconds=0.05)
    assert 0.1 < r["copy_gbs"] < 5000 and r["runs"] >= 3


def test_measure_engine_on_the_real_model(engine):
    free = engine.free_slots
    r = measure_engine(engine, batches=(1, 4), quick=True, budget_s=5.0)
    assert r["prompt_tok_s"] > 0 and r["decode_tok_s"] > 0
    assert set(r["batched_decode_tok_s"]) == {"1", "4"} or r.get("skipped_batches") == [4]
    assert engine.n_active == 0 and engine.free_slots == free  # every sequence released, KV freed
    assert engine.prefix_cache  # restored after the measurement turned it off


def test_budget_skips_points_instead_of_running_long(engine):
    r = measure_engine(engine, batches=(1, 4, 16), quick=True, budget_s=0.0)
    assert list(r["batched_decode_tok_s"]) == ["1"] and r["skipped_batches"] == [4, 16]


def test_model_facts_and_threads(engine):
    f = model_facts(engine)
    assert f["kv_bytes_per_token_f16"] == 30 * 3 * 64 * 2 * 2  # SmolLM2-135M: 30 layers, 3 KV heads x 64
    assert f["model_bytes"] > 50e6 and f["n_ctx_train"] == 8192
    n = engine.n_threads
    set_threads(engine, 1)
    assert engine.n_threads == 1
    set_threads(engine, n)
    toks = prompt_tokens(engine, 32, salt=3)
    assert len(toks) == 32 and toks != prompt_tokens(engine, 32, salt=4)


def test_probe_step_leaves_the_engine_clean(engine):
    free = engine.free_slots
    assert 0 < probe_step_seconds(engine) < 60
    assert engine.n_active == 0 and engine.free_slots == free and engine.prefix_cache
