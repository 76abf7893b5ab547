"""Iteration-level (continuous) batching for LLM sequences.

One thread owns the engine. Each loop iteration is one step: drop cancelled or timed-out
requests, admit waiting ones (up to the controller's batch size, while KV room lasts), give
every decoding sequence one token and the prefilling ones prompt chunks within the
controller's budget, run ONE engine call, and stream the new text to each request.
Requests talk to the loop through `submit()` / `cancel()` and an `emit` callback per request,
so the HTTP layer (asyncio) never touches the engine.
"""

from __future__ import annotations

import collections
import itertools
import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from liteinfer.core.config import SchedulerSettings
from liteinfer.core.errors import LiteInferError, QueueFull
from liteinfer.engines.llama import KVCacheFull, LlamaEngine, SamplingParams, Sequence, common_prefix_len
from liteinfer.engines.text_stream import TextStream
from liteinfer.scheduler.continuous_policy import BatchController, Signals
from liteinfer.scheduler.cpu_share import COMPUTE_SHARE, ComputeShare
from liteinfer.scheduler.prompt_lookup import Speculator, break_even_rate


def _machine_cores() -> int:
    return os.cpu_count() or 1


@dataclass
class Event:
    kind: str  # "text" | "done" | "error"
    text: str = ""
    finish_reason: str | None = None
    usage: dict | None = None
    logprobs: list | None = None  # TokenLogprob of the token(s) behind this text, when asked for


_ids = itertools.count()
log = logging.getLogger("liteinfer.scheduler")


@dataclass(eq=False)
class GenRequest:
    prompt_tokens: list[int]
    params: SamplingParams
    emit: Callable[[Event], None]
    timeout_s: float = 300.0
    id: int = field(default_factory=lambda: next(_ids))
    arrived: float = field(default_factory=time.monotonic)
    cancelled: bool = False
    # set by the scheduler
    seq: Sequence | None = None
    stream: TextStream | None = None
    completion_tokens: int = 0
    reused_tokens: int = 0
    admitted: float | None = None
    first_token: float | None = None
    speculator: Speculator | None = None  # prompt-lookup drafts (None: this request does not speculate)

    def __post_init__(self) -> None:
        self.n_prompt = len(self.prompt_tokens)  # the client's prompt, even after a preemption


class ContinuousScheduler:
    def __init__(self, engine: LlamaEngine, settings: SchedulerSettings | None = None,
                 max_queue: int = 64, metrics=None, share: ComputeShare | None = COMPUTE_SHARE):
        self.engine = engine
        self.settings = settings or SchedulerSettings()
        self.share = share if self.settings.speech_first else None  # speech jobs first (cpu_share.py)
        self.threads = engine.n_threads  # the controller's choice; a step may run on fewer (share)
        self.engine.prefix_cache = self.settings.prefix_cache
        self.max_queue = max_queue
        self.metrics = metrics
        self.controller = BatchController(self.settings, engine.n_batch, max_threads=engine.n_threads,
                                          n_cores=_machine_cores())
        self.waiting: collections.deque[GenRequest] = collections.deque()
        self.running: list[GenRequest] = []
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = False
        self._abort_message = ""  # set by abort_all: end every request
        self._thread: threading.Thread | None = None
        self.steps = 0
        self.preemptions = 0  # requests pushed back because the KV cache was full (/metrics)
        self.drafted = self.accepted = 0  # speculative draft tokens run / accepted, all requests

    # ---- API for the server (any thread) ---------------------------------------------------
    @property
    def batch_capacity(self) -> int:
        """Sequences the batch can hold: the configured max_batch, within the KV cache's slots."""
        return min(self.settings.max_batch, self.engine.settings.n_seq_max)

    def submit(self, req: GenRequest) -> None:
        """Queue a request; QueueFull only when the batch is full and max_queue more wait beyond
        it. Requests the batch can still take count as free slots, not as queue: right after a
        burst arrives the engine loop has not admitted any of them yet."""
        with self._lock:
            free = max(0, self.batch_capacity - len(self.running))
            if len(self.waiting) >= self.max_queue + free:
                if self.metrics:
                    self.metrics.rejected.labels(reason="queue_full").inc()
                raise QueueFull(f"queue full ({len(self.running)} running, {self.max_queue} waiting)")
            self.waiting.append(req)
        self._wake.set()

    def abort_all(self, message: str) -> int:
        """End every running and waiting request at the next step (the server's drain time is
        over), and any submitted after: each gets its final "done" event with finish_reason
        "abort" and `message` as its text. Returns how many there were."""
        self._abort_message = message
        n = len(self.waiting) + len(self.running)
        self._wake.set()
        if self._thread is None or not self._thread.is_alive():
            self._abort_running()
        return n

    def _abort_running(self) -> None:
        with self._lock:
            waiting = list(self.waiting)
            self.waiting.clear()
        for req in [*waiting, *self.running]:
            self._finish(req, reason="abort")

    def cancel(self, req: GenRequest) -> None:
        req.cancelled = True
        self._wake.set()

    @property
    def queue_depth(self) -> int:
        return len(self.waiting)

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="liteinfer-engine", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop = True
        self._wake.set()
        if self._thread:
            self._thread.join(timeout=30)

    def _loop(self) -> None:
        while not self._stop:
            if self._abort_message and (self.waiting or self.running):
                self._abort_running()
            if not self.waiting and not self.running:
                self._wake.wait(0.5)
                self._wake.clear()
                continue
            try:
                self.step()
            except Exception as e:  # never let the engine thread die: fail the batch, go on
                for req in self.running + list(self.waiting):
                    self._finish(req, error=f"engine error: {e}")
                with self._lock:
                    self.waiting.clear()
                self.running = []

    # ---- one iteration -----------------------------------------------------------------
    def step(self) -> None:
        now = time.monotonic()
        for req in list(self.running):
            if req.cancelled:
                self._finish(req, reason="cancelled")
            elif now - req.arrived > req.timeout_s:
                self._finish(req, error="request timed out")
        with self._lock:
            for req in list(self.waiting):
                if req.cancelled or now - req.arrived > req.timeout_s:
                    self.waiting.remove(req)
                    if not req.cancelled:
                        req.emit(Event("error", text="request timed out in queue"))
        previous = self.controller.decision
        decision = self.controller.decide(self._signals(now))
        if (decision.max_batch, decision.prefill_chunk) != (previous.max_batch, previous.prefill_chunk):
            log.info("controller: max_batch %d -> %d, prefill_chunk %d -> %d (%s)", previous.max_batch,
                     decision.max_batch, previous.prefill_chunk, decision.prefill_chunk, decision.reason)
        if decision.threads and decision.threads != self.threads:
            log.info("controller: compute threads %d -> %d (%s)", self.threads, decision.threads, decision.reason)
            self.threads = decision.threads
        threads = self.threads
        if self.share is not None:  # speech jobs hold cores: step on what they leave (scheduler/cpu_share.py)
            threads = self.share.threads_for_llm(threads, self.settings.speech_max_pause_s)
        if threads != self.engine.n_threads:
            self.engine.set_threads(threads)
        self._admit(decision.max_batch)
        plan, n_decode, n_prompt = self._plan(decision.prefill_chunk)
        if not plan:
            return
        t0 = time.perf_counter()
        try:
            results = self.engine.step(plan)
        except KVCacheFull:
            for r in self.running:  # the step did not run: its drafts count for nothing
                if r.speculator is not None:
                    r.speculator.last_draft = 0
            self._preempt_newest()
            return
        dt = time.perf_counter() - t0
        self.steps += 1
        n_draft = self._account_drafts()
        self.controller.observe(n_decode, n_prompt + n_draft, dt)  # a draft token costs about a prompt token
        if self.metrics:
            self.metrics.observe_step(len(plan), n_decode, n_prompt, dt, self)
        owner = {id(r.seq): r for r in self.running}
        for seq, token in results:
            req = owner[id(seq)]
            if req in self.running:  # a stop in the middle of accepted drafts ends it: drop the rest
                self._on_token(req, token)

    def _signals(self, now: float) -> Signals:
        oldest = now - self.waiting[0].arrived if self.waiting else 0.0
        free_mem, outside, sample = 1.0, 0.0, None
        if self.metrics is not None:
            free_mem, outside = self.metrics.free_memory_fraction, self.metrics.outside_cpu_load
            sample = self.metrics.cpu_samples
        return Signals(len(self.waiting), oldest, free_mem, outside, sample)

    def _kv_budget_left(self) -> int:
        """KV cells not promised to running sequences (their prompt + remaining max_tokens)."""
        promised = sum(len(r.seq.tokens) + r.params.max_tokens - r.completion_tokens for r in self.running)
        return self.engine.n_ctx - promised

    def _admit(self, max_batch: int) -> None:
        while self.waiting and len(self.running) < max_batch and self.engine.free_slots > 0:
            with self._lock:
                req = self.waiting[0]
                need = len(req.prompt_tokens) + req.params.max_tokens - req.completion_tokens
                if self.running and need > self._kv_budget_left():
                    return
                if self.running and self._should_wait_for_shared_prefix(req):
                    return
                self.waiting.popleft()
            try:
                # a preempted request resumes from prompt + what it generated: its samplers
                # (grammar state, penalty history) replay those tokens
                req.seq = self.engine.start(req.prompt_tokens, req.params,
                                            replay=len(req.prompt_tokens) - req.n_prompt)
            except Exception as e:  # this request's failure only: it is out of the queue, tell it
                req.emit(Event("error", text=str(e) if isinstance(e, LiteInferError) else f"engine error: {e}"))
                continue
            req.stream = req.stream or TextStream(self.engine, req.params.stop)
            req.reused_tokens += req.seq.n_reused
            req.admitted = req.admitted or time.monotonic()
            self.running.append(req)

    def _should_wait_for_shared_prefix(self, req: GenRequest) -> bool:
        """Hold a request back one step while a running sequence is still prefilling a long
        prefix they share: starting now would compute that prefix twice."""
        for r in self.running:
            s = r.seq
            if s.n_cached >= s.n_prompt:
                continue
            n = common_prefix_len(s.tokens, req.prompt_tokens)
            if n >= 32 and n > s.n_cached:
                return True
        return False

    def _plan(self, prefill_chunk: int) -> tuple[list[tuple[Sequence, int]], int, int]:
        plan, n_decode, budget = [], 0, self.engine.n_batch
        decoding = [r for r in self.running if r.seq.n_pending == 1]
        for r in decoding:  # decoding sequences first: one token each keeps them streaming
            plan.append((r.seq, 1))
            n_decode += 1
        budget -= n_decode
        budget -= self._draft(decoding, budget)
        prompt_budget = min(prefill_chunk, budget) if n_decode else budget
        n_prompt = 0
        for r in self.running:  # then prompt chunks, oldest first
            k = r.seq.n_pending
            if k > 1 and prompt_budget > 0:
                take = min(k, prompt_budget)
                plan.append((r.seq, take))
                prompt_budget -= take
                n_prompt += take
        return plan, n_decode, n_prompt

    # ---- speculation (scheduler/prompt_lookup.py) -----------------------------------------
    def _speculates(self, req: GenRequest) -> bool:
        p = req.params
        on = self.settings.speculative if p.speculative is None else p.speculative
        # logprobs are streamed one event per token, each with its own row: one token per step
        return on and not p.logprobs

    def _draft(self, decoding: list[GenRequest], budget: int) -> int:
        """Give decoding sequences prompt-lookup drafts within `budget` batch tokens; returns
        how many draft tokens the step takes. No drafts when more sequences decode than
        speculative_max_batch; otherwise a request drafts while its acceptance beats the rate
        at which a draft token pays for itself in a batch this size (break_even_rate, 20% margin)."""
        s = self.settings
        if not decoding or len(decoding) > s.speculative_max_batch:
            return 0
        c = self.controller  # adaptive off: a fixed policy, drafts wherever a match is found
        need = 1.2 * break_even_rate(c.coef if c.fitted and s.adaptive else None, len(decoding))
        used = 0
        for r in decoding:
            if r.speculator is None:
                if not self._speculates(r):
                    continue
                r.speculator = Speculator(s.speculative_max_draft)
            seq = r.seq
            limit = min(budget - used, r.params.max_tokens - r.completion_tokens - 1,
                        self.engine.max_seq_len - len(seq.tokens) - 1)
            seq.draft = r.speculator.propose(seq.tokens, limit, need) if limit > 0 else []
            used += len(seq.draft)
        return used

    def _account_drafts(self) -> int:
        """After a step: each speculating request learns how its drafts did; returns the draft tokens run."""
        total = accepted = 0
        for r in self.running:
            sp = r.speculator
            if sp is None or r.seq is None:
                continue
            n = sp.last_draft
            if n:
                sp.record(n, r.seq.n_accepted)
                total += n
                accepted += r.seq.n_accepted
        self.drafted += total
        self.accepted += accepted
        if self.metrics and total:
            self.metrics.speculative_drafted.inc(total)
            self.metrics.speculative_accepted.inc(accepted)
        return total

    def _on_token(self, req: GenRequest, token: int) -> None:
        if req.first_token is None:
            req.first_token = time.monotonic()
            if self.metrics:
                self.metrics.ttft.observe(req.first_token - req.arrived)
        if self.engine.is_eog(token):
            self._finish(req, reason="stop")
            return
        req.completion_tokens += 1
        if self.metrics:
            self.metrics.generated_tokens.inc()
        piece = req.stream.push(token)
        if req.params.logprobs:  # one event per token, its text possibly held back (stop strings)
            req.emit(Event("text", text=piece, logprobs=req.seq.logprobs[-1:]))
        elif piece:
            req.emit(Event("text", text=piece))
        if req.stream.stopped:
            self._finish(req, reason="stop")
        elif req.completion_tokens >= req.params.max_tokens or len(req.seq.tokens) >= self.engine.max_seq_len:
            self._finish(req, reason="length")

    def _finish(self, req: GenRequest, reason: str | None = None, error: str | None = None) -> None:
        if req in self.running:
            self.running.remove(req)
        if req.seq is not None:
            # cancelled/failed: free the KV now; finished: keep it as a reusable prefix
            self.engine.release(req.seq, keep_prefix=reason in ("stop", "length"))
        if error is not None:
            req.emit(Event("error", text=error))
            return
        if reason == "cancelled":
            if self.metrics:
                self.metrics.cancelled.inc()
            return
        tail = req.stream.flush() if req.stream else ""
        if tail:
            req.emit(Event("text", text=tail))
        usage = {
            "prompt_tokens": req.n_prompt,
            "completion_tokens": req.completion_tokens,
            "total_tokens": req.n_prompt + req.completion_tokens,
            "cached_tokens": req.reused_tokens,
        }
        if self.metrics:
            self.metrics.request_latency.observe(time.monotonic() - req.arrived)
            self.metrics.prompt_tokens.inc(req.n_prompt)
            self.metrics.reused_tokens.inc(req.reused_tokens)
        req.emit(Event("done", text=self._abort_message if reason == "abort" else "", finish_reason=reason,
                       usage=usage))

    def _preempt_newest(self) -> None:
        """KV full: push the newest running request back to the queue front; it resumes later
        from its prompt plus what it generated (its text already streamed stays streamed)."""
        if not self.running:
            return
        req = self.running.pop()
        self.preemptions += 1
        self.engine.release(req.seq, keep_prefix=False)
        req.prompt_tokens, req.seq = list(req.seq.tokens), None
        with self._lock:
            self.waiting.appendleft(req)
