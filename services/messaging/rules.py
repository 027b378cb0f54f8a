"""Delivery rules (FR-DEL-001..005): a tenant's frequency caps, in priority
order, and quiet hours, both in the recipient's time zone (their `timezone`
trait, else the rules' zone, else UTC).

- A cap allows at most N messages per person on a channel (or on all
  channels together) per clock hour, calendar day, ISO week, calendar month
  or campaign. Counters live in the hot store (the in-process store, Redis
  at scale) and a message takes its place in every cap that applies in one
  atomic step; if that passes a cap's limit, the first such cap in priority
  order is the reason, and the places are given back. A message that is
  then not sent gives its places back too. Transactional messages pass,
  unless a cap says to count them.
- Quiet hours (`22:00`-`07:00` wraps past midnight) hold a marketing
  message until they end, or drop it; transactional messages pass."""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import re
import time
import zoneinfo
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from services.backends.interfaces import KeyValueStore
from services.common import names
from services.common.call import Principal
from services.common.clock import now_us
from services.common.errors import FieldViolation, InvalidArgument, collect
from services.db import Database
from services.messaging.tables import messaging_rules
from services.messaging.templates import CHANNELS

PERIODS = ("hour", "day", "week", "month", "campaign")
MAX_CAPS = 20
MAX_PER_CAP = 10_000
CACHE_SECONDS = 5.0
_HOST = re.compile(r"^(\*\.)?[a-z0-9]([a-z0-9-]{0,62}\.)*[a-z0-9-]{1,63}$")
_CLOCK = re.compile(r"^([01][0-9]|2[0-3]):([0-5][0-9])$")
_TTL = {"hour": 2 * 3600, "day": 2 * 86400, "week": 8 * 86400, "month": 32 * 86400,
        "campaign": 400 * 86400}  # fmt: skip


@dataclass(frozen=True, slots=True)
class CapRule:
    channel: str  # "" = every channel
    period: str
    max_messages: int
    include_transactional: bool = False

    def describe(self) -> str:
        return f"{self.max_messages} per {self.period} on {self.channel or 'all channels'}"


@dataclass(frozen=True, slots=True)
class QuietHours:
    enabled: bool = False
    start: str = "22:00"
    end: str = "07:00"
    time_zone: str = ""
    action: str = "hold"  # or drop


@dataclass(frozen=True, slots=True)
class Rules:
    tenant_id: str
    caps: tuple[CapRule, ...] = ()
    quiet: QuietHours = field(default_factory=QuietHours)
    update_time: int = 0
    connected_hosts: tuple[str, ...] = ()  # connected content may fetch from these

    @property
    def name(self) -> str:
        return f"tenants/{self.tenant_id}/deliveryRules"


def _minutes(text: str) -> int:
    found = _CLOCK.match(text)
    assert found is not None
    return int(found.group(1)) * 60 + int(found.group(2))


def zone_of(traits: Mapping[str, Any], rules: Rules) -> zoneinfo.ZoneInfo:
    """The person's time zone: their `timezone` trait, the rules' zone, UTC."""
    for name in (traits.get("timezone"), rules.quiet.time_zone, "UTC"):
        if isinstance(name, str) and name:
            try:
                return zoneinfo.ZoneInfo(name)
            except (zoneinfo.ZoneInfoNotFoundError, ValueError):
                continue
    return zoneinfo.ZoneInfo("UTC")


def quiet_until(quiet: QuietHours, zone: zoneinfo.ZoneInfo, now: int) -> int | None:
    """When quiet hours end (microseconds) if `now` is inside them, else None."""
    if not quiet.enabled:
        return None
    local = dt.datetime.fromtimestamp(now / 1e6, zone)
    start, end = _minutes(quiet.start), _minutes(quiet.end)
    minute = local.hour * 60 + local.minute
    inside = start <= minute < end if start < end else (minute >= start or minute < end)
    if not inside or start == end:
        return None
    end_day = local.date()
    if start > end and minute >= start:  # wraps: it ends tomorrow
        end_day += dt.timedelta(days=1)
    ends = dt.datetime.combine(end_day, dt.time(end // 60, end % 60), zone)
    return int(ends.timestamp() * 1_000_000)


def _bucket(period: str, local: dt.datetime, campaign_id: str) -> str:
    if period == "hour":
        return local.strftime("%Y-%m-%dT%H")
    if period == "day":
        return local.strftime("%Y-%m-%d")
    if period == "week":
        year, week, _ = local.isocalendar()
        return f"{year}-W{week:02d}"
    if period == "month":
        return local.strftime("%Y-%m")
    return f"c{campaign_id}"


class Caps:
    """Frequency cap counters in the hot store."""

    def __init__(self, store: KeyValueStore) -> None:
        self._store = store

    @property
    def store(self) -> KeyValueStore:
        """The hot store (send-rate buckets live there too)."""
        return self._store

    async def reserve(
        self,
        rules: Rules,
        *,
        person: str,
        channel: str,
        campaign_id: str,
        transactional: bool,
        zone: zoneinfo.ZoneInfo,
        now: int,
    ) -> tuple[CapRule | None, list[str]]:
        """Take this message's place in each cap that applies: (None, the
        keys taken) or (the first cap it would exceed, [] : nothing taken)."""
        applying = [
            rule
            for rule in rules.caps
            if (not transactional or rule.include_transactional)
            and rule.channel in ("", channel)
            and (rule.period != "campaign" or campaign_id)
        ]
        if not applying:
            return None, []
        local = dt.datetime.fromtimestamp(now / 1e6, zone)
        keys = [
            f"mcap:{rules.tenant_id}:{person}:{rule.channel or '*'}:{rule.period}:"
            f"{_bucket(rule.period, local, campaign_id)}"
            for rule in applying
        ]
        counts = await self._store.incr_many([(k, 1, float(_TTL[r.period])) for k, r in
                                              zip(keys, applying, strict=True)])  # fmt: skip
        for rule, count in zip(applying, counts, strict=True):
            if count > rule.max_messages:
                await self.release(keys)
                return rule, []
        return None, keys

    async def release(self, keys: Sequence[str]) -> None:
        if keys:
            await self._store.incr_many([(k, -1, None) for k in keys])


def person_key(profile_id: str, address: str) -> str:
    """Whom caps count: the profile, else a digest of the bare address."""
    if profile_id:
        return profile_id
    return "a" + hashlib.sha256(address.encode()).hexdigest()[:24]


def read_rules(
    tenant_id: str, caps: Sequence[Mapping[str, Any]], quiet: Mapping[str, Any] | None
) -> tuple[tuple[CapRule, ...], QuietHours]:
    """Rules from their request form; InvalidArgument naming every bad field."""
    at = "delivery_rules"
    bad: list[FieldViolation] = []
    read: list[CapRule] = []
    if len(caps) > MAX_CAPS:
        bad.append(FieldViolation(f"{at}.frequency_caps", f"at most {MAX_CAPS}"))
    for i, cap in enumerate(caps[:MAX_CAPS]):
        where = f"{at}.frequency_caps[{i}]"
        channel, period = str(cap.get("channel", "")), str(cap.get("period", ""))
        most = cap.get("max_messages", 0)
        if channel and channel not in CHANNELS:
            bad.append(FieldViolation(f"{where}.channel", "not a message channel"))
        if period not in PERIODS:
            bad.append(
                FieldViolation(f"{where}.period", "required: hour, day, week, month, campaign")
            )
        if not isinstance(most, int) or not 1 <= most <= MAX_PER_CAP:
            bad.append(FieldViolation(f"{where}.max_messages", f"must be 1-{MAX_PER_CAP:,}"))
        read.append(CapRule(channel, period, int(most or 0),
                            bool(cap.get("include_transactional"))))  # fmt: skip
    quiet_hours = QuietHours()
    if quiet:
        where = f"{at}.quiet_hours"
        start, end = str(quiet.get("start", "")), str(quiet.get("end", ""))
        zone = str(quiet.get("time_zone", ""))
        action = str(quiet.get("action", "") or "hold")
        enabled = bool(quiet.get("enabled"))
        for key, value in (("start", start), ("end", end)):
            if (enabled or value) and not _CLOCK.match(value):
                bad.append(FieldViolation(f"{where}.{key}", "must be HH:MM (00:00-23:59)"))
        if enabled and start == end and _CLOCK.match(start):
            bad.append(FieldViolation(f"{where}.end", "must differ from the start"))
        if zone:
            try:
                zoneinfo.ZoneInfo(zone)
            except (zoneinfo.ZoneInfoNotFoundError, ValueError):
                bad.append(FieldViolation(f"{where}.time_zone", "not an IANA time zone"))
        if action not in ("hold", "drop"):
            bad.append(FieldViolation(f"{where}.action", "HOLD or DROP"))
        quiet_hours = QuietHours(enabled, start or "22:00", end or "07:00", zone, action)
    collect(bad)
    return tuple(read), quiet_hours


class DeliveryRules:
    """Each tenant's rules (one row), cached CACHE_SECONDS per process."""

    def __init__(self, db: Database, *, clock: Callable[[], int] = now_us) -> None:
        self._db = db
        self._clock = clock
        self._cache: dict[str, tuple[float, Rules]] = {}

    async def of_tenant(self, tenant_id: str, *, fresh: bool = False) -> Rules:
        cached = self._cache.get(tenant_id)
        if not fresh and cached is not None and cached[0] > time.monotonic():
            return cached[1]
        r = messaging_rules.c
        async with self._db.engine.connect() as conn:
            row = (
                await conn.execute(sa.select(messaging_rules).where(r.tenant_id == tenant_id))
            ).first()
        rules = Rules(tenant_id)
        if row is not None:
            data = dict(row.rules)
            rules = Rules(
                tenant_id,
                tuple(CapRule(**c) for c in data.get("caps", [])),
                QuietHours(**data.get("quiet", {})),
                row.update_time,
                tuple(data.get("connected_hosts", [])),
            )
        self._cache[tenant_id] = (time.monotonic() + CACHE_SECONDS, rules)
        return rules

    async def get(self, caller: Principal, name: str) -> Rules:
        return await self.of_tenant(_tenant(caller, name), fresh=True)

    async def update(
        self,
        caller: Principal,
        name: str,
        paths: Sequence[str],
        caps: Sequence[Mapping[str, Any]],
        quiet: Mapping[str, Any] | None,
        hosts: Sequence[str] = (),
    ) -> Rules:
        tenant_id = _tenant(caller, name)
        every = {"frequency_caps", "quiet_hours", "connected_content_hosts"}
        fields = set(paths) or every
        if unknown := fields - every:
            raise InvalidArgument.field("update_mask", f"{sorted(unknown)[0]!r}: not changeable")
        read_caps, read_quiet = read_rules(tenant_id, caps, quiet)
        read_hosts = tuple(dict.fromkeys(h.strip().lower() for h in hosts if h.strip()))
        bad = [
            FieldViolation(f"delivery_rules.connected_content_hosts[{i}]", "a host name")
            for i, h in enumerate(read_hosts)
            if not _HOST.match(h)
        ]
        collect(bad)
        current = await self.of_tenant(tenant_id, fresh=True)
        now = self._clock()
        rules = Rules(
            tenant_id,
            read_caps if "frequency_caps" in fields else current.caps,
            read_quiet if "quiet_hours" in fields else current.quiet,
            now,
            read_hosts if "connected_content_hosts" in fields else current.connected_hosts,
        )
        data = {
            "caps": [dataclasses.asdict(c) for c in rules.caps],
            "quiet": dataclasses.asdict(rules.quiet),
            "connected_hosts": list(rules.connected_hosts),
        }
        insert = (sqlite_insert if self._db.is_sqlite else postgresql_insert)(messaging_rules)
        statement = insert.values(tenant_id=tenant_id, rules=data, update_time=now)
        statement = statement.on_conflict_do_update(
            index_elements=[messaging_rules.c.tenant_id],
            set_={"rules": data, "update_time": now},
        )
        async with self._db.engine.begin() as conn:
            await conn.execute(statement)
        self._cache[tenant_id] = (time.monotonic() + CACHE_SECONDS, rules)
        return rules


def _tenant(caller: Principal, name: str) -> str:
    parts = name.split("/")
    if len(parts) != 3 or parts[0] != "tenants" or parts[2] != "deliveryRules":
        raise InvalidArgument.field("name", "must be tenants/{tenant}/deliveryRules")
    names.require_same_tenant(name, "name", caller.tenant_id)
    return parts[1]
