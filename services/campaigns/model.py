"""Campaign and offer definitions as the domain sees them: plain dataclasses,
stored as JSON, converted from and to protos by the servicer only. Enum values
are the proto enum names without their prefix ("LIVE", "EMAIL", "EVEN")."""

from __future__ import annotations

import dataclasses
import functools
import types
import typing
from dataclasses import dataclass, field
from typing import Any, TypeVar


@dataclass(frozen=True, slots=True)
class Money:
    currency_code: str = ""
    amount_micros: int = 0

    @property
    def is_set(self) -> bool:
        return bool(self.currency_code) or self.amount_micros != 0


@dataclass(frozen=True, slots=True)
class Daypart:
    days: list[str] = field(default_factory=list)  # "MONDAY"...; empty = every day
    start_hour: int = 0
    end_hour: int = 24


@dataclass(frozen=True, slots=True)
class Schedule:
    start_date_time: str = ""  # local, in time_zone
    end_date_time: str = ""
    time_zone: str = "UTC"
    dayparts: list[Daypart] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class Budget:
    total: Money = field(default_factory=Money)
    daily: Money = field(default_factory=Money)


@dataclass(frozen=True, slots=True)
class BidStrategy:
    type: str = "MAX_CPM"
    max_cpm: Money = field(default_factory=Money)
    target_cpa: Money = field(default_factory=Money)


@dataclass(frozen=True, slots=True)
class Targeting:
    segments: list[str] = field(default_factory=list)
    countries: list[str] = field(default_factory=list)
    device_types: list[str] = field(default_factory=list)
    site_allow: list[str] = field(default_factory=list)
    site_deny: list[str] = field(default_factory=list)
    app_allow: list[str] = field(default_factory=list)
    app_deny: list[str] = field(default_factory=list)
    iab_categories: list[str] = field(default_factory=list)
    deals: list[str] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class FrequencyCap:
    max_impressions: int = 0
    window: str = "DAY"


@dataclass(frozen=True, slots=True)
class LoyaltyTierRule:
    tier: str = ""
    bid_multiplier: float = 1.0
    exclude: bool = False


@dataclass(frozen=True, slots=True)
class QuietHours:
    """A campaign's own quiet hours (HH:MM local; they may wrap midnight)."""

    enabled: bool = False
    start: str = ""
    end: str = ""
    time_zone: str = ""  # of people without a `timezone` trait
    action: str = "HOLD"  # or DROP


@dataclass(frozen=True, slots=True)
class Messaging:
    """What an email, SMS or push campaign sends, and to whom (resource
    names of the messaging and audience domains)."""

    template: str = ""
    audience: str = ""
    messages_per_minute: int = 0
    send_at_optimal_time: bool = False
    quiet_hours: QuietHours = field(default_factory=QuietHours)


@dataclass(frozen=True, slots=True)
class CampaignSpec:
    """Everything a marketer defines; revisions snapshot exactly this."""

    display_name: str = ""
    objective: str = "AWARENESS"
    channels: list[str] = field(default_factory=list)
    schedule: Schedule = field(default_factory=Schedule)
    budget: Budget = field(default_factory=Budget)
    pacing_mode: str = "EVEN"
    bid_strategy: BidStrategy = field(default_factory=BidStrategy)
    targeting: Targeting = field(default_factory=Targeting)
    frequency_caps: list[FrequencyCap] = field(default_factory=list)
    loyalty_rules: list[LoyaltyTierRule] = field(default_factory=list)
    labels: dict[str, str] = field(default_factory=dict)
    allow_repeat_offers: bool = False
    # CLOSED: sit out bids whose cap counts cannot be read in time; OPEN: bid on.
    cap_failure_mode: str = "CLOSED"
    messaging: Messaging = field(default_factory=Messaging)


@dataclass(frozen=True, slots=True)
class Size:
    width: int = 0
    height: int = 0


@dataclass(frozen=True, slots=True)
class OfferSpec:
    display_name: str = ""
    format: str = "BANNER"
    sizes: list[Size] = field(default_factory=list)
    markup_template: str = ""
    click_url: str = ""
    advertiser_domains: list[str] = field(default_factory=list)
    iab_categories: list[str] = field(default_factory=list)
    attributes: list[int] = field(default_factory=list)
    embedding: list[float] = field(default_factory=list)
    status: str = "ACTIVE"
    bid_cpm: Money = field(default_factory=Money)
    #: A DCO template's name: its chosen variant is the bid's markup.
    creative_template: str = ""


@dataclass(frozen=True, slots=True)
class Campaign:
    """A stored campaign: its definition plus workflow state."""

    id: str
    tenant_id: str
    spec: CampaignSpec
    stage: str
    revision: int
    approval_rule: str
    submission: int
    version: int
    create_time: int
    update_time: int

    @property
    def name(self) -> str:
        return f"tenants/{self.tenant_id}/campaigns/{self.id}"

    @property
    def etag(self) -> str:
        return f'W/"{self.version}"'


@dataclass(frozen=True, slots=True)
class Offer:
    id: str
    tenant_id: str
    campaign_id: str
    spec: OfferSpec
    version: int
    create_time: int
    update_time: int

    @property
    def name(self) -> str:
        return f"tenants/{self.tenant_id}/campaigns/{self.campaign_id}/offers/{self.id}"

    @property
    def campaign_name(self) -> str:
        return f"tenants/{self.tenant_id}/campaigns/{self.campaign_id}"

    @property
    def etag(self) -> str:
        return f'W/"{self.version}"'


@dataclass(frozen=True, slots=True)
class Revision:
    campaign_id: str
    tenant_id: str
    revision: int
    spec: CampaignSpec
    stage: str
    actor: str
    change: str
    create_time: int


@dataclass(frozen=True, slots=True)
class TransitionRecord:
    action: str
    from_stage: str
    to_stage: str
    actor: str
    role: str
    comment: str
    time: int


T = TypeVar("T")


def to_json(value: Any) -> Any:
    """A dataclass tree as plain JSON values."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.asdict(value)
    return value


def from_json(cls: type[T], data: Any) -> T:
    """Rebuild a dataclass tree from `to_json` output. Unknown keys are
    ignored, so stored JSON written by a newer version still loads."""
    kwargs: dict[str, Any] = {}
    for name, hint in _field_hints(typing.cast(type, cls)):
        if name in data:
            kwargs[name] = _convert(hint, data[name])
    return cls(**kwargs)


@functools.cache
def _field_hints(cls: type) -> tuple[tuple[str, Any], ...]:
    """(field name, resolved type) of a dataclass; resolving string
    annotations compiles them, so it is done once per class."""
    hints = typing.get_type_hints(cls)
    return tuple((f.name, hints[f.name]) for f in dataclasses.fields(cls))


def _convert(hint: Any, value: Any) -> Any:
    origin = typing.get_origin(hint)
    if dataclasses.is_dataclass(hint) and isinstance(hint, type):
        return from_json(hint, value or {})
    if origin is list:
        (item,) = typing.get_args(hint)
        return [_convert(item, v) for v in value or []]
    if origin is dict:
        return dict(value or {})
    if origin in (typing.Union, types.UnionType):
        return value
    return value
