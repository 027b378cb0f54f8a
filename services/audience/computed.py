"""Computed properties (FR-SEG-007): declared aggregates of a profile's
events — count, sum, min, max, first, last, distinct — over a window,
maintained incrementally.

Each property keeps, per profile and UTC day (all-time ones: one bucket), a
partial aggregate; a value is the buckets of its window combined, so windows
slide by the day with nothing recomputed. The applier's hook folds each
applied batch in (and moves a merged profile's buckets to its survivor); a
new property is computed at once from the events table (the analytics
store), so it starts with the past. Profiles show the values under
`computed`; segment trait conditions read them by key (they shadow a trait of
the same key); messaging's templates will read `values_of`.

Not transactional with the profile: a call applied and then lost to a crash
before this hook ran is not counted here (the journal re-applies the call,
but the profile, already holding its messageId, reports it as a duplicate)."""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import orjson
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from services.audience import conditions
from services.audience.events import TABLE as EVENTS_TABLE
from services.audience.profiles import IngestResult, Profiles, chunks
from services.audience.tables import (
    audience_computed_buckets,
    audience_computed_properties,
    audience_identities,
)
from services.audience.tracking import TrackedCall
from services.backends.analytics import quote_identifier, quote_literal, table_exists
from services.backends.interfaces import AnalyticsStore
from services.common import names
from services.common.call import Principal
from services.common.clock import now_us
from services.common.errors import (
    AlreadyExists,
    FailedPrecondition,
    FieldViolation,
    NotFound,
    collect,
)
from services.common.ids import random_hex_id
from services.common.validation import check_text

US_PER_DAY = 86_400_000_000
AGGREGATES = ("count", "sum", "min", "max", "first", "last", "distinct")
MAX_PROPERTIES = 100
MAX_DISTINCT = 1_000
_KEY = re.compile(r"^[a-z][a-z0-9_]{0,63}$")


@dataclass(frozen=True, slots=True)
class ComputedProperty:
    id: str
    tenant_id: str
    display_name: str
    key: str
    event: str
    aggregate: str
    property_name: str  # the event property aggregated ("" for count)
    within_days: int
    create_time: int
    filters: tuple[conditions.Trait, ...] = ()  # on the event's properties

    def takes(self, properties: dict[str, Any]) -> bool:
        """Whether an event with these properties counts."""
        return all(conditions.compare(f, properties) for f in self.filters)

    @property
    def name(self) -> str:
        return f"tenants/{self.tenant_id}/computedProperties/{self.id}"

    def day_of(self, at_us: int) -> int:
        return at_us // US_PER_DAY if self.within_days else 0


# ------------------------------------------------------------------ buckets


def fold(state: dict[str, Any], at_us: int, value: Any) -> dict[str, Any]:
    """A bucket with one more event (its property's `value`, None if absent)."""
    state = dict(state)
    state["n"] = int(state.get("n", 0)) + 1
    number = conditions.number(value)
    if number is not None:
        state["sum"] = float(state.get("sum", 0.0)) + number
        state["min"] = number if "min" not in state else min(float(state["min"]), number)
        state["max"] = number if "max" not in state else max(float(state["max"]), number)
    if value is not None:
        if "first" not in state or at_us < state["first"][0]:
            state["first"] = [at_us, value]
        if "last" not in state or at_us >= state["last"][0]:
            state["last"] = [at_us, value]
        values = list(state.get("values", []))
        if value not in values and len(values) < MAX_DISTINCT:
            values.append(value)
        state["values"] = values
    return state


def combine(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    """Two buckets as one (a merge, or the buckets of a window)."""
    if not a:
        return dict(b)
    if not b:
        return dict(a)
    out: dict[str, Any] = {"n": int(a.get("n", 0)) + int(b.get("n", 0))}
    if "sum" in a or "sum" in b:
        out["sum"] = float(a.get("sum", 0.0)) + float(b.get("sum", 0.0))
        out["min"] = min(float(x["min"]) for x in (a, b) if "min" in x)
        out["max"] = max(float(x["max"]) for x in (a, b) if "max" in x)
    firsts = [x["first"] for x in (a, b) if "first" in x]
    lasts = [x["last"] for x in (a, b) if "last" in x]
    if firsts:
        out["first"] = min(firsts, key=lambda f: f[0])
    if lasts:
        out["last"] = max(lasts, key=lambda f: f[0])
    values = list(a.get("values", []))
    for value in b.get("values", []):
        if value not in values and len(values) < MAX_DISTINCT:
            values.append(value)
    if values:
        out["values"] = values
    return out


def value_of(prop: ComputedProperty, state: dict[str, Any]) -> Any:
    """The property's value from its window's combined bucket (None: no event,
    or no value to aggregate)."""
    aggregate = prop.aggregate
    if aggregate == "count":
        return int(state.get("n", 0))
    if aggregate == "distinct":
        return len(state.get("values", []))
    if aggregate in ("sum", "min", "max"):
        value = state.get(aggregate)
        if value is None:
            return 0 if aggregate == "sum" else None
        return int(value) if float(value).is_integer() else float(value)
    pair = state.get(aggregate)  # first, last
    return pair[1] if pair else None


# ------------------------------------------------------------------ the store


class ComputedProperties:
    def __init__(
        self,
        profiles: Profiles,
        analytics: AnalyticsStore,
        clock: Callable[[], int] = now_us,
    ) -> None:
        self._db = profiles.db
        self._analytics = analytics
        self._clock = clock
        self._cache: dict[str, list[ComputedProperty]] = {}

    async def create(
        self,
        caller: Principal,
        parent: str,
        *,
        display_name: str,
        key: str,
        event: str,
        aggregate: str,
        property_name: str,
        within_days: int,
        filters: Sequence[Any] = (),
    ) -> ComputedProperty:
        tenant_id = names.own_tenant(parent, caller.tenant_id)
        at = "computed_property"
        bad: list[FieldViolation] = []
        check_text(bad, f"{at}.display_name", display_name, required=True, max_len=200)
        if not _KEY.match(key):
            bad.append(FieldViolation(f"{at}.key", "1-64 of a-z, 0-9 and _, from a letter"))
        if not event or len(event) > 1_024:
            bad.append(FieldViolation(f"{at}.event", "required: an event name"))
        if aggregate not in AGGREGATES:
            bad.append(FieldViolation(f"{at}.aggregate", "required: AGGREGATE_COUNT, _SUM, ..."))
        elif aggregate != "count" and not property_name:
            bad.append(FieldViolation(f"{at}.property", f"required for {aggregate}"))
        if len(property_name) > 256:
            bad.append(FieldViolation(f"{at}.property", "at most 256 characters"))
        if not 0 <= within_days <= 365:
            bad.append(FieldViolation(f"{at}.within_days", "must be 0 (all time) to 365"))
        if len(filters) > 10:
            bad.append(FieldViolation(f"{at}.filters", "at most 10"))
        collect(bad)
        read_filters = tuple(_filter(f, f"{at}.filters[{i}]") for i, f in enumerate(filters[:10]))
        existing = await self.of_tenant(tenant_id)
        if any(p.key == key for p in existing):
            raise AlreadyExists(f"a computed property has key {key!r}")
        if len(existing) >= MAX_PROPERTIES:
            raise FailedPrecondition(f"a tenant has at most {MAX_PROPERTIES} computed properties")
        prop = ComputedProperty(
            random_hex_id(),
            tenant_id,
            display_name,
            key,
            event,
            aggregate,
            property_name,
            within_days,
            self._clock(),
            read_filters,
        )
        async with self._db.engine.begin() as conn:
            await conn.execute(
                audience_computed_properties.insert().values(
                    id=prop.id,
                    tenant_id=tenant_id,
                    display_name=display_name,
                    key=key,
                    event=event,
                    aggregate=aggregate,
                    property=property_name,
                    within_days=within_days,
                    filters=[conditions.to_json(f)["trait"] for f in read_filters],
                    create_time=prop.create_time,
                )
            )
        self._cache.pop(tenant_id, None)
        await self._backfill(prop)
        return prop

    async def list_properties(self, caller: Principal, parent: str) -> list[ComputedProperty]:
        return await self.of_tenant(names.own_tenant(parent, caller.tenant_id))

    async def delete(self, caller: Principal, name: str) -> None:
        names.require_same_tenant(name, "name", caller.tenant_id)
        tenant_id, prop_id = names.parse_name(name, "name", "tenants", "computedProperties")
        if not any(p.id == prop_id for p in await self.of_tenant(tenant_id)):
            raise NotFound(f"{name} not found", metadata={"resource": name})
        async with self._db.engine.begin() as conn:
            for table in (audience_computed_buckets, audience_computed_properties):
                column = table.c.property_id if table is audience_computed_buckets else table.c.id
                await conn.execute(table.delete().where(column == prop_id))
        self._cache.pop(tenant_id, None)

    async def of_tenant(self, tenant_id: str) -> list[ComputedProperty]:
        found = self._cache.get(tenant_id)
        if found is None:
            c = audience_computed_properties.c
            async with self._db.engine.connect() as conn:
                rows = (
                    await conn.execute(
                        sa.select(audience_computed_properties)
                        .where(c.tenant_id == tenant_id)
                        .order_by(c.create_time, c.id)
                    )
                ).all()
            found = [_from_row(r) for r in rows]
            self._cache[tenant_id] = found
        return found

    async def values_of(
        self, tenant_id: str, profile_ids: Sequence[str]
    ) -> dict[str, dict[str, Any]]:
        """Per profile, its computed values by key (every property of the
        tenant: a profile with no event has the aggregate of nothing)."""
        props = await self.of_tenant(tenant_id)
        if not props or not profile_ids:
            return {}
        today = self._clock() // US_PER_DAY
        by_id = {p.id: p for p in props}
        combined: dict[tuple[str, str], dict[str, Any]] = {}
        b = audience_computed_buckets.c
        async with self._db.engine.connect() as conn:
            for chunk in chunks(list(dict.fromkeys(profile_ids))):
                for row in await conn.execute(
                    sa.select(b.property_id, b.profile_id, b.day, b.state).where(
                        b.profile_id.in_(chunk), b.property_id.in_(list(by_id))
                    )
                ):
                    prop = by_id[row.property_id]
                    if prop.within_days and row.day <= today - prop.within_days:
                        continue
                    key = (row.profile_id, row.property_id)
                    combined[key] = combine(combined.get(key, {}), dict(row.state))
        return {
            pid: {p.key: value_of(p, combined.get((pid, p.id), {})) for p in props}
            for pid in profile_ids
        }

    # -- keeping values current ----------------------------------------------------

    async def on_applied(
        self, tenant_id: str, source: str, calls: Sequence[TrackedCall], result: IngestResult
    ) -> None:
        props = await self.of_tenant(tenant_id)
        if not props:
            return
        updates: dict[tuple[str, str, int], list[tuple[int, Any]]] = defaultdict(list)
        for call, profile_id in zip(calls, result.profile_ids, strict=False):
            if not profile_id or call.type not in ("track", "page", "screen"):
                continue
            named = call.event or call.name
            for prop in props:
                if prop.event == named and prop.takes(call.properties):
                    value = call.properties.get(prop.property_name) if prop.property_name else None
                    key = (prop.id, profile_id, prop.day_of(call.timestamp_us))
                    updates[key].append((call.timestamp_us, _json_value(value)))
        async with self._db.engine.begin() as conn:
            for merge in result.merges:
                await _move(conn, tenant_id, merge.source, merge.target)
            if updates:
                await _fold_in(conn, tenant_id, updates)

    async def _backfill(self, prop: ComputedProperty) -> None:
        """The property's buckets from the events already in the store."""
        if not await table_exists(self._analytics, EVENTS_TABLE):
            return
        since = ""
        if prop.within_days:
            since = f" AND event_time >= now64(6) - INTERVAL {int(prop.within_days) + 1} DAY"
        rows = await self._analytics.query(
            "SELECT user_id, anonymous_id, toUnixTimestamp64Micro(event_time), properties "
            f"FROM (SELECT * FROM {quote_identifier(EVENTS_TABLE)} FINAL) "
            f"WHERE tenant_id = {quote_literal(prop.tenant_id)} "
            "AND event_type IN ('track', 'page', 'screen') "
            f"AND event = {quote_literal(prop.event)}{since} LIMIT 10000000"
        )
        if not rows:
            return
        users = {str(r[0]) for r in rows if r[0]}
        anons = {str(r[1]) for r in rows if r[1]}
        owner: dict[tuple[str, str], str] = {}
        i = audience_identities.c
        async with self._db.engine.connect() as conn:
            for kind, values in (("user_id", users), ("anonymous_id", anons)):
                for chunk in chunks(sorted(values)):
                    for value, profile_id in await conn.execute(
                        sa.select(i.value, i.profile_id).where(
                            i.tenant_id == prop.tenant_id, i.kind == kind, i.value.in_(chunk)
                        )
                    ):
                        owner[(kind, value)] = profile_id
        updates: dict[tuple[str, str, int], list[tuple[int, Any]]] = defaultdict(list)
        for user_id, anonymous_id, at_us, text in rows:
            profile_id = owner.get(("user_id", str(user_id))) or owner.get(
                ("anonymous_id", str(anonymous_id))
            )
            if profile_id is None:
                continue
            properties = orjson.loads(text) if text else {}
            if not isinstance(properties, dict) or not prop.takes(properties):
                continue
            value = properties.get(prop.property_name) if prop.property_name else None
            updates[(prop.id, profile_id, prop.day_of(int(at_us)))].append(
                (int(at_us), _json_value(value))
            )
        async with self._db.engine.begin() as conn:
            await _fold_in(conn, prop.tenant_id, updates)


async def _fold_in(
    conn: AsyncConnection,
    tenant_id: str,
    updates: dict[tuple[str, str, int], list[tuple[int, Any]]],
) -> None:
    """Add these events to their buckets (read, fold, write)."""
    b = audience_computed_buckets.c
    profile_ids = sorted({pid for _, pid, _ in updates})
    prop_ids = sorted({prop for prop, _, _ in updates})
    current: dict[tuple[str, str, int], dict[str, Any]] = {}
    for chunk in chunks(profile_ids):
        for row in await conn.execute(
            sa.select(b.property_id, b.profile_id, b.day, b.state).where(
                b.profile_id.in_(chunk), b.property_id.in_(prop_ids)
            )
        ):
            current[(row.property_id, row.profile_id, row.day)] = dict(row.state)
    new_rows, changed = [], []
    for key, events in updates.items():
        state = current.get(key, {})
        for at_us, value in events:
            state = fold(state, at_us, value)
        prop_id, profile_id, day = key
        if key in current:
            changed.append(
                {"b_prop": prop_id, "b_profile": profile_id, "b_day": day, "state": state}
            )
        else:
            new_rows.append(
                {
                    "property_id": prop_id,
                    "profile_id": profile_id,
                    "day": day,
                    "tenant_id": tenant_id,
                    "state": state,
                }
            )
    if new_rows:
        await conn.execute(audience_computed_buckets.insert(), new_rows)
    if changed:
        await conn.execute(
            audience_computed_buckets.update().where(
                b.property_id == sa.bindparam("b_prop"),
                b.profile_id == sa.bindparam("b_profile"),
                b.day == sa.bindparam("b_day"),
            ),
            changed,
        )


async def _move(conn: AsyncConnection, tenant_id: str, source: str, target: str) -> None:
    """A merged profile's buckets become its survivor's."""
    b = audience_computed_buckets.c
    rows = (
        await conn.execute(
            sa.select(b.property_id, b.profile_id, b.day, b.state).where(
                b.profile_id.in_([source, target])
            )
        )
    ).all()
    theirs = {(r.property_id, r.day): dict(r.state) for r in rows if r.profile_id == source}
    if not theirs:
        return
    ours = {(r.property_id, r.day): dict(r.state) for r in rows if r.profile_id == target}
    await conn.execute(audience_computed_buckets.delete().where(b.profile_id == source))
    for (prop_id, day), state in theirs.items():
        if (prop_id, day) in ours:
            await conn.execute(
                audience_computed_buckets.update()
                .where(b.property_id == prop_id, b.profile_id == target, b.day == day)
                .values(state=combine(ours[(prop_id, day)], state))
            )
        else:
            await conn.execute(
                audience_computed_buckets.insert().values(
                    property_id=prop_id,
                    profile_id=target,
                    day=day,
                    tenant_id=tenant_id,
                    state=state,
                )
            )


def _json_value(value: Any) -> Any:
    """What a bucket keeps of a property's value: JSON scalars; anything else
    as its JSON text."""
    if value is None or isinstance(value, str | int | float | bool):
        return value
    return orjson.dumps(value).decode()


def _filter(data: Any, field: str) -> conditions.Trait:
    """A property filter; InvalidArgument naming its bad fields."""
    bad: list[FieldViolation] = []
    read = conditions.read_filter(data, field, bad)
    collect(bad)
    assert read is not None
    return read


def _from_row(row: Any) -> ComputedProperty:
    return ComputedProperty(
        row.id,
        row.tenant_id,
        row.display_name,
        row.key,
        row.event,
        row.aggregate,
        row.property,
        row.within_days,
        row.create_time,
        tuple(_filter(f, "filters") for f in (row.filters or [])),
    )
