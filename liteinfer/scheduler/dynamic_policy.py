"""The adaptive policy for the dynamic batcher: max_batch and max_delay from measurements.

Every `update_every` batches it reads the last `window` BatchRecords and:
- fits the batch cost model run_s = a + b * n (least squares over the sizes seen), for the
  latency bound and the fixed cost of a call `a`;
- max_batch, while the limit binds (batches leave full, items still waiting): throughput
  decides. Per-item time is measured per batch size on a ladder (1, 2, 4, ... cap) and the
  limit goes to the size with the best measured items/s (the largest within 3% of it: only the
  model call is timed, and a bigger batch also spreads the per-batch serving work). Real
  costs are not linear: past some size activations leave the cache and per-item time rises
  again, so this is measured, not derived from the fit. The neighbours (n/2, 2n) are tried
  for one window when unknown and every `explore_every` updates, so the table follows load;
- max_batch, while it does not bind: the latency bound, the largest n whose predicted p95
  fits the target (an item waits for at most the batch in flight and then its own, so
  p95 ~ 2 (a + b n) + delay, kept under margin * target_p95, with a smaller margin when
  the CPU is saturated: latency then varies more), but never under the items waiting, since
  splitting a waiting burst only makes its last items wait longer;
- max_delay, the ski-rental rule: waiting for one more item is worth at most what it saves,
  one model call's fixed cost `a`. So a held batch closes when no item came for
  hold_gap = a, and holds at most max_delay = 8 a (capped at target/4). When holding gains
  >= 1 item per batch it stays on; when it gains less, the delay halves (to 0 below 0.25);
  when the measured p95 is over the target, no holding at all. At 0 it probes
  (two held batches) every `probe_every` updates, to notice load coming back.
The controller has no clock and no threads: the batcher calls observe() from its worker,
and tests drive it with synthetic timings.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable

import psutil

from liteinfer.core.config import OneShotSettings
from liteinfer.scheduler.dynamic import BatchRecord

MIN_DELAY_S = 5e-5  # below this a delay is noise: use 0


def cpu_busy_fraction() -> float:
    """Share of all CPUs busy since the last call (psutil), 0..1; 0 when unknown."""
    try:
        return psutil.cpu_percent(interval=None) / 100.0
    except Exception:
        return 0.0


class OneShotController:
    def __init__(
        self,
        target_p95_ms: float = 200.0,
        max_batch_cap: int = 32,
        initial_delay_ms: float = 2.0,
        window: int = 64,
        update_every: int = 4,
        probe_every: int = 32,
        explore_every: int = 8,
        cpu_load: Callable[[], float] | None = cpu_busy_fraction,
    ):
        self.target_s = target_p95_ms / 1000
        self.cap = max(1, int(max_batch_cap))
        self.max_batch = self.cap
        self.max_delay_s = min(initial_delay_ms / 1000, self.delay_cap_s)
        self.hold_gap_s: float | None = None  # set once there are measurements
        self.update_every = update_every
        self.probe_every = probe_every
        self.cpu_load = cpu_load
        self.records: deque[BatchRecord] = deque(maxlen=window)
        self.a: float | None = None  # fixed cost of a model call, s
        self.b: float | None = None  # cost per item, s
        self.p95_s = 0.0
        self.load = 0.0
        self.observed = 0
        self.updates = 0
        self._since_probe = 0
        self._probe_left = 0
        self._probe_gain = 0
        self.explore_every = explore_every
        self._since_explore = 0
        self._explore_up = False
        self.ladder = sorted({min(self.cap, 1 << k) for k in range(self.cap.bit_length() + 1)})
        self.per_item: dict[int, float] = {}  # ladder size -> seconds per item (low quartile)
        self._times: dict[int, deque[float]] = {}
        self.samples: dict[int, int] = {}
        self.tried: dict[int, int] = {}  # exploration windows spent per ladder size

    @classmethod
    def from_settings(cls, s: OneShotSettings, **kw) -> OneShotController:
        return cls(target_p95_ms=s.target_p95_ms, max_batch_cap=s.max_batch, initial_delay_ms=s.max_delay_ms, **kw)

    @property
    def delay_cap_s(self) -> float:
        return self.target_s / 4

    def observe(self, rec: BatchRecord) -> None:
        self.records.append(rec)
        self.observed += 1
        if rec.size in self.ladder:
            # lower quartile of the last 8: being descheduled by other work only ever adds time,
            # so the low end is the batch's own cost (an average would chase the neighbours' load)
            times = self._times.setdefault(rec.size, deque(maxlen=8))
            times.append(rec.run_s / rec.size)
            self.per_item[rec.size] = sorted(times)[len(times) // 4]
            self.samples[rec.size] = self.samples.get(rec.size, 0) + 1
        if self._probe_left and rec.waited_s > 0:  # a probe decides after a couple of held batches
            self._probe_left -= 1
            self._probe_gain += rec.gained
            if not self._probe_left and self._probe_gain < 0.5:
                self.max_delay_s = 0.0
        if self.observed % self.update_every == 0:
            self.update()

    def fit(self) -> tuple[float, float] | None:
        """(a, b) of run_s = a + b * n over the window; None until two batch sizes were seen."""
        n = [r.size for r in self.records]
        t = [r.run_s for r in self.records]
        if len(set(n)) < 2:
            return None
        mn, mt = sum(n) / len(n), sum(t) / len(t)
        var = sum((x - mn) ** 2 for x in n)
        b = sum((x - mn) * (y - mt) for x, y in zip(n, t)) / var
        b = max(b, 1e-7)
        a = max(mt - b * mn, 0.0)
        return a, b

    def update(self) -> None:
        self.updates += 1
        recent = list(self.records)[-self.update_every :]
        lat = sorted(x for r in self.records for x in r.latencies_s)
        self.p95_s = lat[min(len(lat) - 1, int(0.95 * len(lat)))] if lat else 0.0
        self.load = self.cpu_load() if self.cpu_load else 0.0
        fitted = self.fit()
        if fitted is not None:
            self.a, self.b = fitted
        self._update_batch(recent)
        self._update_delay(recent)

    def best_size(self) -> int | None:
        """The ladder size with the best measured items/s (the largest within 3%), once known."""
        known = {n: t for n, t in self.per_item.items() if self.samples[n] >= 3 and n <= self.cap}
        if not known:
            return None
        best = min(known.values())
        return max(n for n, t in known.items() if t <= 1.03 * best)

    def _update_batch(self, recent: list[BatchRecord]) -> None:
        if not recent:
            return
        demand = max(r.size + r.queued for r in recent)  # most items waiting at a batch start
        if sum(r.size >= self.max_batch for r in recent) >= len(recent) / 2:
            self.max_batch = self._throughput_size()
            return
        if self.b is not None:
            a, b = self.a or 0.0, self.b
        else:  # one batch size seen so far: all time per item (a = 0) over-estimates b, safely
            a, b = 0.0, max(sum(r.run_s / r.size for r in recent) / len(recent), 1e-7)
        margin = 0.8 if self.load < 0.9 else 0.6
        n_latency = int(((margin * self.target_s - self.max_delay_s) / 2 - a) / b)
        self.max_batch = max(1, min(self.cap, max(n_latency, demand)))

    def _throughput_size(self) -> int:
        """Limit while it binds: the best measured size, or a neighbour to measure."""
        here = max(n for n in self.ladder if n <= self.max_batch)
        best = self.best_size() or here
        i = self.ladder.index(best)
        down = self.ladder[i - 1] if i > 0 else None
        up = self.ladder[i + 1] if i + 1 < len(self.ladder) else None
        # unknown: not measured yet, and not tried twice in vain (a limit batches never fill)
        unknown = [n for n in (down, up) if n is not None and self.samples.get(n, 0) < 3
                   and self.tried.get(n, 0) < 2]
        self._since_explore += 1
        if unknown:
            self.tried[unknown[-1]] = self.tried.get(unknown[-1], 0) + 1
            return unknown[-1]  # bigger first: it is the one that can raise throughput
        if self._since_explore >= self.explore_every and (down or up):
            self._since_explore = 0
            self._explore_up = not self._explore_up
            return (up if self._explore_up else down) or down or up
        return best

    def _overhead_s(self) -> float:
        """The fixed cost of one call; before a fit, the cheapest per-item time seen (an upper bound)."""
        if self.a is not None:
            return self.a
        return min(r.run_s / r.size for r in self.records) if self.records else 1e-3

    def _update_delay(self, recent: list[BatchRecord]) -> None:
        waits = [r for r in recent if r.waited_s > 0]
        self.hold_gap_s = min(self._overhead_s(), self.delay_cap_s)
        hold = min(8 * self.hold_gap_s, self.delay_cap_s)
        if self.p95_s > self.target_s:  # over the target already: holding only adds to it
            self.max_delay_s = 0.0
        elif waits:
            gain = sum(r.gained for r in waits) / len(waits)
            if gain >= 1.0:
                self.max_delay_s = hold
            elif gain < 0.25:  # holding gained (almost) nothing: stop holding
                self.max_delay_s = 0.0
            else:
                self.max_delay_s /= 2
                if self.max_delay_s < MIN_DELAY_S:
                    self.max_delay_s = 0.0
        elif self.max_delay_s == 0.0:
            self._since_probe += 1
            if self._since_probe >= self.probe_every:
                self._since_probe, self._probe_left, self._probe_gain = 0, 2, 0
                self.max_delay_s = hold
        # else: batches filled (or the queue was backlogged) without waiting: nothing to learn

    def snapshot(self) -> dict:
        rate = None
        if self.b is not None:
            rate = self.max_batch / ((self.a or 0.0) + self.b * self.max_batch)
        return {
            "max_batch": self.max_batch,
            "max_delay_ms": round(self.max_delay_s * 1000, 3),
            "hold_gap_ms": None if self.hold_gap_s is None else round(self.hold_gap_s * 1000, 3),
            "a_ms": None if self.a is None else round(self.a * 1000, 3),
            "b_ms": None if self.b is None else round(self.b * 1000, 3),
            "predicted_items_per_s": rate,
            "p95_ms": round(self.p95_s * 1000, 2),
            "cpu_load": round(self.load, 2),
            "ms_per_item": {n: round(t * 1000, 3) for n, t in sorted(self.per_item.items())},
        }
