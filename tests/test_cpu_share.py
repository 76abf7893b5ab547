"""Speech jobs first on the cores (scheduler/cpu_share.py): the real engine and model through
the continuous scheduler, with a speech job held by the test as services.py holds one around a
transcription or a synthesis."""

from __future__ import annotations

import threading
import time

import pytest

from liteinfer.core.config import SchedulerSettings
from liteinfer.engines.llama import SamplingParams
from liteinfer.scheduler.continuous import ContinuousScheduler, GenRequest
from liteinfer.scheduler.cpu_share import ComputeShare


def _until(cond, timeout=120.0):
    end = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < end, "timed out"
        time.sleep(0.005)


@pytest.fixture
def running(engine):
    """A scheduler on a 2-core share, generating one long answer in its own thread."""
    if engine.n_threads < 2:
        pytest.skip("the engine runs on one thread here")
    threads, prefix_cache = engine.n_threads, engine.prefix_cache  # the scheduler sets both
    made = []

    def start(max_pause_s: float):
        share = ComputeShare(cores=threads)
        sched = ContinuousScheduler(engine, SchedulerSettings(adaptive=False, prefix_cache=False, speculative=False,
                                                              speech_max_pause_s=max_pause_s), share=share)
        prompt = engine.chat_tokens([{"role": "user", "content": "Count from 1 to 300, one number a line."}])
        req = GenRequest(prompt, SamplingParams(max_tokens=400, temperature=0), emit=lambda e: None)
        sched.start()
        sched.submit(req)
        made.append((sched, req))
        _until(lambda: sched.steps >= 3)
        return sched, share

    yield start
    for sched, req in made:
        req.cancelled = True  # the scheduler ends it at its next step and frees its KV cells
        _until(lambda s=sched: not s.running and not s.waiting, timeout=60)
        sched.stop()
    engine.set_threads(threads)
    engine.prefix_cache = prefix_cache
    assert engine.n_active == 0  # the session's engine is left as it was found


def test_llm_steps_wait_while_speech_holds_every_core(running, engine):
    sched, share = running(max_pause_s=600)
    with share.job(threads=share.cores):
        _until(lambda: share.llm_waiting)  # the step in flight ended; the next one waits
        frozen = sched.steps
        time.sleep(0.5)
        assert sched.steps == frozen and share.llm_waiting
    _until(lambda: sched.steps >= frozen + 2)  # the job ended: steps go on, on every core
    assert engine.n_threads == share.cores and share.paused_s >= 0.5 and not share.llm_waiting


def test_llm_steps_on_the_cores_speech_leaves(running, engine):
    sched, share = running(max_pause_s=600)
    with share.job(threads=share.cores - 1):
        n = sched.steps
        _until(lambda: sched.steps >= n + 3)
        assert engine.n_threads == 1 and share.paused_s == 0.0
    n = sched.steps
    _until(lambda: sched.steps >= n + 3)
    assert engine.n_threads == share.cores


def test_a_long_speech_job_pauses_the_llm_only_for_max_pause(running, engine):
    sched, share = running(max_pause_s=0.3)
    with share.job(threads=share.cores):
        n = sched.steps
        _until(lambda: sched.steps >= n + 3)  # past max_pause_s: one thread beside the job
        assert engine.n_threads == 1 and not share.llm_waiting


def test_a_waiting_step_wakes_when_the_job_ends():
    share = ComputeShare(cores=2)
    got = []
    job = share.job(threads=2)
    job.__enter__()
    t = threading.Thread(target=lambda: got.append(share.threads_for_llm(2, max_pause_s=600)))
    t.start()
    _until(lambda: share.llm_waiting, timeout=30)
    assert not got
    job.__exit__(None, None, None)
    t.join(30)
    assert got == [2] and share.jobs_run == 1 and share.busy_threads() == 0
