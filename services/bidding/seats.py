"""Exchange seats: the exchanges and SSPs that send a tenant bid requests,
each with an API key bound to it, a QPS limit and defaults for its requests.

A bid made with a seat's key (REST `/v1/bid`, ProcessBid, StreamBids) is
governed by its seat, in this order:

1. QPS: a token bucket per seat in the hot store (Redis when set: every
   process and node shares it), refilled at `qps_limit` per second, holding
   one second's worth. Over it: a no-bid `SEAT_QPS_EXCEEDED` (recorded like
   any no-bid) or RESOURCE_EXHAUSTED (HTTP 429), as the seat says. While
   the hot store does not answer within 20 ms, each process keeps the
   seat's bucket in its own memory (a fleet of N processes then lets up to
   N times the limit through; a bid is never held up waiting).
2. Defaults: `tmax` and the bid currency for requests without them; GDPR
   applying, or COPPA, for requests that do not say.
3. Formats: impressions of formats the seat does not take are left out; a
   request left with none is a no-bid `FORMAT_NOT_ALLOWED`.
4. Floors: each impression's floor is the higher of the request's and the
   seat's (converted to the impression's floor currency).
5. Bid adjustment: every price is multiplied by it before floors are
   checked (auction.run_auction's `price_factor`).

Bid events carry the seat's id as their `source`: the seat's report counts
them. A key's seat is cached for CACHE_SECONDS (a change made in this
process applies at once) and read again in the background when stale: a bid
never waits on the database but for a key's first bid in a process (at most
FIRST_LOOKUP_SECONDS; a database that does not answer by then leaves the
key seatless until it does)."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from prometheus_client import CollectorRegistry
from sqlalchemy.exc import IntegrityError

from campaignexpress.openrtb.v2 import openrtb_pb2 as rtb
from services.backends.analytics import quote_literal, table_exists
from services.backends.interfaces import AnalyticsStore, KeyValueStore
from services.backends.kv import MemoryKeyValueStore
from services.backends.outages import is_backend_outage
from services.bidding.currency import Rates
from services.bidding.tables import bidding_exchange_seats
from services.common import names
from services.common.call import Principal
from services.common.clock import now_us
from services.common.errors import (
    AlreadyExists,
    FieldViolation,
    InvalidArgument,
    NotFound,
    ResourceExhausted,
    collect,
)
from services.common.loopmetrics import Counter
from services.common.pagination import PageTokens, scope

log = logging.getLogger(__name__)

FORMATS = ("banner", "video", "native", "audio")
OVER_LIMIT = ("no_bid", "reject")
MAX_QPS = 1_000_000
MAX_FLOOR_CPM = 1000.0
CACHE_SECONDS = 5.0
#: The most a key's first bid in a process waits to learn its seat.
FIRST_LOOKUP_SECONDS = 0.25
#: The most a bid waits for its seat's QPS token from the hot store.
QPS_BUDGET_SECONDS = 0.02
MAX_REPORT_HOURS = 720
SETTABLE = (
    "display_name", "qps_limit", "over_limit", "default_tmax_ms", "currency", "formats",
    "floor_cpm", "bid_adjustment", "gdpr_applies_by_default", "coppa_by_default",
)  # fmt: skip


@dataclass(frozen=True, slots=True)
class Seat:
    tenant_id: str
    id: str
    display_name: str
    api_key: str = ""
    qps_limit: int = 0
    over_limit: str = "no_bid"
    default_tmax_ms: int = 0
    currency: str = ""
    formats: tuple[str, ...] = ()
    floor_cpm: float = 0.0
    bid_adjustment: float = 1.0
    gdpr_applies_by_default: bool = False
    coppa_by_default: bool = False
    create_time: int = 0
    update_time: int = 0

    @property
    def name(self) -> str:
        return f"tenants/{self.tenant_id}/exchangeSeats/{self.id}"

    @property
    def shapes_requests(self) -> bool:
        return bool(
            self.default_tmax_ms or self.currency or self.formats or self.floor_cpm
            or self.gdpr_applies_by_default or self.coppa_by_default
        )  # fmt: skip


@dataclass(frozen=True, slots=True)
class Report:
    hours: int
    requests: int
    requests_bid: int
    bids: int
    mean_bid_cpm: float
    no_bids: tuple[tuple[str, int], ...]


def _row_seat(row: Any) -> Seat:
    values = {f.name: getattr(row, f.name) for f in dataclasses.fields(Seat)}
    values["formats"] = tuple(values["formats"] or ())
    return Seat(**values)


def _formats_of(imp: rtb.Imp) -> list[str]:
    return [f for f in FORMATS if imp.HasField(f)]  # type: ignore[arg-type]


class SeatMetrics:
    def __init__(self, registry: CollectorRegistry | None) -> None:
        self.requests = Counter(
            "campaign_express_seat_requests",
            "Bid requests made with an exchange seat's key, by seat and outcome "
            "(admitted, over_qps).",
            ["tenant", "seat", "outcome"],
            registry=registry,
        )


class Seats:
    def __init__(
        self,
        db: Any,
        pages: PageTokens,
        hot_store: KeyValueStore,
        rates: Rates,
        *,
        analytics: AnalyticsStore | None = None,
        clock: Callable[[], int] = now_us,
        metrics_registry: CollectorRegistry | None = None,
        report_outage: Callable[[BaseException], None] | None = None,
    ) -> None:
        self._db = db
        self._pages = pages
        self._hot = hot_store
        #: The seats' buckets while the hot store does not answer.
        self._local_buckets = MemoryKeyValueStore()
        self._rates = rates
        self._analytics = analytics
        self._clock = clock
        self._by_key: dict[str, tuple[float, Seat | None]] = {}
        self._refreshing: set[str] = set()
        self._first: dict[str, asyncio.Future[Seat | None]] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._metrics = SeatMetrics(metrics_registry)
        self._report_outage = report_outage
        #: Makes and revokes the seats' API keys (the auth domain's authenticator).
        self.keys: Any = None

    # ------------------------------------------------------------ serving

    async def of_principal(self, principal: Principal) -> Seat | None:
        """The seat whose key made the call (None: not a seat's key)."""
        key = principal.subject
        if principal.kind != "api_key" or not key:
            return None
        cached = self._by_key.get(key)
        if cached is not None:
            if cached[0] <= time.monotonic() and key not in self._refreshing:
                # stale: answered as cached, read again in the background, so
                # a bid never waits on the database (down or slow)
                self._refreshing.add(key)
                task = asyncio.create_task(self._refresh(key))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)
            return cached[1]
        # the key's first bid in this process waits, a little: past that, it
        # bids as a key without a seat and the read goes on for the next ones
        first = self._first.get(key)
        if first is None:
            first = self._first[key] = asyncio.ensure_future(self._lookup(key))
            first.add_done_callback(lambda done: self._first_done(key, done))
        try:
            async with asyncio.timeout(FIRST_LOOKUP_SECONDS):
                return await asyncio.shield(first)
        except TimeoutError:
            return None
        except Exception as error:
            if not is_backend_outage(error):
                raise
            if self._report_outage is not None:
                self._report_outage(error)
            return None

    def _first_done(self, key: str, done: asyncio.Future[Seat | None]) -> None:
        self._first.pop(key, None)
        if not done.cancelled() and done.exception() is not None:
            log.warning("exchange seat of %s could not be read: %s", key, done.exception())

    async def _lookup(self, key: str) -> Seat | None:
        s = bidding_exchange_seats.c
        async with self._db.engine.connect() as conn:
            row = (
                await conn.execute(sa.select(bidding_exchange_seats).where(s.api_key == key))
            ).first()
        found = _row_seat(row) if row is not None else None
        self._by_key[key] = (time.monotonic() + CACHE_SECONDS, found)
        return found

    async def _refresh(self, key: str) -> None:
        try:
            await self._lookup(key)
        except Exception as error:  # the database is away: the cached seat serves on
            if not is_backend_outage(error):
                log.exception("exchange seat of %s could not be read", key)
            cached = self._by_key.get(key)
            if cached is not None:
                self._by_key[key] = (time.monotonic() + CACHE_SECONDS, cached[1])
        finally:
            self._refreshing.discard(key)

    async def admit(self, seat: Seat) -> bool:
        """Whether the seat's QPS lets one more request in; a refusal, when
        the seat says so, raises RESOURCE_EXHAUSTED."""
        if seat.qps_limit <= 0:
            return True
        key = f"seatqps:{seat.tenant_id}:{seat.id}"
        try:
            async with asyncio.timeout(QPS_BUDGET_SECONDS):
                taken = await self._hot.take_token(key, seat.qps_limit, seat.qps_limit)
        except Exception as error:  # a slow or failing store: this process's bucket
            if not is_backend_outage(error):
                raise
            if self._report_outage is not None:
                self._report_outage(error)
            taken = await self._local_buckets.take_token(key, seat.qps_limit, seat.qps_limit)
        self._metrics.requests.labels(
            seat.tenant_id, seat.id, "admitted" if taken.allowed else "over_qps"
        ).inc()
        if taken.allowed:
            return True
        if seat.over_limit == "reject":
            raise ResourceExhausted(
                f"exchange seat {seat.id!r} is over its {seat.qps_limit} requests/s",
                retry_after=taken.retry_after,
                reason="SEAT_QPS_EXCEEDED",
                metadata={"seat": seat.name, "qps_limit": str(seat.qps_limit)},
            )
        return False

    def shape(self, seat: Seat, request: rtb.BidRequest) -> tuple[rtb.BidRequest, str]:
        """The request as the seat's defaults, formats and floors make it
        (a copy; the request itself when the seat changes nothing), and a
        no-bid reason when nothing is left to bid on."""
        if not seat.shapes_requests:
            return request, ""
        shaped = rtb.BidRequest()
        shaped.CopyFrom(request)
        if seat.default_tmax_ms and not shaped.HasField("tmax"):
            shaped.tmax = seat.default_tmax_ms
        if seat.currency and not shaped.cur:
            shaped.cur.append(seat.currency)
        if seat.gdpr_applies_by_default and not shaped.regs.HasField("gdpr"):
            shaped.regs.gdpr = 1
        if seat.coppa_by_default and not shaped.regs.HasField("coppa"):
            shaped.regs.coppa = 1
        if seat.formats:
            allowed = set(seat.formats)
            for i in reversed(range(len(shaped.imp))):
                imp = shaped.imp[i]
                for name in _formats_of(imp):
                    if name not in allowed:
                        imp.ClearField(name)  # type: ignore[arg-type]
                if not _formats_of(imp):
                    del shaped.imp[i]
            if not shaped.imp:
                return shaped, "FORMAT_NOT_ALLOWED"
        if seat.floor_cpm:
            for imp in shaped.imp:
                try:
                    floor = self._rates.convert(
                        seat.floor_cpm, seat.currency or "USD", imp.bidfloorcur or "USD"
                    )
                except ValueError:
                    continue  # an unknown floor currency: the bid path refuses it
                if floor > imp.bidfloor:
                    imp.bidfloor = floor
        return shaped, ""

    # ------------------------------------------------------------ management

    def _check(self, seat: Seat, where: str, paths: Sequence[str] = SETTABLE) -> None:
        bad: list[FieldViolation] = []
        at = f"{where}."
        if "display_name" in paths and not 1 <= len(seat.display_name.strip()) <= 200:
            bad.append(FieldViolation(at + "display_name", "1-200 characters"))
        if "qps_limit" in paths and not 0 <= seat.qps_limit <= MAX_QPS:
            bad.append(FieldViolation(at + "qps_limit", f"0 (no limit) to {MAX_QPS:,}"))
        if "over_limit" in paths and seat.over_limit not in OVER_LIMIT:
            bad.append(FieldViolation(at + "over_limit", "OVER_LIMIT_NO_BID or OVER_LIMIT_REJECT"))
        if "default_tmax_ms" in paths and not 0 <= seat.default_tmax_ms <= 10_000:
            bad.append(FieldViolation(at + "default_tmax_ms", "0 (the default) to 10000 ms"))
        if "currency" in paths and seat.currency and not self._rates.knows(seat.currency):
            bad.append(
                FieldViolation(at + "currency", f"{seat.currency!r} is not a known currency")
            )
        if "formats" in paths:
            unknown = [f for f in seat.formats if f not in FORMATS]
            if unknown:
                bad.append(
                    FieldViolation(at + "formats", f"{unknown[0]!r}: one of {', '.join(FORMATS)}")
                )
            elif len(set(seat.formats)) != len(seat.formats):
                bad.append(FieldViolation(at + "formats", "a format is listed twice"))
        if "floor_cpm" in paths and not (
            math.isfinite(seat.floor_cpm) and 0 <= seat.floor_cpm <= MAX_FLOOR_CPM
        ):
            bad.append(FieldViolation(at + "floor_cpm", f"0 to {MAX_FLOOR_CPM:g}"))
        if "bid_adjustment" in paths and not (
            math.isfinite(seat.bid_adjustment) and 0.1 <= seat.bid_adjustment <= 10
        ):
            bad.append(FieldViolation(at + "bid_adjustment", "0.1 to 10 (0 means 1)"))
        collect(bad)

    def _seat_name(self, caller: Principal, name: str, field: str = "name") -> tuple[str, str]:
        names.require_same_tenant(name, field, caller.tenant_id)
        tenant_id, seat_id = names.parse_name(name, field, "tenants", "exchangeSeats")
        return tenant_id, seat_id

    async def create(
        self, caller: Principal, parent: str, seat_id: str, seat: Seat
    ) -> tuple[Seat, str]:
        tenant_id = names.own_tenant(parent, caller.tenant_id)
        names.validate_id(seat_id, "exchange_seat_id")
        seat = dataclasses.replace(seat, tenant_id=tenant_id, id=seat_id)
        self._check(seat, "exchange_seat")
        if await self._get(tenant_id, seat_id) is not None:
            raise AlreadyExists(f"{seat.name} exists", metadata={"resource": seat.name})
        record, secret = await self.keys.create_api_key(
            caller, parent, f"exchange seat {seat_id}"[:200], ["VIEWER"]
        )
        now = self._clock()
        made = dataclasses.replace(seat, api_key=record.name, create_time=now, update_time=now)
        values = dataclasses.asdict(made)
        values["formats"] = list(made.formats)
        try:
            async with self._db.engine.begin() as conn:
                await conn.execute(bidding_exchange_seats.insert().values(**values))
        except IntegrityError:
            await self.keys.revoke_api_key(caller, record.name)
            raise AlreadyExists(f"{seat.name} exists", metadata={"resource": seat.name}) from None
        self._by_key.pop(record.name, None)
        return made, secret

    async def _get(self, tenant_id: str, seat_id: str) -> Seat | None:
        s = bidding_exchange_seats.c
        async with self._db.engine.connect() as conn:
            row = (
                await conn.execute(
                    sa.select(bidding_exchange_seats).where(
                        s.tenant_id == tenant_id, s.id == seat_id
                    )
                )
            ).first()
        return _row_seat(row) if row is not None else None

    async def get(self, caller: Principal, name: str) -> Seat:
        found = await self._get(*self._seat_name(caller, name))
        if found is None:
            raise NotFound(f"no exchange seat {name}", metadata={"resource": name})
        return found

    async def list(
        self, caller: Principal, parent: str, page_size: int, page_token: str
    ) -> tuple[list[Seat], str]:
        tenant_id = names.own_tenant(parent, caller.tenant_id)
        size = names.page_size(page_size)
        request = scope("bidding.ListExchangeSeats", tenant_id)
        cursor = self._pages.decode(request, page_token, "id")
        s = bidding_exchange_seats.c
        query = (
            sa.select(bidding_exchange_seats)
            .where(s.tenant_id == tenant_id)
            .order_by(s.id)
            .limit(size + 1)
        )
        if cursor is not None:
            query = query.where(s.id > cursor["id"])
        async with self._db.engine.connect() as conn:
            rows = (await conn.execute(query)).all()
        found = [_row_seat(r) for r in rows[:size]]
        token = self._pages.encode(request, {"id": found[-1].id}) if len(rows) > size else ""
        return found, token

    async def update(
        self, caller: Principal, name: str, changes: Seat, paths: Sequence[str]
    ) -> Seat:
        current = await self.get(caller, name)
        wanted = list(paths) or list(SETTABLE)
        unknown = sorted(set(wanted) - set(SETTABLE))
        if unknown:
            raise InvalidArgument.field(
                "update_mask", f"{unknown[0]!r} cannot be changed; one of {', '.join(SETTABLE)}"
            )
        merged = dataclasses.replace(
            current, **{p: getattr(changes, p) for p in wanted}, update_time=self._clock()
        )
        self._check(merged, "exchange_seat", wanted)
        values = {p: getattr(merged, p) for p in wanted}
        if "formats" in values:
            values["formats"] = list(merged.formats)
        s = bidding_exchange_seats.c
        async with self._db.engine.begin() as conn:
            await conn.execute(
                bidding_exchange_seats.update()
                .where(s.tenant_id == merged.tenant_id, s.id == merged.id)
                .values(**values, update_time=merged.update_time)
            )
        self._by_key.pop(merged.api_key, None)
        return merged

    async def delete(self, caller: Principal, name: str) -> None:
        seat = await self.get(caller, name)
        s = bidding_exchange_seats.c
        async with self._db.engine.begin() as conn:
            await conn.execute(
                bidding_exchange_seats.delete().where(
                    s.tenant_id == seat.tenant_id, s.id == seat.id
                )
            )
        self._by_key.pop(seat.api_key, None)
        try:
            await self.keys.revoke_api_key(caller, seat.api_key)
        except NotFound:
            pass  # the key was deleted already

    async def report(self, caller: Principal, name: str, hours: int) -> Report:
        seat = await self.get(caller, name)
        if not 0 <= hours <= MAX_REPORT_HOURS:
            raise InvalidArgument.field("hours", f"1-{MAX_REPORT_HOURS} (0: 24)")
        hours = hours or 24
        if self._analytics is None or not await table_exists(self._analytics, "bid_events"):
            return Report(hours, 0, 0, 0, 0.0, ())
        since = self._clock() - hours * 3_600_000_000
        where = (
            f"tenant_id = {quote_literal(seat.tenant_id)} AND source = {quote_literal(seat.id)} "
            f"AND event_time >= fromUnixTimestamp64Micro(toInt64({int(since)}), 'UTC')"
        )
        ((requests, requests_bid, bids, mean),) = await self._analytics.query(
            f"SELECT uniqExact(request_id), uniqExactIf(request_id, event_type = 'bid'), "
            f"countIf(event_type = 'bid'), avgIf(price_micros, event_type = 'bid') "
            f"FROM bid_events WHERE {where} AND event_type IN ('bid', 'no_bid')"
        )
        reasons = await self._analytics.query(
            f"SELECT reason, count() AS n FROM bid_events WHERE {where} "
            f"AND event_type = 'no_bid' GROUP BY reason ORDER BY n DESC, reason"
        )
        mean_cpm = float(mean) / 1e6 if bids and math.isfinite(float(mean)) else 0.0
        return Report(
            hours, int(requests), int(requests_bid), int(bids), mean_cpm,
            tuple((str(r), int(n)) for r, n in reasons),
        )  # fmt: skip
