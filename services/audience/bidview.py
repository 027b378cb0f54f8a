"""The bid-time view of profiles: the record the bidder's ProfileStore reads
(services.bidding.profiles, Redis at scale), written by the audience domain
after each batch of calls it applies, for every profile whose view the
batch changed (new, merged into, a new loyalty tier, or last seen moved by a
minute or more: profiles.bid_signature), under every identity of the
profile a bid request can name (its user ids, anonymous ids and device
advertising ids), as `<tenant>/<id>`: the bid path's user id (user.id, else
user.buyeruid, else device.ifa) finds the profile when it is one of them.

What a profile gives the bid today: `last_seen_us` (the model's recency
feature), the loyalty tier from the `loyalty_tier` trait (BASIC, SILVER,
GOLD or RESERVE, any case; the old GREEN is SILVER; anything else is BASIC)
and the loyalty state from the `loyalty` trait (stars_balance,
tier_progress, earn_rate, lifetime_stars: numbers; the loyalty domain
writes both, services/loyalty/sync.py), and its segments (their bid indexes,
which campaigns target; rewritten when memberships change). Interests join
it with decisioning. The process's own ProfileStore
is written, so its cache holds the new record at once; the ids are then
published on the bus (services.bidding.profile_changes) and the other
processes drop them from their caches.

A failing hot store does not stop the applier: the view is written again
on the profile's next change of its view; the failure is counted and
logged."""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from inference.features import tier_name
from services.audience.profiles import (
    ADVERTISING,
    BID_TRAITS,
    IngestResult,
    Profile,
    Profiles,
    granted,
)
from services.audience.tracking import TrackedCall
from services.bidding.profile_changes import ProfileChanges
from services.bidding.profiles import (
    MAX_SUPPRESSIONS,
    LoyaltyState,
    ProfileStore,
    UserProfile,
    tenant_user,
)

log = logging.getLogger(__name__)

LOYALTY_TIER_TRAIT = "loyalty_tier"
LOYALTY_STATE_TRAIT = "loyalty"
#: Campaigns not to bid for the person on, and until when: {campaign id, or
#: "*" for all: microseconds since the epoch} (a journey's suppressBidding
#: step writes it).
BID_SUPPRESSION_TRAIT = "bid_suppression"
#: How long a written view lives in the hot store: rewritten at each change,
#: so a person keeps their view while active within this time (at scale the
#: hot store also evicts under memory pressure: docs/audience.md).
VIEW_TTL_SECONDS = 30 * 86_400
assert LOYALTY_TIER_TRAIT in BID_TRAITS  # what Profiles watches for changes
assert LOYALTY_STATE_TRAIT in BID_TRAITS
assert BID_SUPPRESSION_TRAIT in BID_TRAITS
#: The identities a bid request can carry (user.id / buyeruid, device.ifa).
_KINDS = ("user_id", "anonymous_id", "ifa")


def bid_profile(profile: Profile, user_id: str, segments: Sequence[int] = ()) -> UserProfile:
    """The bid-time record of a profile, for one of its ids; `segments`: the
    bid indexes of its segments."""
    loyalty = loyalty_state(
        profile.traits.get(LOYALTY_TIER_TRAIT), profile.traits.get(LOYALTY_STATE_TRAIT)
    )
    return UserProfile(
        tenant_user(profile.tenant_id, user_id),
        segments=tuple(segments),
        loyalty=loyalty,
        last_seen_us=profile.last_seen_us,
        version=profile.version,
        ads_opt_out=granted(profile.consent, ADVERTISING) is False,
        suppressed=suppressions(profile.traits.get(BID_SUPPRESSION_TRAIT)),
    )


def loyalty_state(tier: Any, state: Any) -> LoyaltyState:
    """The bid record's loyalty state from the profile's two traits; values
    that are not finite numbers (or are negative) are left at 0."""
    name = tier_name(tier) if isinstance(tier, str) else None
    numbers: dict[str, float] = {}
    if isinstance(state, dict):
        for key in ("stars_balance", "tier_progress", "earn_rate", "lifetime_stars"):
            value = state.get(key)
            if isinstance(value, int | float) and not isinstance(value, bool):
                if math.isfinite(value) and value >= 0:
                    numbers[key] = float(value)
    return LoyaltyState(
        tier=name or "BASIC",
        stars_balance=numbers.get("stars_balance", 0.0),
        tier_progress=min(1.0, numbers.get("tier_progress", 0.0)),
        earn_rate=numbers.get("earn_rate", 0.0),
        lifetime_stars=numbers.get("lifetime_stars", 0.0),
    )


def suppressions(value: Any) -> tuple[tuple[str, int], ...]:
    """The bid suppressions of a `bid_suppression` trait: its well-formed
    entries, the latest-ending MAX_SUPPRESSIONS."""
    if not isinstance(value, dict):
        return ()
    found = [
        (str(campaign), int(until))
        for campaign, until in value.items()
        if isinstance(until, int | float)
        and not isinstance(until, bool)
        and 1 <= len(str(campaign).encode()) <= 255
    ]
    found.sort(key=lambda entry: (-entry[1], entry[0]))
    return tuple(found[:MAX_SUPPRESSIONS])


#: The bid indexes of the segments each of a tenant's profiles is in.
SegmentsOf = Callable[[str, Sequence[str]], Awaitable[dict[str, list[int]]]]


class BidView:
    def __init__(
        self,
        profiles: Profiles,
        store: ProfileStore,
        changes: ProfileChanges | None = None,
        segments_of: SegmentsOf | None = None,
    ) -> None:
        self._profiles = profiles
        self._store = store
        self._changes = changes
        self._segments_of = segments_of
        self.written = 0
        self.failures = 0

    async def on_applied(
        self, tenant_id: str, source: str, calls: Sequence[TrackedCall], result: IngestResult
    ) -> None:
        if result.bid_changed:
            await self.write(tenant_id, result.bid_changed)

    async def write(self, tenant_id: str, profile_ids: Sequence[str]) -> None:
        if not profile_ids:
            return
        profiles = await self._profiles.get_many(tenant_id, profile_ids)
        segments = (
            await self._segments_of(tenant_id, [p.id for p in profiles])
            if self._segments_of is not None
            else {}
        )
        records = [
            bid_profile(profile, value, segments.get(profile.id, ()))
            for profile in profiles
            for kind in _KINDS
            for value in profile.identities.get(kind, ())
        ]
        outcomes = await asyncio.gather(
            *(self._store.put(record, VIEW_TTL_SECONDS) for record in records),
            return_exceptions=True,
        )
        failed = [o for o in outcomes if isinstance(o, BaseException)]
        self.written += len(records) - len(failed)
        if self._changes is not None and records:
            await self._changes.changed(tenant_id, [r.user_id for r in records])
        if failed:
            self.failures += len(failed)
            log.warning(
                "audience: %d of %d bid-time profiles not written (%r)",
                len(failed),
                len(records),
                failed[0],
            )
