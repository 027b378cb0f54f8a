"""Messaging's part in data-subject requests (the audience domain's
`data_subject_hooks`): an export lists the person's messages (to their
profiles, or to their email or phone); an erasure deletes those messages
and their lifecycle events (`message_events`, by message and profile). Suppressions
are kept: erasing one would let messages reach the person again."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa

from services.analytics.pipeline import AnalyticsPipeline
from services.backends.analytics import quote_identifier, quote_literal, table_exists
from services.backends.interfaces import AnalyticsStore
from services.db import Database
from services.messaging.events import TABLE as EVENTS_TABLE
from services.messaging.messages import from_row
from services.messaging.suppressions import normalized
from services.messaging.tables import messaging_messages

MAX_EXPORTED = 10_000


class MessagesOfPeople:
    def __init__(self, db: Database, events: AnalyticsPipeline, analytics: AnalyticsStore) -> None:
        self._db = db
        self._events = events
        self._analytics = analytics

    def _where(self, person: Any) -> Any:
        m = messaging_messages.c
        traits = dict(getattr(person.profile, "traits", {}) or {})
        addresses = [
            a for a in (normalized(str(traits.get(k, "") or "")) for k in ("email", "phone")) if a
        ]
        matches = [m.profile_id.in_(list(person.profile_ids))]
        if addresses:
            matches.append(m.address.in_(addresses))
        return sa.and_(m.tenant_id == person.tenant_id, sa.or_(*matches))

    async def settle(self) -> None:
        await self._events.flush()  # their lifecycle events are in the store

    async def export(self, person: Any) -> Any:
        m = messaging_messages.c
        async with self._db.engine.connect() as conn:
            rows = (
                await conn.execute(
                    sa.select(messaging_messages)
                    .where(self._where(person))
                    .order_by(m.create_time)
                    .limit(MAX_EXPORTED)
                )
            ).all()
        return [
            {
                "message": f"tenants/{message.tenant_id}/messages/{message.id}",
                "channel": message.channel,
                "state": message.state,
                "address": message.address,
                "template": message.template_id,
                "campaign": message.campaign_id,
                "data": message.data,
                "createTime": message.create_time,
                "sendTime": message.send_time,
            }
            for message in (from_row(r) for r in rows)
        ]

    async def erase(self, person: Any) -> int:
        m = messaging_messages.c
        async with self._db.engine.begin() as conn:
            ids = list(await conn.scalars(sa.select(m.id).where(self._where(person))))
            for first in range(0, len(ids), 500):
                await conn.execute(
                    messaging_messages.delete().where(m.id.in_(ids[first : first + 500]))
                )
        if await table_exists(self._analytics, EVENTS_TABLE):
            who = [f"profile_id IN ({_list(person.profile_ids)})"] if person.profile_ids else []
            for first in range(0, len(ids), 1000):
                who.append(f"message_id IN ({_list(ids[first : first + 1000])})")
            for condition in who:
                await self._analytics.execute(
                    f"ALTER TABLE {quote_identifier(EVENTS_TABLE)} DELETE WHERE tenant_id = "
                    f"{quote_literal(person.tenant_id)} AND {condition} "
                    "SETTINGS mutations_sync = 2"
                )
        return len(ids)


def _list(values: Any) -> str:
    return ", ".join(quote_literal(str(v)) for v in values)
