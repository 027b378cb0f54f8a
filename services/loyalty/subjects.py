"""The ledger's part in data-subject requests (the audience domain's
hooks): a person's membership and ledger, under their user ids, are
exported with the rest of them, and erased (the one time ledger entries are
removed: the right to erasure outranks an append-only ledger)."""

from __future__ import annotations

import dataclasses
from typing import Any

import sqlalchemy as sa

from services.db import Database
from services.loyalty.ledger import member_of, transaction_of
from services.loyalty.tables import loyalty_members, loyalty_transactions

MAX_EXPORTED = 10_000


class LoyaltySubjects:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def settle(self) -> None:
        return None  # every change is in the database once answered

    async def export(self, person: Any) -> list[dict[str, Any]]:
        ids = person.values("user_id")
        if not ids:
            return []
        m, t = loyalty_members.c, loyalty_transactions.c
        async with self._db.engine.connect() as conn:
            members = (
                await conn.execute(
                    sa.select(loyalty_members).where(
                        m.tenant_id == person.tenant_id, m.member_id.in_(ids)
                    )
                )
            ).all()
            entries = (
                await conn.execute(
                    sa.select(loyalty_transactions)
                    .where(t.tenant_id == person.tenant_id, t.member_id.in_(ids))
                    .order_by(t.member_id, t.seq)
                    .limit(MAX_EXPORTED)
                )
            ).all()
        found: list[dict[str, Any]] = [
            {"member": dataclasses.asdict(member_of(r))} for r in members
        ]
        found += [{"transaction": dataclasses.asdict(transaction_of(r))} for r in entries]
        return found

    async def erase(self, person: Any) -> int:
        ids = person.values("user_id")
        if not ids:
            return 0
        m, t = loyalty_members.c, loyalty_transactions.c
        async with self._db.engine.begin() as conn:
            gone = await conn.execute(
                loyalty_transactions.delete().where(
                    t.tenant_id == person.tenant_id, t.member_id.in_(ids)
                )
            )
            members = await conn.execute(
                loyalty_members.delete().where(
                    m.tenant_id == person.tenant_id, m.member_id.in_(ids)
                )
            )
        return int(gone.rowcount or 0) + int(members.rowcount or 0)
