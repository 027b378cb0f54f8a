"""Candidate selection: which live offers may serve an impression.

Pure functions over small request views (`Slot`, `Context`) and the live
index's campaigns; the bid processor builds the views from the OpenRTB
message once per request. Every rule here is a targeting promise to an
advertiser or a block from the publisher, so each is tested on its own."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from services.campaigns.index import LiveCampaign, OfferFacts, PlacementKey, placement_keys
from services.campaigns.model import Campaign, Offer
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
        object.__setattr__(self, "placements", placement_keys(self.formats, self.sizes))


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
    loyalty_tier: str = ""  # GREEN, GOLD, RESERVE


@dataclass(frozen=True, slots=True)
class Candidate:
    live: LiveCampaign
    facts: OfferFacts
    slots: tuple[str, ...] = field(default=())  # imp ids the offer fits

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
        if rule.exclude and rule.tier.upper() == ctx.loyalty_tier:
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


def select_candidates(
    live: Sequence[LiveCampaign], slots: Sequence[Slot], ctx: Context
) -> tuple[list[Candidate], dict[str, int]]:
    """Offers that fit at least one slot, at most MAX_CANDIDATES, in campaign
    then offer order, and the count of campaigns left out per reason (for
    no-bid reasons).

    An offer fits a slot when they share a placement key (format and size)
    and none of the slot's blocked creative attributes; this runs for every
    live campaign on every bid, so a slot looks its keys up in the campaign's
    offers by placement (only offers of a fitting format and size are
    visited), and the request-wide blocks are checked once per offer found."""
    out: list[Candidate] = []
    rejected: dict[str, int] = {}
    for entry in live:
        why = campaign_matches(entry.campaign, ctx)
        if why is not None:
            rejected[why] = rejected.get(why, 0) + 1
            continue
        by_placement = entry.offers_by_placement
        facts = entry.offer_facts
        fits: dict[int, list[str]] = {}  # offer position -> imp ids, in slot order
        for slot in slots:
            # Deals depend on the campaign and slot only: decided once per slot.
            if not deal_allows(entry, slot):
                continue
            imp_id, blocked_attributes = slot.imp_id, slot.blocked_attributes
            for key in slot.placements:
                for position in by_placement.get(key, ()):
                    if blocked_attributes and not blocked_attributes.isdisjoint(
                        facts[position].attributes
                    ):
                        continue
                    found = fits.setdefault(position, [])
                    if not found or found[-1] != imp_id:  # two keys of one slot
                        found.append(imp_id)
        for position in sorted(fits):
            offer = facts[position]
            if offer_blocked(offer, ctx):
                continue
            out.append(Candidate(entry, offer, tuple(fits[position])))
            if len(out) >= MAX_CANDIDATES:
                return out, rejected
    return out, rejected
