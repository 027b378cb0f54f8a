"""Broadcasts: a message, or a journey entry, for every member of a segment,
paced, pausable, resumable, once per member, for segments of millions.

Not one workflow per member (the embedded Temporal server starts ~100
workflows/s; a million members would take hours): a broadcast is planned a
page of members at a time and the pages are handed to every serving
process through the bus.

- Planning: one process at a time plans a RUNNING broadcast (it holds a
  lease in its row, renewed with each page; a process that dies, kill -9
  included, loses it within LEASE_SECONDS and another, or the same one
  started again, takes over). It reads the next page of members after its
  cursor (members go in profile order), publishes the page on
  `campaign-express.broadcasts.<tenant>`, then moves the cursor: a crash
  between the two publishes that page again, which changes nothing (below).
  Pages go out at the broadcast's pace (`per_minute`).
- Handling: every serving process takes pages from the bus (a queue group:
  each page to one of them; JetStream redelivers a page whose handler
  failed or died). A page's members get the template's message (messaging's
  outbox, keyed `broadcast:<id>:<profile>`: stored once, however often the
  page comes) or enter the journey (keyed by the broadcast: once). The page
  is then recorded (once per page number), and the broadcast COMPLETES when
  every planned member is handled.
- Pause stops the planning where it is (a page already handed out
  finishes); resume goes on from the cursor; cancel stops for good."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import orjson
import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.exc import IntegrityError

from services.backends.interfaces import BusMessage, MessageBus, Subscription
from services.common import names
from services.common.call import Principal
from services.common.clock import now_us
from services.common.errors import (
    FailedPrecondition,
    FieldViolation,
    InvalidArgument,
    NotFound,
    collect,
)
from services.common.ids import random_hex_id
from services.common.pagination import PageTokens, scope
from services.common.validation import check_text
from services.db import Database
from services.journeys.tables import journey_broadcast_pages, journey_broadcasts

log = logging.getLogger(__name__)

SUBJECT = "campaign-express.broadcasts"
QUEUE = "broadcast-pages"
#: Members per page at most (a page is one bus message and one insert).
PAGE_MAX = 500
DEFAULT_PER_MINUTE = 60_000
MAX_PER_MINUTE = 1_000_000
#: A planner that has not renewed its lease for this long is taken over.
LEASE_SECONDS = 15.0
#: How often each process looks for broadcasts nobody plans.
CLAIM_SECONDS = 1.0
#: A page's journey entries made at once.
ENTRY_CONCURRENCY = 8
MAX_PAGE_SIZE, DEFAULT_PAGE_SIZE = 1_000, 100
#: Where each state may go.
PAUSABLE, RESUMABLE, CANCELLABLE = ("running",), ("paused",), ("running", "paused")


@dataclass(frozen=True, slots=True)
class Broadcast:
    id: str
    tenant_id: str
    display_name: str
    segment_id: str
    kind: str  # message, journey
    target_id: str
    data: Mapping[str, Any]
    per_minute: int
    state: str  # running, paused, completed, cancelled
    members: int
    planned: int
    done: int
    skipped: int
    create_time: int
    update_time: int
    end_time: int

    @property
    def name(self) -> str:
        return f"tenants/{self.tenant_id}/broadcasts/{self.id}"

    @property
    def segment(self) -> str:
        return f"tenants/{self.tenant_id}/segments/{self.segment_id}"

    @property
    def target(self) -> str:
        kind = "templates" if self.kind == "message" else "journeys"
        return f"tenants/{self.tenant_id}/{kind}/{self.target_id}"


class Members(Protocol):
    """The audience directory, as broadcasts use it."""

    async def segment_size(self, tenant_id: str, segment_id: str) -> int | None: ...

    async def member_ids(
        self, tenant_id: str, segment_id: str, after: str = "", limit: int = 1_000
    ) -> list[str] | None: ...


class Outbox(Protocol):
    """Messaging's outbox, as broadcasts use it."""

    async def template_exists(self, tenant_id: str, template_id: str) -> bool: ...

    async def send_many(
        self,
        tenant_id: str,
        template: str,
        profile_ids: Sequence[str],
        key: str,
        data: Mapping[str, Any],
    ) -> int: ...


class Entries(Protocol):
    """The journeys domain, as broadcasts use it."""

    async def journey_state(self, tenant_id: str, journey_id: str) -> str: ...

    async def enter_member(
        self,
        tenant_id: str,
        journey_id: str,
        profile_id: str,
        data: Mapping[str, Any],
        key: str,
    ) -> bool: ...


def page_plan(per_minute: int) -> tuple[int, float]:
    """Members per page and seconds between pages for a pace."""
    per_second = per_minute / 60
    size = max(1, min(PAGE_MAX, int(per_second)))
    return size, size / per_second


class Broadcasts:
    def __init__(
        self,
        db: Database,
        page_tokens: PageTokens,
        members: Members,
        outbox: Outbox,
        entries: Entries,
        bus: MessageBus,
        *,
        owner: str,
        clock: Callable[[], int] = now_us,
    ) -> None:
        self._db = db
        self._page_tokens = page_tokens
        self._members = members
        self._outbox = outbox
        self._entries = entries
        self._bus = bus
        self._owner = owner
        self._clock = clock
        self._planning: dict[str, asyncio.Task[None]] = {}
        self._claims: asyncio.Task[None] | None = None
        self._subscription: Subscription | None = None
        self._wake = asyncio.Event()

    # -- the API --------------------------------------------------------------

    async def create(
        self,
        caller: Principal,
        parent: str,
        *,
        display_name: str,
        segment: str,
        template: str,
        journey: str,
        data: Mapping[str, Any],
        per_minute: int,
        request_id: str,
    ) -> Broadcast:
        tenant_id = names.own_tenant(parent, caller.tenant_id)
        bad: list[FieldViolation] = []
        check_text(bad, "broadcast.display_name", display_name, required=True, max_len=200)
        if len(request_id) > 200:
            bad.append(FieldViolation("request_id", "at most 200 characters"))
        if not 0 <= per_minute <= MAX_PER_MINUTE:
            bad.append(FieldViolation("broadcast.per_minute", f"1 to {MAX_PER_MINUTE:,}"))
        segment_id = _id_in(bad, "broadcast.segment", segment, "segments", tenant_id)
        members = None
        if segment_id:
            members = await self._members.segment_size(tenant_id, segment_id)
            if members is None:
                bad.append(FieldViolation("broadcast.segment", "no such segment"))
        if bool(template) == bool(journey):
            bad.append(FieldViolation("broadcast.template", "one of template or journey"))
        kind, target_id = "message", ""
        if template:
            target_id = _id_in(bad, "broadcast.template", template, "templates", tenant_id)
            if target_id and not await self._outbox.template_exists(tenant_id, target_id):
                bad.append(FieldViolation("broadcast.template", "no such template"))
        elif journey:
            kind = "journey"
            target_id = _id_in(bad, "broadcast.journey", journey, "journeys", tenant_id)
            if target_id:
                state = await self._entries.journey_state(tenant_id, target_id)
                if state == "archived":
                    bad.append(FieldViolation("broadcast.journey", "no such journey"))
                elif state != "active":
                    why = f"the journey is {state.upper()}, not ACTIVE"
                    bad.append(FieldViolation("broadcast.journey", why))
        collect(bad)
        return await self.start_broadcast(
            tenant_id, display_name, segment_id, kind, target_id, data, per_minute, request_id,
            members or 0,
        )  # fmt: skip

    async def start_broadcast(
        self,
        tenant_id: str,
        display_name: str,
        segment_id: str,
        kind: str,
        target_id: str,
        data: Mapping[str, Any],
        per_minute: int,
        request_id: str,
        members: int,
    ) -> Broadcast:
        """A broadcast, RUNNING (checked by the caller); the one of the
        request id when there is one."""
        if request_id:
            found = await self._by_request(tenant_id, request_id)
            if found is not None:
                return found
        now = self._clock()
        made = Broadcast(random_hex_id(), tenant_id, display_name, segment_id, kind, target_id,
                         dict(data), per_minute or DEFAULT_PER_MINUTE, "running", members,
                         0, 0, 0, now, now, 0)  # fmt: skip
        try:
            async with self._db.engine.begin() as conn:
                await conn.execute(
                    journey_broadcasts.insert().values(
                        id=made.id, tenant_id=tenant_id, display_name=display_name,
                        segment_id=segment_id, kind=kind, target_id=target_id, data=dict(data),
                        per_minute=made.per_minute, state="running", request_id=request_id,
                        members=made.members, planned=0, pages=0, cursor="",
                        planned_all=False, owner="", lease_until=0, create_time=now,
                        update_time=now, end_time=0,
                    )
                )  # fmt: skip
        except IntegrityError:  # the same request id, at the same moment elsewhere
            found = await self._by_request(tenant_id, request_id)
            if found is None:
                raise
            return found
        self._wake.set()
        return made

    async def _by_request(self, tenant_id: str, request_id: str) -> Broadcast | None:
        b = journey_broadcasts.c
        async with self._db.engine.connect() as conn:
            found = await conn.scalar(
                sa.select(b.id).where(b.tenant_id == tenant_id, b.request_id == request_id)
            )
        return None if found is None else await self._load(tenant_id, str(found))

    async def get(self, caller: Principal, name: str) -> Broadcast:
        tenant_id, broadcast_id = names.parse_name(name, "name", "tenants", "broadcasts")
        names.require_same_tenant(name, "name", caller.tenant_id)
        return await self._load(tenant_id, broadcast_id)

    async def list_broadcasts(
        self, caller: Principal, parent: str, page_size: int, page_token: str
    ) -> tuple[list[Broadcast], str]:
        tenant_id = names.own_tenant(parent, caller.tenant_id)
        if not 0 <= page_size <= MAX_PAGE_SIZE:
            raise InvalidArgument.field("page_size", f"must be 0-{MAX_PAGE_SIZE}")
        size = page_size or DEFAULT_PAGE_SIZE
        request = scope("journeys.ListBroadcasts", tenant_id)
        cursor = self._page_tokens.decode(request, page_token, "t", "id")
        b = journey_broadcasts.c
        query = (
            sa.select(b.id)
            .where(b.tenant_id == tenant_id)
            .order_by(b.create_time.desc(), b.id.desc())
            .limit(size + 1)
        )
        if cursor is not None:
            query = query.where(
                sa.or_(
                    b.create_time < cursor["t"],
                    sa.and_(b.create_time == cursor["t"], b.id < cursor["id"]),
                )
            )
        async with self._db.engine.connect() as conn:
            ids = list(await conn.scalars(query))
        found = [await self._load(tenant_id, str(i)) for i in ids[:size]]
        token = ""
        if len(ids) > size:
            last = found[-1]
            token = self._page_tokens.encode(request, {"t": last.create_time, "id": last.id})
        return found, token

    async def pause(self, caller: Principal, name: str) -> Broadcast:
        return await self._move(caller, name, "paused", PAUSABLE)

    async def resume(self, caller: Principal, name: str) -> Broadcast:
        done = await self._move(caller, name, "running", RESUMABLE)
        self._wake.set()
        return done

    async def cancel(self, caller: Principal, name: str) -> Broadcast:
        return await self._move(caller, name, "cancelled", CANCELLABLE)

    async def _move(
        self, caller: Principal, name: str, state: str, only_from: Sequence[str]
    ) -> Broadcast:
        found = await self.get(caller, name)
        if found.state == state:
            return found  # a retried call
        b = journey_broadcasts.c
        now = self._clock()
        values: dict[str, Any] = {"state": state, "update_time": now}
        if state == "cancelled":
            values["end_time"] = now
        async with self._db.engine.begin() as conn:
            moved = await conn.execute(
                journey_broadcasts.update()
                .where(b.id == found.id, b.state.in_(only_from))
                .values(**values)
            )
        if moved.rowcount == 0:
            current = await self._load(found.tenant_id, found.id)
            raise FailedPrecondition(
                f"{name} is {current.state.upper()}; only "
                f"{' or '.join(s.upper() for s in only_from)} may become {state.upper()}"
            )
        return await self._load(found.tenant_id, found.id)

    async def _load(self, tenant_id: str, broadcast_id: str) -> Broadcast:
        b, p = journey_broadcasts.c, journey_broadcast_pages.c
        async with self._db.engine.connect() as conn:
            row = (
                await conn.execute(
                    sa.select(journey_broadcasts).where(
                        b.id == broadcast_id, b.tenant_id == tenant_id
                    )
                )
            ).first()
            if row is None:
                raise NotFound(f"tenants/{tenant_id}/broadcasts/{broadcast_id} does not exist")
            done, skipped = (
                await conn.execute(
                    sa.select(
                        sa.func.coalesce(sa.func.sum(p.members), 0),
                        sa.func.coalesce(sa.func.sum(p.skipped), 0),
                    ).where(p.broadcast_id == broadcast_id)
                )
            ).one()
        return Broadcast(row.id, row.tenant_id, row.display_name, row.segment_id, row.kind,
                         row.target_id, dict(row.data or {}), row.per_minute, row.state,
                         row.members, row.planned, int(done), int(skipped), row.create_time,
                         row.update_time, row.end_time)  # fmt: skip

    # -- planning and handling -------------------------------------------------

    async def start(self) -> None:
        self._subscription = await self._bus.subscribe(f"{SUBJECT}.*", self._handle, QUEUE)
        self._claims = asyncio.get_running_loop().create_task(
            self._claim_loop(), name="broadcast-claims"
        )

    async def stop(self) -> None:
        if self._subscription is not None:
            with contextlib.suppress(Exception):
                await self._subscription.unsubscribe()
            self._subscription = None
        tasks = [t for t in (self._claims, *self._planning.values()) if t is not None]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._claims = None
        self._planning.clear()

    async def _claim_loop(self) -> None:
        while True:
            try:
                for broadcast_id in await self._claim():
                    if broadcast_id not in self._planning:
                        self._planning[broadcast_id] = asyncio.get_running_loop().create_task(
                            self._plan(broadcast_id), name=f"broadcast-{broadcast_id}"
                        )
            except asyncio.CancelledError:
                raise
            except Exception:
                log.warning("broadcasts: looking for work failed; trying again", exc_info=True)
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(CLAIM_SECONDS):
                    await self._wake.wait()

    async def _claim(self) -> list[str]:
        """Take the lease of RUNNING broadcasts nobody plans (or this process
        did before it started again)."""
        b = journey_broadcasts.c
        now = self._clock()
        async with self._db.engine.begin() as conn:
            candidates = list(
                await conn.scalars(
                    sa.select(b.id).where(
                        b.state == "running",
                        b.planned_all.is_(False),
                        sa.or_(b.lease_until < now, b.owner == self._owner),
                    )
                )
            )
            taken = []
            for broadcast_id in candidates:
                if broadcast_id in self._planning:
                    continue
                claimed = await conn.execute(
                    journey_broadcasts.update()
                    .where(
                        b.id == broadcast_id,
                        sa.or_(b.lease_until < now, b.owner == self._owner),
                    )
                    .values(owner=self._owner, lease_until=now + int(LEASE_SECONDS * 1e6))
                )
                if claimed.rowcount:
                    taken.append(str(broadcast_id))
        return taken

    async def _plan(self, broadcast_id: str) -> None:
        """Hand out the broadcast's pages at its pace until every member is
        planned, it stops running, or another process took the lease."""
        try:
            next_at = time.monotonic()
            while True:
                row = await self._row(broadcast_id)
                if row is None or row.state != "running" or row.owner != self._owner:
                    return
                size, interval = page_plan(row.per_minute)
                await asyncio.sleep(max(0.0, next_at - time.monotonic()))
                next_at = max(next_at + interval, time.monotonic() - interval)
                page = await self._members.member_ids(
                    row.tenant_id, row.segment_id, row.cursor, size
                )
                page = page or []
                if page:
                    item = {"b": broadcast_id, "t": row.tenant_id, "p": row.pages, "ids": page}
                    await self._bus.publish(f"{SUBJECT}.{row.tenant_id}", orjson.dumps(item))
                if not await self._planned(row, page, last=len(page) < size, interval=interval):
                    return
                if len(page) < size:
                    await self._complete_if_done(broadcast_id)
                    return
        except asyncio.CancelledError:
            raise
        except Exception:
            log.warning("broadcasts: planning %s failed; another round takes it on",
                        broadcast_id, exc_info=True)  # fmt: skip
            await self._release(broadcast_id)
        finally:
            self._planning.pop(broadcast_id, None)

    async def _row(self, broadcast_id: str) -> Any:
        async with self._db.engine.connect() as conn:
            return (
                await conn.execute(
                    sa.select(journey_broadcasts).where(journey_broadcasts.c.id == broadcast_id)
                )
            ).first()

    async def _planned(self, row: Any, page: list[str], *, last: bool, interval: float) -> bool:
        """The page handed out: the cursor past it, the lease renewed.
        False when the lease was lost or the broadcast stopped meanwhile."""
        b = journey_broadcasts.c
        now = self._clock()
        lease = max(LEASE_SECONDS, 2 * interval)
        async with self._db.engine.begin() as conn:
            moved = await conn.execute(
                journey_broadcasts.update()
                .where(b.id == row.id, b.owner == self._owner, b.state == "running")
                .values(
                    cursor=page[-1] if page else row.cursor,
                    planned=b.planned + len(page),
                    pages=b.pages + (1 if page else 0),
                    planned_all=last,
                    lease_until=now + int(lease * 1e6),
                    update_time=now,
                )
            )
        return bool(moved.rowcount)

    async def _release(self, broadcast_id: str) -> None:
        b = journey_broadcasts.c
        with contextlib.suppress(Exception):
            async with self._db.engine.begin() as conn:
                await conn.execute(
                    journey_broadcasts.update()
                    .where(b.id == broadcast_id, b.owner == self._owner)
                    .values(lease_until=0)
                )

    async def _handle(self, message: BusMessage) -> None:
        """A page of members: each gets the message or the entry (keyed by
        the broadcast: once), then the page is recorded (once)."""
        item = orjson.loads(message.data)
        broadcast_id, tenant_id, number = str(item["b"]), str(item["t"]), int(item["p"])
        ids = [str(i) for i in item["ids"]]
        row = await self._row(broadcast_id)
        if row is None or row.state == "cancelled":
            return  # nothing more for it
        key = f"broadcast:{broadcast_id}"
        if row.kind == "message":
            try:
                stored = await self._outbox.send_many(
                    tenant_id, row.target_id, ids, key, dict(row.data or {})
                )
            except LookupError:
                log.warning("broadcasts: %s's template is gone; its members skipped", row.id)
                stored = 0
            skipped = len(ids) - stored
        else:
            gate = asyncio.Semaphore(ENTRY_CONCURRENCY)

            async def enter(profile_id: str) -> bool:
                async with gate:
                    try:
                        return await self._entries.enter_member(
                            tenant_id,
                            row.target_id,
                            profile_id,
                            dict(row.data or {}),
                            f"{key}:{profile_id}",
                        )
                    except (FailedPrecondition, NotFound):
                        return False  # the journey's rules keep them out

            made = await asyncio.gather(*(enter(p) for p in ids))
            skipped = sum(1 for m in made if not m)
        insert = (sqlite_insert if self._db.is_sqlite else postgresql_insert)(
            journey_broadcast_pages
        )
        async with self._db.engine.begin() as conn:
            await conn.execute(
                insert.values(
                    broadcast_id=broadcast_id, page=number, members=len(ids), skipped=skipped
                ).on_conflict_do_nothing(
                    index_elements=[
                        journey_broadcast_pages.c.broadcast_id,
                        journey_broadcast_pages.c.page,
                    ]
                )
            )
        await self._complete_if_done(broadcast_id)

    async def _complete_if_done(self, broadcast_id: str) -> None:
        b, p = journey_broadcasts.c, journey_broadcast_pages.c
        handled = (
            sa.select(sa.func.coalesce(sa.func.sum(p.members), 0))
            .where(p.broadcast_id == broadcast_id)
            .scalar_subquery()
        )
        now = self._clock()
        async with self._db.engine.begin() as conn:
            await conn.execute(
                journey_broadcasts.update()
                .where(
                    b.id == broadcast_id,
                    b.state.in_(("running", "paused")),
                    b.planned_all.is_(True),
                    b.planned <= handled,
                )
                .values(state="completed", end_time=now, update_time=now)
            )


def _id_in(
    bad: list[FieldViolation], field: str, name: str, collection: str, tenant_id: str
) -> str:
    """The id of `tenants/{tenant}/{collection}/{id}` of this tenant; "" (and
    a violation) when it is not one."""
    parts = name.split("/")
    if len(parts) != 4 or parts[0] != "tenants" or parts[2] != collection or not parts[3]:
        bad.append(FieldViolation(field, f"must be tenants/{{t}}/{collection}/{{id}}"))
        return ""
    if parts[1] != tenant_id:
        bad.append(FieldViolation(field, "belongs to another tenant"))
        return ""
    return parts[3]
