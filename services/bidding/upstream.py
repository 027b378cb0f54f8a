"""What the bid path uses of other domains in-process, as the narrow
Protocols it needs (docs/architecture.md, "How domains use each other"). The
campaigns domain offers objects that fit them (`live_campaign_index`,
`spend_ledger`), the inference domain its `scoring_engine`: a call per bid
to each would cost more than the bid itself."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol, TypeVar

from services.analytics.events import AnalyticsEvent, EventRow
from services.campaigns.budget import DeliveryEventIn
from services.campaigns.index import LiveCampaign
from services.common.call import Principal

V = TypeVar("V")


class LiveCampaigns(Protocol):
    """A tenant's live campaigns, in memory and kept current by change events."""

    def view(self, tenant_id: str, build: Callable[[list[LiveCampaign]], V]) -> V:
        """`build` of the tenant's live campaigns, kept until they change."""
        ...


class SpendLedger(Protocol):
    """Books win and billing notices against the campaigns' budgets, once each."""

    async def record_events(
        self, caller: Principal | None, parent: str, events: Sequence[DeliveryEventIn]
    ) -> int: ...


class BidEvents(Protocol):
    """The analytics journal, as the bid path uses it: a bid is answered only
    once its event is journaled (services.analytics.pipeline)."""

    def emit(self, event: AnalyticsEvent | EventRow) -> bool:
        """Queue an event; False when the journal refused it (failing and full)."""
        ...

    def write_now(self) -> bool:
        """Write the emitted events to the journal file now (no fsync); False
        when that cannot be done at once."""
        ...

    async def acknowledged(self) -> int:
        """Return once every event emitted before the call is journaled."""
        ...
