"""The messaging domain's core, without gRPC: its stores, the sender, and
what spans them (a preview for a profile, an unsubscribe)."""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import orjson

from services.backends.analytics import quote_identifier, quote_literal
from services.common import names
from services.common.call import Principal
from services.common.clock import now_us
from services.common.errors import (
    FailedPrecondition,
    FieldViolation,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    Unauthenticated,
)
from services.messaging import mail_reports, rendering
from services.messaging.channels import sendgrid_email, twilio_sms, whatsapp
from services.messaging.connected import Connected, ConnectedError
from services.messaging.events import TABLE as events_table
from services.messaging.events import event_row
from services.messaging.links import Links
from services.messaging.messages import Messages
from services.messaging.providers import Provider, Providers
from services.messaging.sender import Directory, Sender
from services.messaging.suppressions import Suppressions
from services.messaging.templates import Templates

log = logging.getLogger(__name__)

#: SendGrid's Event Webhook events that are news: (the lifecycle event, the
#: suppression it adds).
SENDGRID_EVENTS = {
    "delivered": ("delivered", ""),
    "bounce": ("bounced", "bounced"),
    "dropped": ("delivery_failed", ""),
    "spamreport": ("complained", "complained"),
    "unsubscribe": ("unsubscribed", "user_opt_out"),
    "group_unsubscribe": ("unsubscribed", "user_opt_out"),
    "open": ("opened", ""),
    "click": ("clicked", ""),
}
#: What mail servers' reports become (services/messaging/mail_reports.py).
MAIL_REPORT_EVENTS = {
    "bounce": "bounced",
    "soft_bounce": "delivery_failed",
    "delivered": "delivered",
    "complaint": "complained",
}
#: WhatsApp statuses that are news, and the lifecycle event of each.
WHATSAPP_EVENTS = {"delivered": "delivered", "read": "opened", "failed": "delivery_failed"}
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
        self._connected = Connected()
        #: The lifecycle events' pipeline (flush it to read them back).
        self.events = events
        #: Live messaging campaigns turned into messages (worker 0).
        self.campaign_sends: Any = None
        #: Frequency caps and quiet hours (services/messaging/rules.py).
        self.rules: Any = None
        #: In-app messages and content cards (services/messaging/feed.py).
        self.feed: Any = None
        #: Product catalogs (services/messaging/catalogs.py).
        self.catalogs: Any = None
        #: Subscription groups (services/messaging/preferences.py).
        self.groups: Any = None
        #: The analytics store (lifecycle events read back).
        self.analytics: Any = None
        #: Told when a person opens or clicks a message (tenant, profile,
        #: event name, properties): journeys' waits for engagement.
        self.engaged: Callable[[str, str, str, dict[str, Any]], Awaitable[None]] | None = None

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
            "message": {"id": "preview", "preferences_url": "#preferences"},
            "tenant": {"id": template.tenant_id},
        }
        if self.catalogs is not None:
            variables["catalogs"] = await self.catalogs.for_render(
                template.tenant_id, list(template.contents[chosen].values())
            )
        if template.connected and self.rules is not None:
            hosts = (await self.rules.of_tenant(template.tenant_id)).connected_hosts
            try:
                variables["connected"] = await self._connected.fetch_all(
                    template.connected, variables, hosts
                )
            except ConnectedError as error:
                raise FailedPrecondition(f"connected content: {error}") from None
        try:
            parts = rendering.render(template.contents[chosen], variables, strict=template.strict)
        except rendering.TemplateError as error:
            raise InvalidArgument.field(
                f"template.contents[{chosen}].{error.part}", str(error.problem)
            ) from None
        return chosen, parts

    async def receipt(self, provider_name: str, fields: Mapping[str, str], signature: str) -> str:
        """A provider's status callback, checked against its signature: the
        message notes it, a lifecycle event records it, and an address that
        cannot (or must not) take messages any more is suppressed. The
        answer to a webhook verification (WhatsApp's challenge), else ""."""
        tenant_id, provider_id = names.parse_name(
            provider_name, "provider", "tenants", "channelProviders"
        )
        found = [p for p in await self.providers.of_tenant(tenant_id, fresh=True)
                 if p.id == provider_id]  # fmt: skip
        if not found or found[0].kind not in ("twilio", "sendgrid", "whatsapp"):
            raise NotFound(f"{provider_name} takes no receipts")
        provider = found[0]
        if provider.kind == "sendgrid":
            await self._sendgrid_events(provider, fields, signature)
            return ""
        if provider.kind == "whatsapp":
            return await self._whatsapp_statuses(provider, fields, signature)
        url = self.links.receipt_url(provider_name)
        if not twilio_sms.signature_ok(provider.config, url, fields, signature):
            raise Unauthenticated("the receipt's signature does not match", reason="BAD_SIGNATURE")
        sid = fields.get("MessageSid") or fields.get("SmsSid") or ""
        status = fields.get("MessageStatus") or fields.get("SmsStatus") or ""
        if not sid or not status:
            raise InvalidArgument.field("fields", "MessageSid and MessageStatus are required")
        if status not in RECEIPT_EVENTS:
            return ""  # queued, sending, sent: nothing new
        code = fields.get("ErrorCode", "")
        receipt = f"{status}:{code}" if code else status
        now = now_us()
        message = await self.messages.record_receipt(tenant_id, provider_id, sid, receipt, now)
        if message is None:
            return ""  # not one of ours (or erased): acknowledged, ignored
        self._receipt_event(message, RECEIPT_EVENTS[status], provider_id, receipt, now)
        if code.isdigit() and int(code) in twilio_sms.HARD_BOUNCES and message.address:
            await self.suppressions.add(
                tenant_id, message.address, message.channel, "bounced", note=f"Twilio {code}"
            )
        return ""

    async def test_send(
        self, caller: Principal, name: str, *, recipient: Mapping[str, str], data: Any
    ) -> Any:
        """A template's current version to a test address, now: a
        transactional message (services/messaging/messages.py validates it)."""
        tenant_id, _ = names.parse_name(name, "name", "tenants", "templates")
        names.require_same_tenant(name, "name", caller.tenant_id)
        try:
            message, _ = await self.messages.send(
                caller,
                f"tenants/{tenant_id}",
                template=name,
                recipient=dict(recipient),
                data=data,
                transactional=True,
                idempotency_key="",
                campaign="",
                optimal=False,
            )
        except InvalidArgument as error:  # named as this request names them
            raise InvalidArgument(
                str(error),
                field_violations=[
                    FieldViolation(v.field.removeprefix("message."), v.description)
                    for v in error.field_violations
                ],
            ) from None
        return message

    async def message_events(self, caller: Principal, parent: str) -> list[tuple[Any, ...]]:
        """A message's lifecycle events, oldest first: (kind, time in
        microseconds, reason, provider id) each."""
        message = await self.messages.get(caller, parent)
        if self.analytics is None:
            return []
        rows = await self.analytics.query(
            "SELECT event_type, toUnixTimestamp64Micro(event_time), reason, provider_id "
            f"FROM {quote_identifier(events_table)} FINAL "
            f"WHERE tenant_id = {quote_literal(message.tenant_id)} "
            f"AND message_id = {quote_literal(message.id)} "
            "ORDER BY event_time, event_type LIMIT 1000"
        )
        return [(str(r[0]), int(r[1]), str(r[2]), str(r[3])) for r in rows]

    async def mail_report(
        self, caller: Principal, parent: str, raw: str
    ) -> tuple[str, str, list[str], list[str]]:
        """A mail server's bounce or complaint about an email we sent:
        (outcome, our message's name or "", the addresses, the addresses
        suppressed). Permanent bounces suppress (`bounced`), complaints too
        (`complained`); the message, when the report names one of ours,
        notes it and records its lifecycle event."""
        tenant_id = names.own_tenant(parent, caller.tenant_id)
        try:
            report = mail_reports.parse(raw)
        except mail_reports.NotAReport as error:
            raise InvalidArgument.field(
                "raw", f"not a bounce (RFC 3464) or a feedback report (RFC 5965): {error}"
            ) from None
        outcome = report.outcome
        message = None
        if report.message_id:
            message = await self.messages.find(tenant_id, report.message_id)
            if message is not None and message.channel != "email":
                message = None
        if report.kind == "feedback-report":
            addresses = [report.complainant or (message.address if message else "")]
            first = ""
        else:
            addresses = [r.address for r in report.recipients]
            failed = [r for r in report.recipients if r.action == "failed"]
            first = (failed or list(report.recipients))[0].status
        addresses = [a for a in addresses if a]
        to_suppress: list[str] = []
        if outcome == "complaint":
            to_suppress = addresses
        elif outcome == "bounce":
            to_suppress = [r.address for r in report.recipients
                           if r.action == "failed" and r.status.startswith("5")]  # fmt: skip
        for address in to_suppress:
            await self.suppressions.add(
                tenant_id, address, "email", "complained" if outcome == "complaint" else "bounced",
                note=f"mail report: {report.feedback_type or first}",
            )  # fmt: skip
        if message is not None and outcome:
            detail = report.feedback_type if outcome == "complaint" else first
            receipt = f"{outcome}:{detail}" if detail else outcome
            at = now_us()
            if message.provider_message_id:
                await self.messages.record_receipt(
                    tenant_id, message.provider_id, message.provider_message_id, receipt, at
                )
            lifecycle = MAIL_REPORT_EVENTS.get(outcome)
            if lifecycle:
                self._receipt_event(message, lifecycle, message.provider_id, receipt, at)
        name = f"tenants/{tenant_id}/messages/{message.id}" if message is not None else ""
        return outcome, name, addresses, to_suppress

    async def _whatsapp_statuses(
        self, provider: Provider, fields: Mapping[str, str], signature: str
    ) -> str:
        if "hub.mode" in fields:  # the dashboard verifying our URL
            answer = whatsapp.challenge(provider.config, fields)
            if answer is None:
                raise PermissionDenied("the verify token does not match", reason="BAD_TOKEN")
            return answer
        body = fields.get("body", "")
        if not whatsapp.signature_ok(provider.config, body, signature):
            raise Unauthenticated("the webhook's signature does not match", reason="BAD_SIGNATURE")
        try:
            payload = orjson.loads(body)
        except orjson.JSONDecodeError:
            raise InvalidArgument.field("fields.body", "not a JSON webhook payload") from None
        for status in whatsapp.statuses(payload):
            kind = str(status["status"])
            if kind not in WHATSAPP_EVENTS:
                continue  # sent: nothing new
            errors = status.get("errors") if isinstance(status.get("errors"), list) else []
            code = str(errors[0].get("code", "")) if errors and isinstance(errors[0], dict) else ""
            receipt = f"{kind}:{code}" if code else kind
            try:
                at = int(status.get("timestamp", 0)) * 1_000_000 or now_us()
            except (TypeError, ValueError):
                at = now_us()
            message = await self.messages.record_receipt(
                provider.tenant_id, provider.id, str(status["id"]), receipt, at
            )
            if message is None:
                continue  # not one of ours (or erased)
            self._receipt_event(message, WHATSAPP_EVENTS[kind], provider.id, receipt, at)
            if code.isdigit() and int(code) in whatsapp.UNREACHABLE and message.address:
                await self.suppressions.add(
                    provider.tenant_id, message.address, message.channel, "bounced",
                    note=f"WhatsApp {code}",
                )  # fmt: skip
        return ""

    async def _sendgrid_events(
        self, provider: Provider, fields: Mapping[str, str], signature: str
    ) -> None:
        body, timestamp = fields.get("body", ""), fields.get("timestamp", "")
        if not sendgrid_email.signature_ok(provider.config, body, signature, timestamp):
            raise Unauthenticated("the events' signature does not match", reason="BAD_SIGNATURE")
        try:
            events = orjson.loads(body)
        except orjson.JSONDecodeError:
            raise InvalidArgument.field("fields.body", "not a JSON array of events") from None
        if not isinstance(events, list):
            raise InvalidArgument.field("fields.body", "not a JSON array of events")
        for event in events:
            if not isinstance(event, dict):
                continue
            kind = str(event.get("event", ""))
            mapped = SENDGRID_EVENTS.get(kind)
            message_id = str(event.get(sendgrid_email.MESSAGE_ARG, ""))
            if mapped is None or not message_id:
                continue  # processed, deferred...: nothing new; or not ours
            if kind == "bounce" and event.get("type") == "blocked":
                mapped = ("delivery_failed", "")  # refused for now, not a bad address
            message = await self.messages.find(provider.tenant_id, message_id)
            if message is None or message.provider_id != provider.id:
                continue
            at = int(event.get("timestamp", 0) or 0) * 1_000_000 or now_us()
            receipt = kind + (f":{event['reason']}"[:40] if event.get("reason") else "")
            if kind not in ("open", "click"):
                await self.messages.record_receipt(
                    provider.tenant_id, provider.id, message.provider_message_id, receipt, at
                )
            lifecycle, suppress = mapped
            unique = lifecycle
            if kind == "click":
                unique += ":" + hashlib.sha256(str(event.get("url", "")).encode()).hexdigest()[:16]
            self._receipt_event(message, lifecycle, provider.id, receipt, at, unique)
            if suppress and message.address:
                await self.suppressions.add(
                    provider.tenant_id, message.address, message.channel, suppress,
                    note=f"SendGrid {kind}",
                )  # fmt: skip

    def _receipt_event(
        self, message: Any, kind: str, provider_id: str, reason: str, at: int, unique: str = ""
    ) -> None:
        if self.events is None:
            return
        self.events.emit(
            event_row(
                at,
                message.tenant_id,
                message.id,
                kind,
                channel=message.channel,
                template_id=message.template_id,
                template_version=message.template_version,
                campaign_id=message.campaign_id,
                profile_id=message.profile_id,
                provider_id=provider_id,
                reason=reason,
                transactional=message.transactional,
                event_id=f"{message.id}:{unique or kind}",
            )
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
            if self.engaged is not None and message.profile_id:
                template_name = f"tenants/{tenant_id}/templates/{message.template_id}"
                props = {"message": message.name, "channel": message.channel,
                         "template": template_name}  # fmt: skip
                if message.campaign_id:
                    props["campaign"] = f"tenants/{tenant_id}/campaigns/{message.campaign_id}"
                if url:
                    props["url"] = url
                try:
                    await self.engaged(tenant_id, message.profile_id, f"message_{event}", props)
                except Exception:  # a listener's trouble is not the person's
                    log.warning("messaging: an engagement listener failed", exc_info=True)
        return kind, url

    async def feed_interaction(self, caller: Any, name: str, interaction: str) -> Any:
        """Record what a person did with a feed item; a lifecycle event
        (`impression` and `clicked` once per item, `dismissed`)."""
        item = await self.feed.interact(caller, name, interaction)
        message = await self.messages.find(item.tenant_id, item.id)
        if message is not None:
            kind = {"impression": "impression", "click": "clicked", "dismiss": "dismissed"}[
                interaction
            ]
            self._receipt_event(message, kind, "", kind, now_us())
        return item

    async def preferences(self, token: str) -> list[Any]:
        tenant_id, profile_id = self.links.read_preferences(token)
        return list(await self.groups.choices(tenant_id, profile_id))

    async def set_preferences(self, token: str, wanted: list[tuple[str, bool]]) -> list[Any]:
        tenant_id, profile_id = self.links.read_preferences(token)
        return list(await self.groups.choose(tenant_id, profile_id, wanted))

    async def unsubscribe(self, token: str) -> str:
        """Suppress the address of a one-click unsubscribe link; its channel."""
        tenant_id, channel, address = self.links.read_unsubscribe(token)
        await self.suppressions.add(
            tenant_id, address, channel, "user_opt_out", note="one-click unsubscribe"
        )
        return channel
