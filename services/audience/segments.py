"""Segments: groups of people by a condition (services.audience.conditions)
over traits, events and lifecycle, with their members kept in the
management database and current as events arrive.

- Real time: after each batch of calls the applier applies, the profiles it
  changed (and any merged away) are evaluated against every segment of the
  tenant; who entered or left is written at once (so within the applier's
  latency of the event: tens of milliseconds, see docs/audience.md) and
  published on the bus, `campaign-express.segments.<tenant>`:
  `{"segment": name, "entered": [profile names], "exited": [...], "time": us}`.
- Time passing: lifecycle stages and event windows change with no event, so
  every profile is evaluated again every `refresh_seconds` (default 300;
  `evaluate_all`), and at once for a new segment (its backfill publishes no
  "entered": those people did not just enter).
- Event conditions count the profile's calls per UTC day: in real time from
  the counters the applier keeps in the same transaction as the profile
  (audience_event_counts: per event name, and per condition with property
  filters under its own key, backfilled from the events table when it is
  created); in a full evaluation with ClickHouse SQL over the events table
  (services.audience.windows), except for profiles seen in the last
  RECENT_SECONDS, whose calls may not have reached the analytics store yet:
  their counters decide.

A segment also gets a bid index (0-63, the lowest free one of its tenant):
its bit in the bid-time profile, so campaigns target it as segment "N"."""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections import defaultdict
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import orjson
import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncConnection

from inference.features import BidContext, Loyalty, tier_name
from inference.features import Profile as FeatureProfile
from services.audience import conditions, windows
from services.audience.conditions import Condition, Facts
from services.audience.profiles import IngestResult, chunks
from services.audience.tables import (
    audience_event_counts,
    audience_identities,
    audience_profiles,
    audience_segment_members,
    audience_segments,
)
from services.audience.tracking import TrackedCall
from services.backends.bus import BestEffortPublisher
from services.backends.interfaces import AnalyticsStore
from services.common import names
from services.common.call import Principal
from services.common.clock import now_us
from services.common.errors import FieldViolation, InvalidArgument, NotFound, collect
from services.common.ids import random_hex_id
from services.common.pagination import PageTokens, scope
from services.common.validation import check_text
from services.db import Database

log = logging.getLogger(__name__)

SUBJECT_PREFIX = "campaign-express.segments"
BID_INDEXES = 64
MAX_SEGMENTS = 500  # per tenant
#: Tries for a free bid index when segments are created at once.
BID_INDEX_RETRIES = 8
DEFAULT_PAGE_SIZE = 50
DEFAULT_MEMBERS_PAGE = 100
MAX_PAGE_SIZE = 1_000
#: Profiles read per step of a full evaluation.
PASS_PAGE = 1_000
#: Rows written per statement.
WRITE_STEP = 5_000
#: Above this many ids, a backfill reads all the tenant's ids at once.
OWNERS_BY_SCAN = 20_000
#: How long a process trusts its list of a tenant's segments.
CACHE_SECONDS = 5.0
#: A full evaluation counts the calls of profiles seen this recently from
#: their counters, not the analytics store (which the journal feeds within
#: seconds).
RECENT_SECONDS = 60

MembersChanged = Callable[[str, list[str]], Awaitable[None]]
ComputedValues = Callable[[str, Sequence[str]], Awaitable[dict[str, dict[str, Any]]]]
Predict = Callable[[str, dict[str, Facts]], Awaitable[dict[str, float]]]

#: Traits left out of lookalike vectors: they identify, not describe.
_PERSONAL_TRAITS = frozenset({"email", "name", "first_name", "last_name", "phone", "address"})


def vector_of(facts: Facts) -> dict[str, float]:
    """A profile as a sparse vector: its event counts (log-scaled) and its
    short text or boolean traits (one dimension per key and value)."""
    vector = {f"e:{name}": math.log1p(n) for name, n in facts.events.items() if n > 0}
    for key, value in facts.traits.items():
        if key in _PERSONAL_TRAITS:
            continue
        if isinstance(value, bool) or (isinstance(value, str) and 0 < len(value) <= 32):
            vector[f"t:{key}={value}"] = 1.0
    return vector


def _unit(vector: dict[str, float]) -> dict[str, float]:
    norm = math.sqrt(sum(v * v for v in vector.values()))
    return {k: v / norm for k, v in vector.items()} if norm else {}


def _cosine(vector: dict[str, float], centre: dict[str, float]) -> float:
    """Cosine similarity of a vector and a centre (a mean of unit vectors)."""
    unit = _unit(vector)
    norm = math.sqrt(sum(v * v for v in centre.values()))
    if not unit or not norm:
        return 0.0
    return sum(v * centre.get(k, 0.0) for k, v in unit.items()) / norm


@dataclass(frozen=True, slots=True)
class Segment:
    id: str
    tenant_id: str
    display_name: str
    description: str
    condition: Condition
    kind: str
    bid_index: int
    size: int
    create_time: int
    update_time: int
    evaluate_time: int
    similarity: float = 0.0  # lookalikes: members' mean similarity to the seed

    @property
    def name(self) -> str:
        return f"tenants/{self.tenant_id}/segments/{self.id}"


class Segments:
    def __init__(
        self,
        db: Database,
        *,
        clock: Callable[[], int] = now_us,
        page_tokens: PageTokens | None = None,
        publisher: BestEffortPublisher | None = None,
        refresh_seconds: float = 300.0,
        analytics: AnalyticsStore | None = None,
    ) -> None:
        self._db = db
        self._analytics = analytics
        self._clock = clock
        self._pages = page_tokens or PageTokens("audience-segments")
        self._publisher = publisher
        self._refresh_seconds = refresh_seconds
        self._cache: dict[str, tuple[float, list[Segment]]] = {}
        self._members_changed: list[MembersChanged] = []
        # Computed property values by profile (they read as traits).
        self.computed: ComputedValues | None = None
        # The model's predicted ctr by profile (predictive segments on "ctr").
        self.predict: Predict | None = None
        self._centres: dict[str, dict[str, float]] = {}  # lookalike seed -> centre
        self._task: asyncio.Task[None] | None = None

    def on_members_changed(self, hook: MembersChanged) -> None:
        """Call `hook(tenant_id, profile_ids)` after memberships change (the
        bid-time view rewrites those profiles)."""
        self._members_changed.append(hook)

    # -- the API ---------------------------------------------------------------

    async def create(
        self,
        caller: Principal,
        parent: str,
        display_name: str,
        description: str,
        condition: Any,
    ) -> Segment:
        tenant_id = names.own_tenant(parent, caller.tenant_id)
        violations: list[FieldViolation] = []
        check_text(violations, "segment.display_name", display_name, required=True, max_len=200)
        check_text(violations, "segment.description", description, required=False, max_len=2000)
        collect(violations)
        if not condition:
            raise InvalidArgument.field("segment.condition", "required")
        read = conditions.read_condition(condition, "segment.condition")
        await self._check_seeds(tenant_id, read, "segment.condition")
        now = self._clock()
        for attempt in range(BID_INDEX_RETRIES):
            try:
                segment = await self._insert(tenant_id, display_name, description, read, now)
                break
            except sa.exc.IntegrityError:
                # another segment took that bid index meanwhile: the next free one
                if attempt == BID_INDEX_RETRIES - 1:
                    raise
        self._cache.pop(tenant_id, None)
        await self._backfill_counters(tenant_id, read)
        await self.evaluate_all(tenant_id, only=[segment.id], publish=False)
        return await self._get(tenant_id, segment.id)

    async def _insert(
        self, tenant_id: str, display_name: str, description: str, read: Condition, now: int
    ) -> Segment:
        """A new segment with the lowest free bid index (unique per tenant:
        a concurrent insert of the same index fails with IntegrityError)."""
        async with self._db.engine.begin() as conn:
            if self._db.is_sqlite:  # the write lock before the read (see Profiles.ingest)
                await conn.execute(sa.text("DELETE FROM audience_segments WHERE 0 = 1"))
            rows = (
                await conn.execute(
                    sa.select(audience_segments.c.bid_index).where(
                        audience_segments.c.tenant_id == tenant_id
                    )
                )
            ).all()
            if len(rows) >= MAX_SEGMENTS:
                raise InvalidArgument.field(
                    "parent", f"a tenant has at most {MAX_SEGMENTS} segments"
                )
            used = {r.bid_index for r in rows}
            bid_index = next((i for i in range(BID_INDEXES) if i not in used), -1)
            segment = Segment(
                random_hex_id(),
                tenant_id,
                display_name,
                description,
                read,
                conditions.kind_of(read),
                bid_index,
                0,
                now,
                now,
                0,
            )
            await conn.execute(
                audience_segments.insert().values(
                    id=segment.id,
                    tenant_id=tenant_id,
                    display_name=display_name,
                    description=description,
                    condition=conditions.to_json(read),
                    kind=segment.kind,
                    bid_index=bid_index,
                    size=0,
                    create_time=now,
                    update_time=now,
                    evaluate_time=0,
                )
            )
        return segment

    async def update(
        self,
        caller: Principal,
        name: str,
        paths: Sequence[str],
        *,
        display_name: str,
        description: str,
        condition: Any,
    ) -> Segment:
        """Change the fields in `paths` (empty: all three); a new condition
        is evaluated over every profile at once, its changes published."""
        tenant_id, segment_id = _segment(caller, name, "segment.name")
        current = await self._get(tenant_id, segment_id)
        fields = set(paths) or {"display_name", "description", "condition"}
        unknown = fields - {"display_name", "description", "condition"}
        if unknown:
            raise InvalidArgument.field(
                "update_mask", f"{sorted(unknown)[0]!r}: display_name, description or condition"
            )
        violations: list[FieldViolation] = []
        if "display_name" in fields:
            check_text(violations, "segment.display_name", display_name, required=True, max_len=200)
        if "description" in fields:
            check_text(violations, "segment.description", description, required=False, max_len=2000)
        collect(violations)
        values: dict[str, Any] = {"update_time": self._clock()}
        if "display_name" in fields:
            values["display_name"] = display_name
        if "description" in fields:
            values["description"] = description
        if "condition" in fields:
            if not condition:
                raise InvalidArgument.field("segment.condition", "required")
            read = conditions.read_condition(condition, "segment.condition")
            await self._check_seeds(tenant_id, read, "segment.condition", current.id)
            values["condition"] = conditions.to_json(read)
            values["kind"] = conditions.kind_of(read)
        async with self._db.engine.begin() as conn:
            await conn.execute(
                audience_segments.update()
                .where(audience_segments.c.id == current.id)
                .values(**values)
            )
        self._cache.pop(tenant_id, None)
        if "condition" in fields:
            await self._backfill_counters(tenant_id, read)
            await self.evaluate_all(tenant_id, only=[current.id], publish=True)
        return await self._get(tenant_id, current.id)

    async def overlap(
        self, caller: Principal, parent: str, segment_names: Sequence[str]
    ) -> tuple[list[int], list[tuple[str, str, int]], int]:
        """(sizes, shared by each pair, in all) of 2-10 segments."""
        tenant_id = names.own_tenant(parent, caller.tenant_id)
        if not 2 <= len(segment_names) <= 10 or len(set(segment_names)) != len(segment_names):
            raise InvalidArgument.field("segments", "name 2-10 different segments")
        ids = []
        for i, name in enumerate(segment_names):
            owner, segment_id = _segment(caller, name, f"segments[{i}]")
            if owner != tenant_id:
                raise InvalidArgument.field(f"segments[{i}]", "must be of the parent tenant")
            await self._get(tenant_id, segment_id)
            ids.append(segment_id)
        m = audience_segment_members.c
        async with self._db.engine.connect() as conn:
            members = {
                sid: set(await conn.scalars(sa.select(m.profile_id).where(m.segment_id == sid)))
                for sid in ids
            }
        sizes = [len(members[sid]) for sid in ids]
        pairs = [
            (segment_names[a], segment_names[b], len(members[ids[a]] & members[ids[b]]))
            for a in range(len(ids))
            for b in range(a + 1, len(ids))
        ]
        in_all = set.intersection(*(members[sid] for sid in ids))
        return sizes, pairs, len(in_all)

    async def get(self, caller: Principal, name: str) -> Segment:
        tenant_id, segment_id = _segment(caller, name, "name")
        return await self._get(tenant_id, segment_id)

    async def list_segments(
        self, caller: Principal, parent: str, page_size: int = 0, page_token: str = ""
    ) -> tuple[list[Segment], str]:
        tenant_id = names.own_tenant(parent, caller.tenant_id)
        size = _page_size(page_size, DEFAULT_PAGE_SIZE)
        request = scope("audience.ListSegments", tenant_id)
        cursor = self._pages.decode(request, page_token, "t", "id")
        c = audience_segments.c
        query = (
            sa.select(audience_segments)
            .where(c.tenant_id == tenant_id)
            .order_by(c.create_time, c.id)
            .limit(size + 1)
        )
        if cursor is not None:
            query = query.where(
                sa.or_(
                    c.create_time > cursor["t"],
                    sa.and_(c.create_time == cursor["t"], c.id > cursor["id"]),
                )
            )
        async with self._db.engine.connect() as conn:
            rows = (await conn.execute(query)).all()
        token = ""
        if len(rows) > size:
            last = rows[size - 1]
            token = self._pages.encode(request, {"t": last.create_time, "id": last.id})
        return [_from_row(r) for r in rows[:size]], token

    async def delete(self, caller: Principal, name: str) -> None:
        tenant_id, segment_id = _segment(caller, name, "name")
        await self._get(tenant_id, segment_id)
        m = audience_segment_members.c
        async with self._db.engine.begin() as conn:
            members = list(
                await conn.scalars(sa.select(m.profile_id).where(m.segment_id == segment_id))
            )
            await conn.execute(audience_segment_members.delete().where(m.segment_id == segment_id))
            await conn.execute(
                audience_segments.delete().where(audience_segments.c.id == segment_id)
            )
        self._cache.pop(tenant_id, None)
        await self._tell(tenant_id, members)

    async def estimate(self, caller: Principal, parent: str, condition: Any) -> tuple[int, int]:
        """(profiles meeting the condition now, profiles evaluated)."""
        tenant_id = names.own_tenant(parent, caller.tenant_id)
        if not condition:
            raise InvalidArgument.field("condition", "required")
        read = conditions.read_condition(condition, "condition")
        await self._check_seeds(tenant_id, read, "condition")
        now = self._clock()
        size = evaluated = 0
        draft = Segment("", tenant_id, "", "", read, conditions.kind_of(read), -1, 0, now, now, 0)
        counted = await self._count_windows(tenant_id, [draft], now)
        async for page in self._pages_of_facts(
            tenant_id, conditions.longest_window(read), [draft], counted
        ):
            evaluated += len(page)
            size += sum(1 for facts in page.values() if conditions.matches(read, facts, now))
        return size, evaluated

    async def members(
        self, caller: Principal, name: str, page_size: int = 0, page_token: str = ""
    ) -> tuple[list[tuple[str, int]], str]:
        """(profile id, enter time) of a segment's members, in profile order."""
        tenant_id, segment_id = _segment(caller, name, "parent")
        await self._get(tenant_id, segment_id)
        size = _page_size(page_size, DEFAULT_MEMBERS_PAGE)
        request = scope("audience.ListSegmentMembers", tenant_id, segment_id)
        cursor = self._pages.decode(request, page_token, "p")
        m = audience_segment_members.c
        query = (
            sa.select(m.profile_id, m.enter_time)
            .where(m.segment_id == segment_id)
            .order_by(m.profile_id)
            .limit(size + 1)
        )
        if cursor is not None:
            query = query.where(m.profile_id > cursor["p"])
        async with self._db.engine.connect() as conn:
            rows = (await conn.execute(query)).all()
        token = ""
        if len(rows) > size:
            token = self._pages.encode(request, {"p": rows[size - 1].profile_id})
        return [(r.profile_id, r.enter_time) for r in rows[:size]], token

    async def member_pages(
        self, caller: Principal, name: str, page_size: int = MAX_PAGE_SIZE
    ) -> AsyncIterator[tuple[str, list[tuple[str, int, dict[str, list[str]]]]]]:
        """Every member of a segment, a page at a time, in profile order:
        (tenant id, [(profile id, enter time, identities by kind)]). Checks
        the caller and the segment before the first page."""
        tenant_id, segment_id = _segment(caller, name, "parent")
        await self._get(tenant_id, segment_id)
        m, i = audience_segment_members.c, audience_identities.c
        after = ""
        while True:
            async with self._db.engine.connect() as conn:
                rows = (
                    await conn.execute(
                        sa.select(m.profile_id, m.enter_time)
                        .where(m.segment_id == segment_id, m.profile_id > after)
                        .order_by(m.profile_id)
                        .limit(page_size)
                    )
                ).all()
                owned: dict[str, dict[str, list[str]]] = defaultdict(lambda: defaultdict(list))
                for chunk in chunks([r.profile_id for r in rows]):
                    for profile_id, kind, value in await conn.execute(
                        sa.select(i.profile_id, i.kind, i.value)
                        .where(i.profile_id.in_(chunk))
                        .order_by(i.profile_id, i.kind, i.create_time, i.value)
                    ):
                        owned[profile_id][kind].append(value)
            if not rows:
                return
            yield tenant_id, [(r.profile_id, r.enter_time, owned[r.profile_id]) for r in rows]
            if len(rows) < page_size:
                return
            after = rows[-1].profile_id

    async def evaluate_profile(self, tenant_id: str, profile_id: str) -> tuple[list[Segment], int]:
        """The segments one profile meets now (FR-SEG-004), and how many were
        evaluated."""
        segments = await self.of_tenant(tenant_id)
        now = self._clock()
        async with self._db.engine.connect() as conn:
            facts = await _facts(conn, tenant_id, [profile_id], _window(segments), now)
        facts = await self._enrich(tenant_id, facts, segments)
        if profile_id not in facts:
            raise NotFound(f"profile {profile_id} not found")
        met = [s for s in segments if conditions.matches(s.condition, facts[profile_id], now)]
        return met, len(segments)

    async def bid_indexes(self, tenant_id: str, profile_ids: Sequence[str]) -> dict[str, list[int]]:
        """The bid indexes of the segments each profile is a member of."""
        segments = {s.id: s.bid_index for s in await self.of_tenant(tenant_id)}
        found: dict[str, list[int]] = defaultdict(list)
        m = audience_segment_members.c
        async with self._db.engine.connect() as conn:
            for chunk in chunks(list(profile_ids)):
                for segment_id, profile_id in await conn.execute(
                    sa.select(m.segment_id, m.profile_id).where(m.profile_id.in_(chunk))
                ):
                    index = segments.get(segment_id, -1)
                    if index >= 0:
                        found[profile_id].append(index)
        return {pid: sorted(v) for pid, v in found.items()}

    # -- keeping members current ---------------------------------------------------

    async def on_applied(
        self, tenant_id: str, source: str, calls: Sequence[TrackedCall], result: IngestResult
    ) -> None:
        """The applier's hook: evaluate the profiles a batch changed."""
        changed = [p for p in dict.fromkeys(result.profile_ids) if p]
        merged = [m.source for m in result.merges]
        if changed or merged:
            await self.refresh_profiles(tenant_id, changed, gone=merged)

    async def refresh_profiles(
        self, tenant_id: str, profile_ids: Sequence[str], gone: Sequence[str] = ()
    ) -> list[str]:
        """Evaluate these profiles against every segment of the tenant and
        write who entered and left (`gone`: profiles merged away, which leave
        every segment). Returns the profiles whose memberships changed."""
        segments = await self.of_tenant(tenant_id)
        if not segments:
            return []
        now = self._clock()
        async with self._db.engine.begin() as conn:
            facts = await self._enrich(
                tenant_id,
                await _facts(conn, tenant_id, profile_ids, _window(segments), now),
                segments,
            )
            wanted = {
                (s.id, pid)
                for pid, f in facts.items()
                for s in segments
                if conditions.matches(s.condition, f, now)
            }
            changes = await _write_members(
                conn, tenant_id, [*profile_ids, *gone], wanted, None, now
            )
        await self._after(tenant_id, segments, changes, publish=True)
        return sorted({pid for _, pid in changes[0] | changes[1]})

    async def evaluate_all(
        self, tenant_id: str, only: Sequence[str] | None = None, publish: bool = True
    ) -> None:
        """Every profile of the tenant against its segments (or `only` these)."""
        segments = [s for s in await self.of_tenant(tenant_id) if only is None or s.id in only]
        if not segments:
            return
        now = self._clock()
        counted = await self._count_windows(tenant_id, segments, now)
        by_sets = [s for s in segments if counted is not None and _events_only(s.condition)]
        by_pages = [s for s in segments if s not in by_sets]
        entered: set[tuple[str, str]] = set()
        exited: set[tuple[str, str]] = set()
        if by_sets and counted is not None:
            entered, exited = await self._evaluate_by_sets(tenant_id, by_sets, counted, now)
        if by_pages:
            e, x = await self._evaluate_by_pages(tenant_id, by_pages, counted, now)
            entered, exited = entered | e, exited | x
        async with self._db.engine.begin() as conn:
            await conn.execute(
                audience_segments.update()
                .where(audience_segments.c.id.in_([s.id for s in segments]))
                .values(evaluate_time=now)
            )
        await self._after(tenant_id, segments, (entered, exited), publish=publish)

    async def _evaluate_by_sets(
        self,
        tenant_id: str,
        segments: Sequence[Segment],
        counted: windows.WindowCounts,
        now: int,
    ) -> tuple[set[tuple[str, str]], set[tuple[str, str]]]:
        """Segments of event conditions only (and all/any/not of them): their
        members by set algebra over the analytics store's counts, attributed
        to profiles by one read of the tenant's identities, with no profile
        read one by one (Dittofeed's approach). Profiles seen in the last
        RECENT_SECONDS are evaluated from their facts, as in real time."""
        owner = await self._identity_owners(tenant_id)
        totals: dict[windows.WindowKey, dict[str, int]] = {}
        for key, by_identity in counted.counts.items():
            found: dict[str, int] = defaultdict(int)
            for identity, n in by_identity.items():
                profile_id = owner.get(identity)
                if profile_id is not None:
                    found[profile_id] += n
            totals[key] = found
        del owner
        p = audience_profiles.c
        live = sa.and_(p.tenant_id == tenant_id, p.merged_into.is_(None))
        async with self._db.engine.connect() as conn:
            recent = list(
                await conn.scalars(
                    sa.select(p.id).where(
                        live, p.last_seen_time >= now - RECENT_SECONDS * 1_000_000
                    )
                )
            )
            facts = await _facts(
                conn, tenant_id, recent, _window(segments), now, counted, traits=False
            )
            everyone: set[str] = set()
            if any(_negates(s.condition) for s in segments):
                everyone = set(await conn.scalars(sa.select(p.id).where(live)))

        def members(condition: Condition) -> set[str]:
            match condition:
                case conditions.Event():
                    found = totals.get(windows.window_key(condition), {})
                    return {pid for pid, n in found.items() if n >= condition.min_count}
                case conditions.All(parts):
                    return set.intersection(*(members(part) for part in parts))
                case conditions.AnyOf(parts):
                    return set.union(*(members(part) for part in parts))
                case conditions.Not(part):
                    return everyone - members(part)
            raise TypeError(f"not a condition of events: {condition!r}")

        entered: set[tuple[str, str]] = set()
        exited: set[tuple[str, str]] = set()
        m = audience_segment_members.c
        for segment in segments:
            wanted = members(segment.condition).difference(recent)
            wanted |= {
                pid for pid, f in facts.items() if conditions.matches(segment.condition, f, now)
            }
            async with self._db.engine.begin() as conn:
                current = set(
                    await conn.scalars(sa.select(m.profile_id).where(m.segment_id == segment.id))
                )
                joined, left = sorted(wanted - current), sorted(current - wanted)
                for first in range(0, len(joined), WRITE_STEP):
                    await conn.execute(
                        audience_segment_members.insert(),
                        [
                            {
                                "segment_id": segment.id,
                                "profile_id": pid,
                                "tenant_id": tenant_id,
                                "enter_time": now,
                            }
                            for pid in joined[first : first + WRITE_STEP]
                        ],  # fmt: skip
                    )
                for chunk in chunks(left):
                    await conn.execute(
                        audience_segment_members.delete().where(
                            m.segment_id == segment.id, m.profile_id.in_(chunk)
                        )
                    )
            entered |= {(segment.id, pid) for pid in joined}
            exited |= {(segment.id, pid) for pid in left}
        return entered, exited

    async def _identity_owners(self, tenant_id: str) -> dict[windows.Identity, str]:
        """Every user and anonymous id of the tenant's live profiles -> its
        profile (one read; a full evaluation's attribution of calls)."""
        i, p = audience_identities.c, audience_profiles.c
        owner: dict[windows.Identity, str] = {}
        async with self._db.engine.connect() as conn:
            rows = await conn.execute(
                sa.select(i.kind, i.value, i.profile_id)
                .join(audience_profiles, p.id == i.profile_id)
                .where(
                    i.tenant_id == tenant_id,
                    i.kind.in_(("user_id", "anonymous_id")),
                    p.merged_into.is_(None),
                )
            )
            for kind, value, profile_id in rows:
                owner[(kind, value)] = profile_id
        return owner

    async def _evaluate_by_pages(
        self,
        tenant_id: str,
        segments: Sequence[Segment],
        counted: windows.WindowCounts | None,
        now: int,
    ) -> tuple[set[tuple[str, str]], set[tuple[str, str]]]:
        """Every live profile's facts, a page at a time, against these
        segments; members whose profile is gone leave."""
        entered: set[tuple[str, str]] = set()
        exited: set[tuple[str, str]] = set()
        seen: set[str] = set()
        for segment in segments:  # lookalikes: their seed's centre afresh
            for seed in conditions.needs(segment.condition)[1]:
                self._centres.pop(seed, None)
        similarity: dict[str, list[float]] = defaultdict(list)
        async for page in self._pages_of_facts(tenant_id, _window(segments), segments, counted):
            for segment in segments:
                if isinstance(segment.condition, conditions.Lookalike):
                    key = f"lookalike:{segment.condition.seed}"
                    similarity[segment.id] += [
                        f.scores.get(key, 0.0)
                        for f in page.values()
                        if conditions.matches(segment.condition, f, now)
                    ]
            wanted = {
                (s.id, pid)
                for pid, f in page.items()
                for s in segments
                if conditions.matches(s.condition, f, now)
            }
            async with self._db.engine.begin() as conn:
                e, x = await _write_members(
                    conn, tenant_id, list(page), wanted, [s.id for s in segments], now
                )
            entered |= e
            exited |= x
            seen.update(page)
        # members whose profile is gone (deleted or merged) leave
        m = audience_segment_members.c
        async with self._db.engine.begin() as conn:
            for segment in segments:
                stale = [
                    pid
                    for pid in await conn.scalars(
                        sa.select(m.profile_id).where(m.segment_id == segment.id)
                    )
                    if pid not in seen
                ]
                for chunk in chunks(stale):
                    await conn.execute(
                        audience_segment_members.delete().where(
                            m.segment_id == segment.id, m.profile_id.in_(chunk)
                        )
                    )
                exited |= {(segment.id, pid) for pid in stale}
            for segment_id, values in similarity.items():
                await conn.execute(
                    audience_segments.update()
                    .where(audience_segments.c.id == segment_id)
                    .values(similarity=sum(values) / len(values) if values else 0.0)
                )
        return entered, exited

    async def _count_windows(
        self, tenant_id: str, segments: Sequence[Segment], now: int
    ) -> windows.WindowCounts | None:
        """The event conditions' counts from the analytics store (None: read
        the counters, as when it fails)."""
        leaves = _event_leaves(segments)
        if not leaves or self._analytics is None:
            return None
        try:
            return await windows.count_windows(self._analytics, tenant_id, leaves, now)
        except Exception:
            log.warning("segments: counting events in the analytics store failed", exc_info=True)
            return None

    async def counter_keys(self, tenant_id: str) -> Callable[[TrackedCall], list[str]] | None:
        """What the applier also counts a call of this tenant under: the keys
        of the event conditions with property filters it passes."""
        filtered = {
            leaf.key: leaf
            for leaf in _event_leaves(await self.of_tenant(tenant_id))
            if leaf.filters
        }
        if not filtered:
            return None
        leaves = list(filtered.values())

        def keys(call: TrackedCall) -> list[str]:
            named = call.event or call.name
            return [
                leaf.key for leaf in leaves if leaf.event == named and leaf.takes(call.properties)
            ]

        return keys

    async def _backfill_counters(self, tenant_id: str, condition: Condition) -> None:
        """Per-day counters for the condition's event conditions with
        property filters, from the events table: a day's count becomes the
        larger of what is counted and what the store holds (the applier
        counts from when its segment list shows the condition, within
        CACHE_SECONDS, and the store may lag the applier)."""
        if self._analytics is None:
            return
        now = self._clock()
        for leaf in conditions.leaves(condition):
            if not isinstance(leaf, conditions.Event) or not leaf.filters:
                continue
            try:
                rows = await windows.daily_counts(
                    self._analytics, tenant_id, leaf, windows.since_day(leaf, now)
                )
            except Exception:
                log.warning("segments: backfilling %s failed", leaf.event, exc_info=True)
                continue
            await self._write_backfill(tenant_id, leaf.key, rows)

    async def _write_backfill(
        self, tenant_id: str, key: str, rows: list[tuple[windows.Identity, int, int]]
    ) -> None:
        i, c = audience_identities.c, audience_event_counts.c
        by_kind: dict[str, set[str]] = defaultdict(set)
        for (kind, value), _, _ in rows:
            by_kind[kind].add(value)
        owner: dict[windows.Identity, str] = {}
        if sum(len(values) for values in by_kind.values()) > OWNERS_BY_SCAN:
            owner = await self._identity_owners(tenant_id)  # one read beats many
        else:
            async with self._db.engine.connect() as conn:
                for kind, values in by_kind.items():
                    for chunk in chunks(sorted(values)):
                        for value, profile_id in await conn.execute(
                            sa.select(i.value, i.profile_id).where(
                                i.tenant_id == tenant_id, i.kind == kind, i.value.in_(chunk)
                            )
                        ):
                            owner[(kind, value)] = profile_id
        totals: dict[tuple[str, int], int] = defaultdict(int)
        for identity, day, n in rows:
            profile_id = owner.get(identity)
            if profile_id is not None:
                totals[(profile_id, day)] += n
        if not totals:
            return
        records = [
            {"profile_id": pid, "event": key, "day": day, "tenant_id": tenant_id, "count": n}
            for (pid, day), n in totals.items()
        ]
        insert = (sqlite_insert if self._db.is_sqlite else postgresql_insert)(audience_event_counts)
        larger = sa.func.max if self._db.is_sqlite else sa.func.greatest
        statement = insert.on_conflict_do_update(
            index_elements=[c.profile_id, c.event, c.day],
            set_={"count": larger(c.count, insert.excluded.count)},
        )
        async with self._db.engine.begin() as conn:
            for first in range(0, len(records), WRITE_STEP):
                await conn.execute(statement, records[first : first + WRITE_STEP])

    async def of_tenant(self, tenant_id: str) -> list[Segment]:
        cached = self._cache.get(tenant_id)
        if cached is not None and cached[0] > time.monotonic():
            return cached[1]
        async with self._db.engine.connect() as conn:
            rows = (
                await conn.execute(
                    sa.select(audience_segments)
                    .where(audience_segments.c.tenant_id == tenant_id)
                    .order_by(audience_segments.c.create_time, audience_segments.c.id)
                )
            ).all()
        segments = [_from_row(r) for r in rows]
        self._cache[tenant_id] = (time.monotonic() + CACHE_SECONDS, segments)
        return segments

    async def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._periodic(), name="segments")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None

    async def _periodic(self) -> None:
        while True:
            await asyncio.sleep(self._refresh_seconds)
            try:
                async with self._db.engine.connect() as conn:
                    tenants = list(
                        await conn.scalars(sa.select(audience_segments.c.tenant_id).distinct())
                    )
                for tenant_id in tenants:
                    await self.evaluate_all(tenant_id)
            except Exception:  # the next round tries again
                log.warning("segments: periodic evaluation failed", exc_info=True)

    async def _after(
        self,
        tenant_id: str,
        segments: Sequence[Segment],
        changes: tuple[set[tuple[str, str]], set[tuple[str, str]]],
        *,
        publish: bool,
    ) -> None:
        entered, exited = changes
        if not (entered or exited):
            return
        touched = {sid for sid, _ in entered | exited}
        await self.recount(sorted(touched))
        if publish and self._publisher is not None:
            by_id = {s.id: s for s in segments}
            now = self._clock()
            for segment_id in touched:
                segment = by_id.get(segment_id)
                if segment is None:
                    continue
                body = {
                    "segment": segment.name,
                    "entered": [
                        f"tenants/{tenant_id}/profiles/{p}" for s, p in entered if s == segment_id
                    ],
                    "exited": [
                        f"tenants/{tenant_id}/profiles/{p}" for s, p in exited if s == segment_id
                    ],
                    "time": now,
                }
                await self._publisher.publish(f"{SUBJECT_PREFIX}.{tenant_id}", orjson.dumps(body))
        await self._tell(tenant_id, sorted({pid for _, pid in entered | exited}))

    async def recount(self, segment_ids: Sequence[str]) -> None:
        """Set these segments' sizes from their members (after members were
        removed behind the segments' back: a profile deleted)."""
        async with self._db.engine.begin() as conn:
            for segment_id in segment_ids:
                count = await conn.scalar(
                    sa.select(sa.func.count()).where(
                        audience_segment_members.c.segment_id == segment_id
                    )
                )
                await conn.execute(
                    audience_segments.update()
                    .where(audience_segments.c.id == segment_id)
                    .values(size=int(count or 0))
                )

    async def _tell(self, tenant_id: str, profile_ids: list[str]) -> None:
        for hook in self._members_changed:
            try:
                await hook(tenant_id, profile_ids)
            except Exception:
                log.warning("segments: a members-changed hook failed", exc_info=True)

    async def _enrich(
        self, tenant_id: str, facts: dict[str, Facts], segments: Sequence[Segment]
    ) -> dict[str, Facts]:
        """Facts with what these segments read worked out: computed
        properties among the traits (by key), the model's ctr, and each
        lookalike seed's similarity and membership."""
        if not facts:
            return facts
        wants_traits = _reads_traits(segments)
        values = (
            await self.computed(tenant_id, list(facts)) if self.computed and wants_traits else {}
        )
        wants_ctr, seeds = False, set[str]()
        for segment in segments:
            ctr, found = conditions.needs(segment.condition)
            wants_ctr, seeds = wants_ctr or ctr, seeds | found
        scores: dict[str, dict[str, float]] = defaultdict(dict)
        if wants_ctr and self.predict is not None:
            for pid, ctr_value in (await self.predict(tenant_id, facts)).items():
                scores[pid]["ctr"] = ctr_value
        for seed in seeds:
            centre = await self._centre(tenant_id, seed)
            owner, seed_id = seed.split("/")[1], seed.split("/")[3]
            members: set[str] = set()
            if owner == tenant_id:
                m = audience_segment_members.c
                async with self._db.engine.connect() as conn:
                    for chunk in chunks(list(facts)):
                        members |= set(
                            await conn.scalars(
                                sa.select(m.profile_id).where(
                                    m.segment_id == seed_id, m.profile_id.in_(chunk)
                                )
                            )
                        )
            for pid, f in facts.items():
                scores[pid][f"lookalike:{seed}"] = _cosine(vector_of(f), centre)
                if pid in members:
                    scores[pid][f"in:{seed}"] = 1.0
        if not values and not scores:
            return facts
        return {
            pid: Facts(
                {**f.traits, **values.get(pid, {})},
                f.first_seen_us,
                f.last_seen_us,
                f.count,
                f.events,
                {**f.scores, **scores.get(pid, {})},
            )
            for pid, f in facts.items()
        }

    async def _check_seeds(
        self, tenant_id: str, condition: Condition, field: str, itself: str = ""
    ) -> None:
        """A lookalike's seed is another segment of the same tenant."""
        for seed in conditions.needs(condition)[1]:
            owner, seed_id = seed.split("/")[1], seed.split("/")[3]
            if owner != tenant_id or seed_id == itself:
                raise InvalidArgument.field(field, f"{seed}: the seed must be another segment here")
            try:
                await self._get(tenant_id, seed_id)
            except NotFound:
                raise InvalidArgument.field(field, f"{seed}: no such segment") from None

    async def _centre(self, tenant_id: str, seed: str) -> dict[str, float]:
        """The mean vector of a seed segment's members (kept until the next
        full evaluation of a lookalike of it)."""
        found = self._centres.get(seed)
        if found is not None:
            return found
        owner, seed_id = seed.split("/")[1], seed.split("/")[3]
        total: dict[str, float] = defaultdict(float)
        count = 0
        if owner == tenant_id:
            m = audience_segment_members.c
            async with self._db.engine.connect() as conn:
                ids = list(
                    await conn.scalars(sa.select(m.profile_id).where(m.segment_id == seed_id))
                )
                for chunk in chunks(ids):
                    page = await _facts(
                        conn, tenant_id, chunk, conditions.LOOKALIKE_DAYS, self._clock()
                    )
                    for f in page.values():
                        for key, value in _unit(vector_of(f)).items():
                            total[key] += value
                        count += 1
        centre = {key: value / count for key, value in total.items()} if count else {}
        self._centres[seed] = centre
        return centre

    async def _get(self, tenant_id: str, segment_id: str) -> Segment:
        async with self._db.engine.connect() as conn:
            row = (
                await conn.execute(
                    sa.select(audience_segments).where(
                        audience_segments.c.tenant_id == tenant_id,
                        audience_segments.c.id == segment_id,
                    )
                )
            ).first()
        if row is None:
            name = f"tenants/{tenant_id}/segments/{segment_id}"
            raise NotFound(f"{name} not found", metadata={"resource": name})
        return _from_row(row)

    async def _pages_of_facts(
        self,
        tenant_id: str,
        window_days: int,
        segments: Sequence[Segment] = (),
        counted: windows.WindowCounts | None = None,
    ) -> Any:
        """The facts of every live profile of the tenant, a page at a time,
        with what `segments` read worked out (event conditions from
        `counted` where given)."""
        vector_days = conditions.LOOKALIKE_DAYS if _vectors(segments) else 0
        p = audience_profiles.c
        after = ""
        while True:
            async with self._db.engine.connect() as conn:
                ids = list(
                    await conn.scalars(
                        sa.select(p.id)
                        .where(p.tenant_id == tenant_id, p.merged_into.is_(None), p.id > after)
                        .order_by(p.id)
                        .limit(PASS_PAGE)
                    )
                )
                if not ids:
                    return
                page = await _facts(
                    conn,
                    tenant_id,
                    ids,
                    window_days,
                    self._clock(),
                    counted,
                    vector_days,
                    traits=not segments or _reads_traits(segments),
                )
            yield await self._enrich(tenant_id, page, segments)
            after = ids[-1]


async def _facts(
    conn: AsyncConnection,
    tenant_id: str,
    profile_ids: Sequence[str],
    window_days: int,
    now: int,
    counted: windows.WindowCounts | None = None,
    vector_days: int = 0,
    *,
    traits: bool = True,
) -> dict[str, Facts]:
    """Facts of the live (not merged) profiles among these ids. Event
    conditions read the profiles' counters over `window_days`; with
    `counted` (a full evaluation's counts from the analytics store) they read
    those instead, but for profiles seen in the last RECENT_SECONDS, and
    counters are read only for those and for lookalike vectors
    (`vector_days`). Without `traits`, the facts have none (conditions on
    events and lifecycle only: no JSON to decode)."""
    p, c, i = audience_profiles.c, audience_event_counts.c, audience_identities.c
    traits_column = p.traits if traits else sa.literal(None).label("traits")
    rows: list[Any] = []
    counts: dict[str, dict[str, list[tuple[int, int]]]] = defaultdict(lambda: defaultdict(list))
    owned: dict[str, list[windows.Identity]] = defaultdict(list)
    recent_since = now - RECENT_SECONDS * 1_000_000
    for chunk in chunks(list(dict.fromkeys(profile_ids))):
        found = (
            await conn.execute(
                sa.select(p.id, traits_column, p.first_seen_time, p.last_seen_time).where(
                    p.tenant_id == tenant_id, p.id.in_(chunk), p.merged_into.is_(None)
                )
            )
        ).all()
        rows += found
        wanted: Sequence[str] = chunk
        if counted is not None:
            for profile_id, kind, value in await conn.execute(
                sa.select(i.profile_id, i.kind, i.value).where(
                    i.profile_id.in_(chunk), i.kind.in_(("user_id", "anonymous_id"))
                )
            ):
                owned[profile_id].append((kind, value))
            if not vector_days:
                wanted = [r.id for r in found if r.last_seen_time >= recent_since]
        days = max(window_days, vector_days)
        if days and wanted:
            since = now // conditions.US_PER_DAY - days
            for profile_id, event, day, n in await conn.execute(
                sa.select(c.profile_id, c.event, c.day, c.count).where(
                    c.profile_id.in_(wanted), c.day >= since
                )
            ):
                counts[profile_id][event].append((day, n))
    return {
        row.id: Facts(
            dict(row.traits or {}),
            row.first_seen_time,
            row.last_seen_time,
            _counter(
                counts.get(row.id),
                counted,
                owned.get(row.id, []),
                recent=row.last_seen_time >= recent_since,
            ),
            {
                e: sum(n for _, n in days)
                for e, days in counts.get(row.id, {}).items()
                if not e.startswith(conditions.FILTERED_PREFIX)
            },
        )
        for row in rows
    }


def _counter(
    per_event: dict[str, list[tuple[int, int]]] | None,
    counted: windows.WindowCounts | None = None,
    identities: Sequence[windows.Identity] = (),
    *,
    recent: bool = False,
) -> Callable[[conditions.Event, int], int]:
    """A profile's count of an event condition's calls: from the analytics
    store's counts where they cover it; for a recent profile the larger of
    those and its counters (each may miss calls: the store its latest, the
    counters of a new filtered condition its history)."""

    def count(leaf: conditions.Event, since_day: int) -> int:
        stored = counted.of(leaf, identities) if counted and counted.covers(leaf) else None
        if stored is not None and not recent:
            return stored
        kept = sum(n for day, n in (per_event or {}).get(leaf.key, ()) if day >= since_day)
        return kept if stored is None else max(stored, kept)

    return count


async def _write_members(
    conn: AsyncConnection,
    tenant_id: str,
    profile_ids: Sequence[str],
    wanted: set[tuple[str, str]],
    segment_ids: Sequence[str] | None,
    now: int,
) -> tuple[set[tuple[str, str]], set[tuple[str, str]]]:
    """Make the memberships of these profiles (in these segments, or all)
    what `wanted` says; returns (entered, exited) as (segment, profile)."""
    m = audience_segment_members.c
    current: set[tuple[str, str]] = set()
    for chunk in chunks(list(dict.fromkeys(profile_ids))):
        query = sa.select(m.segment_id, m.profile_id).where(m.profile_id.in_(chunk))
        if segment_ids is not None:
            query = query.where(m.segment_id.in_(list(segment_ids)))
        current |= {(r.segment_id, r.profile_id) for r in await conn.execute(query)}
    entered, exited = wanted - current, current - wanted
    if entered:
        await conn.execute(
            audience_segment_members.insert(),
            [
                {"segment_id": s, "profile_id": p, "tenant_id": tenant_id, "enter_time": now}
                for s, p in sorted(entered)
            ],
        )
    if exited:
        await conn.execute(
            audience_segment_members.delete().where(
                m.segment_id == sa.bindparam("b_segment"), m.profile_id == sa.bindparam("b_profile")
            ),
            [{"b_segment": s, "b_profile": p} for s, p in sorted(exited)],
        )
    return entered, exited


def _window(segments: Iterable[Segment]) -> int:
    return max((conditions.longest_window(s.condition) for s in segments), default=0)


def _event_leaves(segments: Iterable[Segment]) -> list[conditions.Event]:
    return [
        leaf
        for segment in segments
        for leaf in conditions.leaves(segment.condition)
        if isinstance(leaf, conditions.Event)
    ]


def _reads_traits(segments: Iterable[Segment]) -> bool:
    """Whether these segments read traits (all but event and lifecycle
    conditions do: predictive scores and lookalike vectors too)."""
    return any(
        not isinstance(leaf, conditions.Event | conditions.Lifecycle)
        for segment in segments
        for leaf in conditions.leaves(segment.condition)
    )


def _events_only(condition: Condition) -> bool:
    """Whether a condition is event conditions alone (and all/any/not)."""
    return all(isinstance(leaf, conditions.Event) for leaf in conditions.leaves(condition))


def _negates(condition: Condition) -> bool:
    match condition:
        case conditions.Not():
            return True
        case conditions.All(parts) | conditions.AnyOf(parts):
            return any(_negates(part) for part in parts)
    return False


def _vectors(segments: Iterable[Segment]) -> bool:
    """Whether these segments read lookalike vectors (event counts by name)."""
    return any(bool(conditions.needs(s.condition)[1]) for s in segments)


def _from_row(row: Any) -> Segment:
    return Segment(
        row.id,
        row.tenant_id,
        row.display_name,
        row.description,
        conditions.read_condition(row.condition),
        row.kind,
        row.bid_index,
        row.size,
        row.create_time,
        row.update_time,
        row.evaluate_time,
        float(row.similarity or 0.0),
    )


def _page_size(page_size: int, default: int) -> int:
    if page_size < 0 or page_size > MAX_PAGE_SIZE:
        raise InvalidArgument.field("page_size", f"must be 0-{MAX_PAGE_SIZE} (0: {default})")
    return page_size or default


def _segment(caller: Principal, name: str, field: str) -> tuple[str, str]:
    names.require_same_tenant(name, field, caller.tenant_id)
    tenant_id, segment_id = names.parse_name(name, field, "tenants", "segments")
    return tenant_id, segment_id


def predict_ctr(engine: Any) -> Predict:
    """Predictive segments' `ctr`: the served model's predicted click-through
    for each profile as it would bid (its loyalty tier, hours since last
    seen), against a neutral pseudo-offer."""

    async def predict(tenant_id: str, facts: dict[str, Facts]) -> dict[str, float]:
        now = now_us()
        requests = []
        for f in facts.values():
            tier = tier_name(str(f.traits.get("loyalty_tier", ""))) or "BASIC"
            hours = (now - f.last_seen_us) / 3.6e9 if f.last_seen_us else None
            profile = FeatureProfile(
                loyalty=Loyalty(tier=tier),
                context=BidContext(hours_since_last_visit=max(0.0, hours) if hours else None),
            )
            requests.append(engine.request(profile, [f"audience:{tenant_id}"]))
        predictions = await engine.predict_many(requests)
        return {pid: float(p.scores.ctr[0]) for pid, p in zip(facts, predictions, strict=True)}

    return predict
