"""Decision ids: what a reward needs to teach the policy (its tenant and
policy, the arm, the features, the propensity, whether the person was held
out, when), in the id itself, signed with the platform secret. A reward
then needs no lookup of the decision (nothing is written per decision), a
forged or altered id is refused, and another policy's or tenant's decision
cannot be credited here.

Layout (then base64url, no padding): version 1 | HMAC-SHA256 of the rest,
first 16 bytes | flags | arm index (uint16) | propensity (float64) | time
(int64 microseconds) | a random nonce (8 bytes) | tenant and policy ids (length-prefixed) | features
(float32 each: the precision the models need)."""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import struct
from collections.abc import Sequence
from dataclasses import dataclass

VERSION = 1
MAC_BYTES = 16
_HEAD = struct.Struct("<BHdq8s")  # flags, arm, propensity, time, nonce
_HOLDOUT = 1
#: Longest decision id accepted (256 features and long ids fit well under).
MAX_ID_CHARS = 2_000


@dataclass(frozen=True, slots=True)
class Decision:
    tenant_id: str
    policy_id: str
    arm: int
    propensity: float
    time_us: int
    holdout: bool
    features: tuple[float, ...]
    nonce: bytes  # 8 random bytes: two decisions are never one

    @property
    def key(self) -> str:
        """A short key of the decision (its rewards are counted once by it)."""
        payload = f"{self.tenant_id}/{self.policy_id}/{self.time_us}/".encode() + self.nonce
        return hashlib.sha256(payload).hexdigest()[:40]


class DecisionTokens:
    def __init__(self, secret: str) -> None:
        self._key = hashlib.sha256(b"decision-id:" + secret.encode()).digest()

    def encode(self, decision: Decision) -> str:
        tenant, policy = decision.tenant_id.encode(), decision.policy_id.encode()
        body = b"".join(
            [
                _HEAD.pack(
                    _HOLDOUT if decision.holdout else 0,
                    decision.arm,
                    decision.propensity,
                    decision.time_us,
                    decision.nonce,
                ),
                bytes([len(tenant)]),
                tenant,
                bytes([len(policy)]),
                policy,
                struct.pack(f"<{len(decision.features)}f", *decision.features),
            ]
        )
        mac = hmac.digest(self._key, body, "sha256")[:MAC_BYTES]
        return base64.urlsafe_b64encode(bytes([VERSION]) + mac + body).rstrip(b"=").decode()

    def decode(self, text: str) -> Decision | None:
        """The decision an id stands for; None when it is not one of ours
        (malformed, altered, or signed with another secret)."""
        if not text or len(text) > MAX_ID_CHARS:
            return None
        try:
            raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
        except (binascii.Error, ValueError):
            return None
        if len(raw) < 1 + MAC_BYTES + _HEAD.size + 2 or raw[0] != VERSION:
            return None
        mac, body = raw[1 : 1 + MAC_BYTES], raw[1 + MAC_BYTES :]
        if not hmac.compare_digest(mac, hmac.digest(self._key, body, "sha256")[:MAC_BYTES]):
            return None
        try:
            flags, arm, propensity, time_us, nonce = _HEAD.unpack_from(body)
            at = _HEAD.size
            tenant, at = _text(body, at)
            policy, at = _text(body, at)
            rest = body[at:]
            if len(rest) % 4:
                return None
            features = struct.unpack(f"<{len(rest) // 4}f", rest)
        except (struct.error, IndexError, UnicodeDecodeError):
            return None
        return Decision(tenant, policy, arm, propensity, time_us, bool(flags & _HOLDOUT),
                        tuple(float(f) for f in features), nonce)  # fmt: skip


def _text(body: bytes, at: int) -> tuple[str, int]:
    size = body[at]
    value = body[at + 1 : at + 1 + size]
    if len(value) != size:
        raise IndexError("cut short")
    return value.decode(), at + 1 + size


def features_of(values: Sequence[float]) -> tuple[float, ...]:
    """Features as a decision id keeps them (float32)."""
    return struct.unpack(f"<{len(values)}f", struct.pack(f"<{len(values)}f", *values))
