"""The bidding domain (BiddingService): the bid processor with its profile
store, frequency caps, notice signer, analytics pipeline and settlement. It
reads the campaigns domain's live index and spend ledger and the inference
domain's scoring engine in-process (named interfaces: the bid path cannot
afford a call for them)."""

from __future__ import annotations

import pathlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from campaignexpress.bidding.v1 import (
    bidding_service_pb2,
    bidding_service_pb2_grpc,
    demand_partner_service_pb2,
    demand_partner_service_pb2_grpc,
    exchange_seat_service_pb2,
    exchange_seat_service_pb2_grpc,
)
from services.analytics.pipeline import AnalyticsPipeline
from services.backends.analytics import quote_literal, table_exists
from services.backends.interfaces import AnalyticsStore
from services.bidding.caps import FrequencyCaps
from services.bidding.currency import Rates
from services.bidding.decisions import BID_DECISIONS, Exploration, subject_filter, subject_rows
from services.bidding.decisions import TABLE as DECISIONS_TABLE
from services.bidding.news import BidNews
from services.bidding.notices import NoticeSigner
from services.bidding.partner_servicer import DemandPartnerServicer
from services.bidding.partners import DemandPartners, PartnerSigner
from services.bidding.processor import BidProcessor
from services.bidding.profile_changes import ProfileChanges
from services.bidding.profiles import ProfileStore
from services.bidding.seat_servicer import ExchangeSeatServicer
from services.bidding.seats import Seats
from services.bidding.servicer import BiddingServicer
from services.bidding.settlement import Settlement
from services.campaigns.index import LiveCampaignIndex
from services.kernel import Built, DomainModule, Kernel, Service

BID_EVENTS_COMMIT_SECONDS = 0.010


@dataclass(frozen=True)
class BiddingApi:
    """The domain objects, for the NATS bid agents, benchmarks and tests."""

    processor: BidProcessor
    pipeline: AnalyticsPipeline
    index: LiveCampaignIndex
    settlement: Settlement
    decisions: AnalyticsPipeline  # bid_decisions: the model's learning data
    seats: Seats
    partners: DemandPartners


async def _build(kernel: Kernel) -> Built:
    settings, backends = kernel.settings, kernel.backends
    index: LiveCampaignIndex = kernel.interface("live_campaign_index")
    # The journal is private to one process: each --workers process has its own.
    pipeline = AnalyticsPipeline(
        backends.analytics,
        settings.data_dir / "analytics-journal" / f"worker-{kernel.worker}",
        metrics_registry=kernel.metrics_registry,
        # Group commit (write + fdatasync) every 10 ms rather than the
        # pipeline's 2 ms: at bid rates a commit carries ~10 events instead of
        # ~3, and the fdatasyncs cost about a fifth (measured ~50-100 us of CPU
        # per bid less). Events are still acknowledged within ~10 ms.
        commit_interval=BID_EVENTS_COMMIT_SECONDS,
    )
    # The learning loop's log (services/bidding/decisions.py), journaled on
    # its own: a bid waits for its bid event, never for this row. Training
    # data, not money: written every 50 ms and fsync'ed when a segment is
    # sealed, inserted every 5 s in large batches (each insert of a few rows
    # cost the bid path's core more than the rows themselves).
    decisions = AnalyticsPipeline(
        backends.analytics,
        settings.data_dir / "bid-decisions-journal" / f"worker-{kernel.worker}",
        schema=BID_DECISIONS,
        fsync="seal",
        commit_interval=0.05,
        flush_interval=5.0,
    )
    hot_store_failed, hot_store_down = _hot_store_watch(kernel)
    news: BidNews = kernel.interface("bid_news")
    kernel.when_serving(news.start, news.stop)  # (one-off commands tell nobody)
    signer = NoticeSigner(kernel.secret, settings.public_url)
    rates = Rates()
    caps = FrequencyCaps(backends.hot_store)
    partners = DemandPartners(
        backends.db, kernel.page_tokens, rates, PartnerSigner(kernel.secret, settings.public_url),
        clock=kernel.clock, metrics_registry=kernel.metrics_registry,
    )  # fmt: skip
    kernel.when_serving(partners.start, partners.stop)
    processor = BidProcessor(
        index=index,
        engine=kernel.interface("scoring_engine"),
        profiles=kernel.interface("profile_store"),
        caps=caps,
        signer=signer,
        rates=rates,
        events=pipeline,
        metrics_registry=kernel.metrics_registry,
        report_outage=hot_store_failed,
        hot_store_down=hot_store_down,
        news=news,
        exploration=Exploration(settings.bid_exploration, settings.bid_exploration_top),
        decisions=decisions,
        demand=partners,
    )
    kernel.interface("profile_changes")  # this process hears of other writers' changes
    settlement = Settlement(
        kernel.interface("spend_ledger"), caps, signer, rates, events=pipeline, news=news
    )
    if kernel.has_interface("creative_templates"):  # offers' DCO variants, and their counts
        processor.creatives = settlement.creatives = kernel.interface("creative_templates")
    kernel.lifecycle(pipeline.start, pipeline.stop)
    kernel.lifecycle(decisions.start, decisions.stop)
    if kernel.has_interface("data_subject_hooks"):
        kernel.interface("data_subject_hooks").register(
            "bidding", _BidSubjects(pipeline, decisions, backends.analytics)
        )
    seats = Seats(
        backends.db, kernel.page_tokens, backends.hot_store, rates,
        analytics=backends.analytics, clock=kernel.clock,
        metrics_registry=kernel.metrics_registry, report_outage=hot_store_failed,
    )  # fmt: skip
    seats.keys = kernel.interface("call_authenticator")
    servicer = BiddingServicer(processor, settlement, backends.readiness, seats)
    return Built(
        [servicer, ExchangeSeatServicer(seats), DemandPartnerServicer(partners)],
        api=BiddingApi(processor, pipeline, index, settlement, decisions, seats, partners),
    )


class _BidSubjects:
    """Bidding's part in data-subject requests. Its bid events (user ids
    included) are the analytics store's `bid_events`, which the audience
    domain exports and erases; before an erasure they must be there, not in
    this process's journal. Its logged decisions (`bid_decisions`: what the
    model saw of the person) are exported and erased here."""

    def __init__(
        self, pipeline: AnalyticsPipeline, decisions: AnalyticsPipeline, store: AnalyticsStore
    ) -> None:
        self._pipeline = pipeline
        self._decisions = decisions
        self._store = store

    async def settle(self) -> None:
        await self._pipeline.flush()
        await self._decisions.flush()

    @staticmethod
    def _ids(person: Any) -> list[str]:
        return list(person.values("user_id", "anonymous_id", "ifa"))

    async def export(self, person: Any) -> dict[str, Any]:
        await self._decisions.flush()  # what this process logged, in the store first
        return {
            "bidDecisions": await subject_rows(self._store, person.tenant_id, self._ids(person))
        }

    async def erase(self, person: Any) -> int:
        ids = self._ids(person)
        if not ids or not await table_exists(self._store, DECISIONS_TABLE):
            return 0
        condition = f"tenant_id = {quote_literal(person.tenant_id)} AND {subject_filter(ids)}"
        ((count,),) = await self._store.query(
            f"SELECT count() FROM {DECISIONS_TABLE} WHERE {condition}"
        )
        if count:
            await self._store.execute(
                f"ALTER TABLE {DECISIONS_TABLE} DELETE WHERE {condition} "
                "SETTINGS mutations_sync = 2"
            )
        return int(count)


def _hot_store_watch(
    kernel: Kernel,
) -> tuple[Callable[[BaseException], None], Callable[[], bool]]:
    """(report a hot-store failure, is it known down). While the watch knows
    Redis is down (until its probe answers), bids do not wait on it at all:
    default profiles, campaigns with caps out."""
    watch = kernel.backend_watch

    def failed(error: BaseException) -> None:
        watch.report(error, "hot_store")

    def down() -> bool:
        return watch.is_down("hot_store")

    return failed, down


def _profile_store(kernel: Kernel) -> ProfileStore:
    """The bid path's profiles (one per process): the bidder reads them, the
    audience domain writes them (so this process's cache sees a change at
    once)."""
    hot_store_failed, hot_store_down = _hot_store_watch(kernel)
    return ProfileStore(
        kernel.backends.hot_store,
        metrics_registry=kernel.metrics_registry,
        report_outage=hot_store_failed,
        skip_l2=hot_store_down,
    )


def _profile_changes(kernel: Kernel) -> ProfileChanges:
    """Profile changes between processes (one per process): the audience
    domain publishes them, every process's ProfileStore drops those ids
    from its cache."""
    changes = ProfileChanges(kernel.backends.bus, kernel.interface("profile_store"))
    kernel.lifecycle(changes.start, changes.stop)
    return changes


MODULE = DomainModule(
    name="bidding",
    services=(
        Service(
            bidding_service_pb2.DESCRIPTOR.services_by_name["BiddingService"],
            bidding_service_pb2_grpc.add_BiddingServiceServicer_to_server,
        ),
        Service(
            exchange_seat_service_pb2.DESCRIPTOR.services_by_name["ExchangeSeatService"],
            exchange_seat_service_pb2_grpc.add_ExchangeSeatServiceServicer_to_server,
        ),
        Service(
            demand_partner_service_pb2.DESCRIPTOR.services_by_name["DemandPartnerService"],
            demand_partner_service_pb2_grpc.add_DemandPartnerServiceServicer_to_server,
        ),
    ),
    build=_build,
    migrations=pathlib.Path(__file__).parent / "migrations",
    interfaces={
        "profile_store": _profile_store,
        "profile_changes": _profile_changes,
        # Bids and wins as they happen, for other domains (journeys' triggers).
        "bid_news": lambda kernel: BidNews(),
    },
)
