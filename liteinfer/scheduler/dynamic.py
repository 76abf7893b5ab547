"""Dynamic request batching for one-shot models (embeddings, classifiers).

    batcher = DynamicBatcher(run, max_batch=32, max_delay_ms=2, length=len)
    vec = await batcher.submit(item)           # from the server's event loop
    vecs = batcher.map(items)                  # from a CLI or a benchmark thread

`run(items) -> results` is one batched model call over prepared items (token ids, image
tensors); it runs in the batcher's worker thread (ONNX Runtime releases the GIL, so the event
loop keeps serving while it computes). A batch closes when it holds `max_batch` items or its
oldest item has waited `max_delay` (or, with a controller, when arrivals pause for its
`hold_gap_s`); texts are then split into length groups so short inputs
are not padded to the longest (`split_by_length`). Results go back per item; an exception
from one item (or a result that is an exception) reaches that item's caller only.
The queue is bounded: `QueueFull` carries a Retry-After estimate for the server's 429.
With a `controller` (scheduler/dynamic_policy.py) max_batch and max_delay follow it.
"""

from __future__ import annotations

import asyncio
import math
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

from liteinfer.core.errors import LiteInferError, QueueFull

CALL_OVERHEAD_TOKENS = 64  # a model call costs about as much as this many padded tokens


class BatcherClosed(LiteInferError):
    """The batcher was shut down before the item ran."""


@dataclass
class BatchRecord:
    """What one batch did: the controller's only input from the batcher."""

    size: int  # items run
    run_s: float  # model time for the whole batch (all length groups)
    waited_s: float  # how long the worker held the batch open for more items
    gained: int  # items that arrived during that wait
    queued: int  # items left in the queue when the batch started
    latencies_s: Sequence[float]  # per item, submit -> result
    groups: int = 1


@dataclass
class _Pending:
    item: Any
    future: Future
    length: int
    t_submit: float = field(default_factory=time.perf_counter)


def split_by_length(lengths: Sequence[int], overhead: int = CALL_OVERHEAD_TOKENS) -> list[list[int]]:
    """Partition item indices into calls that minimize padded tokens + per-call overhead.

    Sorted by length, the best partition is contiguous, so a DP over the sorted order is exact:
    cost(group) = overhead + len(group) * longest(group).
    """
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    n = len(order)
    if n <= 1:
        return [order] if n else []
    best = [0.0] + [math.inf] * n  # best[j]: cost of the first j sorted items
    cut = [0] * (n + 1)
    for j in range(1, n + 1):
        longest = lengths[order[j - 1]]
        for i in range(j):  # group = sorted items i..j-1
            c = best[i] + overhead + (j - i) * longest
            if c < best[j]:
                best[j], cut[j] = c, i
    groups, j = [], n
    while j > 0:
        groups.append(order[cut[j] : j])
        j = cut[j]
    return groups[::-1]


class DynamicBatcher:
    """A bounded queue and one worker thread that runs items in batches."""

    def __init__(
        self,
        run: Callable[[list[Any]], Sequence[Any]],
        *,
        max_batch: int = 32,
        max_delay_ms: float = 5.0,
        max_queue: int = 1024,
        length: Callable[[Any], int] | None = None,
        controller=None,
        on_batch: Callable[[BatchRecord], None] | None = None,
        name: str = "oneshot",
    ):
        self._run = run
        self._fixed_batch = max(1, int(max_batch))
        self._fixed_delay_s = max(0.0, max_delay_ms) / 1000
        self.max_queue = max_queue
        self._length = length
        self.controller = controller
        self.on_batch = on_batch  # e.g. Prometheus histograms; called on the worker thread
        self.name = name
        self._queue: deque[_Pending] = deque()
        self._cv = threading.Condition()
        self._closed = False
        # counters for /metrics and the benchmark (written by the worker only)
        self.batches = 0
        self.items = 0
        self.busy_s = 0.0
        self.latencies_s: deque[float] = deque(maxlen=2048)
        self._thread = threading.Thread(target=self._loop, name=f"batcher-{name}", daemon=True)
        self._thread.start()

    # ---------------------------------------------------------------- limits

    @property
    def max_batch(self) -> int:
        return self.controller.max_batch if self.controller is not None else self._fixed_batch

    @property
    def max_delay_s(self) -> float:
        return self.controller.max_delay_s if self.controller is not None else self._fixed_delay_s

    @property
    def hold_gap_s(self) -> float | None:
        """Close a held batch early when no item arrived for this long (None: hold to max_delay)."""
        return getattr(self.controller, "hold_gap_s", None)

    @property
    def queue_depth(self) -> int:
        return len(self._queue)

    # ---------------------------------------------------------------- submit

    def submit_future(self, item: Any) -> Future:
        return self.submit_many_futures([item])[0]

    def submit_many_futures(self, items: Sequence[Any]) -> list[Future]:
        """Queue all items or none (QueueFull); one Future per item."""
        pending = [_Pending(it, Future(), self._length(it) if self._length else 0) for it in items]
        with self._cv:
            if self._closed:
                raise BatcherClosed(f"{self.name}: batcher is shut down")
            if len(self._queue) + len(pending) > self.max_queue:
                raise QueueFull(
                    f"{self.name}: queue full ({len(self._queue)} waiting, limit {self.max_queue})",
                    self.retry_after_s(len(pending)),
                )
            self._queue.extend(pending)
            self._cv.notify()
        return [p.future for p in pending]

    async def submit(self, item: Any) -> Any:
        """Result for one item; awaiting does not block the event loop."""
        return await asyncio.wrap_future(self.submit_future(item))

    async def submit_many(self, items: Sequence[Any]) -> list[Any]:
        return await self.results(self.submit_many_futures(items))

    @staticmethod
    async def results(futures: Sequence[Future]) -> list[Any]:
        """Await the results of queued items (submit_many_futures, called here or by a worker
        thread that prepared the items: one thread hop less); when the caller goes away or one
        item fails, the rest are dropped."""
        wrapped = [asyncio.wrap_future(f) for f in futures]
        try:
            return list(await asyncio.gather(*wrapped))
        except BaseException:
            for f in wrapped:  # the caller is gone or one item failed: drop the rest
                f.cancel()
            raise

    def run_sync(self, item: Any, timeout: float | None = None) -> Any:
        return self.submit_future(item).result(timeout)

    def map(self, items: Sequence[Any], timeout: float | None = None) -> list[Any]:
        return [f.result(timeout) for f in self.submit_many_futures(items)]

    def retry_after_s(self, extra: int = 1) -> float:
        """Seconds to drain the queue at the rate seen so far (whole seconds, at least 1)."""
        rate = self.items / self.busy_s if self.busy_s > 0 else 0.0
        if rate <= 0:
            return 1.0
        return float(max(1, math.ceil((len(self._queue) + extra) / rate)))

    def close(self, timeout: float = 5.0) -> None:
        """Stop taking items, finish the queued ones, stop the worker."""
        with self._cv:
            self._closed = True
            self._cv.notify_all()
        self._thread.join(timeout)

    def stats(self) -> dict:
        with self._cv:  # the worker updates these under the same lock
            lat = sorted(self.latencies_s)
            out = {
                "queue_depth": len(self._queue),
                "max_batch": self.max_batch,
                "max_delay_ms": round(self.max_delay_s * 1000, 3),
                "batches": self.batches,
                "items": self.items,
                "mean_batch": self.items / self.batches if self.batches else 0.0,
                "p50_ms": _quantile(lat, 0.50) * 1000,
                "p95_ms": _quantile(lat, 0.95) * 1000,
            }
            if self.controller is not None:
                out["controller"] = self.controller.snapshot()
        return out

    # ---------------------------------------------------------------- worker

    def _take(self) -> tuple[list[_Pending], float, int, int] | None:
        """Block until a batch is ready: full, or its oldest item waited max_delay."""
        with self._cv:
            while not self._queue and not self._closed:
                self._cv.wait()
            if not self._queue:
                return None
            max_batch, delay, gap = self.max_batch, self.max_delay_s, self.hold_gap_s
            before = len(self._queue)
            deadline = self._queue[0].t_submit + delay
            t_wait, waited = time.perf_counter(), 0.0
            while len(self._queue) < max_batch and not self._closed:
                close_at = deadline if gap is None else min(deadline, self._queue[-1].t_submit + gap)
                left = close_at - time.perf_counter()
                if left <= 0:
                    break
                self._cv.wait(left)
                waited = time.perf_counter() - t_wait
            gained = len(self._queue) - before
            batch = [self._queue.popleft() for _ in range(min(max_batch, len(self._queue)))]
            queued = len(self._queue)
        # a caller that went away (cancelled future) is dropped here, before any compute
        return [p for p in batch if p.future.set_running_or_notify_cancel()], waited, gained, queued

    def _loop(self) -> None:
        while True:
            taken = self._take()
            if taken is None:
                break
            batch, waited, gained, queued = taken
            if batch:
                self._run_batch(batch, waited, gained, queued)
        # closed with nothing left to take: fail anything that raced in
        with self._cv:
            for p in self._queue:
                if p.future.set_running_or_notify_cancel():
                    p.future.set_exception(BatcherClosed(f"{self.name}: batcher is shut down"))
            self._queue.clear()

    def _run_batch(self, batch: list[_Pending], waited: float, gained: int, queued: int) -> None:
        if self._length is not None:
            groups = split_by_length([p.length for p in batch])
        else:
            groups = [list(range(len(batch)))]
        t0 = time.perf_counter()
        for g in groups:
            self._run_group([batch[i] for i in g])
        t1 = time.perf_counter()
        lat = [t1 - p.t_submit for p in batch]
        rec = BatchRecord(len(batch), t1 - t0, waited, gained, queued, lat, len(groups))
        with self._cv:  # stats() reads these from other threads
            self.batches += 1
            self.items += len(batch)
            self.busy_s += t1 - t0
            self.latencies_s.extend(lat)
            if self.controller is not None:
                self.controller.observe(rec)
        if self.on_batch is not None:
            try:
                self.on_batch(rec)
            except Exception:  # metrics must never stop the worker
                pass

    def _run_group(self, group: list[_Pending]) -> None:
        try:
            outs = self._run([p.item for p in group])
            if len(outs) != len(group):
                raise RuntimeError(f"model returned {len(outs)} results for {len(group)} items")
        except Exception as e:
            if len(group) == 1:
                group[0].future.set_exception(e)
                return
            # one bad item must not fail the others: run them one by one to find it
            for p in group:
                self._run_group([p])
            return
        for p, out in zip(group, outs):
            if isinstance(out, BaseException):
                p.future.set_exception(out)
            else:
                p.future.set_result(out)


def _quantile(sorted_values: Sequence[float], q: float) -> float:
    if not sorted_values:
        return 0.0
    return sorted_values[min(len(sorted_values) - 1, int(q * len(sorted_values)))]
