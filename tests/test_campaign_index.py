"""Change propagation: the live campaign index applies changes made through the
domain (stage, offers, budget state) within one second, on the in-process bus
with SQLite and on NATS JetStream with PostgreSQL; its periodic refresh
repairs lost events."""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import pathlib
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
import sqlalchemy as sa

from services.backends import MessageBus
from services.backends.bus import open_message_bus
from services.campaigns.budget import Budgets, DeliveryEventIn
from services.campaigns.domain import Campaigns
from services.campaigns.events import CampaignEvent, CampaignEvents
from services.campaigns.index import LiveCampaign, LiveCampaignIndex
from services.campaigns.model import (
    BidStrategy,
    Budget,
    Campaign,
    CampaignSpec,
    Money,
    OfferSpec,
    Schedule,
    Size,
)
from services.campaigns.tables import campaigns, offers
from services.campaigns.workflow import Workflow
from services.common.call import Principal
from services.common.clock import now_us
from services.common.pagination import PageTokens
from services.common.rbac import ALL_PERMISSIONS
from services.db import Database
from services.tenancy.tables import tenants
from tests.conftest import migrate

PAGES = PageTokens("test-secret")

PROPAGATION_S = 1.0


def usd(amount: float) -> Money:
    return Money("USD", round(amount * 1_000_000))


def principal(tenant: str = "acme") -> Principal:
    fields = {f.name for f in dataclasses.fields(Principal)}
    extra: dict[str, Any] = (
        {"approval_roles": frozenset({"manager"})} if "approval_roles" in fields else {}
    )
    return Principal(
        subject=f"tenants/{tenant}/apiKeys/k",
        tenant_id=tenant,
        roles=frozenset({"ADMIN"}),
        permissions=ALL_PERMISSIONS,
        **extra,
    )


def spec(**overrides: Any) -> CampaignSpec:
    today = dt.datetime.now(dt.UTC).replace(tzinfo=None, microsecond=0)
    fields: dict[str, Any] = {
        "display_name": "Always on",
        "channels": ["DISPLAY"],
        "schedule": Schedule(
            start_date_time=(today - dt.timedelta(days=2)).isoformat(),
            end_date_time=(today + dt.timedelta(days=30)).isoformat(),
            time_zone="UTC",
        ),
        "budget": Budget(total=usd(500), daily=usd(10)),
        "pacing_mode": "ASAP",
        "bid_strategy": BidStrategy("MAX_CPM", max_cpm=usd(5)),
    }
    fields.update(overrides)
    return CampaignSpec(**fields)


def offer(name: str = "Boots", status: str = "ACTIVE") -> OfferSpec:
    return OfferSpec(
        display_name=name,
        format="BANNER",
        sizes=[Size(300, 250)],
        markup_template="<a href='https://shop.example'>x</a>",
        click_url="https://shop.example/boots",
        advertiser_domains=["shop.example"],
        status=status,
    )


@dataclasses.dataclass
class World:
    db: Database
    bus: MessageBus
    events: CampaignEvents
    campaigns: Campaigns
    budgets: Budgets
    index: LiveCampaignIndex

    async def campaign(self, tenant: str = "acme", **overrides: Any) -> Campaign:
        return await self.campaigns.create(
            None,
            f"tenants/{tenant}",
            spec(**overrides),
            offers_to_add=[offer("Boots"), offer("Hats", status="PAUSED")],
        )

    async def set_stage(self, campaign: Campaign, stage: str, *, publish: bool = True) -> None:
        """A stage change as the workflow makes it: the row, then the event."""
        async with self.db.engine.begin() as conn:
            await conn.execute(
                campaigns.update()
                .where(campaigns.c.id == campaign.id)
                .values(stage=stage, version=campaigns.c.version + 1)
            )
        if publish:
            await self.events.publish(
                CampaignEvent("campaign.changed", campaign.tenant_id, campaign.name, stage=stage)
            )

    async def within(self, predicate: Any, limit: float = PROPAGATION_S) -> float:
        """Seconds until `predicate(index)` held; fails past `limit`."""
        started = time.monotonic()
        await self.index.wait_for(predicate, limit)
        return time.monotonic() - started


@pytest.fixture
async def world(
    tmp_path: pathlib.Path, backend_urls: dict[str, str], request: pytest.FixtureRequest
) -> AsyncIterator[World]:
    refresh = getattr(request, "param", 30.0)
    db = Database(backend_urls.get("database_url") or f"sqlite:///{tmp_path / 'index.db'}")
    await migrate(db)
    async with db.engine.begin() as conn:
        for tenant in ("acme", "globex"):
            await conn.execute(
                tenants.insert().values(
                    id=tenant,
                    display_name=tenant,
                    labels={},
                    create_time=now_us(),
                    update_time=now_us(),
                    version=1,
                )
            )
    bus = await open_message_bus(backend_urls.get("nats_url"))
    events = CampaignEvents(bus)
    domain = Campaigns(db, events, page_tokens=PAGES)
    budgets = Budgets(db, domain, events, now_us, page_tokens=PAGES)
    index = LiveCampaignIndex(db, bus, budgets, refresh_seconds=refresh)
    await index.start()
    try:
        yield World(db, bus, events, domain, budgets, index)
    finally:
        await index.stop()
        await bus.close()
        await db.close()


def offer_names(index: LiveCampaignIndex, name: str) -> list[str]:
    entry = index.get(name)
    return [] if entry is None else [o.spec.display_name for o in entry.offers]


async def test_stage_and_offer_changes_reach_the_index_within_a_second(world: World) -> None:
    c = await world.campaign()
    other = await world.campaign(tenant="globex")
    await asyncio.sleep(0.1)
    assert world.index.get(c.name) is None  # a draft does not serve
    await world.set_stage(c, "LIVE")
    await world.within(lambda i: i.get(c.name) is not None)
    assert offer_names(world.index, c.name) == ["Boots"]  # ACTIVE offers only
    assert world.index.get(c.name).bid_rate == 1.0  # type: ignore[union-attr]  # ASAP
    assert world.index.get(c.name).campaign.stage == "LIVE"  # type: ignore[union-attr]
    assert [e.name for e in world.index.campaigns("acme")] == [c.name]
    assert world.index.campaigns("globex") == []
    assert world.index.get(other.name) is None

    made = await world.campaigns.create_offer(principal(), c.name, offer("Scarves"))
    await world.within(lambda i: offer_names(i, c.name) == ["Boots", "Scarves"])
    await world.campaigns.update_offer(
        principal(), made.name, offer("Scarves", status="PAUSED"), ["status"], ""
    )
    await world.within(lambda i: offer_names(i, c.name) == ["Boots"])
    changed = dataclasses.replace(c.spec, display_name="Always on, renamed")
    await world.campaigns.update(principal(), c.name, changed, ["display_name"], "")
    await world.within(
        lambda i: (
            i.get(c.name) is not None
            and i.get(c.name).campaign.spec.display_name == "Always on, renamed"
        )
    )
    await world.set_stage(c, "PAUSED")
    await world.within(lambda i: i.get(c.name) is None)
    assert world.index.campaigns("acme") == []


async def test_views_are_built_once_and_rebuilt_when_the_tenant_changes(world: World) -> None:
    """What bidding compiles from a tenant's live campaigns (its candidate
    bitmaps) is made once per change of that tenant's campaigns, not per bid;
    an offer added to a live campaign is in the next view, and other tenants
    keep theirs."""
    builds: list[list[str]] = []

    def build(live: list[LiveCampaign]) -> list[str]:
        builds.append([o.spec.display_name for e in live for o in e.offers])
        return builds[-1]

    c = await world.campaign()
    await world.set_stage(c, "LIVE")
    await world.within(lambda i: i.get(c.name) is not None)
    first = world.index.view("acme", build)
    assert first == ["Boots"]
    assert world.index.view("acme", build) is first and len(builds) == 1
    other = world.index.view("globex", build)
    assert other == [] and len(builds) == 2
    await world.campaigns.create_offer(principal(), c.name, offer("Scarves"))
    await world.within(lambda i: offer_names(i, c.name) == ["Boots", "Scarves"])
    assert world.index.view("acme", build) == ["Boots", "Scarves"]
    assert world.index.view("acme", build) is builds[-1]
    # a change to acme leaves globex's view as it was
    assert world.index.view("globex", build) is other and len(builds) == 3
    await world.index.refresh()  # nothing changed: views are kept
    assert world.index.view("acme", build) is builds[-1] and len(builds) == 3


async def test_the_workflow_going_live_reaches_the_index(world: World) -> None:
    workflow = Workflow(world.db, world.campaigns, world.events, page_tokens=PAGES)
    c = await world.campaign()
    await workflow.act(principal(), c.name, "SUBMIT")  # auto-approved: under 1,000 USD
    await workflow.act(principal(), c.name, "GO_LIVE")
    took = await world.within(lambda i: i.get(c.name) is not None)
    assert took < PROPAGATION_S
    await workflow.act(principal(), c.name, "PAUSE")
    await world.within(lambda i: i.get(c.name) is None)
    await workflow.act(principal(), c.name, "RESUME")
    await world.within(lambda i: i.get(c.name) is not None)


async def test_an_exhausted_budget_leaves_the_index_and_a_raised_one_returns(
    world: World,
) -> None:
    c = await world.campaign()
    await world.set_stage(c, "LIVE")
    await world.within(lambda i: i.get(c.name) is not None)
    await world.budgets.record_events(
        None, "tenants/acme", [DeliveryEventIn(c.name, "bid-1", "WIN", usd(10))]
    )
    await world.within(lambda i: i.get(c.name) is None)  # budget.changed
    raised = dataclasses.replace(c.spec, budget=Budget(total=usd(500), daily=usd(20)))
    await world.campaigns.update(principal(), c.name, raised, ["budget"], "")
    await world.within(lambda i: i.get(c.name) is not None)  # campaign.changed


@pytest.mark.parametrize("world", [0.3], indirect=True)
async def test_the_periodic_refresh_repairs_lost_events(world: World) -> None:
    c = await world.campaign()
    await asyncio.sleep(0.1)  # the creation's own event is applied (a draft: no change)
    refreshes = world.index.refreshes
    await world.set_stage(c, "LIVE", publish=False)  # the event is lost
    await world.within(lambda i: i.get(c.name) is not None, 2.0)
    assert world.index.refreshes > refreshes
    async with world.db.engine.begin() as conn:
        await conn.execute(offers.delete().where(offers.c.campaign_id == c.id))
        await conn.execute(campaigns.delete().where(campaigns.c.id == c.id))
    await world.within(lambda i: i.get(c.name) is None, 2.0)


async def test_a_deleted_campaign_leaves_the_index(world: World) -> None:
    c = await world.campaign()
    await world.set_stage(c, "LIVE")
    await world.within(lambda i: i.get(c.name) is not None)
    version = world.index.version
    async with world.db.engine.begin() as conn:
        await conn.execute(offers.delete().where(offers.c.campaign_id == c.id))
        await conn.execute(campaigns.delete().where(campaigns.c.id == c.id))
    await world.events.publish(CampaignEvent("campaign.deleted", "acme", c.name, stage="DELETED"))
    await world.within(lambda i: i.get(c.name) is None)
    assert world.index.version > version
    # Noise on the subject neither breaks the index nor changes it.
    await world.bus.publish("campaign-express.campaigns.acme", b"not json")
    await asyncio.sleep(0.1)
    assert world.index.get(c.name) is None


async def test_a_restarted_index_loads_what_is_live(world: World) -> None:
    live = await world.campaign(pacing_mode="EVEN")
    spent = await world.campaign()
    for c in (live, spent):
        await world.set_stage(c, "LIVE")
    await world.budgets.record_events(
        None, "tenants/acme", [DeliveryEventIn(spent.name, "b", "WIN", usd(10))]
    )
    fresh = LiveCampaignIndex(world.db, world.bus, world.budgets)
    await fresh.start()
    try:
        assert [e.name for e in fresh.campaigns("acme")] == [live.name]
        assert len(fresh) == 1
        # EVEN and behind its curve, with nothing known about traffic yet.
        assert fresh.campaigns("acme")[0].bid_rate == 1.0
    finally:
        await fresh.stop()
    async with world.db.engine.connect() as conn:
        stages = (await conn.execute(sa.select(campaigns.c.stage))).scalars().all()
    assert sorted(stages) == ["LIVE", "LIVE"]
