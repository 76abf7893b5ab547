"""Who runs when on the cores: speech jobs first, the LLM's batched steps around them.

    share = COMPUTE_SHARE                         # one per process: the cores are shared
    with share.job(threads=2):                    # a transcription or a synthesis (services.py)
        engine.transcribe(...)
    n = share.threads_for_llm(2, max_pause_s=3)   # the LLM scheduler, before each step

Whisper's encoder takes every thread it is given, and llama.cpp's threads spin at a barrier
after each graph node: run both on the same cores and each LLM step waits on a descheduled
thread while the transcription is slowed by the spinning. A speech job is short and a person
waits on it (end of speech -> first audio), while a chat stream only slows. So while speech
jobs hold threads, the LLM steps with the threads left over; when none are left it pauses
between steps, but only for the first `max_pause_s` of each job, then it steps on one thread
beside it, so chat clients never starve behind a long upload.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

from liteinfer.hardware.cores import usable_cores


class ComputeShare:
    def __init__(self, cores: int | None = None):
        self.cores = cores or usable_cores()
        self._cv = threading.Condition()
        self._jobs: dict[int, tuple[int, float]] = {}  # job id -> (threads, start)
        self._ids = itertools.count()
        self.paused_s = 0.0  # time the LLM waited for speech jobs (stats, /metrics)
        self.llm_waiting = False  # an LLM step is waiting now
        self.jobs_run = 0

    @contextmanager
    def job(self, threads: int) -> Iterator[None]:
        """Hold `threads` cores for a speech job while the block runs."""
        with self._cv:
            key = next(self._ids)
            self._jobs[key] = (max(1, threads), time.monotonic())
        try:
            yield
        finally:
            with self._cv:
                del self._jobs[key]
                self.jobs_run += 1
                self._cv.notify_all()

    def busy_threads(self) -> int:
        with self._cv:
            return sum(t for t, _ in self._jobs.values())

    def threads_for_llm(self, want: int, max_pause_s: float) -> int:
        """Threads the LLM may step with now (1..want); blocks while speech jobs younger than
        max_pause_s hold every core."""
        with self._cv:
            t0 = None
            while True:
                now = time.monotonic()
                free = self.cores - sum(t for t, _ in self._jobs.values())
                if free >= 1 or not self._jobs:
                    break
                youngest_left = max(start + max_pause_s - now for _, start in self._jobs.values())
                if youngest_left <= 0:
                    free = 1  # paused long enough for these jobs: one thread beside them
                    break
                t0 = t0 or now
                self.llm_waiting = True
                self._cv.wait(youngest_left)
            self.llm_waiting = False
            if t0 is not None:
                self.paused_s += time.monotonic() - t0
        return max(1, min(want, free))


COMPUTE_SHARE = ComputeShare()
