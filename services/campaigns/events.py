"""Change events: every change that affects serving (stage, definition,
offers, budget state) is published on the bus so bidders update their
in-memory candidate index without reading the database per bid."""

from __future__ import annotations

from dataclasses import dataclass

import orjson

from services.backends import MessageBus
from services.backends.bus import BestEffortPublisher
from services.campaigns.model import Campaign
from services.common.clock import now_us

SUBJECT_PREFIX = "campaign-express.campaigns"


def subject_for(tenant_id: str) -> str:
    return f"{SUBJECT_PREFIX}.{tenant_id}"


@dataclass(frozen=True, slots=True)
class CampaignEvent:
    type: str  # campaign.changed, campaign.deleted, offer.changed, offer.deleted, budget.changed
    tenant_id: str
    campaign: str  # campaign resource name
    stage: str = ""
    revision: int = 0
    offer: str = ""
    time: int = 0


class CampaignEvents:
    def __init__(self, bus: MessageBus, publisher: BestEffortPublisher | None = None) -> None:
        # A change waits at most ~0.25 s for the bus (a lost event is repaired
        # by the index's refresh after a reconnect, or its periodic one).
        self._publisher = publisher or BestEffortPublisher(bus)

    @property
    def publisher(self) -> BestEffortPublisher:
        """How they are published: never holding a change up (alerts too)."""
        return self._publisher

    async def publish(self, event: CampaignEvent) -> None:
        """Best effort after the database commit: a lost event is repaired by
        the index's periodic full refresh, never by blocking the change."""
        payload = {
            "type": event.type,
            "tenant_id": event.tenant_id,
            "campaign": event.campaign,
            "stage": event.stage,
            "revision": event.revision,
            "offer": event.offer,
            "time": event.time or now_us(),
        }
        await self._publisher.publish(subject_for(event.tenant_id), orjson.dumps(payload))


def campaign_changed(campaign: Campaign) -> CampaignEvent:
    """The event of a campaign whose definition or stage changed."""
    return CampaignEvent(
        "campaign.changed",
        campaign.tenant_id,
        campaign.name,
        stage=campaign.stage,
        revision=campaign.revision,
    )


def decode(data: bytes) -> CampaignEvent:
    raw = orjson.loads(data)
    return CampaignEvent(
        type=raw["type"],
        tenant_id=raw["tenant_id"],
        campaign=raw["campaign"],
        stage=raw.get("stage", ""),
        revision=int(raw.get("revision", 0)),
        offer=raw.get("offer", ""),
        time=int(raw.get("time", 0)),
    )
