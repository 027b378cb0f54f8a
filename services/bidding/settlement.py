"""Settling bids from win, billing, click and loss notices: spend into the budget
ledger (idempotent per bid id), the impression into the frequency caps (once
per bid), and an analytics event."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Iterator
from typing import Any

from services.analytics.events import AnalyticsEvent, EventType
from services.bidding.caps import FrequencyCaps
from services.bidding.currency import Rates, UnknownCurrency
from services.bidding.news import CLICK, WIN, BidNews, BidNewsItem
from services.bidding.notices import NoticeSigner, NoticeToken, parse_price
from services.bidding.upstream import BidEvents, SpendLedger
from services.campaigns.budget import DeliveryEventIn
from services.campaigns.model import Money
from services.common.clock import now_us
from services.common.errors import InvalidArgument, Unavailable

# Notices older than this are refused: a token is not a bearer credential forever.
MAX_NOTICE_AGE_US = 7 * 86_400 * 1_000_000
#: A notice is answered once its event is journaled; past this, 503 (the
#: exchange retries, and every side effect of a notice happens once).
NOTICE_JOURNAL_TIMEOUT_S = 2.0
#: Notices settled at once in this process; more are answered 503 at once.
#: A stalled database holds each notice up to its pool wait: without a bound,
#: an exchange's retries pile up (and take the CPU bids need) until it heals.
NOTICES_IN_FLIGHT_MAX = 64


class Settlement:
    def __init__(
        self,
        budgets: SpendLedger,
        caps: FrequencyCaps,
        signer: NoticeSigner,
        rates: Rates,
        events: BidEvents | None = None,
        clock: Callable[[], int] = now_us,
        news: BidNews | None = None,
    ) -> None:
        self._budgets = budgets
        #: Told of each win settled for the first time (journeys' triggers).
        self.news = news
        self._caps = caps
        self._signer = signer
        self._rates = rates
        self._events = events
        self._clock = clock
        self._in_flight = 0
        self.max_in_flight = NOTICES_IN_FLIGHT_MAX
        #: Dynamic creative optimisation's templates (decisioning): a DCO
        #: bid's win counts its variant's impression, its click its click.
        self.creatives: Any = None

    @contextlib.contextmanager
    def _admitted(self) -> Iterator[None]:
        if self._in_flight >= self.max_in_flight:
            raise Unavailable(
                f"{self._in_flight} notices are being settled (the most at once); retry later"
            )
        self._in_flight += 1
        try:
            yield
        finally:
            self._in_flight -= 1

    def _token(self, t: str) -> NoticeToken:
        token = self._signer.verify(t)
        if self._clock() - token.issued_us > MAX_NOTICE_AGE_US:
            raise InvalidArgument.field("t", "the notice is older than 7 days")
        return token

    def _amount(self, token: NoticeToken, price_cpm: float) -> Money:
        """One impression's cost in the campaign's budget currency."""
        try:
            per_impression = self._rates.convert(
                price_cpm / 1000.0, token.currency, token.budget_currency
            )
        except UnknownCurrency:
            raise InvalidArgument.field("t", "the notice's currency is not configured") from None
        return Money(token.budget_currency, round(per_impression * 1_000_000))

    async def win(self, t: str, price: str) -> bool:
        """Book the spend, then count the impression for frequency caps. Both
        happen once per bid however often the exchange retries, and a retry
        after either failed (503) completes what is missing: the ledger keeps
        the spend once, the caps' once-marker the impression."""
        token, cpm = self._token(t), parse_price(price)
        with self._admitted():
            recorded = await self._book(token, "WIN", cpm)
            await self._caps.record_impression_once(
                token.bid_id, token.user_id, token.campaign_id, self._clock(), token.time_zone
            )
            await self._event(EventType.WIN, token, cpm)
            await self._count_variant(token, "impression")
        news = self.news
        if recorded and news is not None and token.user_id and news.wants(token.tenant_id, WIN):
            news.tell(BidNewsItem(WIN, token.tenant_id, token.user_id, token.campaign_id,
                                  token.request_id, token.bid_id, cpm))  # fmt: skip
        return recorded

    async def billing(self, t: str, price: str) -> bool:
        token, cpm = self._token(t), parse_price(price)
        with self._admitted():
            recorded = await self._book(token, "BILLING", cpm)
            await self._event(EventType.BILLING, token, cpm)
        return recorded

    async def click(self, t: str) -> bool:
        """Count the ad's click once per bid: the campaign's ledger (CLICK),
        the analytics store's `click` event (which labels the bid for the
        model's training) and, the first time, journeys' click triggers."""
        token = self._token(t)
        with self._admitted():
            recorded = await self._book(token, "CLICK", None)
            await self._event(EventType.CLICK, token, 0.0)
            await self._count_variant(token, "click")
        news = self.news
        if recorded and news is not None and token.user_id and news.wants(token.tenant_id, CLICK):
            news.tell(BidNewsItem(CLICK, token.tenant_id, token.user_id, token.campaign_id,
                                  token.request_id, token.bid_id, 0.0))  # fmt: skip
        return recorded

    async def loss(self, t: str, reason: str) -> None:
        token = self._token(t)
        if len(reason) > 20 or (reason and not reason.replace("${AUCTION_LOSS}", "").isdigit()):
            if reason != "${AUCTION_LOSS}":
                raise InvalidArgument.field("reason", "must be an OpenRTB loss reason code")
        await self._event(EventType.LOSS, token, 0.0, reason=reason.replace("${AUCTION_LOSS}", ""))

    async def _count_variant(self, token: NoticeToken, kind: str) -> None:
        """Once per bid and kind (a retried notice counts nothing more)."""
        if token.variant and self.creatives is not None:
            template_id, _, variant_id = token.variant.partition("/")
            await self.creatives.count_one(
                token.tenant_id, template_id, f"{token.bid_id}-{kind}", variant_id, kind
            )

    async def _book(self, token: NoticeToken, kind: str, cpm: float | None) -> bool:
        recorded = await self._budgets.record_events(
            None,
            f"tenants/{token.tenant_id}",
            [
                DeliveryEventIn(
                    campaign=f"tenants/{token.tenant_id}/campaigns/{token.campaign_id}",
                    bid_id=token.bid_id,
                    type=kind,
                    amount=Money() if cpm is None else self._amount(token, cpm),
                )
            ],
        )
        return recorded > 0

    async def _event(
        self, kind: EventType, token: NoticeToken, cpm: float, reason: str = ""
    ) -> None:
        """The notice's analytics event, journaled before the notice is
        answered: a notice answered 200 is never missing from analytics, and a
        retry (after a 503 or a lost answer) collapses on the event id."""
        events = self._events
        if events is None:
            return
        accepted = events.emit(notice_event(kind, token, cpm, reason))
        if accepted:
            try:
                async with asyncio.timeout(NOTICE_JOURNAL_TIMEOUT_S):
                    await events.acknowledged()
                return
            except TimeoutError:
                pass
        raise Unavailable("the analytics journal cannot take the notice's event; retry")


def notice_event(
    kind: EventType, token: NoticeToken, cpm: float, reason: str = ""
) -> AnalyticsEvent:
    """A notice's analytics event: one per bid and kind (a retried notice
    collapses on its id), with the clearing price in micros of a CPM."""
    return AnalyticsEvent(
        event_type=kind,
        event_id=f"{token.bid_id}-{kind.value}",
        tenant_id=token.tenant_id,
        request_id=token.request_id,
        imp_id=token.imp_id,
        bid_id=token.bid_id,
        campaign_id=token.campaign_id,
        offer_id=token.offer_id,
        user_id=token.user_id,
        price_micros=round(cpm * 1_000_000),
        currency=token.currency,
        reason=reason,
    )
