"""Key/value stores for hot state: an in-process default and Redis.

Both implementations keep the same observable behaviour so domain code and tests
cannot tell them apart: values are bytes, counters are stored as their decimal
ASCII text (``incr`` then ``get`` gives ``b"3"``), a TTL is set on counters only
when ``incr`` creates them, and token buckets are a classic refill-at-a-rate,
hold-at-most-``burst`` bucket.
"""

from __future__ import annotations

import heapq
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from services.backends.interfaces import KeyValueStore, TokenBucketResult

__all__ = [
    "MemoryKeyValueStore",
    "RedisKeyValueStore",
    "open_key_value_store",
]


def _check_ttl(ttl_seconds: float | None) -> None:
    if ttl_seconds is not None and not ttl_seconds > 0:
        raise ValueError(f"ttl_seconds must be > 0 or None, got {ttl_seconds!r}")


def _check_bucket(rate_per_second: float, burst: int) -> None:
    if not rate_per_second > 0 or math.isinf(rate_per_second):
        raise ValueError(f"rate_per_second must be a finite number > 0, got {rate_per_second!r}")
    if burst < 1:
        raise ValueError(f"burst must be >= 1, got {burst!r}")


def _bucket_ttl_seconds(rate_per_second: float, burst: int) -> float:
    """How long an idle bucket is kept: once it has refilled to `burst` it is
    indistinguishable from a missing one, so it can go (plus a second of slack)."""
    return burst / rate_per_second + 1.0


# --------------------------------------------------------------------------- memory


@dataclass(slots=True)
class _Bucket:
    tokens: float
    updated: float
    expires_at: float


class MemoryKeyValueStore:
    """In-process store for a single process (development, tests, small setups).

    Every method runs synchronously between awaits, so each operation is atomic
    with respect to other coroutines of the same event loop; no locks needed.
    Expiry uses the monotonic clock (immune to wall-clock jumps). Expired keys are
    removed lazily when read, and each write also pops a bounded number of expired
    entries from a min-heap so memory does not grow with keys nobody reads again.
    Not shared between processes: use Redis for that.
    """

    #: Expired entries removed per write, bounding the cost of one operation.
    CLEANUP_BATCH = 32

    def __init__(self, clock: Any = time.monotonic) -> None:
        self._clock = clock
        self._data: dict[str, bytes] = {}
        self._expires: dict[str, float] = {}
        self._heap: list[tuple[float, str]] = []
        self._buckets: dict[str, _Bucket] = {}
        self._bucket_heap: list[tuple[float, str]] = []
        self._closed = False

    # -- internals
    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError("MemoryKeyValueStore is closed")

    def _alive(self, key: str, now: float) -> bool:
        exp = self._expires.get(key)
        if exp is not None and exp <= now:
            self._data.pop(key, None)
            del self._expires[key]
            return False
        return key in self._data

    def _set_expiry(self, key: str, expires_at: float | None) -> None:
        if expires_at is None:
            self._expires.pop(key, None)
            return
        self._expires[key] = expires_at
        heapq.heappush(self._heap, (expires_at, key))
        # Re-setting keys leaves stale heap entries; rebuild when they dominate.
        if len(self._heap) > 2 * len(self._expires) + 1024:
            self._heap = [(exp, k) for k, exp in self._expires.items()]
            heapq.heapify(self._heap)

    def _cleanup(self, now: float) -> None:
        for _ in range(self.CLEANUP_BATCH):
            if not self._heap or self._heap[0][0] > now:
                break
            exp, key = heapq.heappop(self._heap)
            if self._expires.get(key) == exp:  # not a stale entry
                del self._expires[key]
                self._data.pop(key, None)
        for _ in range(self.CLEANUP_BATCH):
            if not self._bucket_heap or self._bucket_heap[0][0] > now:
                break
            exp, key = heapq.heappop(self._bucket_heap)
            bucket = self._buckets.get(key)
            if bucket is not None and bucket.expires_at == exp:
                del self._buckets[key]

    # -- KeyValueStore
    async def get(self, key: str) -> bytes | None:
        self._check_open()
        return self._data[key] if self._alive(key, self._clock()) else None

    async def get_many(self, keys: Sequence[str]) -> list[bytes | None]:
        self._check_open()
        now = self._clock()
        return [self._data[k] if self._alive(k, now) else None for k in keys]

    async def set(self, key: str, value: bytes, ttl_seconds: float | None = None) -> None:
        self._check_open()
        _check_ttl(ttl_seconds)
        now = self._clock()
        self._cleanup(now)
        self._data[key] = bytes(value)
        self._set_expiry(key, None if ttl_seconds is None else now + ttl_seconds)

    async def delete(self, key: str) -> bool:
        self._check_open()
        existed = self._alive(key, self._clock())
        self._data.pop(key, None)
        self._expires.pop(key, None)
        return existed

    async def incr(self, key: str, amount: int = 1, ttl_seconds: float | None = None) -> int:
        """Atomically add `amount`; the TTL is set when the key is created."""
        self._check_open()
        _check_ttl(ttl_seconds)
        return self._incr(key, amount, ttl_seconds)

    def _incr(self, key: str, amount: int, ttl_seconds: float | None) -> int:
        now = self._clock()
        self._cleanup(now)
        if self._alive(key, now):
            try:
                value = int(self._data[key]) + amount
            except ValueError:
                raise ValueError(f"value of key {key!r} is not an integer") from None
            self._data[key] = str(value).encode()
        else:
            value = amount
            self._data[key] = str(value).encode()
            self._set_expiry(key, None if ttl_seconds is None else now + ttl_seconds)
        return value

    async def incr_many(self, items: Sequence[tuple[str, int, float | None]]) -> list[int]:
        """`incr` of each (key, amount, ttl_seconds); no await in between, so
        atomic for the other coroutines."""
        self._check_open()
        for _, _, ttl in items:
            _check_ttl(ttl)
        values: list[int] = []
        error: ValueError | None = None
        for key, amount, ttl in items:
            try:
                values.append(self._incr(key, amount, ttl))
            except ValueError as exc:  # like Redis MULTI: the others still move
                error = error or exc
        if error is not None:
            raise error
        return values

    async def incr_many_once(
        self, marker: str, marker_ttl_seconds: float, items: Sequence[tuple[str, int, float | None]]
    ) -> list[int] | None:
        """`incr_many(items)` unless `marker` exists, setting it; atomic (no
        await in between)."""
        self._check_open()
        _check_ttl(marker_ttl_seconds)
        for _, _, ttl in items:
            _check_ttl(ttl)
        now = self._clock()
        self._cleanup(now)
        if self._alive(marker, now):
            return None
        values = [self._incr(key, amount, ttl) for key, amount, ttl in items]
        self._data[marker] = b"1"
        self._set_expiry(marker, now + marker_ttl_seconds)
        return values

    async def take_token(self, key: str, rate_per_second: float, burst: int) -> TokenBucketResult:
        """Atomically take one token from the bucket `key` (refilled at
        `rate_per_second`, holding at most `burst`)."""
        self._check_open()
        _check_bucket(rate_per_second, burst)
        now = self._clock()
        self._cleanup(now)
        bucket = self._buckets.get(key)
        if bucket is None or bucket.expires_at <= now:
            tokens = float(burst)
        else:
            tokens = min(float(burst), bucket.tokens + (now - bucket.updated) * rate_per_second)
        if tokens >= 1.0:
            tokens -= 1.0
            result = TokenBucketResult(allowed=True, retry_after=0.0, remaining=tokens)
        else:
            retry = (1.0 - tokens) / rate_per_second
            result = TokenBucketResult(allowed=False, retry_after=retry, remaining=tokens)
        expires_at = now + _bucket_ttl_seconds(rate_per_second, burst)
        self._buckets[key] = _Bucket(tokens=tokens, updated=now, expires_at=expires_at)
        heapq.heappush(self._bucket_heap, (expires_at, key))
        if len(self._bucket_heap) > 2 * len(self._buckets) + 1024:
            self._bucket_heap = [(b.expires_at, k) for k, b in self._buckets.items()]
            heapq.heapify(self._bucket_heap)
        return result

    async def ping(self) -> bool:
        return not self._closed

    async def close(self) -> None:
        self._closed = True
        self._data.clear()
        self._expires.clear()
        self._heap.clear()
        self._buckets.clear()
        self._bucket_heap.clear()


# --------------------------------------------------------------------------- redis

# One round trip, atomic, and timed by the Redis server's clock so that every
# process sharing the bucket agrees on "now". Numbers are returned as strings
# because Redis truncates Lua numbers to integers in replies.
_TOKEN_BUCKET_LUA = """
local rate = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local ttl_ms = tonumber(ARGV[3])
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local state = redis.call('HMGET', KEYS[1], 'tokens', 'ts')
local tokens = tonumber(state[1])
local ts = tonumber(state[2])
if tokens == nil or ts == nil then
  tokens = burst
else
  local elapsed = now - ts
  if elapsed < 0 then elapsed = 0 end
  tokens = math.min(burst, tokens + elapsed * rate)
end
local allowed = 0
local retry_after = 0
if tokens >= 1 then
  tokens = tokens - 1
  allowed = 1
else
  retry_after = (1 - tokens) / rate
end
redis.call('HSET', KEYS[1], 'tokens', string.format('%.17g', tokens),
           'ts', string.format('%.6f', now))
redis.call('PEXPIRE', KEYS[1], ttl_ms)
return {allowed, string.format('%.17g', retry_after), string.format('%.17g', tokens)}
"""


_INCR_ONCE_LUA = """
if not redis.call('SET', KEYS[1], '1', 'NX', 'PX', tonumber(ARGV[1])) then
  return nil
end
local out = {}
for i = 2, #KEYS do
  local amount = tonumber(ARGV[2 * i - 2])
  local ttl = tonumber(ARGV[2 * i - 1])
  if ttl >= 0 then
    redis.call('SET', KEYS[i], '0', 'NX', 'PX', ttl)
  end
  out[i - 1] = redis.call('INCRBY', KEYS[i], amount)
end
return out
"""


def _ttl_ms(ttl_seconds: float) -> int:
    return max(1, math.ceil(ttl_seconds * 1000))


#: Explicit waits of the Redis client (docs/operations.md, "Client timeouts").
REDIS_CONNECT_TIMEOUT_SECONDS = 1.0
REDIS_SOCKET_TIMEOUT_SECONDS = 2.0
REDIS_POOL_TIMEOUT_SECONDS = 1.0


class RedisKeyValueStore:
    """Redis-backed store shared by every process of a deployment.

    Uses redis.asyncio over a blocking connection pool of `max_connections`.
    Counters with a TTL use a MULTI/EXEC of ``SET key 0 NX PX ttl`` +
    ``INCRBY`` so the TTL is only set on creation and the pair is atomic;
    token buckets are one Lua script (EVALSHA, falling back to EVAL when the
    script cache is empty).
    """

    def __init__(
        self,
        url: str,
        *,
        max_connections: int = 64,
        pool_timeout: float = REDIS_POOL_TIMEOUT_SECONDS,
        connect_timeout: float = REDIS_CONNECT_TIMEOUT_SECONDS,
        socket_timeout: float = REDIS_SOCKET_TIMEOUT_SECONDS,
    ) -> None:
        import redis.asyncio as aioredis
        from redis.asyncio.retry import Retry
        from redis.backoff import NoBackoff

        # Every wait is bounded and set here (docs/operations.md, "Client
        # timeouts"): a blocking pool makes a burst of calls wait for a free
        # connection up to pool_timeout instead of failing "Too many
        # connections"; a frozen server costs a call socket_timeout at most;
        # no retries (the client's default retries a dead server 3 times):
        # the caller decides, and the bid path bounds its reads itself.
        pool = aioredis.BlockingConnectionPool.from_url(
            url,
            max_connections=max_connections,
            timeout=pool_timeout,
            socket_connect_timeout=connect_timeout,
            socket_timeout=socket_timeout,
            retry=Retry(NoBackoff(), 0),
            decode_responses=False,
        )
        self._redis: Any = aioredis.Redis.from_pool(pool)  # owns and closes the pool
        self._take_token_script: Any = self._redis.register_script(_TOKEN_BUCKET_LUA)
        self._incr_once_script: Any = self._redis.register_script(_INCR_ONCE_LUA)

    async def get(self, key: str) -> bytes | None:
        value: bytes | None = await self._redis.get(key)
        return value

    async def get_many(self, keys: Sequence[str]) -> list[bytes | None]:
        if not keys:
            return []
        values: list[bytes | None] = await self._redis.mget(list(keys))
        return values

    async def set(self, key: str, value: bytes, ttl_seconds: float | None = None) -> None:
        _check_ttl(ttl_seconds)
        if ttl_seconds is None:
            await self._redis.set(key, value)
        else:
            await self._redis.set(key, value, px=_ttl_ms(ttl_seconds))

    async def delete(self, key: str) -> bool:
        return int(await self._redis.delete(key)) > 0

    async def incr(self, key: str, amount: int = 1, ttl_seconds: float | None = None) -> int:
        """Atomically add `amount`; the TTL is set when the key is created."""
        from redis.exceptions import ResponseError

        _check_ttl(ttl_seconds)
        try:
            if ttl_seconds is None:
                return int(await self._redis.incrby(key, amount))
            async with self._redis.pipeline(transaction=True) as pipe:
                pipe.set(key, b"0", nx=True, px=_ttl_ms(ttl_seconds))
                pipe.incrby(key, amount)
                _, value = await pipe.execute()
            return int(value)
        except ResponseError as exc:
            raise ValueError(f"value of key {key!r} is not an integer: {exc}") from exc

    async def incr_many(self, items: Sequence[tuple[str, int, float | None]]) -> list[int]:
        """`incr` of each (key, amount, ttl_seconds) in one MULTI/EXEC."""
        from redis.exceptions import ResponseError

        if not items:
            return []
        for _, _, ttl in items:
            _check_ttl(ttl)
        try:
            async with self._redis.pipeline(transaction=True) as pipe:
                for key, amount, ttl in items:
                    if ttl is not None:
                        pipe.set(key, b"0", nx=True, px=_ttl_ms(ttl))
                    pipe.incrby(key, amount)
                replies = await pipe.execute()
        except ResponseError as exc:
            raise ValueError(f"a counter is not an integer: {exc}") from exc
        values: list[int] = []
        i = 0
        for _, _, ttl in items:
            i += 1 if ttl is None else 2
            values.append(int(replies[i - 1]))
        return values

    async def incr_many_once(
        self, marker: str, marker_ttl_seconds: float, items: Sequence[tuple[str, int, float | None]]
    ) -> list[int] | None:
        """`incr_many(items)` unless `marker` exists, setting it: one Lua script."""
        from redis.exceptions import ResponseError

        _check_ttl(marker_ttl_seconds)
        args: list[int] = [_ttl_ms(marker_ttl_seconds)]
        for _, amount, ttl in items:
            _check_ttl(ttl)
            args += [int(amount), -1 if ttl is None else _ttl_ms(ttl)]
        try:
            replies = await self._incr_once_script(
                keys=[marker, *(key for key, _, _ in items)], args=args
            )
        except ResponseError as exc:
            raise ValueError(f"a counter is not an integer: {exc}") from exc
        return None if replies is None else [int(v) for v in replies]

    async def take_token(self, key: str, rate_per_second: float, burst: int) -> TokenBucketResult:
        """Atomically take one token from the bucket `key` (refilled at
        `rate_per_second`, holding at most `burst`)."""
        _check_bucket(rate_per_second, burst)
        ttl = _ttl_ms(_bucket_ttl_seconds(rate_per_second, burst))
        allowed, retry_after, remaining = await self._take_token_script(
            keys=[key], args=[repr(float(rate_per_second)), int(burst), ttl]
        )
        return TokenBucketResult(
            allowed=int(allowed) == 1,
            retry_after=float(retry_after),
            remaining=float(remaining),
        )

    async def ping(self) -> bool:
        try:
            return bool(await self._redis.ping())
        except Exception:
            return False

    async def close(self) -> None:
        await self._redis.aclose()


def open_key_value_store(url: str | None) -> KeyValueStore:
    """Pick the store from REDIS_URL: unset/empty or ``memory://`` gives the
    in-process store; ``redis://``, ``rediss://`` or ``unix://`` gives Redis."""
    if not url or url == "memory://":
        return MemoryKeyValueStore()
    scheme = url.split("://", 1)[0].lower() if "://" in url else ""
    if scheme in ("redis", "rediss", "unix"):
        return RedisKeyValueStore(url)
    raise ValueError(
        "REDIS_URL must be empty, memory://, redis://, rediss:// or unix://; "
        f"got a URL with scheme {scheme!r}"
    )
