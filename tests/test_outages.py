"""Transient backend states are outages (UNAVAILABLE), whatever class the
client raises them as; an application error is not."""

from __future__ import annotations

import asyncpg
import nats.errors
import pytest
import redis.exceptions
import sqlalchemy.exc
from sqlalchemy.dialects.postgresql.asyncpg import AsyncAdapt_asyncpg_dbapi

from services.backends.outages import is_backend_outage

DBAPI = AsyncAdapt_asyncpg_dbapi(asyncpg)


def wrapped(error: Exception) -> BaseException:
    """`error` as SQLAlchemy's asyncpg dialect hands it to application code."""
    for super_ in type(error).__mro__:
        if super_ in DBAPI._asyncpg_error_translate:
            adapted = DBAPI._asyncpg_error_translate[super_](error.args[0], error)
            return sqlalchemy.exc.DBAPIError.instance("SELECT 1", None, adapted, DBAPI.Error)
    raise AssertionError(type(error))


@pytest.mark.parametrize(
    "error",
    [
        asyncpg.exceptions.CannotConnectNowError("the database system is starting up"),
        asyncpg.exceptions.AdminShutdownError("terminating connection due to administrator"),
        asyncpg.exceptions.CrashShutdownError("terminating connection due to crash"),
        asyncpg.exceptions.TooManyConnectionsError("too many clients already"),
        asyncpg.exceptions.ConnectionFailureError("connection failure"),
    ],
    ids=lambda e: type(e).__name__,
)
def test_postgres_transient_states_are_outages(error: Exception) -> None:
    assert is_backend_outage(wrapped(error))


def test_other_failures_are_outages_too() -> None:
    for error in (
        ConnectionRefusedError(),
        TimeoutError(),
        OSError(101, "Network is unreachable"),
        redis.exceptions.BusyLoadingError("Redis is loading the dataset in memory"),
        redis.exceptions.ReadOnlyError("You can't write against a read only replica."),
        nats.errors.NoRespondersError(),
    ):
        assert is_backend_outage(error), error
    try:
        try:
            raise ConnectionResetError()
        except ConnectionResetError as cause:
            raise RuntimeError("while reading") from cause
    except RuntimeError as chained:
        assert is_backend_outage(chained)


def test_application_errors_are_not_outages() -> None:
    assert not is_backend_outage(wrapped(asyncpg.exceptions.UniqueViolationError("duplicate")))
    assert not is_backend_outage(wrapped(asyncpg.exceptions.UndefinedTableError("no table")))
    assert not is_backend_outage(ValueError("bad value"))
    assert not is_backend_outage(redis.exceptions.ResponseError("WRONGTYPE"))
