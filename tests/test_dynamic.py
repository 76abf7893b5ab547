"""The dynamic batcher on its own: grouping, per-item results and errors, bounds, delays, async."""

from __future__ import annotations

import asyncio
import itertools
import random
import threading
import time

import pytest

from liteinfer.core.errors import QueueFull
from liteinfer.scheduler.dynamic import BatcherClosed, DynamicBatcher, split_by_length


def _cost(lengths, groups, overhead):
    return sum(overhead + len(g) * max(lengths[i] for i in g) for g in groups)


def test_split_by_length_is_optimal_and_complete():
    rng = random.Random(0)
    for _ in range(30):
        lengths = [rng.choice([3, 5, 8, 40, 41, 200]) for _ in range(rng.randint(1, 7))]
        groups = split_by_length(lengths, overhead=20)
        assert sorted(i for g in groups for i in g) == list(range(len(lengths)))
        # brute force over all contiguous partitions of the sorted order
        order = sorted(range(len(lengths)), key=lambda i: lengths[i])
        best = min(
            _cost(lengths, [order[a:b] for a, b in zip((0, *cuts), (*cuts, len(order)))], 20)
            for k in range(len(order))
            for cuts in itertools.combinations(range(1, len(order)), k)
        )
        assert _cost(lengths, groups, 20) == best


def test_split_by_length_groups_short_apart_from_long():
    groups = split_by_length([5, 6, 200, 7, 190, 5], overhead=16)
    assert sorted(map(sorted, groups)) == [[0, 1, 3, 5], [2, 4]]
    assert split_by_length([]) == []


def test_results_go_back_to_their_callers_in_batches():
    sizes = []

    def run(xs):
        sizes.append(len(xs))
        time.sleep(0.005)
        return [x * 2 for x in xs]

    b = DynamicBatcher(run, max_batch=16, max_delay_ms=20)
    results = {}

    def client(k):
        for j in range(5):
            results[(k, j)] = b.run_sync(k * 100 + j, timeout=10)

    threads = [threading.Thread(target=client, args=(k,)) for k in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    b.close()
    assert results == {(k, j): 2 * (k * 100 + j) for k in range(12) for j in range(5)}
    assert max(sizes) > 1 and max(sizes) <= 16
    assert b.items == 60 and b.stats()["mean_batch"] > 1


def test_one_bad_item_does_not_fail_the_batch():
    calls = []

    def run(xs):
        calls.append(list(xs))
        if any(x < 0 for x in xs):
            raise ValueError("negative input")
        return [x + 1 for x in xs]

    b = DynamicBatcher(run, max_batch=8, max_delay_ms=50)
    futures = b.submit_many_futures([1, 2, -3, 4])
    assert [f.exception(5) is None for f in futures] == [True, True, False, True]
    assert [f.result() for i, f in enumerate(futures) if i != 2] == [2, 3, 5]
    assert isinstance(futures[2].exception(), ValueError)
    assert calls[0] == [1, 2, -3, 4]  # one batched call first, then one by one to isolate
    # a result that is an exception reaches its own caller only
    b2 = DynamicBatcher(lambda xs: [ValueError("odd") if x % 2 else x for x in xs], max_batch=8, max_delay_ms=50)
    f_even, f_odd = b2.submit_many_futures([2, 3])
    assert f_even.result(5) == 2
    with pytest.raises(ValueError, match="odd"):
        f_odd.result(5)
    b.close()
    b2.close()


def test_wrong_result_count_is_an_error_not_a_hang():
    b = DynamicBatcher(lambda xs: [], max_batch=4, max_delay_ms=0)
    with pytest.raises(RuntimeError, match="0 results for 1"):
        b.run_sync(1, timeout=5)
    b.close()


def test_queue_full_raises_with_retry_after():
    gate = threading.Event()

    def run(xs):
        gate.wait(10)
        return xs

    b = DynamicBatcher(run, max_batch=1, max_delay_ms=0, max_queue=3)
    first = b.submit_future(0)
    deadline = time.time() + 5
    while b.queue_depth and time.time() < deadline:  # the worker took item 0 and blocks in run
        time.sleep(0.001)
    held = [b.submit_future(i) for i in (1, 2, 3)]
    with pytest.raises(QueueFull) as exc:
        b.submit_future(4)
    assert exc.value.retry_after_s >= 1
    with pytest.raises(QueueFull):  # all-or-nothing for a multi-input request
        b.submit_many_futures([5, 6])
    assert b.queue_depth == 3
    gate.set()
    assert [f.result(5) for f in [first, *held]] == [0, 1, 2, 3]
    b.close()
    with pytest.raises(BatcherClosed):
        b.submit_future(9)


def test_max_delay_holds_a_lone_item_and_a_full_batch_goes_at_once():
    b = DynamicBatcher(lambda xs: xs, max_batch=4, max_delay_ms=150)
    t = time.perf_counter()
    b.run_sync(1, timeout=5)
    assert time.perf_counter() - t >= 0.14
    t = time.perf_counter()
    assert b.map([1, 2, 3, 4], timeout=5) == [1, 2, 3, 4]
    assert time.perf_counter() - t < 0.1
    b.close()


def test_close_finishes_queued_items():
    b = DynamicBatcher(lambda xs: (time.sleep(0.01), xs)[1], max_batch=2, max_delay_ms=0)
    futures = b.submit_many_futures(list(range(7)))
    b.close()
    assert [f.result(5) for f in futures] == list(range(7))


def test_async_submit_and_cancellation():
    seen = []

    def run(xs):
        seen.extend(xs)
        time.sleep(0.05)
        return [x * 3 for x in xs]

    b = DynamicBatcher(run, max_batch=1, max_delay_ms=0)

    async def main():
        results = await asyncio.gather(*(b.submit(i) for i in range(4)))
        assert results == [0, 3, 6, 9]
        assert await b.submit_many([5, 6]) == [15, 18]
        # a caller that gives up before its item runs is dropped without compute
        busy = asyncio.ensure_future(b.submit(100))
        await asyncio.sleep(0.01)
        waiting = asyncio.ensure_future(b.submit(200))
        await asyncio.sleep(0.005)
        waiting.cancel()
        assert await busy == 300
        await asyncio.sleep(0.1)

    asyncio.run(main())
    b.close()
    assert 100 in seen and 200 not in seen


def test_items_queued_by_a_worker_thread_are_awaited_with_results():
    """classify_async's path: a worker thread prepares and queues the items itself, the event
    loop only awaits the results; one failed item fails the await and drops the items not yet run."""
    seen, hold = [], threading.Event()

    def run(xs):
        if xs == [7]:
            hold.wait(5)  # still running when the failure reaches the caller
        seen.extend(xs)
        return [ValueError("bad") if x < 0 else x * 2 for x in xs]

    b = DynamicBatcher(run, max_batch=1, max_delay_ms=0)

    async def main():
        futures = await asyncio.to_thread(b.submit_many_futures, [1, 2])
        assert await b.results(futures) == [2, 4]
        futures = await asyncio.to_thread(b.submit_many_futures, [-1, 7, 8])
        with pytest.raises(ValueError, match="bad"):
            await b.results(futures)
        for _ in range(500):  # the loop passes the cancellation on to the queued item on its next turn
            if futures[2].cancelled():
                break
            await asyncio.sleep(0.01)
        assert futures[2].cancelled()
        hold.set()

    asyncio.run(main())
    b.close()
    assert seen[:3] == [1, 2, -1] and 8 not in seen  # 7 may have started before the failure came back
