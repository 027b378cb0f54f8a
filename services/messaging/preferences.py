"""Subscription groups and the preference center: a tenant's groups (opt-in
or opt-out), each person's choices, and the signed link in their messages
(`message.preferences_url`) where they see and change them with no login.
Marketing messages of a template in a group go only to its subscribers; a
change is in force before the next send (the sender reads it per message)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from services.common import names
from services.common.call import Principal
from services.common.clock import now_us
from services.common.errors import FieldViolation, InvalidArgument, collect
from services.common.ids import random_hex_id
from services.common.validation import check_text
from services.db import Database
from services.messaging.tables import messaging_group_choices, messaging_groups

MAX_GROUPS = 100


@dataclass(frozen=True, slots=True)
class Group:
    id: str
    tenant_id: str
    display_name: str
    description: str
    subscribed_by_default: bool
    create_time: int

    @property
    def name(self) -> str:
        return f"tenants/{self.tenant_id}/subscriptionGroups/{self.id}"


@dataclass(frozen=True, slots=True)
class Choice:
    group: Group
    subscribed: bool


class Groups:
    def __init__(self, db: Database, *, clock: Callable[[], int] = now_us) -> None:
        self._db = db
        self._clock = clock

    async def create(
        self,
        caller: Principal,
        parent: str,
        *,
        display_name: str,
        description: str,
        subscribed_by_default: bool,
    ) -> Group:
        tenant_id = names.own_tenant(parent, caller.tenant_id)
        bad: list[FieldViolation] = []
        at = "subscription_group"
        check_text(bad, f"{at}.display_name", display_name, required=True, max_len=200)
        check_text(bad, f"{at}.description", description, required=False, max_len=1000)
        collect(bad)
        if len(await self.of_tenant(tenant_id)) >= MAX_GROUPS:
            raise InvalidArgument.field("parent", f"a tenant has at most {MAX_GROUPS} groups")
        group = Group(random_hex_id(), tenant_id, display_name, description,
                      subscribed_by_default, self._clock())  # fmt: skip
        async with self._db.engine.begin() as conn:
            await conn.execute(
                messaging_groups.insert().values(
                    id=group.id, tenant_id=tenant_id, display_name=display_name,
                    description=description, subscribed_by_default=subscribed_by_default,
                    create_time=group.create_time,
                )
            )  # fmt: skip
        return group

    async def list_groups(self, caller: Principal, parent: str) -> list[Group]:
        return await self.of_tenant(names.own_tenant(parent, caller.tenant_id))

    async def of_tenant(self, tenant_id: str) -> list[Group]:
        g = messaging_groups.c
        async with self._db.engine.connect() as conn:
            rows = await conn.execute(
                sa.select(messaging_groups)
                .where(g.tenant_id == tenant_id)
                .order_by(g.create_time, g.id)
            )
            return [
                Group(r.id, r.tenant_id, r.display_name, r.description,
                      bool(r.subscribed_by_default), r.create_time)
                for r in rows
            ]  # fmt: skip

    async def exists(self, tenant_id: str, group_id: str) -> bool:
        return any(g.id == group_id for g in await self.of_tenant(tenant_id))

    async def choices(self, tenant_id: str, profile_id: str) -> list[Choice]:
        """Every group of the tenant and whether this person is in it."""
        groups = await self.of_tenant(tenant_id)
        c = messaging_group_choices.c
        async with self._db.engine.connect() as conn:
            made = {
                r.group_id: bool(r.subscribed)
                for r in await conn.execute(
                    sa.select(c.group_id, c.subscribed).where(
                        c.tenant_id == tenant_id, c.profile_id == profile_id
                    )
                )
            }
        return [Choice(g, made.get(g.id, g.subscribed_by_default)) for g in groups]

    async def subscribed(self, tenant_id: str, group_id: str, profile_id: str) -> bool:
        for choice in await self.choices(tenant_id, profile_id):
            if choice.group.id == group_id:
                return choice.subscribed
        return False  # the group is gone: nothing of it goes out

    async def choose(
        self, tenant_id: str, profile_id: str, wanted: Sequence[tuple[str, bool]]
    ) -> list[Choice]:
        """Set this person's choices ((group name, subscribed) each)."""
        known = {g.name: g for g in await self.of_tenant(tenant_id)}
        bad = [
            FieldViolation(f"choices[{i}].group", f"{name!r} is not one of this tenant's groups")
            for i, (name, _) in enumerate(wanted)
            if name not in known
        ]
        collect(bad)
        now = self._clock()
        insert = (sqlite_insert if self._db.is_sqlite else postgresql_insert)(
            messaging_group_choices
        )
        c = messaging_group_choices.c
        statement = insert.on_conflict_do_update(
            index_elements=[c.group_id, c.profile_id],
            set_={"subscribed": insert.excluded.subscribed, "update_time": now},
        )
        rows = [
            {"group_id": known[name].id, "profile_id": profile_id, "tenant_id": tenant_id,
             "subscribed": subscribed, "update_time": now}
            for name, subscribed in wanted
        ]  # fmt: skip
        if rows:
            async with self._db.engine.begin() as conn:
                await conn.execute(statement, rows)
        return await self.choices(tenant_id, profile_id)
