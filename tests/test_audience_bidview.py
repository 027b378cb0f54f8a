"""A person's events change their next bid: the audience domain writes the
bid-time profile (tenant-scoped, under every identity of the profile) after
applying calls, through the process's own ProfileStore, so the very next bid
reads it: the loyalty tier from the `loyalty_tier` trait (the loyalty boost
then applies) and the last-seen time (the model's recency feature)."""

from __future__ import annotations

from typing import Any

from services.bidding.profiles import tenant_user
from tests.conftest import Env
from tests.test_bidding_e2e import bid_request, live_campaign, post_bid


async def ingest(env: Env, calls: list[dict[str, Any]], tenant: str = "acme") -> dict[str, Any]:
    async with env.http.post(
        f"{env.base_url}/v1/tenants/{tenant}/events:ingest",
        json={"batch": calls, "waitForProfiles": True},
        headers=env.headers(tenant),
    ) as reply:
        body: dict[str, Any] = await reply.json()
        assert reply.status == 200, body
        return body


def boosted(env: Env) -> float:
    processor = env.running.platform.api("bidding").processor
    return float(processor._metrics.loyalty_boosted._unlabelled().value)


async def test_an_identify_changes_the_next_bids_profile(env: Env) -> None:
    await live_campaign(env)
    processor = env.running.platform.api("bidding").processor
    status, _, _ = await post_bid(env, bid_request("r1", user="vip"))
    assert status == 200 and boosted(env) == 0  # default profile: no tier
    before = await processor._profiles.get(tenant_user("acme", "vip"))
    assert before.loyalty.tier == "BASIC" and before.last_seen_us == 0

    await ingest(
        env,
        [
            {"type": "page", "anonymousId": "cookie-5", "name": "Home",
             "timestamp": "2026-12-01T10:00:00Z"},
            {"type": "identify", "userId": "vip", "anonymousId": "cookie-5",
             "traits": {"loyalty_tier": "reserve"}, "timestamp": "2026-12-01T10:05:00Z",
             "context": {"device": {"advertisingId": "IFA-VIP-1"}}},
        ],
    )  # fmt: skip
    after = await processor._profiles.get(tenant_user("acme", "vip"))
    assert after.loyalty.tier == "RESERVE"
    assert after.last_seen_us == 1_796_119_500_000_000  # 2026-12-01T10:05:00Z
    status, _, _ = await post_bid(env, bid_request("r2", user="vip"))
    assert status == 200 and boosted(env) == 1
    # the profile's anonymous id (a cookie-synced buyeruid, say) finds it too
    status, _, _ = await post_bid(env, bid_request("r3", user="cookie-5"))
    assert status == 200 and boosted(env) == 2
    # so does the device's advertising id, for a request with no user ids
    app_request = bid_request("r4", user="")
    app_request["user"] = {}
    app_request["device"]["ifa"] = "IFA-VIP-1"
    status, _, _ = await post_bid(env, app_request)
    assert status == 200 and boosted(env) == 3
    # profiles are the tenant's own: globex's "vip" is someone else
    other = await processor._profiles.get(tenant_user("globex", "vip"))
    assert other.loyalty.tier == "BASIC"
