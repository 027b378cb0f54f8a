"""MessagingService: requests in, the domain's answers out (no logic here)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from google.protobuf import struct_pb2

from campaignexpress.messaging.v1 import (
    message_pb2,
    messaging_service_pb2,
    messaging_service_pb2_grpc,
    template_pb2,
)
from services.common.call import current_principal
from services.common.protoconv import micros, struct_dict, timestamp
from services.messaging.catalogs import Catalog
from services.messaging.domain import Messaging
from services.messaging.feed import FeedItem
from services.messaging.messages import Message
from services.messaging.preferences import Choice, Group
from services.messaging.providers import Provider
from services.messaging.rules import Rules
from services.messaging.suppressions import Suppression
from services.messaging.templates import Template

pb = messaging_service_pb2


def _channel(value: int) -> str:
    name = template_pb2.MessageChannel.Name(value)  # type: ignore[arg-type]
    return "" if value == 0 else name.removeprefix("MESSAGE_CHANNEL_").lower()


def _channel_enum(channel: str) -> int:
    if not channel:
        return 0
    return int(template_pb2.MessageChannel.Value(f"MESSAGE_CHANNEL_{channel.upper()}"))


def template_proto(template: Template) -> template_pb2.Template:
    return template_pb2.Template(
        name=template.name,
        display_name=template.display_name,
        channel=_channel_enum(template.channel),  # type: ignore[arg-type]
        contents={
            locale: template_pb2.TemplateContent(**parts)
            for locale, parts in template.contents.items()
        },
        default_locale=template.default_locale,
        strict=template.strict,
        version=template.version,
        create_time=timestamp(template.create_time),
        update_time=timestamp(template.update_time),
        connected_content=[
            template_pb2.ConnectedContent(
                name=c.name, url=c.url, cache_seconds=c.cache_seconds, required=c.required
            )
            for c in template.connected
        ],
        subscription_group=(
            f"tenants/{template.tenant_id}/subscriptionGroups/{template.group_id}"
            if template.group_id
            else ""
        ),
    )


def _connected(template: template_pb2.Template) -> list[dict[str, Any]]:
    return [
        {"name": c.name, "url": c.url, "cache_seconds": c.cache_seconds, "required": c.required}
        for c in template.connected_content
    ]


def _contents(template: template_pb2.Template) -> dict[str, dict[str, str]]:
    return {
        locale: {"subject": c.subject, "html": c.html, "text": c.text}
        for locale, c in template.contents.items()
    }


_STATES = {
    "queued": message_pb2.MESSAGE_STATE_QUEUED,
    "sending": message_pb2.MESSAGE_STATE_SENDING,
    "sent": message_pb2.MESSAGE_STATE_SENT,
    "aborted": message_pb2.MESSAGE_STATE_ABORTED,
    "failed": message_pb2.MESSAGE_STATE_FAILED,
    "unknown": message_pb2.MESSAGE_STATE_UNKNOWN,
}
_STATE_NAMES = {v: k for k, v in _STATES.items()}


def message_proto(message: Message, *, with_data: bool = True) -> message_pb2.Message:
    """A message; `with_data=False` leaves its data out (a batch's answer:
    the caller has it, and echoing it would cost as much as taking it)."""
    data = struct_pb2.Struct()
    if with_data:
        data.update(message.data)
    r = message.recipient
    tenant = f"tenants/{message.tenant_id}"
    return message_pb2.Message(
        name=message.name,
        template=f"{tenant}/templates/{message.template_id}",
        template_version=message.template_version,
        recipient=message_pb2.Recipient(
            profile=r.get("profile", "")
            or (f"{tenant}/profiles/{message.profile_id}" if message.profile_id else ""),
            user_id=r.get("user_id", ""),
            email=r.get("email", ""),
            phone=r.get("phone", ""),
        ),
        data=data,
        transactional=message.transactional,
        idempotency_key=message.idempotency_key,
        channel=_channel_enum(message.channel),  # type: ignore[arg-type]
        state=_STATES.get(message.state, message_pb2.MESSAGE_STATE_UNSPECIFIED),
        abort_reason=message.abort_reason,
        error=message.error,
        provider=f"{tenant}/channelProviders/{message.provider_id}" if message.provider_id else "",
        provider_message_id=message.provider_message_id,
        address=message.address,
        locale=message.locale,
        attempts=message.attempts,
        create_time=timestamp(message.create_time),
        send_time=timestamp(message.send_time or None),
        update_time=timestamp(message.update_time),
        campaign=f"{tenant}/campaigns/{message.campaign_id}" if message.campaign_id else "",
        sms_segments=message.segments,
        sms_encoding=message.encoding,
        receipt=message.receipt,
        receipt_time=timestamp(message.receipt_time or None),
        send_at_optimal_time=message.optimal,
        send_time_method=message.send_time_method,
        send_time_confidence=message.send_time_confidence,
    )


_KINDS = {
    message_pb2.PROVIDER_KIND_SMTP: "smtp",
    message_pb2.PROVIDER_KIND_TWILIO: "twilio",
    message_pb2.PROVIDER_KIND_WEBHOOK: "webhook",
    message_pb2.PROVIDER_KIND_SENDGRID: "sendgrid",
    message_pb2.PROVIDER_KIND_WEB_PUSH: "web_push",
    message_pb2.PROVIDER_KIND_FCM: "fcm",
    message_pb2.PROVIDER_KIND_APNS: "apns",
    message_pb2.PROVIDER_KIND_WHATSAPP: "whatsapp",
}
_KIND_ENUMS = {v: k for k, v in _KINDS.items()}


def provider_proto(provider: Provider) -> message_pb2.ChannelProvider:
    return message_pb2.ChannelProvider(
        name=provider.name,
        display_name=provider.display_name,
        channel=_channel_enum(provider.channel),  # type: ignore[arg-type]
        kind=_KIND_ENUMS.get(provider.kind, message_pb2.PROVIDER_KIND_UNSPECIFIED),
        priority=provider.priority,
        config=provider.shown(),
        create_time=timestamp(provider.create_time),
    )


_REASONS = {
    message_pb2.SUPPRESSION_REASON_USER_OPT_OUT: "user_opt_out",
    message_pb2.SUPPRESSION_REASON_BOUNCED: "bounced",
    message_pb2.SUPPRESSION_REASON_COMPLAINED: "complained",
    message_pb2.SUPPRESSION_REASON_REGULATORY: "regulatory",
    message_pb2.SUPPRESSION_REASON_ADMIN_ACTION: "admin_action",
    message_pb2.SUPPRESSION_REASON_BLOCKLISTED: "blocklisted",
}
_REASON_ENUMS = {v: k for k, v in _REASONS.items()}


def suppression_proto(entry: Suppression) -> message_pb2.Suppression:
    return message_pb2.Suppression(
        name=entry.name,
        address=entry.address,
        channel=_channel_enum(entry.channel),  # type: ignore[arg-type]
        reason=_REASON_ENUMS.get(entry.reason, message_pb2.SUPPRESSION_REASON_UNSPECIFIED),
        expire_time=timestamp(entry.expire_time or None),
        note=entry.note,
        create_time=timestamp(entry.create_time),
    )


_PERIODS = {
    message_pb2.CAP_PERIOD_HOUR: "hour",
    message_pb2.CAP_PERIOD_DAY: "day",
    message_pb2.CAP_PERIOD_WEEK: "week",
    message_pb2.CAP_PERIOD_MONTH: "month",
    message_pb2.CAP_PERIOD_CAMPAIGN: "campaign",
}
_PERIOD_ENUMS = {v: k for k, v in _PERIODS.items()}


def rules_proto(rules: Rules) -> message_pb2.DeliveryRules:
    q = rules.quiet
    return message_pb2.DeliveryRules(
        name=rules.name,
        frequency_caps=[
            message_pb2.FrequencyCapRule(
                channel=_channel_enum(c.channel),  # type: ignore[arg-type]
                period=_PERIOD_ENUMS.get(c.period, message_pb2.CAP_PERIOD_UNSPECIFIED),
                max_messages=c.max_messages,
                include_transactional=c.include_transactional,
            )
            for c in rules.caps
        ],
        quiet_hours=message_pb2.QuietHours(
            enabled=q.enabled,
            start=q.start,
            end=q.end,
            time_zone=q.time_zone,
            action=message_pb2.QUIET_HOURS_ACTION_DROP
            if q.action == "drop"
            else message_pb2.QUIET_HOURS_ACTION_HOLD,
        ),
        update_time=timestamp(rules.update_time or None),
        connected_content_hosts=list(rules.connected_hosts),
    )


_INTERACTIONS = {
    pb.FEED_INTERACTION_IMPRESSION: "impression",
    pb.FEED_INTERACTION_CLICK: "click",
    pb.FEED_INTERACTION_DISMISS: "dismiss",
}


def feed_proto(item: FeedItem) -> message_pb2.FeedItem:
    data = struct_pb2.Struct()
    data.update(item.data)
    return message_pb2.FeedItem(
        name=item.name,
        profile=f"tenants/{item.tenant_id}/profiles/{item.profile_id}",
        channel=_channel_enum(item.channel),  # type: ignore[arg-type]
        title=item.title,
        body=item.body,
        html=item.html,
        data=data,
        trigger=item.trigger,
        create_time=timestamp(item.create_time),
        expire_time=timestamp(item.expire_time),
        impressions=item.impressions,
        clicks=item.clicks,
        dismiss_time=timestamp(item.dismiss_time or None),
    )


def catalog_proto(catalog: Catalog) -> message_pb2.Catalog:
    return message_pb2.Catalog(
        name=catalog.name,
        display_name=catalog.display_name,
        item_count=catalog.item_count,
        create_time=timestamp(catalog.create_time),
    )


def group_proto(group: Group) -> message_pb2.SubscriptionGroup:
    return message_pb2.SubscriptionGroup(
        name=group.name,
        display_name=group.display_name,
        description=group.description,
        subscribed_by_default=group.subscribed_by_default,
        create_time=timestamp(group.create_time),
    )


def choice_proto(choice: Choice) -> message_pb2.GroupChoice:
    return message_pb2.GroupChoice(
        group=choice.group.name,
        display_name=choice.group.display_name,
        description=choice.group.description,
        subscribed=choice.subscribed,
    )


class MessagingServicer(messaging_service_pb2_grpc.MessagingServiceServicer):
    def __init__(self, messaging: Messaging) -> None:
        self._m = messaging

    async def CreateTemplate(self, request: pb.CreateTemplateRequest, context: Any) -> Any:
        t = request.template
        created = await self._m.templates.create(
            current_principal(),
            request.parent,
            display_name=t.display_name,
            channel=_channel(t.channel),
            contents=_contents(t),
            default_locale=t.default_locale,
            strict=t.strict,
            connected=_connected(t),
            subscription_group=t.subscription_group,
        )
        return pb.CreateTemplateResponse(template=template_proto(created))

    async def GetTemplate(self, request: pb.GetTemplateRequest, context: Any) -> Any:
        found = await self._m.templates.get(current_principal(), request.name, request.version)
        return pb.GetTemplateResponse(template=template_proto(found))

    async def ListTemplates(self, request: pb.ListTemplatesRequest, context: Any) -> Any:
        found, token = await self._m.templates.list_templates(
            current_principal(), request.parent, request.page_size, request.page_token
        )
        return pb.ListTemplatesResponse(
            templates=[template_proto(t) for t in found], next_page_token=token
        )

    async def UpdateTemplate(self, request: pb.UpdateTemplateRequest, context: Any) -> Any:
        t = request.template
        updated = await self._m.templates.update(
            current_principal(),
            t.name,
            list(request.update_mask.paths),
            display_name=t.display_name,
            contents=_contents(t),
            default_locale=t.default_locale,
            strict=t.strict,
            connected=_connected(t),
            subscription_group=t.subscription_group,
        )
        return pb.UpdateTemplateResponse(template=template_proto(updated))

    async def DeleteTemplate(self, request: pb.DeleteTemplateRequest, context: Any) -> Any:
        await self._m.templates.delete(current_principal(), request.name)
        return pb.DeleteTemplateResponse()

    async def RenderTemplate(self, request: pb.RenderTemplateRequest, context: Any) -> Any:
        locale, parts = await self._m.render(
            current_principal(),
            request.name,
            version=request.version,
            locale=request.locale,
            profile=request.profile,
            data=struct_dict(request.data),
        )
        return pb.RenderTemplateResponse(
            rendered=template_pb2.RenderedContent(locale=locale, **parts)
        )

    async def TestSendTemplate(self, request: pb.TestSendTemplateRequest, context: Any) -> Any:
        r = request.recipient
        message = await self._m.test_send(
            current_principal(),
            request.name,
            recipient={"profile": r.profile, "user_id": r.user_id, "email": r.email,
                       "phone": r.phone},
            data=struct_dict(request.data),
        )  # fmt: skip
        return pb.TestSendTemplateResponse(message=message_proto(message))

    async def CreateChannelProvider(
        self, request: pb.CreateChannelProviderRequest, context: Any
    ) -> Any:
        p = request.channel_provider
        created = await self._m.providers.create(
            current_principal(),
            request.parent,
            display_name=p.display_name,
            channel=_channel(p.channel),
            kind=_KINDS.get(p.kind, ""),
            priority=p.priority,
            config=dict(p.config),
        )
        return pb.CreateChannelProviderResponse(channel_provider=provider_proto(created))

    async def ListChannelProviders(
        self, request: pb.ListChannelProvidersRequest, context: Any
    ) -> Any:
        found = await self._m.providers.list_providers(current_principal(), request.parent)
        return pb.ListChannelProvidersResponse(channel_providers=[provider_proto(p) for p in found])

    async def DeleteChannelProvider(
        self, request: pb.DeleteChannelProviderRequest, context: Any
    ) -> Any:
        await self._m.providers.delete(current_principal(), request.name)
        return pb.DeleteChannelProviderResponse()

    async def SendMessage(self, request: pb.SendMessageRequest, context: Any) -> Any:
        m = request.message
        r = m.recipient
        message, created = await self._m.messages.send(
            current_principal(),
            request.parent,
            template=m.template,
            recipient={"profile": r.profile, "user_id": r.user_id, "email": r.email,
                       "phone": r.phone},
            data=struct_dict(m.data),
            transactional=m.transactional,
            idempotency_key=m.idempotency_key,
            campaign=m.campaign,
            optimal=m.send_at_optimal_time,
        )  # fmt: skip
        return pb.SendMessageResponse(message=message_proto(message), created=created)

    async def BatchSendMessages(self, request: pb.BatchSendMessagesRequest, context: Any) -> Any:
        items = [
            {
                "template": m.template,
                "recipient": {"profile": m.recipient.profile, "user_id": m.recipient.user_id,
                              "email": m.recipient.email, "phone": m.recipient.phone},
                "data": struct_dict(m.data),
                "transactional": m.transactional,
                "idempotency_key": m.idempotency_key,
                "optimal": m.send_at_optimal_time,
            }
            for m in request.messages
        ]  # fmt: skip
        stored, created = await self._m.messages.send_many(
            current_principal(), request.parent, items
        )
        return pb.BatchSendMessagesResponse(
            messages=[message_proto(m, with_data=False) for m in stored], created=created
        )

    async def GetMessage(self, request: pb.GetMessageRequest, context: Any) -> Any:
        found = await self._m.messages.get(current_principal(), request.name)
        return pb.GetMessageResponse(message=message_proto(found))

    async def ReceiveMailReport(self, request: pb.ReceiveMailReportRequest, context: Any) -> Any:
        kind, message, addresses, suppressed = await self._m.mail_report(
            current_principal(), request.parent, request.raw
        )
        return pb.ReceiveMailReportResponse(
            kind=kind, message=message, addresses=addresses, suppressed=suppressed
        )

    async def ListMessageEvents(self, request: pb.ListMessageEventsRequest, context: Any) -> Any:
        found = await self._m.message_events(current_principal(), request.parent)
        tenant = request.parent.split("/messages/")[0]
        return pb.ListMessageEventsResponse(
            events=[
                pb.MessageEvent(
                    kind=kind,
                    event_time=timestamp(at),
                    reason=reason,
                    provider=f"{tenant}/channelProviders/{provider}" if provider else "",
                )
                for kind, at, reason, provider in found
            ]
        )

    async def ReplayMessage(self, request: pb.ReplayMessageRequest, context: Any) -> Any:
        replayed = await self._m.messages.replay(current_principal(), request.name)
        return pb.ReplayMessageResponse(message=message_proto(replayed))

    async def ListMessages(self, request: pb.ListMessagesRequest, context: Any) -> Any:
        found, token = await self._m.messages.list_messages(
            current_principal(),
            request.parent,
            page_size=request.page_size,
            page_token=request.page_token,
            state=_STATE_NAMES.get(request.state, ""),
            profile=request.profile,
        )
        return pb.ListMessagesResponse(
            messages=[message_proto(m) for m in found], next_page_token=token
        )

    async def CreateSuppression(self, request: pb.CreateSuppressionRequest, context: Any) -> Any:
        s = request.suppression
        created = await self._m.suppressions.create(
            current_principal(),
            request.parent,
            address=s.address,
            channel=_channel(s.channel),
            reason=_REASONS.get(s.reason, ""),
            expire_time=micros(s.expire_time, s.HasField("expire_time"),
                               "suppression.expire_time") or 0,
            note=s.note,
        )  # fmt: skip
        return pb.CreateSuppressionResponse(suppression=suppression_proto(created))

    async def ImportSuppressions(self, request: pb.ImportSuppressionsRequest, context: Any) -> Any:
        applied, refused, problems = await self._m.suppressions.import_csv(
            current_principal(),
            request.parent,
            request.csv,
            remove=request.remove,
            default_reason=_REASONS.get(request.default_reason, ""),
        )
        return pb.ImportSuppressionsResponse(
            applied=applied,
            refused=refused,
            problems=[pb.ImportProblem(line=n, problem=why) for n, why in problems],
        )

    async def ListSuppressions(self, request: pb.ListSuppressionsRequest, context: Any) -> Any:
        found, token = await self._m.suppressions.list_suppressions(
            current_principal(), request.parent, request.page_size, request.page_token
        )
        return pb.ListSuppressionsResponse(
            suppressions=[suppression_proto(s) for s in found], next_page_token=token
        )

    async def DeleteSuppression(self, request: pb.DeleteSuppressionRequest, context: Any) -> Any:
        await self._m.suppressions.delete(current_principal(), request.name)
        return pb.DeleteSuppressionResponse()

    async def GetDeliveryRules(self, request: pb.GetDeliveryRulesRequest, context: Any) -> Any:
        rules = await self._m.rules.get(current_principal(), request.name)
        return pb.GetDeliveryRulesResponse(delivery_rules=rules_proto(rules))

    async def UpdateDeliveryRules(
        self, request: pb.UpdateDeliveryRulesRequest, context: Any
    ) -> Any:
        r = request.delivery_rules
        caps = [
            {
                "channel": _channel(c.channel),
                "period": _PERIODS.get(c.period, ""),
                "max_messages": c.max_messages,
                "include_transactional": c.include_transactional,
            }
            for c in r.frequency_caps
        ]
        quiet = None
        if r.HasField("quiet_hours"):
            q = r.quiet_hours
            quiet = {
                "enabled": q.enabled,
                "start": q.start,
                "end": q.end,
                "time_zone": q.time_zone,
                "action": "drop" if q.action == message_pb2.QUIET_HOURS_ACTION_DROP else "hold",
            }
        rules = await self._m.rules.update(
            current_principal(),
            r.name,
            list(request.update_mask.paths),
            caps,
            quiet,
            list(r.connected_content_hosts),
        )
        return pb.UpdateDeliveryRulesResponse(delivery_rules=rules_proto(rules))

    async def ReceiveProviderReceipt(
        self, request: pb.ReceiveProviderReceiptRequest, context: Any
    ) -> Any:
        answer = await self._m.receipt(request.provider, dict(request.fields), request.signature)
        return pb.ReceiveProviderReceiptResponse(challenge=answer)

    async def TrackEngagement(self, request: pb.TrackEngagementRequest, context: Any) -> Any:
        kind, url = await self._m.engagement(request.token)
        return pb.TrackEngagementResponse(kind=kind, url=url)

    async def ListFeedItems(self, request: pb.ListFeedItemsRequest, context: Any) -> Any:
        found = await self._m.feed.items(
            current_principal(), request.parent, _channel(request.channel)
        )
        return pb.ListFeedItemsResponse(feed_items=[feed_proto(i) for i in found])

    async def StreamFeedItems(
        self, request: pb.StreamFeedItemsRequest, context: Any
    ) -> AsyncIterator[pb.StreamFeedItemsResponse]:
        async for item in self._m.feed.follow(current_principal(), request.parent):
            yield pb.StreamFeedItemsResponse(feed_item=feed_proto(item))

    async def RecordFeedInteraction(
        self, request: pb.RecordFeedInteractionRequest, context: Any
    ) -> Any:
        interaction = _INTERACTIONS.get(request.interaction, "")
        item = await self._m.feed_interaction(current_principal(), request.name, interaction)
        return pb.RecordFeedInteractionResponse(feed_item=feed_proto(item))

    async def CreateCatalog(self, request: pb.CreateCatalogRequest, context: Any) -> Any:
        made = await self._m.catalogs.create(
            current_principal(), request.parent, request.catalog_id, request.catalog.display_name
        )
        return pb.CreateCatalogResponse(catalog=catalog_proto(made))

    async def ListCatalogs(self, request: pb.ListCatalogsRequest, context: Any) -> Any:
        found = await self._m.catalogs.list_catalogs(current_principal(), request.parent)
        return pb.ListCatalogsResponse(catalogs=[catalog_proto(c) for c in found])

    async def DeleteCatalog(self, request: pb.DeleteCatalogRequest, context: Any) -> Any:
        await self._m.catalogs.delete(current_principal(), request.name)
        return pb.DeleteCatalogResponse()

    async def UpsertCatalogItems(self, request: pb.UpsertCatalogItemsRequest, context: Any) -> Any:
        written = await self._m.catalogs.upsert(
            current_principal(),
            request.parent,
            [(item.id, struct_dict(item.attributes)) for item in request.items],
        )
        return pb.UpsertCatalogItemsResponse(written=written)

    async def ListCatalogItems(self, request: pb.ListCatalogItemsRequest, context: Any) -> Any:
        found, token = await self._m.catalogs.list_items(
            current_principal(), request.parent, request.page_size, request.page_token
        )
        items = []
        for item_id, attributes, updated in found:
            values = struct_pb2.Struct()
            values.update(attributes)
            items.append(
                message_pb2.CatalogItem(
                    name=f"{request.parent}/items/{item_id}",
                    id=item_id,
                    attributes=values,
                    update_time=timestamp(updated),
                )
            )
        return pb.ListCatalogItemsResponse(items=items, next_page_token=token)

    async def DeleteCatalogItem(self, request: pb.DeleteCatalogItemRequest, context: Any) -> Any:
        await self._m.catalogs.delete_item(current_principal(), request.name)
        return pb.DeleteCatalogItemResponse()

    async def CreateSubscriptionGroup(
        self, request: pb.CreateSubscriptionGroupRequest, context: Any
    ) -> Any:
        g = request.subscription_group
        made = await self._m.groups.create(
            current_principal(),
            request.parent,
            display_name=g.display_name,
            description=g.description,
            subscribed_by_default=g.subscribed_by_default,
        )
        return pb.CreateSubscriptionGroupResponse(subscription_group=group_proto(made))

    async def ListSubscriptionGroups(
        self, request: pb.ListSubscriptionGroupsRequest, context: Any
    ) -> Any:
        found = await self._m.groups.list_groups(current_principal(), request.parent)
        return pb.ListSubscriptionGroupsResponse(
            subscription_groups=[group_proto(g) for g in found]
        )

    async def GetPreferences(self, request: pb.GetPreferencesRequest, context: Any) -> Any:
        choices = await self._m.preferences(request.token)
        return pb.GetPreferencesResponse(choices=[choice_proto(c) for c in choices])

    async def UpdatePreferences(self, request: pb.UpdatePreferencesRequest, context: Any) -> Any:
        wanted = [(c.group, c.subscribed) for c in request.choices]
        choices = await self._m.set_preferences(request.token, wanted)
        return pb.UpdatePreferencesResponse(choices=[choice_proto(c) for c in choices])

    async def Unsubscribe(self, request: pb.UnsubscribeRequest, context: Any) -> Any:
        channel = await self._m.unsubscribe(request.token)
        return pb.UnsubscribeResponse(channel=_channel_enum(channel))  # type: ignore[arg-type]
