"""Send-time optimisation (FR-DEL-006): the hour of the day a person is most
likely to engage, from opens and clicks in `message_events`:

- `personal` (confidence 0.85): their own, once 50 messages or more were
  sent to them and they engaged at all;
- `cohort` (0.70): the recipients of the same template, with 50 engagements
  or more;
- `global` (0.60): the tenant's, with 50 engagements or more;
- `fallback`: 09:00 UTC.

A message to send at the optimal time waits for the next such hour (within
24 hours)."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from services.backends.analytics import quote_identifier, quote_literal
from services.backends.interfaces import AnalyticsStore
from services.messaging.events import TABLE

PERSONAL_MESSAGES = 50
ENOUGH = 50
FALLBACK_HOUR = 9
CONFIDENCE = {"personal": 0.85, "cohort": 0.70, "global": 0.60, "fallback": 0.0}
ENGAGED = "('opened', 'clicked')"


@dataclass(frozen=True, slots=True)
class SendTime:
    at_us: int
    method: str
    confidence: float


async def _top_hour(store: AnalyticsStore, where: str) -> tuple[int, int] | None:
    """(best UTC hour, engagements in all) of the matching events."""
    rows = await store.query(
        "SELECT toHour(event_time) AS h, count() AS c, sum(count()) OVER () AS total "
        f"FROM {quote_identifier(TABLE)} WHERE {where} AND event_type IN {ENGAGED} "
        "GROUP BY h ORDER BY c DESC, h LIMIT 1"
    )
    if not rows:
        return None
    return int(rows[0][0]), int(rows[0][2])


async def best_time(
    store: AnalyticsStore, tenant_id: str, profile_id: str, template_id: str, now_us: int
) -> SendTime:
    tenant = f"tenant_id = {quote_literal(tenant_id)}"
    hour, method = FALLBACK_HOUR, "fallback"
    try:
        if profile_id:
            sent = await store.query(
                f"SELECT count() FROM {quote_identifier(TABLE)} WHERE {tenant} AND "
                f"profile_id = {quote_literal(profile_id)} AND event_type = 'sent'"
            )
            if sent and int(sent[0][0]) >= PERSONAL_MESSAGES:
                found = await _top_hour(
                    store, f"{tenant} AND profile_id = {quote_literal(profile_id)}"
                )
                if found is not None:
                    hour, method = found[0], "personal"
        if method == "fallback":
            found = await _top_hour(
                store, f"{tenant} AND template_id = {quote_literal(template_id)}"
            )
            if found is not None and found[1] >= ENOUGH:
                hour, method = found[0], "cohort"
        if method == "fallback":
            found = await _top_hour(store, tenant)
            if found is not None and found[1] >= ENOUGH:
                hour, method = found[0], "global"
    except Exception:  # no history to read: the fallback hour
        hour, method = FALLBACK_HOUR, "fallback"
    now = dt.datetime.fromtimestamp(now_us / 1e6, dt.UTC)
    at = now.replace(hour=hour, minute=0, second=0, microsecond=0)
    if at <= now < at + dt.timedelta(hours=1):
        at = now  # within the best hour: now
    elif at <= now:
        at += dt.timedelta(days=1)
    return SendTime(int(at.timestamp() * 1_000_000), method, CONFIDENCE[method])
