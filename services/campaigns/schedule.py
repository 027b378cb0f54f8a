"""A campaign's schedule in its own time zone: the UTC instants it starts and
ends, whether it serves at an instant (dayparts), and its local day."""

from __future__ import annotations

import datetime as dt
import zoneinfo
from functools import lru_cache

from services.campaigns.model import Daypart, Schedule

WEEKDAYS = ("MONDAY", "TUESDAY", "WEDNESDAY", "THURSDAY", "FRIDAY", "SATURDAY", "SUNDAY")


@lru_cache(maxsize=512)
def zone(name: str) -> zoneinfo.ZoneInfo:
    """The IANA zone; raises ValueError for an unknown name."""
    try:
        return zoneinfo.ZoneInfo(name)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"unknown time zone {name!r}") from None


def parse_local(value: str) -> dt.datetime:
    """`YYYY-MM-DDTHH:MM[:SS]` without offset; raises ValueError otherwise."""
    parsed = dt.datetime.fromisoformat(value)
    if parsed.tzinfo is not None:
        raise ValueError("must be a local date-time without offset; the zone is time_zone")
    return parsed


def local_to_utc_us(value: str, time_zone: str) -> int:
    """A local date-time in `time_zone` as UTC microseconds. Ambiguous times
    (a DST fall-back hour) take the first occurrence; times in a spring-forward
    gap move forward, as wall clocks do."""
    local = parse_local(value).replace(tzinfo=zone(time_zone), fold=0)
    return int(local.timestamp() * 1_000_000)


def bounds_us(schedule: Schedule) -> tuple[int | None, int | None]:
    start = (
        local_to_utc_us(schedule.start_date_time, schedule.time_zone)
        if (schedule.start_date_time)
        else None
    )
    end = (
        local_to_utc_us(schedule.end_date_time, schedule.time_zone)
        if (schedule.end_date_time)
        else None
    )
    return start, end


def local_time(instant_us: int, time_zone: str) -> dt.datetime:
    return dt.datetime.fromtimestamp(instant_us / 1_000_000, tz=zone(time_zone))


def local_day(instant_us: int, time_zone: str) -> str:
    """The local date, `YYYY-MM-DD`, daily budgets and caps reset on."""
    return local_time(instant_us, time_zone).date().isoformat()


def _daypart_covers(part: Daypart, weekday: str, hour: int) -> bool:
    return (not part.days or weekday in part.days) and part.start_hour <= hour < part.end_hour


def in_daypart(schedule: Schedule, instant_us: int) -> bool:
    """Whether the dayparts let the campaign serve at this instant."""
    if not schedule.dayparts:
        return True
    local = local_time(instant_us, schedule.time_zone)
    weekday = WEEKDAYS[local.weekday()]
    return any(_daypart_covers(p, weekday, local.hour) for p in schedule.dayparts)


def active_seconds_of_day(schedule: Schedule, instant_us: int) -> tuple[float, float]:
    """(active seconds elapsed so far today, active seconds in the whole local
    day) under the dayparts and the schedule's bounds: the even pacing curve is
    elapsed / total."""
    tz = zone(schedule.time_zone)
    now = local_time(instant_us, schedule.time_zone)
    midnight = now.replace(hour=0, minute=0, second=0, microsecond=0)
    start, end = bounds_us(schedule)
    elapsed = total = 0.0
    for hour in range(24):
        # Walk the wall-clock hours of the local day (DST days have 23 or 25).
        begin = (midnight + dt.timedelta(hours=hour)).replace(tzinfo=tz)
        finish = begin + dt.timedelta(hours=1)
        weekday = WEEKDAYS[begin.weekday()]
        if schedule.dayparts and not any(
            _daypart_covers(p, weekday, hour) for p in schedule.dayparts
        ):
            continue
        lo = begin.timestamp() * 1_000_000
        hi = finish.timestamp() * 1_000_000
        if start is not None:
            lo = max(lo, start)
        if end is not None:
            hi = min(hi, end)
        if hi <= lo:
            continue
        total += (hi - lo) / 1_000_000
        elapsed += max(0.0, min(hi, instant_us) - lo) / 1_000_000
    return elapsed, total
