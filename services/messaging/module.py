"""The messaging domain (MessagingService): templates, channel providers,
messages sent under delivery rules, suppressions. See docs/messaging.md."""

from __future__ import annotations

import logging
import pathlib
import socket
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

from campaignexpress.messaging.v1 import messaging_service_pb2, messaging_service_pb2_grpc
from services.analytics.pipeline import AnalyticsPipeline
from services.campaigns.budget import DeliveryEventIn
from services.campaigns.model import Money
from services.common.call import Principal
from services.common.errors import NotFound
from services.common.rbac import ALL_PERMISSIONS
from services.kernel import Built, DomainModule, Kernel, Service, TenantSeed
from services.messaging.campaign_sends import CAMPAIGN_KEY, CampaignSends
from services.messaging.catalogs import Catalogs
from services.messaging.demo import seed_demo_messaging
from services.messaging.domain import Messaging
from services.messaging.events import MESSAGE_EVENTS, event_row
from services.messaging.feed import Feed
from services.messaging.links import Links
from services.messaging.messages import Message, Messages
from services.messaging.preferences import Groups
from services.messaging.privacy import MessagesOfPeople
from services.messaging.providers import Providers
from services.messaging.rules import Caps, DeliveryRules, QuietHours
from services.messaging.sender import Sender, SenderMetrics, Spend
from services.messaging.servicer import MessagingServicer
from services.messaging.suppressions import Suppressions
from services.messaging.templates import Templates

log = logging.getLogger(__name__)


async def _build(kernel: Kernel) -> Built:
    db = kernel.backends.db
    templates = Templates(db, clock=kernel.clock, page_tokens=kernel.page_tokens)
    providers = Providers(db, clock=kernel.clock)
    suppressions = Suppressions(db, clock=kernel.clock, page_tokens=kernel.page_tokens)
    # Lifecycle events, journal first (one journal per process).
    events = AnalyticsPipeline(
        kernel.backends.analytics,
        kernel.settings.data_dir / "message-events-journal" / f"worker-{kernel.worker}",
        schema=MESSAGE_EVENTS,
        flush_interval=1.0,
    )
    kernel.lifecycle(events.start, events.stop)
    links = Links(kernel.secret, kernel.settings.public_url)
    rules = DeliveryRules(db, clock=kernel.clock)
    feed = Feed(db, kernel.backends.bus, clock=kernel.clock)
    catalogs = Catalogs(db, clock=kernel.clock, page_tokens=kernel.page_tokens)
    groups = Groups(db, clock=kernel.clock)
    templates.group_exists = groups.exists
    live = kernel.interface("live_campaign_index")

    def campaign_rate(tenant_id: str, campaign_id: str) -> int:
        found = live.get(f"tenants/{tenant_id}/campaigns/{campaign_id}")
        return int(found.campaign.spec.messaging.messages_per_minute) if found else 0

    def campaign_quiet(tenant_id: str, campaign_id: str) -> QuietHours | None:
        found = live.get(f"tenants/{tenant_id}/campaigns/{campaign_id}")
        own = found.campaign.spec.messaging.quiet_hours if found else None
        if own is None or not own.enabled:
            return None
        return QuietHours(True, own.start, own.end, own.time_zone, own.action.lower())

    def campaign_currency(tenant_id: str, campaign_id: str) -> str | None:
        """The budget currency of a live campaign; None when it is not live."""
        found = live.get(f"tenants/{tenant_id}/campaigns/{campaign_id}")
        if found is None:
            return None
        budget = found.campaign.spec.budget
        return budget.total.currency_code or budget.daily.currency_code or ""

    ledger = kernel.interface("spend_ledger")

    async def spend(tenant_id: str, spent: list[Spend]) -> None:
        """Messages' costs on their campaigns' budgets (BILLING entries keyed
        by the message: each once). A cost in another currency than the
        budget's is left out, with a warning."""
        entries = []
        for s in spent:
            currency = campaign_currency(tenant_id, s.campaign_id)
            if currency is not None and currency != s.currency:
                log.warning("messaging: a %s cost on a %s budget (campaign %s) is not recorded",
                            s.currency, currency, s.campaign_id)  # fmt: skip
                continue
            entries.append(DeliveryEventIn(
                campaign=f"tenants/{tenant_id}/campaigns/{s.campaign_id}",
                bid_id=f"message:{s.message_id}", type="BILLING",
                amount=Money(s.currency, s.micros)))  # fmt: skip
        if entries:
            await ledger.record_events(None, f"tenants/{tenant_id}", entries)

    directory = kernel.interface("audience_directory")
    sender = Sender(
        db,
        templates,
        providers,
        suppressions,
        directory,
        events.emit,
        clock=kernel.clock,
        unsubscribe_url=links.unsubscribe_url,
        receipt_url=links.receipt_url,
        track_html=links.track_html,
        rules=rules,
        feed=feed,
        campaign_rate=campaign_rate,
        campaign_quiet=campaign_quiet,
        campaign_currency=campaign_currency,
        spend=spend,
        catalogs=catalogs,
        groups=groups,
        analytics=kernel.backends.analytics,
        preferences_url=links.preferences_url,
        caps=Caps(kernel.backends.hot_store),
        lease_seconds=kernel.settings.message_lease_seconds,
        retry_seconds=kernel.settings.message_retry_seconds,
        # One name and attempt journal per host and worker: a sender that
        # starts again settles what it left (services/messaging/sender.py).
        journal=kernel.settings.data_dir / "messaging" / f"attempts-{kernel.worker}.log",
        name=f"{socket.gethostname()}:{kernel.worker}",
    )
    sender.metrics = SenderMetrics(kernel.metrics_registry)
    if kernel.has_interface("global_control"):  # decisioning's: marketing skips it
        sender.global_control = kernel.interface("global_control").member

    def queued(messages: list[Message]) -> None:
        for message in messages:
            events.emit(
                event_row(
                    message.create_time,
                    message.tenant_id,
                    message.id,
                    "queued",
                    channel=message.channel,
                    template_id=message.template_id,
                    template_version=message.template_version,
                    campaign_id=message.campaign_id,
                    profile_id=message.profile_id,
                    transactional=message.transactional,
                )
            )
        sender.wake()

    messages = Messages(
        db, templates, clock=kernel.clock, page_tokens=kernel.page_tokens, on_queued=queued
    )
    # Every serving process sends: they claim disjoint batches.
    kernel.when_serving(sender.start, sender.stop)
    campaign_sends = CampaignSends(
        messages,
        templates,
        live,
        directory,
        kernel.backends.bus,
    )
    if kernel.worker == "0":  # one process turns live campaigns into messages
        kernel.when_serving(campaign_sends.start, campaign_sends.stop)
    messaging = Messaging(
        templates, providers, suppressions, messages, sender, links, directory, events
    )
    messaging.rules = rules
    messaging.feed = feed
    messaging.catalogs = catalogs
    messaging.groups = groups
    messaging.analytics = kernel.backends.analytics
    if kernel.has_interface("data_subject_hooks"):  # what it holds about a person
        kernel.interface("data_subject_hooks").register(
            "messaging", MessagesOfPeople(db, events, kernel.backends.analytics)
        )
    messaging.campaign_sends = campaign_sends
    kernel.interface("message_outbox").bind(messages, templates, live)
    messaging.engaged = kernel.interface("message_outbox").engaged

    async def seed(seed: TenantSeed) -> None:
        if seed.demo:
            await seed_demo_messaging(messaging, seed.tenant_id)

    return Built([MessagingServicer(messaging)], api=messaging, seed=seed)


def _system(tenant_id: str) -> Principal:
    return Principal("system/outbox", tenant_id, frozenset({"ADMIN"}), ALL_PERMISSIONS)


class Outbox:
    """Messages sent as steps of other domains' flows (a journey's send
    step): one per key, however often the step is tried. Bound to this
    process's messaging when it is built."""

    def __init__(self) -> None:
        self._messages: Messages | None = None
        self._templates: Templates | None = None
        self._live: Any = None  # the campaigns domain's live index
        self._engagement: list[Callable[[str, str, str, dict[str, Any]], Awaitable[None]]] = []

    def on_engagement(
        self, hook: Callable[[str, str, str, dict[str, Any]], Awaitable[None]]
    ) -> None:
        """Call `hook(tenant, profile, event, properties)` when a person opens
        (`message_opened`) or clicks (`message_clicked`) a message."""
        self._engagement.append(hook)

    async def engaged(
        self, tenant_id: str, profile_id: str, event: str, properties: dict[str, Any]
    ) -> None:
        for hook in self._engagement:
            await hook(tenant_id, profile_id, event, properties)

    def bind(self, messages: Messages, templates: Templates, live: Any = None) -> None:
        self._messages, self._templates, self._live = messages, templates, live

    async def template_exists(self, tenant_id: str, template_id: str) -> bool:
        if self._templates is None:
            return False
        try:
            await self._templates.find(tenant_id, template_id)
        except NotFound:
            return False
        return True

    async def template_named(self, tenant_id: str, display_name: str) -> str:
        """The name of the tenant's newest template so called ("" if none)."""
        if self._templates is None:
            return ""
        found, _ = await self._templates.list_templates(_system(tenant_id), f"tenants/{tenant_id}",
                                                        1000)  # fmt: skip
        return next((t.name for t in found if t.display_name == display_name), "")

    async def send_step(
        self, tenant_id: str, template: str, profile_id: str, key: str, data: Mapping[str, Any]
    ) -> str:
        """The step's message (its name): stored now, or the one of its key.
        LookupError when the template is gone."""
        if self._messages is None or self._templates is None:
            raise RuntimeError("messaging is not built in this process")
        template_id = template.rsplit("/", 1)[-1]
        try:
            found = await self._templates.find(tenant_id, template_id)
        except NotFound:
            raise LookupError(f"{template} is gone") from None
        stored = await self._messages.enqueue_many(
            tenant_id, found, "", [profile_id], f"{key}:", data=data
        )
        if stored:
            return stored[0].name
        existing = await self._messages.by_key(tenant_id, f"{key}:{profile_id}")
        return existing.name if existing is not None else ""

    async def send_campaign(
        self, tenant_id: str, campaign: str, profile_id: str, data: Mapping[str, Any]
    ) -> str:
        """A LIVE campaign's message (its template, billed to it, with its
        delivery rules) to one person, keyed as the campaign's own sends
        (campaign_sends.py): once per person, whichever way it comes. What
        came of it, in words; nothing is sent when the campaign is not LIVE
        or has no message (or its template is gone)."""
        if self._messages is None or self._templates is None:
            raise RuntimeError("messaging is not built in this process")
        found = self._live.get(campaign) if self._live is not None else None
        if found is None:
            return f"not sent: {campaign} is not LIVE"
        spec = found.campaign.spec.messaging
        if not spec.template:
            return f"not sent: {campaign} has no message"
        try:
            template = await self._templates.find(tenant_id, spec.template.rsplit("/", 1)[-1])
        except NotFound:
            return f"not sent: {spec.template} is gone"
        prefix = f"{CAMPAIGN_KEY}{found.campaign.id}:"
        stored = await self._messages.enqueue_many(
            tenant_id, template, found.campaign.id, [profile_id], prefix,
            optimal=bool(spec.send_at_optimal_time), data=data,
        )  # fmt: skip
        if stored:
            return f"message {stored[0].name}"
        existing = await self._messages.by_key(tenant_id, f"{prefix}{profile_id}")
        return f"had it already: {existing.name if existing is not None else campaign}"

    async def send_many(
        self,
        tenant_id: str,
        template: str,
        profile_ids: Sequence[str],
        key: str,
        data: Mapping[str, Any],
    ) -> int:
        """A template's message to each of these people, keyed `{key}:{profile
        id}` (one who has it already is skipped); how many were stored now.
        LookupError when the template is gone."""
        if self._messages is None or self._templates is None:
            raise RuntimeError("messaging is not built in this process")
        try:
            found = await self._templates.find(tenant_id, template.rsplit("/", 1)[-1])
        except NotFound:
            raise LookupError(f"{template} is gone") from None
        stored = await self._messages.enqueue_many(
            tenant_id, found, "", list(profile_ids), f"{key}:", data=data
        )
        return len(stored)


MODULE = DomainModule(
    name="messaging",
    services=(
        Service(
            messaging_service_pb2.DESCRIPTOR.services_by_name["MessagingService"],
            messaging_service_pb2_grpc.add_MessagingServiceServicer_to_server,
        ),
    ),
    build=_build,
    migrations=pathlib.Path(__file__).parent / "migrations",
    interfaces={
        # Messages as steps of other domains' flows (journeys).
        "message_outbox": lambda kernel: Outbox(),
        # Product catalogs' items for other domains (recommendations).
        "catalog_items": lambda kernel: Catalogs(
            kernel.backends.db, clock=kernel.clock, page_tokens=kernel.page_tokens
        ),
    },
)
