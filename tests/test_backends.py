"""Behaviour of the backends, the same tests on the embedded default and on the
real engine (Redis, NATS JetStream) started by tests/backend_servers.py."""

from __future__ import annotations

import asyncio
import datetime as dt
import decimal
import os
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from services.backends import BusMessage, KeyValueStore, MessageBus
from services.backends.analytics import (
    ChdbAnalyticsStore,
    ClickHouseServerStore,
    open_analytics_store,
    parse_clickhouse_url,
    quote_identifier,
)
from services.backends.bus import (
    InProcessBus,
    NatsBus,
    open_message_bus,
    pattern_covers,
    subject_matches,
)
from services.backends.kv import MemoryKeyValueStore, RedisKeyValueStore, open_key_value_store
from services.common.threadpriority import BACKGROUND_NICE, is_engine_thread

# --------------------------------------------------------------------------- helpers


async def wait_for(predicate: Callable[[], bool], within: float = 10.0) -> None:
    deadline = time.monotonic() + within
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.01)


def unique_subject(*tail: str) -> str:
    """A subject inside NatsBus's default stream, unique per test, since the
    JetStream server (and its durable consumers) live for the whole session."""
    return ".".join(["campaign-express", "test", uuid.uuid4().hex[:12], *tail])


# --------------------------------------------------------------------------- key/value


@pytest.fixture(params=["memory", pytest.param("redis", marks=pytest.mark.backends)])
def kv_url(request: pytest.FixtureRequest) -> str | None:
    if request.param == "memory":
        return None
    url: str = request.getfixturevalue("redis_url_flushed")
    return url


@pytest.fixture
async def kv(kv_url: str | None) -> AsyncIterator[KeyValueStore]:
    store = MemoryKeyValueStore() if kv_url is None else RedisKeyValueStore(kv_url)
    assert await store.ping()
    yield store
    await store.close()


async def test_kv_get_set_delete(kv: KeyValueStore) -> None:
    assert await kv.get("missing") is None
    await kv.set("k", b"v1")
    assert await kv.get("k") == b"v1"
    await kv.set("k", b"\x00\xffbinary")
    assert await kv.get("k") == b"\x00\xffbinary"
    assert await kv.delete("k") is True
    assert await kv.delete("k") is False
    assert await kv.get("k") is None


async def test_kv_ttl_expires(kv: KeyValueStore) -> None:
    await kv.set("short", b"x", ttl_seconds=0.2)
    await kv.set("long", b"y", ttl_seconds=30)
    await kv.set("reset", b"z", ttl_seconds=0.2)
    await kv.set("reset", b"z2")  # a plain set removes the TTL, as in Redis
    assert await kv.get("short") == b"x"
    await asyncio.sleep(0.35)
    assert await kv.get("short") is None
    assert await kv.get("long") == b"y"
    assert await kv.get("reset") == b"z2"
    assert await kv.delete("short") is False


async def test_kv_get_many(kv: KeyValueStore) -> None:
    await kv.set("a", b"1")
    await kv.set("c", b"3")
    await kv.set("gone", b"x", ttl_seconds=0.05)
    await asyncio.sleep(0.1)
    assert await kv.get_many(["a", "b", "c", "gone", "a"]) == [b"1", None, b"3", None, b"1"]
    assert await kv.get_many([]) == []


async def test_kv_incr(kv: KeyValueStore) -> None:
    assert await kv.incr("n") == 1
    assert await kv.incr("n", 5) == 6
    assert await kv.incr("n", -2) == 4
    assert await kv.get("n") == b"4"
    await kv.set("text", b"abc")
    with pytest.raises(ValueError):
        await kv.incr("text")


async def test_kv_incr_ttl_set_only_on_creation(kv: KeyValueStore) -> None:
    assert await kv.incr("window", ttl_seconds=0.4) == 1
    await asyncio.sleep(0.2)
    # A later incr with a TTL must not push the expiry out.
    assert await kv.incr("window", ttl_seconds=0.4) == 2
    await asyncio.sleep(0.3)
    assert await kv.get("window") is None
    assert await kv.incr("window", ttl_seconds=0.4) == 1


async def test_kv_incr_is_atomic_under_concurrency(kv: KeyValueStore) -> None:
    results = await asyncio.gather(*(kv.incr("hits", ttl_seconds=60) for _ in range(200)))
    assert sorted(results) == list(range(1, 201))
    assert await kv.get("hits") == b"200"


async def test_kv_incr_many_once(kv: KeyValueStore) -> None:
    """The counters move once per marker, atomically, however many calls race;
    the marker expires on its own TTL; counters keep their TTL rules."""
    items = [("h", 1, 60.0), ("d", 2, None)]
    results = await asyncio.gather(*(kv.incr_many_once("won:b1", 0.4, items) for _ in range(20)))
    assert [r for r in results if r is not None] == [[1, 2]]
    assert await kv.get_many(["h", "d"]) == [b"1", b"2"]
    assert await kv.incr_many_once("won:b2", 0.4, items) == [2, 4]  # another bid
    await asyncio.sleep(0.5)
    assert await kv.incr_many_once("won:b1", 0.4, items) == [3, 6]  # the marker expired
    await kv.set("text", b"abc")
    with pytest.raises(ValueError):
        await kv.incr_many_once("won:b3", 60, [("text", 1, None)])


async def test_kv_token_bucket_burst_refusal_and_refill(kv: KeyValueStore) -> None:
    rate, burst = 5.0, 3
    taken = [await kv.take_token("bucket", rate, burst) for _ in range(burst)]
    assert all(r.allowed and r.retry_after == 0 for r in taken)
    assert [round(r.remaining) for r in taken] == [2, 1, 0]

    refused = await kv.take_token("bucket", rate, burst)
    assert not refused.allowed
    assert 0 < refused.retry_after <= 1 / rate + 0.01
    assert refused.remaining < 1

    await asyncio.sleep(refused.retry_after + 0.05)
    again = await kv.take_token("bucket", rate, burst)
    assert again.allowed
    assert (await kv.take_token("other-bucket", rate, burst)).allowed  # buckets are separate


async def test_kv_token_bucket_never_exceeds_burst(kv: KeyValueStore) -> None:
    results = await asyncio.gather(*(kv.take_token("tb", 0.01, 10) for _ in range(50)))
    assert sum(r.allowed for r in results) == 10
    assert all(r.retry_after > 0 for r in results if not r.allowed)


async def test_kv_rejects_bad_arguments(kv: KeyValueStore) -> None:
    with pytest.raises(ValueError):
        await kv.set("k", b"v", ttl_seconds=0)
    with pytest.raises(ValueError):
        await kv.take_token("k", 0, 1)
    with pytest.raises(ValueError):
        await kv.take_token("k", 1, 0)


@pytest.mark.backends
async def test_redis_bucket_is_shared_between_clients(redis_url_flushed: str) -> None:
    """Two processes (two clients) share one bucket: the Lua script uses the
    server clock and state, so the burst holds across them."""
    a, b = RedisKeyValueStore(redis_url_flushed), RedisKeyValueStore(redis_url_flushed)
    try:
        assert (await a.take_token("shared", 0.01, 2)).allowed
        assert (await b.take_token("shared", 0.01, 2)).allowed
        assert not (await a.take_token("shared", 0.01, 2)).allowed
        assert not (await b.take_token("shared", 0.01, 2)).allowed
        assert await a.incr("c") == 1 and await b.incr("c") == 2
    finally:
        await a.close()
        await b.close()


async def test_memory_kv_cleanup_is_bounded_and_complete() -> None:
    now = [0.0]
    store = MemoryKeyValueStore(clock=lambda: now[0])
    for i in range(1000):
        await store.set(f"k{i}", b"v", ttl_seconds=1)
    now[0] = 2.0
    # Each write pops at most CLEANUP_BATCH expired keys...
    await store.set("trigger", b"v")
    assert len(store._data) == 1000 + 1 - store.CLEANUP_BATCH
    # ...and enough writes remove them all without anyone reading them.
    for _ in range(1000 // store.CLEANUP_BATCH + 1):
        await store.set("trigger", b"v")
    assert set(store._data) == {"trigger"}
    assert not store._expires


def test_open_key_value_store_urls() -> None:
    assert isinstance(open_key_value_store(None), MemoryKeyValueStore)
    assert isinstance(open_key_value_store(""), MemoryKeyValueStore)
    assert isinstance(open_key_value_store("memory://"), MemoryKeyValueStore)
    assert isinstance(open_key_value_store("redis://127.0.0.1:1/0"), RedisKeyValueStore)
    assert isinstance(open_key_value_store("rediss://h:1/0"), RedisKeyValueStore)
    assert isinstance(open_key_value_store("unix:///tmp/r.sock"), RedisKeyValueStore)
    for bad in ("http://h", "localhost:6379", "memcached://h"):
        with pytest.raises(ValueError, match="REDIS_URL"):
            open_key_value_store(bad)
    with pytest.raises(ValueError) as info:
        open_key_value_store("http://user:secret@h")
    assert "secret" not in str(info.value)


async def test_redis_store_unreachable_pings_false() -> None:
    store = RedisKeyValueStore(f"redis://127.0.0.1:{_closed_port()}/0")
    try:
        assert await store.ping() is False
    finally:
        await store.close()


def _closed_port() -> int:
    from tests.backend_servers import free_port

    return free_port()


# --------------------------------------------------------------------------- bus


@pytest.fixture(params=["memory", pytest.param("nats", marks=pytest.mark.backends)])
def bus_url(request: pytest.FixtureRequest) -> str | None:
    if request.param == "memory":
        return None
    url: str = request.getfixturevalue("nats_url")
    return url


def make_bus(url: str | None) -> InProcessBus | NatsBus:
    if url is None:
        return InProcessBus(backoff_seconds=0.02)
    return NatsBus(url, backoff_seconds=0.05, max_backoff_seconds=0.2)


@pytest.fixture
async def bus(bus_url: str | None) -> AsyncIterator[MessageBus]:
    b = make_bus(bus_url)
    if isinstance(b, NatsBus):
        await b.connect()
    assert await b.ping()
    yield b
    await b.close()


class Collector:
    def __init__(self, fail_times: int = 0, name: str = "") -> None:
        self.messages: list[BusMessage] = []
        self.attempts = 0
        self.fail_times = fail_times
        self.name = name

    async def __call__(self, msg: BusMessage) -> None:
        self.attempts += 1
        if self.attempts <= self.fail_times:
            raise RuntimeError(f"induced failure {self.attempts}")
        self.messages.append(msg)

    @property
    def payloads(self) -> list[bytes]:
        return [m.data for m in self.messages]


async def test_bus_publish_subscribe_headers(bus: MessageBus) -> None:
    subject = unique_subject("offer", "shown")
    got = Collector()
    await bus.subscribe(subject, got)
    headers = {
        "traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        "tracestate": "congo=t61rcWkgMzE",
        "x-tenant": "tenant-1",
    }
    await bus.publish(subject, b"\x00payload\xff", headers)
    await bus.publish(subject, b"no headers")
    await wait_for(lambda: len(got.messages) == 2)
    first = next(m for m in got.messages if m.data == b"\x00payload\xff")
    assert first.subject == subject
    assert dict(first.headers) == headers
    second = next(m for m in got.messages if m.data == b"no headers")
    assert dict(second.headers) == {}


async def test_bus_wildcards(bus: MessageBus) -> None:
    base = unique_subject()
    one_token, tail = Collector(), Collector()
    await bus.subscribe(f"{base}.*.created", one_token)
    await bus.subscribe(f"{base}.>", tail)
    for suffix in ("a.created", "b.deleted", "a.b.created", "c.created"):
        await bus.publish(f"{base}.{suffix}", suffix.encode())
    await wait_for(lambda: len(tail.messages) == 4 and len(one_token.messages) == 2)
    await asyncio.sleep(0.1)
    assert sorted(one_token.payloads) == [b"a.created", b"c.created"]
    assert sorted(tail.payloads) == sorted(
        [b"a.created", b"b.deleted", b"a.b.created", b"c.created"]
    )


async def test_bus_queue_group_splits_without_loss_or_duplicates(bus: MessageBus) -> None:
    subject = unique_subject("jobs")
    w1, w2, watcher = Collector(name="w1"), Collector(name="w2"), Collector()
    await bus.subscribe(subject, w1, queue="workers")
    await bus.subscribe(subject, w2, queue="workers")
    await bus.subscribe(subject, watcher)  # a plain subscriber still sees everything
    sent = [f"job-{i}".encode() for i in range(100)]
    for payload in sent:
        await bus.publish(subject, payload)
    await wait_for(
        lambda: len(w1.messages) + len(w2.messages) >= 100 and len(watcher.messages) >= 100
    )
    await asyncio.sleep(0.2)  # let any duplicate show up
    received = w1.payloads + w2.payloads
    assert sorted(received) == sorted(sent)
    assert len(set(received)) == len(received) == 100
    assert w1.messages and w2.messages, "both members of the queue group got work"
    assert sorted(watcher.payloads) == sorted(sent)


async def test_bus_failing_handler_gets_redelivery(bus: MessageBus) -> None:
    subject = unique_subject("flaky")
    flaky = Collector(fail_times=2)
    await bus.subscribe(subject, flaky, queue="flaky-workers")
    await bus.publish(subject, b"retry me", {"traceparent": "00-abc-def-01"})
    await wait_for(lambda: len(flaky.messages) == 1)
    assert flaky.attempts == 3
    assert flaky.messages[0].data == b"retry me"
    assert dict(flaky.messages[0].headers) == {"traceparent": "00-abc-def-01"}


async def test_bus_always_failing_handler_is_bounded(bus: MessageBus) -> None:
    subject = unique_subject("poison")
    poison = Collector(fail_times=1_000)
    await bus.subscribe(subject, poison)
    await bus.publish(subject, b"poison")
    await wait_for(lambda: poison.attempts == 5)
    await asyncio.sleep(0.6)
    assert poison.attempts == 5
    assert poison.messages == []


async def test_bus_unsubscribe_stops_delivery(bus: MessageBus) -> None:
    subject = unique_subject("stop")
    got = Collector()
    sub = await bus.subscribe(subject, got)
    await bus.publish(subject, b"1")
    await wait_for(lambda: len(got.messages) == 1)
    await sub.unsubscribe()
    await bus.publish(subject, b"2")
    await asyncio.sleep(0.2)
    assert got.payloads == [b"1"]


async def test_bus_rejects_wildcard_publish(bus: MessageBus) -> None:
    with pytest.raises(ValueError):
        await bus.publish(unique_subject("*"), b"x")
    with pytest.raises(ValueError):
        await bus.publish(unique_subject("a..b"), b"x")


async def test_bus_close_waits_for_in_flight_handlers(bus_url: str | None) -> None:
    b = make_bus(bus_url)
    if isinstance(b, NatsBus):
        await b.connect()
    subject = unique_subject("slow")
    started, finished = asyncio.Event(), asyncio.Event()

    async def slow(msg: BusMessage) -> None:
        started.set()
        await asyncio.sleep(0.3)
        finished.set()

    await b.subscribe(subject, slow)
    await b.publish(subject, b"x")
    await asyncio.wait_for(started.wait(), 10)
    await b.close()
    assert finished.is_set()
    assert not await b.ping()
    with pytest.raises(RuntimeError):
        await b.publish(subject, b"after close")


@pytest.mark.backends
async def test_nats_queue_group_across_connections(nats_url: str) -> None:
    """Two connections stand for two processes sharing one durable consumer."""
    a, b = make_bus(nats_url), make_bus(nats_url)
    assert isinstance(a, NatsBus) and isinstance(b, NatsBus)
    await a.connect()
    await b.connect()
    try:
        subject = unique_subject("shared")
        wa, wb = Collector(), Collector()
        await a.subscribe(subject, wa, queue="svc")
        await b.subscribe(subject, wb, queue="svc")
        sent = [str(i).encode() for i in range(60)]
        for payload in sent:
            await a.publish(subject, payload)
        await wait_for(lambda: len(wa.messages) + len(wb.messages) >= 60)
        await asyncio.sleep(0.2)
        assert sorted(wa.payloads + wb.payloads) == sorted(sent)
        assert wa.messages and wb.messages
    finally:
        await a.close()
        await b.close()


@pytest.mark.backends
async def test_nats_durable_queue_catches_up_after_restart(nats_url: str) -> None:
    subject = unique_subject("durable")
    first = make_bus(nats_url)
    assert isinstance(first, NatsBus)
    await first.connect()
    got = Collector()
    await first.subscribe(subject, got, queue="billing")
    await first.publish(subject, b"before")
    await wait_for(lambda: len(got.messages) == 1)
    await first.close()  # every member of the group is gone...

    publisher = make_bus(nats_url)
    assert isinstance(publisher, NatsBus)
    await publisher.connect()
    try:
        for i in range(3):
            await publisher.publish(subject, f"while-down-{i}".encode())
        # ...and a restarted member resumes where the group left off.
        later = Collector()
        await publisher.subscribe(subject, later, queue="billing")
        await wait_for(lambda: len(later.messages) == 3)
        assert sorted(later.payloads) == [b"while-down-0", b"while-down-1", b"while-down-2"]
    finally:
        await publisher.close()


@pytest.mark.backends
async def test_nats_subject_outside_stream_is_refused(nats_url: str) -> None:
    b = NatsBus(nats_url)
    await b.connect()
    try:
        with pytest.raises(ValueError, match="outside the JetStream stream"):
            await b.publish("unrelated.subject", b"x")
        with pytest.raises(ValueError, match="outside the JetStream stream"):
            await b.subscribe("unrelated.>", Collector())
    finally:
        await b.close()


def test_nats_bus_refuses_stream_subjects_that_capture_the_api() -> None:
    for bad in ((">",), ("*.x",), ("$JS.>",), ("_INBOX.>",)):
        with pytest.raises(ValueError):
            NatsBus("nats://127.0.0.1:1", subjects=bad)


def test_subject_matching() -> None:
    assert subject_matches("a.b", "a.b")
    assert not subject_matches("a.b", "a.b.c")
    assert subject_matches("a.*", "a.b")
    assert not subject_matches("a.*", "a.b.c")
    assert subject_matches("a.>", "a.b.c")
    assert not subject_matches("a.>", "a")
    assert subject_matches("*.b.>", "x.b.y")
    assert pattern_covers("a.>", "a.*.c")
    assert pattern_covers("a.>", "a.b.>")
    assert not pattern_covers("a.>", "a")
    assert not pattern_covers("a.*", "a.>")
    assert pattern_covers("a.*", "a.b")
    assert not pattern_covers("a.b", "a.*")
    for bad in ("", "a..b", "a.>.b", "a.b*", " a"):
        with pytest.raises(ValueError):
            subject_matches(bad, "a.b")


async def test_in_process_queue_group_round_robin() -> None:
    bus = InProcessBus()
    members = [Collector(), Collector(), Collector()]
    for m in members:
        await bus.subscribe("rr.x", m, queue="q")
    for i in range(9):
        await bus.publish("rr.x", str(i).encode())
    await bus.close()
    assert [len(m.messages) for m in members] == [3, 3, 3]


async def test_open_message_bus_urls() -> None:
    for url in (None, "", "memory://"):
        b = await open_message_bus(url)
        assert isinstance(b, InProcessBus)
        await b.close()
    for bad in ("redis://h:1", "localhost:4222", "http://u:secret@h"):
        with pytest.raises(ValueError, match="NATS_URL") as info:
            await open_message_bus(bad)
        assert "secret" not in str(info.value)


@pytest.mark.backends
async def test_open_message_bus_nats(nats_url: str) -> None:
    b = await open_message_bus(nats_url)
    try:
        assert isinstance(b, NatsBus)
        assert await b.ping()
    finally:
        await b.close()


# --------------------------------------------------------------------------- analytics


@pytest.fixture
async def chdb_store(tmp_path: Path) -> AsyncIterator[ChdbAnalyticsStore]:
    store = ChdbAnalyticsStore(tmp_path / "chdb")
    await store.wait_open()
    yield store
    await store.close()


EVENTS_DDL = """
CREATE TABLE events (
    id UInt64,
    tenant LowCardinality(String),
    name String,
    ts DateTime,
    ts_ms DateTime64(3),
    day Date,
    price Decimal(18, 4),
    score Float64,
    tags Array(String),
    uid UUID,
    ok Bool,
    maybe Nullable(Int32),
    big Int64
) ENGINE = MergeTree ORDER BY (tenant, id)
"""
EVENT_COLUMNS = [
    "id", "tenant", "name", "ts", "ts_ms", "day", "price", "score",
    "tags", "uid", "ok", "maybe", "big",
]  # fmt: skip


def event_row(i: int) -> list[Any]:
    return [
        i,
        f"tenant-{i % 3}",
        f"name {i} 'quoted' \"double\" back\\slash\nnewline ünïcødé",
        dt.datetime(2024, 5, 1, 12, 0, 0) + dt.timedelta(seconds=i),
        dt.datetime(2024, 5, 1, 12, 0, 0, 123000) + dt.timedelta(seconds=i),
        dt.date(2024, 5, 1) + dt.timedelta(days=i % 30),
        decimal.Decimal("12.3456") + i,
        i * 0.5,
        [f"t{i % 4}", "x'y"],
        uuid.UUID(int=i + 1),
        i % 2 == 0,
        None if i % 3 else -i,
        -(2**62) + i,
    ]


async def test_chdb_insert_10k_and_query(chdb_store: ChdbAnalyticsStore) -> None:
    await chdb_store.execute(EVENTS_DDL)
    rows = [event_row(i) for i in range(10_000)]
    started = time.perf_counter()
    await chdb_store.insert("events", EVENT_COLUMNS, rows)
    elapsed = time.perf_counter() - started
    assert elapsed < 10, f"10k-row insert took {elapsed:.2f}s"

    assert await chdb_store.query("SELECT count() FROM events") == [(10_000,)]
    assert await chdb_store.query("SELECT sum(id), sum(price) FROM events") == [
        (sum(range(10_000)), sum(decimal.Decimal("12.3456") + i for i in range(10_000)))
    ]
    by_tenant = await chdb_store.query(
        "SELECT tenant, count() FROM events GROUP BY tenant ORDER BY tenant"
    )
    assert by_tenant == [("tenant-0", 3334), ("tenant-1", 3333), ("tenant-2", 3333)]
    assert await chdb_store.query("SELECT countIf(maybe IS NULL) FROM events") == [(6666,)]


async def test_chdb_types_survive(chdb_store: ChdbAnalyticsStore) -> None:
    await chdb_store.execute(EVENTS_DDL)
    originals = [event_row(i) for i in (0, 1, 7)]
    await chdb_store.insert("events", EVENT_COLUMNS, originals)
    got = await chdb_store.query(f"SELECT {', '.join(EVENT_COLUMNS)} FROM events ORDER BY id")
    assert got == [tuple(row) for row in originals]
    first = got[0]
    assert [type(v) for v in first] == [
        int, str, str, dt.datetime, dt.datetime, dt.date, decimal.Decimal, float,
        list, uuid.UUID, bool, int, int,
    ]  # fmt: skip
    assert got[1][11] is None

    extra = await chdb_store.query(
        "SELECT toUInt64(18446744073709551615),"
        " toInt128('-170141183460469231731687303715884105728'), nan, inf, (1, 'a'),"
        " map('k', 2), toDateTime('2024-01-02 03:04:05', 'Europe/Paris'),"
        " CAST(NULL, 'Nullable(String)'), [[1, 2], [3]]"
    )
    u64, i128, nan, inf, tup, mapping, paris, null, nested = extra[0]
    assert u64 == 2**64 - 1 and i128 == -(2**127)
    assert nan != nan and inf == float("inf")
    assert tup == (1, "a") and mapping == {"k": 2} and null is None and nested == [[1, 2], [3]]
    assert paris.utcoffset() == dt.timedelta(hours=1) and paris.hour == 3


async def test_chdb_errors_and_empty_results(chdb_store: ChdbAnalyticsStore) -> None:
    with pytest.raises(RuntimeError, match="UNKNOWN_IDENTIFIER"):
        await chdb_store.query("SELECT no_such_column")
    await chdb_store.execute("CREATE TABLE e (a Int32) ENGINE = MergeTree ORDER BY a")
    assert await chdb_store.query("SELECT a FROM e") == []
    await chdb_store.insert("e", ["a"], [])  # empty batch is a no-op
    await chdb_store.insert("e", ["a"], ((1,), (2,)))  # any sequence of sequences
    await chdb_store.insert("e", ["a"], [range(3, 4)])
    assert await chdb_store.query("SELECT a FROM e ORDER BY a") == [(1,), (2,), (3,)]
    assert await chdb_store.ping()


async def test_chdb_does_not_block_event_loop(chdb_store: ChdbAnalyticsStore) -> None:
    gaps: list[float] = []

    async def ticker() -> None:
        last = time.perf_counter()
        while True:
            await asyncio.sleep(0.005)
            now = time.perf_counter()
            gaps.append(now - last)
            last = now

    task = asyncio.create_task(ticker())
    started = time.perf_counter()
    await chdb_store.query("SELECT sum(cityHash64(number)) FROM numbers(100000000)")
    elapsed = time.perf_counter() - started
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert gaps, "the event loop ran while chDB worked"
    assert max(gaps) < max(0.25, elapsed / 2)


async def test_chdb_persists_and_guards_one_path_per_process(tmp_path: Path) -> None:
    path_a, path_b = tmp_path / "a", tmp_path / "b"
    a = ChdbAnalyticsStore(path_a)
    await a.execute("CREATE TABLE t (x UInt8) ENGINE = MergeTree ORDER BY x")
    await a.insert("t", ["x"], [[1], [2]])
    also_a = ChdbAnalyticsStore(path_a)  # the same path may be opened again
    assert await also_a.query("SELECT sum(x) FROM t") == [(3,)]
    with pytest.raises(RuntimeError, match="one database path per process"):
        ChdbAnalyticsStore(path_b)
    await also_a.close()
    with pytest.raises(RuntimeError, match="one database path per process"):
        ChdbAnalyticsStore(path_b)  # `a` still holds the engine
    await a.close()
    with pytest.raises(RuntimeError, match="closed"):
        await a.query("SELECT 1")

    b = ChdbAnalyticsStore(path_b)  # free now
    assert await b.query("SELECT 42") == [(42,)]
    await b.close()

    reopened = ChdbAnalyticsStore(path_a)
    assert await reopened.query("SELECT x FROM t ORDER BY x") == [(1,), (2,)]
    await reopened.close()


async def test_open_analytics_store_urls(tmp_path: Path) -> None:
    store = await open_analytics_store(None, tmp_path)
    assert isinstance(store, ChdbAnalyticsStore) and store.path == tmp_path / "analytics"
    assert await store.ping()
    await store.close()

    store = await open_analytics_store(f"chdb://{tmp_path / 'explicit'}", tmp_path)
    assert isinstance(store, ChdbAnalyticsStore) and store.path == tmp_path / "explicit"
    await store.close()

    for bad in ("redis://h", "ftp://u:secret@h", "localhost:8123", "chdb://"):
        with pytest.raises(ValueError, match="CLICKHOUSE_URL") as info:
            await open_analytics_store(bad, tmp_path)
        assert "secret" not in str(info.value)


async def test_clickhouse_server_store_url_parsing() -> None:
    assert parse_clickhouse_url("https://alice:p%40ss@ch.example:9443/analytics?max_threads=2") == {
        "host": "ch.example",
        "port": 9443,
        "interface": "https",
        "secure": True,
        "username": "alice",
        "password": "p@ss",
        "database": "analytics",
        "settings": {"max_threads": "2"},
    }
    plain = parse_clickhouse_url("clickhouse://db-host")
    assert plain["port"] == 8123 and plain["interface"] == "http" and plain["username"] == "default"
    assert "database" not in plain
    with pytest.raises(ValueError):
        parse_clickhouse_url("http:///nohost")
    store = ClickHouseServerStore("http://127.0.0.1:1/db")
    assert not await store.ping()  # not connected yet
    with pytest.raises(RuntimeError, match="not connected"):
        await store.query("SELECT 1")
    await store.close()


def test_quote_identifier() -> None:
    assert quote_identifier("events") == "`events`"
    assert quote_identifier("db.events") == "`db`.`events`"
    assert quote_identifier("we`ird\\") == "`we\\`ird\\\\`"


# --------------------------------------------------------------------------- postgres


@pytest.mark.backends
async def test_postgres_fixture_gives_a_fresh_database(
    postgres_url: str, postgres_url_fresh: str
) -> None:
    from sqlalchemy import text
    from sqlalchemy.ext.asyncio import create_async_engine

    assert postgres_url.endswith("/campaign_express_test")
    assert postgres_url_fresh != postgres_url
    engine = create_async_engine(postgres_url_fresh)
    try:
        async with engine.begin() as conn:
            tables = await conn.execute(
                text("SELECT count(*) FROM information_schema.tables WHERE table_schema='public'")
            )
            assert tables.scalar_one() == 0
            await conn.execute(text("CREATE TABLE t (id serial PRIMARY KEY, v text)"))
            await conn.execute(text("INSERT INTO t (v) VALUES ('a'), ('b')"))
            assert (await conn.execute(text("SELECT count(*) FROM t"))).scalar_one() == 2
    finally:
        await engine.dispose()


def _threads() -> list[tuple[int, str, int]]:
    """(tid, name, nice) of every thread of this process."""
    out = []
    for task in Path("/proc/self/task").iterdir():
        try:
            name = (task / "comm").read_text().strip()
            out.append((int(task.name), name, os.getpriority(os.PRIO_PROCESS, int(task.name))))
        except OSError:
            continue  # ended meanwhile
    return out


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="per-thread nice is Linux's")
async def test_chdb_engine_threads_run_at_background_priority(
    chdb_store: ChdbAnalyticsStore,
) -> None:
    await chdb_store.execute(EVENTS_DDL)
    await chdb_store.insert("events", EVENT_COLUMNS, [event_row(i) for i in range(2_000)])
    await chdb_store.query("SELECT count() FROM events")
    own_nice = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
    threads = _threads()
    engine = [(name, nice) for _, name, nice in threads if is_engine_thread(name)]
    assert any(name in ("ThreadPool", "MergeMutate") for name, _ in engine), threads
    assert all(nice >= BACKGROUND_NICE for _, nice in engine), engine
    # the calling (event loop) thread keeps its priority; the worker that
    # drives the engine runs at background priority too
    assert own_nice < BACKGROUND_NICE
    worker_tid, worker_nice = await chdb_store._run(
        lambda: (tid := threading.get_native_id(), os.getpriority(os.PRIO_PROCESS, tid))
    )
    assert worker_nice >= BACKGROUND_NICE
    python_tids = {t.native_id for t in threading.enumerate()} - {worker_tid}
    others = [(name, nice) for tid, name, nice in threads if tid in python_tids]
    assert others and all(nice == own_nice for _, nice in others), others


def test_engine_thread_names() -> None:
    for name in ("ThreadPool", "MergeMutate", "BgSchPool", "QueryPipelineEx", "jemalloc_bg_thd"):
        assert is_engine_thread(name), name
    for name in ("python", "event_engine", "grpc_global_tim", "lifeguard", "Pool", "Thread"):
        assert not is_engine_thread(name), name
