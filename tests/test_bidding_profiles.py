"""Pipeline step 3: the two-tier profile store, on the in-process store and on
a real Redis server (tests/backend_servers.py)."""

from __future__ import annotations

import asyncio
import dataclasses
import math
from collections.abc import AsyncIterator, Sequence
from typing import Any

import numpy as np
import pytest
from prometheus_client import CollectorRegistry

from inference.features import BidContext, build_features
from services.backends.interfaces import KeyValueStore
from services.backends.kv import MemoryKeyValueStore, open_key_value_store
from services.bidding.profiles import (
    LoyaltyState,
    ProfileStore,
    UserProfile,
    default_profile,
    profile_key,
)

DAY_US = 86_400_000_000
HOUR_US = 3_600_000_000


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Recording:
    """A KeyValueStore wrapper that counts calls (and can fail or stall them)."""

    def __init__(self, inner: KeyValueStore) -> None:
        self.inner = inner
        self.get_many_calls: list[list[str]] = []
        self.sets: list[tuple[str, float | None]] = []
        self.fail: BaseException | None = None
        self.gate: asyncio.Event | None = None
        self.read_done = asyncio.Event()

    async def get_many(self, keys: Sequence[str]) -> list[bytes | None]:
        self.get_many_calls.append(list(keys))
        if self.fail is not None:
            raise self.fail
        gate = self.gate
        values = await self.inner.get_many(keys)
        self.read_done.set()
        if gate is not None:
            await gate.wait()
        return values

    async def set(self, key: str, value: bytes, ttl_seconds: float | None = None) -> None:
        self.sets.append((key, ttl_seconds))
        if self.fail is not None:
            raise self.fail
        await self.inner.set(key, value, ttl_seconds)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


@pytest.fixture(params=["memory", pytest.param("redis", marks=pytest.mark.backends)])
async def kv(request: pytest.FixtureRequest) -> AsyncIterator[KeyValueStore]:
    url = None if request.param == "memory" else request.getfixturevalue("redis_url_flushed")
    store = open_key_value_store(url)
    yield store
    await store.close()


def sample(user_id: str = "u1", **overrides: Any) -> UserProfile:
    fields: dict[str, Any] = {
        "interests": [0.5, -1.25, 3.0, 0.0, 2.5],
        "segments": [0, 7, 63],
        "loyalty": LoyaltyState(
            tier="GOLD",
            stars_balance=740.0,
            tier_progress=0.25,
            earn_rate=1.2,
            last_redeem_us=10 * DAY_US,
            birthday_eligible=True,
            preferred_channel="PUSH",
            lifetime_stars=3100.0,
        ),
        "last_seen_us": 20 * DAY_US,
        "version": 4,
    }
    fields.update(overrides)
    return UserProfile(user_id, **fields)


# --------------------------------------------------------------------------- the record


def test_serialisation_round_trip() -> None:
    profile = sample()
    data = profile.to_bytes()
    assert len(data) == 69 + 4 * 5
    assert UserProfile.from_bytes("u1", data) == profile
    full = sample(interests=[i / 7 for i in range(64)], segments=range(64))
    back = UserProfile.from_bytes("u1", full.to_bytes())
    assert len(full.to_bytes()) == 69 + 256
    # interests are stored as float32, the precision the model uses
    assert np.array_equal(np.float32(back.interests), np.float32(full.interests))
    assert back.segments == tuple(range(64))
    assert UserProfile.from_bytes("x", default_profile("x").to_bytes()) == default_profile("x")
    # every tier keeps its name; a record from before the four tiers (its
    # tier byte 0, then GREEN) reads as BASIC, 1 and 2 as GOLD and RESERVE
    for tier in ("BASIC", "SILVER", "GOLD", "RESERVE"):
        kept = dataclasses.replace(profile, loyalty=LoyaltyState(tier=tier))
        assert UserProfile.from_bytes("u1", kept.to_bytes()).loyalty.tier == tier
    data = bytearray(dataclasses.replace(profile, loyalty=LoyaltyState(tier="GOLD")).to_bytes())
    assert data[1] == 1
    data[1] = 0
    assert UserProfile.from_bytes("u1", bytes(data)).loyalty.tier == "BASIC"
    never = sample(loyalty=LoyaltyState(last_redeem_us=None))
    assert UserProfile.from_bytes("u1", never.to_bytes()).loyalty.last_redeem_us is None


@pytest.mark.parametrize(
    "data",
    [b"", b"\x01", b"\x02" + bytes(68), sample().to_bytes()[:-1], sample().to_bytes() + b"x"],
)
def test_from_bytes_rejects_anything_else(data: bytes) -> None:
    with pytest.raises(ValueError):
        UserProfile.from_bytes("u1", data)


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"interests": [0.0] * 65}, "interests"),
        ({"interests": [math.nan]}, "interests[0]"),
        ({"segments": [64]}, "segments[0]"),
        ({"segments": [-1]}, "segments[0]"),
        ({"loyalty": LoyaltyState(tier="PLATINUM")}, "loyalty.tier"),
        ({"loyalty": LoyaltyState(preferred_channel="FAX")}, "loyalty.preferred_channel"),
        ({"loyalty": LoyaltyState(stars_balance=math.inf)}, "loyalty.stars_balance"),
    ],
)
def test_validate_names_the_field(overrides: dict[str, Any], field: str) -> None:
    with pytest.raises(ValueError, match=rf"^{field.replace('[', '.').replace(']', '.')}"):
        sample(**overrides).validate()


def test_profile_is_immutable_and_sequences_are_tuples() -> None:
    profile = sample()
    assert profile.interests == (0.5, -1.25, 3.0, 0.0, 2.5)
    assert profile.segments == (0, 7, 63)
    with pytest.raises(AttributeError):
        profile.version = 5  # type: ignore[misc]


def test_to_feature_profile_feeds_the_feature_builder() -> None:
    profile = sample()
    now = 40 * DAY_US
    features = profile.to_feature_profile(BidContext(device="MOBILE", position=1), now_us=now)
    assert features.loyalty.tier == "GOLD"
    assert features.loyalty.days_since_redeem == pytest.approx(30.0)
    assert features.context.hours_since_last_visit == pytest.approx(20 * 24.0)
    assert features.context.device == "MOBILE"
    row = build_features(features, ["offer-1"])[0]
    assert row[128] == pytest.approx(0.5)  # Gold
    assert row[129] == pytest.approx(740 / 5000)
    assert row[132] == pytest.approx(1 / (1 + 30 / 30))
    assert row[133] == 1.0
    assert row[134] == pytest.approx(2 / 5)  # PUSH
    assert row[136] == pytest.approx(1 / (1 + 480 / 24))
    assert list(np.flatnonzero(row[64:128])) == [0, 7, 63]
    assert row[:5] == pytest.approx([0.5, -1.25, 3.0, 0.0, 2.5])
    # the caller's recency wins; a never-seen user has none
    explicit = profile.to_feature_profile(BidContext(hours_since_last_visit=2.0), now_us=now)
    assert explicit.context.hours_since_last_visit == 2.0
    fresh = default_profile("new").to_feature_profile(BidContext(), now_us=now)
    assert fresh.context.hours_since_last_visit is None
    assert fresh.loyalty.days_since_redeem is None and fresh.loyalty.tier == "BASIC"
    assert build_features(fresh, ["o"]).shape == (1, 256)


# --------------------------------------------------------------------------- the store


async def test_unknown_users_get_the_default_profile(kv: KeyValueStore) -> None:
    store = ProfileStore(kv)
    got = await store.get_many(["a", "b"])
    assert got == {"a": default_profile("a"), "b": default_profile("b")}
    assert got["a"].loyalty.tier == "BASIC" and got["a"].interests == ()
    assert store.stats().defaults == 2


async def test_put_is_write_through_and_shared_through_l2(kv: KeyValueStore) -> None:
    writer, reader = ProfileStore(kv), ProfileStore(kv)  # two processes, one L2
    profile = sample()
    await writer.put(profile)
    assert await kv.get(profile_key("u1")) == profile.to_bytes()
    assert await writer.get("u1") == profile
    assert writer.stats().l1_hits == 1 and writer.stats().l1_misses == 0
    assert await reader.get("u1") == profile
    assert (reader.stats().l1_misses, reader.stats().l2_hits) == (1, 1)
    assert await reader.get("u1") == profile
    assert reader.stats().l1_hits == 1


async def test_l2_misses_of_a_call_are_one_batched_read(kv: KeyValueStore) -> None:
    recording = Recording(kv)
    store = ProfileStore(recording)
    for uid in ("a", "c", "e"):
        await ProfileStore(kv).put(sample(uid))
    await store.get("a")
    recording.get_many_calls.clear()
    got = await store.get_many(["a", "b", "c", "d", "e", "c", ""])
    assert recording.get_many_calls == [[profile_key(u) for u in ("b", "c", "d", "e")]]
    assert set(got) == {"a", "b", "c", "d", "e", ""}
    assert got["c"] == sample("c") and got["b"] == default_profile("b")
    assert got[""] == default_profile("")
    s = store.stats()
    assert (s.l1_hits, s.l2_hits, s.defaults, s.l1_misses, s.l2_misses) == (1, 3, 2, 5, 2)


async def test_ttls_l2_hour_and_l1_half_of_it(kv: KeyValueStore) -> None:
    clock = Clock()
    recording = Recording(kv)
    store = ProfileStore(recording, clock=clock)
    assert (store.l2_ttl_seconds, store.l1_ttl_seconds) == (3600.0, 1800.0)
    await store.put(sample())
    assert recording.sets == [(profile_key("u1"), 3600.0)]
    if not isinstance(kv, MemoryKeyValueStore):
        ttl_ms = await kv._redis.pttl(profile_key("u1"))  # type: ignore[attr-defined]
        assert 3_590_000 < ttl_ms <= 3_600_000
    recording.get_many_calls.clear()
    clock.now += 1799
    await store.get("u1")
    assert recording.get_many_calls == []
    clock.now += 2  # past L1's TTL: back to L2
    assert await store.get("u1") == sample()
    assert len(recording.get_many_calls) == 1
    custom = ProfileStore(kv, l2_ttl_seconds=600)
    assert custom.l1_ttl_seconds == 300


async def test_negative_caching_is_short(kv: KeyValueStore) -> None:
    clock = Clock()
    recording = Recording(kv)
    store = ProfileStore(recording, clock=clock, negative_ttl_seconds=30)
    assert await store.get("new") == default_profile("new")
    await store.get("new")
    assert len(recording.get_many_calls) == 1  # the miss was remembered
    await ProfileStore(kv).put(sample("new"))  # another process creates it
    clock.now += 29
    assert await store.get("new") == default_profile("new")
    clock.now += 2
    assert await store.get("new") == sample("new")
    assert len(recording.get_many_calls) == 2
    # without negative caching every read goes to L2
    plain = Recording(kv)
    uncached = ProfileStore(plain, negative_ttl_seconds=0)
    for _ in range(3):
        await uncached.get("nobody")
    assert len(plain.get_many_calls) == 3


async def test_own_put_replaces_a_remembered_miss(kv: KeyValueStore) -> None:
    store = ProfileStore(kv)
    await store.get("u1")
    await store.put(sample())
    assert await store.get("u1") == sample()


async def test_invalidate_forgets_both_tiers(kv: KeyValueStore) -> None:
    store = ProfileStore(kv)
    await store.put(sample())
    await store.invalidate("u1")
    assert await kv.get(profile_key("u1")) is None
    assert await store.get("u1") == default_profile("u1")
    other = ProfileStore(kv)
    await store.put(sample())
    await other.get("u1")
    await store.put(sample(version=9))
    assert (await other.get("u1")).version == 4  # other's L1 is still fresh
    other.evict_local("u1")
    assert (await other.get("u1")).version == 9


async def test_l1_is_a_bounded_lru(kv: KeyValueStore) -> None:
    recording = Recording(kv)
    store = ProfileStore(recording, l1_max_entries=3)
    for uid in "abcd":
        await store.put(sample(uid))
    assert store.l1_size() == 3
    await store.get("b")  # b is now the most recent; c is the oldest
    await store.put(sample("e"))
    recording.get_many_calls.clear()
    await store.get_many(["b", "d", "e"])
    assert recording.get_many_calls == []
    await store.get("c")
    assert recording.get_many_calls == [[profile_key("c")]]
    off = Recording(kv)
    no_l1 = ProfileStore(off, l1_max_entries=0)
    await no_l1.get("a")
    await no_l1.get("a")
    assert len(off.get_many_calls) == 2 and no_l1.l1_size() == 0


async def test_consent_restricted_bids_skip_the_store(kv: KeyValueStore) -> None:
    recording = Recording(kv)
    registry = CollectorRegistry()
    store = ProfileStore(recording, metrics_registry=registry)
    await ProfileStore(kv).put(sample())
    assert await store.get("u1", personalize=False) == default_profile("u1")
    assert ProfileStore.default_profile("u1") == default_profile("u1")
    assert await store.get("") == default_profile("")
    assert recording.get_many_calls == []
    assert store.stats().lookups == 0
    for tier in ("l1", "l2", "default"):
        value = registry.get_sample_value(
            "campaign_express_profile_cache_hits_total", {"tier": tier}
        )
        assert value == 0.0


async def test_metrics_per_tier(kv: KeyValueStore) -> None:
    registry = CollectorRegistry()
    store = ProfileStore(kv, metrics_registry=registry)
    await ProfileStore(kv).put(sample("known"))
    await store.get_many(["known", "unknown"])  # l1 miss x2, l2 hit, l2 miss
    await store.get_many(["known", "unknown"])  # l1 hit, remembered miss

    def value(name: str, tier: str) -> float | None:
        return registry.get_sample_value(
            f"campaign_express_profile_cache_{name}_total", {"tier": tier}
        )

    assert value("hits", "l1") == 1
    assert value("hits", "l2") == 1
    assert value("hits", "default") == 2
    assert value("misses", "l1") == 2
    assert value("misses", "l2") == 1
    assert store.stats().hit_rate == pytest.approx(0.5)


async def test_a_slow_read_does_not_put_an_older_profile_back(kv: KeyValueStore) -> None:
    recording = Recording(kv)
    store = ProfileStore(recording)
    await ProfileStore(kv).put(sample(version=1))
    gate = recording.gate = asyncio.Event()
    slow = asyncio.create_task(store.get("u1"))  # reads version 1, then stalls
    await recording.read_done.wait()
    recording.gate = None
    await store.put(sample(version=2))  # lands while the read is in flight
    gate.set()
    assert (await slow).version == 2
    assert (await store.get("u1")).version == 2
    assert (await ProfileStore(kv).get("u1")).version == 2


async def test_l2_outage_degrades_reads_and_fails_writes(kv: KeyValueStore) -> None:
    recording = Recording(kv)
    registry = CollectorRegistry()
    store = ProfileStore(recording, metrics_registry=registry)
    await store.put(sample())
    recording.fail = ConnectionError("redis down")
    got = await store.get_many(["u1", "u2"])
    assert got == {"u1": sample(), "u2": default_profile("u2")}  # L1 still answers
    assert (
        registry.get_sample_value("campaign_express_profile_store_errors_total", {"kind": "read"})
        == 1
    )
    recording.fail = None
    assert len(recording.get_many_calls) == 1
    await store.get("u2")  # the failure was not remembered as "absent"
    assert len(recording.get_many_calls) == 2
    recording.fail = ConnectionError("redis down")
    with pytest.raises(ConnectionError):
        await store.put(sample("u3"))
    recording.fail = RuntimeError("a bug, not an outage")
    with pytest.raises(RuntimeError):
        await store.get("u4")


async def test_undecodable_stored_value_is_a_default(kv: KeyValueStore) -> None:
    registry = CollectorRegistry()
    store = ProfileStore(kv, metrics_registry=registry)
    await kv.set(profile_key("u1"), b"garbage")
    assert await store.get("u1") == default_profile("u1")
    assert (
        registry.get_sample_value("campaign_express_profile_store_errors_total", {"kind": "decode"})
        == 1
    )


async def test_put_refuses_what_it_cannot_store(kv: KeyValueStore) -> None:
    store = ProfileStore(kv)
    with pytest.raises(ValueError, match="segments"):
        await store.put(sample(segments=[64]))
    with pytest.raises(ValueError, match="user_id"):
        await store.put(sample(""))


async def test_unusual_user_ids_are_hashed_into_the_key(kv: KeyValueStore) -> None:
    store = ProfileStore(kv)
    odd = "user:{with}spaces and ünïcode " + "x" * 200
    await store.put(sample(odd))
    assert await ProfileStore(kv).get(odd) == sample(odd)
    assert profile_key(odd).startswith("profile:#")


# --------------------------------------------------------------------------- hit rate


class CountingStore(MemoryKeyValueStore):
    """Counts the keys read from the hot store and how many held a record."""

    def __init__(self) -> None:
        super().__init__()
        self.reads = self.found = 0

    async def get(self, key: str) -> bytes | None:
        value = await super().get(key)
        self.reads += 1
        self.found += value is not None
        return value

    async def get_many(self, keys: Sequence[str]) -> list[bytes | None]:
        values = await super().get_many(keys)
        self.reads += len(keys)
        self.found += sum(v is not None for v in values)
        return values


async def test_zipf_workload_hit_rate() -> None:
    """100k users with Zipf (s = 1.1) popularity, of whom 80% have a stored
    profile (the rest are unknown: negative entries), and an L1 of 20k
    entries. Measured from the outside: the store is read exactly for L1's
    misses; L2 answers exactly the reads that found a record; and L1's hit
    rate comes close to the best any 20k-entry cache can do on independent
    draws (the popularity mass of the 20k most popular users). A quick
    in-process simulation, not a timed test."""
    users = [f"user-{i:06d}" for i in range(100_000)]
    kv = CountingStore()
    record = sample().to_bytes()
    stored = {i for i in range(len(users)) if i % 5 != 4}
    for i in stored:
        await kv.set(profile_key(users[i]), record, ttl_seconds=3600)
    rng = np.random.default_rng(42)
    weights = 1.0 / np.arange(1, len(users) + 1) ** 1.1
    weights /= weights.sum()
    draws = rng.choice(len(users), size=120_000, p=weights)
    store = ProfileStore(kv, l1_max_entries=20_000)
    for i in draws[:20_000]:  # warm-up
        await store.get(users[i])
    before, reads, found = store.stats(), kv.reads, kv.found
    looked_up: list[int] = []
    for start in range(20_000, len(draws), 2):  # bids of one or two users
        pair = list(dict.fromkeys(int(i) for i in draws[start : start + 2]))
        looked_up += pair
        await store.get_many([users[i] for i in pair])
    after = store.stats()
    lookups = after.lookups - before.lookups
    assert lookups == len(looked_up)
    l1_hits = after.l1_hits - before.l1_hits
    l1_misses = after.l1_misses - before.l1_misses
    l2_hits = after.l2_hits - before.l2_hits
    assert kv.reads - reads == l1_misses  # the hot store serves exactly L1's misses
    assert l2_hits == kv.found - found  # and L2 counts what it found there
    # Stored users get their profile, unknown ones the default, from either tier.
    known = np.isin(looked_up, list(stored)).mean()
    assert abs((l1_hits + l2_hits) / lookups - known) < 1e-9
    # Without I/O: L1's profiles and its negative entries for unknown users.
    l1 = (lookups - l1_misses) / lookups
    best = weights[:20_000].sum()  # the optimum of a 20k cache on independent draws
    assert 0.9 * best <= l1 <= best + 0.01, f"L1 hit rate {l1:.3f}, best possible {best:.3f}"
