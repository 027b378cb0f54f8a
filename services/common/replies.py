"""A stream's replies on their way out (StreamBids, StreamDecide): one
producer side (requests answered eagerly or by their tasks) and one
consumer (the response stream), so a deque and a single waiter do, without
asyncio.Queue's bookkeeping per reply. Iterating yields replies in the
order they were put until a None; replies that gathered while the consumer
was writing go out without another wait."""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncIterator
from typing import Generic, TypeVar

T = TypeVar("T")


class Replies(Generic[T]):
    __slots__ = ("_loop", "_replies", "_waiter")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._replies: deque[T | None] = deque()
        self._waiter: asyncio.Future[None] | None = None

    def put(self, reply: T | None) -> None:
        """Queue a reply (None: the stream is done)."""
        self._replies.append(reply)
        waiter = self._waiter
        if waiter is not None:
            self._waiter = None
            if not waiter.done():
                waiter.set_result(None)

    async def __aiter__(self) -> AsyncIterator[T]:
        replies = self._replies
        while True:
            if not replies:
                waiter = self._waiter = self._loop.create_future()
                await waiter
                continue
            reply = replies.popleft()
            if reply is None:
                return
            yield reply
