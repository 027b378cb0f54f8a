"""Demand partners: the DSPs (Google DV360, Amazon DSP, The Trade Desk, Meta)
a tenant forwards its bid requests to, and their bids in its auction.

While the internal offers are scored, the request goes (OpenRTB 2.6 JSON, the
platform's way: `ADAPTERS`) to every enabled partner of the tenant that takes
its exchange seat. Each partner has:

- a timeout (default 200 ms, never past the request's tmax less the time kept
  for answering), and a limit of requests in flight (default 1,000; past it the
  request is not sent to it: `throttled`);
- its health (`PartnerHealth`): a failure rate that rises with each error or
  timeout and falls faster with each answer. A failing partner gets a smaller
  share of the traffic (at least 1 in 20, so it is seen to heal) and a timeout
  cut to what its answers took; both come back as it answers again (the
  adaptive timeouts and backoff Prebid Server added);
- counters: requests, valid bid responses, no-bids, timeouts, errors, invalid
  bids, throttled, and its latency (Prometheus, and `report`).

A partner's bid takes part in the auction only when it is valid (`valid_bids`):
a known impression, a price > 0 in a known currency, a creative (`adm` or
`nurl`), a creative id, at or over the impression's floor, inside the deal
when the impression is a private auction. The best of them per impression
wins over the internal winner when its price (after the seat's bid
adjustment) is higher. Its win notice (`nurl`) points at `/v1/dsp/win`: the
win and its spend are recorded once per bid (`bidding_partner_wins`), and the
partner's own `nurl` is called with its macros substituted, by an outbox
that retries until the partner answers (at least once; a kill between the
call and its mark sends it again, with the same bid id)."""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import hmac
import logging
import math
import operator
import random
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import orjson
import sqlalchemy as sa
from prometheus_client import CollectorRegistry
from sqlalchemy.exc import IntegrityError

from campaignexpress.openrtb.v2 import openrtb_pb2 as rtb
from services.backends.outages import is_backend_outage
from services.bidding.currency import Rates, UnknownCurrency
from services.bidding.notices import MAX_PRICE_CPM, PRICE_MACRO, TokenSeal, parse_price
from services.bidding.openrtb_json import encode_bid_request
from services.bidding.tables import bidding_demand_partners, bidding_partner_wins
from services.common import names
from services.common.call import Principal
from services.common.clock import now_us
from services.common.errors import AlreadyExists, FieldViolation, InvalidArgument, NotFound, collect
from services.common.loopmetrics import Counter, Histogram
from services.common.pagination import PageTokens, scope

log = logging.getLogger(__name__)

PLATFORMS = ("dv360", "amazon", "trade_desk", "meta")
DEFAULT_TIMEOUT_MS = 200
DEFAULT_MAX_IN_FLIGHT = 1000
MIN_TIMEOUT_MS = 10
MAX_TIMEOUT_MS = 5000
MAX_IN_FLIGHT = 100_000
#: The bid path keeps this long after the partners' answers for its own.
ANSWER_MARGIN_US = 8_000
CACHE_SECONDS = 5.0
#: Answers whose latency a partner's adaptive timeout is judged on.
HEALTH_WINDOW = 200
#: The least share of the traffic a failing partner gets (so it is seen to heal).
MIN_SHARE = 0.05
#: How far a failure moves a partner's failure rate towards 1, and how much a
#: success takes off it (PartnerHealth).
FAILURE_WEIGHT = 0.05
SUCCESS_WEIGHT = 0.2
#: Under this failure rate a partner is healthy: all its traffic, its timeout.
HEALTHY_RATE = 0.02
#: Largest partner answer read.
MAX_ANSWER_BYTES = 1 << 20
#: Win notices forwarded per round; a failed one is tried again after this.
FORWARD_BATCH = 100
FORWARD_RETRY_SECONDS = 5.0
FORWARD_MAX_ATTEMPTS = 20
FORWARD_TIMEOUT_SECONDS = 5.0
SETTABLE = (
    "display_name", "platform", "endpoint", "credential", "account_id", "placement_id",
    "enabled", "timeout_ms", "max_in_flight", "exchange_seats",
)  # fmt: skip
_MACROS = (
    "${AUCTION_ID}", "${AUCTION_BID_ID}", "${AUCTION_IMP_ID}", "${AUCTION_SEAT_ID}",
    "${AUCTION_AD_ID}", "${AUCTION_PRICE}", "${AUCTION_CURRENCY}",
)  # fmt: skip


@dataclass(frozen=True, slots=True)
class Partner:
    tenant_id: str
    id: str
    display_name: str
    platform: str
    endpoint: str
    credential: str = ""
    account_id: str = ""
    placement_id: str = ""
    enabled: bool = True
    timeout_ms: int = 0
    max_in_flight: int = 0
    exchange_seats: tuple[str, ...] = ()
    create_time: int = 0
    update_time: int = 0

    @property
    def name(self) -> str:
        return f"tenants/{self.tenant_id}/demandPartners/{self.id}"

    @property
    def timeout_us(self) -> int:
        return (self.timeout_ms or DEFAULT_TIMEOUT_MS) * 1000

    @property
    def in_flight_limit(self) -> int:
        return self.max_in_flight or DEFAULT_MAX_IN_FLIGHT

    def takes(self, seat: str) -> bool:
        return self.enabled and (not self.exchange_seats or seat in self.exchange_seats)


def _row_partner(row: Any) -> Partner:
    values = {f.name: getattr(row, f.name) for f in dataclasses.fields(Partner)}
    values["exchange_seats"] = tuple(values["exchange_seats"] or ())
    return Partner(**values)


# --------------------------------------------------------------------------- adapters


def _bearer(partner: Partner, body: bytes, headers: dict[str, str]) -> bytes:
    headers["Authorization"] = f"Bearer {partner.credential}"
    return body


def _api_key(partner: Partner, body: bytes, headers: dict[str, str]) -> bytes:
    headers["x-api-key"] = partner.credential
    return body


def meta_authentication_id(app_secret: str, request_id: str) -> str:
    """Meta's `ext.authentication_id`: HMAC-SHA256 of the request id, keyed
    with the app secret, in hex."""
    return hmac.new(app_secret.encode(), request_id.encode(), hashlib.sha256).hexdigest()


def _meta(partner: Partner, body: bytes, headers: dict[str, str]) -> bytes:
    request = orjson.loads(body)
    request["imp"] = [{**imp, "tagid": partner.placement_id} for imp in request["imp"]]
    ext = request.get("ext")
    ext = dict(ext) if isinstance(ext, dict) else {}
    ext["platformid"] = partner.account_id
    ext["authentication_id"] = meta_authentication_id(partner.credential, str(request["id"]))
    request["ext"] = ext
    return orjson.dumps(request)


#: How each platform wants its requests: the credential's place and the
#: request's changes. Every request is OpenRTB 2.6 JSON, POSTed with
#: `x-openrtb-version: 2.6`; 204 or an empty seatbid is a no-bid. (The
#: request is encoded once per bid; only Meta's is changed, so decoded again.)
ADAPTERS: dict[str, Callable[[Partner, bytes, dict[str, str]], bytes]] = {
    "dv360": _bearer,
    "amazon": _api_key,
    "trade_desk": _bearer,
    "meta": _meta,
}


def partner_request(partner: Partner, body: bytes) -> tuple[dict[str, str], bytes]:
    """The headers and body of `body` (an OpenRTB request's JSON) for `partner`."""
    headers = {"Content-Type": "application/json", "x-openrtb-version": "2.6"}
    return headers, ADAPTERS[partner.platform](partner, body, headers)


# --------------------------------------------------------------------------- health


class PartnerHealth:
    """A partner's failure rate, and what it says of its traffic share and
    timeout. The rate moves 5% of the way to 1 on each failure (an error or a
    timeout) and falls by 20% on each success: it backs off as failures go
    on, and comes back quickly once the partner answers again. The share is
    1 - 2 x rate (at least MIN_SHARE; 1 below HEALTHY_RATE); while the rate is
    not healthy, the timeout is 1.5 x the p90 of its recent answers (at least
    MIN_TIMEOUT_MS, at most the configured one)."""

    def __init__(self) -> None:
        self.failure_rate = 0.0
        self._latencies: deque[float] = deque(maxlen=HEALTH_WINDOW)  # ms, answered
        self._p90_ms = 0.0
        self._since_sorted = 0

    def record(self, ok: bool, latency_ms: float | None = None) -> None:
        if ok:
            self.failure_rate *= 1 - SUCCESS_WEIGHT
        else:
            self.failure_rate += FAILURE_WEIGHT * (1 - self.failure_rate)
        if latency_ms is not None:
            self._latencies.append(latency_ms)
            self._since_sorted += 1
            if self._since_sorted >= 20 or len(self._latencies) < 20:
                ordered = sorted(self._latencies)
                self._p90_ms = ordered[int(0.9 * (len(ordered) - 1))]
                self._since_sorted = 0

    @property
    def share(self) -> float:
        if self.failure_rate < HEALTHY_RATE:
            return 1.0
        return max(MIN_SHARE, 1.0 - 2.0 * self.failure_rate)

    def timeout_us(self, configured_us: int) -> int:
        if self.failure_rate < HEALTHY_RATE or not self._latencies:
            return configured_us
        adaptive = max(MIN_TIMEOUT_MS * 1000, int(self._p90_ms * 1.5 * 1000))
        return min(configured_us, adaptive)

    def percentile(self, q: float) -> float:
        if not self._latencies:
            return 0.0
        ordered = sorted(self._latencies)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


class PartnerMetrics:
    def __init__(self, registry: CollectorRegistry | None) -> None:
        self.requests = Counter(
            "campaign_express_dsp_requests",
            "Bid requests for demand partners, by partner and outcome (bid, no_bid, timeout, "
            "error, throttled).",
            ["tenant", "partner", "outcome"],
            registry=registry,
        )
        self.invalid_bids = Counter(
            "campaign_express_dsp_invalid_bids",
            "Partner bids refused (malformed, under the floor, outside the deal...).",
            ["tenant", "partner"],
            registry=registry,
        )
        self.latency = Histogram(
            "campaign_express_dsp_seconds",
            "Time a demand partner took to answer.",
            ["partner"],
            buckets=(0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0),
            registry=registry,
        )
        self.wins = Counter(
            "campaign_express_dsp_wins",
            "Partner bids that won (win notices recorded once).",
            ["tenant", "partner"],
            registry=registry,
        )
        self.spend = Counter(
            "campaign_express_dsp_spend",
            "What partners' wins cost (CPM / 1000), by currency.",
            ["tenant", "partner", "currency"],
            registry=registry,
        )


@dataclass(slots=True)
class _Stats:
    requests: int = 0
    bid_responses: int = 0
    no_bids: int = 0
    timeouts: int = 0
    errors: int = 0
    invalid_bids: int = 0
    throttled: int = 0


@dataclass(frozen=True, slots=True)
class PartnerBid:
    """A partner's valid bid for one impression, priced in the response currency."""

    partner: Partner
    imp_id: str
    price_cpm: float
    bid: dict[str, Any]


@dataclass(frozen=True, slots=True)
class PartnerWinToken:
    tenant_id: str
    partner_id: str
    bid_id: str  # ours
    partner_bid_id: str
    imp_id: str
    request_id: str
    currency: str
    nurl: str  # the partner's, macros unsubstituted
    ad_id: str
    seat: str
    issued_us: int


@dataclass(frozen=True, slots=True)
class Report:
    stats: _Stats
    p50_ms: float
    p99_ms: float
    share: float
    timeout_ms: int
    wins: int
    spend: tuple[tuple[str, float], ...]


def _floor_in(imp: rtb.Imp, currency: str, rates: Rates) -> float | None:
    if not imp.bidfloor:
        return 0.0
    try:
        return rates.convert(imp.bidfloor, imp.bidfloorcur or "USD", currency)
    except UnknownCurrency:
        return None


def valid_bids(
    partner: Partner,
    answer: Any,
    request: rtb.BidRequest,
    currency: str,
    rates: Rates,
    price_factor: float,
) -> tuple[list[PartnerBid], int]:
    """The valid bids of a partner's parsed answer, priced in `currency` (the
    response's) after the seat's `price_factor`, and how many were refused."""
    if not isinstance(answer, dict):
        raise ValueError("the answer is not a JSON object")
    if str(answer.get("id", "")) != request.id:
        raise ValueError("the answer's id is not the request's")
    seatbids = answer.get("seatbid") or []
    if not isinstance(seatbids, list):
        raise ValueError("seatbid is not an array")
    cur = answer.get("cur") or "USD"
    if not isinstance(cur, str) or not rates.knows(cur):
        raise ValueError(f"unknown currency {cur!r}")
    imps = {imp.id: imp for imp in request.imp}
    found: list[PartnerBid] = []
    refused = 0
    for seatbid in seatbids:
        bids = seatbid.get("bid") if isinstance(seatbid, dict) else None
        if not isinstance(bids, list):
            raise ValueError("a seatbid has no bid array")
        for bid in bids:
            checked = _checked_bid(partner, bid, imps, cur, currency, rates, price_factor)
            if checked is None:
                refused += 1
            else:
                found.append(checked)
    return found, refused


def _checked_bid(
    partner: Partner,
    bid: Any,
    imps: dict[str, rtb.Imp],
    cur: str,
    currency: str,
    rates: Rates,
    price_factor: float,
) -> PartnerBid | None:
    if not isinstance(bid, dict):
        return None
    imp = imps.get(str(bid.get("impid", "")))
    price = bid.get("price")
    if (
        imp is None
        or not isinstance(bid.get("id"), str)
        or not bid["id"]
        or isinstance(price, bool)
        or not isinstance(price, int | float)
        or not (0 < price <= MAX_PRICE_CPM)
        or not (isinstance(bid.get("adm"), str) and bid["adm"])
        and not (isinstance(bid.get("nurl"), str) and bid["nurl"])
        or not isinstance(bid.get("crid"), str)
        or not bid["crid"]
    ):
        return None
    priced = rates.convert(float(price), cur, currency) * price_factor
    floor = _floor_in(imp, currency, rates)
    if floor is None or not math.isfinite(priced) or priced < floor:
        return None
    if imp.HasField("pmp") and imp.pmp.private_auction:
        deals = {d.id for d in imp.pmp.deals}
        if bid.get("dealid") not in deals:
            return None
    return PartnerBid(partner, imp.id, round(priced, 6), bid)


def substitute(url: str, token: PartnerWinToken, price_cpm: float) -> str:
    """The partner's nurl with the OpenRTB macros substituted."""
    values = (
        token.request_id, token.partner_bid_id, token.imp_id, token.seat, token.ad_id,
        f"{price_cpm:.6f}".rstrip("0").rstrip("."), token.currency,
    )  # fmt: skip
    for macro, value in zip(_MACROS, values, strict=True):
        url = url.replace(macro, value)
    return url


def presubstitute(url: str, token: PartnerWinToken) -> str:
    """A partner's billing or loss URL as the exchange gets it: the macros
    of the partner's own bid (its ids) substituted now, those the exchange
    knows (`${AUCTION_PRICE}`, `${AUCTION_CURRENCY}`, `${AUCTION_LOSS}`) left."""
    values = (token.request_id, token.partner_bid_id, token.imp_id, token.seat, token.ad_id)
    for macro, value in zip(_MACROS[:5], values, strict=True):
        url = url.replace(macro, value)
    return url


_token_fields = operator.attrgetter(*(f.name for f in dataclasses.fields(PartnerWinToken)))


class PartnerSigner:
    """Signs and verifies the win-notice tokens of partner bids (a seal of
    their own: a bid's notice token is refused here, and the other way)."""

    def __init__(self, secret: str, public_url: str) -> None:
        self._seal = TokenSeal(secret, "partner-notice")
        self._base = public_url.rstrip("/")

    def nurl(self, token: PartnerWinToken) -> str:
        t = self._seal.seal(_token_fields(token))
        return f"{self._base}/v1/dsp/win?t={t}&price={PRICE_MACRO}"

    def verify(self, t: str) -> PartnerWinToken:
        raw = self._seal.open(t)
        try:
            return PartnerWinToken(*raw)
        except TypeError:
            raise InvalidArgument.field("t", "is not a notice token this platform issued") from None


class Fanout:
    """One bid request's calls to its partners, under way."""

    __slots__ = ("calls", "collected", "deadline_us")

    def __init__(self, calls: list[tuple[Partner, asyncio.Task[Any]]], deadline_us: int) -> None:
        self.calls = calls
        self.deadline_us = deadline_us
        self.collected = False  # its answers taken into the auction


class DemandPartners:
    def __init__(
        self,
        db: Any,
        pages: PageTokens,
        rates: Rates,
        signer: PartnerSigner,
        *,
        clock: Callable[[], int] = now_us,
        metrics_registry: CollectorRegistry | None = None,
        rng: Callable[[], float] = random.random,
    ) -> None:
        self._db = db
        self._pages = pages
        self._rates = rates
        self.signer = signer
        self._clock = clock
        self._rng = rng
        self._metrics = PartnerMetrics(metrics_registry)
        self._of_tenant: dict[str, tuple[float, tuple[Partner, ...]]] = {}
        self._refreshing: set[str] = set()
        self._health: dict[tuple[str, str], PartnerHealth] = {}
        self._stats: dict[tuple[str, str], _Stats] = {}
        self._in_flight: dict[tuple[str, str], int] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self._http: aiohttp.ClientSession | None = None
        self._forwarder: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()

    # ------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        """Start forwarding partners' win notices (serving processes)."""
        if self._forwarder is None:
            self._forwarder = asyncio.create_task(self._forward_loop())

    async def stop(self) -> None:
        if self._forwarder is not None:
            self._forwarder.cancel()
            await asyncio.gather(self._forwarder, return_exceptions=True)
            self._forwarder = None
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._http is not None:
            await self._http.close()
            self._http = None

    def _session(self) -> aiohttp.ClientSession:
        if self._http is None or self._http.closed:
            self._http = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=0, ttl_dns_cache=300),
                skip_auto_headers=("User-Agent",),
            )
        return self._http

    def _spawn(self, work: Any) -> asyncio.Task[Any]:
        task: asyncio.Task[Any] = asyncio.ensure_future(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    # ------------------------------------------------------------ the bid path

    def partners_of(self, tenant_id: str) -> tuple[Partner, ...]:
        """The tenant's partners as last read (read again in the background
        when older than CACHE_SECONDS: a bid never waits on the database; a
        tenant's first bid in a process starts the read and bids without)."""
        cached = self._of_tenant.get(tenant_id)
        if (cached is None or cached[0] <= time.monotonic()) and tenant_id not in self._refreshing:
            self._refreshing.add(tenant_id)
            self._spawn(self._refresh(tenant_id))
        return cached[1] if cached is not None else ()

    async def load(self, tenant_id: str) -> tuple[Partner, ...]:
        """Read the tenant's partners now (tests, and after a change here)."""
        p = bidding_demand_partners.c
        async with self._db.engine.connect() as conn:
            rows = (
                await conn.execute(
                    sa.select(bidding_demand_partners)
                    .where(p.tenant_id == tenant_id)
                    .order_by(p.id)
                )
            ).all()
        found = tuple(_row_partner(r) for r in rows)
        self._of_tenant[tenant_id] = (time.monotonic() + CACHE_SECONDS, found)
        return found

    async def _refresh(self, tenant_id: str) -> None:
        try:
            await self.load(tenant_id)
        except Exception as error:  # the database is away: the cached list serves on
            if not is_backend_outage(error):
                log.exception("demand partners of %s could not be read", tenant_id)
            cached = self._of_tenant.get(tenant_id)
            self._of_tenant[tenant_id] = (
                time.monotonic() + CACHE_SECONDS,
                cached[1] if cached is not None else (),
            )
        finally:
            self._refreshing.discard(tenant_id)

    def start_fanout(
        self, tenant_id: str, request: rtb.BidRequest, seat: str, deadline_us: int
    ) -> Fanout | None:
        """Send `request` to the tenant's partners that take it (None: none
        do). Each call ends by its partner's timeout, or at `deadline_us`
        less the time kept for answering, whichever is first."""
        partners = [p for p in self.partners_of(tenant_id) if p.takes(seat)]
        if not partners:
            return None
        now = self._clock()
        end_us = deadline_us - ANSWER_MARGIN_US
        body = b""
        calls: list[tuple[Partner, asyncio.Task[Any]]] = []
        for partner in partners:
            key = (tenant_id, partner.id)
            stats = self._stats.setdefault(key, _Stats())
            health = self._health.setdefault(key, PartnerHealth())
            timeout_us = min(health.timeout_us(partner.timeout_us), end_us - now)
            if (
                timeout_us < MIN_TIMEOUT_MS * 1000
                or self._in_flight.get(key, 0) >= partner.in_flight_limit
                or (health.share < 1.0 and self._rng() >= health.share)
            ):
                stats.throttled += 1
                self._metrics.requests.labels(tenant_id, partner.id, "throttled").inc()
                continue
            if not body:
                body = encode_bid_request(request)
            headers, payload = partner_request(partner, body)
            self._in_flight[key] = self._in_flight.get(key, 0) + 1
            stats.requests += 1
            calls.append(
                (partner, self._spawn(self._call(partner, headers, payload, timeout_us / 1e6)))
            )
        return Fanout(calls, end_us) if calls else None

    async def _call(
        self, partner: Partner, headers: dict[str, str], payload: bytes, timeout_s: float
    ) -> Any:
        """(milliseconds it took, its parsed answer: None for a no-bid).
        Raises TimeoutError past `timeout_s`, or another exception when it
        failed."""
        key = (partner.tenant_id, partner.id)
        started = time.perf_counter()
        try:
            async with asyncio.timeout(timeout_s):
                async with self._session().post(
                    partner.endpoint, data=payload, headers=headers
                ) as reply:
                    if reply.status == 204:
                        return (time.perf_counter() - started) * 1e3, None
                    if reply.status != 200:
                        raise ValueError(f"HTTP {reply.status}")
                    raw = await reply.content.read(MAX_ANSWER_BYTES + 1)
            took_ms = (time.perf_counter() - started) * 1e3
            if len(raw) > MAX_ANSWER_BYTES:
                raise ValueError("the answer is over 1 MiB")
            return took_ms, (orjson.loads(raw) if raw.strip() else None)
        finally:
            self._in_flight[key] -= 1
            self._metrics.latency.labels(partner.id).observe(time.perf_counter() - started)

    async def collect(
        self,
        fanout: Fanout,
        request: rtb.BidRequest,
        currency: str,
        price_factor: float,
    ) -> list[PartnerBid]:
        """The partners' valid bids, as they stand by the fan-out's end: the
        best per impression first. A partner that has not answered by then
        is counted as timed out (its call is cancelled)."""
        left = (fanout.deadline_us - self._clock()) / 1e6
        tasks = [task for _, task in fanout.calls]
        if left > 0:
            await asyncio.wait(tasks, timeout=left)
        found: list[PartnerBid] = []
        for partner, task in fanout.calls:
            found.extend(self._settle(partner, task, request, currency, price_factor))
        found.sort(key=lambda b: -b.price_cpm)
        return found

    def _settle(
        self,
        partner: Partner,
        task: asyncio.Task[Any],
        request: rtb.BidRequest,
        currency: str,
        price_factor: float,
    ) -> list[PartnerBid]:
        key = (partner.tenant_id, partner.id)
        stats, health = self._stats[key], self._health[key]
        count = self._metrics.requests.labels
        if not task.done() or task.cancelled():
            task.cancel()
            stats.timeouts += 1
            health.record(False)
            count(partner.tenant_id, partner.id, "timeout").inc()
            return []
        error = task.exception()
        if isinstance(error, TimeoutError):
            stats.timeouts += 1
            health.record(False)
            count(partner.tenant_id, partner.id, "timeout").inc()
            return []
        latency_ms = None
        try:
            if error is not None:
                raise error
            latency_ms, answer = task.result()
            if answer is None:
                stats.no_bids += 1
                count(partner.tenant_id, partner.id, "no_bid").inc()
                health.record(True, latency_ms)
                return []
            bids, refused = valid_bids(
                partner, answer, request, currency, self._rates, price_factor
            )
        except Exception as problem:  # noqa: BLE001 - a partner's failure is recorded, never raised
            stats.errors += 1
            health.record(False)
            count(partner.tenant_id, partner.id, "error").inc()
            log.debug("demand partner %s failed: %s", partner.name, problem)
            return []
        health.record(True, latency_ms)
        if refused:
            stats.invalid_bids += refused
            self._metrics.invalid_bids.labels(partner.tenant_id, partner.id).inc(refused)
        if bids:
            stats.bid_responses += 1
            count(partner.tenant_id, partner.id, "bid").inc()
        else:
            stats.no_bids += 1
            count(partner.tenant_id, partner.id, "no_bid").inc()
        return bids

    def win_token(
        self, bid: PartnerBid, bid_id: str, request: rtb.BidRequest, currency: str, seat: str
    ) -> PartnerWinToken:
        raw = bid.bid
        return PartnerWinToken(
            tenant_id=bid.partner.tenant_id,
            partner_id=bid.partner.id,
            bid_id=bid_id,
            partner_bid_id=str(raw["id"]),
            imp_id=bid.imp_id,
            request_id=request.id,
            currency=currency,
            nurl=str(raw.get("nurl") or ""),
            ad_id=str(raw.get("adid") or ""),
            seat=seat,
            issued_us=self._clock(),
        )

    # ------------------------------------------------------------ wins

    async def win(self, t: str, price: str) -> bool:
        """Record a partner bid's win once (False: recorded before), and
        queue its own win notice."""
        token = self.signer.verify(t)
        cpm = parse_price(price)
        forward = substitute(token.nurl, token, cpm) if token.nurl else ""
        try:
            async with self._db.engine.begin() as conn:
                await conn.execute(
                    bidding_partner_wins.insert().values(
                        tenant_id=token.tenant_id, bid_id=token.bid_id,
                        partner_id=token.partner_id, request_id=token.request_id,
                        price_micros=round(cpm * 1_000_000), currency=token.currency,
                        forward_url=forward, forwarded=not forward, attempts=0,
                        next_attempt=0, create_time=self._clock(),
                    )
                )  # fmt: skip
        except IntegrityError:
            return False
        self._metrics.wins.labels(token.tenant_id, token.partner_id).inc()
        self._metrics.spend.labels(token.tenant_id, token.partner_id, token.currency).inc(
            cpm / 1000
        )
        if forward:
            self._wake.set()
        return True

    async def _forward_loop(self) -> None:
        while True:
            try:
                sent = await self.forward_due()
            except Exception as error:  # noqa: BLE001 - the database is away: later
                if not is_backend_outage(error):
                    log.exception("partner win notices: a round failed")
                sent = 0
            if sent < FORWARD_BATCH:
                self._wake.clear()
                try:
                    async with asyncio.timeout(FORWARD_RETRY_SECONDS):
                        await self._wake.wait()
                except TimeoutError:
                    pass

    async def forward_due(self) -> int:
        """Send the partners' win notices that are due (each until its
        partner answers 2xx, up to FORWARD_MAX_ATTEMPTS); how many were tried."""
        w = bidding_partner_wins.c
        now = self._clock()
        async with self._db.engine.begin() as conn:
            rows = (
                await conn.execute(
                    sa.select(w.tenant_id, w.bid_id, w.forward_url, w.attempts)
                    .where(w.forwarded.is_(False), w.next_attempt <= now)
                    .order_by(w.next_attempt)
                    .limit(FORWARD_BATCH)
                    # rows another process is claiming are left to it
                    .with_for_update(skip_locked=True)
                )
            ).all()
            # claimed: another process does not send them meanwhile
            for row in rows:
                await conn.execute(
                    bidding_partner_wins.update()
                    .where(w.tenant_id == row.tenant_id, w.bid_id == row.bid_id)
                    .values(next_attempt=now + int(FORWARD_TIMEOUT_SECONDS * 2e6))
                )
        outcomes = await asyncio.gather(*(self._send(row.forward_url) for row in rows))
        async with self._db.engine.begin() as conn:
            for row, ok in zip(rows, outcomes, strict=True):
                attempts = row.attempts + 1
                done = ok or attempts >= FORWARD_MAX_ATTEMPTS
                if not ok and done:
                    log.warning("partner win notice %s given up after %d tries", row.bid_id,
                                attempts)  # fmt: skip
                await conn.execute(
                    bidding_partner_wins.update()
                    .where(w.tenant_id == row.tenant_id, w.bid_id == row.bid_id)
                    .values(
                        forwarded=done, attempts=attempts,
                        next_attempt=now + int(FORWARD_RETRY_SECONDS * 1e6 * min(attempts, 12)),
                    )
                )  # fmt: skip
        return len(rows)

    async def _send(self, url: str) -> bool:
        try:
            async with asyncio.timeout(FORWARD_TIMEOUT_SECONDS):
                async with self._session().get(url) as reply:
                    await reply.read()
                    return 200 <= reply.status < 300
        except (aiohttp.ClientError, TimeoutError, OSError, ValueError):
            return False

    # ------------------------------------------------------------ management

    def _check(self, partner: Partner, where: str, paths: Sequence[str] = SETTABLE) -> None:
        bad: list[FieldViolation] = []
        at = f"{where}."
        if "display_name" in paths and not 1 <= len(partner.display_name.strip()) <= 200:
            bad.append(FieldViolation(at + "display_name", "1-200 characters"))
        if "platform" in paths and partner.platform not in PLATFORMS:
            bad.append(
                FieldViolation(at + "platform", "PLATFORM_DV360, _AMAZON, _TRADE_DESK or _META")
            )
        if "endpoint" in paths:
            parts = urlsplit(partner.endpoint)
            if parts.scheme not in ("http", "https") or not parts.hostname:
                bad.append(FieldViolation(at + "endpoint", "an http or https URL"))
            elif len(partner.endpoint) > 2000:
                bad.append(FieldViolation(at + "endpoint", "at most 2000 characters"))
        if "credential" in paths and len(partner.credential) > 4000:
            bad.append(FieldViolation(at + "credential", "at most 4000 characters"))
        for field, value in (("account_id", partner.account_id),
                             ("placement_id", partner.placement_id)):  # fmt: skip
            if field in paths and len(value) > 200:
                bad.append(FieldViolation(at + field, "at most 200 characters"))
        if partner.platform == "meta" and {"platform", "account_id", "placement_id",
                                           "credential"} & set(paths):  # fmt: skip
            for field in ("account_id", "placement_id", "credential"):
                if not getattr(partner, field):
                    bad.append(FieldViolation(at + field, "Meta needs it"))
        if (
            "timeout_ms" in paths
            and partner.timeout_ms
            and not (MIN_TIMEOUT_MS <= partner.timeout_ms <= MAX_TIMEOUT_MS)
        ):
            bad.append(FieldViolation(at + "timeout_ms", f"{MIN_TIMEOUT_MS}-{MAX_TIMEOUT_MS} ms"))
        if "max_in_flight" in paths and not 0 <= partner.max_in_flight <= MAX_IN_FLIGHT:
            bad.append(FieldViolation(at + "max_in_flight", f"1-{MAX_IN_FLIGHT:,} (0: 1000)"))
        if "exchange_seats" in paths:
            for i, seat in enumerate(partner.exchange_seats):
                try:
                    names.validate_id(seat, f"{at}exchange_seats[{i}]")
                except InvalidArgument as exc:
                    bad.extend(exc.field_violations)
            if len(set(partner.exchange_seats)) != len(partner.exchange_seats):
                bad.append(FieldViolation(at + "exchange_seats", "a seat is listed twice"))
        collect(bad)

    def _partner_name(self, caller: Principal, name: str, field: str = "name") -> tuple[str, str]:
        names.require_same_tenant(name, field, caller.tenant_id)
        tenant_id, partner_id = names.parse_name(name, field, "tenants", "demandPartners")
        return tenant_id, partner_id

    async def create(
        self, caller: Principal, parent: str, partner_id: str, partner: Partner
    ) -> Partner:
        tenant_id = names.own_tenant(parent, caller.tenant_id)
        names.validate_id(partner_id, "demand_partner_id")
        now = self._clock()
        partner = dataclasses.replace(
            partner, tenant_id=tenant_id, id=partner_id, create_time=now, update_time=now
        )
        self._check(partner, "demand_partner")
        values = dataclasses.asdict(partner)
        values["exchange_seats"] = list(partner.exchange_seats)
        try:
            async with self._db.engine.begin() as conn:
                await conn.execute(bidding_demand_partners.insert().values(**values))
        except IntegrityError:
            raise AlreadyExists(
                f"{partner.name} exists", metadata={"resource": partner.name}
            ) from None
        await self.load(tenant_id)  # applies in this process at once
        return partner

    async def _get(self, tenant_id: str, partner_id: str) -> Partner | None:
        p = bidding_demand_partners.c
        async with self._db.engine.connect() as conn:
            row = (
                await conn.execute(
                    sa.select(bidding_demand_partners).where(
                        p.tenant_id == tenant_id, p.id == partner_id
                    )
                )
            ).first()
        return _row_partner(row) if row is not None else None

    async def get(self, caller: Principal, name: str) -> Partner:
        found = await self._get(*self._partner_name(caller, name))
        if found is None:
            raise NotFound(f"no demand partner {name}", metadata={"resource": name})
        return found

    async def list(
        self, caller: Principal, parent: str, page_size: int, page_token: str
    ) -> tuple[list[Partner], str]:
        tenant_id = names.own_tenant(parent, caller.tenant_id)
        size = names.page_size(page_size)
        request = scope("bidding.ListDemandPartners", tenant_id)
        cursor = self._pages.decode(request, page_token, "id")
        p = bidding_demand_partners.c
        query = (
            sa.select(bidding_demand_partners)
            .where(p.tenant_id == tenant_id)
            .order_by(p.id)
            .limit(size + 1)
        )
        if cursor is not None:
            query = query.where(p.id > cursor["id"])
        async with self._db.engine.connect() as conn:
            rows = (await conn.execute(query)).all()
        found = [_row_partner(r) for r in rows[:size]]
        token = self._pages.encode(request, {"id": found[-1].id}) if len(rows) > size else ""
        return found, token

    async def update(
        self, caller: Principal, name: str, changes: Partner, paths: Sequence[str]
    ) -> Partner:
        current = await self.get(caller, name)
        wanted = list(paths) or [p for p in SETTABLE if p != "credential" or changes.credential]
        unknown = sorted(set(wanted) - set(SETTABLE))
        if unknown:
            raise InvalidArgument.field(
                "update_mask", f"{unknown[0]!r} cannot be changed; one of {', '.join(SETTABLE)}"
            )
        merged = dataclasses.replace(
            current, **{p: getattr(changes, p) for p in wanted}, update_time=self._clock()
        )
        self._check(merged, "demand_partner", wanted)
        values = {p: getattr(merged, p) for p in wanted}
        if "exchange_seats" in values:
            values["exchange_seats"] = list(merged.exchange_seats)
        p = bidding_demand_partners.c
        async with self._db.engine.begin() as conn:
            await conn.execute(
                bidding_demand_partners.update()
                .where(p.tenant_id == merged.tenant_id, p.id == merged.id)
                .values(**values, update_time=merged.update_time)
            )
        await self.load(merged.tenant_id)
        return merged

    async def delete(self, caller: Principal, name: str) -> None:
        partner = await self.get(caller, name)
        p = bidding_demand_partners.c
        async with self._db.engine.begin() as conn:
            await conn.execute(
                bidding_demand_partners.delete().where(
                    p.tenant_id == partner.tenant_id, p.id == partner.id
                )
            )
        await self.load(partner.tenant_id)

    async def report(self, caller: Principal, name: str) -> Report:
        partner = await self.get(caller, name)
        key = (partner.tenant_id, partner.id)
        health = self._health.get(key, PartnerHealth())
        w = bidding_partner_wins.c
        async with self._db.engine.connect() as conn:
            rows = (
                await conn.execute(
                    sa.select(w.currency, sa.func.count(), sa.func.sum(w.price_micros))
                    .where(w.tenant_id == partner.tenant_id, w.partner_id == partner.id)
                    .group_by(w.currency)
                    .order_by(w.currency)
                )
            ).all()
        return Report(
            stats=dataclasses.replace(self._stats.get(key, _Stats())),
            p50_ms=health.percentile(0.5),
            p99_ms=health.percentile(0.99),
            share=health.share,
            timeout_ms=health.timeout_us(partner.timeout_us) // 1000,
            wins=sum(int(n) for _, n, _ in rows),
            spend=tuple((str(c), int(s or 0) / 1e9) for c, _, s in rows),
        )
