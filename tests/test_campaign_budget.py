"""Budgets, pacing, alerts and metrics (FR-RPT-007..011), at the domain level,
on SQLite and on PostgreSQL; plus a pure simulation proving the even pacing
throttle follows its curve within +-5% (BO-007)."""

from __future__ import annotations

import asyncio
import dataclasses
import math
import pathlib
import random
from collections import defaultdict
from collections.abc import AsyncIterator
from typing import Any

import orjson
import pytest
import sqlalchemy as sa

from services.backends import BusMessage
from services.backends.bus import InProcessBus
from services.campaigns import pacing
from services.campaigns.budget import (
    Budgets,
    DeliveryEventIn,
    budget_status,
    compute_metrics,
    daily_target,
)
from services.campaigns.domain import Campaigns
from services.campaigns.events import CampaignEvents
from services.campaigns.model import (
    BidStrategy,
    Budget,
    Campaign,
    CampaignSpec,
    Daypart,
    Money,
    Schedule,
)
from services.campaigns.schedule import local_to_utc_us
from services.campaigns.tables import campaigns, delivery_events, spend_days
from services.campaigns.workflow import Scheduler, Workflow
from services.common.call import Principal
from services.common.errors import InvalidArgument, NotFound, PermissionDenied
from services.common.pagination import PageTokens
from services.common.rbac import ALL_PERMISSIONS
from services.db import Database
from services.tenancy.tables import tenants
from tests.conftest import migrate

PAGES = PageTokens("test-secret")

NY = "America/New_York"
HOUR = 3600 * 1_000_000


def usd(amount: float) -> Money:
    return Money("USD", round(amount * 1_000_000))


def ny(local: str) -> int:
    return local_to_utc_us(local, NY)


def principal(tenant: str = "acme") -> Principal:
    fields = {f.name for f in dataclasses.fields(Principal)}
    extra: dict[str, Any] = {"approval_roles": frozenset()} if "approval_roles" in fields else {}
    return Principal(
        subject=f"tenants/{tenant}/apiKeys/k",
        tenant_id=tenant,
        roles=frozenset({"ADMIN"}),
        permissions=ALL_PERMISSIONS,
        **extra,
    )


class Clock:
    def __init__(self, now: int) -> None:
        self.now = now

    def __call__(self) -> int:
        return self.now


def spec(**overrides: Any) -> CampaignSpec:
    fields: dict[str, Any] = {
        "display_name": "Autumn sale",
        "channels": ["DISPLAY"],
        "schedule": Schedule(
            start_date_time="2026-10-01T00:00",
            end_date_time="2026-12-31T00:00",
            time_zone=NY,
        ),
        "budget": Budget(total=usd(1000), daily=usd(100)),
        "pacing_mode": "ASAP",
        "bid_strategy": BidStrategy("MAX_CPM", max_cpm=usd(5)),
    }
    fields.update(overrides)
    return CampaignSpec(**fields)


@dataclasses.dataclass
class World:
    db: Database
    bus: InProcessBus
    clock: Clock
    campaigns: Campaigns
    budgets: Budgets
    messages: list[BusMessage]

    async def campaign(self, tenant: str = "acme", **overrides: Any) -> Campaign:
        return await self.campaigns.create(None, f"tenants/{tenant}", spec(**overrides))

    async def record(self, *events: DeliveryEventIn, tenant: str = "acme") -> int:
        return await self.budgets.record_events(principal(tenant), f"tenants/{tenant}", events)

    async def settle(self) -> None:
        for _ in range(5):
            await asyncio.sleep(0)
        await asyncio.sleep(0.01)

    def published(self, prefix: str) -> list[dict[str, Any]]:
        return [orjson.loads(m.data) for m in self.messages if m.subject.startswith(prefix)]

    async def set_stage(self, campaign: Campaign, stage: str) -> None:
        async with self.db.engine.begin() as conn:
            await conn.execute(
                campaigns.update().where(campaigns.c.id == campaign.id).values(stage=stage)
            )


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.backends)])
async def world(request: pytest.FixtureRequest, tmp_path: pathlib.Path) -> AsyncIterator[World]:
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'budget.db'}"
    else:
        url = request.getfixturevalue("postgres_url_fresh")
    db = Database(url)
    await migrate(db)
    clock = Clock(ny("2026-11-02T12:00"))
    async with db.engine.begin() as conn:
        for tenant in ("acme", "globex"):
            await conn.execute(
                tenants.insert().values(
                    id=tenant,
                    display_name=tenant,
                    labels={},
                    create_time=clock.now,
                    update_time=clock.now,
                    version=1,
                )
            )
    bus = InProcessBus()
    messages: list[BusMessage] = []

    async def collect(message: BusMessage) -> None:
        messages.append(message)

    await bus.subscribe("campaign-express.>", collect)
    events = CampaignEvents(bus)
    domain = Campaigns(db, events, clock, page_tokens=PAGES)
    yield World(
        db, bus, clock, domain, Budgets(db, domain, events, clock, page_tokens=PAGES), messages
    )
    await bus.close()
    await db.close()


def win(c: Campaign, bid: str, amount: float, at: int | None = None) -> DeliveryEventIn:
    return DeliveryEventIn(c.name, bid, "WIN", usd(amount), at)


def billing(c: Campaign, bid: str, amount: float, at: int | None = None) -> DeliveryEventIn:
    return DeliveryEventIn(c.name, bid, "BILLING", usd(amount), at)


# -- the ledger ------------------------------------------------------------------


async def test_a_retried_notice_counts_once(world: World) -> None:
    c = await world.campaign()
    batch = [win(c, "b1", 0.5), DeliveryEventIn(c.name, "b1", "CLICK")]
    assert await world.record(*batch) == 2
    assert await world.record(*batch) == 0
    # The same notice twice in one batch is one notice.
    assert await world.record(win(c, "b2", 0.25), win(c, "b2", 0.25)) == 1
    status = await world.budgets.status(principal(), c.name)
    assert status.total_spend == usd(0.75)
    metrics = await world.budgets.metrics(principal(), c.name)
    assert (metrics.impressions, metrics.clicks) == (2, 1)


async def test_concurrent_duplicates_count_once(world: World) -> None:
    c = await world.campaign(budget=Budget(total=usd(100_000)))
    batch = [win(c, f"b{i}", 0.01) for i in range(50)]
    counts = await asyncio.gather(*(world.record(*batch) for _ in range(6)))
    assert sum(counts) == 50
    status = await world.budgets.status(principal(), c.name)
    assert status.total_spend == usd(0.5)
    assert (await world.budgets.metrics(principal(), c.name)).impressions == 50


async def test_win_and_billing_of_one_bid_count_once(world: World) -> None:
    c = await world.campaign(budget=Budget(total=usd(100_000)))
    # WIN then BILLING: the billed price replaces the win price.
    await world.record(win(c, "a", 0.50))
    await world.record(billing(c, "a", 0.40))
    # BILLING then WIN: the win adds nothing.
    await world.record(billing(c, "b", 0.30))
    await world.record(win(c, "b", 0.35))
    # Both in one batch.
    await world.record(win(c, "c", 0.20), billing(c, "c", 0.10))
    # A WIN alone.
    await world.record(win(c, "d", 0.05))
    status = await world.budgets.status(principal(), c.name)
    assert status.total_spend == usd(0.40 + 0.30 + 0.10 + 0.05)
    assert (await world.budgets.metrics(principal(), c.name)).impressions == 4


async def test_concurrent_win_and_billing_batches_never_double_count(world: World) -> None:
    c = await world.campaign(budget=Budget(total=usd(100_000)))
    wins = [win(c, f"b{i}", 0.02) for i in range(40)]
    bills = [billing(c, f"b{i}", 0.01) for i in range(40)]
    await asyncio.gather(
        *(world.record(*part) for part in (wins[:20], bills[:20], wins[20:], bills[20:]))
    )
    assert (await world.budgets.status(principal(), c.name)).total_spend == usd(0.40)
    assert (await world.budgets.metrics(principal(), c.name)).impressions == 40


async def test_daily_and_total_spend_across_local_midnight(world: World) -> None:
    c = await world.campaign(budget=Budget(total=usd(1000), daily=usd(100)))
    world.clock.now = ny("2026-11-03T01:00")
    # 23:30 and 00:30 New York time: one local day each (UTC has them on one).
    await world.record(
        win(c, "late", 1.0, ny("2026-11-02T23:30")),
        win(c, "early", 2.0, ny("2026-11-03T00:30")),
    )
    status = await world.budgets.status(principal(), c.name)
    assert status.day == "2026-11-03"
    assert status.daily_spend == usd(2.0)
    assert status.total_spend == usd(3.0)
    assert status.daily_remaining == usd(98.0)
    assert status.total_remaining == usd(997.0)
    # A BILLING arriving after midnight stays on its bid's (earlier) day.
    await world.record(billing(c, "late", 0.5, ny("2026-11-03T00:05")))
    status = await world.budgets.status(principal(), c.name)
    assert (status.daily_spend, status.total_spend) == (usd(2.0), usd(2.5))


async def test_dst_day_has_25_hours_on_the_curve(world: World) -> None:
    c = await world.campaign(pacing_mode="EVEN", budget=Budget(total=usd(1000), daily=usd(100)))
    # 2026-11-01 ends daylight saving time in New York: a 25-hour local day.
    await world.record(
        win(c, "before", 1.0, ny("2026-10-31T23:50")),  # 03:50Z on Nov 1, still Oct 31 locally
        win(c, "first", 2.0, ny("2026-11-01T00:10")),
        win(c, "last", 4.0, ny("2026-11-01T23:50")),  # 04:50Z on Nov 2
    )
    status = await world.budgets.status(principal(), c.name, now=ny("2026-11-01T23:59"))
    assert (status.day, status.daily_spend) == ("2026-11-01", usd(6.0))
    # Noon is 13 real hours into the 25-hour day.
    noon = await world.budgets.status(principal(), c.name, now=ny("2026-11-01T12:00"))
    assert noon.expected_daily_spend == usd(100 * 13 / 25)


async def test_rollup_matches_the_ledger(world: World) -> None:
    """Random WIN/BILLING orders around midnight: the spend_days rollup always
    equals the spend semantics applied to the raw ledger."""
    c = await world.campaign(budget=Budget(total=usd(100_000)))
    world.clock.now = ny("2026-11-03T03:00")
    rng = random.Random(7)
    notices = []
    for i in range(120):
        base = ny("2026-11-02T23:00") + rng.randrange(0, 2 * HOUR)
        kinds = rng.choice([["WIN"], ["BILLING"], ["WIN", "BILLING"], ["BILLING", "WIN"]])
        for kind in kinds:
            at = base + rng.randrange(0, HOUR // 2)
            price = usd(rng.uniform(0.01, 2.0))
            notices.append(DeliveryEventIn(c.name, f"bid{i}", kind, price, at))
    rng.shuffle(notices)
    for start in range(0, len(notices), 17):
        await world.record(*notices[start : start + 17])
    await world.record(*notices[:30])  # retries change nothing
    async with world.db.engine.connect() as conn:
        ledger = (
            await conn.execute(
                sa.select(delivery_events).where(delivery_events.c.campaign_id == c.id)
            )
        ).all()
        rollup = {
            r.day: (r.spend_micros, r.impressions)
            for r in (await conn.execute(sa.select(spend_days))).all()
        }
    bids: dict[str, dict[str, Any]] = defaultdict(dict)
    for row in ledger:
        bids[row.bid_id][row.type] = row
    expected: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for found in bids.values():
        day = min(r.day for r in found.values())
        amount = (found.get("BILLING") or found["WIN"]).amount_micros
        expected[day][0] += amount
        expected[day][1] += 1
    assert {d: tuple(v) for d, v in expected.items()} == rollup
    assert len(rollup) >= 2


async def test_bad_events_report_every_field(world: World) -> None:
    c = await world.campaign()
    bad = [
        DeliveryEventIn(c.name, "b0", "IMPRESSION", usd(1)),
        DeliveryEventIn(c.name, "b1", "WIN", Money("EUR", 1_000)),
        DeliveryEventIn(c.name, "b2", "WIN", usd(-1)),
        DeliveryEventIn("tenants/acme/campaigns/nope", "b3", "WIN", usd(1)),
        DeliveryEventIn(c.name, "", "WIN", usd(1)),
        DeliveryEventIn(c.name, "b5", "WIN", usd(1), world.clock.now + 2 * HOUR),
        DeliveryEventIn(c.name, "b6", "WIN"),
        DeliveryEventIn(c.name, "b7", "CLICK", usd(1)),
        DeliveryEventIn("campaigns/x", "b8", "WIN", usd(1)),
        win(c, "fine", 1.0),
    ]
    with pytest.raises(InvalidArgument) as caught:
        await world.record(*bad)
    fields = {v.field for v in caught.value.field_violations}
    assert fields == {
        "events[0].type",
        "events[1].amount.currency_code",
        "events[2].amount.amount_micros",
        "events[3].campaign",
        "events[4].bid_id",
        "events[5].event_time",
        "events[6].amount",
        "events[7].amount.amount_micros",
        "events[8].campaign",
    }
    # All or nothing: the good event was not stored either.
    assert (await world.budgets.status(principal(), c.name)).total_spend == usd(0)
    other = await world.campaign(tenant="globex")
    with pytest.raises(PermissionDenied):
        await world.record(win(other, "x", 1.0))
    with pytest.raises(PermissionDenied):
        await world.budgets.record_events(principal(), "tenants/globex", [win(other, "x", 1)])
    with pytest.raises(InvalidArgument) as caught:
        await world.record(*[win(c, f"b{i}", 0.01) for i in range(10_001)])
    assert caught.value.field_violations[0].field == "events"
    assert await world.record() == 0
    with pytest.raises(NotFound):
        await world.budgets.status(principal(), "tenants/acme/campaigns/nope")
    with pytest.raises(PermissionDenied):
        await world.budgets.status(principal(), other.name)


# -- alerts ----------------------------------------------------------------------


async def test_alerts_are_raised_once_listed_and_published(world: World) -> None:
    c = await world.campaign(budget=Budget(total=usd(100), daily=usd(50)))
    await world.record(win(c, "a", 30.0))
    world.clock.now += 1
    await world.record(win(c, "b", 20.0))  # 50 today: over the daily budget
    world.clock.now += 1
    await world.record(win(c, "c", 1.0))  # still over: not raised again
    world.clock.now += 24 * HOUR
    await world.record(win(c, "d", 30.0))  # 81 in total: nearing the limit
    world.clock.now += 1
    await world.record(win(c, "e", 19.5))  # 100.5: over the total
    world.clock.now += 1
    await world.record(win(c, "f", 0.01), win(c, "a", 30.0))  # nothing new
    alerts, token = await world.budgets.list_alerts(principal(), "tenants/acme", "", 0, "")
    assert token == ""
    assert [(a.type, a.day) for a in alerts] == [
        ("OVER_TOTAL_BUDGET", ""),
        ("NEARING_LIMIT", ""),
        ("OVER_DAILY_BUDGET", "2026-11-02"),
    ]
    over_daily = alerts[2]
    assert over_daily.spend == usd(50) and over_daily.threshold == usd(50)
    assert over_daily.campaign == c.name
    assert over_daily.name.startswith("tenants/acme/budgetAlerts/")
    assert alerts[1].threshold == usd(80) and alerts[1].spend == usd(81)
    # Pages of one, newest first, and the campaign filter.
    seen, token = [], ""
    while True:
        page, token = await world.budgets.list_alerts(principal(), "tenants/acme", "", 1, token)
        seen += [a.id for a in page]
        if not token:
            break
    assert seen == [a.id for a in alerts]
    other = await world.campaign()
    only, _ = await world.budgets.list_alerts(principal(), "tenants/acme", other.name, 10, "")
    assert only == []
    with pytest.raises(PermissionDenied):
        await world.budgets.list_alerts(principal(), "tenants/globex", "", 10, "")
    await world.settle()
    published = world.published("campaign-express.budget-alerts.acme")
    assert sorted(p["type"] for p in published) == sorted(a.type for a in alerts)


async def test_pacing_alerts_only_when_the_day_can_be_judged(world: World) -> None:
    behind = await world.campaign(pacing_mode="EVEN")
    ahead = await world.campaign(pacing_mode="EVEN")
    early = await world.campaign(pacing_mode="EVEN")
    # Noon: half the day is gone, the curve says 50 of the daily 100.
    await world.record(win(behind, "a", 10.0))
    await world.record(win(ahead, "a", 60.0))
    await world.record(win(behind, "b", 1.0), win(ahead, "b", 1.0))
    # 01:00 is 4% of the day: too early to judge even a big lead.
    world.clock.now = ny("2026-11-03T01:00")
    await world.record(win(early, "a", 30.0))
    alerts, _ = await world.budgets.list_alerts(principal(), "tenants/acme", "", 0, "")
    found = sorted((a.campaign, a.type, a.day) for a in alerts)
    assert found == sorted(
        [
            (behind.name, "PACING_BEHIND", "2026-11-02"),
            (ahead.name, "PACING_AHEAD", "2026-11-02"),
        ]
    )
    (b,) = [a for a in alerts if a.type == "PACING_BEHIND"]
    assert b.spend == usd(10) and b.threshold == usd(50)


async def test_sweep_raises_pacing_behind_for_a_silent_campaign(world: World) -> None:
    silent = await world.campaign(pacing_mode="EVEN")
    draft = await world.campaign(pacing_mode="EVEN")
    await world.set_stage(silent, "LIVE")
    assert await world.budgets.sweep() == 1
    assert await world.budgets.sweep() == 0  # once
    alerts, _ = await world.budgets.list_alerts(principal(), "tenants/acme", "", 0, "")
    assert [(a.campaign, a.type) for a in alerts] == [(silent.name, "PACING_BEHIND")]
    assert draft.name not in {a.campaign for a in alerts}


# -- can_bid, budget.changed and status ----------------------------------------------


async def test_an_exhausted_budget_stops_bidding_and_says_so(world: World) -> None:
    c = await world.campaign(budget=Budget(total=usd(1000), daily=usd(10)))
    await world.set_stage(c, "LIVE")
    assert await world.budgets.can_bid("acme", c.id)
    await world.record(win(c, "a", 9.99))
    assert await world.budgets.can_bid("acme", c.id)
    await world.record(win(c, "b", 0.02))
    assert not await world.budgets.can_bid("acme", c.id)
    status = await world.budgets.status(principal(), c.name)
    assert (status.can_bid, status.bid_rate, status.daily_remaining) == (False, 0.0, usd(0))
    await world.record(win(c, "c", 0.02))  # a late notice: still exhausted, no new event
    await world.settle()
    changed = [
        e
        for e in world.published("campaign-express.campaigns.acme")
        if e["type"] == "budget.changed"
    ]
    assert [(e["campaign"], e["stage"]) for e in changed] == [(c.name, "LIVE")]
    # The next local day the daily budget is back; the sweep notices and says so.
    world.clock.now = ny("2026-11-03T00:01")
    assert await world.budgets.can_bid("acme", c.id)
    await world.budgets.sweep()
    await world.settle()
    changed = [
        e
        for e in world.published("campaign-express.campaigns.acme")
        if e["type"] == "budget.changed"
    ]
    assert len(changed) == 2
    assert not await world.budgets.can_bid("acme", "unknown")


async def test_status_bid_rate_by_pacing_mode_and_schedule(world: World) -> None:
    asap = await world.campaign(pacing_mode="ASAP")
    status = await world.budgets.status(principal(), asap.name)
    assert (status.bid_rate, status.can_bid, status.pacing_mode) == (1.0, True, "ASAP")
    assert status.expected_daily_spend == usd(50)  # informational for ASAP
    assert status.pacing_ratio == 0.0
    before = await world.budgets.status(principal(), asap.name, now=ny("2026-09-30T12:00"))
    assert (before.bid_rate, before.in_schedule) == (0.0, False)
    even = await world.campaign(
        pacing_mode="EVEN",
        schedule=dataclasses.replace(spec().schedule, dayparts=[Daypart([], 9, 17)]),
    )
    # 12:00 is 3 of the 8 active hours.
    status = await world.budgets.status(principal(), even.name)
    assert status.expected_daily_spend == usd(100 * 3 / 8)
    assert status.bid_rate == 1.0  # behind, nothing known about traffic yet
    await world.record(win(even, "a", 60.0))
    status = await world.budgets.status(principal(), even.name)
    assert status.bid_rate == 0.0  # far ahead of the curve
    assert status.pacing_ratio == pytest.approx(60 / 37.5)
    night = await world.budgets.status(principal(), even.name, now=ny("2026-11-02T20:00"))
    assert (night.bid_rate, night.in_schedule, night.can_bid) == (0.0, False, True)


async def test_metrics_formulas_and_zero_denominators(world: World) -> None:
    c = await world.campaign(budget=Budget(total=usd(100_000)))
    empty = await world.budgets.metrics(principal(), c.name)
    assert (empty.roas, empty.roi_percent, empty.ctr) == (0.0, 0.0, 0.0)
    assert (empty.cpa, empty.cpc, empty.cpm, empty.spend) == (usd(0), usd(0), usd(0), usd(0))
    await world.record(
        *(win(c, f"w{i}", 0.5) for i in range(4)),
        DeliveryEventIn(c.name, "w0", "CLICK"),
        DeliveryEventIn(c.name, "w1", "CLICK"),
        DeliveryEventIn(c.name, "w1", "CONVERSION", usd(5)),
    )
    m = await world.budgets.metrics(principal(), c.name)
    assert (m.impressions, m.clicks, m.conversions) == (4, 2, 1)
    assert (m.spend, m.revenue) == (usd(2), usd(5))
    assert m.roas == pytest.approx(2.5)
    assert m.roi_percent == pytest.approx(150.0)
    assert (m.cpa, m.cpc, m.cpm) == (usd(2), usd(1), usd(500))
    assert m.ctr == pytest.approx(0.5)
    # Clicks and revenue with no spend at all: ratios over spend are 0.
    only = compute_metrics(
        "x", "USD", impressions=0, clicks=3, conversions=1, spend_micros=0, revenue_micros=9
    )
    assert (only.roas, only.roi_percent, only.ctr, only.cpm, only.cpc) == (
        0.0,
        0.0,
        0.0,
        usd(0),
        usd(0),
    )


def test_daily_target_spreads_a_total_over_the_schedule() -> None:
    c = Campaign(
        id="c",
        tenant_id="acme",
        spec=spec(
            pacing_mode="EVEN",
            budget=Budget(total=usd(3000)),
            schedule=Schedule("2026-11-01T00:00", "2026-12-01T00:00", NY),
        ),
        stage="LIVE",
        revision=1,
        approval_rule="",
        submission=0,
        version=1,
        create_time=0,
        update_time=0,
    )
    # 30 days, the first with 25 hours: day one's share is 25 / 721 of the total.
    assert daily_target(c, 0, 0, ny("2026-11-01T08:00")) == round(3000e6 * 25 / 721)
    # Half way with 1,500 spent before today: 1,500 over the 15 days left.
    assert daily_target(c, 1500_000_000, 0, ny("2026-11-16T08:00")) == 100_000_000
    # Today's own spend does not move today's target.
    assert daily_target(c, 1530_000_000, 30_000_000, ny("2026-11-16T08:00")) == 100_000_000
    asap = dataclasses.replace(c, spec=dataclasses.replace(c.spec, pacing_mode="ASAP"))
    assert daily_target(asap, 1000_000_000, 0, ny("2026-11-16T08:00")) == 2000_000_000


# -- the pacing simulation (pure) -------------------------------------------------

DAY_S = 86_400.0
DAILY = 1_000_000_000  # 1,000 USD
MEAN_PRICE = 50_000  # 0.05 USD an impression: about 20,000 impressions a day
MEAN_WIN = 0.3


@dataclasses.dataclass
class Day:
    checkpoints: list[tuple[float, int, int]]  # (hour, spend, expected)
    spend: int
    max_price: int
    final_rate: float


def simulate_day(
    traffic: float,
    seed: int,
    *,
    diurnal: float = 0.0,
    dayparts: list[Daypart] | None = None,
    tick_s: float = 30.0,
) -> Day:
    """One local day of bid opportunities for an EVEN campaign with a daily
    budget: Poisson arrivals (`traffic` x what the budget needs, optionally
    swinging +-`diurnal` over the day), a random win probability per
    opportunity and a random clearing price per win. The bid rate comes from
    the same `budget_status` the service uses, refreshed every `tick_s`; each
    opportunity is taken with that probability while spend is under the cap."""
    rng = random.Random(seed)
    campaign = Campaign(
        id="sim",
        tenant_id="acme",
        spec=spec(
            pacing_mode="EVEN",
            budget=Budget(total=usd(1_000_000), daily=Money("USD", DAILY)),
            schedule=Schedule("2026-01-01T00:00", "2027-01-01T00:00", "UTC", dayparts or []),
        ),
        stage="LIVE",
        revision=1,
        approval_rule="",
        submission=0,
        version=1,
        create_time=0,
        update_time=0,
    )
    midnight = local_to_utc_us("2026-06-10T00:00", "UTC")
    active_share = 1.0
    if dayparts:
        active_share = sum(p.end_hour - p.start_hour for p in dayparts) / 24
    # Opportunities per second while active, on average.
    base = traffic * DAILY / MEAN_PRICE / MEAN_WIN / (DAY_S * active_share)
    peak = base * (1 + diurnal)
    spend, t, next_tick, rate, max_price = 0, 0.0, 0.0, 0.0, 0
    state: pacing.PacerState | None = None
    checkpoints: list[tuple[float, int, int]] = []
    while True:
        t += rng.expovariate(peak)
        while next_tick <= min(t, DAY_S - 1):
            status, state = budget_status(
                campaign, spend, spend, midnight + int(next_tick * 1e6), state
            )
            rate = status.bid_rate
            if next_tick % 3600 == 0:
                checkpoints.append(
                    (next_tick / 3600, spend, status.expected_daily_spend.amount_micros)
                )
            next_tick += tick_s
        if t >= DAY_S:
            break
        swing = 1 + diurnal * math.sin(2 * math.pi * (t / DAY_S - 0.25))
        if rng.random() * peak > base * swing:
            continue  # thinning: the arrival rate follows the daily swing
        if not pacing.may_spend(spend, DAILY):
            continue
        if rng.random() < rate and rng.random() < rng.uniform(0.1, 0.5):
            price = int(rng.uniform(0.4, 1.6) * MEAN_PRICE)
            max_price = max(max_price, price)
            spend += price
    checkpoints.append((24.0, spend, DAILY))
    return Day(checkpoints, spend, max_price, rate)


@pytest.mark.parametrize(
    ("traffic", "diurnal", "dayparts"),
    [
        (1.5, 0.0, None),
        (4.0, 0.0, None),
        (10.0, 0.0, None),
        (4.0, 0.5, None),
        (4.0, 0.0, [Daypart([], 8, 20)]),
    ],
    ids=["1.5x", "4x", "10x", "4x-diurnal", "4x-dayparts"],
)
def test_even_pacing_follows_the_curve_within_5_percent(
    traffic: float, diurnal: float, dayparts: list[Daypart] | None
) -> None:
    for seed in (1, 2):
        day = simulate_day(traffic, seed, diurnal=diurnal, dayparts=dayparts)
        judged = [(h, s, e) for h, s, e in day.checkpoints if e >= DAILY / 24]
        assert len(judged) >= 12
        for hour, spend, expected in judged:
            assert abs(spend - expected) <= 0.05 * expected, (
                f"seed {seed}, {hour:.0f}h: spent {spend / 1e6:.2f}, "
                f"curve {expected / 1e6:.2f} ({spend / expected - 1:+.1%})"
            )
        assert abs(day.spend - DAILY) <= 0.05 * DAILY
        assert day.spend <= DAILY + day.max_price  # at most one impression over the cap


def test_pacing_with_too_little_traffic_bids_on_everything_and_never_overspends() -> None:
    day = simulate_day(0.6, 3)
    for hour, spend, expected in day.checkpoints[2:-1]:
        assert spend < expected, f"{hour}h"  # it cannot keep up ...
    assert day.final_rate == 1.0  # ... so it takes every opportunity
    assert 0.5 * DAILY < day.spend < 0.7 * DAILY


def test_asap_spends_until_the_cap_and_stops_within_one_impression() -> None:
    campaign = Campaign(
        id="asap",
        tenant_id="acme",
        spec=spec(pacing_mode="ASAP", budget=Budget(total=usd(1000), daily=usd(10))),
        stage="LIVE",
        revision=1,
        approval_rule="",
        submission=0,
        version=1,
        create_time=0,
        update_time=0,
    )
    rng = random.Random(5)
    spend, now, max_price = 0, ny("2026-11-02T00:00"), 0
    while True:
        status, _ = budget_status(campaign, spend, spend, now, None)
        if status.bid_rate == 0:
            break
        assert status.bid_rate == 1.0
        if pacing.may_spend(spend, 10_000_000):
            price = rng.randrange(10_000, 90_000)
            max_price = max(max_price, price)
            spend += price
        now += 1_000_000
    assert 10_000_000 <= spend <= 10_000_000 + max_price
    assert not status.can_bid


async def test_scheduler_sweeps_budgets_on_its_own_slower_cadence(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With passes every `interval` (a resync as short as that), the budget
    sweep (every live campaign and its spend) still runs only every
    `sweep_interval`, first at start."""
    workflow = Workflow(world.db, world.campaigns, CampaignEvents(world.bus), page_tokens=PAGES)
    passes = sweeps = 0
    run_due, sweep = workflow.run_due_transitions, world.budgets.sweep

    async def counted_pass() -> Any:
        nonlocal passes
        passes += 1
        return await run_due()

    async def counted_sweep(now: int | None = None) -> int:
        nonlocal sweeps
        sweeps += 1
        return await sweep(now)

    monkeypatch.setattr(workflow, "run_due_transitions", counted_pass)
    monkeypatch.setattr(world.budgets, "sweep", counted_sweep)
    scheduler = Scheduler(
        workflow, world.budgets, interval=0.02, sweep_interval=0.3, resync_interval=0.02
    )
    scheduler.start()
    try:
        await asyncio.sleep(0.75)
    finally:
        await scheduler.stop()
    assert passes >= 10
    assert 2 <= sweeps <= 3  # at 0 s, ~0.3 s, ~0.6 s


async def test_scheduler_sleeps_until_a_transition_is_due_or_a_campaign_changes(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No polling: with nothing due it passes once and waits (here up to a
    60 s resync); a campaign event on the bus wakes it, and it then sleeps
    until the next transition is due, not a second at a time."""
    workflow = Workflow(world.db, world.campaigns, CampaignEvents(world.bus), page_tokens=PAGES)
    passes = 0
    due_in: float | None = None
    run_due = workflow.run_due_transitions

    async def counted_pass() -> Any:
        nonlocal passes
        passes += 1
        return await run_due()

    async def next_due() -> float | None:
        return due_in

    monkeypatch.setattr(workflow, "run_due_transitions", counted_pass)
    monkeypatch.setattr(workflow, "seconds_to_next_transition", next_due)
    scheduler = Scheduler(workflow, bus=world.bus, interval=0.02, resync_interval=60)
    scheduler.start()
    try:
        await asyncio.sleep(0.3)
        assert passes == 1  # nothing due, nothing changed: no polling
        due_in = 0.25
        await world.bus.publish("campaign-express.campaigns.acme", b"{}")  # any change
        await asyncio.sleep(0.1)
        assert passes == 2  # woken by the event
        due_in = None
        await asyncio.sleep(0.35)
        assert passes == 3  # once more when the transition fell due, then quiet
    finally:
        await scheduler.stop()
