"""Writing and reading the audit log. Every mutating call is recorded by the
platform's audit interceptor; the log is also published on the bus
(`audit.events.<tenant>`) for downstream consumers."""

from __future__ import annotations

import logging
import re
import uuid
from dataclasses import asdict, dataclass

import orjson
import sqlalchemy as sa

from services.audit.tables import audit_events
from services.backends import MessageBus
from services.backends.bus import BestEffortPublisher
from services.common import names, pagination
from services.common.call import Principal
from services.common.clock import Clock, now_us
from services.common.errors import InvalidArgument
from services.common.pagination import PageTokens
from services.db import Database

log = logging.getLogger(__name__)

AUDIT_SUBJECT = "audit.events"


@dataclass(frozen=True, slots=True)
class AuditRecord:
    id: str
    tenant_id: str
    actor: str
    action: str
    resource: str
    event_time: int
    outcome: str
    request_id: str
    detail: str

    @property
    def name(self) -> str:
        return f"tenants/{self.tenant_id}/auditEvents/{self.id}"


@dataclass(frozen=True, slots=True)
class AuditFilter:
    actor: str = ""
    action: str = ""
    resource: str = ""
    outcome: str = ""
    start_time: int | None = None
    end_time: int | None = None


class AuditLog:
    def __init__(
        self,
        db: Database,
        bus: MessageBus | None,
        clock: Clock = now_us,
        *,
        page_tokens: PageTokens,
        publisher: BestEffortPublisher | None = None,
    ) -> None:
        self._db = db
        self._publisher = publisher or (BestEffortPublisher(bus) if bus is not None else None)
        self._clock = clock
        self._pages = page_tokens

    async def record(
        self,
        *,
        tenant_id: str,
        actor: str,
        action: str,
        resource: str,
        outcome: str,
        request_id: str,
        detail: str = "",
    ) -> AuditRecord:
        now = self._clock()
        # Time-ordered id: newest-first listing and paging stay stable.
        record = AuditRecord(
            id=f"{now:016x}{uuid.uuid4().hex[:8]}",
            tenant_id=tenant_id,
            actor=actor,
            action=action,
            resource=resource[:500],
            event_time=now,
            outcome=outcome,
            request_id=request_id,
            detail=detail[:2000],
        )
        async with self._db.engine.begin() as conn:
            await conn.execute(audit_events.insert().values(**asdict(record)))
        if self._publisher is not None:
            # The database row is the record; the bus copy is best effort and
            # never holds the audited call up for more than ~0.25 s.
            await self._publisher.publish(
                f"{AUDIT_SUBJECT}.{tenant_id}",
                orjson.dumps(asdict(record)),
                {"x-request-id": request_id},
            )
        return record

    async def redact(self, tenant_id: str, needles: list[str], replacement: str) -> int:
        """Replace every appearance of these strings (a person's ids, on a
        data-subject erasure) in the tenant's records' resource and detail;
        the records themselves stay (who did what, when). Returns the number
        of records changed. The bus copies are not reached: they expire with
        the stream's max age."""
        needles = [n for n in dict.fromkeys(needles) if len(n) >= 3]
        if not needles:
            return 0
        # Whole ids only ("eve" is not erased from "events"), longest first.
        alternatives = "|".join(re.escape(n) for n in sorted(needles, key=len, reverse=True))
        pattern = re.compile(rf"(?<![A-Za-z0-9])(?:{alternatives})(?![A-Za-z0-9])")
        c = audit_events.c
        changed = 0
        async with self._db.engine.begin() as conn:
            for start in range(0, len(needles), 50):
                chunk = needles[start : start + 50]
                found = (
                    await conn.execute(
                        sa.select(c.id, c.resource, c.detail).where(
                            c.tenant_id == tenant_id,
                            sa.or_(
                                *[
                                    column.contains(needle, autoescape=True)
                                    for needle in chunk
                                    for column in (c.resource, c.detail)
                                ]
                            ),
                        )
                    )
                ).all()
                for row in found:
                    resource = pattern.sub(replacement, row.resource)
                    detail = pattern.sub(replacement, row.detail)
                    if (resource, detail) == (row.resource, row.detail):
                        continue  # only inside longer words: not theirs
                    await conn.execute(
                        audit_events.update()
                        .where(c.id == row.id)
                        .values(resource=resource, detail=detail)
                    )
                    changed += 1
        return changed

    async def list(
        self,
        caller: Principal,
        parent: str,
        page_size: int,
        page_token: str,
        flt: AuditFilter,
    ) -> tuple[list[AuditRecord], str]:
        names.require_same_tenant(parent, "parent", caller.tenant_id)
        (tenant_id,) = names.parse_name(parent, "parent", "tenants")
        size = names.page_size(page_size)
        scope = pagination.scope("ListAuditEvents", parent, flt)
        cursor = self._pages.decode(scope, page_token, "id")
        if flt.start_time and flt.end_time and flt.end_time <= flt.start_time:
            raise InvalidArgument.field("end_time", "must be after start_time")
        c = audit_events.c
        query = (
            audit_events.select()
            .where(c.tenant_id == tenant_id)
            .order_by(c.id.desc())
            .limit(size + 1)
        )
        if flt.actor:
            query = query.where(c.actor == flt.actor)
        if flt.action:
            action = flt.action.lstrip("/")
            query = query.where(
                c.action == action if "/" in action else c.action.like(f"%/{action}")
            )
        if flt.resource:
            query = query.where(
                sa.or_(c.resource == flt.resource, c.resource.like(f"{flt.resource}/%"))
            )
        if flt.outcome:
            query = query.where(c.outcome == flt.outcome.upper())
        if flt.start_time:
            query = query.where(c.event_time >= flt.start_time)
        if flt.end_time:
            query = query.where(c.event_time < flt.end_time)
        if cursor:
            query = query.where(c.id < str(cursor["id"]))
        async with self._db.engine.connect() as conn:
            rows = [AuditRecord(**r._mapping) for r in (await conn.execute(query)).all()]
        token = self._pages.encode(scope, {"id": rows[size - 1].id}) if len(rows) > size else ""
        return rows[:size], token
