"""The bid processor: ONE pipeline behind every entry point (REST /v1/bid,
gRPC ProcessBid and StreamBids, NATS agents), so the same request gets the
same decision wherever it arrives.

    user id -> consent -> profile (L1/L2) -> candidates from the live index
    -> pacing throttle -> frequency caps -> CoLaNet scores -> loyalty boost
    -> per-imp winner vs floor -> response with notice URLs -> analytics

It reads the OpenRTB message (this is the protocol adapter of the bidding
domain); the decisions themselves are the pure functions of matching.py,
auction.py, consent.py and caps.py."""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from typing import Any

from prometheus_client import CollectorRegistry

from campaignexpress.openrtb.v2 import openrtb_pb2 as rtb
from inference.features import BidContext
from services.analytics.events import attrs_json, bid_row, no_bid_row
from services.backends.outages import is_backend_outage
from services.bidding import consent as consent_rules
from services.bidding.auction import Winner, run_auction
from services.bidding.caps import FrequencyCaps
from services.bidding.currency import Rates
from services.bidding.decisions import Exploration, decision_row, encode_features
from services.bidding.identity import resolve_user_id
from services.bidding.matching import DEVICE_GROUPS, Candidate, CandidateIndex, Context, Slot
from services.bidding.news import BID, BidNews, BidNewsItem
from services.bidding.notices import CLICK_MACRO, NoticeSigner, NoticeToken
from services.bidding.partners import DemandPartners, Fanout, PartnerBid, presubstitute
from services.bidding.profiles import ProfileStore, UserProfile, default_profile, tenant_user
from services.bidding.upstream import BidEvents, LiveCampaigns
from services.campaigns.index import OfferFacts
from services.common.clock import now_us
from services.common.ids import random_hex_id
from services.common.loopmetrics import Counter, Histogram
from services.common.spans import child_span
from services.inference.engine import InferenceEngine

log = logging.getLogger(__name__)

SEAT = "campaign-express"
DEFAULT_TMAX_MS = 100
# Time kept for encoding and the network after the decision.
TMAX_MARGIN_US = 5_000
#: The most a bid waits for the hot store (a profile read, a caps read): a slow
#: or frozen Redis costs a bid at most this, never its whole tmax.
HOT_STORE_BUDGET_US = 20_000
#: Kept for scoring and the answer when a hot-store read must end early.
SCORING_RESERVE_US = 10_000
# Bid templates kept (one per live offer; cleared past this).
MAX_BID_TEMPLATES = 4096

# OpenRTB 2.6 no-bid reason codes used.
NBR_TECHNICAL = 1
NBR_INVALID = 2
NBR_UNMATCHED_USER = 8
NBR_UNKNOWN = 0
# Extension range (500+): ours.
NBR_NO_CANDIDATE = 500
NBR_CAPPED = 501
NBR_BELOW_FLOOR = 502
NBR_UNKNOWN_CURRENCY = 503
NBR_TIMEOUT = 504
NBR_SUPPRESSED = 505  # a journey suppressed bidding for the person


@dataclass(frozen=True, slots=True)
class BidOutcome:
    response: rtb.BidResponse | None  # None: no bid
    nbr: int = NBR_UNKNOWN
    reason: str = ""


class _Metrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.requests = Counter(
            "campaign_express_bids", "Bid requests by outcome.", ["outcome"], registry=registry
        )
        self.no_bids = Counter(
            "campaign_express_no_bids", "No-bids by reason.", ["reason"], registry=registry
        )
        self.latency = Histogram(
            "campaign_express_bid_seconds",
            "Time to decide a bid, inside the processor.",
            buckets=(0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05),
            registry=registry,
        )
        self.journal_wait = Histogram(
            "campaign_express_bid_journal_wait_seconds",
            "Time a decided bid waits for its event's journal write before it is answered.",
            buckets=(0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05),
            registry=registry,
        )
        self.loyalty_boosted = Counter(
            "campaign_express_bids_loyalty_boosted",
            "Bids whose price got a loyalty-tier boost.",
            registry=registry,
        )


def _slots(request: rtb.BidRequest) -> list[Slot]:
    slots = []
    for imp in request.imp:
        formats: set[str] = set()
        sizes: set[tuple[int, int]] = set()
        blocked: set[int] = set()
        if imp.HasField("banner"):
            formats.add("BANNER")
            sizes.update((f.w, f.h) for f in imp.banner.format if f.w and f.h)
            if imp.banner.w and imp.banner.h:
                sizes.add((imp.banner.w, imp.banner.h))
            blocked.update(imp.banner.battr)
        if imp.HasField("video"):
            formats.add("VIDEO")
            if imp.video.w and imp.video.h:
                sizes.add((imp.video.w, imp.video.h))
            blocked.update(imp.video.battr)
        if imp.HasField("native"):
            formats.add("NATIVE")
            blocked.update(imp.native.battr)
        if imp.HasField("audio"):
            formats.add("AUDIO")
            blocked.update(imp.audio.battr)
        deals = frozenset(d.id for d in imp.pmp.deals) if imp.HasField("pmp") else frozenset()
        slots.append(
            Slot(
                imp_id=imp.id,
                formats=frozenset(formats),
                sizes=frozenset(sizes),
                floor=imp.bidfloor,
                floor_currency=imp.bidfloorcur or "USD",
                deals=deals,
                private_auction=bool(imp.pmp.private_auction) if imp.HasField("pmp") else False,
                blocked_attributes=frozenset(blocked),
            )
        )
    return slots


def _country(request: rtb.BidRequest) -> str:
    if request.device.HasField("geo") and request.device.geo.country:
        return request.device.geo.country.upper()
    if request.user.HasField("geo") and request.user.geo.country:
        return request.user.geo.country.upper()
    return ""


class BidProcessor:
    def __init__(
        self,
        *,
        index: LiveCampaigns,
        engine: InferenceEngine,
        profiles: ProfileStore,
        caps: FrequencyCaps,
        signer: NoticeSigner,
        rates: Rates,
        events: BidEvents | None = None,
        metrics_registry: CollectorRegistry | None = None,
        vendor_id: int | None = None,
        clock: Callable[[], int] = now_us,
        report_outage: Callable[[BaseException], None] | None = None,
        hot_store_down: Callable[[], bool] | None = None,
        rng: Callable[[], float] = random.random,
        news: BidNews | None = None,
        exploration: Exploration | None = None,
        decisions: BidEvents | None = None,
        demand: DemandPartners | None = None,
    ) -> None:
        self._index = index
        #: The tenant's DSPs (services/bidding/partners.py): sent each request,
        #: their bids in the auction.
        self.demand = demand
        self._news = news
        self._engine = engine
        self._profiles = profiles
        self._caps = caps
        self._signer = signer
        self._rates = rates
        self._events = events
        self._metrics = _Metrics(metrics_registry or CollectorRegistry())
        self._bids = self._metrics.requests.labels("bid")
        self._no_bids = self._metrics.requests.labels("no_bid")
        self._vendor_id = vendor_id
        self._clock = clock
        self._report_outage = report_outage or (lambda error: log.warning("hot store: %s", error))
        self._hot_store_down = hot_store_down or (lambda: False)
        self._rng = rng
        self._templates: dict[int, tuple[OfferFacts, rtb.Bid]] = {}
        #: The learning loop (services/bidding/decisions.py): how the auction
        #: explores, and where each bid's decision is logged.
        self.exploration = exploration or Exploration(rate=0.0)
        self._decisions = decisions
        #: Dynamic creative optimisation (decisioning's creative templates):
        #: an offer that names a template bids with the variant it picks.
        self.creatives: Any = None

    async def process(
        self,
        tenant_id: str,
        request: rtb.BidRequest,
        *,
        received_us: int | None = None,
        source: str = "",
        price_factor: float = 1.0,
    ) -> BidOutcome:
        """The bid or no-bid for `request`; `source`: the exchange seat it
        came from (on its bid events), `price_factor`: the seat's bid
        adjustment (prices are multiplied before floors are checked)."""
        started = time.perf_counter()
        now = self._clock()
        received = received_us or now
        tmax = request.tmax if request.HasField("tmax") and request.tmax > 0 else DEFAULT_TMAX_MS
        deadline = received + tmax * 1000 - TMAX_MARGIN_US
        demand = self.demand
        fanout = demand.start_fanout(tenant_id, request, source, deadline) if demand else None
        try:
            with child_span("bid.decide"):  # matching, scoring, the auction, the answer
                outcome = await self._decide(
                    tenant_id, request, now, deadline, source, price_factor, fanout
                )
            if fanout is not None and not fanout.collected and outcome.nbr != NBR_TECHNICAL:
                # no internal bid: the partners' bids alone
                outcome = await self._partners_only(
                    tenant_id, request, now, source, price_factor, fanout, outcome
                )
        except Exception:
            log.exception("bid %s failed", request.id)
            outcome = BidOutcome(None, NBR_TECHNICAL, "TECHNICAL_ERROR")
        if outcome.response is not None and self._clock() > deadline:
            outcome = BidOutcome(None, NBR_TIMEOUT, "TMAX_EXCEEDED")
        self._metrics.latency.observe(time.perf_counter() - started)
        if outcome.response is not None and not await self._journaled(deadline):
            # Acknowledged = journaled: a bid whose event is not on disk by its
            # deadline is not answered (its bid row, if journaled later, is
            # followed by this no-bid row of the same request).
            outcome = BidOutcome(None, NBR_TECHNICAL, "JOURNAL_TIMEOUT")
        if outcome.response is None:
            self._no_bids.inc()
            self._metrics.no_bids.labels(outcome.reason).inc()
            self._record_no_bid(tenant_id, request, outcome, now, source)
        else:
            self._bids.inc()
        return outcome

    def no_bid(
        self, tenant_id: str, request: rtb.BidRequest, reason: str, source: str = ""
    ) -> BidOutcome:
        """A no-bid decided before the processor (an exchange seat's QPS or
        formats): counted and recorded as every no-bid is."""
        outcome = BidOutcome(None, NBR_UNKNOWN, reason)
        self._no_bids.inc()
        self._metrics.no_bids.labels(reason).inc()
        self._record_no_bid(tenant_id, request, outcome, self._clock(), source)
        return outcome

    async def _decide(
        self,
        tenant_id: str,
        request: rtb.BidRequest,
        now: int,
        deadline: int,
        source: str = "",
        price_factor: float = 1.0,
        fanout: Fanout | None = None,
    ) -> BidOutcome:
        user, device, regs = request.user, request.device, request.regs
        user_id, _ = resolve_user_id(user.id, user.buyeruid, device.ifa)
        decision = consent_rules.decide(
            regs.gdpr if regs.HasField("gdpr") else None,
            user.consent,
            regs.us_privacy,
            regs.gpp,
            list(regs.gpp_sid),
            regs.coppa,
            device.lmt,
            device.dnt,
            self._vendor_id,
        )
        known_user = bool(user_id) and decision.personalize
        suppressing: UserProfile | None = None  # a profile with suppressions
        if known_user:
            budget = self._hot_store_budget(deadline)
            profile = await self._profiles.get(
                tenant_user(tenant_id, user_id),
                l2_budget=budget / 1e6,
                # a budget cut short by this bid's own deadline says nothing of Redis
                report_timeout=budget >= HOT_STORE_BUDGET_US,
            )
            if profile.suppressed:
                suppressing = profile
            if profile.ads_opt_out:
                # They said no to personalised ads (audience consent): as a
                # request without consent, whatever the request's signals.
                known_user = False
                profile = default_profile(user_id)
        else:
            profile = default_profile(user_id)
        matcher = self._index.view(tenant_id, CandidateIndex)
        if not matcher.live:
            return BidOutcome(None, NBR_NO_CANDIDATE, "NO_LIVE_CAMPAIGNS")
        slots = _slots(request)
        ctx = Context(
            now_us=now,
            country=_country(request),
            device_type=DEVICE_GROUPS.get(device.devicetype, ""),
            site_domain=(request.site.domain or "").lower() if request.HasField("site") else "",
            app_bundle=request.app.bundle if request.HasField("app") else "",
            segments=frozenset(str(s) for s in profile.segments) if known_user else frozenset(),
            blocked_categories=frozenset(request.bcat),
            blocked_advertisers=frozenset(d.lower() for d in request.badv),
            blocked_apps=frozenset(request.bapp),
            loyalty_tier=profile.loyalty.tier if known_user else "",
        )
        candidates = matcher.select(slots, ctx)
        if matcher.throttled:
            # Pacing: each campaign takes this opportunity with its bid rate.
            taking = {
                c.campaign.id
                for c in candidates
                if c.live.bid_rate >= 1 or self._rng() < c.live.bid_rate
            }
            candidates = [c for c in candidates if c.campaign.id in taking]
        if not candidates:
            return BidOutcome(None, NBR_NO_CANDIDATE, "NO_CANDIDATES")
        if suppressing is not None:
            # A journey took the person out of bidding, for some campaigns or all.
            candidates = [c for c in candidates if not suppressing.suppresses(c.campaign.id, now)]
            if not candidates:
                return BidOutcome(None, NBR_SUPPRESSED, "SUPPRESSED")
        utilization = 0.0
        if matcher.capped:
            candidates, utilization = await self._apply_caps(
                candidates, user_id, known_user, now, deadline
            )
            if not candidates:
                return BidOutcome(None, NBR_CAPPED, "FREQUENCY_CAPPED")
        if self._clock() > deadline:
            return BidOutcome(None, NBR_TIMEOUT, "TMAX_EXCEEDED")
        feature_profile = profile.to_feature_profile(
            BidContext(
                frequency_cap_utilization=utilization,
                device=_FEATURE_DEVICE.get(ctx.device_type, "UNKNOWN"),
            ),
            now_us=now,
        )
        offer_ids = [c.facts.name for c in candidates]
        scoring = self._engine.request(feature_profile, offer_ids)
        with child_span("bid.score"):  # (the wait for the batched model call)
            prediction = await self._engine.predict(scoring)
        tier = ctx.loyalty_tier
        response_currency = self._response_currency(request)
        if response_currency is None:
            return BidOutcome(None, NBR_UNKNOWN_CURRENCY, "UNKNOWN_CURRENCY")
        scores = prediction.scores.score.tolist()
        exploration = self.exploration
        explore = None
        if not exploration.off:
            request_id = request.id

            def explore(imp_id: str, k: int) -> tuple[int, float, bool]:
                return exploration.pick(exploration.draw(request_id, imp_id), k)

        winners, reason = run_auction(
            candidates,
            scores,
            prediction.scores.ctr.tolist(),
            tier,
            slots,
            self._rates,
            response_currency,
            explore,
            exploration.top,
            price_factor,
        )
        partner_winners: list[PartnerBid] = []
        if fanout is not None and self.demand is not None:
            fanout.collected = True
            offers = await self.demand.collect(fanout, request, response_currency, price_factor)
            winners, partner_winners = _merge(winners, offers)
        if not winners and not partner_winners:
            if reason == "unknown currency":
                return BidOutcome(None, NBR_UNKNOWN_CURRENCY, "UNKNOWN_CURRENCY")
            return BidOutcome(None, NBR_BELOW_FLOOR, "BELOW_FLOOR")
        if tier in ("RESERVE", "GOLD") and winners:
            self._metrics.loyalty_boosted.inc(len(winners))
        response = self._response(
            tenant_id, request, winners, user_id, response_currency, now, source, partner_winners,
            ctx.segments,
        )  # fmt: skip
        if response is not None and self._decisions is not None and winners:
            self._log_decisions(
                tenant_id, request, slots, winners, response, user_id, now,
                (scoring.user, offer_ids, scores, prediction.model_sha256),
            )  # fmt: skip
        if response is None:
            return BidOutcome(None, NBR_TECHNICAL, "JOURNAL_FULL")
        return BidOutcome(response)

    async def _journaled(self, deadline: int) -> bool:
        """Make sure this bid's events are in the journal before it is
        answered: written at once from this thread (they survive a kill -9 of
        the process from then on), or, when the journal thread holds the file
        or the journal is failing, awaited, at most until the deadline."""
        events = self._events
        if events is None or events.write_now():
            return True
        left = deadline - self._clock()
        if left <= 0:
            return False
        started = time.perf_counter()
        try:
            async with asyncio.timeout(left / 1e6):
                await events.acknowledged()
        except TimeoutError:
            return False
        finally:
            self._metrics.journal_wait.observe(time.perf_counter() - started)
        return True

    def _hot_store_budget(self, deadline: int) -> int:
        """Microseconds a hot-store read may take now (0: none left)."""
        return max(0, min(HOT_STORE_BUDGET_US, deadline - self._clock() - SCORING_RESERVE_US))

    async def _apply_caps(
        self,
        candidates: list[Candidate],
        user_id: str,
        known_user: bool,
        now: int,
        deadline: int,
    ) -> tuple[list[Candidate], float]:
        """Drop capped campaigns. Without a known user, caps cannot be
        counted: campaigns with caps are left out rather than overserved.
        While the hot store is down or does not answer in its budget, each
        campaign's `cap_failure_mode` decides: CLOSED (the default) sits the
        bid out, OPEN bids as if under its caps."""
        with_caps = {
            c.campaign.id: (
                [(f.max_impressions, f.window) for f in c.campaign.spec.frequency_caps],
                c.campaign.spec.schedule.time_zone,
            )
            for c in candidates
            if c.campaign.spec.frequency_caps
        }
        if not with_caps:
            return candidates, 0.0
        if not known_user:
            return [c for c in candidates if c.campaign.id not in with_caps], 0.0
        budget = self._hot_store_budget(deadline)
        if budget <= 0 or self._hot_store_down():
            return _caps_unknown(candidates, with_caps), 0.0
        try:
            async with asyncio.timeout(budget / 1e6):
                checks = await self._caps.check(
                    user_id, [(cid, caps, tz) for cid, (caps, tz) in with_caps.items()], now
                )
        except Exception as exc:
            # The counts cannot be read in time: each campaign with caps
            # follows its failure mode; the others still compete.
            if not is_backend_outage(exc):  # timeouts included
                raise
            if not isinstance(exc, TimeoutError) or budget >= HOT_STORE_BUDGET_US:
                self._report_outage(exc)  # not when this bid's deadline cut it short
            return _caps_unknown(candidates, with_caps), 0.0
        capped = {cid for cid, check in checks.items() if check.reason is not None}
        utilization = max((c.utilization for c in checks.values()), default=0.0)
        return [c for c in candidates if c.campaign.id not in capped], utilization

    def _response_currency(self, request: rtb.BidRequest) -> str | None:
        if not request.cur:
            return "USD"
        for cur in request.cur:
            if self._rates.knows(cur):
                return cur.upper()
        return None

    def _response(
        self,
        tenant_id: str,
        request: rtb.BidRequest,
        winners: list[Winner],
        user_id: str,
        currency: str,
        now: int,
        source: str = "",
        partner_winners: Sequence[PartnerBid] = (),
        segments: Collection[str] = (),
    ) -> rtb.BidResponse | None:
        """The bid response, or None when the journal refused a bid's event
        (failing and full): a bid that cannot be journaled is not answered."""
        journaled = True
        response = rtb.BidResponse(id=request.id, bidid=random_hex_id(), cur=currency)
        if partner_winners:
            journaled &= self._partner_seatbids(
                tenant_id, request, partner_winners, response, user_id, currency, now, source
            )
        if not winners:
            return response if journaled else None
        seat = response.seatbid.add(seat=SEAT)
        for winner in winners:
            candidate = winner.scored.candidate
            campaign, offer = candidate.campaign, candidate.offer
            bid_id = random_hex_id()
            choice, template_id = None, candidate.facts.creative_template
            if template_id and self.creatives is not None:
                choice = self.creatives.pick(tenant_id, template_id, segments)
            token = NoticeToken(
                tenant_id=tenant_id,
                campaign_id=campaign.id,
                offer_id=offer.id,
                bid_id=bid_id,
                imp_id=winner.imp_id,
                user_id=user_id,
                currency=currency,
                budget_currency=campaign.spec.budget.total.currency_code,
                request_id=request.id,
                time_zone=campaign.spec.schedule.time_zone,
                issued_us=now,
                variant=f"{template_id}/{choice.variant_id}" if choice is not None else "",
            )
            nurl, burl, lurl, click = self._signer.urls(token)
            bid = seat.bid.add()
            template = self._bid_template(candidate.facts)
            bid.CopyFrom(template)
            bid.id, bid.impid, bid.price = bid_id, winner.imp_id, winner.price_cpm
            bid.nurl, bid.burl, bid.lurl = nurl, burl, lurl
            if choice is not None:  # the variant's markup, a creative of its own
                bid.adm = choice.markup.replace(CLICK_MACRO, click)
                bid.crid = f"{offer.id}.{choice.variant_id}"[:200]
            elif CLICK_MACRO in template.adm:
                bid.adm = template.adm.replace(CLICK_MACRO, click)
            deals = candidate.live.deals
            for imp in request.imp if deals else ():
                if imp.id == winner.imp_id and imp.HasField("pmp"):
                    for deal in imp.pmp.deals:
                        if deal.id in deals:
                            bid.dealid = deal.id
                            break
            journaled &= self._record_bid(
                tenant_id, request, winner, bid_id, user_id, currency, now, source
            )
            news = self._news
            if news is not None and user_id and news.wants(tenant_id, BID):
                news.tell(BidNewsItem(BID, tenant_id, user_id, campaign.id, request.id, bid_id,
                                      winner.price_cpm))  # fmt: skip
        return response if journaled else None

    async def _partners_only(
        self,
        tenant_id: str,
        request: rtb.BidRequest,
        now: int,
        source: str,
        price_factor: float,
        fanout: Fanout,
        internal: BidOutcome,
    ) -> BidOutcome:
        """The answer made of the partners' bids when the internal auction
        made none (`internal`, its no-bid, when they made none either)."""
        assert self.demand is not None
        fanout.collected = True
        currency = self._response_currency(request)
        if currency is None:
            await self.demand.collect(fanout, request, "USD", price_factor)  # counted, dropped
            return internal
        offers = await self.demand.collect(fanout, request, currency, price_factor)
        _, partner_winners = _merge([], offers)
        if not partner_winners:
            return internal
        user_id, _ = resolve_user_id(request.user.id, request.user.buyeruid, request.device.ifa)
        response = self._response(
            tenant_id, request, [], user_id, currency, now, source, partner_winners
        )
        if response is None:
            return BidOutcome(None, NBR_TECHNICAL, "JOURNAL_FULL")
        return BidOutcome(response)

    def _partner_seatbids(
        self,
        tenant_id: str,
        request: rtb.BidRequest,
        partner_winners: Sequence[PartnerBid],
        response: rtb.BidResponse,
        user_id: str,
        currency: str,
        now: int,
        source: str,
    ) -> bool:
        """The partners' winning bids, a seatbid per partner, each with our
        bid id and a win notice that records the win and calls the
        partner's own; False when the journal refused a bid's event."""
        assert self.demand is not None
        journaled = True
        seats: dict[str, rtb.SeatBid] = {}
        for offer in partner_winners:
            partner = offer.partner
            seatbid = seats.get(partner.id)
            if seatbid is None:
                seatbid = seats[partner.id] = response.seatbid.add(seat=partner.id)
            bid_id = random_hex_id()
            token = self.demand.win_token(offer, bid_id, request, currency, source)
            bid = seatbid.bid.add(id=bid_id, impid=offer.imp_id, price=offer.price_cpm)
            _copy_partner_bid(offer.bid, bid)
            bid.nurl = self.demand.signer.nurl(token)
            if bid.burl:  # the partner's own, its ids filled in (the price: the exchange)
                bid.burl = presubstitute(bid.burl, token)
            if bid.lurl:
                bid.lurl = presubstitute(bid.lurl, token)
            if self._events is not None:
                journaled &= self._events.emit(
                    bid_row(
                        now, tenant_id, request.id, offer.imp_id, bid_id, "",
                        str(offer.bid.get("crid", "")), user_id,
                        round(offer.price_cpm * 1_000_000), currency,
                        attrs_json({"partner": partner.id}), source,
                    )
                )  # fmt: skip
        return journaled

    def _bid_template(self, facts: OfferFacts) -> rtb.Bid:
        """The offer's part of a bid (ids, markup, domains, categories,
        attributes, size), built once per offer version: copying it is ~40%
        cheaper than setting those fields on every bid. Keyed by the facts
        object, which the live index replaces when the offer changes."""
        found = self._templates.get(id(facts))
        if found is not None and found[0] is facts:
            return found[1]
        if len(self._templates) >= MAX_BID_TEMPLATES:
            self._templates.clear()  # offers of earlier index versions
        offer = facts.offer
        spec = offer.spec
        template = rtb.Bid(
            adid=offer.id,
            crid=offer.id,
            adm=spec.markup_template,
            adomain=spec.advertiser_domains,
            cat=spec.iab_categories,
            attr=spec.attributes,
        )
        size = next(iter(spec.sizes), None)
        if size is not None:
            template.w, template.h = size.width, size.height
        self._templates[id(facts)] = (facts, template)  # the facts kept: ids stay unique
        return template

    def _record_bid(
        self,
        tenant_id: str,
        request: rtb.BidRequest,
        w: Winner,
        bid_id: str,
        user_id: str,
        currency: str,
        now: int,
        source: str = "",
    ) -> bool:
        if self._events is None:
            return True
        candidate = w.scored.candidate
        return self._events.emit(
            bid_row(
                now,
                tenant_id,
                request.id,
                w.imp_id,
                bid_id,
                candidate.campaign.id,
                candidate.offer.id,
                user_id,
                round(w.price_cpm * 1_000_000),
                currency,
                attrs_json({"score": round(w.scored.score, 6)}),
                source,
            )
        )

    def _log_decisions(
        self,
        tenant_id: str,
        request: rtb.BidRequest,
        slots: list[Slot],
        winners: list[Winner],
        response: rtb.BidResponse,
        user_id: str,
        now: int,
        seen: tuple[Any, list[str], list[float], str],
    ) -> None:
        """One row per bid in `bid_decisions`: what the model saw, what the
        pick was drawn from, its propensity (the learning loop's data)."""
        decisions = self._decisions
        assert decisions is not None
        user, offer_ids, scores, model = seen
        features = encode_features(user)
        positions = {slot.imp_id: i for i, slot in enumerate(slots)}
        ours = next(s for s in response.seatbid if s.seat == SEAT)
        for winner, bid in zip(winners, ours.bid, strict=True):
            drawn = winner.drawn_from
            if drawn:
                names, drawn_scores = [offer_ids[i] for i in drawn], [scores[i] for i in drawn]
            else:  # the greedy pick alone
                names, drawn_scores = [winner.scored.candidate.facts.name], [winner.scored.score]
            decisions.emit(
                decision_row(
                    now,
                    tenant_id,
                    request.id,
                    winner.imp_id,
                    bid.id,
                    user_id,
                    winner.scored.candidate.facts.name,
                    positions.get(winner.imp_id, 0),
                    features,
                    names,
                    drawn_scores,
                    winner.propensity,
                    winner.explored,
                    model,
                )
            )

    def _record_no_bid(
        self,
        tenant_id: str,
        request: rtb.BidRequest,
        outcome: BidOutcome,
        now: int,
        source: str = "",
    ) -> None:
        if self._events is not None:
            self._events.emit(no_bid_row(now, tenant_id, request.id, outcome.reason, source))


def _merge(
    winners: list[Winner], offers: Sequence[PartnerBid]
) -> tuple[list[Winner], list[PartnerBid]]:
    """One auction of the internal winners and the partners' valid bids
    (best first): per impression, the higher price wins (the internal
    winner on a tie)."""
    internal = {w.imp_id: w.price_cpm for w in winners}
    taken: dict[str, PartnerBid] = {}
    for offer in offers:
        if offer.imp_id in taken:
            continue
        if offer.price_cpm > internal.get(offer.imp_id, 0.0):
            taken[offer.imp_id] = offer
    if not taken:
        return winners, []
    return [w for w in winners if w.imp_id not in taken], list(taken.values())


#: The fields of a partner's bid copied to ours, with their types.
_PARTNER_BID_TEXT = ("adm", "adid", "crid", "cid", "dealid", "burl", "lurl", "iurl", "bundle")
_PARTNER_BID_INTS = ("w", "h", "api", "protocol", "qagmediarating", "mtype")


def _copy_partner_bid(raw: dict[str, Any], bid: rtb.Bid) -> None:
    """The creative of a partner's bid on ours (fields of the wrong type are
    left out; nurl is ours)."""
    for key in _PARTNER_BID_TEXT:
        value = raw.get(key)
        if isinstance(value, str) and value and len(value) <= 100_000:
            setattr(bid, key, value)
    for key in _PARTNER_BID_INTS:
        value = raw.get(key)
        if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 2**31:
            setattr(bid, key, value)
    domains = raw.get("adomain")
    if isinstance(domains, list):
        bid.adomain.extend(d for d in domains[:20] if isinstance(d, str) and len(d) <= 200)
    cats = raw.get("cat")
    if isinstance(cats, list):
        bid.cat.extend(c for c in cats[:20] if isinstance(c, str) and len(c) <= 100)
    attrs = raw.get("attr")
    if isinstance(attrs, list):
        bid.attr.extend(
            a for a in attrs[:50] if isinstance(a, int) and not isinstance(a, bool)
            and 0 <= a < 2**31
        )  # fmt: skip


def _caps_unknown(candidates: list[Candidate], with_caps: Collection[str]) -> list[Candidate]:
    """The candidates that may bid when their caps cannot be counted: those
    without caps, and those whose caps fail open."""
    return [
        c
        for c in candidates
        if c.campaign.id not in with_caps or c.campaign.spec.cap_failure_mode == "OPEN"
    ]


_FEATURE_DEVICE = {
    "DESKTOP": "DESKTOP",
    "MOBILE": "MOBILE",
    "TABLET": "TABLET",
    "CONNECTED_TV": "CTV",
    "CONNECTED_DEVICE": "CTV",
}
