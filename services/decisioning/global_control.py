"""The tenant's global control group (FR-RL-009): a share of people who get
no marketing from the platform, so that its total effect can be measured
against them.

Membership is a hash, nothing stored per person: a person (the id their
events carry: user id, else anonymous id) is in the group when the first 8
bytes of SHA-256(salt, NUL, id), as a big-endian number, modulo 10,000, are
under `percent` x 100. The salt is drawn when the group is first set, so
the same people stay in it while the percent stays the same; raising it
adds people, never moves anyone out.

What members get:
- policies (`:decide`): the control arm, as a holdout (not learnt from,
  left out of off-policy evaluation);
- experiments (`:assign`, journeys' experiment splits): the control
  variant, not enrolled, no exposure logged;
- messages: marketing messages (campaigns, journeys, broadcasts) are not
  sent: aborted `global_control`; transactional ones still go.

The lift (`:lift`): over the people with any event in the last `days`,
the share who did `event` in the group and outside it, and the difference
(Welch, 95% interval) and relative lift, computed in the analytics store's
`events` table with the same hash (ClickHouse's SHA256)."""

from __future__ import annotations

import hashlib
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass

import sqlalchemy as sa

from services.audience.events import TABLE as EVENTS
from services.backends.analytics import quote_literal, table_exists
from services.backends.interfaces import AnalyticsStore
from services.common import names
from services.common.call import Principal
from services.common.clock import now_us
from services.common.errors import FailedPrecondition, InvalidArgument
from services.db import Database
from services.decisioning.statistics import Moments, compare
from services.decisioning.tables import decisioning_global_controls

MAX_PERCENT = 50.0
BUCKETS = 10_000
CACHE_SECONDS = 5.0
MAX_DAYS = 365
MAX_EVENT = 200


@dataclass(frozen=True, slots=True)
class GlobalControl:
    name: str  # tenants/{tenant}/globalControl
    percent: float
    salt: str
    update_time: int  # microseconds; 0 when never set


@dataclass(frozen=True, slots=True)
class Lift:
    event: str
    days: int
    control_people: int
    control_converted: int
    treated_people: int
    treated_converted: int
    difference: float  # treated rate - control rate
    interval: tuple[float, float]
    relative: float
    relative_interval: tuple[float, float]
    p_value: float


def bucket(salt: str, unit: str) -> int:
    digest = hashlib.sha256(f"{salt}\0{unit}".encode()).digest()
    return int.from_bytes(digest[:8], "big") % BUCKETS


def _threshold(percent: float) -> int:
    return round(percent * BUCKETS / 100)


class GlobalControls:
    def __init__(
        self,
        db: Database,
        analytics: AnalyticsStore | None = None,
        *,
        clock: Callable[[], int] = now_us,
    ) -> None:
        self._db = db
        self._analytics = analytics
        self._clock = clock
        self._cache: dict[str, tuple[float, GlobalControl]] = {}

    async def of_tenant(self, tenant_id: str, *, fresh: bool = False) -> GlobalControl:
        cached = self._cache.get(tenant_id)
        if cached is not None and not fresh and cached[0] > time.monotonic():
            return cached[1]
        t = decisioning_global_controls.c
        async with self._db.engine.connect() as conn:
            row = (
                await conn.execute(
                    sa.select(t.percent, t.salt, t.update_time).where(t.tenant_id == tenant_id)
                )
            ).first()
        found = GlobalControl(
            f"tenants/{tenant_id}/globalControl",
            float(row.percent) if row else 0.0,
            str(row.salt) if row else "",
            int(row.update_time) if row else 0,
        )
        self._cache[tenant_id] = (time.monotonic() + CACHE_SECONDS, found)
        return found

    async def member(self, tenant_id: str, unit: str) -> bool:
        """Whether the person (the id their events carry) is in the tenant's
        global control group."""
        if not unit:
            return False
        control = await self.of_tenant(tenant_id)
        return control.percent > 0 and bucket(control.salt, unit) < _threshold(control.percent)

    def _tenant(self, caller: Principal, name: str, field: str = "name") -> str:
        parts = name.split("/")
        if len(parts) != 3 or parts[0] != "tenants" or parts[2] != "globalControl":
            raise InvalidArgument.field(field, "must be tenants/{tenant}/globalControl")
        names.require_same_tenant(name, field, caller.tenant_id)
        return parts[1]

    async def get(self, caller: Principal, name: str) -> GlobalControl:
        return await self.of_tenant(self._tenant(caller, name), fresh=True)

    async def update(self, caller: Principal, name: str, percent: float) -> GlobalControl:
        tenant_id = self._tenant(caller, name, "global_control.name")
        if not (percent == percent and 0 <= percent <= MAX_PERCENT):
            raise InvalidArgument.field(
                "global_control.percent", f"a percent of people, 0 to {MAX_PERCENT:g}"
            )
        current = await self.of_tenant(tenant_id, fresh=True)
        salt = current.salt or secrets.token_hex(8)
        t = decisioning_global_controls
        now = self._clock()
        async with self._db.engine.begin() as conn:
            if current.update_time:
                await conn.execute(
                    t.update()
                    .where(t.c.tenant_id == tenant_id)
                    .values(percent=percent, update_time=now)
                )
            else:
                await conn.execute(
                    t.insert().values(
                        tenant_id=tenant_id, percent=percent, salt=salt, update_time=now
                    )
                )
        return await self.of_tenant(tenant_id, fresh=True)

    async def lift(self, caller: Principal, name: str, event: str, days: int) -> Lift:
        tenant_id = self._tenant(caller, name)
        if not event.strip() or len(event) > MAX_EVENT:
            raise InvalidArgument.field("event", f"the conversion event's name, 1-{MAX_EVENT}")
        if not 0 <= days <= MAX_DAYS:
            raise InvalidArgument.field("days", f"1-{MAX_DAYS} (0 means 30)")
        days = days or 30
        control = await self.of_tenant(tenant_id, fresh=True)
        if not control.salt:
            raise FailedPrecondition(f"{control.name} has never been set: nobody is in it")
        if self._analytics is None or not await table_exists(self._analytics, EVENTS):
            counts = [(0, 0, 0)]
        else:
            counts = await self._analytics.query(
                lift_sql(tenant_id, control, event, self._clock() - days * 86_400_000_000)
            )
        groups = {int(g): (int(n), int(c)) for g, n, c in counts}
        n0, c0 = groups.get(1, (0, 0))
        n1, c1 = groups.get(0, (0, 0))
        if n0 < 2 or n1 < 2:
            return Lift(event, days, n0, c0, n1, c1, 0.0, (0.0, 0.0), 0.0, (0.0, 0.0), 1.0)
        found = compare(Moments.of_sums(n0, c0, c0), Moments.of_sums(n1, c1, c1))
        return Lift(
            event, days, n0, c0, n1, c1, found.difference, found.interval, found.relative,
            found.relative_interval, found.p_value,
        )  # fmt: skip


def member_sql(control: GlobalControl, unit: str = "unit") -> str:
    """1 when `unit` is in the group: `bucket` in ClickHouse's SQL."""
    hashed = f"SHA256(concat({quote_literal(control.salt)}, '\\0', {unit}))"
    value = f"reinterpretAsUInt64(reverse(substring({hashed}, 1, 8)))"
    return f"({value} % {BUCKETS} < {_threshold(control.percent)})"


def lift_sql(tenant_id: str, control: GlobalControl, event: str, since_us: int) -> str:
    """(in the group 0/1, people, people who did `event`) since `since_us`."""
    return f"""
        SELECT {member_sql(control)} AS grouped, count() AS people, sum(converted) AS converted
        FROM (
            SELECT if(user_id != '', user_id, anonymous_id) AS unit,
                   max(event_type = 'track' AND event = {quote_literal(event)}) AS converted
            FROM {EVENTS}
            WHERE tenant_id = {quote_literal(tenant_id)}
              AND event_time >= fromUnixTimestamp64Micro(toInt64({int(since_us)}), 'UTC')
              AND (user_id != '' OR anonymous_id != '')
            GROUP BY unit
        )
        GROUP BY grouped"""
