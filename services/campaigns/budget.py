"""Budgets and pacing (FR-RPT-007..011): the spend ledger fed by delivery
notices, total and daily spend, the even pacing curve and its throttle,
budget alerts, and performance metrics.

Spend semantics (what one bid costs):
- Every notice is stored once per (campaign, bid id, type): a retried notice
  is a no-op and is not counted again.
- A bid's spend is its BILLING price when a billing notice arrived, else its
  WIN price: BILLING supersedes WIN, never adds to it. A bid is one
  impression whether it has a WIN, a BILLING or both.
- A bid's spend counts on the local day (the campaign's time zone) of the
  earliest of its WIN/BILLING notices; CLICK and CONVERSION count on their own
  local day. CONVERSION amounts are revenue, not spend.

The ledger is the `delivery_events` table (the facts); `spend_days` rolls it up
per campaign and local day in the same transaction, so budget checks read a
handful of rows. Recording serialises per campaign (row locks on PostgreSQL,
the single writer on SQLite), so a WIN and a BILLING of one bid arriving in
concurrent batches can never both be counted.

Domain code only: the servicer converts protos to and from the dataclasses
here."""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
import uuid
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

import orjson
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection

from services.campaigns import pacing, store
from services.campaigns.domain import Campaigns
from services.campaigns.events import CampaignEvent, CampaignEvents
from services.campaigns.model import Campaign, Money, Schedule
from services.campaigns.schedule import (
    active_seconds_of_day,
    bounds_us,
    in_daypart,
    local_day,
    zone,
)
from services.campaigns.tables import budget_alerts, campaigns, delivery_events, spend_days
from services.campaigns.validation import MAX_BUDGET_MICROS, MAX_CPM_MICROS
from services.common import names, pagination
from services.common.call import Principal
from services.common.errors import FieldViolation, InvalidArgument, NotFound, collect
from services.common.loopmetrics import Counter
from services.common.pagination import PageTokens
from services.db import Database

log = logging.getLogger(__name__)

EVENT_TYPES = ("WIN", "BILLING", "CLICK", "CONVERSION")
SPEND_TYPES = ("WIN", "BILLING")
ALERT_TYPES = (
    "NEARING_LIMIT",
    "OVER_TOTAL_BUDGET",
    "OVER_DAILY_BUDGET",
    "PACING_BEHIND",
    "PACING_AHEAD",
)
MAX_EVENTS = 10_000
MAX_BID_ID = 200
# A notice may be stamped a little ahead of this server's clock (skew), not more.
MAX_FUTURE_US = 3600 * 1_000_000
NEARING_FRACTION = 0.8
ALERT_SUBJECT_PREFIX = "campaign-express.budget-alerts"
# Rows per INSERT statement (9 columns: well under both engines' parameter limits).
_CHUNK = 1000


def alert_subject(tenant_id: str) -> str:
    """Bus subject budget alerts of a tenant are published on."""
    return f"{ALERT_SUBJECT_PREFIX}.{tenant_id}"


# -- inputs and outputs --------------------------------------------------------


@dataclass(frozen=True, slots=True)
class DeliveryEventIn:
    """One delivery notice for the ledger (DeliveryEvent in the API)."""

    campaign: str  # resource name, tenants/{tenant}/campaigns/{campaign}
    bid_id: str  # with `type`, makes the notice idempotent
    type: str  # WIN, BILLING, CLICK or CONVERSION
    # Price of the impression (WIN, BILLING), revenue (CONVERSION), unset for CLICK.
    amount: Money = field(default_factory=Money)
    event_time: int | None = None  # UTC microseconds; None = now


@dataclass(frozen=True, slots=True)
class BudgetStatusOut:
    """A campaign's spend, remaining budgets and pacing (BudgetStatus)."""

    campaign: str
    total_spend: Money
    daily_spend: Money  # spend on `day`
    total_remaining: Money  # floored at 0
    daily_remaining: Money  # today's budget (`daily_target`) left, floored at 0
    expected_daily_spend: Money  # where the even curve is now
    pacing_ratio: float  # daily_spend / expected_daily_spend; 0 while nothing is expected
    bid_rate: float  # probability of taking an opportunity now, 0-1
    can_bid: bool  # False once the total or the daily budget is spent
    day: str  # local date of daily_spend, YYYY-MM-DD
    # Today's budget the curve aims at: the daily budget (capped by what the
    # total leaves), or without one the total spread over the remaining days.
    daily_target: Money = field(default_factory=Money)
    pacing_mode: str = "EVEN"
    in_schedule: bool = True  # inside the schedule and a daypart now


@dataclass(frozen=True, slots=True)
class BudgetAlertOut:
    """A raised budget alert (BudgetAlert)."""

    id: str
    tenant_id: str
    campaign_id: str
    type: str  # one of ALERT_TYPES
    day: str  # local date for daily alerts (OVER_DAILY_BUDGET, PACING_*), "" otherwise
    spend: Money  # spend when raised
    threshold: Money  # the limit or expected spend it was compared with
    message: str
    create_time: int  # UTC microseconds

    @property
    def name(self) -> str:
        return f"tenants/{self.tenant_id}/budgetAlerts/{self.id}"

    @property
    def campaign(self) -> str:
        return f"tenants/{self.tenant_id}/campaigns/{self.campaign_id}"


@dataclass(frozen=True, slots=True)
class MetricsOut:
    """Delivery counts and cost metrics (CampaignMetrics); every ratio is 0
    when its denominator is 0."""

    campaign: str
    impressions: int
    clicks: int
    conversions: int
    spend: Money
    revenue: Money
    roas: float  # revenue / spend
    roi_percent: float  # (revenue - spend) / spend x 100
    cpa: Money  # spend / conversions
    cpc: Money  # spend / clicks
    cpm: Money  # spend / impressions x 1000
    ctr: float  # clicks / impressions


# -- pure helpers --------------------------------------------------------------


def _ratio(numerator: float, denominator: float) -> float:
    return numerator / denominator if denominator else 0.0


def _per(spend_micros: int, count: int, scale: int = 1) -> int:
    return round(spend_micros * scale / count) if count else 0


def compute_metrics(
    campaign: str,
    currency: str,
    *,
    impressions: int,
    clicks: int,
    conversions: int,
    spend_micros: int,
    revenue_micros: int,
) -> MetricsOut:
    """The metric formulas, zero denominators giving 0."""
    return MetricsOut(
        campaign=campaign,
        impressions=impressions,
        clicks=clicks,
        conversions=conversions,
        spend=Money(currency, spend_micros),
        revenue=Money(currency, revenue_micros),
        roas=_ratio(revenue_micros, spend_micros),
        roi_percent=_ratio((revenue_micros - spend_micros) * 100, spend_micros),
        cpa=Money(currency, _per(spend_micros, conversions)),
        cpc=Money(currency, _per(spend_micros, clicks)),
        cpm=Money(currency, _per(spend_micros, impressions, 1000)),
        ctr=_ratio(clicks, impressions),
    )


def _bid_spend(rows: Iterable[tuple[str, str, int]]) -> tuple[str, int] | None:
    """(day, spend) of one bid from its (type, day, amount) WIN/BILLING rows:
    the earliest day, the BILLING amount if any, else the WIN amount."""
    found = list(rows)
    if not found:
        return None
    day = min(d for _, d, _ in found)
    billing = [a for t, _, a in found if t == "BILLING"]
    return day, (billing[0] if billing else next(a for t, _, a in found if t == "WIN"))


def _schedule_key(schedule: Schedule) -> tuple[Any, ...]:
    return (
        schedule.time_zone,
        schedule.start_date_time,
        schedule.end_date_time,
        tuple((tuple(p.days), p.start_hour, p.end_hour) for p in schedule.dayparts),
    )


@lru_cache(maxsize=4096)
def _day_active_seconds(key: tuple[Any, ...], day: str) -> float:
    tz, start, end, parts = key
    from services.campaigns.model import Daypart

    schedule = Schedule(
        start_date_time=start,
        end_date_time=end,
        time_zone=tz,
        dayparts=[Daypart(days=list(d), start_hour=s, end_hour=e) for d, s, e in parts],
    )
    noon = dt.datetime.combine(dt.date.fromisoformat(day), dt.time(12), tzinfo=zone(tz))
    return active_seconds_of_day(schedule, int(noon.timestamp() * 1_000_000))[1]


# Longest stretch of days the spread of a total budget looks at.
_MAX_SPREAD_DAYS = 3660


@lru_cache(maxsize=4096)
def _active_seconds_from(key: tuple[Any, ...], day: str, end_day: str) -> float:
    """Active seconds from the start of local `day` to the schedule's end."""
    total = 0.0
    current = dt.date.fromisoformat(day)
    last = dt.date.fromisoformat(end_day)
    for _ in range(_MAX_SPREAD_DAYS):
        if current > last:
            break
        total += _day_active_seconds(key, current.isoformat())
        current += dt.timedelta(days=1)
    return total


def daily_target(campaign: Campaign, total_spend: int, today_spend: int, now: int) -> int:
    """Today's budget in micros, the amount the even curve ends the day at:
    - with a daily budget: the daily budget, capped by what the total leaves;
    - ASAP without one: what the total leaves;
    - EVEN without one: what the total left at the start of today, spread over
      the active time from today to the schedule's end (today's share)."""
    spec = campaign.spec
    left = max(0, spec.budget.total.amount_micros - (total_spend - today_spend))
    if spec.budget.daily.is_set:
        return min(spec.budget.daily.amount_micros, left)
    if spec.pacing_mode == "ASAP":
        return left
    schedule = spec.schedule
    key = _schedule_key(schedule)
    today = local_day(now, schedule.time_zone)
    today_active = _day_active_seconds(key, today)
    if today_active <= 0:
        return 0
    _, end = bounds_us(schedule)
    end_day = local_day(end - 1, schedule.time_zone) if end is not None else today
    remaining = _active_seconds_from(key, today, max(end_day, today))
    if remaining <= 0:
        return left
    return round(left * today_active / remaining)


def budget_allows(campaign: Campaign, total_spend: int, today_spend: int) -> bool:
    """The hard caps: False once the total, or today's daily budget, is spent."""
    budget = campaign.spec.budget
    if budget.total.is_set and total_spend >= budget.total.amount_micros:
        return False
    return not (budget.daily.is_set and today_spend >= budget.daily.amount_micros)


def budget_status(
    campaign: Campaign,
    total_spend: int,
    today_spend: int,
    now: int,
    pacer: pacing.PacerState | None,
) -> tuple[BudgetStatusOut, pacing.PacerState | None]:
    """The budget status at `now` from known spend, pure: caps, the even
    curve, and the bid rate: 0 when a cap is hit or outside the schedule and
    its dayparts, 1 under ASAP, the pacing throttle under EVEN (ticked from
    `pacer`; the new throttle state is returned, None for ASAP)."""
    spec = campaign.spec
    schedule = spec.schedule
    currency = spec.budget.total.currency_code
    day = local_day(now, schedule.time_zone)
    target = daily_target(campaign, total_spend, today_spend, now)
    elapsed, total_s = active_seconds_of_day(schedule, now)
    expected = pacing.expected_spend(target, elapsed, total_s)
    allows = budget_allows(campaign, total_spend, today_spend)
    start, end = bounds_us(schedule)
    in_schedule = (
        (start is None or now >= start) and (end is None or now < end) and in_daypart(schedule, now)
    )
    state: pacing.PacerState | None = None
    if spec.pacing_mode == "ASAP":
        rate = 1.0
    else:
        state = pacing.tick(
            pacer or pacing.PacerState(),
            day=day,
            spend_micros=today_spend,
            target_micros=target,
            elapsed_s=elapsed,
            total_s=total_s,
        )
        rate = state.bid_rate
    if not allows or not in_schedule:
        rate = 0.0
        if state is not None:
            state = dataclasses.replace(state, bid_rate=0.0)  # the rate actually in force
    total_budget = spec.budget.total.amount_micros
    status = BudgetStatusOut(
        campaign=campaign.name,
        total_spend=Money(currency, total_spend),
        daily_spend=Money(currency, today_spend),
        total_remaining=Money(currency, max(0, total_budget - total_spend)),
        daily_remaining=Money(currency, max(0, target - today_spend)),
        expected_daily_spend=Money(currency, expected),
        pacing_ratio=pacing.pacing_ratio(today_spend, expected),
        bid_rate=rate,
        can_bid=allows,
        day=day,
        daily_target=Money(currency, target),
        pacing_mode=spec.pacing_mode,
        in_schedule=in_schedule,
    )
    return status, state


@dataclass(frozen=True, slots=True)
class _Spend:
    total: int
    today: int


@dataclass(slots=True)
class _Delta:
    spend: int = 0
    impressions: int = 0
    clicks: int = 0
    conversions: int = 0
    revenue: int = 0


def _insert(conn: AsyncConnection, table: sa.Table) -> Any:
    """A dialect INSERT that knows ON CONFLICT (PostgreSQL and SQLite agree)."""
    if conn.dialect.name == "postgresql":
        return postgresql.insert(table)
    return sqlite.insert(table)


class Budgets:
    """The spend ledger, budget status and pacing, alerts and metrics.

    `clock` returns UTC microseconds. The pacing throttle's state lives in
    this object (one per process): each process paces on the shared ledger."""

    def __init__(
        self,
        db: Database,
        campaigns_domain: Campaigns,
        events: CampaignEvents,
        clock: Callable[[], int],
        *,
        page_tokens: PageTokens,
    ) -> None:
        self._db = db
        self._pages = page_tokens
        self._campaigns = campaigns_domain
        self._events = events
        self._clock = clock
        self._pacers: dict[str, pacing.PacerState] = {}
        self._last_can_bid: dict[str, bool] = {}
        #: Alerts raised by this process, by type (set by the module with
        #: the process's registry): the budget alert rules read it.
        self.alerts_raised: Counter | None = None

    # -- recording ---------------------------------------------------------

    async def record_events(
        self, caller: Principal | None, parent: str, events: Sequence[DeliveryEventIn]
    ) -> int:
        """Record delivery notices of tenant `parent` (`tenants/{tenant}`);
        returns how many were new (retried duplicates are not counted).

        Every event is checked first and all problems are reported at once
        (INVALID_ARGUMENT with paths like `events[3].amount.amount_micros`);
        a campaign of another tenant is PERMISSION_DENIED. Then, atomically:
        the new notices are stored, the spend rollup moves, and alerts are
        raised once each. After the commit, new alerts are published on
        `campaign-express.budget-alerts.<tenant>` and a `budget.changed`
        campaign event goes out for each campaign whose can-bid state flipped.
        `caller` None is an internal caller (the bidder in this process)."""
        if caller is not None:
            names.require_same_tenant(parent, "parent", caller.tenant_id)
        (tenant_id,) = names.parse_name(parent, "parent", "tenants")
        if len(events) > MAX_EVENTS:
            raise InvalidArgument.field("events", f"at most {MAX_EVENTS:,} events per call")
        if not events:
            return 0
        now = self._clock()
        campaign_ids, bad_names = self._check_names(tenant_id, events)
        new_alerts: list[BudgetAlertOut] = []
        flips: list[Campaign] = []
        async with self._db.engine.begin() as conn:
            loaded = await self._lock_campaigns(conn, tenant_id, sorted(set(campaign_ids) - {""}))
            rows = self._checked_rows(tenant_id, events, campaign_ids, loaded, now, bad_names)
            new_keys = await self._insert_events(conn, rows)
            if not new_keys:
                return 0
            new_rows = [r for r in rows if (r["campaign_id"], r["bid_id"], r["type"]) in new_keys]
            deltas = await self._deltas(conn, new_rows)
            affected = sorted({cid for cid, _ in deltas})
            today = {cid: local_day(now, loaded[cid].spec.schedule.time_zone) for cid in affected}
            days_of: dict[str, set[str]] = defaultdict(set)
            for cid, day in deltas:
                days_of[cid].add(day)
            before = await self._day_spend(
                conn, [(cid, d) for cid in affected for d in days_of[cid] | {today[cid]}]
            )
            totals_before = await self._total_spend(conn, affected)
            await self._apply(conn, tenant_id, deltas)
            for cid in affected:
                campaign = loaded[cid]
                total_before = totals_before.get(cid, 0)
                total_after = total_before + sum(
                    d.spend for (c, _), d in deltas.items() if c == cid
                )
                after = {
                    day: before.get((cid, day), 0)
                    + (deltas[(cid, day)].spend if (cid, day) in deltas else 0)
                    for day in days_of[cid] | {today[cid]}
                }
                was = budget_allows(campaign, total_before, before.get((cid, today[cid]), 0))
                allows = budget_allows(campaign, total_after, after[today[cid]])
                if was != allows:
                    flips.append(campaign)
                self._last_can_bid[cid] = allows
                candidates = self._alert_candidates(
                    campaign,
                    total_after,
                    {day: after[day] for day in days_of[cid]},
                    after[today[cid]],
                    now,
                )
                new_alerts += await self._raise(conn, candidates)
        await self._publish(new_alerts, flips, now)
        return len(new_keys)

    def _check_names(
        self, tenant_id: str, events: Sequence[DeliveryEventIn]
    ) -> tuple[list[str], list[FieldViolation]]:
        """Campaign ids of the events ("" for a malformed name, reported in
        the violations); another tenant's campaign is PERMISSION_DENIED."""
        ids: list[str] = []
        violations: list[FieldViolation] = []
        for i, event in enumerate(events):
            path = f"events[{i}].campaign"
            try:
                names.require_same_tenant(event.campaign, path, tenant_id)
                _, campaign_id = names.parse_name(event.campaign, path, "tenants", "campaigns")
            except InvalidArgument as exc:
                violations += exc.field_violations
                ids.append("")
                continue
            ids.append(campaign_id)
        return ids, violations

    async def _lock_campaigns(
        self, conn: AsyncConnection, tenant_id: str, campaign_ids: list[str]
    ) -> dict[str, Campaign]:
        """Load the campaigns, locking their rows on PostgreSQL (in id order,
        so concurrent batches never deadlock) so recording serialises per
        campaign. SQLite needs no lock: it has one writer at a time."""
        found: dict[str, Campaign] = {}
        for start in range(0, len(campaign_ids), _CHUNK):
            chunk = campaign_ids[start : start + _CHUNK]
            query = (
                campaigns.select()
                .where(campaigns.c.tenant_id == tenant_id, campaigns.c.id.in_(chunk))
                .order_by(campaigns.c.id)
            )
            if conn.dialect.name == "postgresql":
                query = query.with_for_update()
            for row in (await conn.execute(query)).all():
                campaign = store.campaign_from_row(row)
                found[campaign.id] = campaign
        return found

    def _checked_rows(
        self,
        tenant_id: str,
        events: Sequence[DeliveryEventIn],
        campaign_ids: list[str],
        loaded: dict[str, Campaign],
        now: int,
        violations: list[FieldViolation],
    ) -> list[dict[str, Any]]:
        """Check every event (all problems at once) and build its ledger row."""
        rows: list[dict[str, Any]] = []
        seen: set[tuple[str, str, str]] = set()
        for i, (event, cid) in enumerate(zip(events, campaign_ids, strict=True)):
            path = f"events[{i}]"
            if not cid:
                continue  # a malformed name, already reported
            campaign = loaded.get(cid)
            if campaign is None:
                violations.append(FieldViolation(f"{path}.campaign", f"{event.campaign} not found"))
                continue
            before = len(violations)
            if event.type not in EVENT_TYPES:
                violations.append(
                    FieldViolation(f"{path}.type", f"must be one of {', '.join(EVENT_TYPES)}")
                )
            if not event.bid_id.strip():
                violations.append(FieldViolation(f"{path}.bid_id", "is required"))
            elif len(event.bid_id) > MAX_BID_ID:
                violations.append(
                    FieldViolation(f"{path}.bid_id", f"must be at most {MAX_BID_ID} characters")
                )
            violations += _check_amount(path, event, campaign.spec.budget.total.currency_code)
            when = now if event.event_time is None else event.event_time
            if when <= 0:
                violations.append(FieldViolation(f"{path}.event_time", "must be after 1970"))
            elif when > now + MAX_FUTURE_US:
                violations.append(FieldViolation(f"{path}.event_time", "is in the future"))
            if len(violations) > before:
                continue
            key = (cid, event.bid_id, event.type)
            if key in seen:
                continue  # the same notice twice in one batch counts once
            seen.add(key)
            rows.append(
                {
                    "campaign_id": cid,
                    "bid_id": event.bid_id,
                    "type": event.type,
                    "tenant_id": tenant_id,
                    "amount_micros": event.amount.amount_micros,
                    "currency": campaign.spec.budget.total.currency_code,
                    "event_time": when,
                    "day": local_day(when, campaign.spec.schedule.time_zone),
                }
            )
        collect(violations)
        return rows

    async def _insert_events(
        self, conn: AsyncConnection, rows: list[dict[str, Any]]
    ) -> set[tuple[str, str, str]]:
        """Insert, ignoring notices already stored; the keys actually inserted."""
        new: set[tuple[str, str, str]] = set()
        c = delivery_events.c
        for start in range(0, len(rows), _CHUNK):
            statement = (
                _insert(conn, delivery_events)
                .values(rows[start : start + _CHUNK])
                .on_conflict_do_nothing(index_elements=["campaign_id", "bid_id", "type"])
                .returning(c.campaign_id, c.bid_id, c.type)
            )
            new.update(
                (r.campaign_id, r.bid_id, r.type) for r in (await conn.execute(statement)).all()
            )
        return new

    async def _deltas(
        self, conn: AsyncConnection, new_rows: list[dict[str, Any]]
    ) -> dict[tuple[str, str], _Delta]:
        """How the rollup of each (campaign, day) moves with these new rows."""
        deltas: dict[tuple[str, str], _Delta] = defaultdict(_Delta)
        spend_new: set[tuple[str, str, str]] = set()
        for row in new_rows:
            key = (row["campaign_id"], row["day"])
            if row["type"] == "CLICK":
                deltas[key].clicks += 1
            elif row["type"] == "CONVERSION":
                deltas[key].conversions += 1
                deltas[key].revenue += row["amount_micros"]
            else:
                spend_new.add((row["campaign_id"], row["bid_id"], row["type"]))
        bids = sorted({(cid, bid) for cid, bid, _ in spend_new})
        c = delivery_events.c
        siblings: dict[tuple[str, str], list[tuple[str, str, int, bool]]] = defaultdict(list)
        for start in range(0, len(bids), 500):
            chunk = bids[start : start + 500]
            query = sa.select(c.campaign_id, c.bid_id, c.type, c.day, c.amount_micros).where(
                sa.tuple_(c.campaign_id, c.bid_id).in_(chunk), c.type.in_(SPEND_TYPES)
            )
            for r in (await conn.execute(query)).all():
                is_new = (r.campaign_id, r.bid_id, r.type) in spend_new
                siblings[(r.campaign_id, r.bid_id)].append((r.type, r.day, r.amount_micros, is_new))
        for (cid, _), found in siblings.items():
            old = _bid_spend((t, d, a) for t, d, a, is_new in found if not is_new)
            new = _bid_spend((t, d, a) for t, d, a, _ in found)
            if old == new:
                continue
            if old is not None:
                deltas[(cid, old[0])].spend -= old[1]
                deltas[(cid, old[0])].impressions -= 1
            if new is not None:
                deltas[(cid, new[0])].spend += new[1]
                deltas[(cid, new[0])].impressions += 1
        return {k: v for k, v in deltas.items() if dataclasses.astuple(v) != (0, 0, 0, 0, 0)}

    async def _apply(
        self, conn: AsyncConnection, tenant_id: str, deltas: dict[tuple[str, str], _Delta]
    ) -> None:
        for (cid, day), d in sorted(deltas.items()):
            statement = _insert(conn, spend_days).values(
                campaign_id=cid,
                day=day,
                tenant_id=tenant_id,
                spend_micros=d.spend,
                impressions=d.impressions,
                clicks=d.clicks,
                conversions=d.conversions,
                revenue_micros=d.revenue,
            )
            s = spend_days.c
            ex = statement.excluded
            await conn.execute(
                statement.on_conflict_do_update(
                    index_elements=["campaign_id", "day"],
                    set_={
                        "spend_micros": s.spend_micros + ex.spend_micros,
                        "impressions": s.impressions + ex.impressions,
                        "clicks": s.clicks + ex.clicks,
                        "conversions": s.conversions + ex.conversions,
                        "revenue_micros": s.revenue_micros + ex.revenue_micros,
                    },
                )
            )

    # -- reading spend -------------------------------------------------------

    async def _day_spend(
        self, conn: AsyncConnection, keys: Sequence[tuple[str, str]]
    ) -> dict[tuple[str, str], int]:
        found: dict[tuple[str, str], int] = {}
        s = spend_days.c
        ordered = sorted(set(keys))
        for start in range(0, len(ordered), 500):
            chunk = ordered[start : start + 500]
            query = sa.select(s.campaign_id, s.day, s.spend_micros).where(
                sa.tuple_(s.campaign_id, s.day).in_(chunk)
            )
            for r in (await conn.execute(query)).all():
                found[(r.campaign_id, r.day)] = int(r.spend_micros)
        return found

    async def _total_spend(
        self, conn: AsyncConnection, campaign_ids: Sequence[str]
    ) -> dict[str, int]:
        found: dict[str, int] = {}
        s = spend_days.c
        ordered = sorted(set(campaign_ids))
        for start in range(0, len(ordered), 500):
            query = (
                sa.select(s.campaign_id, sa.func.sum(s.spend_micros))
                .where(s.campaign_id.in_(ordered[start : start + 500]))
                .group_by(s.campaign_id)
            )
            for cid, total in (await conn.execute(query)).all():
                found[cid] = int(total or 0)
        return found

    async def _spend_of(self, campaigns_: Sequence[Campaign], now: int) -> dict[str, _Spend]:
        """Total and today's (local) spend of each campaign."""
        if not campaigns_:
            return {}
        today = {c.id: local_day(now, c.spec.schedule.time_zone) for c in campaigns_}
        async with self._db.engine.connect() as conn:
            totals = await self._total_spend(conn, list(today))
            days = await self._day_spend(conn, list(today.items()))
        return {
            cid: _Spend(totals.get(cid, 0), days.get((cid, day), 0)) for cid, day in today.items()
        }

    async def _campaign(self, caller: Principal | None, name: str, field_name: str) -> Campaign:
        if caller is not None:
            names.require_same_tenant(name, field_name, caller.tenant_id)
        tenant_id, campaign_id = names.parse_name(name, field_name, "tenants", "campaigns")
        campaign = await self._campaigns.find(tenant_id, campaign_id)
        if campaign is None:
            raise NotFound(f"{name} not found", metadata={"resource": name})
        return campaign

    # -- status and pacing ---------------------------------------------------

    async def status(
        self, caller: Principal | None, campaign_name: str, now: int | None = None
    ) -> BudgetStatusOut:
        """Spend, remaining budgets and pacing of one campaign at `now`
        (default: the clock). Reading it also ticks the pacing throttle."""
        campaign = await self._campaign(caller, campaign_name, "campaign")
        at = self._clock() if now is None else now
        spend = (await self._spend_of([campaign], at))[campaign.id]
        return self.evaluate(campaign, spend.total, spend.today, at)

    def evaluate(
        self, campaign: Campaign, total_spend: int, today_spend: int, now: int
    ) -> BudgetStatusOut:
        """Budget status from known spend (no database); advances this
        process's pacing throttle for the campaign."""
        result, state = budget_status(
            campaign, total_spend, today_spend, now, self._pacers.get(campaign.id)
        )
        if state is not None:
            self._pacers[campaign.id] = state
        return result

    async def evaluate_many(
        self, campaigns_: Sequence[Campaign], now: int | None = None
    ) -> dict[str, BudgetStatusOut]:
        """`status` for many campaigns in two queries, by campaign id (no
        tenant check: for the live index). Ticks their pacing throttles."""
        at = self._clock() if now is None else now
        spend = await self._spend_of(campaigns_, at)
        return {
            c.id: self.evaluate(c, spend[c.id].total, spend[c.id].today, at) for c in campaigns_
        }

    async def can_bid(self, tenant_id: str, campaign_id: str, now: int | None = None) -> bool:
        """Whether the budgets let the campaign bid now (False for an unknown
        campaign). Two indexed reads; meant for the index and the scheduler,
        not for every bid."""
        campaign = await self._campaigns.find(tenant_id, campaign_id)
        if campaign is None:
            return False
        return (await self.can_bid_many([campaign], now))[campaign.id]

    async def can_bid_many(
        self, campaigns_: Sequence[Campaign], now: int | None = None
    ) -> dict[str, bool]:
        """`can_bid` for many campaigns in two queries, by campaign id."""
        at = self._clock() if now is None else now
        spend = await self._spend_of(campaigns_, at)
        return {c.id: budget_allows(c, spend[c.id].total, spend[c.id].today) for c in campaigns_}

    # -- alerts --------------------------------------------------------------

    def _alert_candidates(
        self,
        campaign: Campaign,
        total_spend: int,
        day_spend: dict[str, int],
        today_spend: int,
        now: int,
    ) -> list[dict[str, Any]]:
        """Alert rows the conditions call for now (inserting them raises each
        at most once: the unique (campaign, type, day))."""
        spec = campaign.spec
        currency = spec.budget.total.currency_code
        found: list[dict[str, Any]] = []

        def add(kind: str, day: str, spend: int, threshold: int, message: str) -> None:
            found.append(
                {
                    "id": f"{now:016x}{uuid.uuid4().hex[:8]}",
                    "tenant_id": campaign.tenant_id,
                    "campaign_id": campaign.id,
                    "type": kind,
                    "day": day,
                    "spend_micros": spend,
                    "threshold_micros": threshold,
                    "currency": currency,
                    "message": message[:500],
                    "create_time": now,
                }
            )

        total = spec.budget.total.amount_micros
        if total > 0:
            nearing = -(-total * 8 // 10)  # 80%, rounded up
            if total_spend >= nearing:
                add(
                    "NEARING_LIMIT",
                    "",
                    total_spend,
                    nearing,
                    f"spent {_pct(total_spend, total)} of the total budget "
                    f"{_text(total, currency)}",
                )
            if total_spend >= total:
                add(
                    "OVER_TOTAL_BUDGET",
                    "",
                    total_spend,
                    total,
                    f"total budget {_text(total, currency)} spent: bidding stops",
                )
        daily = spec.budget.daily.amount_micros if spec.budget.daily.is_set else 0
        if daily > 0:
            for day, spend in sorted(day_spend.items()):
                if spend >= daily:
                    add(
                        "OVER_DAILY_BUDGET",
                        day,
                        spend,
                        daily,
                        f"daily budget {_text(daily, currency)} spent on {day}: "
                        "bidding stops until the next local day",
                    )
        self._pacing_candidates(campaign, total_spend, today_spend, now, add)
        return found

    def _pacing_candidates(
        self,
        campaign: Campaign,
        total_spend: int,
        today_spend: int,
        now: int,
        add: Callable[[str, str, int, int, str], None],
    ) -> None:
        """PACING_BEHIND / PACING_AHEAD for EVEN campaigns inside their
        schedule, once enough of the day is active (see pacing.pacing_verdict)."""
        spec = campaign.spec
        if spec.pacing_mode != "EVEN":
            return
        start, end = bounds_us(spec.schedule)
        if (start is not None and now < start) or (end is not None and now >= end):
            return
        if not budget_allows(campaign, total_spend, today_spend):
            return  # a spent budget is its own alert, not a pacing problem
        target = daily_target(campaign, total_spend, today_spend, now)
        elapsed, total_s = active_seconds_of_day(spec.schedule, now)
        verdict = pacing.pacing_verdict(today_spend, target, elapsed, total_s)
        if verdict:
            expected = pacing.expected_spend(target, elapsed, total_s)
            currency = spec.budget.total.currency_code
            add(
                f"PACING_{verdict}",
                local_day(now, spec.schedule.time_zone),
                today_spend,
                expected,
                f"today's spend {_text(today_spend, currency)} is "
                f"{_pct(today_spend, expected)} of the even pace {_text(expected, currency)}",
            )

    async def _raise(
        self, conn: AsyncConnection, candidates: list[dict[str, Any]]
    ) -> list[BudgetAlertOut]:
        if not candidates:
            return []
        statement = (
            _insert(conn, budget_alerts)
            .values(candidates)
            .on_conflict_do_nothing(index_elements=["campaign_id", "type", "day"])
            .returning(*budget_alerts.c)
        )
        return [_alert_from_row(r) for r in (await conn.execute(statement)).all()]

    async def sweep(self, now: int | None = None) -> int:
        """Evaluate every LIVE campaign without waiting for a notice: raise
        pacing alerts (a campaign that wins nothing falls behind silently)
        and publish `budget.changed` where can-bid changed since this process
        last looked (e.g. a daily budget that reset at local midnight). Run it
        periodically next to the scheduler; returns the alerts raised."""
        at = self._clock() if now is None else now
        async with self._db.engine.connect() as conn:
            rows = (await conn.execute(campaigns.select().where(campaigns.c.stage == "LIVE"))).all()
        live = [store.campaign_from_row(r) for r in rows]
        spend = await self._spend_of(live, at)
        raised: list[BudgetAlertOut] = []
        flips: list[Campaign] = []
        for campaign in live:
            s = spend[campaign.id]
            allows = budget_allows(campaign, s.total, s.today)
            previous = self._last_can_bid.get(campaign.id)
            if previous is not None and previous != allows:
                flips.append(campaign)
            self._last_can_bid[campaign.id] = allows
            candidates = self._alert_candidates(campaign, s.total, {}, s.today, at)
            candidates = [c for c in candidates if c["type"].startswith("PACING_")]
            if candidates:
                async with self._db.engine.begin() as conn:
                    raised += await self._raise(conn, candidates)
        await self._publish(raised, flips, at)
        return len(raised)

    async def list_alerts(
        self,
        caller: Principal | None,
        parent: str,
        campaign_filter: str,
        page_size: int,
        page_token: str,
    ) -> tuple[list[BudgetAlertOut], str]:
        """Alerts of tenant `parent`, newest first; `campaign_filter` (a
        campaign name, or "") keeps one campaign's. Returns (page, next token)."""
        if caller is not None:
            names.require_same_tenant(parent, "parent", caller.tenant_id)
        (tenant_id,) = names.parse_name(parent, "parent", "tenants")
        size = names.page_size(page_size)
        scope = pagination.scope("ListBudgetAlerts", parent, campaign_filter)
        cursor = self._pages.decode(scope, page_token, "t", "id")
        a = budget_alerts.c
        query = (
            budget_alerts.select()
            .where(a.tenant_id == tenant_id)
            .order_by(a.create_time.desc(), a.id.desc())
            .limit(size + 1)
        )
        if campaign_filter:
            names.require_same_tenant(campaign_filter, "campaign", tenant_id)
            _, campaign_id = names.parse_name(campaign_filter, "campaign", "tenants", "campaigns")
            query = query.where(a.campaign_id == campaign_id)
        if cursor:
            t, last = int(cursor["t"]), str(cursor["id"])
            query = query.where(sa.or_(a.create_time < t, sa.and_(a.create_time == t, a.id < last)))
        async with self._db.engine.connect() as conn:
            found = [_alert_from_row(r) for r in (await conn.execute(query)).all()]
        token = ""
        if len(found) > size:
            last_alert = found[size - 1]
            token = self._pages.encode(scope, {"t": last_alert.create_time, "id": last_alert.id})
        return found[:size], token

    # -- metrics -------------------------------------------------------------

    async def metrics(self, caller: Principal | None, campaign_name: str) -> MetricsOut:
        """Lifetime delivery counts, spend, revenue and the ratios."""
        campaign = await self._campaign(caller, campaign_name, "campaign")
        s = spend_days.c
        query = sa.select(
            sa.func.coalesce(sa.func.sum(s.impressions), 0),
            sa.func.coalesce(sa.func.sum(s.clicks), 0),
            sa.func.coalesce(sa.func.sum(s.conversions), 0),
            sa.func.coalesce(sa.func.sum(s.spend_micros), 0),
            sa.func.coalesce(sa.func.sum(s.revenue_micros), 0),
        ).where(s.campaign_id == campaign.id)
        async with self._db.engine.connect() as conn:
            impressions, clicks, conversions, spend, revenue = (await conn.execute(query)).one()
        return compute_metrics(
            campaign.name,
            campaign.spec.budget.total.currency_code,
            impressions=int(impressions),
            clicks=int(clicks),
            conversions=int(conversions),
            spend_micros=int(spend),
            revenue_micros=int(revenue),
        )

    # -- publishing ----------------------------------------------------------

    async def _publish(self, alerts: list[BudgetAlertOut], flips: list[Campaign], now: int) -> None:
        """Best effort, after the commit: alerts stay listed by the RPC and
        the index's periodic refresh repairs a lost budget.changed."""
        for alert in alerts:
            if self.alerts_raised is not None:  # CampaignBudgetExceeded's metric
                self.alerts_raised.labels(alert.type).inc()
            await self._events.publisher.publish(
                alert_subject(alert.tenant_id), _alert_payload(alert)
            )
        for campaign in flips:
            await self._events.publish(
                CampaignEvent(
                    "budget.changed",
                    campaign.tenant_id,
                    campaign.name,
                    stage=campaign.stage,
                    revision=campaign.revision,
                    time=now,
                )
            )


def _check_amount(path: str, event: DeliveryEventIn, currency: str) -> list[FieldViolation]:
    v: list[FieldViolation] = []
    amount = event.amount
    where = f"{path}.amount"
    if event.type == "CLICK":
        if amount.amount_micros != 0:
            v.append(FieldViolation(f"{where}.amount_micros", "a CLICK carries no amount"))
        if amount.currency_code and amount.currency_code != currency:
            v.append(FieldViolation(f"{where}.currency_code", f"must be {currency}"))
        return v
    if event.type not in EVENT_TYPES:
        return v
    if not amount.is_set and event.type in SPEND_TYPES:
        v.append(FieldViolation(where, f"a {event.type} needs the price paid"))
        return v
    if amount.currency_code != currency:
        v.append(
            FieldViolation(
                f"{where}.currency_code", f"must be the campaign's budget currency {currency}"
            )
        )
    upper = MAX_CPM_MICROS if event.type in SPEND_TYPES else MAX_BUDGET_MICROS
    if amount.amount_micros < 0:
        v.append(FieldViolation(f"{where}.amount_micros", "must not be negative"))
    elif amount.amount_micros > upper:
        v.append(FieldViolation(f"{where}.amount_micros", f"must be at most {upper}"))
    return v


def _alert_from_row(row: Any) -> BudgetAlertOut:
    m = row._mapping
    return BudgetAlertOut(
        id=m["id"],
        tenant_id=m["tenant_id"],
        campaign_id=m["campaign_id"],
        type=m["type"],
        day=m["day"],
        spend=Money(m["currency"], int(m["spend_micros"])),
        threshold=Money(m["currency"], int(m["threshold_micros"])),
        message=m["message"],
        create_time=int(m["create_time"]),
    )


def _alert_payload(alert: BudgetAlertOut) -> bytes:
    return orjson.dumps(
        {
            "name": alert.name,
            "campaign": alert.campaign,
            "type": alert.type,
            "day": alert.day,
            "spend": dataclasses.asdict(alert.spend),
            "threshold": dataclasses.asdict(alert.threshold),
            "message": alert.message,
            "create_time": alert.create_time,
        }
    )


def _text(micros: int, currency: str) -> str:
    return f"{micros / 1_000_000:,.2f} {currency}"


def _pct(part: int, whole: int) -> str:
    return f"{part * 100 / whole:.0f}%" if whole else "0%"
