"""Logged impressions in and out of files and the analytics store.

- CSV: `inference.data` (csv module);
- Parquet: read and written through chDB (`file('...', Parquet)`), so no
  Parquet library is needed;
- the analytics store (chDB by default, ClickHouse at scale): the table
  `impression_log` (`IMPRESSION_LOG_DDL`) by default, or any table or view
  with the same column names.
"""

from __future__ import annotations

import asyncio
import pathlib
import tempfile
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any

from inference.data import EVENT_COLUMNS, read_csv_columns, write_csv_columns
from services.backends import AnalyticsStore
from services.backends.analytics import ChdbAnalyticsStore, quote_identifier

__all__ = [
    "IMPRESSION_LOG",
    "IMPRESSION_LOG_DDL",
    "insert_events",
    "read_columns",
    "write_columns",
]

IMPRESSION_LOG = "impression_log"
IMPRESSION_LOG_DDL = f"""
CREATE TABLE IF NOT EXISTS {IMPRESSION_LOG} (
    event_time DateTime64(6),
    request_id String,
    offer_id String,
    position UInt16,
    features Array(Float32),
    candidates Array(String),
    propensity Float64,
    clicked UInt8,
    converted UInt8,
    value Float64,
    variant Int16
) ENGINE = MergeTree ORDER BY event_time
"""

_TYPES = {
    "event_time": "Float64",
    "request_id": "String",
    "offer_id": "String",
    "position": "UInt16",
    "features": "Array(Float32)",
    "candidates": "Array(String)",
    "propensity": "Float64",
    "clicked": "UInt8",
    "converted": "UInt8",
    "value": "Float64",
    "variant": "Int16",
}


def _kind(path: str | pathlib.Path) -> str:
    suffix = pathlib.Path(path).suffix.lower()
    if suffix in (".csv", ".parquet"):
        return suffix[1:]
    raise ValueError(f"{path}: use a .csv or .parquet file")


def _existing(source: str) -> pathlib.Path:
    path = pathlib.Path(source).resolve()
    if not path.is_file():
        raise FileNotFoundError(f"{source} does not exist")
    return path


def _writable(target: str) -> pathlib.Path:
    """Absolute path with its directory created and no file in the way
    (chDB's file() appends to an existing file)."""
    path = pathlib.Path(target).resolve()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.unlink(missing_ok=True)
    return path


def _sql_string(text: str) -> str:
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


@asynccontextmanager
async def _chdb(store: AnalyticsStore | None) -> AsyncIterator[AnalyticsStore]:
    """The given store when it is chDB (it can read local files), else a
    temporary embedded one."""
    if isinstance(store, ChdbAnalyticsStore):
        yield store
        return
    with tempfile.TemporaryDirectory(prefix="cx-chdb-") as tmp:
        temporary = ChdbAnalyticsStore(tmp)
        try:
            await temporary.wait_open()
            yield temporary
        finally:
            await temporary.close()


def _rows_to_columns(names: Sequence[str], rows: list[tuple[Any, ...]]) -> dict[str, list[Any]]:
    columns: dict[str, list[Any]] = {name: [] for name in names}
    for row in rows:
        for name, value in zip(names, row, strict=True):
            columns[name].append(value)
    return columns


async def _describe(store: AnalyticsStore, source: str) -> list[str]:
    return [str(row[0]) for row in await store.query(f"DESCRIBE {source}")]


async def read_columns(
    source: str, store: AnalyticsStore | None = None, *, limit: int = 0, latest: int = 0
) -> dict[str, list[Any]]:
    """Columns of a .csv or .parquet file, or of table `source` in `store`
    (its first `limit` rows by time, or its `latest` ones; 0: all)."""
    tail = f" LIMIT {int(limit)}" if limit > 0 else ""
    if source.lower().endswith((".csv", ".parquet")):
        path = _existing(source)
        if _kind(path) == "csv":
            columns = await asyncio.to_thread(read_csv_columns, path)
            return {k: v[:limit] for k, v in columns.items()} if limit > 0 else columns
        async with _chdb(store) as chdb:
            relation = f"file({_sql_string(str(path))}, Parquet)"
            names = await _describe(chdb, relation)
            rows = await chdb.query(f"SELECT * FROM {relation}{tail}")
        return _rows_to_columns(names, rows)
    if store is None:
        raise ValueError("reading a table needs the analytics store")
    relation = quote_identifier(source)
    names = await _describe(store, relation)
    select = ", ".join(
        f"toUnixTimestamp64Micro({quote_identifier(n)}) / 1e6 AS {quote_identifier(n)}"
        if n == "event_time"
        else quote_identifier(n)
        for n in names
    )
    if latest > 0:
        rows = await store.query(
            f"SELECT * FROM (SELECT {select} FROM {relation} ORDER BY event_time DESC "
            f"LIMIT {int(latest)}) ORDER BY event_time"
        )
    else:
        rows = await store.query(f"SELECT {select} FROM {relation} ORDER BY event_time{tail}")
    return _rows_to_columns(names, rows)


async def write_columns(
    target: str, columns: dict[str, list[Any]], store: AnalyticsStore | None = None
) -> pathlib.Path:
    """Write columns to a .csv or .parquet file."""
    path = _writable(target)
    if _kind(path) == "csv":
        return await asyncio.to_thread(write_csv_columns, path, columns)
    names = [c for c in EVENT_COLUMNS if c in columns] + [
        c for c in columns if c not in EVENT_COLUMNS
    ]
    structure = ", ".join(f"{quote_identifier(n)} {_TYPES.get(n, 'String')}" for n in names)
    async with _chdb(store) as chdb:
        scratch = f"cx_export_{abs(hash(str(path))) % 10**8}"
        await chdb.execute(f"DROP TABLE IF EXISTS {scratch}")
        await chdb.execute(f"CREATE TABLE {scratch} ({structure}) ENGINE = Memory")
        try:
            rows = list(zip(*(columns[n] for n in names), strict=True))
            await chdb.insert(scratch, names, rows)
            await chdb.execute(
                f"INSERT INTO FUNCTION file({_sql_string(str(path))}, Parquet) "
                f"SELECT * FROM {scratch}"
            )
        finally:
            await chdb.execute(f"DROP TABLE IF EXISTS {scratch}")
    return path


async def insert_events(store: AnalyticsStore, columns: dict[str, list[Any]]) -> int:
    """Append logged impressions to `impression_log` (created if missing)."""
    await store.execute(IMPRESSION_LOG_DDL)
    names = [c for c in EVENT_COLUMNS if c in columns]
    n = len(columns[names[0]])
    for start in range(0, n, 10_000):
        rows = list(zip(*(columns[name][start : start + 10_000] for name in names), strict=True))
        await store.insert(IMPRESSION_LOG, names, rows)
    return n
