"""Async engine creation and start-up migrations."""

from __future__ import annotations

import logging
import os
import pathlib
import time
from collections.abc import Callable, Sequence
from typing import Any

import orjson
import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

MIGRATIONS = pathlib.Path(__file__).parent / "migrations"
#: The single history databases had before each domain owned its own: kept
#: frozen, only to bring such a database to LEGACY_HEAD before the take-over.
LEGACY = pathlib.Path(__file__).parent / "legacy"
LEGACY_REVISIONS = frozenset({"0001", "0002", "0003"})
LEGACY_HEAD = "0003"

log = logging.getLogger("campaign_express.db")


#: Explicit waits of the PostgreSQL client (docs/operations.md, "Client timeouts").
POSTGRES_CONNECT_TIMEOUT_SECONDS = 2.0
POSTGRES_COMMAND_TIMEOUT_SECONDS = 30.0
POSTGRES_POOL_TIMEOUT_SECONDS = 2.0


def normalize_database_url(url: str) -> str:
    """Pick the async driver for plain URLs: postgresql:// -> asyncpg,
    sqlite:// -> aiosqlite. Anything else is a configuration error."""
    if url.startswith(("postgresql://", "postgres://")):
        return "postgresql+asyncpg://" + url.split("://", 1)[1]
    if url.startswith("sqlite://"):
        return "sqlite+aiosqlite://" + url.split("://", 1)[1]
    if url.startswith(("postgresql+asyncpg://", "sqlite+aiosqlite://")):
        return url
    raise ValueError(
        f"DATABASE_URL must be a postgresql:// or sqlite:// URL, got {url.split('://', 1)[0]}://..."
    )


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    # WAL lets readers and one writer work at once, also across --workers
    # processes; busy_timeout makes a second writer wait instead of failing.
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA busy_timeout=10000")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


class DatabaseUnreachable(ConnectionRefusedError):
    """Raised instead of a connection attempt while the connect breaker is
    open: an OSError, so callers see a backend outage (UNAVAILABLE)."""


class ConnectBreaker:
    """Spaces out connection attempts to a database that refuses them.

    Every attempt to a dead PostgreSQL costs the event loop a few
    milliseconds of CPU (asyncpg builds an SSL context for sslmode=prefer,
    SQLAlchemy builds and unwinds its wrappers), and while it is down every
    request that needs it tries again: at a few hundred requests a second
    that is a stall of everything else the process serves, bids included,
    which never touch the database. After a failed attempt the next one is
    allowed only after a pause (50 ms, doubling to 0.5 s); until then, and
    while that one attempt is in flight, callers fail at once. The first
    success closes it."""

    FIRST_PAUSE_SECONDS = 0.05
    MAX_PAUSE_SECONDS = 0.5

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._failures = 0
        self._retry_at = 0.0
        self._probing = False
        self.last_error = ""

    @property
    def open(self) -> bool:
        return self._failures > 0

    def before(self) -> None:
        """Raise DatabaseUnreachable unless an attempt may go now."""
        if not self._failures:
            return
        now = self._clock()
        if self._probing or now < self._retry_at:
            wait = max(0.0, self._retry_at - now)
            raise DatabaseUnreachable(
                f"database unreachable ({self._failures} failed connection attempts, "
                f"last: {self.last_error}); next attempt in {wait * 1e3:.0f} ms"
            )
        self._probing = True

    def failed(self, error: BaseException) -> None:
        self._probing = False
        self._failures += 1
        self.last_error = f"{type(error).__name__}: {error}"[:200]
        pause = min(self.FIRST_PAUSE_SECONDS * 2 ** (self._failures - 1), self.MAX_PAUSE_SECONDS)
        self._retry_at = self._clock() + pause
        if self._failures == 1:
            log.warning(
                "database unreachable (%s): connection attempts spaced out up to %g s "
                "until one succeeds",
                self.last_error,
                self.MAX_PAUSE_SECONDS,
            )

    def succeeded(self) -> None:
        if self._failures:
            log.warning(
                "database reachable again after %d failed connection attempts", self._failures
            )
        self._probing = False
        self._failures = 0

    def connect(self, dialect: Any, _record: Any, cargs: list[Any], cparams: dict[str, Any]) -> Any:
        """A `do_connect` hook: the dialect's own connect, through the breaker."""
        self.before()
        try:
            connection = dialect.connect(*cargs, **cparams)
        except Exception as error:
            self.failed(error)
            raise
        except BaseException:  # cancelled: says nothing about the database
            self._probing = False
            raise
        self.succeeded()
        return connection


def _json_text(value: Any) -> str:
    """JSON columns written with orjson (a tenth of the standard library's
    time: the message outbox writes and reads a message's data twice)."""
    return orjson.dumps(value, option=orjson.OPT_NON_STR_KEYS).decode()


class Database:
    """The management database: an async engine plus its migrations."""

    def __init__(self, url: str) -> None:
        self.url = normalize_database_url(url)
        self.is_sqlite = self.url.startswith("sqlite")
        kwargs: dict[str, Any] = {}
        if not self.is_sqlite:
            # Every wait bounded (docs/operations.md, "Client timeouts"): a
            # connection attempt, a statement, and the wait for a pooled
            # connection; dead pooled connections are found by pre-ping.
            kwargs.update(
                pool_size=10,
                max_overflow=10,
                pool_pre_ping=True,
                pool_timeout=POSTGRES_POOL_TIMEOUT_SECONDS,
                connect_args={
                    "timeout": POSTGRES_CONNECT_TIMEOUT_SECONDS,
                    "command_timeout": POSTGRES_COMMAND_TIMEOUT_SECONDS,
                },
            )
        self.engine: AsyncEngine = create_async_engine(
            self.url, json_serializer=_json_text, json_deserializer=orjson.loads, **kwargs
        )
        self.breaker = ConnectBreaker()
        if self.is_sqlite:
            sa.event.listen(self.engine.sync_engine, "connect", _sqlite_pragmas)
        else:
            sa.event.listen(self.engine.sync_engine, "do_connect", self.breaker.connect)

    async def migrate(self, version_locations: Sequence[pathlib.Path]) -> None:
        """Apply every migration not yet applied of every domain's history
        (`version_locations`: their folders, one Alembic branch each);
        idempotent. A database made before histories were per domain is
        first brought to the last shared revision, then taken over by the
        domain baselines that describe that schema (services/db/legacy)."""
        async with self.engine.begin() as connection:
            await connection.run_sync(_upgrade_to_heads, list(version_locations))

    async def ping(self) -> bool:
        try:
            async with self.engine.connect() as connection:
                await connection.execute(sa.text("SELECT 1"))
            return True
        except Exception:  # noqa: BLE001 - readiness reports any failure as "down"
            return False

    async def close(self) -> None:
        await self.engine.dispose()


# Any fixed number: processes starting together on one PostgreSQL database
# take turns migrating instead of racing to create the same tables.
_MIGRATION_LOCK_ID = 7_201_118


def _config(connection: sa.Connection, version_locations: Sequence[pathlib.Path]) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    # os.pathsep-separated, so paths with spaces are fine
    config.set_main_option("path_separator", "os")
    config.set_main_option("version_locations", os.pathsep.join(map(str, version_locations)))
    config.attributes["connection"] = connection
    return config


def _upgrade_to_heads(connection: sa.Connection, version_locations: list[pathlib.Path]) -> None:
    if connection.dialect.name == "postgresql":
        connection.execute(sa.text(f"SELECT pg_advisory_xact_lock({_MIGRATION_LOCK_ID})"))
    if not version_locations:
        return
    current = set(MigrationContext.configure(connection).get_current_heads())
    if current & LEGACY_REVISIONS:
        _take_over_legacy(connection, version_locations)
    command.upgrade(_config(connection, version_locations), "heads")


def _take_over_legacy(connection: sa.Connection, version_locations: list[pathlib.Path]) -> None:
    """Finish the single pre-domain history (its revisions are kept frozen in
    services/db/legacy), then record instead the domain baselines that
    declare `covers_legacy_schema`: they create exactly the tables that
    history made, so nothing is run and no data moves."""
    command.upgrade(_config(connection, [LEGACY]), LEGACY_HEAD)
    config = _config(connection, version_locations)
    scripts = ScriptDirectory.from_config(config)
    baselines = [
        script
        for script in scripts.walk_revisions()
        if getattr(script.module, "covers_legacy_schema", False)
    ]
    # A baseline another one depends on is implied by it (Alembic refuses both).
    implied = {dep for script in baselines for dep in _dependencies(script.dependencies)}
    outermost = [script.revision for script in baselines if script.revision not in implied]
    log.info("taking over the pre-domain schema with baselines %s", ", ".join(outermost))
    command.stamp(config, outermost, purge=True)


def _dependencies(value: str | Sequence[str] | None) -> tuple[str, ...]:
    if value is None:
        return ()
    return (value,) if isinstance(value, str) else tuple(value)
