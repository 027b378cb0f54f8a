"""Open-loop load: requests are scheduled at a fixed rate whatever the
server's speed, and each latency is measured from the request's scheduled
send time, so a slow server cannot hide its queueing (no coordinated
omission)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Result:
    rate: float
    seconds: float
    latencies: list[float] = field(default_factory=list)
    errors: int = 0
    late_starts: int = 0

    def percentile(self, q: float) -> float:
        if not self.latencies:
            return float("nan")
        ordered = sorted(self.latencies)
        index = min(len(ordered) - 1, int(q / 100 * len(ordered)))
        return ordered[index]

    @property
    def achieved(self) -> float:
        return len(self.latencies) / self.seconds


async def run_open_loop(
    call: Callable[[], Awaitable[object]],
    rate: float,
    seconds: float,
    max_in_flight: int = 2000,
) -> Result:
    result = Result(rate=rate, seconds=seconds)
    interval = 1.0 / rate
    total = int(rate * seconds)
    in_flight: set[asyncio.Task[None]] = set()
    start = time.perf_counter()

    async def one(scheduled: float) -> None:
        try:
            await call()
        except Exception:  # counted, not raised: the run goes on
            result.errors += 1
            return
        result.latencies.append(time.perf_counter() - scheduled)

    for i in range(total):
        scheduled = start + i * interval
        delay = scheduled - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        elif delay < -0.005:
            result.late_starts += 1
        if len(in_flight) >= max_in_flight:
            result.errors += 1  # the client cannot keep up; count as a failure
            continue
        task = asyncio.create_task(one(scheduled))
        in_flight.add(task)
        task.add_done_callback(in_flight.discard)
    if in_flight:
        await asyncio.wait(in_flight, timeout=30)
    return result


class StreamCaller:
    """One bidirectional gRPC stream driven like unary calls: `ask(key,
    message)` writes the request (in order, from one writer task) and waits
    for the reply whose request id is `key`. A reply with `error` set
    raises."""

    def __init__(self, call: Any) -> None:
        self._call = call
        self._queue: asyncio.Queue[Any] = asyncio.Queue()
        self._pending: dict[str, asyncio.Future[Any]] = {}
        self._tasks = [asyncio.create_task(self._write()), asyncio.create_task(self._read())]

    async def _write(self) -> None:
        while True:
            await self._call.write(await self._queue.get())

    async def _read(self) -> None:
        try:
            async for reply in self._call:
                future = self._pending.pop(reply.request_id, None)
                if future is not None and not future.done():
                    future.set_result(reply)
        finally:
            for future in self._pending.values():
                if not future.done():
                    future.set_exception(RuntimeError("stream ended"))

    async def ask(self, key: str, message: Any) -> Any:
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._pending[key] = future
        self._queue.put_nowait(message)
        reply = await future
        if reply.HasField("error"):
            raise RuntimeError(reply.error.message)
        return reply

    async def close(self) -> None:
        await self._call.done_writing()
        for task in self._tasks:
            task.cancel()


RATE_HEADER = [
    "| offered/s | achieved/s | p50 ms | p99 ms | p99.9 ms | errors | serve CPU |",
    "|---|---|---|---|---|---|---|",
]


async def rate_rows(
    call: Callable[[], Awaitable[object]],
    rates: list[int],
    seconds: float,
    cpu_seconds: Callable[[], float],
) -> list[str]:
    """Each rate open-loop for `seconds`, a row of RATE_HEADER each (printed
    as it comes): achieved rate, p50/p99/p99.9, errors and the server's CPU
    (`cpu_seconds()`: its CPU time so far)."""
    rows = []
    for rate in rates:
        cpu = cpu_seconds()
        result = await run_open_loop(call, rate, seconds)
        busy = (cpu_seconds() - cpu) / seconds
        rows.append(
            f"| {rate:,} | {result.achieved:,.0f} | {result.percentile(50) * 1000:.2f} | "
            f"{result.percentile(99) * 1000:.2f} | {result.percentile(99.9) * 1000:.2f} | "
            f"{result.errors} | {busy:.0%} |"
        )
        print(rows[-1], flush=True)
        await asyncio.sleep(1.0)
    return rows
