"""Pipeline step 4: frequency caps per user per hour and per local day, on the
in-process store and on a real Redis server (tests/backend_servers.py)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from services.backends.interfaces import KeyValueStore
from services.backends.kv import MemoryKeyValueStore, open_key_value_store
from services.bidding.caps import FrequencyCaps, cap_reason, day_bucket, hour_bucket


def at(text: str, tz: str = "UTC") -> int:
    """Microseconds since the epoch of a local wall-clock time."""
    return int(datetime.fromisoformat(text).replace(tzinfo=ZoneInfo(tz)).timestamp() * 1_000_000)


class Recording:
    def __init__(self, inner: KeyValueStore) -> None:
        self.inner = inner
        self.get_many_calls: list[list[str]] = []
        self.incr_many_calls: list[list[tuple[str, int, float | None]]] = []

    async def get_many(self, keys: Sequence[str]) -> list[bytes | None]:
        self.get_many_calls.append(list(keys))
        return await self.inner.get_many(keys)

    async def incr_many(self, items: Sequence[tuple[str, int, float | None]]) -> list[int]:
        self.incr_many_calls.append(list(items))
        return await self.inner.incr_many(items)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


@pytest.fixture(params=["memory", pytest.param("redis", marks=pytest.mark.backends)])
def kv_url(request: pytest.FixtureRequest) -> str | None:
    if request.param == "memory":
        return None
    url: str = request.getfixturevalue("redis_url_flushed")
    return url


@pytest.fixture
async def kv(kv_url: str | None) -> AsyncIterator[KeyValueStore]:
    store = open_key_value_store(kv_url)
    yield store
    await store.close()


NOW = at("2026-06-15T10:20:00")


async def test_day_cap_reached_after_max_impressions(kv: KeyValueStore) -> None:
    caps = FrequencyCaps(kv)
    for expected in (1, 2, 3):
        assert await caps.is_capped("u1", "c1", [(3, "DAY")], NOW, "UTC") is None
        assert await caps.record_impression("u1", "c1", NOW, "UTC") == (expected, expected)
    assert await caps.is_capped("u1", "c1", [(3, "DAY")], NOW, "UTC") == (
        "frequency cap 3/DAY reached"
    )
    assert await caps.is_capped("u1", "c1", [(4, "DAY")], NOW, "UTC") is None
    # other users and other campaigns are counted apart
    assert await caps.is_capped("u2", "c1", [(3, "DAY")], NOW, "UTC") is None
    assert await caps.is_capped("u1", "c2", [(3, "DAY")], NOW, "UTC") is None


async def test_hour_window_is_the_clock_hour(kv: KeyValueStore) -> None:
    caps = FrequencyCaps(kv)
    both = [(2, "HOUR"), (5, "DAY")]
    for _ in range(2):
        await caps.record_impression("u1", "c1", at("2026-06-15T10:59:59"), "UTC")
    assert await caps.is_capped("u1", "c1", both, at("2026-06-15T10:59:59"), "UTC") == (
        "frequency cap 2/HOUR reached"
    )
    next_hour = at("2026-06-15T11:00:00")
    assert await caps.is_capped("u1", "c1", both, next_hour, "UTC") is None
    for _ in range(3):
        await caps.record_impression("u1", "c1", next_hour, "UTC")
    # 3 this hour and 5 today: both reached, the first in the given order is named
    reason = await caps.is_capped("u1", "c1", both, next_hour, "UTC")
    assert reason == "frequency cap 2/HOUR reached"  # the first cap reached, in order
    later = at("2026-06-15T15:00:00")
    assert await caps.is_capped("u1", "c1", both, later, "UTC") == "frequency cap 5/DAY reached"


async def test_day_window_is_the_campaign_local_day(kv: KeyValueStore) -> None:
    caps = FrequencyCaps(kv)
    la = "America/Los_Angeles"
    late = at("2026-06-15T23:30:00", la)  # 06:30 UTC on the 16th
    early = at("2026-06-16T00:30:00", la)  # 07:30 UTC on the 16th
    await caps.record_impression("u1", "local", late, la)
    assert await caps.record_impression("u1", "local", early, la) == (1, 1)  # a new local day
    await caps.record_impression("u1", "utc", late, "UTC")
    assert await caps.record_impression("u1", "utc", early, "UTC") == (1, 2)  # same UTC day
    # a half-hour zone: the local day starts at 18:30 UTC
    kolkata = "Asia/Kolkata"
    await caps.record_impression("u1", "ist", at("2026-06-15T18:29:59"), kolkata)
    assert await caps.record_impression("u1", "ist", at("2026-06-15T18:30:00"), kolkata) == (
        2,
        1,
    )


def test_buckets_and_what_is_left_of_them() -> None:
    assert hour_bucket(at("2026-06-15T10:20:00")) == (494_866, 2400.0)
    assert day_bucket(at("2026-06-15T10:20:00"), "UTC") == ("20260615", 13 * 3600 + 2400.0)
    ny = "America/New_York"
    # DST: the local day is 23 hours long in spring and 25 in autumn
    assert day_bucket(at("2026-03-08T00:00:00", ny), ny) == ("20260308", 23 * 3600.0)
    assert day_bucket(at("2026-11-01T00:00:00", ny), ny) == ("20261101", 25 * 3600.0)
    assert day_bucket(at("2026-11-01T23:59:00", ny), ny) == ("20261101", 60.0)
    # an unknown time zone counts as UTC
    assert day_bucket(NOW, "Mars/Olympus_Mons") == day_bucket(NOW, "UTC")
    assert day_bucket(NOW, "") == day_bucket(NOW, "UTC")


async def test_keys_are_namespaced_with_a_user_hash_tag(kv: KeyValueStore) -> None:
    caps = FrequencyCaps(kv)
    await caps.record_impression("u1", "c1", NOW, "Europe/Paris")
    hour = hour_bucket(NOW)[0]
    assert caps.hour_key("u1", "c1", NOW) == f"fcap:{{u1}}:c1:h:{hour}"
    assert caps.day_key("u1", "c1", NOW, "Europe/Paris") == "fcap:{u1}:c1:d:20260615"
    assert await kv.get(f"fcap:{{u1}}:c1:h:{hour}") == b"1"
    assert await kv.get("fcap:{u1}:c1:d:20260615") == b"1"
    odd = caps.hour_key("user:{x}", "tenants/a/campaigns/b", NOW)
    assert odd.startswith("fcap:{#") and odd.count("{") == 1 and odd.count("}") == 1


async def test_counters_expire_with_their_window(kv: KeyValueStore) -> None:
    recording = Recording(kv)
    caps = FrequencyCaps(recording, slack_seconds=300)
    now = at("2026-06-15T10:20:00")
    await caps.record_impression("u1", "c1", now, "Europe/Berlin")  # 12:20 local
    [items] = recording.incr_many_calls
    assert [(ttl) for _, _, ttl in items] == [2400 + 300, (11 * 3600 + 2400) + 300]
    if not isinstance(kv, MemoryKeyValueStore):
        redis = kv._redis  # type: ignore[attr-defined]
        hour_ttl = await redis.pttl(caps.hour_key("u1", "c1", now))
        day_ttl = await redis.pttl(caps.day_key("u1", "c1", now, "Europe/Berlin"))
        assert 2_690_000 < hour_ttl <= 2_700_000
        assert 42_290_000 < day_ttl <= 42_300_000
    # the TTL is set when a window's counter is created, not extended after
    later = now + 1_000_000_000  # +1000 s, same hour
    await caps.record_impression("u1", "c1", later, "Europe/Berlin")
    if not isinstance(kv, MemoryKeyValueStore):
        assert await kv._redis.pttl(caps.hour_key("u1", "c1", now)) <= 2_700_000  # type: ignore[attr-defined]


async def test_counters_vanish_after_the_window() -> None:
    clock = [0.0]
    kv = MemoryKeyValueStore(clock=lambda: clock[0])
    caps = FrequencyCaps(kv, slack_seconds=60)
    now = at("2026-06-15T10:59:00")
    await caps.record_impression("u1", "c1", now, "UTC")
    clock[0] = 60 + 60 - 1
    assert await kv.get(caps.hour_key("u1", "c1", now)) == b"1"
    clock[0] = 60 + 60 + 1
    assert await kv.get(caps.hour_key("u1", "c1", now)) is None
    assert await kv.get(caps.day_key("u1", "c1", now, "UTC")) == b"1"


async def test_many_campaigns_are_checked_with_one_read(kv: KeyValueStore) -> None:
    recording = Recording(kv)
    caps = FrequencyCaps(recording)
    for _ in range(2):
        await caps.record_impression("u1", "hourly", NOW, "UTC")
        await caps.record_impression("u1", "daily", NOW, "Asia/Tokyo")
        await caps.record_impression("u1", "roomy", NOW, "UTC")
    campaigns = [
        ("hourly", [(2, "HOUR")], "UTC"),
        ("daily", [(10, "HOUR"), (2, "DAY")], "Asia/Tokyo"),
        ("roomy", [(3, "HOUR"), (4, "DAY")], "UTC"),
        ("uncapped", [], "UTC"),
        ("zero", [(0, "DAY")], "UTC"),
        ("fresh", [(1, "CAP_WINDOW_DAY")], "UTC"),
    ]
    capped = await caps.capped_campaigns("u1", campaigns, NOW)
    assert capped == {"hourly": cap_reason(2, "HOUR"), "daily": cap_reason(2, "DAY")}
    assert len(recording.get_many_calls) == 1
    [keys] = recording.get_many_calls
    assert len(keys) == 1 + 2 + 2 + 1  # only the windows that are capped
    checks = await caps.check("u1", campaigns, NOW)
    assert set(checks) == {"hourly", "daily", "roomy", "fresh"}
    assert checks["roomy"].hour_count == 2 and checks["roomy"].day_count == 2
    assert checks["roomy"].utilization == pytest.approx(2 / 3)
    assert checks["daily"].utilization == 1.0 and checks["fresh"].utilization == 0.0


async def test_anonymous_users_are_never_capped_nor_stored(kv: KeyValueStore) -> None:
    recording = Recording(kv)
    caps = FrequencyCaps(recording)
    assert await caps.record_impression("", "c1", NOW, "UTC") == (0, 0)
    assert await caps.is_capped("", "c1", [(1, "DAY")], NOW, "UTC") is None
    assert recording.get_many_calls == [] and recording.incr_many_calls == []


async def test_bad_windows_are_refused(kv: KeyValueStore) -> None:
    caps = FrequencyCaps(kv)
    with pytest.raises(ValueError, match="HOUR or DAY"):
        await caps.is_capped("u1", "c1", [(3, "WEEK")], NOW, "UTC")
    assert await caps.is_capped("u1", "c1", [(3, "hour")], NOW, "UTC") is None


async def test_concurrent_impressions_are_all_counted(
    kv: KeyValueStore, kv_url: str | None
) -> None:
    # On Redis, two clients stand for two processes sharing the counters.
    other = kv if kv_url is None else open_key_value_store(kv_url)
    try:
        stores = [FrequencyCaps(kv), FrequencyCaps(other)]
        results = await asyncio.gather(
            *(stores[i % 2].record_impression("u1", "c1", NOW, "UTC") for i in range(200))
        )
        assert sorted(h for h, _ in results) == list(range(1, 201))
        assert sorted(d for _, d in results) == list(range(1, 201))
        checks = await stores[0].check("u1", [("c1", [(200, "HOUR"), (201, "DAY")], "UTC")], NOW)
        assert (checks["c1"].hour_count, checks["c1"].day_count) == (200, 200)
        assert checks["c1"].reason == cap_reason(200, "HOUR")
    finally:
        if other is not kv:
            await other.close()


# --------------------------------------------------------------------------- incr_many


async def test_incr_many_moves_every_counter_in_one_step(kv: KeyValueStore) -> None:
    assert await kv.incr_many([]) == []
    assert await kv.incr_many([("a", 1, None), ("b", 5, 60.0), ("a", 2, None)]) == [1, 5, 3]
    assert await kv.get("a") == b"3" and await kv.get("b") == b"5"
    assert await kv.incr_many([("b", -1, 1.0)]) == [4]  # TTL only set on creation
    if not isinstance(kv, MemoryKeyValueStore):
        assert await kv._redis.pttl("b") > 50_000  # type: ignore[attr-defined]
        assert await kv._redis.pttl("a") == -1  # type: ignore[attr-defined]
    with pytest.raises(ValueError):
        await kv.incr_many([("c", 1, 0.0)])


async def test_incr_many_on_a_non_integer_raises_after_the_others_moved(
    kv: KeyValueStore,
) -> None:
    await kv.set("text", b"hello")
    with pytest.raises(ValueError):
        await kv.incr_many([("n1", 1, 60.0), ("text", 1, None), ("n2", 1, None)])
    assert await kv.get("n1") == b"1" and await kv.get("n2") == b"1"
    assert await kv.get("text") == b"hello"
