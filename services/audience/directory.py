"""Profiles as other domains read them to reach people: a recipient's
traits and their marketing consent per channel, and a segment's members
(the messaging domain's sender and campaign sends, through the
`audience_directory` interface)."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa

from services.audience.bidview import BID_SUPPRESSION_TRAIT, suppressions
from services.audience.devices import Devices
from services.audience.profiles import Profiles, granted
from services.audience.tables import (
    audience_identities,
    audience_profiles,
    audience_segment_members,
    audience_segments,
)
from services.common.errors import NotFound

#: The trait of a person's tags (a list of strings).
TAGS_TRAIT = "tags"
#: The channels consent is asked for (messaging's).
CHANNELS = ("email", "sms", "push", "web_push", "whatsapp", "webhook", "in_app", "content_card")


@dataclass(frozen=True, slots=True)
class Recipient:
    id: str
    traits: Mapping[str, Any]
    # channel -> True (granted), False (refused), None (never asked)
    marketing: Mapping[str, bool | None] = field(default_factory=dict)
    #: The id their events carry: their first user id, else their first
    #: anonymous id, else the profile's id (an experiment's unit).
    unit: str = ""


@dataclass(frozen=True, slots=True)
class PushTarget:
    """A device a push can go to."""

    platform: str  # ios, android, web
    token: str  # a push token; for web push, the subscription's endpoint
    web_push_keys: Mapping[str, str] | None = None  # p256dh, auth
    app_id: str = ""


class Directory:
    def __init__(self, profiles: Profiles, devices: Devices | None = None) -> None:
        self._profiles = profiles
        self._devices = devices
        #: Told of profiles whose traits changed here (the audience domain
        #: binds it: segments and the bid view follow).
        self.changed: Callable[[str, list[str]], Awaitable[None]] | None = None

    async def update_traits(
        self, tenant_id: str, profile_id: str, set_traits: Mapping[str, Any]
    ) -> str:
        """Set traits on a profile (or the one it was merged into): its id.
        NotFound when there is none; InvalidArgument for bad trait names."""
        updated = await self._profiles.update_traits(tenant_id, profile_id, dict(set_traits))
        if self.changed is not None:
            await self.changed(tenant_id, [updated.id])
        return str(updated.id)

    async def bid_person(self, tenant_id: str, bid_user_id: str) -> str | None:
        """The profile (id) a bid request's user id names: one of its user
        ids, anonymous ids or device advertising ids (as the bid-time view
        is written under them); None when none has it."""
        for kind in ("user_id", "anonymous_id", "ifa"):
            found = await self._profiles.resolve(tenant_id, kind, bid_user_id)
            if found is not None:
                return str(found.id)
        return None

    async def suppress_bidding(
        self, tenant_id: str, profile_id: str, campaign_id: str, until_us: int
    ) -> None:
        """No bids for the person for a campaign (or "*": every campaign)
        until then (microseconds since the epoch): their `bid_suppression`
        trait, which the bid-time view carries. A later end extends one in
        force; an earlier one never shortens it; ended ones are dropped."""
        profile = await self._profiles.get(tenant_id, profile_id)
        current = profile.traits.get(BID_SUPPRESSION_TRAIT)
        now = time.time_ns() // 1000
        kept = {campaign: until for campaign, until in suppressions(current) if until > now}
        kept[campaign_id] = max(kept.get(campaign_id, 0), until_us)
        await self.update_traits(tenant_id, profile.id, {BID_SUPPRESSION_TRAIT: kept})

    async def tag(
        self, tenant_id: str, profile_id: str, add: Sequence[str], remove: Sequence[str]
    ) -> list[str]:
        """Tags added to and removed from the person's `tags` trait (a list;
        anything else counts as none), each once, in order: the tags now.
        Segments with a condition on `tags` follow."""
        profile = await self._profiles.get(tenant_id, profile_id)
        current = profile.traits.get(TAGS_TRAIT)
        tags = [str(t) for t in current] if isinstance(current, list) else []
        gone = set(remove)
        kept = [t for t in tags if t not in gone]
        kept += [t for t in dict.fromkeys(add) if t not in kept and t not in gone]
        await self.update_traits(tenant_id, profile.id, {TAGS_TRAIT: kept})
        return kept

    async def push_targets(self, tenant_id: str, profile_id: str) -> list[PushTarget]:
        """The profile's active devices."""
        if self._devices is None:
            return []
        return [
            PushTarget(d.platform, d.token, d.web_push_keys, d.app_id)
            for d in await self._devices.active_devices(tenant_id, profile_id)
        ]

    async def token_gone(self, tenant_id: str, platform: str, token: str, reason: str) -> bool:
        """A push service said this token no longer works: its device is invalid."""
        if self._devices is None:
            return False
        return await self._devices.invalidate_token(tenant_id, platform, token, reason)

    async def person(self, tenant_id: str, profile_id: str, user_id: str) -> Recipient | None:
        """The profile by id (or the one it was merged into), else by user
        id; None when there is none."""
        if profile_id:
            try:
                profile = await self._profiles.get(tenant_id, profile_id)
            except NotFound:
                return None
        else:
            found = await self._profiles.resolve(tenant_id, "user_id", user_id)
            if found is None:
                return None
            profile = found
        ids = profile.identities
        return Recipient(
            profile.id,
            dict(profile.traits),
            {channel: granted(profile.consent, "marketing", channel) for channel in CHANNELS},
            unit=next(iter(ids.get("user_id") or ids.get("anonymous_id") or []), profile.id),
        )

    async def people(self, tenant_id: str, profile_ids: Sequence[str]) -> dict[str, Recipient]:
        """Many profiles by id at once (a sender's batch): one query, and one
        more lookup each for the few merged into another. A profile that
        is not there is left out."""
        p = audience_profiles.c
        wanted = sorted(set(profile_ids))
        found: dict[str, Recipient] = {}
        merged: list[str] = []
        async with self._profiles.db.engine.connect() as conn:
            for first in range(0, len(wanted), 500):
                rows = await conn.execute(
                    sa.select(p.id, p.traits, p.consent, p.merged_into).where(
                        p.tenant_id == tenant_id, p.id.in_(wanted[first : first + 500])
                    )
                )
                for row in rows:
                    if row.merged_into is not None:
                        merged.append(row.id)
                        continue
                    consent = dict(row.consent or {})
                    found[row.id] = Recipient(
                        row.id,
                        dict(row.traits),
                        {channel: granted(consent, "marketing", channel) for channel in CHANNELS},
                    )
            units = await self._units(conn, tenant_id, list(found))
        for profile_id, unit in units.items():
            found[profile_id] = dataclasses.replace(found[profile_id], unit=unit)
        for profile_id in merged:
            person = await self.person(tenant_id, profile_id, "")
            if person is not None:
                found[profile_id] = person
        return found

    @staticmethod
    async def _units(conn: Any, tenant_id: str, profile_ids: list[str]) -> dict[str, str]:
        """Each profile's unit (Recipient.unit): its first user id, else its
        first anonymous id, else its own id."""
        i = audience_identities.c
        firsts: dict[str, dict[str, tuple[int, str]]] = {}
        for first in range(0, len(profile_ids), 500):
            rows = await conn.execute(
                sa.select(i.profile_id, i.kind, i.value, i.create_time).where(
                    i.tenant_id == tenant_id,
                    i.kind.in_(("user_id", "anonymous_id")),
                    i.profile_id.in_(profile_ids[first : first + 500]),
                )
            )
            for row in rows:
                kinds = firsts.setdefault(row.profile_id, {})
                seen = kinds.get(row.kind)
                if seen is None or (row.create_time, row.value) < seen:
                    kinds[row.kind] = (row.create_time, row.value)
        out = {}
        for profile_id in profile_ids:
            kinds = firsts.get(profile_id, {})
            chosen = kinds.get("user_id") or kinds.get("anonymous_id")
            out[profile_id] = chosen[1] if chosen else profile_id
        return out

    async def segment_size(self, tenant_id: str, segment_id: str) -> int | None:
        """A segment's member count (as last counted); None when the tenant
        has no such segment."""
        s = audience_segments.c
        async with self._profiles.db.engine.connect() as conn:
            size = await conn.scalar(
                sa.select(s.size).where(s.tenant_id == tenant_id, s.id == segment_id)
            )
        return None if size is None else int(size)

    async def member_ids(
        self, tenant_id: str, segment_id: str, after: str = "", limit: int = 1_000
    ) -> list[str] | None:
        """A page of a segment's members in profile order, after `after`;
        None when the tenant has no such segment."""
        m, s = audience_segment_members.c, audience_segments.c
        async with self._profiles.db.engine.connect() as conn:
            found = await conn.scalar(
                sa.select(s.id).where(s.tenant_id == tenant_id, s.id == segment_id)
            )
            if found is None:
                return None
            return list(
                await conn.scalars(
                    sa.select(m.profile_id)
                    .where(m.segment_id == segment_id, m.profile_id > after)
                    .order_by(m.profile_id)
                    .limit(limit)
                )
            )
