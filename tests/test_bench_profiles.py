"""bench/bidding.py's profile seeding against a real Redis: what it writes is
read back by the server's own ProfileStore (services/bidding/profiles.py) as
the same profiles, under the keys and TTL the server uses."""

from __future__ import annotations

import collections

import pytest
import redis.asyncio as aioredis

from bench.bidding import TENANT, ZipfUsers, bench_profile, seed_profiles, user_id
from services.backends.kv import RedisKeyValueStore
from services.bidding.profiles import ProfileStore, default_profile, profile_key, tenant_user

pytestmark = pytest.mark.backends

USERS = 300
NOW_US = 1_790_000_000_000_000


async def test_seeded_profiles_round_trip_through_the_servers_profile_store(
    redis_url_flushed: str,
) -> None:
    lines: list[str] = []
    tiers = await seed_profiles(
        redis_url_flushed, USERS, batch=128, now_us=NOW_US, progress=lines.append
    )
    assert sum(tiers.values()) == USERS
    assert len(lines) == 3 and lines[-1].startswith("profiles: 300/300 written"), lines

    kv = RedisKeyValueStore(redis_url_flushed)
    try:
        store = ProfileStore(kv)
        ids = [tenant_user(TENANT, user_id(rank)) for rank in range(USERS + 1)]
        got = await store.get_many(ids)
        stats = store.stats()
        assert (stats.l2_hits, stats.defaults) == (USERS, 1)  # the one past the end
        assert got[ids[-1]] == default_profile(ids[-1])
        for uid in ids[:USERS]:
            assert got[uid] == bench_profile(uid, NOW_US), uid
    finally:
        await kv.close()
    seeded = [got[uid] for uid in ids[:USERS]]

    # The bench's load draws its users from exactly these ids.
    drawn = {tenant_user(TENANT, uid) for uid in ZipfUsers(n=USERS).draw(1000)}
    assert drawn <= set(ids[:USERS])
    # Plausible contents the bidder uses: interests and segments for everyone,
    # a loyalty membership for a share, every tier present.
    assert tiers == dict(collections.Counter(p.loyalty.tier for p in seeded))
    assert all(tiers[tier] > 0 for tier in ("SILVER", "GOLD", "RESERVE")), tiers
    assert all(len(p.interests) == 16 and 2 <= len(p.segments) <= 6 for p in seeded)
    members = sum(p.loyalty.lifetime_stars > 0 for p in seeded)
    assert 0.25 * USERS < members < 0.55 * USERS, members
    assert all(0 < NOW_US - p.last_seen_us <= 30 * 86_400_000_000 for p in seeded)

    client = aioredis.Redis.from_url(redis_url_flushed)
    try:
        assert await client.dbsize() == USERS
        ttl_ms = await client.pttl(profile_key(ids[0]))
        assert 3_590_000 < ttl_ms <= 3_600_000, ttl_ms  # ProfileStore's L2 TTL
    finally:
        await client.aclose()
