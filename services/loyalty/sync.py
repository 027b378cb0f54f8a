"""Members' loyalty state onto their audience profiles, so that bids see
it (FR-LOY-001: the bid profile's tier comes from the ledger, through the
profile): traits `loyalty_tier` (BASIC, SILVER, GOLD or RESERVE) and
`loyalty` (stars balance, qualifying and lifetime stars, progress to the
next tier, earn rate), as identify calls of the member's user id.

Every change sets when its member is due to be sent (`sync_due`), in its
own database transaction: at once for a new tier (an enrolment included),
else within the hour (services/loyalty/ledger.py SYNC_WITHIN_US: a member
who earns all day costs one profile update an hour, not one per purchase).
This loop sends the members due (woken by a new tier, else every few
seconds) and clears the mark only if the member did not change meanwhile.
A crash between the two sends them again: the calls' message ids
(`loyalty:<member>:<version>`) make the audience keep each once. Where the
audience domain does not run in the process the calls wait, due."""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Callable
from typing import Any

import sqlalchemy as sa

from services.audience.bidview import LOYALTY_STATE_TRAIT as STATE_TRAIT
from services.audience.bidview import LOYALTY_TIER_TRAIT as TIER_TRAIT
from services.common.clock import now_us
from services.db import Database
from services.loyalty.ledger import Member, member_of
from services.loyalty.program import TIER_MULTIPLIERS
from services.loyalty.tables import loyalty_members

log = logging.getLogger(__name__)

#: Members sent per round.
BATCH = 500


def traits(member: Member) -> dict[str, Any]:
    share, _ = member.progress()
    return {
        TIER_TRAIT: member.tier,
        STATE_TRAIT: {
            "tier": member.tier,
            "stars_balance": member.balance,
            "qualifying_stars": member.qualifying,
            "lifetime_stars": member.lifetime,
            "tier_progress": round(share, 4),
            "earn_rate": float(TIER_MULTIPLIERS[member.tier]),
        },
    }


class ProfileSync:
    def __init__(self, db: Database, recorder: Any, clock: Callable[[], int] = now_us) -> None:
        self._db = db
        self._recorder = recorder
        self._clock = clock
        self.sent = 0

    async def round(self) -> int:
        """Send every pending member, a batch at a time: how many were sent."""
        total = 0
        while True:
            sent = await self._batch()
            total += sent
            if sent < BATCH:
                return total

    async def _batch(self) -> int:
        m = loyalty_members.c
        async with self._db.engine.connect() as conn:
            rows = (
                await conn.execute(
                    sa.select(loyalty_members)
                    .where(m.sync_due <= self._clock())
                    .order_by(m.sync_due)
                    .limit(BATCH)
                )
            ).all()
        by_tenant: dict[str, list[Member]] = defaultdict(list)
        for row in rows:
            by_tenant[row.tenant_id].append(member_of(row))
        sent = 0
        for tenant_id, members in by_tenant.items():
            await self._recorder.identify(
                tenant_id,
                [(x.member_id, traits(x), f"loyalty:{x.member_id}:{x.version}") for x in members],
                source="loyalty",
            )
            # one statement for the batch (its rows locked for as short a time
            # as can be: ledger changes wait on them); a member changed since
            # keeps the sync its change set
            async with self._db.engine.begin() as conn:
                await conn.execute(
                    loyalty_members.update()
                    .where(
                        m.tenant_id == tenant_id,
                        m.member_id == sa.bindparam("b_member_id"),
                        m.version == sa.bindparam("b_version"),
                    )
                    .values(sync_due=None),
                    [{"b_member_id": x.member_id, "b_version": x.version} for x in members],
                )
            sent += len(members)
        self.sent += sent
        return sent
