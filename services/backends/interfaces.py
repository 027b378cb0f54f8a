"""The interfaces every backend implements. Domain code depends on these only."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol


@dataclass(frozen=True, slots=True)
class TokenBucketResult:
    """Outcome of taking one token from a bucket."""

    allowed: bool
    # Seconds until a token is available again; 0 when allowed.
    retry_after: float
    # Tokens left after this call.
    remaining: float


class KeyValueStore(Protocol):
    """Hot state: profiles, counters, caps, rate limits. Values are bytes."""

    async def get(self, key: str) -> bytes | None: ...
    async def get_many(self, keys: Sequence[str]) -> list[bytes | None]: ...
    async def set(self, key: str, value: bytes, ttl_seconds: float | None = None) -> None: ...
    async def delete(self, key: str) -> bool: ...
    async def incr(self, key: str, amount: int = 1, ttl_seconds: float | None = None) -> int:
        """Atomically add `amount`; the TTL is set when the key is created."""
        ...

    async def incr_many(self, items: Sequence[tuple[str, int, float | None]]) -> list[int]:
        """`incr` of several (key, amount, ttl_seconds) as ONE atomic step (one
        round trip): no other client sees some counters moved and not the
        others. Returns the new values. A key holding a non-integer raises
        ValueError after the other counters have moved (as Redis MULTI does)."""
        ...

    async def incr_many_once(
        self, marker: str, marker_ttl_seconds: float, items: Sequence[tuple[str, int, float | None]]
    ) -> list[int] | None:
        """`incr_many(items)` unless `marker` exists, and set `marker` (for
        `marker_ttl_seconds`), atomically: a side effect retried under the
        same marker happens once. None when the marker was already there."""
        ...

    async def take_token(self, key: str, rate_per_second: float, burst: int) -> TokenBucketResult:
        """Atomically take one token from the bucket `key` (refilled at
        `rate_per_second`, holding at most `burst`)."""
        ...

    async def ping(self) -> bool: ...
    async def close(self) -> None: ...


@dataclass(frozen=True, slots=True)
class BusMessage:
    subject: str
    data: bytes
    headers: Mapping[str, str] = field(default_factory=dict)


MessageHandler = Callable[[BusMessage], Awaitable[None]]


class Subscription(Protocol):
    async def unsubscribe(self) -> None: ...


class MessageBus(Protocol):
    """Durable publish/subscribe. A handler that returns acknowledges the
    message; one that raises gets it redelivered (at-least-once)."""

    async def publish(
        self, subject: str, data: bytes, headers: Mapping[str, str] | None = None
    ) -> None: ...
    async def subscribe(
        self, subject: str, handler: MessageHandler, queue: str | None = None
    ) -> Subscription:
        """Deliver messages of `subject` (NATS wildcards allowed) to `handler`.
        Subscribers sharing a `queue` split the messages between them."""
        ...

    def on_reconnect(self, callback: Callable[[], Awaitable[None]]) -> None:
        """Call `callback` after the bus was cut off and is back (messages
        published meanwhile may have been missed)."""
        ...

    async def ping(self) -> bool: ...
    async def close(self) -> None: ...


class AnalyticsStore(Protocol):
    """Columnar analytics (ClickHouse SQL dialect)."""

    async def execute(self, sql: str) -> None: ...
    async def insert(
        self, table: str, columns: Sequence[str], rows: Sequence[Sequence[Any]]
    ) -> None: ...
    async def query(self, sql: str) -> list[tuple[Any, ...]]: ...
    async def ping(self) -> bool: ...
    async def close(self) -> None: ...
