"""The HTTP server's log: a request the HTTP parser refuses (a 4xx such as a
header byte that is not allowed) is the client's error, so it is logged as one
line without a traceback, and at most `burst` such lines per `window` seconds;
the rest are counted and the count is logged with the next line let through.
Anything else (a server error) goes to the logger unchanged."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from aiohttp.http_exceptions import HttpProcessingError

log = logging.getLogger("campaign_express.gateway")


class ClientErrorLog:
    """Stands in for aiohttp's server logger (`RequestHandler(logger=...)`)."""

    def __init__(
        self,
        logger: logging.Logger,
        *,
        burst: int = 10,
        window: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._logger = logger
        self._burst = burst
        self._window = window
        self._clock = clock
        self._window_start = clock()
        self._lines = 0
        self._suppressed = 0

    def exception(self, msg: str, *args: Any, exc_info: Any = True, **kwargs: Any) -> None:
        error = exc_info if isinstance(exc_info, BaseException) else None
        if isinstance(error, HttpProcessingError) and 400 <= (error.code or 0) < 500:
            self.client_error(f"{msg % args if args else msg}: {error.code} {_first_line(error)}")
            return
        self._logger.exception(msg, *args, exc_info=exc_info, **kwargs)

    def client_error(self, line: str) -> None:
        now = self._clock()
        if now - self._window_start >= self._window:
            self._window_start, self._lines = now, 0
        if self._lines >= self._burst:
            self._suppressed += 1
            return
        self._lines += 1
        if self._suppressed:
            line += f" ({self._suppressed} more client errors not logged)"
            self._suppressed = 0
        self._logger.warning("client error: %s", line)

    def __getattr__(self, name: str) -> Any:  # debug, info, isEnabledFor, ...
        return getattr(self._logger, name)


def _first_line(error: HttpProcessingError) -> str:
    message = (error.message or "").strip().splitlines()
    return message[0].strip() if message else type(error).__name__
