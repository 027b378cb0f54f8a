"""A stream's replies on their way out (StreamBids, StreamDecide), and the
loop that answers a stream's requests (`answer_each`). Replies: one
producer side (requests answered eagerly or by their tasks) and one
consumer (the response stream), so a deque and a single waiter do, without
asyncio.Queue's bookkeeping per reply. Iterating yields replies in the
order they were put until a None; replies that gathered while the consumer
was writing go out without another wait."""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncIterator, Callable, Coroutine
from typing import Any, Generic, TypeVar

from services.common.eager import Finished, start_eagerly

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


R = TypeVar("R")


async def answer_each(
    requests: AsyncIterator[R],
    answer: Callable[[R], Coroutine[Any, Any, T]],
    max_in_flight: int,
) -> AsyncIterator[T]:
    """A bidirectional stream's replies (StreamBids, StreamDecide): each
    request answered by `answer` as it arrives, at most `max_in_flight` at
    once (more wait for a slot), and each reply sent as soon as it is made,
    in the order they finish. `answer` answers its own errors (the stream
    goes on); a failed request stream ends the call with its error.

    Most answers never wait (everything they need is in memory): they are
    made on the reading turn itself, without a task of their own
    (services/common/eager.py)."""
    loop = asyncio.get_running_loop()
    replies: Replies[T] = Replies(loop)
    slots = asyncio.Semaphore(max_in_flight)
    tasks: set[asyncio.Task[T]] = set()

    async def one(message: R) -> T:
        try:
            return await answer(message)
        finally:
            slots.release()

    def answered(task: asyncio.Task[T]) -> None:
        tasks.discard(task)
        if not task.cancelled():
            replies.put(task.result())

    async def read() -> None:
        try:
            async for message in requests:
                await slots.acquire()
                started = start_eagerly(one(message), loop)
                if isinstance(started, Finished):
                    replies.put(started.result)
                else:
                    tasks.add(started)
                    started.add_done_callback(answered)
            if tasks:
                await asyncio.wait(tasks)
        finally:
            replies.put(None)

    reader = loop.create_task(read())
    try:
        async for reply in replies:
            yield reply
        # The request stream failed (a message that does not parse, a
        # cancelled call): end the call with its error, not OK.
        error = reader.exception() if reader.done() and not reader.cancelled() else None
        if error is not None:
            raise error
    finally:
        reader.cancel()
        for task in tasks:
            task.cancel()
