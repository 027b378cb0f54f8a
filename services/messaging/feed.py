"""The in-app feed (FR-CHN-004/005): in-app messages and content cards are
delivered into the person's feed (a row per message, once), which SDKs read
(ListFeedItems), follow (StreamFeedItems: new items come over the bus, so
any process's deliveries reach any process's streams) and report on:
impressions, clicks and dismissals, each a lifecycle event. An in-app
message shows when the app sees its `data.trigger` event (or at the next
session); items leave the feed when dismissed or expired
(`data.expire_days`, 30 by default)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import orjson
import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from services.backends.interfaces import BusMessage, MessageBus
from services.common import names
from services.common.call import Principal
from services.common.clock import now_us
from services.common.errors import InvalidArgument, NotFound
from services.db import Database
from services.messaging.tables import messaging_feed

FEED_CHANNELS = ("in_app", "content_card")
INTERACTIONS = {"impression": "impression", "click": "clicked", "dismiss": "dismissed"}
DEFAULT_EXPIRE_DAYS = 30
MAX_ITEMS = 100
US_PER_DAY = 86_400_000_000
SUBJECT = "campaign-express.feed"


@dataclass(frozen=True, slots=True)
class FeedItem:
    id: str
    tenant_id: str
    profile_id: str
    channel: str
    title: str
    body: str
    html: str
    data: dict[str, Any]
    trigger: str
    create_time: int
    expire_time: int
    impressions: int = 0
    clicks: int = 0
    dismiss_time: int = 0

    @property
    def name(self) -> str:
        return f"tenants/{self.tenant_id}/feedItems/{self.id}"


def _from_row(row: Any) -> FeedItem:
    return FeedItem(
        row.id,
        row.tenant_id,
        row.profile_id,
        row.channel,
        row.title,
        row.body,
        row.html,
        dict(row.data),
        row.trigger,
        row.create_time,
        row.expire_time,
        row.impressions,
        row.clicks,
        row.dismiss_time,
    )


class Feed:
    def __init__(
        self,
        db: Database,
        bus: MessageBus | None = None,
        *,
        clock: Callable[[], int] = now_us,
    ) -> None:
        self._db = db
        self._bus = bus
        self._clock = clock

    async def deliver(
        self,
        *,
        message_id: str,
        tenant_id: str,
        profile_id: str,
        channel: str,
        title: str,
        body: str,
        html: str,
        data: dict[str, Any],
    ) -> FeedItem:
        """Put a message in the person's feed (once: a second delivery of
        the same message changes nothing) and tell the streams."""
        now = self._clock()
        days = data.get("expire_days", DEFAULT_EXPIRE_DAYS)
        days = days if isinstance(days, int | float) and 0 < days <= 365 else DEFAULT_EXPIRE_DAYS
        trigger = data.get("trigger", "") if channel == "in_app" else ""
        item = FeedItem(message_id, tenant_id, profile_id, channel, title, body, html, data,
                        str(trigger)[:200] if isinstance(trigger, str) else "", now,
                        now + int(days * US_PER_DAY))  # fmt: skip
        insert = (sqlite_insert if self._db.is_sqlite else postgresql_insert)(messaging_feed)
        async with self._db.engine.begin() as conn:
            await conn.execute(
                insert.values(
                    id=item.id, tenant_id=tenant_id, profile_id=profile_id, channel=channel,
                    title=title, body=body, html=html, data=data, trigger=item.trigger,
                    create_time=now, expire_time=item.expire_time, impressions=0, clicks=0,
                    dismiss_time=0,
                ).on_conflict_do_nothing(index_elements=[messaging_feed.c.id])
            )  # fmt: skip
        if self._bus is not None:
            with contextlib.suppress(Exception):  # streams also catch up on reconnect
                await self._bus.publish(
                    f"{SUBJECT}.{tenant_id}.{profile_id}", orjson.dumps({"item": item.id})
                )
        return item

    async def items(self, caller: Principal, parent: str, channel: str = "") -> list[FeedItem]:
        tenant_id, profile_id = self._person(caller, parent)
        return await self.of_person(tenant_id, profile_id, channel)

    async def of_person(self, tenant_id: str, profile_id: str, channel: str = "") -> list[FeedItem]:
        f = messaging_feed.c
        query = (
            sa.select(messaging_feed)
            .where(
                f.tenant_id == tenant_id,
                f.profile_id == profile_id,
                f.dismiss_time == 0,
                f.expire_time > self._clock(),
            )
            .order_by(f.create_time.desc(), f.id.desc())
            .limit(MAX_ITEMS)
        )
        if channel:
            query = query.where(f.channel == channel)
        async with self._db.engine.connect() as conn:
            return [_from_row(r) for r in await conn.execute(query)]

    async def follow(self, caller: Principal, parent: str) -> AsyncIterator[FeedItem]:
        """The feed now, then each new item."""
        tenant_id, profile_id = self._person(caller, parent)
        arrived: asyncio.Queue[str] = asyncio.Queue()

        async def heard(message: BusMessage) -> None:
            with contextlib.suppress(ValueError, KeyError, TypeError):
                arrived.put_nowait(str(orjson.loads(message.data)["item"]))

        subscription = None
        if self._bus is not None:
            subscription = await self._bus.subscribe(f"{SUBJECT}.{tenant_id}.{profile_id}", heard)
        try:
            seen: set[str] = set()
            for item in reversed(await self.of_person(tenant_id, profile_id)):
                seen.add(item.id)
                yield item
            while True:
                item_id = await arrived.get()
                if item_id in seen:
                    continue
                found = await self._get(tenant_id, item_id)
                if found is not None:
                    seen.add(item_id)
                    yield found
        finally:
            if subscription is not None:
                with contextlib.suppress(Exception):
                    await subscription.unsubscribe()

    async def interact(self, caller: Principal, name: str, interaction: str) -> FeedItem:
        names.require_same_tenant(name, "name", caller.tenant_id)
        tenant_id, item_id = names.parse_name(name, "name", "tenants", "feedItems")
        if interaction not in INTERACTIONS:
            raise InvalidArgument.field("interaction", "IMPRESSION, CLICK or DISMISS")
        f = messaging_feed.c
        changes: dict[str, dict[str, Any]] = {
            "impression": {"impressions": f.impressions + 1},
            "click": {"clicks": f.clicks + 1},
            "dismiss": {"dismiss_time": self._clock()},
        }
        values = changes[interaction]
        async with self._db.engine.begin() as conn:
            done = await conn.execute(
                messaging_feed.update()
                .where(f.tenant_id == tenant_id, f.id == item_id)
                .values(**values)
            )
        if not done.rowcount:
            raise NotFound(f"{name} not found", metadata={"resource": name})
        found = await self._get(tenant_id, item_id)
        assert found is not None
        return found

    async def _get(self, tenant_id: str, item_id: str) -> FeedItem | None:
        f = messaging_feed.c
        async with self._db.engine.connect() as conn:
            row = (
                await conn.execute(
                    sa.select(messaging_feed).where(f.tenant_id == tenant_id, f.id == item_id)
                )
            ).first()
        return None if row is None else _from_row(row)

    @staticmethod
    def _person(caller: Principal, parent: str) -> tuple[str, str]:
        names.require_same_tenant(parent, "parent", caller.tenant_id)
        tenant_id, profile_id = names.parse_name(parent, "parent", "tenants", "profiles")
        return tenant_id, profile_id
