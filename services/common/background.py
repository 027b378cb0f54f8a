"""A background loop a domain runs while serving: a round now and then, or
at once when woken; stopped cleanly (the round in progress is cancelled).
A round that fails is logged and the loop goes on."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

log = logging.getLogger(__name__)


class Background:
    def __init__(self, name: str, round: Callable[[], Awaitable[object]], every: float) -> None:
        self.name = name
        self._round = round
        self._every = every
        self._woken = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def wake(self) -> None:
        """Run a round soon (at once if idle)."""
        self._woken.set()

    async def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._loop(), name=self.name)

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _loop(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._woken.wait(), self._every)
            self._woken.clear()
            try:
                await self._round()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("%s: a round failed; the next one tries again", self.name)
