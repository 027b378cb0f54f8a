"""The docs/campaigns.md walkthrough through the REST gateway, on SQLite and
on PostgreSQL (+ Redis + NATS): a new user creates a campaign with an offer,
submits it, has it approved by the right role, schedules it, sees it go live
(and reach the bidders' live index within a second), records wins, watches
spend and alerts move, pauses and resumes it."""

from __future__ import annotations

import asyncio
import datetime as dt
from typing import Any

from services.campaigns.index import LiveCampaignIndex
from tests.conftest import Env


def usd(amount: float) -> dict[str, str]:
    return {"currencyCode": "USD", "amountMicros": str(int(amount * 1_000_000))}


def local_in(seconds: float) -> str:
    moment = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=seconds)
    return moment.replace(tzinfo=None).isoformat(timespec="seconds")


async def call(env: Env, verb: str, path: str, headers: dict[str, str], body: Any = None) -> Any:
    async with env.http.request(verb, f"{env.base_url}/v1/{path}", json=body, headers=headers) as r:
        payload = await r.json()
        assert r.status == 200, (verb, path, r.status, payload)
        return payload


async def test_rest_walkthrough(env: Env) -> None:
    admin = env.headers()
    platform = env.running.platform
    index = LiveCampaignIndex(
        platform.backends.db, platform.backends.bus, platform.api("campaigns").budgets
    )
    await index.start()
    try:
        campaign = (
            await call(
                env,
                "POST",
                "tenants/acme/campaigns",
                admin,
                {
                    "displayName": "Winter sale",
                    "objective": "OBJECTIVE_CONVERSIONS",
                    "channels": ["CHANNEL_DISPLAY"],
                    "schedule": {
                        "startDateTime": local_in(2),
                        "endDateTime": local_in(86400),
                        "timeZone": "UTC",
                    },
                    "budget": {"total": usd(5000), "daily": usd(100)},
                    "pacingMode": "PACING_MODE_ASAP",
                    "bidStrategy": {"type": "BID_STRATEGY_TYPE_MAX_CPM", "maxCpm": usd(4)},
                    "targeting": {"countries": ["USA"]},
                },
            )
        )["campaign"]
        name = campaign["name"]
        assert campaign["stage"] == "STAGE_DRAFT"
        await call(
            env,
            "POST",
            f"{name}/offers",
            admin,
            {
                "displayName": "30% off boots",
                "format": "OFFER_FORMAT_BANNER",
                "sizes": [{"width": 300, "height": 250}],
                "markupTemplate": "<a href='https://shop.example'><img src='b.png'></a>",
                "clickUrl": "https://shop.example/boots",
                "advertiserDomains": ["shop.example"],
            },
        )
        submitted = await call(env, "POST", f"{name}:submit", admin, {"comment": "ready"})
        assert submitted["campaign"]["stage"] == "STAGE_IN_REVIEW"  # $5,000: no auto-approval

        # The right role: a viewer is refused, a manager approves.
        async with env.http.post(
            f"{env.base_url}/v1/{name}:approve", json={}, headers=env.headers(role="VIEWER")
        ) as r:
            assert r.status == 403
        pending = await call(
            env, "GET", "tenants/acme/pendingApprovals", env.headers(role="MANAGER")
        )
        assert [p["campaign"]["name"] for p in pending["pendingApprovals"]] == [name]
        approved = await call(
            env, "POST", f"{name}:approve", env.headers(role="MANAGER"), {"comment": "ok"}
        )
        assert approved["campaign"]["stage"] == "STAGE_APPROVED"

        await call(env, "POST", f"{name}:schedule", admin, {})
        assert index.get(name) is None  # not live yet: not in the index
        for _ in range(100):
            got = (await call(env, "GET", name, admin))["campaign"]
            if got["stage"] == "STAGE_LIVE":
                break
            await asyncio.sleep(0.1)
        assert got["stage"] == "STAGE_LIVE"
        await index.wait_for(lambda i: i.get(name) is not None, timeout=1.0)
        assert [o.name for o in index.get(name).offers]  # type: ignore[union-attr]

        # Wins recorded (as the bidder's notices do): spend and alerts move.
        events = [
            {
                "campaign": name,
                "bidId": f"b-{i}",
                "type": "DELIVERY_EVENT_TYPE_WIN",
                "amount": usd(9),
            }
            for i in range(10)
        ]
        recorded = await call(
            env, "POST", "tenants/acme/deliveryEvents:batchRecord", admin, {"events": events}
        )
        assert recorded["recorded"] == 10
        again = await call(
            env, "POST", "tenants/acme/deliveryEvents:batchRecord", admin, {"events": events[:3]}
        )
        assert again.get("recorded", 0) == 0  # idempotent per bid id
        status = (await call(env, "GET", f"{name}/budgetStatus", admin))["budgetStatus"]
        assert status["totalSpend"]["amountMicros"] == "90000000"
        assert status["dailySpend"]["amountMicros"] == "90000000"
        assert status["canBid"] is True
        await call(
            env,
            "POST",
            "tenants/acme/deliveryEvents:batchRecord",
            admin,
            {
                "events": [
                    {
                        "campaign": name,
                        "bidId": "b-last",
                        "type": "DELIVERY_EVENT_TYPE_WIN",
                        "amount": usd(15),
                    }
                ]
            },
        )
        status = (await call(env, "GET", f"{name}/budgetStatus", admin))["budgetStatus"]
        assert status.get("canBid", False) is False  # the $100 daily budget is spent
        alerts = await call(env, "GET", f"tenants/acme/budgetAlerts?campaign={name}", admin)
        assert "ALERT_TYPE_OVER_DAILY_BUDGET" in {a["type"] for a in alerts["budgetAlerts"]}
        raised = platform.kernel.metrics_registry.get_sample_value(  # CampaignBudgetExceeded's
            "campaign_express_budget_alerts_total", {"type": "OVER_DAILY_BUDGET"}
        )
        assert raised == 1, raised
        await index.wait_for(lambda i: i.get(name) is None, timeout=1.0)  # stops bidding
        metrics = (await call(env, "GET", f"{name}/metrics", admin))["metrics"]
        assert metrics["impressions"] == "11" and metrics["spend"]["amountMicros"] == "105000000"

        # Pause and resume, by an operator.
        paused = await call(
            env,
            "POST",
            f"{name}:pause",
            env.headers(role="OPERATOR"),
            {"comment": "creative check"},
        )
        assert paused["campaign"]["stage"] == "STAGE_PAUSED"
        resumed = await call(env, "POST", f"{name}:resume", env.headers(role="OPERATOR"), {})
        assert resumed["campaign"]["stage"] == "STAGE_LIVE"
        history = await call(env, "GET", f"{name}/transitions", admin)
        assert [t["action"] for t in history["transitions"]] == [
            "SUBMIT",
            "APPROVE",
            "SCHEDULE",
            "GO_LIVE",
            "PAUSE",
            "RESUME",
        ]
    finally:
        await index.stop()


async def test_your_campaign_wins_once_the_demo_campaigns_pause(env: Env) -> None:
    """docs/campaigns.md, "See it win": in the demo tenant the live demo
    campaigns also answer a US 300x250 request; with them paused, the
    reader's campaign wins, and a win notice at a $2.10 CPM clearing price
    books $0.0021 (2,100 micros) for the impression."""
    import orjson

    from services.host.demo import seed_demo

    seed = await seed_demo(env.running.platform)
    admin = {"Authorization": f"Bearer {seed.api_key}"}
    campaign = {
        "displayName": "Winter sale",
        "objective": "OBJECTIVE_CONVERSIONS",
        "channels": ["CHANNEL_DISPLAY"],
        "schedule": {"startDateTime": local_in(-60), "endDateTime": local_in(86400 * 30)},
        "budget": {"total": usd(5000), "daily": usd(200)},
        "pacingMode": "PACING_MODE_ASAP",
        "bidStrategy": {"type": "BID_STRATEGY_TYPE_MAX_CPM", "maxCpm": usd(4)},
        "targeting": {"countries": ["USA"], "deviceTypes": ["DEVICE_TYPE_MOBILE"]},
    }
    name = (await call(env, "POST", "tenants/demo/campaigns", admin, campaign))["campaign"]["name"]
    offer = {
        "displayName": "30% off boots",
        "format": "OFFER_FORMAT_BANNER",
        "sizes": [{"width": 300, "height": 250}],
        "markupTemplate": '<a href="https://shop.example/boots">boots</a>',
        "clickUrl": "https://shop.example/boots",
        "advertiserDomains": ["shop.example"],
        "iabCategories": ["IAB22"],
        "bidCpm": usd(2.5),
    }
    offer_name = (await call(env, "POST", f"{name}/offers", admin, offer))["offer"]["name"]
    await call(env, "POST", f"{name}:submit", admin, {"comment": "ready"})
    manager = await call(
        env,
        "POST",
        "tenants/demo/apiKeys",
        admin,
        {"displayName": "approver", "roles": ["ROLE_MANAGER"]},
    )
    approver = {"Authorization": f"Bearer {manager['secret']}"}
    await call(env, "POST", f"{name}:approve", approver, {"comment": "ok"})
    await call(env, "POST", f"{name}:launch", admin, {})
    demo = await call(env, "GET", "tenants/demo/campaigns?filter=labels.env%3Ddemo", admin)
    assert len(demo["campaigns"]) == 8  # one for the "Pro plan" segment; every format; a deal
    for other in demo["campaigns"]:
        await call(env, "POST", f"{other['name']}:pause", admin, {"comment": "my test"})
    request = {
        "id": "r1",
        "imp": [{"id": "1", "banner": {"format": [{"w": 300, "h": 250}]}, "bidfloor": 0.5}],
        "device": {"devicetype": 4, "geo": {"country": "USA"}},
        "user": {"id": "u1"},
        "cur": ["USD"],
    }
    bid: dict[str, Any] = {}
    for _ in range(100):  # the live index follows the change events within ~1 s
        async with env.http.post(f"{env.base_url}/v1/bid", json=request, headers=admin) as r:
            if r.status == 200:
                bid = orjson.loads(await r.read())["seatbid"][0]["bid"][0]
                if bid["adid"] == offer_name.rsplit("/", 1)[1]:
                    break
        await asyncio.sleep(0.05)
    assert bid.get("adid") == offer_name.rsplit("/", 1)[1], bid
    win = bid["nurl"].replace("http://localhost:8080", env.base_url)
    async with env.http.get(win.replace("${AUCTION_PRICE}", "2.10")) as r:
        assert r.status == 200
    status = (await call(env, "GET", f"{name}/budgetStatus", admin))["budgetStatus"]
    assert status["totalSpend"]["amountMicros"] == "2100"
