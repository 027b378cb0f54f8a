"""The campaigns domain: campaigns and offers, the governed workflow and its
scheduler, budgets and pacing (CampaignService); the live campaign index and
the spend ledger the bid path reads in-process."""

from __future__ import annotations

import pathlib

from campaignexpress.campaigns.v1 import campaign_service_pb2, campaign_service_pb2_grpc
from services.campaigns.budget import Budgets
from services.campaigns.demo import seed_demo_campaigns
from services.campaigns.domain import Campaigns
from services.campaigns.events import CampaignEvents
from services.campaigns.index import LiveCampaignIndex
from services.campaigns.servicer import CampaignServicer
from services.campaigns.workflow import Scheduler, Workflow
from services.common.loopmetrics import Counter
from services.kernel import Built, DomainModule, Kernel, Service, TenantSeed


def _campaign_store(kernel: Kernel) -> Campaigns:
    return Campaigns(
        kernel.backends.db,
        CampaignEvents(kernel.backends.bus, kernel.best_effort),
        page_tokens=kernel.page_tokens,
    )


def _spend_ledger(kernel: Kernel) -> Budgets:
    budgets = Budgets(
        kernel.backends.db,
        kernel.interface("campaign_store"),
        CampaignEvents(kernel.backends.bus, kernel.best_effort),
        kernel.clock,
        page_tokens=kernel.page_tokens,
    )
    budgets.alerts_raised = Counter(
        "campaign_express_budget_alerts",
        "Budget alerts raised by this process, by type (OVER_TOTAL_BUDGET, "
        "OVER_DAILY_BUDGET, NEARING_LIMIT, PACING_BEHIND, PACING_AHEAD).",
        ["type"],
        registry=kernel.metrics_registry,
    )
    return budgets


def _live_index(kernel: Kernel) -> LiveCampaignIndex:
    index = LiveCampaignIndex(
        kernel.backends.db, kernel.backends.bus, kernel.interface("spend_ledger")
    )
    kernel.lifecycle(index.start, index.stop)
    return index


async def _build(kernel: Kernel) -> Built:
    campaigns: Campaigns = kernel.interface("campaign_store")
    budgets: Budgets = kernel.interface("spend_ledger")
    workflow = Workflow(
        kernel.backends.db,
        campaigns,
        CampaignEvents(kernel.backends.bus, kernel.best_effort),
        page_tokens=kernel.page_tokens,
    )
    # Every process serving campaigns runs the scheduler: its transitions
    # are conditional, so several never double one.
    scheduler = Scheduler(workflow, budgets, bus=kernel.backends.bus)

    async def start_scheduler() -> None:
        scheduler.start()

    kernel.when_serving(start_scheduler, scheduler.stop)
    servicer = CampaignServicer(campaigns, workflow, budgets, kernel.interface("approval_roles"))

    async def seed(seed: TenantSeed) -> None:
        if seed.demo:
            await seed_demo_campaigns(campaigns, workflow, seed.tenant_id, seed.segments)

    return Built([servicer], api=CampaignsApi(campaigns, workflow, budgets), seed=seed)


class CampaignsApi:
    """The domain objects, for seeding and tests."""

    def __init__(self, campaigns: Campaigns, workflow: Workflow, budgets: Budgets) -> None:
        self.campaigns = campaigns
        self.workflow = workflow
        self.budgets = budgets


MODULE = DomainModule(
    name="campaigns",
    services=(
        Service(
            campaign_service_pb2.DESCRIPTOR.services_by_name["CampaignService"],
            campaign_service_pb2_grpc.add_CampaignServiceServicer_to_server,
        ),
    ),
    build=_build,
    migrations=pathlib.Path(__file__).parent / "migrations",
    interfaces={
        "campaign_store": _campaign_store,
        # The bid path's candidates (in memory, kept current by change events)
        # and spend reservations: per bid, where a call would cost more than
        # the whole ~200 us bid (docs/bidding.md).
        "spend_ledger": _spend_ledger,
        "live_campaign_index": _live_index,
    },
)
