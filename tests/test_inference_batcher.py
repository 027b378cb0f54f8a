"""InferenceBatcher with a hand-driven clock: when batches leave, what is in
them, and that results and failures reach exactly their own callers."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field

import pytest

from inference.batcher import BatcherClosed, InferenceBatcher


@dataclass
class _Timer:
    when: float
    callback: Callable[[], None]
    cancelled: bool = False

    def cancel(self) -> None:
        self.cancelled = True


@dataclass
class FakeClock:
    """Time moves only when the test says so."""

    t: float = 0.0
    timers: list[_Timer] = field(default_factory=list)

    def now(self) -> float:
        return self.t

    def call_later(self, delay: float, callback: Callable[[], None]) -> _Timer:
        timer = _Timer(self.t + delay, callback)
        self.timers.append(timer)
        return timer

    def advance(self, seconds: float) -> None:
        self.t += seconds
        due = [t for t in self.timers if not t.cancelled and t.when <= self.t + 1e-12]
        self.timers = [t for t in self.timers if t not in due]
        for timer in due:
            timer.callback()

    @property
    def armed(self) -> list[_Timer]:
        return [t for t in self.timers if not t.cancelled]


class Provider:
    """run_batch whose batches the test completes (or fails) by hand."""

    def __init__(self) -> None:
        self.batches: list[list[int]] = []
        self.gates: list[asyncio.Future[None]] = []

    async def run(self, items: list[int]) -> list[str]:
        self.batches.append(list(items))
        gate: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.gates.append(gate)
        await gate
        if any(i < 0 for i in items):
            raise ValueError(f"bad batch {items}")
        return [f"result-{i}" for i in items]

    def finish(self, index: int) -> None:
        self.gates[index].set_result(None)


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


async def test_a_lone_request_is_sent_at_once_without_the_timer() -> None:
    clock, provider = FakeClock(), Provider()
    batcher = InferenceBatcher(provider.run, clock=clock)
    future = batcher.enqueue(1)
    await settle()
    assert provider.batches == [[1]]  # no time passed
    assert clock.armed == []
    provider.finish(0)
    assert await future == "result-1"


async def test_requests_arriving_while_busy_batch_up_and_go_when_it_is_idle() -> None:
    clock, provider = FakeClock(), Provider()
    sizes: list[int] = []
    batcher = InferenceBatcher(provider.run, clock=clock, on_flush=sizes.append)
    first = batcher.enqueue(0)
    await settle()
    rest = [batcher.enqueue(i) for i in range(1, 6)]
    await settle()
    assert batcher.queue_depth == 5 and batcher.in_flight == 1
    clock.advance(0.01)  # the timer cannot send them: no free slot
    await settle()
    assert provider.batches == [[0]]
    provider.finish(0)
    await settle()
    assert provider.batches == [[0], [1, 2, 3, 4, 5]]  # idle again: sent at once
    provider.finish(1)
    assert await first == "result-0"
    assert await asyncio.gather(*rest) == [f"result-{i}" for i in range(1, 6)]
    assert sizes == [1, 5]


async def test_with_a_free_slot_a_batch_leaves_after_500us() -> None:
    clock, provider = FakeClock(), Provider()
    batcher = InferenceBatcher(provider.run, clock=clock, concurrency=2)
    batcher.enqueue(0)
    await settle()
    pending = [batcher.enqueue(i) for i in range(1, 4)]
    await settle()
    assert provider.batches == [[0]]  # busy (one in flight): wait for more
    clock.advance(0.000499)
    await settle()
    assert provider.batches == [[0]]
    clock.advance(0.000001)
    await settle()
    assert provider.batches == [[0], [1, 2, 3]]
    provider.finish(1)
    assert await asyncio.gather(*pending) == ["result-1", "result-2", "result-3"]
    provider.finish(0)
    await settle()


async def test_with_a_free_slot_16_items_leave_without_waiting() -> None:
    clock, provider = FakeClock(), Provider()
    batcher = InferenceBatcher(provider.run, clock=clock, concurrency=2)
    batcher.enqueue(100)
    await settle()
    futures = [batcher.enqueue(i) for i in range(20)]
    await settle()
    assert provider.batches[1] == list(range(16))  # at 16 items, at once
    assert batcher.queue_depth == 4
    provider.finish(0)  # a slot is free but a batch is in flight: wait 500 us
    await settle()
    assert len(provider.batches) == 2
    clock.advance(0.0005)
    await settle()
    assert provider.batches[2] == [16, 17, 18, 19]
    provider.finish(1)
    provider.finish(2)
    assert await asyncio.gather(*futures) == [f"result-{i}" for i in range(20)]


async def test_a_failed_batch_fails_only_its_own_callers() -> None:
    clock, provider = FakeClock(), Provider()
    batcher = InferenceBatcher(provider.run, clock=clock, max_items=2, concurrency=3)
    good_first = batcher.enqueue(1)
    await settle()
    bad = [batcher.enqueue(-1), batcher.enqueue(2)]  # batch 2 holds the bad item
    good = [batcher.enqueue(3), batcher.enqueue(4)]
    await settle()
    assert provider.batches == [[1], [-1, 2], [3, 4]]
    for i in (2, 0, 1):  # complete out of order
        provider.finish(i)
    await settle()
    assert await good_first == "result-1"
    assert await asyncio.gather(*good) == ["result-3", "result-4"]
    for future in bad:
        with pytest.raises(ValueError, match="bad batch"):
            await future


async def test_results_never_mix_between_concurrent_callers() -> None:
    async def echo(items: list[int]) -> list[int]:
        await asyncio.sleep(0.0001 * (items[0] % 3))  # batches finish out of order
        return [i * 10 for i in items]

    batcher = InferenceBatcher(echo, concurrency=3, max_items=7)

    async def caller(i: int) -> tuple[int, int]:
        await asyncio.sleep(0.00005 * (i % 5))
        return i, await batcher.submit(i)

    results = await asyncio.gather(*(caller(i) for i in range(300)))
    assert all(result == i * 10 for i, result in results)


async def test_a_wrong_result_count_fails_the_batch_instead_of_shifting_results() -> None:
    async def short(items: list[int]) -> list[int]:
        return items[:-1]

    batcher = InferenceBatcher(short)
    with pytest.raises(RuntimeError, match="returned 0 results for 1"):
        await batcher.submit(1)


async def test_cancelled_callers_are_dropped_from_their_batch() -> None:
    clock, provider = FakeClock(), Provider()
    batcher = InferenceBatcher(provider.run, clock=clock)
    batcher.enqueue(0)
    await settle()
    gone, kept = batcher.enqueue(1), batcher.enqueue(2)
    gone.cancel()
    provider.finish(0)
    await settle()
    assert provider.batches[1] == [2]
    provider.finish(1)
    assert await kept == "result-2"


async def test_close_sends_what_is_pending_then_refuses_more() -> None:
    calls: list[list[int]] = []

    async def run(items: list[int]) -> list[int]:
        calls.append(items)
        await asyncio.sleep(0.001)
        return items

    batcher = InferenceBatcher(run)
    futures = [batcher.enqueue(i) for i in range(5)]
    await batcher.close()
    assert [f.result() for f in futures] == list(range(5))
    assert sum(len(c) for c in calls) == 5
    with pytest.raises(BatcherClosed):
        batcher.enqueue(9)


async def test_items_queued_together_leave_together() -> None:
    clock, provider = FakeClock(), Provider()
    batcher = InferenceBatcher(provider.run, clock=clock, max_items=4)
    futures = batcher.enqueue_many([1, 2, 3, 4, 5, 6])
    await settle()
    assert provider.batches == [[1, 2, 3, 4]]  # idle: the first full batch at once
    provider.finish(0)
    await settle()
    assert provider.batches[1] == [5, 6]
    provider.finish(1)
    assert await asyncio.gather(*futures) == [f"result-{i}" for i in range(1, 7)]


async def test_submit_on_an_idle_batcher_runs_a_synchronous_batch_on_the_spot() -> None:
    """With `run_now`, an idle batcher's lone item is run in the caller's turn
    (a batch of one, counted as such); an item arriving while a batch is out
    queues as usual."""
    clock, provider = FakeClock(), Provider()
    sizes: list[int] = []
    ran_now: list[list[int]] = []

    def run_now(items: list[int]) -> list[str]:
        ran_now.append(list(items))
        return [f"now-{i}" for i in items]

    batcher = InferenceBatcher(provider.run, clock=clock, on_flush=sizes.append, run_now=run_now)
    assert await batcher.submit(1) == "now-1"
    assert ran_now == [[1]] and provider.batches == [] and sizes == [1]

    first = batcher.enqueue(2)  # a batch goes out through run_batch
    await settle()
    second = asyncio.ensure_future(batcher.submit(3))  # busy: queued, not run now
    await settle()
    assert ran_now == [[1]] and batcher.queue_depth == 1
    provider.finish(0)
    await settle()
    provider.finish(1)
    assert (await first, await second) == ("result-2", "result-3")
    assert provider.batches == [[2], [3]]
