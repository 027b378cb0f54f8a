"""A database that refuses connections is tried at most every few hundred
milliseconds, not on every request: each attempt costs the event loop
milliseconds of CPU, which stalled bids (that never touch the database) while
PostgreSQL was down (tests/test_faults.py)."""

from __future__ import annotations

import asyncio
import socket

import pytest
import sqlalchemy as sa

from services.backends.outages import is_backend_outage
from services.db.engine import ConnectBreaker, Database, DatabaseUnreachable


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_after_a_failure_attempts_wait_a_growing_pause_and_one_success_closes_it() -> None:
    clock = Clock()
    breaker = ConnectBreaker(clock)
    breaker.before()  # closed: attempts go
    breaker.failed(ConnectionRefusedError("refused"))
    assert breaker.open
    with pytest.raises(DatabaseUnreachable, match="refused"):
        breaker.before()
    pauses = []
    for _ in range(6):
        start = clock.now
        while True:
            try:
                breaker.before()
                break
            except DatabaseUnreachable:
                clock.now += 0.01
        pauses.append(round(clock.now - start, 2))
        # one attempt in flight: the others fail at once
        with pytest.raises(DatabaseUnreachable):
            breaker.before()
        breaker.failed(ConnectionRefusedError("refused"))
    assert pauses == [0.05, 0.1, 0.2, 0.4, 0.5, 0.5]
    clock.now += 1.0
    breaker.before()
    breaker.succeeded()
    assert not breaker.open
    breaker.before()
    breaker.before()  # closed again: every attempt goes


def test_a_cancelled_attempt_does_not_open_it() -> None:
    breaker = ConnectBreaker(Clock())

    class Dialect:
        def connect(self, *args: object, **kwargs: object) -> object:
            raise asyncio.CancelledError

    with pytest.raises(asyncio.CancelledError):
        breaker.connect(Dialect(), None, [], {})
    assert not breaker.open
    breaker.before()


async def test_concurrent_requests_to_a_dead_postgresql_make_one_attempt() -> None:
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    database = Database(f"postgresql://cx:cx@127.0.0.1:{port}/cx")
    attempts = 0
    original = database.breaker.failed

    def counted(error: BaseException) -> None:
        nonlocal attempts
        attempts += 1
        original(error)

    database.breaker.failed = counted  # type: ignore[method-assign]

    async def query() -> BaseException | None:
        try:
            async with database.engine.connect() as connection:
                await connection.execute(sa.text("SELECT 1"))
        except Exception as error:  # noqa: BLE001 - what the caller sees
            return error
        return None

    try:
        first = await query()
        assert first is not None and is_backend_outage(first)
        errors = await asyncio.gather(*(query() for _ in range(50)))
        # all fail as outages (UNAVAILABLE to callers), at once, naming why
        assert all(e is not None and is_backend_outage(e) for e in errors)
        assert all(isinstance(e, DatabaseUnreachable) for e in errors)
        assert "Connect" in str(errors[0]) or "refused" in str(errors[0]).lower()
        assert attempts == 1
        assert not await database.ping()  # /ready still says it is down
        await asyncio.sleep(0.06)  # past the first pause: one more real attempt
        assert not await database.ping()
        assert attempts == 2
    finally:
        await database.close()
