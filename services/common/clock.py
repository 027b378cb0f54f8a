"""Time as the platform stores it: integer microseconds since the epoch, UTC."""

from __future__ import annotations

import time
from collections.abc import Callable

Clock = Callable[[], int]


def now_us() -> int:
    return time.time_ns() // 1000
