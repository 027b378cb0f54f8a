"""The messaging domain's core, without gRPC: its stores, the sender, and
what spans them (a preview for a profile, an unsubscribe)."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Any

from services.common import names
from services.common.call import Principal
from services.common.clock import now_us
from services.common.errors import InvalidArgument, NotFound, Unauthenticated
from services.messaging import rendering
from services.messaging.channels import twilio_sms
from services.messaging.events import event_row
from services.messaging.links import Links
from services.messaging.messages import Messages
from services.messaging.providers import Providers
from services.messaging.sender import Directory, Sender
from services.messaging.suppressions import Suppressions
from services.messaging.templates import Templates

#: Provider statuses that are news, and the lifecycle event of each.
RECEIPT_EVENTS = {
    "delivered": "delivered",
    "undelivered": "delivery_failed",
    "failed": "delivery_failed",
}


class Messaging:
    def __init__(
        self,
        templates: Templates,
        providers: Providers,
        suppressions: Suppressions,
        messages: Messages,
        sender: Sender,
        links: Links,
        directory: Directory,
        events: Any = None,
    ) -> None:
        self.templates = templates
        self.providers = providers
        self.suppressions = suppressions
        self.messages = messages
        self.sender = sender
        self.links = links
        self._directory = directory
        #: The lifecycle events' pipeline (flush it to read them back).
        self.events = events
        #: Live messaging campaigns turned into messages (worker 0).
        self.campaign_sends: Any = None
        #: Frequency caps and quiet hours (services/messaging/rules.py).
        self.rules: Any = None

    async def render(
        self,
        caller: Principal,
        name: str,
        *,
        version: int,
        locale: str,
        profile: str,
        data: Mapping[str, Any],
    ) -> tuple[str, dict[str, str]]:
        """(locale, rendered parts) of a template for a profile or data."""
        template = await self.templates.get(caller, name, version)
        traits: dict[str, Any] = {}
        profile_id = ""
        if profile:
            _, profile_id = names.parse_name(profile, "profile", "tenants", "profiles")
            names.require_same_tenant(profile, "profile", caller.tenant_id)
            person = await self._directory.person(template.tenant_id, profile_id, "")
            if person is None:
                raise InvalidArgument.field("profile", f"{profile} does not exist")
            traits, profile_id = dict(person.traits), person.id
        chosen = rendering.pick_locale(
            template.contents,
            locale or str(traits.get("locale", "") or ""),
            template.default_locale,
        )
        variables = {
            "profile": {**traits, "id": profile_id},
            "data": dict(data),
            "message": {"id": "preview"},
            "tenant": {"id": template.tenant_id},
        }
        try:
            parts = rendering.render(template.contents[chosen], variables, strict=template.strict)
        except rendering.TemplateError as error:
            raise InvalidArgument.field(
                f"template.contents[{chosen}].{error.part}", str(error.problem)
            ) from None
        return chosen, parts

    async def receipt(self, provider_name: str, fields: Mapping[str, str], signature: str) -> None:
        """A provider's status callback, checked against its signature: the
        message notes it, a lifecycle event records it, and a number that
        cannot take messages is suppressed."""
        tenant_id, provider_id = names.parse_name(
            provider_name, "provider", "tenants", "channelProviders"
        )
        found = [p for p in await self.providers.of_tenant(tenant_id, fresh=True)
                 if p.id == provider_id]  # fmt: skip
        if not found or found[0].kind != "twilio":
            raise NotFound(f"{provider_name} takes no receipts")
        provider = found[0]
        url = self.links.receipt_url(provider_name)
        if not twilio_sms.signature_ok(provider.config, url, fields, signature):
            raise Unauthenticated("the receipt's signature does not match", reason="BAD_SIGNATURE")
        sid = fields.get("MessageSid") or fields.get("SmsSid") or ""
        status = fields.get("MessageStatus") or fields.get("SmsStatus") or ""
        if not sid or not status:
            raise InvalidArgument.field("fields", "MessageSid and MessageStatus are required")
        if status not in RECEIPT_EVENTS:
            return  # queued, sending, sent: nothing new
        code = fields.get("ErrorCode", "")
        receipt = f"{status}:{code}" if code else status
        now = now_us()
        message = await self.messages.record_receipt(tenant_id, provider_id, sid, receipt, now)
        if message is None:
            return  # not one of ours (or erased): acknowledged, ignored
        if self.events is not None:
            self.events.emit(
                event_row(
                    now,
                    tenant_id,
                    message.id,
                    RECEIPT_EVENTS[status],
                    channel=message.channel,
                    template_id=message.template_id,
                    template_version=message.template_version,
                    campaign_id=message.campaign_id,
                    profile_id=message.profile_id,
                    provider_id=provider_id,
                    reason=receipt,
                    transactional=message.transactional,
                    event_id=f"{message.id}:{RECEIPT_EVENTS[status]}",
                )
            )
        if code.isdigit() and int(code) in twilio_sms.HARD_BOUNCES and message.address:
            await self.suppressions.add(
                tenant_id, message.address, message.channel, "bounced", note=f"Twilio {code}"
            )

    async def engagement(self, token: str) -> tuple[str, str]:
        """An open or a click of a tracked email: recorded as a lifecycle
        event (`opened` once per message; `clicked` once per link); (kind,
        the link for a click)."""
        tenant_id, message_id, kind, url = self.links.read_tracking(token)
        if kind not in ("open", "click") or (kind == "click" and not url):
            raise InvalidArgument.field("token", "not a valid tracking link")
        message = await self.messages.find(tenant_id, message_id)
        if message is not None and self.events is not None:
            event = "opened" if kind == "open" else "clicked"
            unique = f"{message_id}:{event}"
            if kind == "click":
                unique += ":" + hashlib.sha256(url.encode()).hexdigest()[:16]
            self.events.emit(
                event_row(
                    now_us(),
                    tenant_id,
                    message_id,
                    event,
                    channel=message.channel,
                    template_id=message.template_id,
                    template_version=message.template_version,
                    campaign_id=message.campaign_id,
                    profile_id=message.profile_id,
                    reason=url[:500],
                    transactional=message.transactional,
                    event_id=unique,
                )
            )
        return kind, url

    async def unsubscribe(self, token: str) -> str:
        """Suppress the address of a one-click unsubscribe link; its channel."""
        tenant_id, channel, address = self.links.read_unsubscribe(token)
        await self.suppressions.add(
            tenant_id, address, channel, "user_opt_out", note="one-click unsubscribe"
        )
        return channel
