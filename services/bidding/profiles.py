"""Step 3 of the bid pipeline: the user's profile, through two cache tiers.

L1 is an in-process LRU bounded by entry count, with a TTL of half of L2's;
L2 is the `KeyValueStore` (Redis when REDIS_URL is set, shared by every
process) with a TTL of 3600 s; an unknown user gets the default profile
(Basic tier: not a loyalty member; no history). Reads batch every L1 miss of a call into ONE L2
``get_many``; writes go through L2 then L1.

Negative caching: an L2 miss is remembered in L1 for a short time
(`negative_ttl_seconds`, 30 s by default, never longer than L1's TTL) so a
burst of bids for a user without a profile costs one L2 read, not one per
bid. It is never remembered longer: a profile written by another process
becomes visible here within that time. A `put` or `invalidate` in this
process replaces the entry at once. Entries written to L1 from L2 while a
`put`/`invalidate` of the same user was in flight are discarded, so a slow
read cannot put an older profile back over a newer one.

A consent-restricted bid does not touch the store: call `default_profile`
(no I/O, no metrics) or `get(user_id, personalize=False)`.

If L2 is unreachable, reads degrade to L1 and default profiles (counted in
``campaign_express_profile_store_errors``) instead of failing the bid;
writes raise.

The stored value is a compact binary record (`UserProfile.to_bytes`):
a 69-byte header plus 4 bytes per interest value (float32, the precision the
model uses), segments as one 64-bit mask. The user id is the key, not part of
the value. A profile suppressed from bidding (a journey's step: for all
campaigns or some, until a time) is format 2: the same, then the count of
suppressions and each one's end time and campaign id (length-prefixed).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import math
import struct
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TypeAlias

from prometheus_client import CollectorRegistry

from inference.features import CHANNELS, TIERS, BidContext, Loyalty, Profile
from services.backends.interfaces import KeyValueStore
from services.backends.outages import is_backend_outage
from services.bidding.identity import key_part
from services.common.loopmetrics import Counter

__all__ = [
    "KEY_PREFIX",
    "MAX_INTERESTS",
    "CacheStats",
    "LoyaltyState",
    "ProfileStore",
    "UserProfile",
    "default_profile",
    "profile_key",
    "tenant_user",
]

log = logging.getLogger(__name__)

KEY_PREFIX = "profile:"
MAX_INTERESTS = 64
MAX_SEGMENT = 63

# The stored tier byte. 0-2 were GREEN, GOLD, RESERVE before the four-tier
# programme: 0 now reads as BASIC (the old records' 0 was mostly the default
# of people without a tier, and has the model's same 0.0), Silver is new.
_TIER_CODES = {"BASIC": 0, "GOLD": 1, "RESERVE": 2, "SILVER": 3}
_TIER_NAMES = tuple(sorted(_TIER_CODES, key=_TIER_CODES.__getitem__))
assert set(_TIER_CODES) == set(TIERS)
_CHANNEL_CODES = {name: i for i, name in enumerate(CHANNELS)}

_FORMAT = 1
_FORMAT_SUPPRESSED = 2  # then: count, and per suppression its end and campaign
_SUPPRESSION = struct.Struct("<qB")  # until (microseconds), campaign id length
MAX_SUPPRESSIONS = 32
#: A suppression's campaign that means every campaign.
ALL_CAMPAIGNS = "*"
# format, tier, channel, flags, last_seen_us, last_redeem_us, version,
# stars_balance, tier_progress, earn_rate, lifetime_stars, segment mask, n interests
_HEADER = struct.Struct("<BBBBqqqddddQB")
_FLAG_BIRTHDAY = 1
_FLAG_REDEEMED = 2
_FLAG_NO_ADS = 4  # the person refused personalised advertising (audience consent)
_US_PER_DAY = 86_400_000_000
_US_PER_HOUR = 3_600_000_000


def _now_us() -> int:
    return time.time_ns() // 1000


@dataclass(frozen=True, slots=True)
class LoyaltyState:
    """Loyalty programme state as stored. Times are absolute (microseconds
    since the epoch); `to_feature_profile` turns them into the relative
    values the model sees."""

    tier: str = "BASIC"  # BASIC, SILVER, GOLD or RESERVE
    stars_balance: float = 0.0
    tier_progress: float = 0.0  # 0..1 towards the next tier
    earn_rate: float = 0.0  # effective stars per currency unit (0: unknown)
    last_redeem_us: int | None = None  # None: never redeemed
    birthday_eligible: bool = False
    preferred_channel: str = "NONE"  # one of inference.features.CHANNELS
    lifetime_stars: float = 0.0


_BASIC = LoyaltyState()


def _suppressions(data: bytes, at: int) -> tuple[tuple[str, int], ...]:
    """A format-2 record's suppressions, from its count at `at` to its end."""
    count = data[at]
    at += 1
    found = []
    for _ in range(count):
        until, size = _SUPPRESSION.unpack_from(data, at)
        at += _SUPPRESSION.size
        if at + size > len(data):
            raise ValueError("not a stored profile: a suppression cut short")
        found.append((data[at : at + size].decode(), until))
        at += size
    if at != len(data) or count > MAX_SUPPRESSIONS:
        raise ValueError("not a stored profile")
    return tuple(found)


@dataclass(frozen=True, slots=True)
class UserProfile:
    """What we know about a user. Immutable: instances are shared by the L1
    cache and every bid that reads them. Sequences are stored as tuples."""

    user_id: str
    interests: Sequence[float] = ()  # up to 64 values
    segments: Sequence[int] = ()  # segment indexes 0..63
    loyalty: LoyaltyState = field(default_factory=lambda: _BASIC)
    last_seen_us: int = 0  # 0: never seen
    version: int = 0  # bumped by whoever writes the profile
    # The person refused personalised advertising (their consent in the
    # audience domain): bids treat them as the request's own consent denial.
    ads_opt_out: bool = False
    # Not to be bid on: (campaign id, or ALL_CAMPAIGNS; until, microseconds
    # since the epoch), as a journey's suppress-bidding step set it.
    suppressed: tuple[tuple[str, int], ...] = ()

    def suppresses(self, campaign_id: str, now_us: int) -> bool:
        """Whether bids for this campaign skip the person now."""
        return any(
            until > now_us and (campaign in (ALL_CAMPAIGNS, campaign_id))
            for campaign, until in self.suppressed
        )

    def __post_init__(self) -> None:
        if type(self.interests) is not tuple:
            object.__setattr__(self, "interests", tuple(self.interests))
        if type(self.segments) is not tuple:
            object.__setattr__(self, "segments", tuple(self.segments))

    def validate(self) -> None:
        """Raise ValueError naming the first field the store cannot hold."""
        if len(self.interests) > MAX_INTERESTS:
            raise ValueError(f"interests: at most {MAX_INTERESTS} values")
        for i, value in enumerate(self.interests):
            if not math.isfinite(value):
                raise ValueError(f"interests[{i}]: must be finite")
        for i, segment in enumerate(self.segments):
            if not 0 <= segment <= MAX_SEGMENT:
                raise ValueError(f"segments[{i}]: must be 0..{MAX_SEGMENT}")
        if len(self.suppressed) > MAX_SUPPRESSIONS:
            raise ValueError(f"suppressed: at most {MAX_SUPPRESSIONS}")
        for i, (campaign, _) in enumerate(self.suppressed):
            if not 1 <= len(campaign.encode()) <= 255:
                raise ValueError(f"suppressed[{i}]: a campaign id of 1-255 bytes")
        loyalty = self.loyalty
        if loyalty.tier not in _TIER_CODES:
            raise ValueError(f"loyalty.tier: must be one of {', '.join(TIERS)}")
        if loyalty.preferred_channel not in _CHANNEL_CODES:
            raise ValueError(f"loyalty.preferred_channel: must be one of {', '.join(CHANNELS)}")
        for name in ("stars_balance", "tier_progress", "earn_rate", "lifetime_stars"):
            if not math.isfinite(getattr(loyalty, name)):
                raise ValueError(f"loyalty.{name}: must be finite")

    # -- serialisation
    def to_bytes(self) -> bytes:
        """The compact stored form (see the module docstring)."""
        loyalty = self.loyalty
        mask = 0
        for segment in self.segments:
            mask |= 1 << segment
        flags = (
            (_FLAG_BIRTHDAY if loyalty.birthday_eligible else 0)
            | (_FLAG_REDEEMED if loyalty.last_redeem_us is not None else 0)
            | (_FLAG_NO_ADS if self.ads_opt_out else 0)
        )
        n = len(self.interests)
        head = _HEADER.pack(
            _FORMAT_SUPPRESSED if self.suppressed else _FORMAT,
            _TIER_CODES[loyalty.tier],
            _CHANNEL_CODES[loyalty.preferred_channel],
            flags,
            self.last_seen_us,
            loyalty.last_redeem_us or 0,
            self.version,
            loyalty.stars_balance,
            loyalty.tier_progress,
            loyalty.earn_rate,
            loyalty.lifetime_stars,
            mask,
            n,
        )
        body = head + struct.pack(f"<{n}f", *self.interests) if n else head
        if not self.suppressed:
            return body
        parts = [body, bytes([len(self.suppressed)])]
        for campaign, until in self.suppressed:
            encoded = campaign.encode()
            parts += [_SUPPRESSION.pack(until, len(encoded)), encoded]
        return b"".join(parts)

    @classmethod
    def from_bytes(cls, user_id: str, data: bytes) -> UserProfile:
        """Inverse of `to_bytes`; raises ValueError on anything else."""
        try:
            (
                fmt,
                tier,
                channel,
                flags,
                last_seen_us,
                last_redeem_us,
                version,
                balance,
                progress,
                earn,
                lifetime,
                mask,
                n,
            ) = _HEADER.unpack_from(data)
            end = _HEADER.size + 4 * n
            if n > MAX_INTERESTS or fmt not in (_FORMAT, _FORMAT_SUPPRESSED):
                raise ValueError("not a stored profile")
            fits = len(data) == end if fmt == _FORMAT else len(data) > end
            if not fits:
                raise ValueError("not a stored profile")
            interests = struct.unpack_from(f"<{n}f", data, _HEADER.size) if n else ()
            suppressed = _suppressions(data, end) if fmt == _FORMAT_SUPPRESSED else ()
            segments = []
            while mask:
                low = mask & -mask
                segments.append(low.bit_length() - 1)
                mask ^= low
            loyalty = LoyaltyState(
                tier=_TIER_NAMES[tier],
                stars_balance=balance,
                tier_progress=progress,
                earn_rate=earn,
                last_redeem_us=last_redeem_us if flags & _FLAG_REDEEMED else None,
                birthday_eligible=bool(flags & _FLAG_BIRTHDAY),
                preferred_channel=CHANNELS[channel],
                lifetime_stars=lifetime,
            )
        except (struct.error, IndexError) as exc:
            raise ValueError(f"not a stored profile: {exc}") from None
        return cls(
            user_id,
            interests,
            tuple(segments),
            loyalty,
            last_seen_us,
            version,
            ads_opt_out=bool(flags & _FLAG_NO_ADS),
            suppressed=suppressed,
        )

    # -- scoring
    def to_feature_profile(self, context: BidContext, *, now_us: int | None = None) -> Profile:
        """The `inference.features.Profile` the scorer consumes. Relative times
        are taken at `now_us` (default: now); the context's recency is filled
        from `last_seen_us` when the caller left it unset."""
        now = _now_us() if now_us is None else now_us
        loyalty = self.loyalty
        days_since_redeem = (
            None
            if loyalty.last_redeem_us is None
            else max(0.0, (now - loyalty.last_redeem_us) / _US_PER_DAY)
        )
        if context.hours_since_last_visit is None and self.last_seen_us > 0:
            hours = max(0.0, (now - self.last_seen_us) / _US_PER_HOUR)
            context = dataclasses.replace(context, hours_since_last_visit=hours)
        return Profile(
            interests=self.interests,
            segments=self.segments,
            loyalty=Loyalty(
                tier=loyalty.tier,
                stars_balance=loyalty.stars_balance,
                tier_progress=loyalty.tier_progress,
                earn_rate=loyalty.earn_rate,
                days_since_redeem=days_since_redeem,
                birthday_eligible=loyalty.birthday_eligible,
                preferred_channel=loyalty.preferred_channel,
                lifetime_stars=loyalty.lifetime_stars,
            ),
            context=context,
        )


def default_profile(user_id: str = "") -> UserProfile:
    """The profile of a user we know nothing about: Basic tier, no history."""
    return UserProfile(user_id)


def profile_key(user_id: str) -> str:
    return KEY_PREFIX + key_part(user_id)


def tenant_user(tenant_id: str, user_id: str) -> str:
    """The id a tenant's user has in the store: profiles are per tenant (two
    tenants' "u1" are two people), so the bid path and the audience domain,
    which writes the profiles, both name them `<tenant>/<user id>`."""
    return f"{tenant_id}/{user_id}"


@dataclass(frozen=True, slots=True)
class CacheStats:
    """Lookups by where the answer came from, since the store was made."""

    l1_hits: int
    l2_hits: int
    defaults: int  # unknown users (an L2 miss, or a remembered one) and L2 errors
    l1_misses: int
    l2_misses: int

    @property
    def lookups(self) -> int:
        return self.l1_hits + self.l2_hits + self.defaults

    @property
    def hit_rate(self) -> float:
        """Share of lookups answered from L1 or L2."""
        return (self.l1_hits + self.l2_hits) / self.lookups if self.lookups else 0.0


class _Metrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        hits = Counter(
            "campaign_express_profile_cache_hits",
            "Profile lookups by the tier that answered: l1, l2, or default (unknown user).",
            ["tier"],
            registry=registry,
        )
        misses = Counter(
            "campaign_express_profile_cache_misses",
            "Profile lookups a tier could not answer: l1 (went to L2), l2 (no stored profile).",
            ["tier"],
            registry=registry,
        )
        self.errors = Counter(
            "campaign_express_profile_store_errors",
            "L2 reads that failed or ran out of their time (answered from defaults), "
            "or stored values that did not decode.",
            ["kind"],
            registry=registry,
        )
        self.l1_hit = hits.labels("l1")
        self.l2_hit = hits.labels("l2")
        self.default_hit = hits.labels("default")
        self.l1_miss = misses.labels("l1")
        self.l2_miss = misses.labels("l2")


# (expires at, profile or None = known absent)
_Entry: TypeAlias = tuple[float, UserProfile | None]
_PENDING = UserProfile("\x00pending")  # placeholder while an L2 read is in flight


class ProfileStore:
    """Two-tier profile cache over a `KeyValueStore` (see the module docstring).

    Not thread-safe: use it from one event loop (each process has its own).
    """

    def __init__(
        self,
        kv: KeyValueStore,
        *,
        l1_max_entries: int = 100_000,
        l2_ttl_seconds: float = 3600.0,
        negative_ttl_seconds: float = 30.0,
        metrics_registry: CollectorRegistry | None = None,
        clock: Callable[[], float] = time.monotonic,
        report_outage: Callable[[BaseException], None] | None = None,
        skip_l2: Callable[[], bool] | None = None,
    ) -> None:
        if l1_max_entries < 0:
            raise ValueError("l1_max_entries must be >= 0")
        if not l2_ttl_seconds > 0:
            raise ValueError("l2_ttl_seconds must be > 0")
        self._kv = kv
        self._report_outage = report_outage
        self._skip_l2 = skip_l2
        self._l1: OrderedDict[str, _Entry] = OrderedDict()
        self._l1_max = l1_max_entries
        self._l2_ttl = float(l2_ttl_seconds)
        self._l1_ttl = self._l2_ttl / 2
        self._negative_ttl = max(0.0, min(float(negative_ttl_seconds), self._l1_ttl))
        self._clock = clock
        self._metrics = _Metrics(metrics_registry or CollectorRegistry())
        self._l1_hits = self._l2_hits = self._defaults = self._l1_misses = self._l2_misses = 0
        # Write tracking while L2 reads are in flight (see _fill).
        self._seq = 0
        self._inflight = 0
        self._written: dict[str, int] = {}

    # -- introspection
    @property
    def l1_ttl_seconds(self) -> float:
        return self._l1_ttl

    @property
    def l2_ttl_seconds(self) -> float:
        return self._l2_ttl

    def l1_size(self) -> int:
        return len(self._l1)

    def stats(self) -> CacheStats:
        return CacheStats(
            self._l1_hits, self._l2_hits, self._defaults, self._l1_misses, self._l2_misses
        )

    @staticmethod
    def default_profile(user_id: str = "") -> UserProfile:
        return default_profile(user_id)

    # -- reads
    async def get(
        self,
        user_id: str,
        *,
        personalize: bool = True,
        l2_budget: float | None = None,
        report_timeout: bool = True,
    ) -> UserProfile:
        """One user's profile. With ``personalize=False`` (no consent) or an
        anonymous user, the default profile without touching any tier."""
        if not personalize or not user_id:
            return default_profile(user_id)
        return (
            await self.get_many((user_id,), l2_budget=l2_budget, report_timeout=report_timeout)
        )[user_id]

    async def get_many(
        self,
        user_ids: Sequence[str],
        *,
        l2_budget: float | None = None,
        report_timeout: bool = True,
    ) -> dict[str, UserProfile]:
        """Profiles of `user_ids` (duplicates collapse; anonymous "" gets the
        default without I/O). All L1 misses are read in ONE L2 ``get_many``,
        which may take `l2_budget` seconds at most: users it did not answer for
        in time get the default profile (as when L2 is down), and so do all
        misses while `skip_l2()` says L2 is known to be down. A budget that
        runs out is reported as an L2 outage unless `report_timeout` is false
        (the caller cut it short for its own deadline: that says nothing about
        L2); a budget of 0 reads nothing."""
        out: dict[str, UserProfile] = {}
        missing: list[str] = []
        now = self._clock()
        l1 = self._l1
        l1_hits = defaults = 0
        for uid in user_ids:
            if uid in out:
                continue
            if not uid:
                out[uid] = default_profile(uid)
                continue
            entry = l1.get(uid)
            if entry is not None:
                if entry[0] > now:
                    l1.move_to_end(uid)
                    profile = entry[1]
                    if profile is None:
                        defaults += 1
                        out[uid] = default_profile(uid)
                    else:
                        l1_hits += 1
                        out[uid] = profile
                    continue
                del l1[uid]
            missing.append(uid)
            out[uid] = _PENDING
        if l1_hits:
            self._l1_hits += l1_hits
            self._metrics.l1_hit.inc(l1_hits)
        if defaults:
            self._defaults += defaults
            self._metrics.default_hit.inc(defaults)
        if missing:
            if (self._skip_l2 is not None and self._skip_l2()) or (
                l2_budget is not None and l2_budget <= 0
            ):
                self._l1_misses += len(missing)
                self._defaults += len(missing)
                self._metrics.default_hit.inc(len(missing))
                for uid in missing:
                    out[uid] = default_profile(uid)
            elif l2_budget is None:
                await self._fill(missing, out)
            else:
                try:
                    async with asyncio.timeout(max(l2_budget, 0.0)):
                        await self._fill(missing, out)
                except TimeoutError as exc:
                    self._metrics.errors.labels("timeout").inc()
                    if report_timeout and self._report_outage is not None:
                        self._report_outage(exc)
                    for uid in missing:
                        if out.get(uid) is _PENDING:
                            out[uid] = default_profile(uid)
        return out

    async def _fill(self, missing: list[str], out: dict[str, UserProfile]) -> None:
        self._l1_misses += len(missing)
        self._metrics.l1_miss.inc(len(missing))
        start = self._seq
        self._inflight += 1
        try:
            failed = False
            try:
                values = await self._kv.get_many([profile_key(uid) for uid in missing])
            except Exception as exc:
                if not is_backend_outage(exc):  # OSError included
                    raise
                if self._report_outage is not None:
                    self._report_outage(exc)  # one line per outage, not per bid
                else:
                    log.warning("profile L2 read failed, using defaults: %s", exc)
                self._metrics.errors.labels("read").inc()
                values = [None] * len(missing)
                failed = True
            now = self._clock()
            l2_hits = l2_misses = defaults = 0
            for uid, raw in zip(missing, values, strict=True):
                profile: UserProfile | None = None
                if raw is not None:
                    try:
                        profile = UserProfile.from_bytes(uid, raw)
                    except ValueError:
                        self._metrics.errors.labels("decode").inc()
                        log.warning("stored profile %r does not decode; ignored", uid)
                written_since = self._written.get(uid, -1) > start
                if profile is not None:
                    l2_hits += 1
                    if written_since:
                        current = self._l1.get(uid)
                        profile = current[1] if current and current[1] else profile
                    else:
                        self._l1_put(uid, profile, now + self._l1_ttl)
                    out[uid] = profile
                else:
                    defaults += 1
                    if not failed:
                        l2_misses += 1
                        if not written_since and self._negative_ttl > 0:
                            self._l1_put(uid, None, now + self._negative_ttl)
                    current = self._l1.get(uid) if written_since else None
                    out[uid] = current[1] if current and current[1] else default_profile(uid)
            if l2_hits:
                self._l2_hits += l2_hits
                self._metrics.l2_hit.inc(l2_hits)
            if l2_misses:
                self._l2_misses += l2_misses
                self._metrics.l2_miss.inc(l2_misses)
            if defaults:
                self._defaults += defaults
                self._metrics.default_hit.inc(defaults)
        finally:
            self._inflight -= 1
            if not self._inflight:
                self._written.clear()

    def _l1_put(self, uid: str, profile: UserProfile | None, expires_at: float) -> None:
        if not self._l1_max:
            return
        l1 = self._l1
        l1[uid] = (expires_at, profile)
        l1.move_to_end(uid)
        while len(l1) > self._l1_max:
            l1.popitem(last=False)

    def _mark_written(self, uid: str) -> None:
        self._seq += 1
        if self._inflight:
            self._written[uid] = self._seq

    # -- writes
    async def put(self, profile: UserProfile, ttl_seconds: float | None = None) -> None:
        """Write-through: L2 (TTL `ttl_seconds`, by default `l2_ttl_seconds`),
        then L1. Raises ValueError for a profile the store cannot hold, and
        the backend's error when L2 fails (L1 is then left without the user)."""
        if not profile.user_id:
            raise ValueError("user_id: anonymous profiles are not stored")
        profile.validate()
        data = profile.to_bytes()
        uid = profile.user_id
        self._mark_written(uid)
        self._l1.pop(uid, None)
        await self._kv.set(profile_key(uid), data, ttl_seconds=ttl_seconds or self._l2_ttl)
        self._l1_put(uid, profile, self._clock() + self._l1_ttl)
        self._mark_written(uid)

    async def invalidate(self, user_id: str) -> None:
        """Forget the user in both tiers (the next read finds no profile)."""
        self._mark_written(user_id)
        self._l1.pop(user_id, None)
        await self._kv.delete(profile_key(user_id))
        self._l1.pop(user_id, None)
        self._mark_written(user_id)

    def evict_local(self, user_id: str) -> None:
        """Drop the user from this process's L1 only (e.g. on a change event
        from another process); the next read goes to L2."""
        self._mark_written(user_id)
        self._l1.pop(user_id, None)
