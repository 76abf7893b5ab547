"""The adaptive batching policy: how many sequences run together, how many prompt tokens a step takes.

It learns a linear cost model of one engine step from what it observes,

    step_seconds ~= base + per_seq * n_decode_seqs + per_prompt_token * n_prompt_tokens,

and picks the largest batch whose predicted decode step meets the inter-token-latency target,
and the largest prompt chunk that keeps a mixed step within the target (stretched while the
queue waits, so the time to first token holds too). Free memory and outside CPU load shrink
the batch. Pure logic, no engine: tests drive it with fake timings.
"""

from __future__ import annotations

from dataclasses import dataclass

from liteinfer.core.config import SchedulerSettings


@dataclass
class Decision:
    max_batch: int
    prefill_chunk: int
    reason: str = ""
    threads: int | None = None  # compute threads for the next steps (None = leave as is)


@dataclass
class Signals:
    """What the scheduler sees between steps."""

    queue_depth: int = 0
    oldest_wait_s: float = 0.0
    free_memory_fraction: float = 1.0
    outside_cpu_load: float = 0.0  # 0..1: share of the cores busy with work not ours
    cpu_sample: int | None = None  # id of that reading; None = a fresh one every time


class BatchController:
    MIN_CHUNK = 32

    def __init__(self, settings: SchedulerSettings, n_batch: int, window: int = 256, max_threads: int | None = None,
                 n_cores: int | None = None):
        self.settings = settings
        self.n_batch = n_batch
        # llama.cpp's threads spin at barriers: when other work holds a core, one thread
        # fewer beats a thread that keeps getting descheduled (measured here: 60 ms vs 7 s steps)
        self.max_threads = max_threads
        self.n_cores = n_cores or max_threads or 1
        self.threads = max_threads
        self._thread_votes: list[int] = []
        self._last_cpu_sample: int | None = None
        self.window = window
        self._rows: list[tuple[float, float, float]] = []  # (n_seqs, n_prompt, seconds)
        self.coef = [0.0, 0.0, 0.0]
        self.fitted = False
        self.slope_known = False
        self.decision = Decision(settings.max_batch, min(settings.prefill_chunk, n_batch), "initial")
        self._since_fit = 0

    # ---- learning ------------------------------------------------------------------------
    def observe(self, n_decode: int, n_prompt: int, seconds: float) -> None:
        self._rows.append((float(n_decode), float(n_prompt), float(seconds)))
        if len(self._rows) > self.window:
            del self._rows[: len(self._rows) - self.window]
        self._since_fit += 1
        if self._since_fit >= 8:
            self._fit()

    def _fit(self) -> None:
        self._since_fit = 0
        rows = self._rows
        seqs, prompts = [r[0] for r in rows], [r[1] for r in rows]
        spread_seqs, spread_prompts = max(seqs) - min(seqs), max(prompts) - min(prompts)
        if len(rows) < 6 or spread_seqs + spread_prompts == 0:
            return
        # least squares on [1, n_seqs, n_prompt] by the 3x3 normal equations, in plain Python:
        # numpy would be the server's only user of it (and its OpenBLAS, ~15 MB of RSS)
        xs = [(1.0, n, p) for n, p in zip(seqs, prompts)]
        lam = 1e-6 * len(rows)  # ridge keeps the fit sane when one column barely varies (no prompts yet)
        xtx = [[sum(x[i] * x[j] for x in xs) + (lam if i == j else 0.0) for j in range(3)] for i in range(3)]
        xty = [sum(x[i] * r[2] for x, r in zip(xs, rows)) for i in range(3)]
        coef = _solve3(xtx, xty)
        self.coef = [max(c, floor) for c, floor in zip(coef, (1e-4, 1e-6, 1e-7))]
        self.fitted = True
        # the per-sequence slope means something only once batch sizes have varied
        self.slope_known = spread_seqs >= 3

    def predict(self, n_decode: int, n_prompt: int) -> float:
        base, per_seq, per_tok = self.coef
        return base + per_seq * n_decode + per_tok * n_prompt

    # ---- deciding ------------------------------------------------------------------------
    def decide(self, signals: Signals) -> Decision:
        s = self.settings
        cap, chunk_cap = s.max_batch, min(s.prefill_chunk, self.n_batch)
        if not s.adaptive:
            self.decision = Decision(cap, chunk_cap, "fixed")
            return self.decision
        reasons = []
        if self.fitted:
            base, per_seq, per_tok = self.coef
            itl = s.target_itl_ms / 1000
            if not self.slope_known:
                batch = cap
            elif base + per_seq > itl:
                # even one sequence misses the target: shrinking cannot help latency, so
                # serve as many as allowed (throughput) rather than starve the queue
                batch = cap
                reasons.append("itl target unreachable: maximizing throughput")
            else:
                batch = max(1, min(cap, int((itl - base) / per_seq)))
                if batch < cap:
                    reasons.append(f"itl target caps batch at {batch}")
            # a mixed step may run longer while requests wait, up to the TTFT budget share
            budget = itl
            if signals.queue_depth and signals.oldest_wait_s > 0.25 * s.target_ttft_ms / 1000:
                budget = max(itl, 0.5 * s.target_ttft_ms / 1000)
                reasons.append("queue waiting: larger prefill")
            room = budget - base - per_seq * min(batch, max(1, signals.queue_depth + batch))
            chunk = int(room / per_tok) if room > 0 else self.MIN_CHUNK
            chunk = max(self.MIN_CHUNK, min(chunk_cap, chunk))
        else:
            batch, chunk = cap, chunk_cap
            reasons.append("learning")
        if signals.free_memory_fraction < 0.10:
            batch = max(1, batch // 2)
            reasons.append("low memory")
        if signals.outside_cpu_load > 0.5:
            # other work holds a core: big steps stall at llama.cpp's thread barrier
            chunk = max(self.MIN_CHUNK, chunk // 2)
            reasons.append("cpu busy elsewhere")
        threads = self._choose_threads(signals)
        if threads is not None and self.max_threads and threads < self.max_threads:
            reasons.append(f"{threads} of {self.max_threads} threads: cores busy elsewhere")
        self.decision = Decision(batch, chunk, "; ".join(reasons) or "within targets", threads)
        return self.decision

    def _choose_threads(self, signals: Signals) -> int | None:
        """Threads = cores not busy with outside work; changed only after 5 agreeing votes."""
        if not self.max_threads or not self.settings.adaptive:
            return self.threads
        if signals.cpu_sample is not None:
            if signals.cpu_sample == self._last_cpu_sample:
                return self.threads  # the same reading again: steps are faster than samples
            self._last_cpu_sample = signals.cpu_sample
        busy = signals.outside_cpu_load * self.n_cores
        want = max(1, min(self.max_threads, round(self.n_cores - busy)))
        self._thread_votes = (self._thread_votes + [want])[-5:]
        if len(self._thread_votes) == 5 and len(set(self._thread_votes)) == 1:
            self.threads = want
        return self.threads


def _solve3(a: list[list[float]], b: list[float]) -> list[float]:
    """Solve a 3x3 linear system (Gaussian elimination with partial pivoting)."""
    m = [row[:] + [v] for row, v in zip(a, b)]
    for col in range(3):
        pivot = max(range(col, 3), key=lambda r: abs(m[r][col]))
        m[col], m[pivot] = m[pivot], m[col]
        if m[col][col] == 0.0:
            return [0.0, 0.0, 0.0]
        for r in range(col + 1, 3):
            f = m[r][col] / m[col][col]
            m[r] = [x - f * y for x, y in zip(m[r], m[col])]
    out = [0.0, 0.0, 0.0]
    for r in (2, 1, 0):
        out[r] = (m[r][3] - sum(m[r][c] * out[c] for c in range(r + 1, 3))) / m[r][r]
    return out
