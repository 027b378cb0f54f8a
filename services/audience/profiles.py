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

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from services.audience.tables import audience_identities, audience_messages, audience_profiles
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
            await conn.execute(
                audience_profiles.delete().where(
                    audience_profiles.c.tenant_id == tenant_id, audience_profiles.c.id.in_(ids)
                )
            )

    async def ingest(self, tenant_id: str, calls: Sequence[TrackedCall]) -> IngestResult:
        """Apply the calls in order, each once; one transaction."""
        for attempt in range(CONFLICT_RETRIES):
            try:
                async with self._db.engine.begin() as conn:
                    return await self._ingest(conn, tenant_id, calls)
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
        self, conn: AsyncConnection, tenant_id: str, calls: Sequence[TrackedCall]
    ) -> IngestResult:
        now = self._clock()
        applied = duplicates = 0
        touched: list[str] = []
        merges: list[Merge] = []
        for call in calls:
            seen = await conn.scalar(
                sa.select(sa.literal(1)).where(
                    audience_messages.c.tenant_id == tenant_id,
                    audience_messages.c.message_id == call.message_id,
                )
            )
            if seen:
                duplicates += 1
                touched.append("")
                continue
            await conn.execute(
                audience_messages.insert().values(
                    tenant_id=tenant_id, message_id=call.message_id, receive_time=call.received_us
                )
            )
            profile_id = await self._profile_for(conn, tenant_id, call, now, merges)
            await self._apply(conn, tenant_id, profile_id, call, now)
            applied += 1
            touched.append(profile_id)
        return IngestResult(applied, duplicates, touched, merges)

    async def _profile_for(
        self,
        conn: AsyncConnection,
        tenant_id: str,
        call: TrackedCall,
        now: int,
        merges: list[Merge],
    ) -> str:
        user_pid = (
            await _identity(conn, tenant_id, "user_id", call.user_id) if call.user_id else None
        )
        if call.type == "alias":
            target = user_pid or await self._create(conn, tenant_id, call, now)
            if user_pid is None:
                await _attach(conn, tenant_id, "user_id", call.user_id, target, now)
            previous = await _identity(conn, tenant_id, "user_id", call.previous_id)
            if previous is None:
                previous = await _identity(conn, tenant_id, "anonymous_id", call.previous_id)
            if previous is None:
                await _attach(conn, tenant_id, "anonymous_id", call.previous_id, target, now)
            elif previous != target:
                await self._merge(conn, previous, target, now)
                why = f"alias of {call.previous_id[:200]} to user_id {call.user_id[:200]}"
                merges.append(Merge(previous, target, why))
            return target
        anon_pid = (
            await _identity(conn, tenant_id, "anonymous_id", call.anonymous_id)
            if call.anonymous_id
            else None
        )
        if user_pid is not None:
            if anon_pid is None and call.anonymous_id:
                await _attach(conn, tenant_id, "anonymous_id", call.anonymous_id, user_pid, now)
            elif anon_pid is not None and anon_pid != user_pid:
                if not await _has_kind(conn, tenant_id, anon_pid, "user_id"):
                    await self._merge(conn, anon_pid, user_pid, now)
                    why = (
                        f"anonymous_id {call.anonymous_id[:200]} signed in as "
                        f"user_id {call.user_id[:200]}"
                    )
                    merges.append(Merge(anon_pid, user_pid, why))
            return user_pid
        if anon_pid is not None:
            if not call.user_id:
                return anon_pid
            if await _has_kind(conn, tenant_id, anon_pid, "user_id"):
                # Another user on this device: this user gets a profile of its own.
                created = await self._create(conn, tenant_id, call, now)
                await _attach(conn, tenant_id, "user_id", call.user_id, created, now)
                return created
            await _attach(conn, tenant_id, "user_id", call.user_id, anon_pid, now)
            return anon_pid
        created = await self._create(conn, tenant_id, call, now)
        if call.user_id:
            await _attach(conn, tenant_id, "user_id", call.user_id, created, now)
        if call.anonymous_id:
            await _attach(conn, tenant_id, "anonymous_id", call.anonymous_id, created, now)
        return created

    async def _create(
        self, conn: AsyncConnection, tenant_id: str, call: TrackedCall, now: int
    ) -> str:
        profile_id = random_hex_id()
        await conn.execute(
            audience_profiles.insert().values(
                id=profile_id,
                tenant_id=tenant_id,
                traits={},
                event_count=0,
                first_seen_time=call.timestamp_us,
                last_seen_time=call.timestamp_us,
                merged_into=None,
                version=0,
                create_time=now,
                update_time=now,
            )
        )
        return profile_id

    async def _apply(
        self, conn: AsyncConnection, tenant_id: str, profile_id: str, call: TrackedCall, now: int
    ) -> None:
        row = (
            await conn.execute(
                sa.select(audience_profiles)
                .where(audience_profiles.c.id == profile_id)
                .with_for_update()  # concurrent calls for one profile: one at a time
            )
        ).one()
        traits = dict(row.traits)
        if call.type == "identify":
            traits.update(call.traits)
        context_traits = call.context.get("traits")
        if isinstance(context_traits, dict):
            traits.update(context_traits)
        await conn.execute(
            audience_profiles.update()
            .where(audience_profiles.c.id == profile_id)
            .values(
                traits=traits,
                event_count=row.event_count + (1 if call.type in _COUNTED else 0),
                first_seen_time=min(row.first_seen_time, call.timestamp_us),
                last_seen_time=max(row.last_seen_time, call.timestamp_us),
                version=row.version + 1,
                update_time=now,
            )
        )

    async def _merge(self, conn: AsyncConnection, source: str, target: str, now: int) -> None:
        """Fold `source` into `target` (see the module's docstring)."""
        rows = {
            r.id: r
            for r in await conn.execute(
                sa.select(audience_profiles)
                .where(audience_profiles.c.id.in_([source, target]))
                .order_by(audience_profiles.c.id)  # locks in one order: no deadlock
                .with_for_update()
            )
        }
        src, dst = rows[source], rows[target]
        await conn.execute(
            audience_identities.update()
            .where(audience_identities.c.profile_id == source)
            .values(profile_id=target)
        )
        await conn.execute(
            audience_profiles.update()
            .where(audience_profiles.c.id == target)
            .values(
                traits={**src.traits, **dst.traits},
                event_count=src.event_count + dst.event_count,
                first_seen_time=min(src.first_seen_time, dst.first_seen_time),
                last_seen_time=max(src.last_seen_time, dst.last_seen_time),
                version=dst.version + 1,
                update_time=now,
            )
        )
        await conn.execute(
            audience_profiles.update()
            .where(audience_profiles.c.id == source)
            .values(merged_into=target, version=src.version + 1, update_time=now)
        )

    async def _profile(self, conn: AsyncConnection, row: Any) -> Profile:
        identities: dict[str, list[str]] = {}
        for kind, value in await conn.execute(
            sa.select(audience_identities.c.kind, audience_identities.c.value)
            .where(audience_identities.c.profile_id == row.id)
            .order_by(audience_identities.c.kind, audience_identities.c.value)
        ):
            identities.setdefault(kind, []).append(value)
        return Profile(
            id=row.id,
            tenant_id=row.tenant_id,
            traits=dict(row.traits),
            event_count=row.event_count,
            first_seen_us=row.first_seen_time,
            last_seen_us=row.last_seen_time,
            version=row.version,
            identities=identities,
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


async def _attach(
    conn: AsyncConnection, tenant_id: str, kind: str, value: str, profile_id: str, now: int
) -> None:
    await conn.execute(
        audience_identities.insert().values(
            tenant_id=tenant_id, kind=kind, value=value, profile_id=profile_id, create_time=now
        )
    )


async def _has_kind(conn: AsyncConnection, tenant_id: str, profile_id: str, kind: str) -> bool:
    found = await conn.scalar(
        sa.select(sa.literal(1))
        .where(
            audience_identities.c.tenant_id == tenant_id,
            audience_identities.c.profile_id == profile_id,
            audience_identities.c.kind == kind,
        )
        .limit(1)
    )
    return bool(found)


#: SQLSTATEs of a transaction that lost to a concurrent one: tried again.
_RETRYABLE_SQLSTATES = ("40001", "40P01")  # serialization failure, deadlock


def _conflict(error: sa.exc.DBAPIError) -> bool:
    if isinstance(error, sa.exc.IntegrityError):
        return True  # the same new identity or message id, written by both
    state = getattr(error.orig, "sqlstate", None) or getattr(error.orig, "pgcode", None)
    return state in _RETRYABLE_SQLSTATES
