"""The adaptive batching policy alone, driven by fake step timings from known cost models."""

from __future__ import annotations

import random

from liteinfer.core.config import SchedulerSettings
from liteinfer.scheduler.continuous_policy import BatchController, Signals


def _train(ctl: BatchController, cost, steps: int = 200, seed: int = 0) -> None:
    rng = random.Random(seed)
    for _ in range(steps):
        n_dec, n_prompt = rng.randint(1, 32), rng.choice([0, 0, 32, 128, 256])
        ctl.observe(n_dec, n_prompt, cost(n_dec, n_prompt) * rng.uniform(0.97, 1.03))


def test_learns_the_cost_model():
    ctl = BatchController(SchedulerSettings(), n_batch=512)
    _train(ctl, lambda d, p: 0.02 + 0.004 * d + 0.0008 * p)
    assert abs(ctl.predict(16, 0) - (0.02 + 0.064)) < 0.005
    assert abs(ctl.predict(1, 256) - (0.024 + 0.2048)) < 0.01


def test_batch_is_capped_by_the_latency_target():
    ctl = BatchController(SchedulerSettings(target_itl_ms=60, max_batch=32), n_batch=512)
    _train(ctl, lambda d, p: 0.02 + 0.004 * d + 0.0008 * p)
    d = ctl.decide(Signals())
    assert d.max_batch == 10  # (0.060 - 0.020) / 0.004
    # a loose target lets the batch grow to the configured cap
    ctl.settings = SchedulerSettings(target_itl_ms=1000, max_batch=32)
    assert ctl.decide(Signals()).max_batch == 32


def test_unreachable_target_maximizes_throughput_instead_of_starving():
    ctl = BatchController(SchedulerSettings(target_itl_ms=10, max_batch=16), n_batch=512)
    _train(ctl, lambda d, p: 0.05 + 0.004 * d + 0.0008 * p)
    d = ctl.decide(Signals())
    assert d.max_batch == 16 and "unreachable" in d.reason


def test_prefill_chunk_grows_when_the_queue_waits():
    ctl = BatchController(SchedulerSettings(target_itl_ms=100, target_ttft_ms=2000, prefill_chunk=512),
                          n_batch=512)
    _train(ctl, lambda d, p: 0.02 + 0.002 * d + 0.0005 * p)
    calm = ctl.decide(Signals(queue_depth=0)).prefill_chunk
    waiting = ctl.decide(Signals(queue_depth=8, oldest_wait_s=1.0)).prefill_chunk
    assert waiting > calm >= BatchController.MIN_CHUNK


def test_memory_pressure_and_busy_cpu_shrink_the_step():
    ctl = BatchController(SchedulerSettings(target_itl_ms=1000, max_batch=32), n_batch=512)
    _train(ctl, lambda d, p: 0.02 + 0.004 * d + 0.0008 * p)
    assert ctl.decide(Signals(free_memory_fraction=0.05)).max_batch == 16
    normal = ctl.decide(Signals()).prefill_chunk
    assert ctl.decide(Signals(outside_cpu_load=0.9)).prefill_chunk < normal


def test_fixed_mode_ignores_measurements():
    ctl = BatchController(SchedulerSettings(adaptive=False, max_batch=4, prefill_chunk=64), n_batch=512)
    _train(ctl, lambda d, p: 1.0)
    d = ctl.decide(Signals(queue_depth=50))
    assert (d.max_batch, d.prefill_chunk, d.reason) == (4, 64, "fixed")


def test_threads_drop_when_other_work_holds_a_core_and_come_back():
    ctl = BatchController(SchedulerSettings(), n_batch=512, max_threads=2, n_cores=2)
    busy, calm = Signals(outside_cpu_load=0.55), Signals(outside_cpu_load=0.02)
    assert [ctl.decide(busy).threads for _ in range(5)] == [2, 2, 2, 2, 1]  # hysteresis: 5 votes
    assert "threads" in ctl.decision.reason
    ctl.decide(calm)
    assert ctl.decision.threads == 1  # one calm reading is not enough
    for _ in range(5):
        ctl.decide(calm)
    assert ctl.decision.threads == 2


def test_one_cpu_reading_is_one_vote():
    # steps come faster than CPU readings: ten steps on one stale reading (e.g. a burst from
    # another program before our traffic) must not drop a thread; five fresh readings do
    ctl = BatchController(SchedulerSettings(), n_batch=512, max_threads=2, n_cores=2)
    for _ in range(10):
        assert ctl.decide(Signals(outside_cpu_load=0.9, cpu_sample=1)).threads == 2
    assert [ctl.decide(Signals(outside_cpu_load=0.9, cpu_sample=k)).threads for k in range(2, 6)] == [2, 2, 2, 1]


def test_threads_untouched_in_fixed_mode():
    ctl = BatchController(SchedulerSettings(adaptive=False), n_batch=512, max_threads=2, n_cores=2)
    for _ in range(10):
        assert ctl.decide(Signals(outside_cpu_load=0.9)).threads in (None, 2)
