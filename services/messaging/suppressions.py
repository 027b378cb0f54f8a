"""Suppressions (FR-DEL-007..010): addresses no message goes to, on one
channel or every channel, for one of six reasons, until an expiry or for
good. Emails compare without case; phones are E.164. A hard bounce and a
one-click unsubscribe add entries by themselves."""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Callable
from dataclasses import dataclass

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from services.common import names
from services.common.call import Principal
from services.common.clock import now_us
from services.common.errors import FieldViolation, InvalidArgument, NotFound, collect
from services.common.ids import random_hex_id
from services.common.pagination import PageTokens, scope
from services.db import Database
from services.messaging.tables import messaging_suppressions
from services.messaging.templates import CHANNELS

REASONS = ("user_opt_out", "bounced", "complained", "regulatory", "admin_action", "blocklisted")
DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 1_000
E164 = re.compile(r"^\+[1-9][0-9]{6,14}$")
_EMAIL = re.compile(r"^[^@\s]{1,64}@[^@\s]{1,255}\.[^@\s]+$")


def normalized(address: str) -> str:
    """An address as suppressions compare it ("" if it is neither an email
    nor an E.164 phone)."""
    address = address.strip()
    if E164.match(address):
        return address
    if _EMAIL.match(address) and len(address) <= 320:
        return address.lower()
    return ""


@dataclass(frozen=True, slots=True)
class Suppression:
    id: str
    tenant_id: str
    address: str
    channel: str  # "" = every channel
    reason: str
    expire_time: int  # 0 = never
    note: str
    create_time: int

    @property
    def name(self) -> str:
        return f"tenants/{self.tenant_id}/suppressions/{self.id}"


class Suppressions:
    def __init__(
        self,
        db: Database,
        *,
        clock: Callable[[], int] = now_us,
        page_tokens: PageTokens | None = None,
    ) -> None:
        self._db = db
        self._clock = clock
        self._pages = page_tokens or PageTokens("messaging-suppressions")

    async def create(
        self,
        caller: Principal,
        parent: str,
        *,
        address: str,
        channel: str,
        reason: str,
        expire_time: int,
        note: str,
    ) -> Suppression:
        tenant_id = names.own_tenant(parent, caller.tenant_id)
        at = "suppression"
        bad: list[FieldViolation] = []
        if not normalized(address):
            bad.append(FieldViolation(f"{at}.address", "must be an email or an E.164 phone"))
        if channel and channel not in CHANNELS:
            bad.append(FieldViolation(f"{at}.channel", "not a message channel"))
        if reason not in REASONS:
            bad.append(FieldViolation(f"{at}.reason", "required: one of the six reasons"))
        if expire_time and expire_time <= self._clock():
            bad.append(FieldViolation(f"{at}.expire_time", "must be in the future (or unset)"))
        if len(note) > 500:
            bad.append(FieldViolation(f"{at}.note", "at most 500 characters"))
        collect(bad)
        return await self.add(tenant_id, address, channel, reason, expire_time, note)

    async def add(
        self,
        tenant_id: str,
        address: str,
        channel: str,
        reason: str,
        expire_time: int = 0,
        note: str = "",
    ) -> Suppression:
        """Suppress (again: the entry is replaced, keeping its id)."""
        entry = Suppression(
            random_hex_id(),
            tenant_id,
            normalized(address),
            channel,
            reason,
            expire_time,
            note,
            self._clock(),
        )
        s = messaging_suppressions.c
        insert = (sqlite_insert if self._db.is_sqlite else postgresql_insert)(
            messaging_suppressions
        )
        statement = insert.values(
            id=entry.id,
            tenant_id=tenant_id,
            address=entry.address,
            channel=channel,
            reason=reason,
            expire_time=expire_time,
            note=note,
            create_time=entry.create_time,
        ).on_conflict_do_update(
            index_elements=[s.tenant_id, s.channel, s.address],
            set_={
                "reason": reason,
                "expire_time": expire_time,
                "note": note,
                "create_time": entry.create_time,
            },
        )
        async with self._db.engine.begin() as conn:
            await conn.execute(statement)
            row = (
                await conn.execute(
                    sa.select(messaging_suppressions).where(
                        s.tenant_id == tenant_id, s.channel == channel, s.address == entry.address
                    )
                )
            ).one()
        return _from_row(row)

    async def import_csv(
        self, caller: Principal, parent: str, text: str, *, remove: bool, default_reason: str
    ) -> tuple[int, int, list[tuple[int, str]]]:
        """(applied, refused, the first 100 problems as (line, why))."""
        tenant_id = names.own_tenant(parent, caller.tenant_id)
        reason_default = default_reason or "admin_action"
        wanted: dict[tuple[str, str], str] = {}  # (channel, address) -> reason
        problems: list[tuple[int, str]] = []
        refused = 0
        for number, row in enumerate(csv.reader(io.StringIO(text)), start=1):
            if not row or not "".join(row).strip():
                continue
            cells = [c.strip() for c in row] + ["", ""]
            address, channel, reason = cells[0], cells[1].lower(), cells[2].lower()
            if number == 1 and address.lower() in ("address", "email", "phone"):
                continue  # a header
            why = ""
            if not normalized(address):
                why = f"{address[:60]!r} is neither an email nor an E.164 phone"
            elif channel and channel not in CHANNELS:
                why = f"unknown channel {channel!r}"
            elif reason and reason not in REASONS:
                why = f"unknown reason {reason!r}"
            if why:
                refused += 1
                if len(problems) < 100:
                    problems.append((number, why))
                continue
            wanted[(channel, normalized(address))] = reason or reason_default
        s = messaging_suppressions.c
        keys = list(wanted)
        if remove:
            by_channel: dict[str, list[str]] = {}
            for channel, address in keys:
                by_channel.setdefault(channel, []).append(address)
            async with self._db.engine.begin() as conn:
                for channel, addresses in by_channel.items():
                    for first in range(0, len(addresses), 500):
                        await conn.execute(
                            messaging_suppressions.delete().where(
                                s.tenant_id == tenant_id,
                                s.channel == channel,
                                s.address.in_(addresses[first : first + 500]),
                            )
                        )
            return len(keys), refused, problems
        now = self._clock()
        insert = (sqlite_insert if self._db.is_sqlite else postgresql_insert)(
            messaging_suppressions
        )
        statement = insert.on_conflict_do_update(
            index_elements=[s.tenant_id, s.channel, s.address],
            set_={"reason": insert.excluded.reason, "expire_time": 0,
                  "create_time": insert.excluded.create_time},
        )  # fmt: skip
        rows = [
            {"id": random_hex_id(), "tenant_id": tenant_id, "channel": channel,
             "address": address, "reason": reason, "expire_time": 0, "note": "imported",
             "create_time": now}
            for (channel, address), reason in wanted.items()
        ]  # fmt: skip
        async with self._db.engine.begin() as conn:
            for first in range(0, len(rows), 1000):
                await conn.execute(statement, rows[first : first + 1000])
        return len(rows), refused, problems

    async def blocking(
        self, tenant_id: str, channel: str, addresses: list[str]
    ) -> dict[str, Suppression]:
        """The suppressions in force for these addresses on this channel (or
        every channel), by normalised address."""
        wanted = sorted({normalized(a) for a in addresses if normalized(a)})
        if not wanted:
            return {}
        now = self._clock()
        s = messaging_suppressions.c
        found: dict[str, Suppression] = {}
        async with self._db.engine.connect() as conn:
            for first in range(0, len(wanted), 500):
                rows = await conn.execute(
                    sa.select(messaging_suppressions).where(
                        s.tenant_id == tenant_id,
                        s.address.in_(wanted[first : first + 500]),
                        s.channel.in_(("", channel)),
                        sa.or_(s.expire_time == 0, s.expire_time > now),
                    )
                )
                for row in rows:
                    found[row.address] = _from_row(row)
        return found

    async def list_suppressions(
        self, caller: Principal, parent: str, page_size: int = 0, page_token: str = ""
    ) -> tuple[list[Suppression], str]:
        tenant_id = names.own_tenant(parent, caller.tenant_id)
        if not 0 <= page_size <= MAX_PAGE_SIZE:
            raise InvalidArgument.field("page_size", f"must be 0-{MAX_PAGE_SIZE}")
        size = page_size or DEFAULT_PAGE_SIZE
        request = scope("messaging.ListSuppressions", tenant_id)
        cursor = self._pages.decode(request, page_token, "a", "id")
        s = messaging_suppressions.c
        now = self._clock()
        query = (
            sa.select(messaging_suppressions)
            .where(s.tenant_id == tenant_id, sa.or_(s.expire_time == 0, s.expire_time > now))
            .order_by(s.address, s.id)
            .limit(size + 1)
        )
        if cursor is not None:
            query = query.where(
                sa.or_(
                    s.address > cursor["a"], sa.and_(s.address == cursor["a"], s.id > cursor["id"])
                )
            )
        async with self._db.engine.connect() as conn:
            rows = (await conn.execute(query)).all()
        found = [_from_row(r) for r in rows[:size]]
        token = ""
        if len(rows) > size:
            token = self._pages.encode(request, {"a": found[-1].address, "id": found[-1].id})
        return found, token

    async def delete(self, caller: Principal, name: str) -> None:
        tenant_id, entry_id = names.parse_name(name, "name", "tenants", "suppressions")
        names.require_same_tenant(name, "name", caller.tenant_id)
        s = messaging_suppressions.c
        async with self._db.engine.begin() as conn:
            gone = await conn.execute(
                messaging_suppressions.delete().where(s.tenant_id == tenant_id, s.id == entry_id)
            )
        if not gone.rowcount:
            raise NotFound(f"{name} not found", metadata={"resource": name})


def _from_row(row: sa.Row) -> Suppression:  # type: ignore[type-arg]
    return Suppression(
        row.id,
        row.tenant_id,
        row.address,
        row.channel,
        row.reason,
        row.expire_time,
        row.note,
        row.create_time,
    )
