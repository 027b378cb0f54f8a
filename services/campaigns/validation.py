"""Checks of campaign and offer definitions. Each problem is one field
violation with the field's path in the request, so a caller can fix every
mistake in one round."""

from __future__ import annotations

import re
import zoneinfo
from urllib.parse import urlsplit

from services.campaigns import schedule as sched
from services.campaigns.model import CampaignSpec, Money, OfferSpec, QuietHours
from services.common.errors import FieldViolation
from services.common.validation import check_labels, check_text

OBJECTIVES = ("AWARENESS", "TRAFFIC", "CONVERSIONS", "RETENTION", "ENGAGEMENT")
CHANNELS = ("DISPLAY", "VIDEO", "NATIVE", "AUDIO", "DOOH", "EMAIL", "SMS", "PUSH", "IN_APP")
PACING_MODES = ("EVEN", "ASAP")
BID_STRATEGIES = ("MAX_CPM", "TARGET_CPA")
DEVICE_TYPES = ("MOBILE", "TABLET", "DESKTOP", "CONNECTED_TV", "CONNECTED_DEVICE")
CAP_WINDOWS = ("HOUR", "DAY")
CAP_FAILURE_MODES = ("CLOSED", "OPEN")
OFFER_FORMATS = ("BANNER", "VIDEO", "NATIVE", "AUDIO")
OFFER_STATUSES = ("ACTIVE", "PAUSED")

# Limits that keep one campaign from hurting the platform or meaning nonsense.
MAX_BUDGET_MICROS = 10**9 * 1_000_000  # a billion in any currency
MAX_CPM_MICROS = 10_000 * 1_000_000
MAX_LIST = 1000
MAX_MARKUP_BYTES = 64 * 1024
MAX_SIZE_PIXELS = 10_000

_CURRENCY = re.compile(r"^[A-Z]{3}$")
_COUNTRY = re.compile(r"^[A-Z]{3}$")
_IAB = re.compile(r"^IAB\d{1,2}(-\d{1,3})?$|^[0-9]{1,4}$")
_DOMAIN = re.compile(r"^(?=.{1,253}$)([a-z0-9-]{1,63}\.)+[a-z]{2,63}$")
_CREATIVE_TEMPLATE = re.compile(
    r"^tenants/[a-z0-9][a-z0-9-]{0,62}/creativeTemplates/[a-z][a-z0-9-]{0,62}$"
)


def _money(v: list[FieldViolation], path: str, money: Money, *, required: bool, upper: int) -> None:
    if not money.is_set:
        if required:
            v.append(FieldViolation(path, "is required"))
        return
    if not _CURRENCY.match(money.currency_code):
        v.append(FieldViolation(f"{path}.currency_code", "must be an ISO 4217 code like USD"))
    if money.amount_micros <= 0:
        v.append(FieldViolation(f"{path}.amount_micros", "must be positive"))
    elif money.amount_micros > upper:
        v.append(FieldViolation(f"{path}.amount_micros", f"must be at most {upper}"))


def _enum(v: list[FieldViolation], path: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        v.append(FieldViolation(path, f"must be one of {', '.join(allowed)}"))


def _list(v: list[FieldViolation], path: str, values: list[str]) -> None:
    if len(values) > MAX_LIST:
        v.append(FieldViolation(path, f"at most {MAX_LIST} entries"))
    if any(not x.strip() for x in values):
        v.append(FieldViolation(path, "entries must not be empty"))


_MESSAGE_CHANNELS = {"EMAIL", "SMS", "PUSH"}


_CLOCK = re.compile(r"^([01][0-9]|2[0-3]):[0-5][0-9]$")


def _quiet_hours(v: list[FieldViolation], p: str, q: QuietHours) -> None:
    if not q.enabled:
        return
    for key, value in (("start", q.start), ("end", q.end)):
        if not _CLOCK.match(value):
            v.append(FieldViolation(f"{p}.{key}", "must be HH:MM (00:00-23:59)"))
    if q.start == q.end and _CLOCK.match(q.start):
        v.append(FieldViolation(f"{p}.end", "must differ from the start"))
    if q.time_zone:
        try:
            zoneinfo.ZoneInfo(q.time_zone)
        except (zoneinfo.ZoneInfoNotFoundError, ValueError):
            v.append(FieldViolation(f"{p}.time_zone", "not an IANA time zone"))


def _messaging(v: list[FieldViolation], p: str, spec: CampaignSpec) -> None:
    """Both or neither of template and audience, well formed; only for a
    campaign with a message channel."""
    m = spec.messaging
    if not 0 <= m.messages_per_minute <= 1_000_000:
        v.append(FieldViolation(f"{p}.messaging.messages_per_minute", "must be 0-1,000,000"))
    _quiet_hours(v, f"{p}.messaging.quiet_hours", m.quiet_hours)
    if not (m.template or m.audience):
        return
    for field, value, kind in (("template", m.template, "templates"),
                               ("audience", m.audience, "segments")):  # fmt: skip
        parts = value.split("/")
        if len(parts) != 4 or parts[0] != "tenants" or parts[2] != kind or not all(parts):
            v.append(
                FieldViolation(f"{p}.messaging.{field}", f"must be tenants/{{t}}/{kind}/{{id}}")
            )
    if not _MESSAGE_CHANNELS & set(spec.channels):
        v.append(FieldViolation(f"{p}.messaging", "needs an EMAIL, SMS or PUSH channel to send on"))


def validate_campaign(spec: CampaignSpec, prefix: str = "campaign") -> list[FieldViolation]:
    v: list[FieldViolation] = []
    p = prefix
    check_text(v, f"{p}.display_name", spec.display_name, required=True, max_len=200)
    _enum(v, f"{p}.objective", spec.objective, OBJECTIVES)
    if not spec.channels:
        v.append(FieldViolation(f"{p}.channels", "needs at least one channel"))
    for channel in spec.channels:
        _enum(v, f"{p}.channels", channel, CHANNELS)
    _enum(v, f"{p}.pacing_mode", spec.pacing_mode, PACING_MODES)
    _enum(v, f"{p}.cap_failure_mode", spec.cap_failure_mode, CAP_FAILURE_MODES)
    check_labels(v, f"{p}.labels", spec.labels)
    _messaging(v, p, spec)

    # Schedule: a known zone, parseable local times, end after start.
    s = spec.schedule
    zone_ok = True
    try:
        sched.zone(s.time_zone)
    except ValueError as exc:
        zone_ok = False
        v.append(FieldViolation(f"{p}.schedule.time_zone", str(exc)))
    instants: dict[str, int] = {}
    for key in ("start_date_time", "end_date_time"):
        value = getattr(s, key)
        if not value:
            v.append(FieldViolation(f"{p}.schedule.{key}", "is required"))
            continue
        try:
            sched.parse_local(value)
            if zone_ok:
                instants[key] = sched.local_to_utc_us(value, s.time_zone)
        except ValueError as exc:
            v.append(FieldViolation(f"{p}.schedule.{key}", f"{value!r}: {exc}"))
    if len(instants) == 2 and instants["end_date_time"] <= instants["start_date_time"]:
        v.append(FieldViolation(f"{p}.schedule.end_date_time", "must be after start_date_time"))
    for i, part in enumerate(s.dayparts):
        where = f"{p}.schedule.dayparts[{i}]"
        if not 0 <= part.start_hour <= 23:
            v.append(FieldViolation(f"{where}.start_hour", "must be 0-23"))
        if not 1 <= part.end_hour <= 24:
            v.append(FieldViolation(f"{where}.end_hour", "must be 1-24"))
        if part.end_hour <= part.start_hour:
            v.append(FieldViolation(where, "covers no hour: end_hour must be after start_hour"))
        for day in part.days:
            _enum(v, f"{where}.days", day, sched.WEEKDAYS)

    # Budgets: positive, sane, one currency, daily within total.
    b = spec.budget
    _money(v, f"{p}.budget.total", b.total, required=True, upper=MAX_BUDGET_MICROS)
    _money(v, f"{p}.budget.daily", b.daily, required=False, upper=MAX_BUDGET_MICROS)
    if b.daily.is_set and b.total.is_set:
        if b.daily.currency_code != b.total.currency_code:
            v.append(FieldViolation(f"{p}.budget.daily.currency_code", "must equal the total's"))
        elif b.daily.amount_micros > b.total.amount_micros:
            v.append(FieldViolation(f"{p}.budget.daily.amount_micros", "exceeds the total budget"))

    bs = spec.bid_strategy
    _enum(v, f"{p}.bid_strategy.type", bs.type, BID_STRATEGIES)
    bids = not set(spec.channels) <= _MESSAGE_CHANNELS | {"IN_APP"}  # only messages: no bids
    if not bids:
        pass
    elif bs.type == "MAX_CPM":
        _money(v, f"{p}.bid_strategy.max_cpm", bs.max_cpm, required=True, upper=MAX_CPM_MICROS)
    elif bs.type == "TARGET_CPA":
        _money(
            v,
            f"{p}.bid_strategy.target_cpa",
            bs.target_cpa,
            required=True,
            upper=MAX_BUDGET_MICROS,
        )
    for money, key in ((bs.max_cpm, "max_cpm"), (bs.target_cpa, "target_cpa")):
        if money.is_set and b.total.is_set and money.currency_code != b.total.currency_code:
            v.append(
                FieldViolation(
                    f"{p}.bid_strategy.{key}.currency_code", "must equal the budget's currency"
                )
            )

    # Targeting that would match nothing is a mistake, not a campaign.
    t = spec.targeting
    for key in (
        "segments",
        "countries",
        "site_allow",
        "site_deny",
        "app_allow",
        "app_deny",
        "iab_categories",
        "deals",
    ):
        _list(v, f"{p}.targeting.{key}", getattr(t, key))
    for country in t.countries:
        if not _COUNTRY.match(country):
            v.append(
                FieldViolation(
                    f"{p}.targeting.countries", f"{country!r} is not an ISO 3166-1 alpha-3 code"
                )
            )
    for device in t.device_types:
        _enum(v, f"{p}.targeting.device_types", device, DEVICE_TYPES)
    for allow, deny in (("site_allow", "site_deny"), ("app_allow", "app_deny")):
        both = set(getattr(t, allow)) & set(getattr(t, deny))
        if both:
            v.append(
                FieldViolation(f"{p}.targeting.{deny}", f"{sorted(both)} both allowed and denied")
            )
    for cat in t.iab_categories:
        if not _IAB.match(cat):
            v.append(
                FieldViolation(f"{p}.targeting.iab_categories", f"{cat!r} is not an IAB category")
            )

    seen_windows: set[str] = set()
    for i, cap in enumerate(spec.frequency_caps):
        where = f"{p}.frequency_caps[{i}]"
        _enum(v, f"{where}.window", cap.window, CAP_WINDOWS)
        if cap.max_impressions < 1 or cap.max_impressions > 10_000:
            v.append(FieldViolation(f"{where}.max_impressions", "must be 1-10000"))
        if cap.window in seen_windows:
            v.append(FieldViolation(where, f"a second {cap.window} cap"))
        seen_windows.add(cap.window)
    tiers: set[str] = set()
    for i, rule in enumerate(spec.loyalty_rules):
        where = f"{p}.loyalty_rules[{i}]"
        check_text(v, f"{where}.tier", rule.tier, required=True, max_len=40)
        if rule.tier.lower() in tiers:
            v.append(FieldViolation(f"{where}.tier", "appears twice"))
        tiers.add(rule.tier.lower())
        if not rule.exclude and not 0.1 <= rule.bid_multiplier <= 10:
            v.append(FieldViolation(f"{where}.bid_multiplier", "must be 0.1-10"))
    return v


def validate_offer(spec: OfferSpec, prefix: str = "offer") -> list[FieldViolation]:
    v: list[FieldViolation] = []
    p = prefix
    check_text(v, f"{p}.display_name", spec.display_name, required=True, max_len=200)
    _enum(v, f"{p}.format", spec.format, OFFER_FORMATS)
    _enum(v, f"{p}.status", spec.status, OFFER_STATUSES)
    if spec.format in ("BANNER", "VIDEO") and not spec.sizes:
        v.append(FieldViolation(f"{p}.sizes", f"a {spec.format.lower()} needs at least one size"))
    for i, size in enumerate(spec.sizes):
        if not (1 <= size.width <= MAX_SIZE_PIXELS and 1 <= size.height <= MAX_SIZE_PIXELS):
            v.append(FieldViolation(f"{p}.sizes[{i}]", f"must be 1-{MAX_SIZE_PIXELS} pixels"))
    if not spec.markup_template.strip():
        v.append(FieldViolation(f"{p}.markup_template", "is required"))
    elif len(spec.markup_template.encode()) > MAX_MARKUP_BYTES:
        v.append(
            FieldViolation(
                f"{p}.markup_template", f"is over the {MAX_MARKUP_BYTES // 1024} KiB limit"
            )
        )
    url = urlsplit(spec.click_url)
    if url.scheme not in ("http", "https") or not url.netloc:
        v.append(FieldViolation(f"{p}.click_url", "must be an http(s) URL"))
    if not spec.advertiser_domains:
        v.append(FieldViolation(f"{p}.advertiser_domains", "needs at least one domain"))
    for domain in spec.advertiser_domains:
        if not _DOMAIN.match(domain):
            v.append(FieldViolation(f"{p}.advertiser_domains", f"{domain!r} is not a domain"))
    for cat in spec.iab_categories:
        if not _IAB.match(cat):
            v.append(FieldViolation(f"{p}.iab_categories", f"{cat!r} is not an IAB category"))
    if any(not 1 <= a <= 100 for a in spec.attributes):
        v.append(FieldViolation(f"{p}.attributes", "creative attributes are 1-100"))
    if spec.embedding and any(x != x or abs(x) > 1e6 for x in spec.embedding):
        v.append(FieldViolation(f"{p}.embedding", "values must be finite"))
    _money(v, f"{p}.bid_cpm", spec.bid_cpm, required=False, upper=MAX_CPM_MICROS)
    if spec.creative_template and not _CREATIVE_TEMPLATE.match(spec.creative_template):
        form = "must be tenants/{tenant}/creativeTemplates/{template}"
        v.append(FieldViolation(f"{p}.creative_template", form))
    return v
