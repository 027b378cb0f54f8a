"""The CoLaNet feature vector: ONE builder, `build_features`, and its layout.

256 float32 values per (user, offer) pair (FR-RTB-003 and the request-flow
document, "Bid Request Flow", step 5):

=============  ==============================================================
index          content
=============  ==============================================================
[0, 64)        user interest embedding, clipped to [-4, 4]; fewer than 64
               values are zero-padded
[64, 128)      segment membership, one-hot (multi-hot) by segment index 0..63
[128, 136)     loyalty: [128] tier (Basic 0.0, Silver 0.25, Gold 0.5,
               Reserve 1.0),
               [129] stars balance / 5000, [130] tier progress 0..1,
               [131] effective earn rate / 2, [132] redeem recency
               1 / (1 + days since last redemption / 30) (0: never redeemed),
               [133] birthday eligible 0/1, [134] preferred channel / 5
               (none, email, push, SMS, in-app, web = 0..5),
               [135] lifetime stars / 50000
[136, 140)     context: [136] recency 1 / (1 + hours since last visit / 24)
               (0: never seen), [137] frequency-cap utilisation 0..1,
               [138] device / 4 (unknown, desktop, mobile, tablet, CTV = 0..4),
               [139] slot position 1 / (1 + position), position 0-based
[140, 256)     the offer's own embedding (the range the requirement reserved):
               16 signed entries of +-0.25 at positions drawn from the BLAKE2b
               hash of the offer id (norm about 1), the same on every machine
               and library version, so the model can tell offers apart
=============  ==============================================================

Everything in [0, 140) is the same for every candidate offer of one bid (the
"user part"); only [140, 256) depends on the offer. The NumPy provider uses
that to compute the first layer's user projection once per bid and add
precomputed per-offer projections.

Bump `LAYOUT_VERSION` whenever the meaning of any index changes: checkpoints
record the version they were trained with and refuse to load under another.
"""

from __future__ import annotations

import functools
import hashlib
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

__all__ = [
    "CHANNELS",
    "DEVICES",
    "FEATURE_DIM",
    "LEGACY_TIERS",
    "LAYOUT_VERSION",
    "OFFER_DIM",
    "TIERS",
    "USER_DIM",
    "BidContext",
    "FeatureError",
    "Loyalty",
    "Profile",
    "build_features",
    "clipped",
    "offer_embedding",
    "offer_embeddings",
    "tier_name",
    "user_features",
]

LAYOUT_VERSION = "colanet-features/1"
FEATURE_DIM = 256
USER_DIM = 140
OFFER_DIM = FEATURE_DIM - USER_DIM  # 116

INTERESTS = slice(0, 64)
SEGMENTS = slice(64, 128)
LOYALTY = slice(128, 136)
CONTEXT = slice(136, 140)
OFFER = slice(140, 256)

# Basic keeps the old entry tier's 0.0 (what every profile without a tier
# had), so models trained before the four tiers read old records the same.
TIERS = {"BASIC": 0.0, "SILVER": 0.25, "GOLD": 0.5, "RESERVE": 1.0}
#: Tier names from before the four-tier programme: Green was the entry tier.
LEGACY_TIERS = {"GREEN": "SILVER"}


def tier_name(value: str) -> str | None:
    """A tier's name as written anywhere (any case, a legacy name): its
    name in TIERS, or None when it is not a tier."""
    name = value.strip().upper()
    name = LEGACY_TIERS.get(name, name)
    return name if name in TIERS else None


CHANNELS = ("NONE", "EMAIL", "PUSH", "SMS", "IN_APP", "WEB")
DEVICES = ("UNKNOWN", "DESKTOP", "MOBILE", "TABLET", "CTV")

_INTEREST_CLIP = 4.0
_OFFER_ENTRIES = 16
_OFFER_VALUE = 1.0 / math.sqrt(_OFFER_ENTRIES)  # 0.25: unit norm

Vector = npt.NDArray[np.float32]


class FeatureError(ValueError):
    """An input the builder cannot encode; `field` names it (dotted, with
    [index] for list items, e.g. ``interests[3]``)."""

    def __init__(self, field: str, description: str) -> None:
        super().__init__(f"{field}: {description}")
        self.field = field
        self.description = description


@dataclass(frozen=True, slots=True)
class Loyalty:
    """Loyalty state of the user (request-flow document, loyalty section)."""

    tier: str = "BASIC"  # BASIC, SILVER, GOLD or RESERVE
    stars_balance: float = 0.0
    tier_progress: float = 0.0  # 0..1 towards the next tier
    earn_rate: float = 0.0  # effective stars per currency unit (0: unknown)
    days_since_redeem: float | None = None  # None: never redeemed
    birthday_eligible: bool = False
    preferred_channel: str = "NONE"  # one of CHANNELS
    lifetime_stars: float = 0.0


@dataclass(frozen=True, slots=True)
class BidContext:
    """Per-bid context."""

    hours_since_last_visit: float | None = None  # None: never seen
    frequency_cap_utilization: float = 0.0  # impressions so far / cap, 0..1
    device: str = "UNKNOWN"  # one of DEVICES
    position: int = 0  # 0-based ad slot


@dataclass(frozen=True, slots=True)
class Profile:
    """Everything about the user and the bid that the model sees."""

    interests: Sequence[float] = ()
    segments: Sequence[int] = ()
    loyalty: Loyalty = field(default_factory=Loyalty)
    context: BidContext = field(default_factory=BidContext)


def _finite(name: str, value: float) -> float:
    value = float(value)
    if not math.isfinite(value):
        raise FeatureError(name, f"must be a finite number, got {value}")
    return value


def clipped(x: npt.NDArray[Any], bound: Any) -> npt.NDArray[Any]:
    """x clipped to [-bound, bound]: two ufunc calls, ~2.5x faster than
    np.clip's wrapper chain on a bid's small arrays (NaN stays NaN)."""
    out: npt.NDArray[Any] = np.minimum(np.maximum(x, -bound), bound)
    return out


def _clip01(value: float) -> float:
    return 0.0 if value < 0.0 else 1.0 if value > 1.0 else value


def user_features(profile: Profile) -> Vector:
    """The user part, indices [0, 140), of the feature vector."""
    out = np.zeros(USER_DIM, dtype=np.float32)
    interests = np.asarray(profile.interests, dtype=np.float64).reshape(-1)
    if interests.size > 64:
        raise FeatureError("interests", f"at most 64 values, got {interests.size}")
    if interests.size:
        bad = ~np.isfinite(interests)
        if bad.any():
            index = int(np.argmax(bad))
            raise FeatureError(
                f"interests[{index}]", f"must be a finite number, got {interests[index]}"
            )
        out[: interests.size] = clipped(interests, _INTEREST_CLIP)
    for i, segment in enumerate(profile.segments):
        if not 0 <= int(segment) < 64:
            raise FeatureError(f"segments[{i}]", f"segment index must be 0..63, got {segment}")
        out[64 + int(segment)] = 1.0
    loyalty = profile.loyalty
    tier = TIERS.get(loyalty.tier)
    if tier is None:
        raise FeatureError("loyalty.tier", f"must be one of {', '.join(TIERS)}")
    if loyalty.preferred_channel not in CHANNELS:
        raise FeatureError("loyalty.preferred_channel", f"must be one of {', '.join(CHANNELS)}")
    balance = _finite("loyalty.stars_balance", loyalty.stars_balance)
    progress = _finite("loyalty.tier_progress", loyalty.tier_progress)
    earn = _finite("loyalty.earn_rate", loyalty.earn_rate)
    lifetime = _finite("loyalty.lifetime_stars", loyalty.lifetime_stars)
    out[128] = tier
    out[129] = min(max(balance, 0.0) / 5000.0, 4.0)
    out[130] = _clip01(progress)
    out[131] = min(max(earn, 0.0) / 2.0, 4.0)
    if loyalty.days_since_redeem is not None:
        days = _finite("loyalty.days_since_redeem", loyalty.days_since_redeem)
        out[132] = 1.0 / (1.0 + max(days, 0.0) / 30.0)
    out[133] = 1.0 if loyalty.birthday_eligible else 0.0
    out[134] = CHANNELS.index(loyalty.preferred_channel) / 5.0
    out[135] = min(max(lifetime, 0.0) / 50000.0, 4.0)
    context = profile.context
    if context.hours_since_last_visit is not None:
        hours = _finite("context.hours_since_last_visit", context.hours_since_last_visit)
        out[136] = 1.0 / (1.0 + max(hours, 0.0) / 24.0)
    out[137] = _clip01(
        _finite("context.frequency_cap_utilization", context.frequency_cap_utilization)
    )
    if context.device not in DEVICES:
        raise FeatureError("context.device", f"must be one of {', '.join(DEVICES)}")
    out[138] = DEVICES.index(context.device) / 4.0
    if context.position < 0:
        raise FeatureError("context.position", "must be >= 0")
    out[139] = 1.0 / (1.0 + context.position)
    return out


@functools.lru_cache(maxsize=8192)
def offer_embedding(offer_id: str) -> Vector:
    """The offer part, indices [140, 256): a signed hash embedding of the id.
    Read-only; recent ones are cached (the NumPy provider keeps its own cache
    of the offers' first-layer projections)."""
    digest = hashlib.blake2b(offer_id.encode(), digest_size=2 * _OFFER_ENTRIES).digest()
    vector = np.zeros(OFFER_DIM, dtype=np.float32)
    for i in range(_OFFER_ENTRIES):
        word = digest[2 * i] | (digest[2 * i + 1] << 8)
        index, sign = (word >> 1) % OFFER_DIM, 1.0 if word & 1 else -1.0
        vector[index] += sign * _OFFER_VALUE
    vector.setflags(write=False)
    return vector


def offer_embeddings(offer_ids: Sequence[str]) -> npt.NDArray[np.float32]:
    """Offer parts of several offers, shape (n, 116)."""
    if not offer_ids:
        return np.zeros((0, OFFER_DIM), dtype=np.float32)
    return np.stack([offer_embedding(o) for o in offer_ids])


def build_features(profile: Profile | Vector, offer_ids: Sequence[str]) -> npt.NDArray[np.float32]:
    """THE feature builder: the (len(offer_ids), 256) matrix scoring `offer_ids`
    for `profile` (or for an already built user part of 140 values)."""
    user = profile if isinstance(profile, np.ndarray) else user_features(profile)
    if user.shape != (USER_DIM,):
        raise FeatureError("features", f"user part must have {USER_DIM} values")
    rows = np.empty((len(offer_ids), FEATURE_DIM), dtype=np.float32)
    rows[:, :USER_DIM] = user
    rows[:, USER_DIM:] = offer_embeddings(offer_ids)
    return rows
