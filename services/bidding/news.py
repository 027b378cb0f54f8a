"""What the bid path tells other domains as it happens: a bid made for a
known person, a win or click notice settled (journeys' bid-context triggers
listen).

The bid path cannot wait for anyone: it asks `wants(tenant, kind)` (a dict
lookup, kept current by the listeners: nothing is told a tenant with no use
for it) and `tell`s the news, which goes into a bounded queue; a task of
this process hands batches of it to the listeners. When the queue is full
(the listeners fall behind), news is dropped and counted, never waited on:
a trigger that missed a bid is a lesser harm than a slower bid."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

log = logging.getLogger(__name__)

#: The kinds of news.
BID, WIN, CLICK = "bid", "win", "click"
KINDS = (BID, WIN, CLICK)
QUEUE = 10_000
BATCH = 200


@dataclass(frozen=True, slots=True)
class BidNewsItem:
    kind: str  # bid, win, click
    tenant_id: str
    user_id: str  # as the bid request named the person (user.id, buyeruid, ifa)
    campaign_id: str
    request_id: str
    bid_id: str
    price_cpm: float  # the bid's price, the win's clearing price, 0 for a click


Listener = Callable[[Sequence[BidNewsItem]], Awaitable[None]]


class BidNews:
    def __init__(self, queue_size: int = QUEUE) -> None:
        self._wanted: dict[str, frozenset[str]] = {}
        self._listeners: list[Listener] = []
        self._queue: asyncio.Queue[BidNewsItem] | None = None
        self._queue_size = queue_size
        self._task: asyncio.Task[None] | None = None
        self.dropped = 0
        self.told = 0

    # -- listeners ---------------------------------------------------------

    def listen(self, listener: Listener) -> None:
        self._listeners.append(listener)

    def want(self, wanted: dict[str, frozenset[str]]) -> None:
        """The kinds of news each tenant has a use for (replacing all)."""
        self._wanted = {tenant: kinds for tenant, kinds in wanted.items() if kinds}

    # -- the bid path ------------------------------------------------------

    def wants(self, tenant_id: str, kind: str) -> bool:
        kinds = self._wanted.get(tenant_id)
        return kinds is not None and kind in kinds and self._queue is not None

    def tell(self, item: BidNewsItem) -> None:
        if self._queue is None:
            return
        try:
            self._queue.put_nowait(item)
        except asyncio.QueueFull:
            self.dropped += 1
            if self.dropped in (1, 100) or self.dropped % 10_000 == 0:
                log.warning("bid news: %d dropped (listeners behind)", self.dropped)

    # -- running -----------------------------------------------------------

    async def start(self) -> None:
        self._queue = asyncio.Queue(self._queue_size)
        self._task = asyncio.get_running_loop().create_task(self._run(), name="bid-news")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        self._queue = None

    async def _run(self) -> None:
        assert self._queue is not None
        queue = self._queue
        while True:
            batch = [await queue.get()]
            while len(batch) < BATCH and not queue.empty():
                batch.append(queue.get_nowait())
            self.told += len(batch)
            for listener in self._listeners:
                try:
                    await listener(batch)
                except asyncio.CancelledError:
                    raise
                except Exception:
                    log.warning("bid news: a listener failed", exc_info=True)
