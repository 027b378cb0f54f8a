"""Campaign sends: a LIVE campaign with a message channel, a template and an
audience segment (`messaging` in its definition) sends the template to
each member of the segment, once: the message's idempotency key is the
campaign and the profile, so a member is never sent it twice, however
often this runs and in however many processes; members who join while the
campaign is live get it too. Every message then goes through the sender's
rules (suppression, consent, the template's locale) like any other.

One process (worker 0) reconciles every RECONCILE_SECONDS, and soon after
a campaign changes or a segment's members do (their events on the bus).
Live campaigns come from the campaigns domain's live index (a paused,
finished or out-of-budget campaign is not there, so it sends nothing
more). Sending to millions at once is the journeys issue's broadcast; this
enqueues a page of 1,000 members per step."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any, Protocol

from services.backends.interfaces import BusMessage, MessageBus, Subscription
from services.common.errors import NotFound
from services.messaging.messages import Messages
from services.messaging.templates import Templates

log = logging.getLogger(__name__)

RECONCILE_SECONDS = 5.0
PAGE = 1_000
#: A campaign's messages are keyed `campaign:{campaign id}:{profile id}`:
#: one per person, whether its audience or a journey's step sent it.
CAMPAIGN_KEY = "campaign:"
_WATCHED = ("campaign-express.campaigns.>", "campaign-express.segments.>")


class LiveCampaigns(Protocol):
    """The campaigns domain's live index."""

    def tenants(self) -> list[str]: ...

    def campaigns(self, tenant_id: str) -> list[Any]: ...


class Audiences(Protocol):
    """The audience domain's directory."""

    async def member_ids(
        self, tenant_id: str, segment_id: str, after: str = "", limit: int = 1_000
    ) -> list[str] | None: ...


class CampaignSends:
    def __init__(
        self,
        messages: Messages,
        templates: Templates,
        live: LiveCampaigns,
        audiences: Audiences,
        bus: MessageBus | None = None,
        *,
        reconcile_seconds: float = RECONCILE_SECONDS,
    ) -> None:
        self._messages = messages
        self._templates = templates
        self._live = live
        self._audiences = audiences
        self._bus = bus
        self._interval = reconcile_seconds
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._subscriptions: list[Subscription] = []

    async def start(self) -> None:
        if self._bus is not None:
            for subject in _WATCHED:
                with contextlib.suppress(Exception):  # without the bus: the timer alone
                    self._subscriptions.append(await self._bus.subscribe(subject, self._changed))
        self._task = asyncio.get_running_loop().create_task(self._loop(), name="campaign-sends")

    async def stop(self) -> None:
        for subscription in self._subscriptions:
            with contextlib.suppress(Exception):
                await subscription.unsubscribe()
        self._subscriptions.clear()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _changed(self, message: BusMessage) -> None:
        self._wake.set()

    async def _loop(self) -> None:
        while True:
            try:
                await self.run_once()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.warning("messaging: campaign sends failed; trying again", exc_info=True)
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._interval):
                    await self._wake.wait()
            await asyncio.sleep(0.2)  # let the live index take the change in

    async def run_once(self) -> int:
        """Enqueue what every live messaging campaign still owes its
        audience; how many messages were stored."""
        stored = 0
        for tenant_id in self._live.tenants():
            for live in self._live.campaigns(tenant_id):
                stored += await self._campaign(tenant_id, live.campaign)
        return stored

    async def _campaign(self, tenant_id: str, campaign: Any) -> int:
        spec = campaign.spec
        template_name, audience = spec.messaging.template, spec.messaging.audience
        if not template_name or not audience:
            return 0
        t_parts, a_parts = template_name.split("/"), audience.split("/")
        if t_parts[1] != tenant_id or a_parts[1] != tenant_id:
            return 0  # another tenant's: never
        try:
            template = await self._templates.find(tenant_id, t_parts[3])
        except NotFound:
            log.warning("messaging: %s names a missing template", campaign.name)
            return 0
        stored, after = 0, ""
        key_prefix = f"{CAMPAIGN_KEY}{campaign.id}:"
        while True:
            page = await self._audiences.member_ids(tenant_id, a_parts[3], after, PAGE)
            if not page:
                return stored
            made = await self._messages.enqueue_many(
                tenant_id,
                template,
                campaign.id,
                page,
                key_prefix,
                optimal=bool(getattr(spec.messaging, "send_at_optimal_time", False)),
            )
            stored += len(made)
            after = page[-1]
