"""Step 4 of the bid pipeline: frequency caps per user and campaign (FR-RTB-006).

A campaign caps impressions per user per HOUR and/or per DAY
(`services.campaigns.model.FrequencyCap`). Two counters per user and
campaign hold the impressions of the current windows:

- hour: the clock hour (UTC; the same as the local clock hour except in
  zones offset by a fraction of an hour), bucket = hours since the epoch;
- day: the campaign's local day in its schedule time zone (DST-aware),
  bucket = the local date ``YYYYMMDD``.

Keys are ``fcap:{<user>}:<campaign>:h:<hour>`` and
``fcap:{<user>}:<campaign>:d:<yyyymmdd>``. The braces are a Redis Cluster hash
tag: all of one user's counters live in one slot, so the ONE ``get_many`` that
checks every candidate campaign of a bid, and the transaction that records an
impression, stay single-slot. Each counter expires at the end of its window
plus `slack_seconds`, so old windows cost no memory.

`record_impression` increments both counters in one atomic step
(`KeyValueStore.incr_many`: MULTI/EXEC on Redis), so concurrent impressions
are all counted. Checking and recording are separate steps (a bid is checked,
the impression is recorded when the win notice arrives), so concurrent bids
for one user may all pass a cap that one more impression would reach: caps
are exact in what they count, and may be exceeded by the bids in flight.

An anonymous user (id "") cannot be capped: nothing is read or written.
A store error propagates: the caller decides (the processor answers no-bid
rather than risk breaking an advertiser's cap).
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta, tzinfo
from typing import NamedTuple
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from services.backends.interfaces import KeyValueStore
from services.bidding.identity import key_part

__all__ = [
    "WINDOWS",
    "CapCheck",
    "FrequencyCaps",
    "cap_reason",
    "day_bucket",
    "hour_bucket",
]

#: How long a won bid's impression is remembered as counted: exchanges retry
#: notices within minutes; a retry later than this would count it again.
NOTICE_RETRY_WINDOW_SECONDS = 2 * 3600.0

log = logging.getLogger(__name__)

WINDOWS = ("HOUR", "DAY")
_US_PER_SECOND = 1_000_000
_SECONDS_PER_HOUR = 3600
# Every time zone offset in use is a multiple of 15 minutes, so a local day
# starts and ends on a 15-minute boundary of UTC: the local date is the same
# for every instant of one such slot, and can be cached per slot.
_SLOT_SECONDS = 900

Caps = Sequence[tuple[int, str]]  # (max_impressions, window)


def cap_reason(max_impressions: int, window: str) -> str:
    return f"frequency cap {max_impressions}/{window} reached"


_WINDOW_NAMES = {"HOUR": "HOUR", "DAY": "DAY"}


@functools.lru_cache(maxsize=4096)
def _campaign_part(campaign_id: str) -> str:
    return key_part(campaign_id)  # campaign ids repeat on every bid


def _window(window: str) -> str:
    name = window.upper().removeprefix("CAP_WINDOW_")
    if name not in WINDOWS:
        raise ValueError(f"frequency cap window must be HOUR or DAY, got {window!r}")
    return name


@functools.lru_cache(maxsize=1024)
def _zone(name: str) -> tzinfo:
    try:
        return ZoneInfo(name) if name else UTC
    except (ZoneInfoNotFoundError, ValueError):
        log.warning("unknown time zone %r; frequency cap days use UTC", name)
        return UTC


def hour_bucket(now_us: int) -> tuple[int, float]:
    """(hours since the epoch, seconds until that hour ends)."""
    seconds = now_us / _US_PER_SECOND
    hour = int(seconds // _SECONDS_PER_HOUR)
    return hour, (hour + 1) * _SECONDS_PER_HOUR - seconds


@functools.lru_cache(maxsize=4096)
def _local_day(time_zone: str, slot: int) -> tuple[str, float]:
    tz = _zone(time_zone)
    day = datetime.fromtimestamp(slot * _SLOT_SECONDS, tz).date()
    following = day + timedelta(days=1)
    # Local midnight of the next date, whatever the DST offset is then.
    end = datetime(following.year, following.month, following.day, tzinfo=tz)
    return day.strftime("%Y%m%d"), end.timestamp()


def day_bucket(now_us: int, time_zone: str) -> tuple[str, float]:
    """(local date YYYYMMDD in `time_zone`, seconds until that local day ends).
    An unknown time zone counts as UTC."""
    seconds = now_us / _US_PER_SECOND
    day, end = _local_day(time_zone, int(seconds // _SLOT_SECONDS))
    return day, end - seconds


class CapCheck(NamedTuple):
    """One campaign's caps for one user at one moment."""

    reason: str | None  # "frequency cap 3/DAY reached", None when not capped
    hour_count: int
    day_count: int
    utilization: float  # the highest count / max_impressions over the caps, 0..1


class FrequencyCaps:
    """Frequency cap counters in a `KeyValueStore` (see the module docstring)."""

    def __init__(self, kv: KeyValueStore, *, prefix: str = "fcap", slack_seconds: float = 300.0):
        if slack_seconds < 0:
            raise ValueError("slack_seconds must be >= 0")
        self._kv = kv
        self._prefix = prefix
        self._slack = float(slack_seconds)

    def _base(self, user_id: str, campaign_id: str) -> str:
        return f"{self._prefix}:{{{key_part(user_id)}}}:{_campaign_part(campaign_id)}"

    def hour_key(self, user_id: str, campaign_id: str, now_us: int) -> str:
        return f"{self._base(user_id, campaign_id)}:h:{hour_bucket(now_us)[0]}"

    def day_key(self, user_id: str, campaign_id: str, now_us: int, time_zone: str) -> str:
        return f"{self._base(user_id, campaign_id)}:d:{day_bucket(now_us, time_zone)[0]}"

    async def is_capped(
        self, user_id: str, campaign_id: str, caps: Caps, now_us: int, time_zone: str
    ) -> str | None:
        """Why the campaign may not show the user another impression now, or
        None. One ``get_many`` of the counters the caps need."""
        capped = await self.capped_campaigns(user_id, [(campaign_id, caps, time_zone)], now_us)
        return capped.get(campaign_id)

    async def capped_campaigns(
        self, user_id: str, campaigns: Sequence[tuple[str, Caps, str]], now_us: int
    ) -> dict[str, str]:
        """For the candidate campaigns of one bid, (campaign_id, caps,
        time_zone) each: the capped ones with their reasons. ONE ``get_many``."""
        plan, values = await self._read(user_id, campaigns, now_us)
        out: dict[str, str] = {}
        for campaign_id, active, hour_at, day_at in plan:
            for max_impressions, window in active:
                at = hour_at if window == "HOUR" else day_at
                raw = values[at]
                if raw is not None and int(raw) >= max_impressions:
                    out[campaign_id] = cap_reason(max_impressions, window)
                    break
        return out

    async def check(
        self, user_id: str, campaigns: Sequence[tuple[str, Caps, str]], now_us: int
    ) -> dict[str, CapCheck]:
        """Counts, utilisation and reason per campaign that has caps (campaigns
        without any are left out, as is everything for an anonymous user).
        ONE ``get_many`` for all of them."""
        plan, values = await self._read(user_id, campaigns, now_us)
        out: dict[str, CapCheck] = {}
        for campaign_id, active, hour_at, day_at in plan:
            hour_count = int(values[hour_at] or 0) if hour_at >= 0 else 0
            day_count = int(values[day_at] or 0) if day_at >= 0 else 0
            reason: str | None = None
            utilization = 0.0
            for max_impressions, window in active:
                count = hour_count if window == "HOUR" else day_count
                if count >= max_impressions:
                    utilization = 1.0
                    if reason is None:
                        reason = cap_reason(max_impressions, window)
                elif count / max_impressions > utilization:
                    utilization = count / max_impressions
            out[campaign_id] = CapCheck(reason, hour_count, day_count, utilization)
        return out

    async def _read(
        self, user_id: str, campaigns: Sequence[tuple[str, Caps, str]], now_us: int
    ) -> tuple[list[tuple[str, list[tuple[int, str]], int, int]], list[bytes | None]]:
        """The counters the campaigns' caps need, in one ``get_many``: the plan
        (campaign, its caps, index of its hour and day counter or -1) and the
        values read."""
        if not user_id:
            return [], []
        keys: list[str] = []
        plan: list[tuple[str, list[tuple[int, str]], int, int]] = []
        prefix = f"{self._prefix}:{{{key_part(user_id)}}}:"
        hour_suffix = f":h:{hour_bucket(now_us)[0]}"
        day_suffixes: dict[str, str] = {}
        for campaign_id, caps, time_zone in campaigns:
            active: list[tuple[int, str]] = []
            hourly = daily = False
            for max_impressions, window in caps:
                if max_impressions <= 0:
                    continue
                name = _WINDOW_NAMES.get(window) or _window(window)
                active.append((max_impressions, name))
                if name == "HOUR":
                    hourly = True
                else:
                    daily = True
            if not active:
                continue
            base = prefix + _campaign_part(campaign_id)
            hour_at = day_at = -1
            if hourly:
                hour_at = len(keys)
                keys.append(base + hour_suffix)
            if daily:
                suffix = day_suffixes.get(time_zone)
                if suffix is None:
                    suffix = day_suffixes[time_zone] = f":d:{day_bucket(now_us, time_zone)[0]}"
                day_at = len(keys)
                keys.append(base + suffix)
            plan.append((campaign_id, active, hour_at, day_at))
        if not keys:
            return [], []
        return plan, await self._kv.get_many(keys)

    async def record_impression_once(
        self, bid_id: str, user_id: str, campaign_id: str, now_us: int, time_zone: str
    ) -> tuple[int, int] | None:
        """`record_impression` once per bid: a win notice retried (after this
        failed, or after it worked) counts the impression exactly once, as
        long as the retry comes within NOTICE_RETRY_WINDOW_SECONDS. None when
        it was already counted."""
        if not user_id:
            return 0, 0
        base = self._base(user_id, campaign_id)
        hour, hour_left = hour_bucket(now_us)
        day, day_left = day_bucket(now_us, time_zone)
        counted = await self._kv.incr_many_once(
            f"{base}:won:{bid_id}",
            NOTICE_RETRY_WINDOW_SECONDS,
            [
                (f"{base}:h:{hour}", 1, hour_left + self._slack),
                (f"{base}:d:{day}", 1, day_left + self._slack),
            ],
        )
        return None if counted is None else (counted[0], counted[1])

    async def record_impression(
        self, user_id: str, campaign_id: str, now_us: int, time_zone: str
    ) -> tuple[int, int]:
        """Count one impression in the hour and local-day counters, atomically
        (one transaction); returns their new values, (0, 0) for an anonymous
        user (nothing is stored)."""
        if not user_id:
            return 0, 0
        base = self._base(user_id, campaign_id)
        hour, hour_left = hour_bucket(now_us)
        day, day_left = day_bucket(now_us, time_zone)
        hour_count, day_count = await self._kv.incr_many(
            [
                (f"{base}:h:{hour}", 1, hour_left + self._slack),
                (f"{base}:d:{day}", 1, day_left + self._slack),
            ]
        )
        return hour_count, day_count
