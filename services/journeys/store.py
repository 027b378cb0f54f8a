"""Journeys, their versions and instances in the management database."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.exc import IntegrityError

from services.common.clock import now_us
from services.common.errors import InvalidArgument, NotFound
from services.common.pagination import PageTokens, scope
from services.db import Database
from services.journeys.model import Definition, Instance, Journey
from services.journeys.tables import (
    journey_instances,
    journey_node_stats,
    journey_versions,
    journeys,
)
from services.journeys.workflow import Record

DEFAULT_PAGE_SIZE = 100
MAX_PAGE_SIZE = 1_000
#: A way's history keeps its last this many steps.
MAX_HISTORY = 200
#: Published versions kept in memory (they never change).
MAX_CACHED_VERSIONS = 1_024
#: A node's analytics counters (journey_node_stats).
COUNTERS = ("entered", "converted", "exited", "errors")
FINAL = ("completed", "exited", "failed")


def _journey(row: Any) -> Journey:
    return Journey(
        row.id,
        row.tenant_id,
        row.display_name,
        row.state,
        row.version,
        Definition.from_json(row.definition),
        row.create_time,
        row.update_time,
        row.running,
    )


class AtCap(Exception):
    """A journey has as many ways under way as its cap allows."""


def _instance(row: Any) -> Instance:
    return Instance(
        row.id,
        row.tenant_id,
        row.journey_id,
        row.version,
        row.profile_id,
        row.state,
        row.current_node,
        tuple(row.history or ()),
        row.exit_reason,
        row.start_time,
        row.update_time,
    )


def _page_size(page_size: int) -> int:
    if not 0 <= page_size <= MAX_PAGE_SIZE:
        raise InvalidArgument.field("page_size", f"must be 0-{MAX_PAGE_SIZE}")
    return page_size or DEFAULT_PAGE_SIZE


class Store:
    def __init__(
        self, db: Database, page_tokens: PageTokens, clock: Callable[[], int] = now_us
    ) -> None:
        self._db = db
        self._pages = page_tokens
        self._clock = clock
        self._versions: dict[tuple[str, int], Definition] = {}

    # -- journeys -------------------------------------------------------------

    async def create(self, journey: Journey) -> None:
        async with self._db.engine.begin() as conn:
            await conn.execute(
                journeys.insert().values(
                    id=journey.id,
                    tenant_id=journey.tenant_id,
                    display_name=journey.display_name,
                    state=journey.state,
                    version=journey.version,
                    definition=journey.definition.to_json(),
                    create_time=journey.create_time,
                    update_time=journey.update_time,
                )
            )

    async def get(self, tenant_id: str, journey_id: str) -> Journey:
        j = journeys.c
        async with self._db.engine.connect() as conn:
            row = (
                await conn.execute(
                    sa.select(journeys).where(j.tenant_id == tenant_id, j.id == journey_id)
                )
            ).first()
        if row is None:
            name = f"tenants/{tenant_id}/journeys/{journey_id}"
            raise NotFound(f"{name} not found", metadata={"resource": name})
        return _journey(row)

    async def journey_state(self, tenant_id: str, journey_id: str) -> str:
        """Its state ("archived" once gone): every step of every way asks."""
        j = journeys.c
        async with self._db.engine.connect() as conn:
            state = (
                await conn.execute(
                    sa.select(j.state).where(j.id == journey_id, j.tenant_id == tenant_id)
                )
            ).scalar()
        return str(state) if state is not None else "archived"

    async def active(self, tenant_id: str) -> list[Journey]:
        """The tenant's ACTIVE journeys."""
        j = journeys.c
        async with self._db.engine.connect() as conn:
            rows = (
                await conn.execute(
                    sa.select(journeys).where(j.tenant_id == tenant_id, j.state == "active")
                )
            ).all()
        return [_journey(r) for r in rows]

    async def active_versions(self) -> list[tuple[Journey, Definition, int]]:
        """Every ACTIVE journey (all tenants) with its published version and
        when that was published (the schedules' round)."""
        j, v = journeys.c, journey_versions.c
        async with self._db.engine.connect() as conn:
            rows = (
                await conn.execute(
                    sa.select(journeys, v.publish_time)
                    .join(
                        journey_versions,
                        sa.and_(v.journey_id == j.id, v.version == j.version),
                    )
                    .where(j.state == "active")
                )
            ).all()
        found = []
        for row in rows:
            journey = _journey(row)
            found.append(
                (journey, await self.version(journey.id, journey.version), int(row.publish_time))
            )
        return found

    async def list_journeys(
        self, tenant_id: str, page_size: int, page_token: str
    ) -> tuple[list[Journey], str]:
        size = _page_size(page_size)
        request = scope("journeys.ListJourneys", tenant_id)
        cursor = self._pages.decode(request, page_token, "t", "id")
        j = journeys.c
        query = (
            sa.select(journeys)
            .where(j.tenant_id == tenant_id)
            .order_by(j.create_time.desc(), j.id.desc())
            .limit(size + 1)
        )
        if cursor is not None:
            query = query.where(
                sa.or_(
                    j.create_time < cursor["t"],
                    sa.and_(j.create_time == cursor["t"], j.id < cursor["id"]),
                )
            )
        async with self._db.engine.connect() as conn:
            rows = (await conn.execute(query)).all()
        found = [_journey(r) for r in rows[:size]]
        token = ""
        if len(rows) > size:
            token = self._pages.encode(request, {"t": found[-1].create_time, "id": found[-1].id})
        return found, token

    async def update(
        self, journey: Journey, *, display_name: str, definition: Definition
    ) -> Journey:
        now = self._clock()
        j = journeys.c
        async with self._db.engine.begin() as conn:
            await conn.execute(
                journeys.update()
                .where(j.id == journey.id)
                .values(display_name=display_name, definition=definition.to_json(), update_time=now)
            )
        return await self.get(journey.tenant_id, journey.id)

    async def set_state(self, journey: Journey, state: str, *, only_from: tuple[str, ...]) -> bool:
        """Move a journey to `state` if it is in one of `only_from`."""
        j = journeys.c
        async with self._db.engine.begin() as conn:
            moved = await conn.execute(
                journeys.update()
                .where(j.id == journey.id, j.state.in_(only_from))
                .values(state=state, update_time=self._clock())
            )
        return bool(moved.rowcount)

    async def publish(self, journey: Journey) -> Journey:
        """The definition as the next version; the journey ACTIVE."""
        now = self._clock()
        j = journeys.c
        async with self._db.engine.begin() as conn:
            row = (
                await conn.execute(sa.select(journeys.c.version).where(j.id == journey.id))
            ).first()
            version = (row.version if row is not None else 0) + 1
            await conn.execute(
                journey_versions.insert().values(
                    journey_id=journey.id,
                    version=version,
                    tenant_id=journey.tenant_id,
                    definition=journey.definition.to_json(),
                    publish_time=now,
                )
            )
            await conn.execute(
                journeys.update()
                .where(j.id == journey.id)
                .values(state="active", version=version, update_time=now)
            )
        return await self.get(journey.tenant_id, journey.id)

    async def version(self, journey_id: str, version: int) -> Definition:
        """A published version (never changed after: kept in memory)."""
        cached = self._versions.get((journey_id, version))
        if cached is not None:
            return cached
        v = journey_versions.c
        async with self._db.engine.connect() as conn:
            row = (
                await conn.execute(
                    sa.select(v.definition).where(v.journey_id == journey_id, v.version == version)
                )
            ).first()
        if row is None:
            raise NotFound(f"journey {journey_id} has no version {version}")
        found = Definition.from_json(row.definition)
        if len(self._versions) >= MAX_CACHED_VERSIONS:
            self._versions.pop(next(iter(self._versions)))
        self._versions[(journey_id, version)] = found
        return found

    # -- instances ------------------------------------------------------------

    async def enter(
        self, instance: Instance, entry_key: str, cap: int = 0
    ) -> tuple[Instance, bool]:
        """Store a new instance unless its entry key was used; (the instance
        of the key, whether it is new). Counted among the journey's ways
        under way, in the same transaction; AtCap when `cap` (0: none) of
        them are."""
        i = journey_instances.c
        j = journeys.c
        try:
            async with self._db.engine.begin() as conn:
                count = journeys.update().where(j.id == instance.journey_id)
                if cap:
                    count = count.where(j.running < cap)
                counted = await conn.execute(count.values(running=j.running + 1))
                if not counted.rowcount:
                    raise AtCap(instance.journey_id)
                await conn.execute(
                    journey_instances.insert().values(
                        id=instance.id,
                        tenant_id=instance.tenant_id,
                        journey_id=instance.journey_id,
                        version=instance.version,
                        profile_id=instance.profile_id,
                        entry_key=entry_key,
                        state=instance.state,
                        current_node=instance.current_node,
                        history=[],
                        exit_reason="",
                        start_time=instance.start_time,
                        update_time=instance.update_time,
                    )
                )
            return instance, True
        except IntegrityError:
            async with self._db.engine.connect() as conn:
                row = (
                    await conn.execute(
                        sa.select(journey_instances).where(
                            i.journey_id == instance.journey_id, i.entry_key == entry_key
                        )
                    )
                ).first()
            if row is None:
                raise
            return _instance(row), False

    async def completed(
        self, tenant_id: str, profile_id: str, journey_ids: Sequence[str]
    ) -> set[str]:
        """Of these journeys, those the person has COMPLETED a way through."""
        if not journey_ids:
            return set()
        i = journey_instances.c
        async with self._db.engine.connect() as conn:
            rows = await conn.execute(
                sa.select(i.journey_id)
                .where(
                    i.tenant_id == tenant_id,
                    i.profile_id == profile_id,
                    i.journey_id.in_(list(journey_ids)),
                    i.state == "completed",
                )
                .distinct()
            )
            return {row.journey_id for row in rows}

    async def by_entry_key(self, journey_id: str, entry_key: str) -> Instance | None:
        i = journey_instances.c
        async with self._db.engine.connect() as conn:
            row = (
                await conn.execute(
                    sa.select(journey_instances).where(
                        i.journey_id == journey_id, i.entry_key == entry_key
                    )
                )
            ).first()
        return _instance(row) if row is not None else None

    async def last_entry(self, journey_id: str, profile_id: str) -> int | None:
        """When the person last entered the journey (None: never)."""
        i = journey_instances.c
        async with self._db.engine.connect() as conn:
            found = await conn.scalar(
                sa.select(sa.func.max(i.start_time)).where(
                    i.journey_id == journey_id, i.profile_id == profile_id
                )
            )
        return int(found) if found is not None else None

    async def instance(self, tenant_id: str, journey_id: str, instance_id: str) -> Instance:
        i = journey_instances.c
        async with self._db.engine.connect() as conn:
            row = (
                await conn.execute(
                    sa.select(journey_instances).where(
                        i.tenant_id == tenant_id, i.journey_id == journey_id, i.id == instance_id
                    )
                )
            ).first()
        if row is None:
            name = f"tenants/{tenant_id}/journeys/{journey_id}/instances/{instance_id}"
            raise NotFound(f"{name} not found", metadata={"resource": name})
        return _instance(row)

    async def instances(
        self,
        tenant_id: str,
        journey_id: str,
        page_size: int,
        page_token: str,
        *,
        state: str = "",
        profile_id: str = "",
    ) -> tuple[list[Instance], str]:
        size = _page_size(page_size)
        request = scope("journeys.ListJourneyInstances", tenant_id, journey_id, state, profile_id)
        if not journey_id and not profile_id:
            raise ValueError("a journey or a person")
        cursor = self._pages.decode(request, page_token, "t", "id")
        i = journey_instances.c
        query = (
            sa.select(journey_instances)
            .where(i.tenant_id == tenant_id)
            .order_by(i.start_time.desc(), i.id.desc())
            .limit(size + 1)
        )
        if journey_id:
            query = query.where(i.journey_id == journey_id)
        if state:
            query = query.where(i.state == state)
        if profile_id:
            query = query.where(i.profile_id == profile_id)
        if cursor is not None:
            query = query.where(
                sa.or_(
                    i.start_time < cursor["t"],
                    sa.and_(i.start_time == cursor["t"], i.id < cursor["id"]),
                )
            )
        async with self._db.engine.connect() as conn:
            rows = (await conn.execute(query)).all()
        found = [_instance(r) for r in rows[:size]]
        token = ""
        if len(rows) > size:
            token = self._pages.encode(request, {"t": found[-1].start_time, "id": found[-1].id})
        return found, token

    async def ways_at(
        self, journey_id: str, below_version: int, nodes: Sequence[str], after_id: str, limit: int
    ) -> list[str]:
        """Ids of the journey's ways under way on a version below this one,
        at one of these nodes, in id order after `after_id` (a page)."""
        i = journey_instances.c
        query = (
            sa.select(i.id)
            .where(
                i.journey_id == journey_id,
                i.version < below_version,
                i.state.not_in(FINAL),
                i.current_node.in_(list(nodes)),
                i.id > after_id,
            )
            .order_by(i.id)
            .limit(limit)
        )
        async with self._db.engine.connect() as conn:
            return [row.id for row in await conn.execute(query)]

    async def waiting(self, tenant_id: str, profile_ids: list[str]) -> dict[str, list[Any]]:
        """The WAITING instances of these people, by person: rows of id,
        journey_id, version and current_node."""
        i = journey_instances.c
        found: dict[str, list[Any]] = {}
        async with self._db.engine.connect() as conn:
            for first in range(0, len(profile_ids), 500):
                rows = await conn.execute(
                    sa.select(i.id, i.profile_id, i.journey_id, i.version, i.current_node).where(
                        i.tenant_id == tenant_id,
                        i.profile_id.in_(profile_ids[first : first + 500]),
                        i.state == "waiting",
                    )
                )
                for row in rows:
                    found.setdefault(row.profile_id, []).append(row)
        return found

    async def unfinished(self, journey_id: str = "") -> bool:
        """Whether any instance (of a journey, or of all) is still under way."""
        i = journey_instances.c
        query = sa.select(i.id).where(i.state.not_in(FINAL)).limit(1)
        if journey_id:
            query = query.where(i.journey_id == journey_id)
        async with self._db.engine.connect() as conn:
            found = await conn.scalar(query)
        return found is not None

    async def record(self, steps: Sequence[Record]) -> None:
        """Steps taken (the workflow's journey_record activity), oldest
        first, all of one instance: its state and node are the last one's,
        the steps go at the end of its history. Steps recorded before (a
        retried activity) are kept once."""
        if not steps:
            return
        i = journey_instances.c
        last = steps[-1]
        entries = [{"node": s.node_id, "time": s.at_us, "outcome": s.outcome} for s in steps]
        async with self._db.engine.begin() as conn:
            row = (
                await conn.execute(
                    sa.select(i.history, i.state, i.journey_id).where(i.id == last.instance_id)
                )
            ).first()
            if row is None:
                return  # erased meanwhile
            history = list(row.history or [])
            if history[-len(entries) :] == entries:
                return
            if last.state in FINAL and row.state not in FINAL:  # no longer under way
                await conn.execute(
                    journeys.update()
                    .where(journeys.c.id == row.journey_id)
                    .values(running=journeys.c.running - 1)
                )
            history = [*history, *entries][-MAX_HISTORY:]
            await conn.execute(
                journey_instances.update()
                .where(i.id == last.instance_id)
                .values(
                    state=last.state,
                    version=last.version or i.version,
                    current_node=last.node_id or row_node(history),
                    history=history,
                    exit_reason=last.exit_reason[:500],
                    update_time=last.at_us,
                )
            )
            await self._count(conn, steps)

    async def _count(self, conn: Any, steps: Sequence[Record]) -> None:
        """The steps' node counters, in the transaction that records them."""
        added: dict[tuple[str, int, str], dict[str, int]] = {}
        for step in steps:
            if not step.counts or not step.counted or not step.journey_id:
                continue
            row = added.setdefault(
                (step.journey_id, step.version, step.counted), dict.fromkeys(COUNTERS, 0)
            )
            for counter in step.counts:
                if counter in row:
                    row[counter] += 1
        if not added:
            return
        insert = (sqlite_insert if self._db.is_sqlite else postgresql_insert)(journey_node_stats)
        c = journey_node_stats.c
        for (journey_id, version, node_id), row in sorted(added.items()):
            statement = insert.values(
                journey_id=journey_id, version=version, node_id=node_id, **row
            ).on_conflict_do_update(
                index_elements=[c.journey_id, c.version, c.node_id],
                set_={name: getattr(c, name) + insert.excluded[name] for name in COUNTERS},
            )
            await conn.execute(statement)

    async def node_stats(self, journey_id: str, version: int) -> dict[str, dict[str, int]]:
        """Per node: its counters, of one version (0: all added up)."""
        c = journey_node_stats.c
        query = sa.select(
            c.node_id, *(sa.func.sum(getattr(c, name)).label(name) for name in COUNTERS)
        ).where(c.journey_id == journey_id)
        if version:
            query = query.where(c.version == version)
        async with self._db.engine.connect() as conn:
            rows = (await conn.execute(query.group_by(c.node_id))).all()
        return {r.node_id: {name: int(getattr(r, name) or 0) for name in COUNTERS} for r in rows}


def row_node(history: list[Any]) -> str:
    """The last node named in a history (the end of the way has none)."""
    for entry in reversed(history):
        if entry.get("node"):
            return str(entry["node"])
    return ""
