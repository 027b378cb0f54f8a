"""The loyalty programme's rules, without storage: tiers and their
thresholds, the earn rate and the stars a purchase earns, the programme's
earn rules and rewards as a tenant sets them (checked field by field).

Tiers (FR-LOY-001): Basic (not enrolled, or lapsed) -> Silver (every member
from their first earn) -> Gold (500 qualifying stars in the member's
12-month period) -> Reserve (2,500). Within a period the tier is the higher
of the one the period began with and the one its qualifying stars reach;
when a period ends, the next begins with the tier the ended one's stars
reached (Silver at least) and qualifying stars start again from 0.

Earn (FR-LOY-002..005): base stars = ceil(amount_cents / 100); rate = the
tier's multiplier (Basic and Silver 1.0, Gold 1.2, Reserve 1.7) plus, for
each earn rule running on the purchase's channel, its multiplier - 1; x2 for
a referral, x1.2 for a digital purchase; stars = floor(base x rate),
computed in exact decimals (never a star more than the rate gives)."""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from decimal import ROUND_FLOOR, Decimal
from typing import Any

from services.common.errors import FieldViolation, collect

TIERS = ("BASIC", "SILVER", "GOLD", "RESERVE")
RANK = {tier: i for i, tier in enumerate(TIERS)}
ENTRY_TIER = "SILVER"
#: Qualifying stars in a period that reach a tier (FR-LOY-001).
THRESHOLDS = {"GOLD": 500, "RESERVE": 2_500}
#: The earn rate each tier starts from.
TIER_MULTIPLIERS = {
    "BASIC": Decimal("1.0"),
    "SILVER": Decimal("1.0"),
    "GOLD": Decimal("1.2"),
    "RESERVE": Decimal("1.7"),
}
REFERRAL_MULTIPLIER = Decimal("2")
DIGITAL_MULTIPLIER = Decimal("1.2")
PERIOD_US = 365 * 86_400_000_000
DEFAULT_EXPIRY_DAYS = 180
MAX_EXPIRY_DAYS = 3650
MAX_AMOUNT_CENTS = 10**10
MAX_RULE_MULTIPLIER = 10.0
MAX_RULES = 50
MAX_REWARDS = 100
MAX_REWARD_STARS = 10**9
MAX_REASON = 500

_KEY = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
_CHANNEL = re.compile(r"^[a-z0-9_]{0,32}$")


def tier_for(qualifying: int) -> str:
    """The tier a period's qualifying stars reach (a member: Silver at least)."""
    if qualifying >= THRESHOLDS["RESERVE"]:
        return "RESERVE"
    if qualifying >= THRESHOLDS["GOLD"]:
        return "GOLD"
    return ENTRY_TIER


def higher(a: str, b: str) -> str:
    return a if RANK[a] >= RANK[b] else b


def progress(tier: str, qualifying: int) -> tuple[float, int]:
    """(0-1 towards the next tier, qualifying stars still needed)."""
    if tier == "RESERVE":
        return 1.0, 0
    target = THRESHOLDS["GOLD"] if RANK[tier] < RANK["GOLD"] else THRESHOLDS["RESERVE"]
    q = max(0, qualifying)
    return min(1.0, q / target), max(0, target - q)


@dataclass(frozen=True, slots=True)
class EarnRule:
    id: str
    channel: str  # "": every channel
    multiplier: float
    start_us: int = 0  # 0: always has
    end_us: int = 0  # 0: no end

    def runs(self, channel: str, now_us: int) -> bool:
        return (
            (not self.channel or self.channel == channel)
            and (not self.start_us or self.start_us <= now_us)
            and (not self.end_us or now_us < self.end_us)
        )


@dataclass(frozen=True, slots=True)
class Reward:
    id: str
    display_name: str
    stars: int
    value_cents: int = 0
    min_tier: str = ""  # "": any member


@dataclass(frozen=True, slots=True)
class Program:
    earn_rules: tuple[EarnRule, ...] = ()
    rewards: tuple[Reward, ...] = ()
    expiry_days: int = DEFAULT_EXPIRY_DAYS
    update_time: int = 0  # 0: never set (the defaults)
    _rewards: Mapping[str, Reward] = field(default_factory=dict, compare=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_rewards", {r.id: r for r in self.rewards})

    def reward(self, reward_id: str) -> Reward | None:
        return self._rewards.get(reward_id)

    @property
    def expiry_us(self) -> int:
        return self.expiry_days * 86_400_000_000

    def rate(self, tier: str, channel: str, referral: bool, digital: bool, now_us: int) -> Decimal:
        rate = TIER_MULTIPLIERS[tier]
        for rule in self.earn_rules:
            if rule.runs(channel, now_us):
                rate += Decimal(repr(rule.multiplier)) - 1
        rate = max(rate, Decimal(0))
        if referral:
            rate *= REFERRAL_MULTIPLIER
        if digital:
            rate *= DIGITAL_MULTIPLIER
        return rate

    def to_spec(self) -> dict[str, Any]:
        return {
            "earn_rules": [
                {"id": r.id, "channel": r.channel, "multiplier": r.multiplier,
                 "start_us": r.start_us, "end_us": r.end_us}
                for r in self.earn_rules
            ],
            "rewards": [
                {"id": r.id, "display_name": r.display_name, "stars": r.stars,
                 "value_cents": r.value_cents, "min_tier": r.min_tier}
                for r in self.rewards
            ],
            "expiry_days": self.expiry_days,
        }  # fmt: skip

    @classmethod
    def from_spec(cls, spec: Mapping[str, Any], update_time: int) -> Program:
        return cls(
            tuple(EarnRule(**r) for r in spec.get("earn_rules", ())),
            tuple(Reward(**r) for r in spec.get("rewards", ())),
            int(spec.get("expiry_days", DEFAULT_EXPIRY_DAYS)),
            update_time,
        )


def base_stars(amount_cents: int) -> int:
    return -(-amount_cents // 100)


def stars_earned(amount_cents: int, rate: Decimal) -> int:
    return int((base_stars(amount_cents) * rate).to_integral_value(rounding=ROUND_FLOOR))


#: The rewards of a programme never set (the BRD's redemption tiers).
DEFAULT_REWARDS = (
    Reward("customization", "Customization", 25, 80),
    Reward("discount", "Discount", 60, 200),
    Reward("basic-item", "Basic item", 100, 350),
    Reward("premium-item", "Premium item", 200, 650),
    Reward("premium-food", "Premium food", 300, 800),
    Reward("merchandise", "Merchandise", 400, 1500),
    Reward("exclusive-service", "Exclusive service", 500, 2500, "GOLD"),
)
DEFAULT_PROGRAM = Program(rewards=DEFAULT_REWARDS)


def checked_program(
    rules: Sequence[EarnRule], rewards: Sequence[Reward], expiry_days: int
) -> Program:
    """The programme as set, or INVALID_ARGUMENT naming every bad field."""
    bad: list[FieldViolation] = []
    where = "loyalty_program"
    if len(rules) > MAX_RULES:
        bad.append(FieldViolation(f"{where}.earn_rules", f"at most {MAX_RULES}"))
    seen: set[str] = set()
    for i, rule in enumerate(rules):
        at = f"{where}.earn_rules[{i}]"
        if not _KEY.match(rule.id):
            bad.append(FieldViolation(f"{at}.id", "1-64 letters, digits, '.', '_' or '-'"))
        elif rule.id in seen:
            bad.append(FieldViolation(f"{at}.id", f"{rule.id!r} is used twice"))
        seen.add(rule.id)
        if not _CHANNEL.match(rule.channel):
            bad.append(FieldViolation(f"{at}.channel", "0-32 lowercase letters, digits or '_'"))
        if not (math.isfinite(rule.multiplier) and 0 < rule.multiplier <= MAX_RULE_MULTIPLIER):
            bad.append(
                FieldViolation(f"{at}.multiplier", f"above 0, at most {MAX_RULE_MULTIPLIER:g}")
            )
        if rule.start_us and rule.end_us and rule.end_us <= rule.start_us:
            bad.append(FieldViolation(f"{at}.end_time", "must be after start_time"))
    if len(rewards) > MAX_REWARDS:
        bad.append(FieldViolation(f"{where}.rewards", f"at most {MAX_REWARDS}"))
    seen = set()
    for i, reward in enumerate(rewards):
        at = f"{where}.rewards[{i}]"
        if not _KEY.match(reward.id):
            bad.append(FieldViolation(f"{at}.id", "1-64 letters, digits, '.', '_' or '-'"))
        elif reward.id in seen:
            bad.append(FieldViolation(f"{at}.id", f"{reward.id!r} is used twice"))
        seen.add(reward.id)
        if not 1 <= len(reward.display_name) <= 200:
            bad.append(FieldViolation(f"{at}.display_name", "1-200 characters"))
        if not 1 <= reward.stars <= MAX_REWARD_STARS:
            bad.append(FieldViolation(f"{at}.stars", f"1 to {MAX_REWARD_STARS}"))
        if not 0 <= reward.value_cents <= MAX_AMOUNT_CENTS:
            bad.append(FieldViolation(f"{at}.value_cents", f"0 to {MAX_AMOUNT_CENTS}"))
        if reward.min_tier and reward.min_tier not in RANK:
            bad.append(FieldViolation(f"{at}.min_tier", f"one of {', '.join(TIERS)}"))
    if not 0 <= expiry_days <= MAX_EXPIRY_DAYS:
        bad.append(FieldViolation(f"{where}.expiry_days", f"1-{MAX_EXPIRY_DAYS} (0: 180)"))
    collect(bad)
    return Program(tuple(rules), tuple(rewards), expiry_days or DEFAULT_EXPIRY_DAYS)
