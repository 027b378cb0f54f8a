"""Data-subject requests (FR-PLT-007): export everything held about a person
as one archive, or erase it from every store, with a completion record.

A person is found by one identity (as ResolveProfile takes it); they are
their profile, every profile merged into it, and every identity those hold.

What an erasure reaches, in this order:
1. in-flight calls: the events journal is flushed into the analytics store
   and the profile applier waits until it has applied everything accepted
   before the request, and every hook settles (bidding flushes its bid
   events' journal), so nothing of the person arrives after it;
2. the analytics store: the person's rows in `events` (by user and anonymous
   id) and in `bid_events` (by the ids a bid names: user, anonymous and
   advertising ids), deleted with a synchronous mutation (the parts are
   rewritten: the rows are gone from disk, not only hidden);
3. the management database: profiles, identities, event counters, segment
   memberships (segment sizes recounted);
4. the hot store: the bid-time profile under each of the person's ids;
5. the audit log: their ids in records' resource and detail replaced with
   "[erased]" (the records of who did what stay);
6. whatever other domains hold, through the hooks they register
   (`DataSubjectHooks`).
The journals hold nothing of the person afterwards: a segment file goes once
the store has its events and the applier is done with them, which step 1
waits for. Not reached: the bus's copies of audit records and segment and
profile-change messages (ids only), which expire with the stream (7 days).

The completion record keeps the identity's kind and SHA-256, never its value;
an export's archive is returned once and never stored. Each request is
audited (a mutating call)."""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import sqlalchemy as sa

from services.analytics.events import TABLE as BID_EVENTS_TABLE
from services.analytics.pipeline import AnalyticsPipeline
from services.audience.applier import ProfileApplier
from services.audience.events import TABLE as EVENTS_TABLE
from services.audience.profiles import IDENTITY_KINDS, Profile, Profiles, hashed_identity
from services.audience.segments import Segments
from services.audience.tables import (
    audience_computed_buckets,
    audience_data_subject_requests,
    audience_devices,
    audience_event_counts,
    audience_profiles,
    audience_segment_members,
    audience_sessions,
)
from services.backends.analytics import quote_identifier, quote_literal, table_exists
from services.backends.interfaces import AnalyticsStore
from services.common import names
from services.common.call import Principal
from services.common.clock import now_us
from services.common.errors import InvalidArgument, NotFound
from services.common.ids import random_hex_id
from services.common.pagination import PageTokens, scope

log = logging.getLogger(__name__)

KINDS = ("export", "erase")
ERASED = "[erased]"
#: How long an erasure waits for in-flight calls to reach the stores.
SETTLE_SECONDS = 30.0
#: Rows of the analytics store an export carries at most per table.
MAX_EXPORT_ROWS = 100_000
DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 1_000


@dataclass(frozen=True, slots=True)
class Person:
    """Who a request is about."""

    tenant_id: str
    profile: Profile  # the survivor
    profile_ids: list[str]  # the survivor and every profile merged into it
    identities: dict[str, list[str]]  # kind -> values

    def values(self, *kinds: str) -> list[str]:
        return [v for kind in kinds for v in self.identities.get(kind, [])]


class DataSubjectHook(Protocol):
    """What another domain holds about a person (its rows keyed by their
    profile or ids): `settle` makes what it has in flight reach its stores
    (before an erasure reads them), `export` returns what it holds as
    JSON-able data, `erase` removes it and returns how many records went.
    A hook with `outside = True` reaches other platforms: its erasure runs
    before anything here is removed, so a failure leaves a request that can
    be made again."""

    async def settle(self) -> None: ...

    async def export(self, person: Person) -> Any: ...

    async def erase(self, person: Person) -> int: ...


class DataSubjectHooks:
    """Where domains register their hooks (the audience domain's
    `data_subject_hooks` interface)."""

    def __init__(self) -> None:
        self.hooks: dict[str, DataSubjectHook] = {}

    def register(self, domain: str, hook: DataSubjectHook) -> None:
        self.hooks[domain] = hook


@dataclass(frozen=True, slots=True)
class Record:
    id: str
    tenant_id: str
    kind: str
    subject_kind: str
    subject_sha256: str
    state: str  # succeeded, failed
    summary: dict[str, Any]
    error: str
    create_time: int
    complete_time: int
    archive: dict[str, Any] | None = field(default=None)

    @property
    def name(self) -> str:
        return f"tenants/{self.tenant_id}/dataSubjectRequests/{self.id}"


class Redactor(Protocol):
    async def redact(self, tenant_id: str, needles: list[str], replacement: str) -> int: ...


class DataSubjects:
    def __init__(
        self,
        profiles: Profiles,
        segments: Segments,
        events: AnalyticsPipeline,
        applier: ProfileApplier,
        analytics: AnalyticsStore,
        *,
        forget_bid_profile: Callable[[str, str], Awaitable[None]] | None = None,
        audit: Redactor | None = None,
        hooks: DataSubjectHooks | None = None,
        clock: Callable[[], int] = now_us,
        page_tokens: PageTokens | None = None,
    ) -> None:
        self._profiles = profiles
        self._db = profiles.db
        self._segments = segments
        self._events = events
        self._applier = applier
        self._analytics = analytics
        self._forget_bid_profile = forget_bid_profile
        self._audit = audit
        self.hooks = hooks or DataSubjectHooks()
        self._clock = clock
        self._pages = page_tokens or PageTokens("audience-dsr")

    async def create(
        self, caller: Principal, parent: str, kind: str, subject_kind: str, value: str
    ) -> Record:
        tenant_id = names.own_tenant(parent, caller.tenant_id)
        if kind not in KINDS:
            raise InvalidArgument.field(
                "data_subject_request.kind", "must be DATA_SUBJECT_REQUEST_KIND_EXPORT or _ERASE"
            )
        if not value:
            raise InvalidArgument.field("data_subject_request.subject.value", "required")
        stored_kind, stored_value = hashed_identity(subject_kind, value)
        if stored_kind not in IDENTITY_KINDS:
            raise InvalidArgument.field(
                "data_subject_request.subject.kind",
                f"must be one of {', '.join((*IDENTITY_KINDS, 'email', 'phone'))}",
            )
        started = self._clock()
        found = await self._profiles.resolve(tenant_id, stored_kind, stored_value)
        if found is None:
            raise NotFound(f"no profile has {subject_kind} {value[:100]!r}")
        person = await self._person(tenant_id, found)
        archive: dict[str, Any] | None = None
        error = ""
        try:
            if kind == "export":
                archive = await self._export(person)
                summary = {k: len(v) for k, v in archive.items() if isinstance(v, list)}
            else:
                summary = await self._erase(person)
        except Exception as exc:  # the record says it failed; asking again is safe
            log.warning("audience: data-subject %s failed: %r", kind, exc)
            summary, error = {}, f"a store was unavailable ({type(exc).__name__}); ask again"
        record = Record(
            random_hex_id(),
            tenant_id,
            kind,
            subject_kind,
            hashlib.sha256(value.encode()).hexdigest(),
            "failed" if error else "succeeded",
            summary,
            error,
            started,
            self._clock(),
            archive,
        )
        async with self._db.engine.begin() as conn:
            await conn.execute(
                audience_data_subject_requests.insert().values(
                    id=record.id,
                    tenant_id=tenant_id,
                    kind=kind,
                    subject_kind=subject_kind,
                    subject_sha256=record.subject_sha256,
                    state=record.state,
                    summary=summary,
                    error=error,
                    actor=caller.subject,
                    create_time=record.create_time,
                    complete_time=record.complete_time,
                )
            )
        return record

    async def get(self, caller: Principal, name: str) -> Record:
        names.require_same_tenant(name, "name", caller.tenant_id)
        tenant_id, request_id = names.parse_name(name, "name", "tenants", "dataSubjectRequests")
        t = audience_data_subject_requests.c
        async with self._db.engine.connect() as conn:
            row = (
                await conn.execute(
                    sa.select(audience_data_subject_requests).where(
                        t.tenant_id == tenant_id, t.id == request_id
                    )
                )
            ).first()
        if row is None:
            raise NotFound(f"{name} not found", metadata={"resource": name})
        return _record(row)

    async def list_requests(
        self, caller: Principal, parent: str, page_size: int = 0, page_token: str = ""
    ) -> tuple[list[Record], str]:
        tenant_id = names.own_tenant(parent, caller.tenant_id)
        if page_size < 0 or page_size > MAX_PAGE_SIZE:
            raise InvalidArgument.field(
                "page_size", f"must be 0-{MAX_PAGE_SIZE} (0: {DEFAULT_PAGE_SIZE})"
            )
        size = page_size or DEFAULT_PAGE_SIZE
        request = scope("audience.ListDataSubjectRequests", tenant_id)
        cursor = self._pages.decode(request, page_token, "t", "id")
        t = audience_data_subject_requests.c
        query = (
            sa.select(audience_data_subject_requests)
            .where(t.tenant_id == tenant_id)
            .order_by(t.create_time.desc(), t.id.desc())
            .limit(size + 1)
        )
        if cursor is not None:
            query = query.where(
                sa.or_(
                    t.create_time < cursor["t"],
                    sa.and_(t.create_time == cursor["t"], t.id < cursor["id"]),
                )
            )
        async with self._db.engine.connect() as conn:
            rows = (await conn.execute(query)).all()
        token = ""
        if len(rows) > size:
            last = rows[size - 1]
            token = self._pages.encode(request, {"t": last.create_time, "id": last.id})
        return [_record(r) for r in rows[:size]], token

    # -- the work ------------------------------------------------------------

    async def _person(self, tenant_id: str, survivor: Profile) -> Person:
        ids = [survivor.id]
        frontier = [survivor.id]
        p = audience_profiles.c
        async with self._db.engine.connect() as conn:
            while frontier:
                found = list(
                    await conn.scalars(
                        sa.select(p.id).where(p.tenant_id == tenant_id, p.merged_into.in_(frontier))
                    )
                )
                frontier = [i for i in found if i not in ids]
                ids += frontier
        return Person(
            tenant_id, survivor, ids, {k: list(v) for k, v in survivor.identities.items()}
        )

    async def _export(self, person: Person) -> dict[str, Any]:
        tenant_id = person.tenant_id
        async with self._db.engine.connect() as conn:
            profiles = [
                dict(r._mapping)
                for r in await conn.execute(
                    sa.select(audience_profiles).where(
                        audience_profiles.c.id.in_(person.profile_ids)
                    )
                )
            ]
            counts = [
                dict(r._mapping)
                for r in await conn.execute(
                    sa.select(audience_event_counts).where(
                        audience_event_counts.c.profile_id.in_(person.profile_ids)
                    )
                )
            ]
            devices = [
                dict(r._mapping)
                for r in await conn.execute(
                    sa.select(audience_devices).where(
                        audience_devices.c.profile_id.in_(person.profile_ids)
                    )
                )
            ]
            sessions = [
                dict(r._mapping)
                for r in await conn.execute(
                    sa.select(audience_sessions).where(
                        audience_sessions.c.profile_id.in_(person.profile_ids)
                    )
                )
            ]
            computed = [
                dict(r._mapping)
                for r in await conn.execute(
                    sa.select(audience_computed_buckets).where(
                        audience_computed_buckets.c.profile_id.in_(person.profile_ids)
                    )
                )
            ]
            memberships = list(
                await conn.scalars(
                    sa.select(audience_segment_members.c.segment_id).where(
                        audience_segment_members.c.profile_id.in_(person.profile_ids)
                    )
                )
            )
        events = await self._rows(EVENTS_TABLE, tenant_id, _event_filter(person))
        bids = await self._rows(BID_EVENTS_TABLE, tenant_id, _bid_filter(person))
        hooks = {name: await hook.export(person) for name, hook in self.hooks.hooks.items()}
        return {
            "profiles": profiles,
            "identities": [
                {"kind": k, "value": v} for k, vs in person.identities.items() for v in vs
            ],
            "segments": [f"tenants/{tenant_id}/segments/{s}" for s in memberships],
            "eventCounts": counts,
            "devices": devices,
            "computedPropertyBuckets": computed,
            "sessions": sessions,
            "events": events,
            "bidEvents": bids,
            "domains": hooks,
        }

    async def _erase(self, person: Person) -> dict[str, Any]:
        tenant_id = person.tenant_id
        # 1. nothing of theirs still on its way
        async with asyncio.timeout(SETTLE_SECONDS):
            await self._applier.wait_applied(self._events.emitted)
            await self._events.flush()
            for hook in self.hooks.hooks.values():
                await hook.settle()
        summary: dict[str, Any] = {}
        # 2. other platforms first (what we sent them): if one fails, nothing
        # here is gone yet and the request can simply be made again
        for name, hook in self.hooks.hooks.items():
            if getattr(hook, "outside", False):
                summary[name] = await hook.erase(person)
        # 3. the analytics store
        summary["events"] = await self._delete_rows(EVENTS_TABLE, tenant_id, _event_filter(person))
        summary["bidEvents"] = await self._delete_rows(
            BID_EVENTS_TABLE, tenant_id, _bid_filter(person)
        )
        # 4. the management database
        async with self._db.engine.connect() as conn:
            segment_ids = list(
                await conn.scalars(
                    sa.select(audience_segment_members.c.segment_id)
                    .where(audience_segment_members.c.profile_id.in_(person.profile_ids))
                    .distinct()
                )
            )
        await self._profiles.delete(tenant_id, person.profile.id)
        await self._segments.recount(segment_ids)
        summary["profiles"] = len(person.profile_ids)
        summary["identities"] = sum(len(v) for v in person.identities.values())
        summary["segmentMemberships"] = len(segment_ids)
        # 5. the hot store
        bid_ids = person.values("user_id", "anonymous_id", "ifa")
        if self._forget_bid_profile is not None:
            for value in bid_ids:
                await self._forget_bid_profile(tenant_id, value)
        summary["bidProfiles"] = len(bid_ids)
        # 6. the audit log
        if self._audit is not None:
            needles = [*person.profile_ids, *person.values(*person.identities)]
            summary["auditRecordsRedacted"] = await self._audit.redact(tenant_id, needles, ERASED)
        # 7. other domains
        for name, hook in self.hooks.hooks.items():
            if not getattr(hook, "outside", False):
                summary[name] = await hook.erase(person)
        return summary

    async def _rows(self, table: str, tenant_id: str, where: str) -> list[dict[str, Any]]:
        if not where:
            return []
        columns = await self._analytics.query(
            "SELECT name FROM system.columns WHERE database = currentDatabase() "
            f"AND table = {quote_literal(table)} ORDER BY position"
        )
        if not columns:
            return []
        names_ = [str(c[0]) for c in columns]
        rows = await self._analytics.query(
            f"SELECT * FROM {quote_identifier(table)} WHERE tenant_id = {quote_literal(tenant_id)} "
            f"AND ({where}) ORDER BY event_time LIMIT {MAX_EXPORT_ROWS}"
        )
        return [
            {name: _plain(value) for name, value in zip(names_, row, strict=False)} for row in rows
        ]

    async def _delete_rows(self, table: str, tenant_id: str, where: str) -> int:
        if not where:
            return 0
        quoted = quote_identifier(table)
        if not await table_exists(self._analytics, table):
            return 0
        condition = f"tenant_id = {quote_literal(tenant_id)} AND ({where})"
        ((count,),) = await self._analytics.query(f"SELECT count() FROM {quoted} WHERE {condition}")
        if count:
            await self._analytics.execute(
                f"ALTER TABLE {quoted} DELETE WHERE {condition} SETTINGS mutations_sync = 2"
            )
        return int(count)


def _event_filter(person: Person) -> str:
    parts = []
    users, anons = person.values("user_id"), person.values("anonymous_id")
    if users:
        parts.append(f"user_id IN ({_list(users)})")
    if anons:
        parts.append(f"anonymous_id IN ({_list(anons)})")
    return " OR ".join(parts)


def _bid_filter(person: Person) -> str:
    ids = person.values("user_id", "anonymous_id", "ifa")
    return f"user_id IN ({_list(ids)})" if ids else ""


def _list(values: Sequence[str]) -> str:
    return ", ".join(quote_literal(v) for v in values)


def _plain(value: Any) -> Any:
    if isinstance(value, str | int | float | bool) or value is None:
        return value
    return str(value)


def _record(row: Any) -> Record:
    return Record(
        row.id,
        row.tenant_id,
        row.kind,
        row.subject_kind,
        row.subject_sha256,
        row.state,
        dict(row.summary),
        row.error,
        row.create_time,
        row.complete_time,
    )
