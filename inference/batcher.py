"""InferenceBatcher: Nagle-style batching of scoring requests (FR-INF-007).

Callers `submit` one item each and await its own result. Items are sent to
the provider in batches:

- when the provider is idle (nothing in flight), pending items go at once, so
  a lone request never waits for the timer ("at once" = at the end of the
  current turn of the event loop: items submitted in the same turn, e.g.
  several streams' messages read together, travel together);
- while the provider is busy but has a free slot (`concurrency` > 1),
  a batch leaves when it reaches `max_items` (16) or when its first item has
  waited `max_wait` (500 us);
- with no free slot, items wait (and batch up) until a batch completes.

Each item's future receives exactly its own result: results are matched to
items by position and a batch whose result count differs fails as a whole.
A batch that raises fails only its own callers. Time comes from a `Clock`,
so tests drive the timer by hand.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Generic, Protocol, TypeVar

__all__ = ["BatcherClosed", "Clock", "InferenceBatcher", "LoopClock"]

Item = TypeVar("Item")
Result = TypeVar("Result")


class BatcherClosed(RuntimeError):
    """submit() after close()."""


class TimerHandle(Protocol):
    def cancel(self) -> None: ...


class Clock(Protocol):
    def now(self) -> float: ...

    def call_later(self, delay: float, callback: Callable[[], None]) -> TimerHandle: ...


class LoopClock:
    """The running event loop's clock and timers."""

    def now(self) -> float:
        return asyncio.get_running_loop().time()

    def call_later(self, delay: float, callback: Callable[[], None]) -> TimerHandle:
        return asyncio.get_running_loop().call_later(delay, callback)


class InferenceBatcher(Generic[Item, Result]):
    def __init__(
        self,
        run_batch: Callable[[list[Item]], Awaitable[list[Result]]],
        *,
        max_items: int = 16,
        max_wait: float = 0.0005,
        concurrency: int = 1,
        clock: Clock | None = None,
        on_flush: Callable[[int], None] | None = None,
        run_now: Callable[[list[Item]], list[Result]] | None = None,
    ) -> None:
        if max_items < 1 or max_wait < 0 or concurrency < 1:
            raise ValueError("max_items and concurrency must be >= 1, max_wait >= 0")
        self._run_batch = run_batch
        self.max_items = max_items
        self.max_wait = max_wait
        self.concurrency = concurrency
        self._clock = clock or LoopClock()
        self._on_flush = on_flush
        # A synchronous run_batch (the provider answers on this thread): with
        # it, `submit` on an idle batcher runs the batch of one at once
        # instead of scheduling it through the event loop.
        self._run_now = run_now
        self._pending: list[tuple[Item, asyncio.Future[Result], float]] = []  # + arrival time
        self._timer: TimerHandle | None = None
        self._due = False  # the timer fired while no slot was free
        self._tasks: set[asyncio.Task[None]] = set()
        self._kicked = False  # a dispatch is scheduled for the end of this turn
        self._closed = False

    @property
    def queue_depth(self) -> int:
        """Items waiting for a batch (not yet sent to the provider)."""
        return len(self._pending)

    @property
    def idle(self) -> bool:
        """Open, nothing waiting and no batch out: a new item would leave at once."""
        return not (self._closed or self._pending or self._tasks)

    @property
    def in_flight(self) -> int:
        """Batches sent to the provider and not yet answered."""
        return len(self._tasks)

    def enqueue(self, item: Item) -> asyncio.Future[Result]:
        """Queue `item`; the future resolves to its own result. Cancelling the
        future withdraws the item if its batch has not left yet."""
        if self._closed:
            raise BatcherClosed("the inference batcher is closed")
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Result] = loop.create_future()
        self._pending.append((item, future, self._clock.now()))
        self._kick(loop)
        return future

    def enqueue_many(self, items: list[Item]) -> list[asyncio.Future[Result]]:
        """Queue several items at once: they leave together (up to max_items
        per batch) rather than the first alone."""
        if self._closed:
            raise BatcherClosed("the inference batcher is closed")
        loop, now = asyncio.get_running_loop(), self._clock.now()
        futures: list[asyncio.Future[Result]] = [loop.create_future() for _ in items]
        self._pending.extend((item, f, now) for item, f in zip(items, futures, strict=True))
        self._kick(loop)
        return futures

    async def submit(self, item: Item) -> Result:
        """One item's result. Idle, with `run_now`, the item is the batch
        that would leave at once anyway, run on the spot."""
        if self._run_now is not None and self.idle:
            if self._on_flush is not None:
                self._on_flush(1)
            return self._run_now([item])[0]
        return await self.enqueue(item)

    def _kick(self, loop: asyncio.AbstractEventLoop) -> None:
        if not self._kicked:
            self._kicked = True
            loop.call_soon(self._kicked_dispatch)

    def _kicked_dispatch(self) -> None:
        self._kicked = False
        self._dispatch()

    def _dispatch(self) -> None:
        while self._pending and len(self._tasks) < self.concurrency:
            idle = not self._tasks
            full = len(self._pending) >= self.max_items
            waited = self._clock.now() - self._pending[0][2] >= self.max_wait
            if not (idle or full or waited or self._due):
                self._arm_timer()
                return
            self._launch()
        if not self._pending:
            self._cancel_timer()

    def _launch(self) -> None:
        batch, self._pending = self._pending[: self.max_items], self._pending[self.max_items :]
        self._due = False
        self._cancel_timer()
        live = [(item, fut) for item, fut, _ in batch if not fut.done()]  # skip cancelled callers
        if not live:
            return
        if self._on_flush is not None:
            self._on_flush(len(live))
        task = asyncio.get_running_loop().create_task(self._run(live))
        self._tasks.add(task)

    async def _run(self, batch: list[tuple[Item, asyncio.Future[Result]]]) -> None:
        try:
            try:
                results = await self._run_batch([item for item, _ in batch])
                if len(results) != len(batch):
                    raise RuntimeError(
                        f"provider returned {len(results)} results for {len(batch)} requests"
                    )
            except BaseException as exc:  # fails this batch's callers only
                error = exc if isinstance(exc, Exception) else BatcherClosed("batch cancelled")
                for _, future in batch:
                    if not future.done():
                        future.set_exception(error)
                if not isinstance(exc, Exception):
                    raise
                return
            for (_, future), result in zip(batch, results, strict=True):
                if not future.done():
                    future.set_result(result)
        finally:
            try:
                task = asyncio.current_task()
            except RuntimeError:  # the loop is gone (closed with this batch pending)
                task = None
            if task is not None:
                self._tasks.discard(task)
                self._dispatch()

    def _arm_timer(self) -> None:
        if self._timer is None:
            delay = max(0.0, self._pending[0][2] + self.max_wait - self._clock.now())
            self._timer = self._clock.call_later(delay, self._timer_fired)

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _timer_fired(self) -> None:
        self._timer = None
        if self._pending:
            self._due = True
            self._dispatch()

    async def drain(self) -> None:
        """Send what is pending now and wait until every batch has answered."""
        while self._pending or self._tasks:
            self._due = True
            self._dispatch()
            if self._tasks:
                await asyncio.wait(set(self._tasks))

    async def close(self) -> None:
        """Stop taking items; send what is pending and wait for every batch."""
        self._closed = True
        await self.drain()
