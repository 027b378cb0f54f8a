"""External decisioning (FR-RL-003/004): a policy with a connector asks an
OfferFit-style service for each decision, forwards every reward to it once,
and keeps it told of its arms (its catalog). OfferFit's own API is not
public, so the shape is ours, documented in docs/decisioning.md:

    POST {base}/v1/recommendations   {"useCase", "requestId", "customerId",
                                      "features", "context", "arms"}
         -> {"armId", "propensity"}
    POST {base}/v1/rewards           {"useCase", "requestId", "armId", "reward",
                                      "timestamp"}   Idempotency-Key: requestId
    PUT  {base}/v1/useCases/{useCase}/catalog   {"arms": [{"id", "attributes"}]}
                                                  Idempotency-Key: catalog version

all with `Authorization: Bearer <api key>`. `requestId` is the decision's
key: the service correlates rewards with recommendations by it.

Rewards and catalog syncs are side effects outside: each is written to the
`decision_forwards` table in the transaction that records it, and a
forwarder sends the due rows (claimed with a lease, so one process sends
each), retrying with backoff until the service answers 2xx; the
Idempotency-Key lets the service count a retried one once. A 4xx other than
408/429 is final (kept with its answer for the operator)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import httpx
import orjson
import sqlalchemy as sa

from services.common.clock import now_us
from services.db import Database
from services.decisioning.tables import decision_forwards

log = logging.getLogger(__name__)

DEFAULT_TIMEOUT_SECONDS = 5.0
MIN_TIMEOUT_SECONDS, MAX_TIMEOUT_SECONDS = 0.05, 30.0
#: After a failed recommendation, the service is not asked for this long
#: (every decision would otherwise wait its timeout while it is down).
COOL_OFF_SECONDS = 10.0
FORWARD_TIMEOUT_SECONDS = 10.0
FORWARD_POLL_SECONDS = 0.5
#: With nothing due, the forwarder sleeps until the next row is due (a
#: retry), at most this long: rows written in this process wake it at once
#: (`wake`); those of other processes are sent by their own forwarders, and
#: this bound picks up what a process that died left.
FORWARD_IDLE_MAX_SECONDS = 30.0
FORWARD_LEASE_US = 30_000_000
FORWARD_BATCH = 100
FIRST_RETRY_US, MAX_RETRY_US = 1_000_000, 300_000_000


@dataclass(frozen=True, slots=True)
class Connector:
    base_url: str
    api_key: str
    use_case: str
    timeout: float = DEFAULT_TIMEOUT_SECONDS

    def to_json(self) -> dict[str, Any]:
        return {"base_url": self.base_url, "api_key": self.api_key, "use_case": self.use_case,
                "timeout": self.timeout}  # fmt: skip

    @classmethod
    def from_json(cls, data: Mapping[str, Any] | None) -> Connector | None:
        if not data:
            return None
        return cls(str(data["base_url"]), str(data.get("api_key", "")), str(data["use_case"]),
                   float(data.get("timeout", DEFAULT_TIMEOUT_SECONDS)))  # fmt: skip

    @property
    def root(self) -> str:
        return self.base_url.rstrip("/")

    def headers(self, idempotency_key: str = "") -> dict[str, str]:
        out = {"Content-Type": "application/json"}
        if self.api_key:
            out["Authorization"] = f"Bearer {self.api_key}"
        if idempotency_key:
            out["Idempotency-Key"] = idempotency_key
        return out


class ExternalUnavailable(Exception):
    """The service did not give a usable recommendation (why in the text)."""


@dataclass(frozen=True, slots=True)
class Recommendation:
    arm_id: str
    propensity: float


class External:
    """Recommendations from connected services, with a cool-off per
    service after a failure."""

    def __init__(self, client: httpx.AsyncClient | None = None) -> None:
        self._client = client or httpx.AsyncClient()
        self._failed: dict[str, tuple[float, str]] = {}  # base URL + use case -> (when, why)

    async def recommend(
        self,
        connector: Connector,
        request_id: str,
        user_id: str,
        features: Sequence[float],
        context: Mapping[str, Any],
        arms: Sequence[str],
    ) -> Recommendation:
        key = f"{connector.root}|{connector.use_case}"
        failed = self._failed.get(key)
        if failed is not None and time.monotonic() - failed[0] < COOL_OFF_SECONDS:
            raise ExternalUnavailable(
                f"{failed[1]} {time.monotonic() - failed[0]:.1f}s ago; not asked for "
                f"{COOL_OFF_SECONDS:g}s after a failure"
            )
        body = {
            "useCase": connector.use_case,
            "requestId": request_id,
            "customerId": user_id,
            "features": list(features),
            "context": dict(context),
            "arms": list(arms),
        }
        try:
            async with asyncio.timeout(connector.timeout):
                reply = await self._client.post(
                    f"{connector.root}/v1/recommendations",
                    content=orjson.dumps(body),
                    headers=connector.headers(),
                    timeout=connector.timeout,
                )
            if reply.status_code != 200:
                raise ExternalUnavailable(f"it answered HTTP {reply.status_code}")
            answer = orjson.loads(reply.content)
            arm = answer.get("armId") if isinstance(answer, dict) else None
            if not isinstance(arm, str) or arm not in arms:
                raise ExternalUnavailable(f"it recommended {arm!r}, not one of the arms")
            propensity = answer.get("propensity", 1.0)
            if not isinstance(propensity, int | float) or not 0 < propensity <= 1:
                propensity = 1.0  # unknown: logged as deterministic
        except ExternalUnavailable as error:
            self._failed[key] = (time.monotonic(), str(error))
            raise
        except (TimeoutError, httpx.TimeoutException):
            why = f"it did not answer within {connector.timeout:g}s"
            self._failed[key] = (time.monotonic(), why)
            raise ExternalUnavailable(why) from None
        except (httpx.HTTPError, orjson.JSONDecodeError, OSError) as error:
            why = f"it could not be reached ({type(error).__name__})"
            self._failed[key] = (time.monotonic(), why)
            raise ExternalUnavailable(why) from None
        self._failed.pop(key, None)
        return Recommendation(arm, float(propensity))

    async def close(self) -> None:
        await self._client.aclose()


# --------------------------------------------------------------------------- forwarding


def reward_forward(
    connector: Connector, decision_key: str, arm_id: str, reward: float, at_us: int
) -> dict[str, Any]:
    """The row that forwards a reward (insert it in the reward's transaction)."""
    body = {"useCase": connector.use_case, "requestId": decision_key, "armId": arm_id,
            "reward": reward, "timestamp": at_us / 1e6}  # fmt: skip
    return _row(f"reward:{decision_key}", "POST", "/v1/rewards", body, connector, at_us)


def catalog_forward(
    connector: Connector, policy_id: str, version: int, arms: Sequence[Mapping[str, Any]]
) -> dict[str, Any]:
    """The row that syncs a policy's arms as the service's catalog."""
    path = f"/v1/useCases/{connector.use_case}/catalog"
    return _row(f"catalog:{policy_id}:{version}", "PUT", path, {"arms": list(arms)}, connector,
                version)  # fmt: skip


def _row(key: str, method: str, path: str, body: Mapping[str, Any], connector: Connector,
         now: int) -> dict[str, Any]:  # fmt: skip
    return {"forward_key": key, "method": method, "url": connector.root + path,
            "body": dict(body), "api_key": connector.api_key, "attempts": 0, "next_try": now,
            "done_time": None, "outcome": ""}  # fmt: skip


class Forwarder:
    """Sends the due rows of `decision_forwards`, each until a 2xx."""

    def __init__(
        self,
        db: Database,
        client: httpx.AsyncClient | None = None,
        *,
        clock: Callable[[], int] = now_us,
        poll_seconds: float = FORWARD_POLL_SECONDS,
    ) -> None:
        self._db = db
        self._client = client or httpx.AsyncClient()
        self._clock = clock
        self._poll = poll_seconds
        self._task: asyncio.Task[None] | None = None
        self._woken = asyncio.Event()
        self.looks = 0  # how many times it looked for due rows (tests, metrics)

    def wake(self) -> None:
        """A row to send was written: look now."""
        self._woken.set()

    async def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._loop())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        await self._client.aclose()

    async def _loop(self) -> None:
        while True:
            self._woken.clear()
            self.looks += 1
            try:
                if await self.run_once():
                    continue
                wait = await self._until_next_due()
            except Exception:
                log.warning("decisioning: forwarding failed; again soon", exc_info=True)
                wait = self._poll
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._woken.wait(), wait)

    async def _until_next_due(self) -> float:
        """Seconds until the next unsent row is due (at least the poll
        interval), FORWARD_IDLE_MAX_SECONDS when none is waiting."""
        f = decision_forwards.c
        async with self._db.engine.connect() as conn:
            due = await conn.scalar(sa.select(sa.func.min(f.next_try)).where(f.done_time.is_(None)))
        if due is None:
            return FORWARD_IDLE_MAX_SECONDS
        return float(
            min(max((int(due) - self._clock()) / 1e6, self._poll), FORWARD_IDLE_MAX_SECONDS)
        )

    async def run_once(self) -> int:
        """Send the rows due now (claimed for FORWARD_LEASE_US); how many."""
        f = decision_forwards.c
        now = self._clock()
        async with self._db.engine.connect() as conn:
            due = (
                await conn.execute(
                    sa.select(decision_forwards)
                    .where(f.done_time.is_(None), f.next_try <= now)
                    .order_by(f.next_try)
                    .limit(FORWARD_BATCH)
                )
            ).all()
        sent = 0
        for row in due:
            async with self._db.engine.begin() as conn:
                claimed = await conn.execute(
                    decision_forwards.update()
                    .where(f.forward_key == row.forward_key, f.next_try == row.next_try,
                           f.done_time.is_(None))
                    .values(next_try=now + FORWARD_LEASE_US)
                )  # fmt: skip
            if not claimed.rowcount:
                continue  # another process has it
            await self._send(row)
            sent += 1
        return sent

    async def _send(self, row: Any) -> None:
        f = decision_forwards.c
        headers = {"Content-Type": "application/json", "Idempotency-Key": row.forward_key}
        if row.api_key:
            headers["Authorization"] = f"Bearer {row.api_key}"
        attempts = int(row.attempts) + 1
        done: int | None = None
        try:
            reply = await self._client.request(
                row.method, row.url, content=orjson.dumps(row.body), headers=headers,
                timeout=FORWARD_TIMEOUT_SECONDS,
            )  # fmt: skip
            outcome = f"HTTP {reply.status_code}"
            if 200 <= reply.status_code < 300:
                done = self._clock()
            elif 400 <= reply.status_code < 500 and reply.status_code not in (408, 429):
                done = self._clock()  # final: the service refuses it
                outcome += f" (final): {reply.text[:200]}"
        except (httpx.HTTPError, OSError) as error:
            outcome = f"{type(error).__name__}: {error}"[:300]
        delay = min(FIRST_RETRY_US * 2 ** min(attempts - 1, 20), MAX_RETRY_US)
        async with self._db.engine.begin() as conn:
            await conn.execute(
                decision_forwards.update()
                .where(f.forward_key == row.forward_key)
                .values(attempts=attempts, done_time=done, outcome=outcome[:500],
                        next_try=self._clock() + (0 if done else delay))
            )  # fmt: skip


def check_connector(connector: Connector, prefix: str) -> list[tuple[str, str]]:
    """(field, reason) for each problem."""
    bad = []
    if not connector.base_url.startswith(("http://", "https://")) or len(connector.base_url) > 500:
        bad.append((f"{prefix}.base_url", "an http or https URL, up to 500 characters"))
    if not 1 <= len(connector.use_case) <= 200 or "/" in connector.use_case:
        bad.append((f"{prefix}.use_case", "1-200 characters, no /"))
    if len(connector.api_key) > 2000:
        bad.append((f"{prefix}.api_key", "at most 2,000 characters"))
    t = connector.timeout
    if not math.isfinite(t) or not MIN_TIMEOUT_SECONDS <= t <= MAX_TIMEOUT_SECONDS:
        bad.append((f"{prefix}.timeout_seconds",
                    f"{MIN_TIMEOUT_SECONDS:g}-{MAX_TIMEOUT_SECONDS:g} s (0 means 5)"))  # fmt: skip
    return bad
