"""The live campaign index: LIVE campaigns and their ACTIVE offers, per tenant,
in memory, for bidding to read without touching the database per bid.

How it stays current (change propagation):
- `start()` subscribes to `campaign-express.campaigns.>` (every tenant's
  campaign events: campaign.changed / campaign.deleted / offer.changed /
  offer.deleted / budget.changed), then loads everything once.
- An event only marks its campaign dirty; one worker task reloads dirty
  campaigns (a few at a time, two queries) and applies the result. One worker
  means reloads and full refreshes never race: the newest read always wins.
- Every `refresh_seconds` the worker reloads everything, which repairs events
  lost on the way (publishing is best effort after the commit) and picks up
  budgets that reset at local midnight.
- A campaign is in the index when its stage is LIVE and its budgets allow
  bidding; an exhausted budget takes it out. Each load evaluates the budget
  status (`Budgets.evaluate_many`), which ticks the pacing throttle and gives
  the entry its `bid_rate`: the 30 s refresh is the throttle's heartbeat.

The subscription is a plain (non-queue) one: every process running an index
gets every event.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, TypeVar, cast

from sqlalchemy.ext.asyncio import AsyncConnection

from inference.features import tier_name
from services.backends import BusMessage, MessageBus, Subscription
from services.campaigns import events as campaign_events
from services.campaigns import store
from services.campaigns.budget import Budgets
from services.campaigns.model import Campaign, CampaignSpec, Offer
from services.campaigns.tables import campaigns, offers
from services.common.clock import Clock, now_us
from services.db import Database

log = logging.getLogger(__name__)

SUBSCRIPTION = f"{campaign_events.SUBJECT_PREFIX}.>"
DEFAULT_REFRESH_SECONDS = 30.0
_BATCH = 200  # campaigns reloaded per query
_RETRY_SECONDS = 0.5


SIZED_FORMATS = frozenset(("BANNER", "VIDEO"))


def rule_tier(value: str) -> str:
    """A campaign loyalty rule's tier as bids name it: `gold` is GOLD, the
    old entry tier `green` is SILVER; a name that is no tier stays as
    written (upper case), matching nobody."""
    return tier_name(value) or value.strip().upper()


# Higher-tier users have higher lifetime value: bid more for them
# (request-flow document, step 7); Basic and Silver bid at 1.0.
TIER_BOOST = {"RESERVE": 1.30, "GOLD": 1.15}

PlacementKey = tuple[str] | tuple[str, int, int]


def placement_keys(
    formats: Iterable[str], sizes: Iterable[tuple[int, int]]
) -> frozenset[PlacementKey]:
    """Where a creative goes, as keys an offer and an impression share when
    the offer fits: (format, w, h) for sized formats with sizes, else
    (format,). An offer of a sized format also gets (format,), so it fits an
    impression that names no size."""
    sizes = frozenset(sizes)
    keys: set[PlacementKey] = set()
    for fmt in formats:
        if fmt in SIZED_FORMATS and sizes:
            keys.update((fmt, w, h) for w, h in sizes)
        else:
            keys.add((fmt,))
    return frozenset(keys)


def _own_template(offer: Offer) -> str:
    parts = offer.spec.creative_template.split("/")
    if len(parts) == 4 and parts[1] == offer.tenant_id:
        return parts[3]
    return ""


@dataclass(frozen=True, slots=True)
class OfferFacts:
    """What candidate selection checks of an offer, as sets built once when
    the index loads it (not once per bid)."""

    offer: Offer
    categories: frozenset[str]
    advertisers: frozenset[str]  # lower case
    attributes: frozenset[int]
    name: str  # resource name (Offer.name formats it on every call)
    placements: frozenset[PlacementKey]
    base_cpm: float  # the offer's bid CPM, else the campaign's max CPM
    currency: str  # of base_cpm
    #: The id of the DCO template whose variants are its markup (one of
    #: its own tenant's), or "".
    creative_template: str = ""

    @classmethod
    def of(cls, offer: Offer, campaign: CampaignSpec) -> OfferFacts:
        spec = offer.spec
        sizes = [(s.width, s.height) for s in spec.sizes]
        base = spec.bid_cpm if spec.bid_cpm.is_set else campaign.bid_strategy.max_cpm
        return cls(
            offer=offer,
            placements=placement_keys([spec.format], sizes) | {(spec.format,)},
            name=offer.name,
            categories=frozenset(spec.iab_categories),
            advertisers=frozenset(d.lower() for d in spec.advertiser_domains),
            attributes=frozenset(spec.attributes),
            base_cpm=base.amount_micros / 1e6,
            currency=base.currency_code or campaign.budget.total.currency_code or "USD",
            creative_template=_own_template(offer),
        )


@dataclass(frozen=True, slots=True)
class LiveCampaign:
    """A campaign bidding may serve, with its ACTIVE offers and the pacing
    throttle: bidding takes an opportunity with probability `bid_rate`.
    The other fields are derived from these on construction."""

    campaign: Campaign
    offers: tuple[Offer, ...]
    bid_rate: float = 1.0
    offer_facts: tuple[OfferFacts, ...] = field(init=False, compare=False, repr=False)
    deals: frozenset[str] = field(init=False, compare=False, repr=False)
    max_cpm: float | None = field(init=False, compare=False, repr=False)
    # loyalty tier -> bid multiplier: the platform's tier boost times the
    # campaign's own (non-excluding) rules for that tier; 1.0 for others
    tier_boost: dict[str, float] = field(init=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        spec = self.campaign.spec
        object.__setattr__(self, "offer_facts", tuple(OfferFacts.of(o, spec) for o in self.offers))
        object.__setattr__(self, "deals", frozenset(spec.targeting.deals))
        max_cpm = spec.bid_strategy.max_cpm
        object.__setattr__(self, "max_cpm", max_cpm.amount_micros / 1e6 if max_cpm.is_set else None)
        boosts = dict(TIER_BOOST)
        for rule in spec.loyalty_rules:
            tier = rule_tier(rule.tier)
            if tier and not rule.exclude:
                boosts[tier] = boosts.get(tier, 1.0) * rule.bid_multiplier
        object.__setattr__(self, "tier_boost", boosts)

    @property
    def name(self) -> str:
        return self.campaign.name

    @property
    def tenant_id(self) -> str:
        return self.campaign.tenant_id


Key = tuple[str, str]  # (tenant id, campaign id)
V = TypeVar("V")


def _key_of(campaign_name: str) -> Key | None:
    parts = campaign_name.split("/")
    if len(parts) != 4 or parts[0] != "tenants" or parts[2] != "campaigns":
        return None
    return parts[1], parts[3]


class LiveCampaignIndex:
    def __init__(
        self,
        db: Database,
        bus: MessageBus,
        budgets: Budgets,
        *,
        refresh_seconds: float = DEFAULT_REFRESH_SECONDS,
        clock: Clock = now_us,
    ) -> None:
        self._db = db
        self._bus = bus
        self._budgets = budgets
        self._refresh_seconds = refresh_seconds
        self._clock = clock
        self._by_tenant: dict[str, dict[str, LiveCampaign]] = {}
        # (tenant id, builder) -> what the builder made of its live campaigns
        self._views: dict[tuple[str, Callable[[list[LiveCampaign]], Any]], Any] = {}
        self._dirty: set[Key] = set()
        self._wake = asyncio.Event()
        self._changed = asyncio.Event()
        self._subscription: Subscription | None = None
        self._worker: asyncio.Task[None] | None = None
        self._next_refresh = 0.0
        #: Bumped on every change of the contents; tests wait on it.
        self.version = 0
        #: Full refreshes done (for tests and metrics).
        self.refreshes = 0

    # -- reading -------------------------------------------------------------

    def tenants(self) -> list[str]:
        """The tenants with live campaigns."""
        return sorted(t for t, found in self._by_tenant.items() if found)

    def campaigns(self, tenant_id: str) -> list[LiveCampaign]:
        """The tenant's live campaigns, by id."""
        found = self._by_tenant.get(tenant_id, {})
        return [found[k] for k in sorted(found)]

    def view(self, tenant_id: str, build: Callable[[list[LiveCampaign]], V]) -> V:
        """`build(self.campaigns(tenant_id))`, made once and kept until that
        tenant's live campaigns change: for structures compiled from them (the
        bidder's candidate bitmaps) that are too costly to make per bid."""
        key = (tenant_id, build)
        found = self._views.get(key)
        if found is None:
            found = self._views[key] = build(self.campaigns(tenant_id))
        return cast(V, found)

    def get(self, campaign_name: str) -> LiveCampaign | None:
        key = _key_of(campaign_name)
        if key is None:
            return None
        return self._by_tenant.get(key[0], {}).get(key[1])

    def __len__(self) -> int:
        return sum(len(v) for v in self._by_tenant.values())

    async def wait_for(
        self,
        predicate: Callable[[LiveCampaignIndex], bool],
        timeout: float,  # noqa: ASYNC109 - a test helper; reads better than a context
    ) -> None:
        """Return once `predicate(self)` holds; TimeoutError after `timeout` s."""
        deadline = time.monotonic() + timeout
        while not predicate(self):
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"index condition not met within {timeout} s")
            changed = self._changed
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(changed.wait(), left)

    # -- lifecycle -----------------------------------------------------------

    async def start(self) -> None:
        """Subscribe, load everything, and start the worker. Events that
        arrive during the first load are applied right after it."""
        if self._worker is not None:
            return
        self._subscription = await self._bus.subscribe(SUBSCRIPTION, self._on_event)
        # Changes published while this process was cut off from the bus never
        # arrive: read everything again as soon as it is back.
        self._bus.on_reconnect(self._refresh_soon)
        await self.refresh()
        self._worker = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        if self._subscription is not None:
            with contextlib.suppress(Exception):
                await self._subscription.unsubscribe()
            self._subscription = None
        if self._worker is not None:
            self._worker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._worker
            self._worker = None

    # -- keeping current -----------------------------------------------------

    async def _refresh_soon(self) -> None:
        self._next_refresh = 0.0
        self._wake.set()

    async def _on_event(self, message: BusMessage) -> None:
        try:
            event = campaign_events.decode(message.data)
        except Exception:  # a malformed event must not be redelivered forever
            log.warning("index: undecodable campaign event on %s", message.subject)
            return
        key = _key_of(event.campaign)
        if key is not None:
            self._dirty.add(key)
            self._wake.set()

    async def _run(self) -> None:
        while True:
            now = time.monotonic()
            if now >= self._next_refresh:
                try:
                    await self.refresh()
                except Exception:
                    log.warning("index: full refresh failed; retrying", exc_info=True)
                    self._next_refresh = time.monotonic() + _RETRY_SECONDS
            if self._dirty:
                keys = set(self._dirty)
                self._dirty.clear()
                try:
                    await self._reload(keys)
                except Exception:
                    log.warning("index: reload failed; retrying", exc_info=True)
                    self._dirty |= keys
                    await asyncio.sleep(_RETRY_SECONDS)
                continue
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(
                    self._wake.wait(), max(0.0, self._next_refresh - time.monotonic())
                )

    async def refresh(self) -> None:
        """Reload every live campaign (the repair path)."""
        self._dirty.clear()  # the full read below covers what was dirty so far
        async with self._db.engine.connect() as conn:
            rows = (await conn.execute(campaigns.select().where(campaigns.c.stage == "LIVE"))).all()
            live = [store.campaign_from_row(r) for r in rows]
            offers_of = await self._offers(conn, [c.id for c in live])
        budget = await self._budgets.evaluate_many(live, self._clock())
        fresh: dict[str, dict[str, LiveCampaign]] = {}
        for campaign in live:
            status = budget[campaign.id]
            if status.can_bid:
                fresh.setdefault(campaign.tenant_id, {})[campaign.id] = LiveCampaign(
                    campaign, tuple(offers_of.get(campaign.id, ())), status.bid_rate
                )
        old = self._by_tenant
        changed = {t for t in fresh.keys() | old.keys() if fresh.get(t) != old.get(t)}
        self._by_tenant = fresh
        self.refreshes += 1
        self._next_refresh = time.monotonic() + self._refresh_seconds
        self._bump(changed, force=self.refreshes == 1)

    async def _reload(self, keys: Iterable[Key]) -> None:
        ordered = sorted(keys)
        for start in range(0, len(ordered), _BATCH):
            await self._reload_batch(ordered[start : start + _BATCH])

    async def _reload_batch(self, keys: list[Key]) -> None:
        ids = [cid for _, cid in keys]
        async with self._db.engine.connect() as conn:
            rows = (
                await conn.execute(
                    campaigns.select().where(campaigns.c.id.in_(ids), campaigns.c.stage == "LIVE")
                )
            ).all()
            wanted = set(keys)
            live = [store.campaign_from_row(r) for r in rows]
            live = [c for c in live if (c.tenant_id, c.id) in wanted]
            offers_of = await self._offers(conn, [c.id for c in live])
        budget = await self._budgets.evaluate_many(live, self._clock())
        keep = {
            c.id: LiveCampaign(c, tuple(offers_of.get(c.id, ())), budget[c.id].bid_rate)
            for c in live
            if budget[c.id].can_bid
        }
        changed: set[str] = set()
        for tenant_id, campaign_id in keys:
            entries = self._by_tenant.setdefault(tenant_id, {})
            entry = keep.get(campaign_id)
            if entry is None:
                if entries.pop(campaign_id, None) is not None:
                    changed.add(tenant_id)
            elif entries.get(campaign_id) != entry:
                entries[campaign_id] = entry
                changed.add(tenant_id)
            if not entries:
                del self._by_tenant[tenant_id]
        self._bump(changed)

    async def _offers(self, conn: AsyncConnection, ids: list[str]) -> dict[str, list[Offer]]:
        found: dict[str, list[Offer]] = {}
        for start in range(0, len(ids), _BATCH):
            query = (
                offers.select()
                .where(offers.c.campaign_id.in_(ids[start : start + _BATCH]))
                .where(offers.c.status == "ACTIVE")
                .order_by(offers.c.campaign_id, offers.c.create_time, offers.c.id)
            )
            for row in (await conn.execute(query)).all():
                offer = store.offer_from_row(row)
                found.setdefault(offer.campaign_id, []).append(offer)
        return found

    def _bump(self, tenants: set[str], *, force: bool = False) -> None:
        """Note a change of these tenants' live campaigns: their views are
        made again on next use, other tenants keep theirs."""
        if not tenants and not force:
            return
        self.version += 1
        if tenants:
            self._views = {k: v for k, v in self._views.items() if k[0] not in tenants}
        self._changed.set()
        self._changed = asyncio.Event()
