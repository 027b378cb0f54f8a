"""Which exceptions mean "a backend is unreachable, restarting or overloaded
right now".

Calls failing that way are answered UNAVAILABLE (retryable) instead of
INTERNAL: the service degrades while the backend is away and nothing is
half-written, because every write is one transaction. Besides the clients'
connection and timeout errors this covers every transient server state:
PostgreSQL starting up, shutting down or out of connections (SQLSTATE classes
08, 53 and 57), a connection the pool found dead, Redis loading its dataset
or a replica refusing writes during a failover, NATS without responders."""

from __future__ import annotations

import nats.errors
import redis.exceptions
import sqlalchemy.exc

_OUTAGES: tuple[type[BaseException], ...] = (
    OSError,  # ConnectionError, TimeoutError (asyncio's too), unreachable networks
    sqlalchemy.exc.OperationalError,
    sqlalchemy.exc.InterfaceError,
    sqlalchemy.exc.TimeoutError,
    redis.exceptions.ConnectionError,  # BusyLoadingError included
    redis.exceptions.TimeoutError,
    redis.exceptions.ReadOnlyError,
    redis.exceptions.TryAgainError,
    redis.exceptions.ClusterDownError,
    nats.errors.ConnectionClosedError,
    nats.errors.NoServersError,
    nats.errors.TimeoutError,
    nats.errors.NoRespondersError,
    nats.errors.StaleConnectionError,
    nats.errors.OutboundBufferLimitError,
)

#: SQLSTATE classes of a server that cannot serve now: connection exception,
#: insufficient resources (too many connections), operator intervention
#: (starting up, shutting down, crash recovery).
_TRANSIENT_SQLSTATE_CLASSES = ("08", "53", "57")


def is_backend_outage(error: BaseException) -> bool:
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:  # and what it was raised from
        seen.add(id(current))
        if isinstance(current, _OUTAGES):
            return True
        if isinstance(current, sqlalchemy.exc.DBAPIError):
            if current.connection_invalidated:
                return True
            state = getattr(current.orig, "sqlstate", None) or getattr(current.orig, "pgcode", None)
            if isinstance(state, str) and state[:2] in _TRANSIENT_SQLSTATE_CLASSES:
                return True
        current = current.__cause__ or current.__context__
    return False
