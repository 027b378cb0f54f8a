"""Candidate selection: which live offers may serve an impression.

Pure functions over small request views (`Slot`, `Context`) and the live
index's campaigns; the bid processor builds the views from the OpenRTB
message once per request. Every rule here is a targeting promise to an
advertiser or a block from the publisher, so each is tested on its own.

The rules are written one campaign at a time (`campaign_matches`,
`offer_blocked`, `deal_allows`); bids run them compiled into bitmaps
(`CandidateIndex`), which tests hold equal to them."""

from __future__ import annotations

import functools
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from services.campaigns.index import (
    LiveCampaign,
    OfferFacts,
    PlacementKey,
    placement_keys,
    rule_tier,
)
from services.campaigns.model import Campaign, Offer, Schedule
from services.campaigns.schedule import in_daypart

MAX_CANDIDATES = 64

# OpenRTB 2.6 device types -> the campaign's device groups.
DEVICE_GROUPS = {
    1: "MOBILE",  # mobile/tablet (legacy)
    2: "DESKTOP",  # personal computer
    3: "CONNECTED_TV",
    4: "MOBILE",  # phone
    5: "TABLET",
    6: "CONNECTED_DEVICE",
    7: "CONNECTED_DEVICE",  # set top box
    8: "CONNECTED_DEVICE",  # OOH device
}


@dataclass(frozen=True, slots=True)
class Slot:
    """One impression opportunity."""

    imp_id: str
    formats: frozenset[str]  # BANNER, VIDEO, NATIVE, AUDIO
    sizes: frozenset[tuple[int, int]]  # banner/video sizes; empty = any
    floor: float  # CPM in `floor_currency`
    floor_currency: str
    deals: frozenset[str] = frozenset()
    private_auction: bool = False
    blocked_attributes: frozenset[int] = frozenset()
    placements: frozenset[PlacementKey] = field(init=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "placements", _placements(self.formats, self.sizes))


# Impressions repeat a few formats and sizes: their keys are made once.
_placements = functools.lru_cache(maxsize=4096)(placement_keys)


@dataclass(frozen=True, slots=True)
class Context:
    """Request-wide facts targeting and blocks are checked against."""

    now_us: int
    country: str = ""  # ISO alpha-3, "" unknown
    device_type: str = ""  # a DEVICE_GROUPS value, "" unknown
    site_domain: str = ""
    app_bundle: str = ""
    segments: frozenset[str] = frozenset()  # user segments, empty without consent
    blocked_categories: frozenset[str] = frozenset()
    blocked_advertisers: frozenset[str] = frozenset()
    blocked_apps: frozenset[str] = frozenset()
    loyalty_tier: str = ""  # BASIC, SILVER, GOLD, RESERVE ("": unknown user)


class Candidate(NamedTuple):
    """An offer that may serve (a tuple: a bid makes one per offer found)."""

    live: LiveCampaign
    facts: OfferFacts
    slots: tuple[str, ...] = ()  # imp ids the offer fits

    @property
    def campaign(self) -> Campaign:
        return self.live.campaign

    @property
    def offer(self) -> Offer:
        return self.facts.offer


def _domain_matches(domain: str, listed: Iterable[str]) -> bool:
    return any(domain == d or domain.endswith("." + d) for d in listed)


def campaign_matches(campaign: Campaign, ctx: Context) -> str | None:
    """None when the campaign may serve in this context, else why not."""
    spec = campaign.spec
    t = spec.targeting
    if not in_daypart(spec.schedule, ctx.now_us):
        return "daypart"
    if t.countries and ctx.country not in t.countries:
        return "geo"
    if t.device_types and ctx.device_type not in t.device_types:
        return "device"
    if ctx.site_domain:
        if t.site_deny and _domain_matches(ctx.site_domain, t.site_deny):
            return "site denied"
        if t.site_allow and not _domain_matches(ctx.site_domain, t.site_allow):
            return "site not allowed"
    elif t.site_allow and not ctx.app_bundle:
        return "site not allowed"
    if ctx.app_bundle:
        if ctx.app_bundle in t.app_deny or ctx.app_bundle in ctx.blocked_apps:
            return "app denied"
        if t.app_allow and ctx.app_bundle not in t.app_allow:
            return "app not allowed"
    elif t.app_allow and not ctx.site_domain:
        return "app not allowed"
    if t.segments and ctx.segments.isdisjoint(t.segments):
        return "segments"
    for rule in spec.loyalty_rules:
        if rule.exclude and rule_tier(rule.tier) == ctx.loyalty_tier:
            return "loyalty tier excluded"
    return None


def offer_blocked(offer: OfferFacts, ctx: Context) -> bool:
    """Request-wide blocks (bcat, badv): the same for every slot."""
    return not (
        ctx.blocked_categories.isdisjoint(offer.categories)
        and ctx.blocked_advertisers.isdisjoint(offer.advertisers)
    )


def deal_allows(campaign: LiveCampaign, slot: Slot) -> bool:
    """Deals honoured: a private auction admits only campaigns bidding on one
    of its deals; a campaign with deals bids only where one is offered."""
    if slot.private_auction or campaign.deals:
        return not campaign.deals.isdisjoint(slot.deals)
    return True


class _Masks:
    """One rule kind as bit sets: per value, the offers whose campaign lists it
    (or whose offer has it), and `unlisted`, the offers whose campaign lists
    no value of this kind (for allow lists: admitted whatever the request)."""

    __slots__ = ("by_value", "unlisted")

    def __init__(self) -> None:
        self.by_value: dict[Any, int] = {}
        self.unlisted = 0

    def add(self, values: Iterable[Any], bits: int) -> None:
        listed = False
        for value in values:
            self.by_value[value] = self.by_value.get(value, 0) | bits
            listed = True
        if not listed:
            self.unlisted |= bits

    def of(self, value: Any) -> int:
        return self.by_value.get(value, 0)

    def of_any(self, values: Iterable[Any]) -> int:
        found = 0
        by_value = self.by_value
        for value in values:
            found |= by_value.get(value, 0)
        return found

    def allowing(self, value: Any) -> int:
        """Offers an allow list of this kind admits for `value`."""
        return self.unlisted | self.by_value.get(value, 0)

    def allowing_any(self, values: Iterable[Any]) -> int:
        return self.unlisted | self.of_any(values)


def _domain_suffixes(domain: str) -> list[str]:
    """The domain and each parent: the values d with `domain == d` or
    `domain.endswith("." + d)` (what _domain_matches accepts)."""
    return [domain] + [domain[i + 1 :] for i, ch in enumerate(domain) if ch == "."]


class CandidateIndex:
    """A tenant's live offers compiled into bitmaps for candidate selection.

    Each offer gets one bit (campaign order, then offer order), and every rule
    becomes a lookup of the offers it admits or excludes, as a Python int used
    as a bit set: per country, device group, segment, site and app list
    entry, excluded loyalty tier, deal, placement key, creative attribute,
    IAB category and advertiser. A bid then costs a few dictionary lookups
    and integer operations per request term, not a scan of every campaign's
    targeting. Built when the tenant's live campaigns change (the live index
    caches it); the rules are those of `campaign_matches`, `offer_blocked`
    and `deal_allows`, and the tests hold the two equal.

    Dayparts depend on the time: the campaigns closed at an instant are
    evaluated once per minute (local hours change on whole minutes)."""

    def __init__(self, live: Sequence[LiveCampaign]) -> None:
        self.live = tuple(live)
        #: Whether a campaign's pacing throttle is on (bid_rate < 1).
        self.throttled = any(entry.bid_rate < 1 for entry in self.live)
        #: Whether a campaign has frequency caps.
        self.capped = any(entry.campaign.spec.frequency_caps for entry in self.live)
        self._entries: list[tuple[LiveCampaign, OfferFacts]] = []
        self._all = 0
        # campaign rules
        self._countries, self._devices, self._segments = _Masks(), _Masks(), _Masks()
        self._site_allow, self._site_deny = _Masks(), _Masks()
        self._app_allow, self._app_deny = _Masks(), _Masks()
        self._excluded_tiers, self._deals = _Masks(), _Masks()
        self._dayparted: list[tuple[Schedule, int]] = []
        self._closed_minute = -1
        self._closed = 0
        # offer facts
        self._placements, self._attributes = _Masks(), _Masks()
        self._categories, self._advertisers = _Masks(), _Masks()
        for entry in self.live:
            bits = 0
            for facts in entry.offer_facts:
                bit = 1 << len(self._entries)
                self._entries.append((entry, facts))
                bits |= bit
                self._placements.add(facts.placements, bit)
                self._attributes.add(facts.attributes, bit)
                self._categories.add(facts.categories, bit)
                self._advertisers.add(facts.advertisers, bit)
            self._all |= bits
            self._add_campaign(entry, bits)
        # offers of campaigns with deals: they bid only where one is offered
        self._deal_bound = self._all & ~self._deals.unlisted

    def _add_campaign(self, entry: LiveCampaign, bits: int) -> None:
        spec = entry.campaign.spec
        t = spec.targeting
        if spec.schedule.dayparts:
            self._dayparted.append((spec.schedule, bits))
        self._countries.add(t.countries, bits)
        self._devices.add(t.device_types, bits)
        self._segments.add(t.segments, bits)
        self._site_allow.add(t.site_allow, bits)
        self._site_deny.add(t.site_deny, bits)
        self._app_allow.add(t.app_allow, bits)
        self._app_deny.add(t.app_deny, bits)
        self._excluded_tiers.add((rule_tier(r.tier) for r in spec.loyalty_rules if r.exclude), bits)
        self._deals.add(entry.deals, bits)

    def _closed_at(self, now_us: int) -> int:
        minute = now_us // 60_000_000
        if minute != self._closed_minute:
            closed = 0
            for schedule, bits in self._dayparted:
                if not in_daypart(schedule, now_us):
                    closed |= bits
            self._closed, self._closed_minute = closed, minute
        return self._closed

    def _admitted(self, ctx: Context) -> int:
        """Offers whose campaign may serve in this context and that the
        request's blocks (bcat, badv) leave."""
        admitted = self._all
        if self._dayparted:
            admitted &= ~self._closed_at(ctx.now_us)
        admitted &= self._countries.allowing(ctx.country)
        admitted &= self._devices.allowing(ctx.device_type)
        if ctx.site_domain:
            suffixes = _domain_suffixes(ctx.site_domain)
            admitted &= ~self._site_deny.of_any(suffixes)
            admitted &= self._site_allow.allowing_any(suffixes)
        elif not ctx.app_bundle:
            admitted &= self._site_allow.unlisted
        if ctx.app_bundle:
            if ctx.app_bundle in ctx.blocked_apps:
                return 0
            admitted &= ~self._app_deny.of(ctx.app_bundle)
            admitted &= self._app_allow.allowing(ctx.app_bundle)
        elif not ctx.site_domain:
            admitted &= self._app_allow.unlisted
        admitted &= self._segments.allowing_any(ctx.segments)
        admitted &= ~self._excluded_tiers.of(ctx.loyalty_tier)
        if ctx.blocked_categories:
            admitted &= ~self._categories.of_any(ctx.blocked_categories)
        if ctx.blocked_advertisers:
            admitted &= ~self._advertisers.of_any(ctx.blocked_advertisers)
        return admitted

    def _fitting(self, slot: Slot) -> int:
        """Offers that fit the slot: placement, creative attributes, deals."""
        fits = self._placements.of_any(slot.placements)
        if fits and slot.blocked_attributes:
            fits &= ~self._attributes.of_any(slot.blocked_attributes)
        if fits and (slot.private_auction or self._deal_bound):
            with_deal = self._deals.of_any(slot.deals)
            fits &= with_deal if slot.private_auction else ~self._deal_bound | with_deal
        return fits

    def select(self, slots: Sequence[Slot], ctx: Context) -> list[Candidate]:
        """Offers that fit at least one slot, at most MAX_CANDIDATES, in
        campaign then offer order, each with the slots it fits."""
        admitted = self._admitted(ctx)
        if not admitted:
            return []
        per_slot = [(slot.imp_id, self._fitting(slot) & admitted) for slot in slots]
        remaining = 0
        for _, fits in per_slot:
            remaining |= fits
        out: list[Candidate] = []
        entries = self._entries
        only = (per_slot[0][0],) if len(per_slot) == 1 else None
        while remaining and len(out) < MAX_CANDIDATES:
            lowest = remaining & -remaining
            remaining ^= lowest
            entry, facts = entries[lowest.bit_length() - 1]
            imp_ids = only or tuple([imp_id for imp_id, fits in per_slot if fits & lowest])
            out.append(Candidate(entry, facts, imp_ids))
        return out
