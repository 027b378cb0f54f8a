"""Canonical profiles in the management database, built from tracking calls.

Each call is applied once (its `messageId` is recorded in the same
transaction as its effect), to the profile its ids resolve to:

- A profile is found by any of its identities (`user_id`, `anonymous_id`).
  A call naming ids of no profile creates one holding them; an id the found
  profile lacks is attached to it.
- A call whose `userId` and `anonymousId` resolve to two profiles merges the
  anonymous one into the user's (the visitor signed in), unless the
  anonymous one already belongs to another user id: two known users are
  never merged by a shared device; the call goes to its user's profile.
- An anonymous profile that already has another user id does not take a
  second one: the new user id gets a profile of its own.
- `alias` merges the profile of `previousId` (as a user id, else as an
  anonymous id) into the profile of `userId`; an unknown `previousId` is
  attached to it as an anonymous id.

A merge is deterministic: the survivor is the user's profile, its traits win
key by key over the merged one's, counts add up, first and last seen take
the earlier and the later; the merged profile keeps its row with
`merged_into` set, so reads of its id follow to the survivor.

What a call changes: identify (and any call's `context.traits`) sets traits
key by key; track, page and screen count as events; every call moves first
and last seen by its (corrected) timestamp. A batch is one transaction:
applied whole or, on a conflict with a concurrent writer, retried whole."""

from __future__ import annotations

import hashlib
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncConnection

from services.audience.tables import (
    audience_computed_buckets,
    audience_devices,
    audience_event_counts,
    audience_identities,
    audience_messages,
    audience_profiles,
    audience_segment_members,
    audience_sessions,
)
from services.audience.tracking import TrackedCall
from services.common.clock import now_us
from services.common.errors import InvalidArgument, NotFound
from services.common.ids import random_hex_id
from services.common.pagination import PageTokens, scope
from services.db import Database

#: How often a batch is tried again after a conflict with a concurrent one
#: (the same new identity or message id written by both).
CONFLICT_RETRIES = 5
_COUNTED = frozenset({"track", "page", "screen"})
DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 1_000
#: Traits one update may set or unset at most.
MAX_TRAIT_CHANGES = 200


@dataclass(frozen=True, slots=True)
class Profile:
    id: str
    tenant_id: str
    traits: dict[str, Any]
    event_count: int
    first_seen_us: int
    last_seen_us: int
    version: int
    identities: dict[str, list[str]] = field(default_factory=dict)  # kind -> values
    # purpose (or "purpose:channel") -> {"granted": bool, "time": us}
    consent: dict[str, dict[str, Any]] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Merge:
    """One profile folded into another while calls were applied."""

    source: str  # the merged profile's id
    target: str  # the survivor's id
    why: str  # e.g. "anonymous_id anon-1 signed in as user_id u1"


@dataclass(frozen=True, slots=True)
class IngestResult:
    applied: int  # calls applied now
    duplicates: int  # calls whose messageId was applied before
    profile_ids: list[str]  # per call, the profile it was applied to ("" for a duplicate)
    merges: list[Merge] = field(default_factory=list)
    # Profiles whose bid-time view changed (`bid_signature`): new, merged
    # into, or a change of a BID_TRAITS trait or of last seen by a step.
    bid_changed: list[str] = field(default_factory=list)


US_PER_DAY = 86_400_000_000
#: A tenant's extra counter keys per call (None: none).
CounterKeys = Callable[[str], Awaitable[Callable[[TrackedCall], list[str]] | None]]

#: Traits the bid-time view carries (services.audience.bidview).
BID_TRAITS = ("loyalty_tier", "loyalty", "bid_suppression")
#: Last seen matters to bidding to this step (the model's recency is in
#: hours): a visit within a minute of the last one does not rewrite the view.
RECENCY_STEP_US = 60 * 1_000_000


def bid_signature(
    traits: dict[str, Any], last_seen_us: int, consent: dict[str, Any]
) -> tuple[Any, ...]:
    """What of a profile the bid-time view holds, to tell a change."""
    return (
        *(traits.get(name) for name in BID_TRAITS),
        last_seen_us // RECENCY_STEP_US,
        granted(consent, ADVERTISING),
    )


# -- consent ----------------------------------------------------------------

#: The purpose bidding honours: a profile that refused it is bid on as a
#: request without consent. Messaging honours MARKETING (and
#: "marketing:<channel>").
ADVERTISING = "advertising"
MARKETING = "marketing"
MAX_CONSENT_KEYS = 50


def read_consent(values: Any, field: str = "consent") -> dict[str, bool]:
    """Choices by purpose: keys trimmed and lower-cased ("Advertising" is
    "advertising"; "marketing:email" a purpose on one channel), values true
    or false. InvalidArgument naming the field otherwise."""
    if not isinstance(values, dict):
        raise InvalidArgument.field(field, "must be an object of purpose: true/false")
    if len(values) > MAX_CONSENT_KEYS:
        raise InvalidArgument.field(field, f"at most {MAX_CONSENT_KEYS} purposes")
    choices = {}
    for key, value in values.items():
        purpose = str(key).strip().lower()
        if not purpose or len(purpose) > 100:
            raise InvalidArgument.field(field, f"{key!r}: a purpose is 1-100 characters")
        if not isinstance(value, bool):
            raise InvalidArgument.field(f"{field}.{purpose}", "must be true or false")
        choices[purpose] = value
    return choices


def call_consent(call: TrackedCall) -> dict[str, bool]:
    """The choices a call carries, as Segment's consent management sends
    them: `context.consent.categoryPreferences` ({"Advertising": false, ...});
    anything else there is ignored."""
    consent = call.context.get("consent")
    preferences = consent.get("categoryPreferences") if isinstance(consent, dict) else None
    if not isinstance(preferences, dict):
        return {}
    try:
        return read_consent(preferences)
    except InvalidArgument:
        return {}


def merge_consent(
    current: dict[str, dict[str, Any]], choices: dict[str, bool], at_us: int
) -> dict[str, dict[str, Any]]:
    """`current` with these choices made at `at_us`: per purpose, the latest wins."""
    merged = dict(current)
    for purpose, choice in choices.items():
        known = merged.get(purpose)
        if known is None or int(known.get("time", 0)) <= at_us:
            merged[purpose] = {"granted": choice, "time": at_us}
    return merged


def granted(consent: dict[str, Any], purpose: str, channel: str = "") -> bool | None:
    """The person's choice for a purpose (on a channel, when they made one
    for it); None when they made none."""
    for key in (f"{purpose}:{channel}", purpose) if channel else (purpose,):
        choice = consent.get(key)
        if isinstance(choice, dict) and isinstance(choice.get("granted"), bool):
            return bool(choice["granted"])
    return None


class Profiles:
    def __init__(
        self,
        db: Database,
        clock: Callable[[], int] = now_us,
        page_tokens: PageTokens | None = None,
    ) -> None:
        self._db = db
        self._clock = clock
        self._pages = page_tokens or PageTokens("audience-profiles")
        # What else a tenant's calls are counted under, besides their event
        # name (the segments' filtered event conditions: Segments.counter_keys).
        self.counter_keys: CounterKeys | None = None

    @property
    def db(self) -> Database:
        return self._db

    async def list_profiles(
        self,
        tenant_id: str,
        page_size: int = 0,
        page_token: str = "",
        *,
        seen_since_us: int = 0,
    ) -> tuple[list[Profile], str]:
        """A tenant's profiles (merged ones left out), oldest first, a page
        at a time; `seen_since_us`: only those seen at or after it."""
        if page_size < 0 or page_size > MAX_PAGE_SIZE:
            raise InvalidArgument.field(
                "page_size", f"must be 0-{MAX_PAGE_SIZE} (0: {DEFAULT_PAGE_SIZE})"
            )
        size = page_size or DEFAULT_PAGE_SIZE
        request = scope("audience.ListProfiles", tenant_id, seen_since_us)
        cursor = self._pages.decode(request, page_token, "t", "id")
        p = audience_profiles.c
        query = (
            sa.select(audience_profiles)
            .where(p.tenant_id == tenant_id, p.merged_into.is_(None))
            .order_by(p.create_time, p.id)
            .limit(size + 1)
        )
        if seen_since_us:
            query = query.where(p.last_seen_time >= seen_since_us)
        if cursor is not None:
            query = query.where(
                sa.or_(
                    p.create_time > cursor["t"],
                    sa.and_(p.create_time == cursor["t"], p.id > cursor["id"]),
                )
            )
        async with self._db.engine.connect() as conn:
            rows = (await conn.execute(query)).all()
            profiles = [await self._profile(conn, row) for row in rows[:size]]
        token = ""
        if len(rows) > size:
            last = rows[size - 1]
            token = self._pages.encode(request, {"t": last.create_time, "id": last.id})
        return profiles, token

    async def update_traits(
        self,
        tenant_id: str,
        profile_id: str,
        set_traits: dict[str, Any] | None = None,
        unset: Sequence[str] = (),
    ) -> Profile:
        """Set traits key by key and remove others (an operator's fix or a
        connector's sync), on the profile or the one it was merged into."""
        set_traits = set_traits or {}
        if len(set_traits) + len(unset) > MAX_TRAIT_CHANGES:
            raise InvalidArgument.field("traits", f"at most {MAX_TRAIT_CHANGES} changes at once")
        for key in [*set_traits, *unset]:
            if not isinstance(key, str) or not key or len(key) > 256:
                raise InvalidArgument.field("traits", f"{key!r}: a trait name is 1-256 characters")
        both = set(set_traits) & set(unset)
        if both:
            raise InvalidArgument.field("traits", f"{sorted(both)[0]!r} is both set and unset")
        target = (await self.get(tenant_id, profile_id)).id
        now = self._clock()
        async with self._db.engine.begin() as conn:
            row = (
                await conn.execute(
                    sa.select(audience_profiles)
                    .where(audience_profiles.c.id == target)
                    .with_for_update()
                )
            ).one()
            traits = {**row.traits, **set_traits}
            for key in unset:
                traits.pop(key, None)
            await conn.execute(
                audience_profiles.update()
                .where(audience_profiles.c.id == target)
                .values(traits=traits, version=row.version + 1, update_time=now)
            )
        return await self.get(tenant_id, target)

    async def update_consent(
        self, tenant_id: str, profile_id: str, choices: dict[str, bool]
    ) -> Profile:
        """Record the person's choices (made now) per purpose, on the
        profile or the one it was merged into."""
        if not choices:
            raise InvalidArgument.field("consent", "name at least one purpose")
        target = (await self.get(tenant_id, profile_id)).id
        now = self._clock()
        async with self._db.engine.begin() as conn:
            row = (
                await conn.execute(
                    sa.select(audience_profiles)
                    .where(audience_profiles.c.id == target)
                    .with_for_update()
                )
            ).one()
            await conn.execute(
                audience_profiles.update()
                .where(audience_profiles.c.id == target)
                .values(
                    consent=merge_consent(dict(row.consent), choices, now),
                    version=row.version + 1,
                    update_time=now,
                )
            )
        return await self.get(tenant_id, target)

    async def delete(self, tenant_id: str, profile_id: str) -> None:
        """Remove the profile, every profile merged into it and their
        identities from the management database. NOT_FOUND if there is none."""
        target = (await self.get(tenant_id, profile_id)).id
        async with self._db.engine.begin() as conn:
            ids = {target}
            frontier = [target]
            while frontier:  # every profile merged into it, however deep
                found = (
                    await conn.scalars(
                        sa.select(audience_profiles.c.id).where(
                            audience_profiles.c.tenant_id == tenant_id,
                            audience_profiles.c.merged_into.in_(frontier),
                        )
                    )
                ).all()
                frontier = [i for i in found if i not in ids]
                ids.update(frontier)
            await conn.execute(
                audience_identities.delete().where(
                    audience_identities.c.tenant_id == tenant_id,
                    audience_identities.c.profile_id.in_(ids),
                )
            )
            for table in (
                audience_event_counts,
                audience_segment_members,
                audience_devices,
                audience_sessions,
                audience_computed_buckets,
            ):
                await conn.execute(table.delete().where(table.c.profile_id.in_(ids)))
            await conn.execute(
                audience_profiles.delete().where(
                    audience_profiles.c.tenant_id == tenant_id, audience_profiles.c.id.in_(ids)
                )
            )

    async def ingest(self, tenant_id: str, calls: Sequence[TrackedCall]) -> IngestResult:
        """Apply the calls in order, each once; one transaction."""
        also = await self.counter_keys(tenant_id) if self.counter_keys is not None else None
        for attempt in range(CONFLICT_RETRIES):
            try:
                async with self._db.engine.begin() as conn:
                    if self._db.is_sqlite:
                        # The sqlite3 driver begins a transaction only at the
                        # first write, and a batch reads before it writes: a
                        # write that changes nothing takes the database's
                        # write lock first, so no other batch interleaves.
                        await conn.execute(sa.text("DELETE FROM audience_messages WHERE 0 = 1"))
                    return await self._ingest(conn, tenant_id, calls, also)
            except sa.exc.DBAPIError as exc:
                if not _conflict(exc) or attempt == CONFLICT_RETRIES - 1:
                    raise
        raise AssertionError("unreachable")

    async def get(self, tenant_id: str, profile_id: str) -> Profile:
        """The profile, or the one it was merged into."""
        async with self._db.engine.connect() as conn:
            for _ in range(16):  # merge chains are short; a bound against cycles
                row = (
                    await conn.execute(
                        sa.select(audience_profiles).where(
                            audience_profiles.c.tenant_id == tenant_id,
                            audience_profiles.c.id == profile_id,
                        )
                    )
                ).first()
                if row is None:
                    break
                if row.merged_into is None:
                    return await self._profile(conn, row)
                profile_id = row.merged_into
        raise NotFound(f"profile {profile_id} not found")

    async def resolve(self, tenant_id: str, kind: str, value: str) -> Profile | None:
        """The profile an identity belongs to, if any."""
        async with self._db.engine.connect() as conn:
            found = await _identity(conn, tenant_id, kind, value)
        return None if found is None else await self.get(tenant_id, found)

    # -- applying calls ----------------------------------------------------

    async def _ingest(
        self,
        conn: AsyncConnection,
        tenant_id: str,
        calls: Sequence[TrackedCall],
        also: Callable[[TrackedCall], list[str]] | None,
    ) -> IngestResult:
        batch = _Batch(conn, tenant_id, self._clock(), self._db.is_sqlite, also)
        await batch.prefetch(calls)
        applied = duplicates = 0
        touched: list[str] = []
        merges: list[Merge] = []
        for call in calls:
            if not batch.first_time(call):
                duplicates += 1
                touched.append("")
                continue
            profile_id = await _profile_for(batch, call, merges)
            await batch.apply(profile_id, call)
            applied += 1
            touched.append(profile_id)
        await batch.flush()
        return IngestResult(applied, duplicates, touched, merges, batch.bid_changed())

    async def resolve_many(self, tenant_id: str, kind: str, values: Sequence[str]) -> list[str]:
        """The ids of the profiles that identities of one kind belong to (in
        one query; those of no profile left out, each profile once)."""
        if not values:
            return []
        async with self._db.engine.connect() as conn:
            rows = await conn.execute(
                sa.select(audience_identities.c.profile_id)
                .where(
                    audience_identities.c.tenant_id == tenant_id,
                    audience_identities.c.kind == kind,
                    audience_identities.c.value.in_(list(values)),
                )
                .distinct()
            )
            return sorted(row.profile_id for row in rows)

    async def get_many(self, tenant_id: str, profile_ids: Sequence[str]) -> list[Profile]:
        """The profiles of these ids that exist and are not merged, with
        their identities (two queries per 500 ids)."""
        found: list[Profile] = []
        p, i = audience_profiles.c, audience_identities.c
        async with self._db.engine.connect() as conn:
            for chunk in chunks(list(dict.fromkeys(profile_ids))):
                rows = (
                    await conn.execute(
                        sa.select(audience_profiles).where(
                            p.tenant_id == tenant_id, p.id.in_(chunk), p.merged_into.is_(None)
                        )
                    )
                ).all()
                identities: dict[str, dict[str, list[str]]] = {}
                for profile_id, kind, value in await conn.execute(
                    sa.select(i.profile_id, i.kind, i.value)
                    .where(i.tenant_id == tenant_id, i.profile_id.in_(chunk))
                    .order_by(i.kind, i.value)
                ):
                    identities.setdefault(profile_id, {}).setdefault(kind, []).append(value)
                found += [_from_row(row, identities.get(row.id, {})) for row in rows]
        return found

    async def _profile(self, conn: AsyncConnection, row: Any) -> Profile:
        identities: dict[str, list[str]] = {}
        for kind, value in await conn.execute(
            sa.select(audience_identities.c.kind, audience_identities.c.value)
            .where(audience_identities.c.profile_id == row.id)
            .order_by(audience_identities.c.kind, audience_identities.c.value)
        ):
            identities.setdefault(kind, []).append(value)
        return _from_row(row, identities)


def _from_row(row: Any, identities: dict[str, list[str]]) -> Profile:
    return Profile(
        id=row.id,
        tenant_id=row.tenant_id,
        traits=dict(row.traits),
        event_count=row.event_count,
        first_seen_us=row.first_seen_time,
        last_seen_us=row.last_seen_time,
        version=row.version,
        identities=identities,
        consent=dict(row.consent or {}),
    )


async def _identity(conn: AsyncConnection, tenant_id: str, kind: str, value: str) -> str | None:
    found: str | None = await conn.scalar(
        sa.select(audience_identities.c.profile_id).where(
            audience_identities.c.tenant_id == tenant_id,
            audience_identities.c.kind == kind,
            audience_identities.c.value == value,
        )
    )
    return found


async def _profile_for(batch: _Batch, call: TrackedCall, merges: list[Merge]) -> str:
    """The profile a call goes to, with the call's other identities (device
    ids, hashed email and phone) attached to it unless another profile has
    them already."""
    target = await _resolve_call(batch, call, merges)
    for kind, value in other_identities(call):
        if await batch.identity(kind, value) is None:
            await batch.attach(kind, value, target)
    return target


async def _resolve_call(batch: _Batch, call: TrackedCall, merges: list[Merge]) -> str:
    """The profile a call's user and anonymous ids go to, creating,
    attaching and merging as the module's docstring says."""
    user_pid = await batch.identity("user_id", call.user_id) if call.user_id else None
    if call.type == "alias":
        target = user_pid or await batch.create(call)
        if user_pid is None:
            await batch.attach("user_id", call.user_id, target)
        previous = await batch.identity("user_id", call.previous_id)
        if previous is None:
            previous = await batch.identity("anonymous_id", call.previous_id)
        if previous is None:
            await batch.attach("anonymous_id", call.previous_id, target)
        elif previous != target:
            await batch.merge(previous, target)
            why = f"alias of {call.previous_id[:200]} to user_id {call.user_id[:200]}"
            merges.append(Merge(previous, target, why))
        return target
    anon_pid = (
        await batch.identity("anonymous_id", call.anonymous_id) if call.anonymous_id else None
    )
    if user_pid is not None:
        if anon_pid is None and call.anonymous_id:
            await batch.attach("anonymous_id", call.anonymous_id, user_pid)
        elif anon_pid is not None and anon_pid != user_pid:
            if not await batch.has_user_id(anon_pid):
                await batch.merge(anon_pid, user_pid)
                why = (
                    f"anonymous_id {call.anonymous_id[:200]} signed in as "
                    f"user_id {call.user_id[:200]}"
                )
                merges.append(Merge(anon_pid, user_pid, why))
        return user_pid
    if anon_pid is not None:
        if not call.user_id:
            return anon_pid
        if await batch.has_user_id(anon_pid):
            # Another user on this device: this user gets a profile of its own.
            created = await batch.create(call)
            await batch.attach("user_id", call.user_id, created)
            return created
        await batch.attach("user_id", call.user_id, anon_pid)
        return anon_pid
    device_pid = await _device_profile(batch, call)
    if device_pid is not None:
        # A known device with new ids (an app reinstalled, cookies cleared).
        if call.user_id:
            await batch.attach("user_id", call.user_id, device_pid)
        if call.anonymous_id:
            await batch.attach("anonymous_id", call.anonymous_id, device_pid)
        return device_pid
    created = await batch.create(call)
    if call.user_id:
        await batch.attach("user_id", call.user_id, created)
    if call.anonymous_id:
        await batch.attach("anonymous_id", call.anonymous_id, created)
    return created


async def _device_profile(batch: _Batch, call: TrackedCall) -> str | None:
    """The profile of the call's advertising id, when it can take the call's
    ids: not when it already has another user id."""
    ifa = _device_ifa(call)
    found = await batch.identity("ifa", ifa) if ifa else None
    if found is None or (call.user_id and await batch.has_user_id(found)):
        return None
    return found


def _device_ifa(call: TrackedCall) -> str:
    device = call.context.get("device")
    if not isinstance(device, dict):
        return ""
    ifa = device.get("advertisingId")
    if not isinstance(ifa, str) or not ifa.strip() or len(ifa) > 200:
        return ""
    ifa = ifa.strip()
    return "" if set(ifa) <= _ZERO_IFA_CHARS else ifa


def _sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def normalized_email(value: str) -> str:
    return value.strip().lower()


def normalized_phone(value: str) -> str:
    """Digits only, with a leading + kept ("+1 (555) 010-0000" -> "+15550100000")."""
    value = value.strip()
    digits = "".join(ch for ch in value if ch.isdigit())
    return ("+" + digits if value.startswith("+") else digits) if digits else ""


def hashed_identity(kind: str, value: str) -> tuple[str, str]:
    """(stored kind, value) of an identity as ResolveProfile names it: an
    `email` or `phone` is looked up by its SHA-256 (raw ones are not kept)."""
    if kind == "email":
        return "email_sha256", _sha256(normalized_email(value))
    if kind == "phone":
        return "phone_sha256", _sha256(normalized_phone(value))
    return kind, value


def other_identities(call: TrackedCall) -> list[tuple[str, str]]:
    """The call's identities besides its user and anonymous ids: the device's
    advertising id (`context.device.advertisingId`, IFA/AAID; a zeroed one is
    none) and push token (`context.device.token`), and the SHA-256 of the
    email and phone traits (identify's traits, any call's context.traits)."""
    found: list[tuple[str, str]] = []
    ifa = _device_ifa(call)
    if ifa:
        found.append(("ifa", ifa))
    device = call.context.get("device")
    token = device.get("token") if isinstance(device, dict) else None
    if isinstance(token, str) and token.strip() and len(token) <= 1_000:
        found.append(("push_token", token.strip()))
    traits: dict[str, Any] = {}
    if call.type == "identify":
        traits.update(call.traits)
    context_traits = call.context.get("traits")
    if isinstance(context_traits, dict):
        traits.update(context_traits)
    email, phone = traits.get("email"), traits.get("phone")
    if isinstance(email, str) and "@" in email and len(email) <= 320:
        found.append(hashed_identity("email", email))
    if isinstance(phone, str) and normalized_phone(phone) and len(phone) <= 40:
        found.append(hashed_identity("phone", phone))
    return found


#: Identity kinds a profile can have (what ResolveProfile also takes, with
#: `email` and `phone` hashed on lookup).
IDENTITY_KINDS = ("user_id", "anonymous_id", "ifa", "push_token", "email_sha256", "phone_sha256")
_ZERO_IFA_CHARS = frozenset("0-")


@dataclass(slots=True)
class _State:
    """A profile's row as the batch changes it."""

    traits: dict[str, Any]
    event_count: int
    first_seen: int
    last_seen: int
    version: int
    merged_into: str | None = None
    new: bool = False
    dirty: bool = False
    signature: tuple[Any, ...] | None = None  # bid_signature as read (None: new)
    consent: dict[str, dict[str, Any]] = field(default_factory=dict)
    merged: bool = False  # another profile was merged into it


#: Values in one `IN (...)` at most.
_IN_CHUNK = 500


class _Batch:
    """One batch of calls in one transaction, with what it reads cached: the
    message ids seen, identities, and the profiles' rows (read once, locked,
    changed in memory and written once at the end, in `flush`). Reads go to
    the database in bulk up front (`prefetch`); what a batch touches beyond
    them is read one at a time."""

    def __init__(
        self,
        conn: AsyncConnection,
        tenant_id: str,
        now: int,
        sqlite: bool,
        also: Callable[[TrackedCall], list[str]] | None = None,
    ) -> None:
        self.conn = conn
        self._sqlite = sqlite
        self._also = also
        self._counts: dict[tuple[str, str, int], int] = {}  # (profile, event, day) -> calls
        self.tenant_id = tenant_id
        self.now = now
        self._seen: set[str] = set()
        self._new_messages: list[dict[str, Any]] = []
        self._new_ids: dict[tuple[str, str], str] = {}  # attached, written in flush
        self._ids: dict[tuple[str, str], str | None] = {}
        self._has_user: dict[str, bool] = {}
        self._states: dict[str, _State] = {}

    async def prefetch(self, calls: Sequence[TrackedCall]) -> None:
        t = self.tenant_id
        message_ids = list({c.message_id for c in calls})
        m = audience_messages.c
        for chunk in chunks(message_ids):
            self._seen.update(
                await self.conn.scalars(
                    sa.select(m.message_id).where(m.tenant_id == t, m.message_id.in_(chunk))
                )
            )
        wanted: dict[str, set[str]] = {kind: set() for kind in IDENTITY_KINDS}
        for c in calls:
            for kind, value in other_identities(c):
                wanted[kind].add(value)
            if c.user_id:
                wanted["user_id"].add(c.user_id)
            if c.anonymous_id:
                wanted["anonymous_id"].add(c.anonymous_id)
            if c.previous_id:
                wanted["user_id"].add(c.previous_id)
                wanted["anonymous_id"].add(c.previous_id)
        i = audience_identities.c
        for kind, values in wanted.items():
            for value in values:
                self._ids[(kind, value)] = None
            for chunk in chunks(sorted(values)):
                for value, profile_id in await self.conn.execute(
                    sa.select(i.value, i.profile_id).where(
                        i.tenant_id == t, i.kind == kind, i.value.in_(chunk)
                    )
                ):
                    self._ids[(kind, value)] = profile_id
        found = sorted({pid for pid in self._ids.values() if pid is not None})
        for chunk in chunks(found):
            await self._load(chunk)

    def first_time(self, call: TrackedCall) -> bool:
        """True (and recorded) unless the call's messageId was applied."""
        if call.message_id in self._seen:
            return False
        self._seen.add(call.message_id)
        self._new_messages.append(
            {
                "tenant_id": self.tenant_id,
                "message_id": call.message_id,
                "receive_time": call.received_us,
            }
        )
        return True

    async def identity(self, kind: str, value: str) -> str | None:
        key = (kind, value)
        if key not in self._ids:
            self._ids[key] = await _identity(self.conn, self.tenant_id, kind, value)
        return self._ids[key]

    async def attach(self, kind: str, value: str, profile_id: str) -> None:
        """Give the profile this identity (written with the batch's others)."""
        self._new_ids[(kind, value)] = profile_id
        self._ids[(kind, value)] = profile_id
        if kind == "user_id":
            self._has_user[profile_id] = True

    async def has_user_id(self, profile_id: str) -> bool:
        found = self._has_user.get(profile_id)
        if found is None:
            i = audience_identities.c
            found = bool(
                await self.conn.scalar(
                    sa.select(sa.literal(1))
                    .where(
                        i.tenant_id == self.tenant_id,
                        i.profile_id == profile_id,
                        i.kind == "user_id",
                    )
                    .limit(1)
                )
            )
            self._has_user[profile_id] = found
        return found

    async def create(self, call: TrackedCall) -> str:
        profile_id = random_hex_id()
        when = call.timestamp_us
        self._states[profile_id] = _State({}, 0, when, when, 0, new=True)
        self._has_user[profile_id] = False
        return profile_id

    async def apply(self, profile_id: str, call: TrackedCall) -> None:
        state = await self._state(profile_id)
        if call.type == "identify" and call.traits:
            state.traits.update(call.traits)
        context_traits = call.context.get("traits")
        if isinstance(context_traits, dict):
            state.traits.update(context_traits)
        choices = call_consent(call)
        if choices:
            state.consent = merge_consent(state.consent, choices, call.timestamp_us)
        if call.type in _COUNTED:
            state.event_count += 1
            named = call.event or call.name
            day = call.timestamp_us // US_PER_DAY
            for counted in ([named] if named else []) + (self._also(call) if self._also else []):
                key = (profile_id, counted, day)
                self._counts[key] = self._counts.get(key, 0) + 1
        state.first_seen = min(state.first_seen, call.timestamp_us)
        state.last_seen = max(state.last_seen, call.timestamp_us)
        self._touch(state)

    async def merge(self, source: str, target: str) -> None:
        """Fold `source` into `target` (see the module's docstring)."""
        if source not in self._states or target not in self._states:
            await self._load(sorted({source, target} - set(self._states)))
        src, dst = self._states[source], self._states[target]
        dst.traits = {**src.traits, **dst.traits}
        dst.event_count += src.event_count
        dst.first_seen = min(dst.first_seen, src.first_seen)
        dst.last_seen = max(dst.last_seen, src.last_seen)
        for purpose, choice in src.consent.items():
            dst.consent = merge_consent(
                dst.consent, {purpose: bool(choice["granted"])}, int(choice["time"])
            )
        self._touch(dst)
        src.merged_into = target
        self._touch(src)
        dst.merged = True
        for key, owner in self._new_ids.items():
            if owner == source:
                self._new_ids[key] = target
        for (owner, named, day), n in list(self._counts.items()):
            if owner == source:
                del self._counts[(owner, named, day)]
                moved = (target, named, day)
                self._counts[moved] = self._counts.get(moved, 0) + n
        # the merged profile's stored event counts are the survivor's now
        await self.conn.execute(
            sa.text(
                "INSERT INTO audience_event_counts (profile_id, event, day, tenant_id, count) "
                "SELECT :target, event, day, tenant_id, count FROM audience_event_counts "
                "WHERE profile_id = :source "
                "ON CONFLICT (profile_id, event, day) "
                "DO UPDATE SET count = audience_event_counts.count + excluded.count"
            ),
            {"source": source, "target": target},
        )
        await self.conn.execute(
            audience_event_counts.delete().where(audience_event_counts.c.profile_id == source)
        )
        await self.conn.execute(
            audience_identities.update()
            .where(audience_identities.c.profile_id == source)
            .values(profile_id=target)
        )
        for key, profile_id in self._ids.items():
            if profile_id == source:
                self._ids[key] = target
        if self._has_user.get(source):
            self._has_user[target] = True

    async def flush(self) -> None:
        """Write what the batch changed: message ids, new profiles, changed ones."""
        if self._new_messages:
            await self.conn.execute(audience_messages.insert(), self._new_messages)
        if self._counts:
            insert = (sqlite_insert if self._sqlite else postgresql_insert)(audience_event_counts)
            await self.conn.execute(
                insert.on_conflict_do_update(
                    index_elements=["profile_id", "event", "day"],
                    set_={"count": audience_event_counts.c.count + insert.excluded.count},
                ),
                [
                    {
                        "profile_id": pid,
                        "event": named,
                        "day": day,
                        "tenant_id": self.tenant_id,
                        "count": n,
                    }
                    for (pid, named, day), n in self._counts.items()
                ],
            )
        if self._new_ids:
            await self.conn.execute(
                audience_identities.insert(),
                [
                    {
                        "tenant_id": self.tenant_id,
                        "kind": kind,
                        "value": value,
                        "profile_id": profile_id,
                        "create_time": self.now,
                    }
                    for (kind, value), profile_id in self._new_ids.items()
                ],
            )
        created = [
            {
                "id": pid,
                "tenant_id": self.tenant_id,
                "traits": st.traits,
                "event_count": st.event_count,
                "first_seen_time": st.first_seen,
                "last_seen_time": st.last_seen,
                "merged_into": st.merged_into,
                "version": st.version,
                "create_time": self.now,
                "update_time": self.now,
                "consent": st.consent,
            }
            for pid, st in self._states.items()
            if st.new
        ]
        if created:
            await self.conn.execute(audience_profiles.insert(), created)
        changed = [
            {
                "b_id": pid,
                "traits": st.traits,
                "event_count": st.event_count,
                "first_seen_time": st.first_seen,
                "last_seen_time": st.last_seen,
                "merged_into": st.merged_into,
                "version": st.version,
                "update_time": self.now,
                "consent": st.consent,
            }
            for pid, st in self._states.items()
            if st.dirty and not st.new
        ]
        if changed:
            p = audience_profiles.c
            await self.conn.execute(
                audience_profiles.update().where(p.id == sa.bindparam("b_id")),
                changed,
            )

    def bid_changed(self) -> list[str]:
        return [
            pid
            for pid, st in self._states.items()
            if st.merged_into is None
            and st.dirty
            and (
                st.new
                or st.merged
                or st.signature != bid_signature(st.traits, st.last_seen, st.consent)
            )
        ]

    def _touch(self, state: _State) -> None:
        if not state.dirty:
            state.dirty = True
            state.version += 1

    async def _state(self, profile_id: str) -> _State:
        state = self._states.get(profile_id)
        if state is None:
            await self._load([profile_id])
            state = self._states[profile_id]
        return state

    async def _load(self, ids: Sequence[str]) -> None:
        """Read and lock profiles' rows (in id order: no deadlock between
        batches that lock the same ones)."""
        p = audience_profiles.c
        for row in await self.conn.execute(
            sa.select(audience_profiles)
            .where(p.id.in_(list(ids)))
            .order_by(p.id)
            .with_for_update()  # concurrent batches for one profile: one at a time
        ):
            self._states[row.id] = _State(
                dict(row.traits),
                row.event_count,
                row.first_seen_time,
                row.last_seen_time,
                row.version,
                row.merged_into,
                signature=bid_signature(row.traits, row.last_seen_time, row.consent),
                consent=dict(row.consent),
            )


def chunks(values: Sequence[str]) -> list[Sequence[str]]:
    """`values` in slices small enough for one `IN (...)`."""
    return [values[n : n + _IN_CHUNK] for n in range(0, len(values), _IN_CHUNK)]


#: SQLSTATEs of a transaction that lost to a concurrent one: tried again.
_RETRYABLE_SQLSTATES = ("40001", "40P01")  # serialization failure, deadlock


def _conflict(error: sa.exc.DBAPIError) -> bool:
    if isinstance(error, sa.exc.IntegrityError):
        return True  # the same new identity or message id, written by both
    state = getattr(error.orig, "sqlstate", None) or getattr(error.orig, "pgcode", None)
    return state in _RETRYABLE_SQLSTATES
