"""Campaign protos <-> domain dataclasses (servicer side only)."""

from __future__ import annotations

from typing import Any

from campaignexpress.campaigns.v1 import budget_pb2
from campaignexpress.campaigns.v1 import campaign_pb2 as pb
from campaignexpress.messaging.v1 import message_pb2
from campaignexpress.type.v1 import money_pb2
from services.campaigns import model
from services.campaigns.model import TransitionRecord
from services.common.protoconv import timestamp


def _name(enum: Any, value: int, prefix: str, default: str = "") -> str:
    """Enum number -> domain name without prefix; 0 -> default; unknown -> the
    number as text so validation reports it."""
    if value == 0:
        return default
    try:
        return str(enum.Name(value)).removeprefix(prefix)
    except ValueError:
        return f"UNKNOWN({value})"


def _value(enum: Any, name: str, prefix: str) -> int:
    try:
        return int(enum.Value(prefix + name))
    except ValueError:
        return 0


def money_in(m: money_pb2.Money) -> model.Money:
    return model.Money(m.currency_code.upper(), m.amount_micros)


def money_out(m: model.Money) -> money_pb2.Money:
    return money_pb2.Money(currency_code=m.currency_code, amount_micros=m.amount_micros)


def spec_in(c: pb.Campaign) -> model.CampaignSpec:
    s, b, t = c.schedule, c.budget, c.targeting
    return model.CampaignSpec(
        display_name=c.display_name,
        objective=_name(pb.Objective, c.objective, "OBJECTIVE_", "AWARENESS"),
        channels=[_name(pb.Channel, x, "CHANNEL_", "UNSPECIFIED") for x in c.channels],
        schedule=model.Schedule(
            start_date_time=s.start_date_time,
            end_date_time=s.end_date_time,
            time_zone=s.time_zone or "UTC",
            dayparts=[
                model.Daypart(
                    days=[_name(pb.Weekday, d, "WEEKDAY_", "UNSPECIFIED") for d in p.days],
                    start_hour=p.start_hour,
                    end_hour=p.end_hour,
                )
                for p in s.dayparts
            ],
        ),
        budget=model.Budget(total=money_in(b.total), daily=money_in(b.daily)),
        pacing_mode=_name(pb.PacingMode, c.pacing_mode, "PACING_MODE_", "EVEN"),
        bid_strategy=model.BidStrategy(
            type=_name(pb.BidStrategyType, c.bid_strategy.type, "BID_STRATEGY_TYPE_", "MAX_CPM"),
            max_cpm=money_in(c.bid_strategy.max_cpm),
            target_cpa=money_in(c.bid_strategy.target_cpa),
        ),
        targeting=model.Targeting(
            segments=list(t.segments),
            countries=[x.upper() for x in t.countries],
            device_types=[
                _name(pb.DeviceType, x, "DEVICE_TYPE_", "UNSPECIFIED") for x in t.device_types
            ],
            site_allow=[x.lower() for x in t.site_allow],
            site_deny=[x.lower() for x in t.site_deny],
            app_allow=list(t.app_allow),
            app_deny=list(t.app_deny),
            iab_categories=list(t.iab_categories),
            deals=list(t.deals),
        ),
        frequency_caps=[
            model.FrequencyCap(
                max_impressions=f.max_impressions,
                window=_name(pb.CapWindow, f.window, "CAP_WINDOW_", "DAY"),
            )
            for f in c.frequency_caps
        ],
        loyalty_rules=[
            model.LoyaltyTierRule(
                tier=r.tier, bid_multiplier=r.bid_multiplier or 1.0, exclude=r.exclude
            )
            for r in c.loyalty_rules
        ],
        labels=dict(c.labels),
        allow_repeat_offers=c.allow_repeat_offers,
        cap_failure_mode=_name(
            pb.CapFailureMode, c.cap_failure_mode, "CAP_FAILURE_MODE_", "CLOSED"
        ),
        messaging=model.Messaging(
            template=c.messaging.template,
            audience=c.messaging.audience,
            messages_per_minute=c.messaging.messages_per_minute,
            send_at_optimal_time=c.messaging.send_at_optimal_time,
            quiet_hours=model.QuietHours(
                enabled=c.messaging.quiet_hours.enabled,
                start=c.messaging.quiet_hours.start,
                end=c.messaging.quiet_hours.end,
                time_zone=c.messaging.quiet_hours.time_zone,
                action="DROP"
                if c.messaging.quiet_hours.action == message_pb2.QUIET_HOURS_ACTION_DROP
                else "HOLD",
            ),
        ),
    )


def spec_out(spec: model.CampaignSpec, target: pb.Campaign) -> None:
    s = spec.schedule
    target.display_name = spec.display_name
    target.objective = _value(pb.Objective, spec.objective, "OBJECTIVE_")  # type: ignore[assignment]
    target.channels.extend(_value(pb.Channel, x, "CHANNEL_") for x in spec.channels)  # type: ignore[misc]
    target.schedule.CopyFrom(
        pb.Schedule(
            start_date_time=s.start_date_time,
            end_date_time=s.end_date_time,
            time_zone=s.time_zone,
            dayparts=[
                pb.Daypart(
                    days=[_value(pb.Weekday, d, "WEEKDAY_") for d in p.days],  # type: ignore[misc]
                    start_hour=p.start_hour,
                    end_hour=p.end_hour,
                )
                for p in s.dayparts
            ],
        )
    )
    target.budget.CopyFrom(
        pb.Budget(total=money_out(spec.budget.total), daily=money_out(spec.budget.daily))
    )
    target.pacing_mode = _value(pb.PacingMode, spec.pacing_mode, "PACING_MODE_")  # type: ignore[assignment]
    target.bid_strategy.CopyFrom(
        pb.BidStrategy(
            type=_value(pb.BidStrategyType, spec.bid_strategy.type, "BID_STRATEGY_TYPE_"),  # type: ignore[arg-type]
            max_cpm=money_out(spec.bid_strategy.max_cpm),
            target_cpa=money_out(spec.bid_strategy.target_cpa),
        )
    )
    t = spec.targeting
    target.targeting.CopyFrom(
        pb.Targeting(
            segments=t.segments,
            countries=t.countries,
            device_types=[_value(pb.DeviceType, x, "DEVICE_TYPE_") for x in t.device_types],  # type: ignore[misc]
            site_allow=t.site_allow,
            site_deny=t.site_deny,
            app_allow=t.app_allow,
            app_deny=t.app_deny,
            iab_categories=t.iab_categories,
            deals=t.deals,
        )
    )
    target.frequency_caps.extend(
        pb.FrequencyCap(
            max_impressions=f.max_impressions,
            window=_value(pb.CapWindow, f.window, "CAP_WINDOW_"),  # type: ignore[arg-type]
        )
        for f in spec.frequency_caps
    )
    target.loyalty_rules.extend(
        pb.LoyaltyTierRule(tier=r.tier, bid_multiplier=r.bid_multiplier, exclude=r.exclude)
        for r in spec.loyalty_rules
    )
    target.labels.update(spec.labels)
    target.allow_repeat_offers = spec.allow_repeat_offers
    target.cap_failure_mode = _value(pb.CapFailureMode, spec.cap_failure_mode, "CAP_FAILURE_MODE_")  # type: ignore[assignment]
    m = spec.messaging
    if m.template or m.audience or m.messages_per_minute or m.quiet_hours.enabled:
        q = m.quiet_hours
        target.messaging.CopyFrom(
            pb.CampaignMessaging(
                template=m.template,
                audience=m.audience,
                messages_per_minute=m.messages_per_minute,
                send_at_optimal_time=m.send_at_optimal_time,
                quiet_hours=message_pb2.QuietHours(
                    enabled=q.enabled,
                    start=q.start,
                    end=q.end,
                    time_zone=q.time_zone,
                    action=message_pb2.QUIET_HOURS_ACTION_DROP
                    if q.action == "DROP"
                    else message_pb2.QUIET_HOURS_ACTION_HOLD,
                )
                if q != model.QuietHours()
                else None,
            )
        )


def campaign_out(c: model.Campaign) -> pb.Campaign:
    out = pb.Campaign(
        name=c.name,
        stage=_value(pb.Stage, c.stage, "STAGE_"),  # type: ignore[arg-type]
        revision=c.revision,
        approval_rule=f"tenants/{c.tenant_id}/approvalRules/{c.approval_rule}"
        if c.approval_rule
        else "",
        etag=c.etag,
        create_time=timestamp(c.create_time),
        update_time=timestamp(c.update_time),
    )
    spec_out(c.spec, out)
    return out


def offer_spec_in(o: pb.Offer) -> model.OfferSpec:
    return model.OfferSpec(
        display_name=o.display_name,
        format=_name(pb.OfferFormat, o.format, "OFFER_FORMAT_", "BANNER"),
        sizes=[model.Size(s.width, s.height) for s in o.sizes],
        markup_template=o.markup_template,
        click_url=o.click_url,
        advertiser_domains=[d.lower() for d in o.advertiser_domains],
        iab_categories=list(o.iab_categories),
        attributes=list(o.attributes),
        embedding=list(o.embedding),
        status=_name(pb.OfferStatus, o.status, "OFFER_STATUS_", "ACTIVE"),
        bid_cpm=money_in(o.bid_cpm),
        creative_template=o.creative_template,
    )


def offer_out(o: model.Offer) -> pb.Offer:
    s = o.spec
    return pb.Offer(
        name=o.name,
        display_name=s.display_name,
        format=_value(pb.OfferFormat, s.format, "OFFER_FORMAT_"),  # type: ignore[arg-type]
        sizes=[pb.Size(width=z.width, height=z.height) for z in s.sizes],
        markup_template=s.markup_template,
        click_url=s.click_url,
        advertiser_domains=s.advertiser_domains,
        iab_categories=s.iab_categories,
        attributes=s.attributes,
        embedding=s.embedding,
        status=_value(pb.OfferStatus, s.status, "OFFER_STATUS_"),  # type: ignore[arg-type]
        bid_cpm=money_out(s.bid_cpm),
        creative_template=s.creative_template,
        etag=o.etag,
        create_time=timestamp(o.create_time),
        update_time=timestamp(o.update_time),
    )


def transition_out(t: TransitionRecord) -> pb.Transition:
    return pb.Transition(
        action=t.action,
        from_stage=_value(pb.Stage, t.from_stage, "STAGE_"),  # type: ignore[arg-type]
        to_stage=_value(pb.Stage, t.to_stage, "STAGE_"),  # type: ignore[arg-type]
        actor=t.actor,
        role=t.role,
        comment=t.comment,
        time=timestamp(t.time),
    )


def stage_name(value: int) -> str:
    return _name(pb.Stage, value, "STAGE_")


def channel_names(values: Any) -> list[str]:
    return [_name(pb.Channel, x, "CHANNEL_", "UNSPECIFIED") for x in values]


def channel_values(names: list[str]) -> list[int]:
    return [_value(pb.Channel, x, "CHANNEL_") for x in names]


def delivery_type_name(value: int) -> str:
    return _name(budget_pb2.DeliveryEventType, value, "DELIVERY_EVENT_TYPE_", "UNSPECIFIED")
