"""Which exceptions mean "a backend is unreachable or overloaded right now".

Calls failing that way are answered UNAVAILABLE (retryable) instead of
INTERNAL: the service degrades while the backend is away and nothing is
half-written, because every write is one transaction."""

from __future__ import annotations

import nats.errors
import redis.exceptions
import sqlalchemy.exc

_OUTAGES: tuple[type[BaseException], ...] = (
    ConnectionError,
    sqlalchemy.exc.OperationalError,
    sqlalchemy.exc.InterfaceError,
    sqlalchemy.exc.TimeoutError,
    redis.exceptions.ConnectionError,
    redis.exceptions.TimeoutError,
    nats.errors.ConnectionClosedError,
    nats.errors.NoServersError,
    nats.errors.TimeoutError,
)


def is_backend_outage(error: BaseException) -> bool:
    return isinstance(error, _OUTAGES)
