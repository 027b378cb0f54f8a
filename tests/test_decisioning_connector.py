"""External decisioning (OfferFit-style connector): decisions asked of a
fake service that checks requests against the documented shape
(docs/decisioning.md, "External decisioning"), the local Thompson sampling
answering when it is slow or down, rewards forwarded once each (retried
until acknowledged, with an Idempotency-Key), arms synced as its catalog."""

from __future__ import annotations

import asyncio
import re
import socket
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from aiohttp import web

from tests.conftest import Env
from tests.test_audience_service import call
from tests.test_decisioning import SERVING_RATES

KEY = "sk-test-offerfit-123"


class FakeService:
    """The documented API: bearer auth, JSON bodies of the documented
    fields; rewards and catalogs deduplicated by Idempotency-Key."""

    def __init__(self) -> None:
        self.mode = "ok"  # ok, slow, down
        self.reward_failures = 0  # answer 503 to this many reward posts first
        self.recommendations: list[dict[str, Any]] = []
        self.reward_posts: Counter[str] = Counter()
        self.rewards: dict[str, dict[str, Any]] = {}
        self.catalogs: list[tuple[str, str, dict[str, Any]]] = []
        self.problems: list[str] = []
        app = web.Application()
        app.router.add_post("/v1/recommendations", self.recommend)
        app.router.add_post("/v1/rewards", self.reward)
        app.router.add_put("/v1/useCases/{case}/catalog", self.catalog)
        self.app = app

    def _check(
        self, request: web.Request, body: Any, fields: dict[str, type | tuple[type, ...]]
    ) -> None:
        if request.headers.get("Authorization") != f"Bearer {KEY}":
            self.problems.append(f"{request.path}: bad auth {request.headers.get('Authorization')}")
        for name, kind in fields.items():
            if not isinstance(body.get(name), kind):
                self.problems.append(f"{request.path}: {name} is {body.get(name)!r}")

    async def recommend(self, request: web.Request) -> web.Response:
        body = await request.json()
        self._check(request, body, {"useCase": str, "requestId": str, "customerId": str,
                                    "features": list, "context": dict, "arms": list})  # fmt: skip
        self.recommendations.append(body)
        if self.mode == "slow":
            await asyncio.sleep(2.0)
        if self.mode == "down":
            return web.json_response({"error": "down"}, status=500)
        return web.json_response({"armId": "b", "propensity": 0.7})

    async def reward(self, request: web.Request) -> web.Response:
        body = await request.json()
        self._check(request, body, {"useCase": str, "requestId": str, "armId": str,
                                    "reward": (int, float), "timestamp": (int, float)})  # fmt: skip
        key = request.headers.get("Idempotency-Key", "")
        if key != f"reward:{body.get('requestId')}":
            self.problems.append(f"reward key {key!r}")
        self.reward_posts[key] += 1
        if self.reward_failures > 0:
            self.reward_failures -= 1
            return web.json_response({"error": "busy"}, status=503)
        self.rewards.setdefault(key, body)  # counted once by its key
        return web.json_response({"ok": True})

    async def catalog(self, request: web.Request) -> web.Response:
        body = await request.json()
        self._check(request, body, {"arms": list})
        key = request.headers.get("Idempotency-Key", "")
        self.catalogs.append((request.match_info["case"], key, body))
        return web.json_response({"ok": True})


@pytest.fixture
async def fake() -> AsyncIterator[tuple[FakeService, str]]:
    service = FakeService()
    runner = web.AppRunner(service.app)
    await runner.setup()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    site = web.TCPSite(runner, "127.0.0.1", port)
    await site.start()
    try:
        yield service, f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


async def until(done: Callable[[], bool], within: float = 10.0) -> None:
    deadline = time.monotonic() + within
    while not done():
        assert time.monotonic() < deadline, "not within the time"
        await asyncio.sleep(0.05)


async def _policy(env: Env, base: str, use_case: str, **connector: Any) -> dict[str, Any]:
    status, made = await call(env, "POST", "tenants/acme/policies", {
        "displayName": "Offers via the service", "arms": [{"id": "a"}, {"id": "b"}, {"id": "c"}],
        "connector": {"baseUrl": base, "apiKey": KEY, "useCase": use_case,
                      "timeoutSeconds": 0.3, **connector}})  # fmt: skip
    assert status == 200, made
    return made


@SERVING_RATES
async def test_decisions_come_from_the_service_and_rewards_reach_it_once(
    env: Env, fake: tuple[FakeService, str]
) -> None:
    service, base = fake
    made = await _policy(env, base, "hero")
    name = made["name"]
    assert made["connector"] == {"baseUrl": base, "apiKeySet": True, "useCase": "hero",
                                 "timeoutSeconds": 0.3}  # fmt: skip
    # the arms go to the service as its catalog
    await until(lambda: len(service.catalogs) == 1)
    case, key, body = service.catalogs[0]
    assert case == "hero" and key.startswith("catalog:") and [a["id"] for a in body["arms"]] == [
        "a", "b", "c"]  # fmt: skip

    status, decided = await call(env, "POST", f"{name}:decide",
                                 {"userId": "u1", "context": {"page": "home"}})  # fmt: skip
    assert status == 200, decided
    assert decided["armId"] == "b" and decided["propensity"] == 0.7, decided
    assert "external decisioning service" in decided["explanation"]["summary"]
    asked = service.recommendations[-1]
    assert asked["customerId"] == "u1" and asked["arms"] == ["a", "b", "c"]
    assert asked["context"] == {"page": "home"} and re.fullmatch(
        r"[0-9a-f]{40}", asked["requestId"]
    )

    # with nothing to send, the forwarder sleeps (no look every half second)
    forwarder = env.running.platform.api("decisioning").forwarder
    await asyncio.sleep(0.6)
    looks = forwarder.looks
    await asyncio.sleep(1.5)
    assert forwarder.looks - looks <= 1, (looks, forwarder.looks)

    # the reward is learnt here and forwarded, once, even when sent twice
    # (and at once: the reward wakes the sleeping forwarder)
    woken = time.monotonic()
    status, got = await call(env, "POST", f"{name}:reward",
                             {"decisionId": decided["decisionId"], "reward": 1})  # fmt: skip
    assert status == 200 and got == {"armId": "b"}, got
    status, again = await call(env, "POST", f"{name}:reward",
                               {"decisionId": decided["decisionId"], "reward": 1})  # fmt: skip
    assert again.get("duplicate") is True
    key = f"reward:{asked['requestId']}"
    await until(lambda: key in service.rewards)
    assert time.monotonic() - woken < 1.0
    assert service.rewards[key]["armId"] == "b" and service.rewards[key]["reward"] == 1
    await env.running.platform.api("decisioning").forwarder.run_once()
    assert service.reward_posts[key] == 1

    # the service fails twice: the reward is tried again until it takes it
    service.reward_failures = 2
    status, decided = await call(env, "POST", f"{name}:decide", {"userId": "u2"})
    await call(env, "POST", f"{name}:reward", {"decisionId": decided["decisionId"], "reward": 0})
    key = f"reward:{service.recommendations[-1]['requestId']}"
    await until(lambda: key in service.rewards, within=15)
    assert service.reward_posts[key] == 3 and len(service.rewards) == 2
    stats = (await call(env, "GET", f"{name}/stats"))[1]
    assert {a["arm"]: int(a.get("impressions", 0)) for a in stats["arms"]}["b"] == 2

    # slow: the local policy answers within the timeout, then the service is
    # left alone for a while instead of costing every decision its timeout
    service.mode = "slow"
    started = time.monotonic()
    status, decided = await call(env, "POST", f"{name}:decide", {"userId": "u3"})
    assert status == 200 and time.monotonic() - started < 1.5, decided
    summary = decided["explanation"]["summary"]
    assert "did not answer within 0.3s" in summary and "local Thompson sampling" in summary
    asked_before = len(service.recommendations)
    status, decided = await call(env, "POST", f"{name}:decide", {"userId": "u4"})
    assert "not asked" in decided["explanation"]["summary"], decided
    assert len(service.recommendations) == asked_before
    assert not service.problems, service.problems


@SERVING_RATES
async def test_a_service_that_fails_falls_back_and_bad_connectors_are_refused(
    env: Env, fake: tuple[FakeService, str]
) -> None:
    service, base = fake
    service.mode = "down"
    made = await _policy(env, base, "down-case")
    status, decided = await call(env, "POST", f"{made['name']}:decide", {"userId": "u1"})
    assert status == 200 and decided["armId"] in ("a", "b", "c"), decided
    assert "HTTP 500" in decided["explanation"]["summary"], decided
    # nothing listens there at all: the same
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{s.getsockname()[1]}"
    gone = await _policy(env, closed, "nobody")
    status, decided = await call(env, "POST", f"{gone['name']}:decide", {"userId": "u1"})
    assert status == 200 and "could not be reached" in decided["explanation"]["summary"]

    # changing the connector without its key keeps the key; the catalog follows
    service.mode = "ok"
    renamed = {"connector": {"baseUrl": base, "useCase": "renamed"}}
    status, changed = await call(env, "PATCH", f"{made['name']}?updateMask=connector", renamed)
    assert status == 200 and changed["connector"]["apiKeySet"], changed
    await until(lambda: any(case == "renamed" for case, _, _ in service.catalogs))
    assert not service.problems, service.problems  # the key went along

    for connector, field in (
        ({"baseUrl": "ftp://x", "useCase": "u"}, "policy.connector.base_url"),
        ({"baseUrl": base, "useCase": ""}, "policy.connector.use_case"),
        (
            {"baseUrl": base, "useCase": "u", "timeoutSeconds": 100},
            "policy.connector.timeout_seconds",
        ),
    ):
        body = {"displayName": "x", "arms": [{"id": "a"}, {"id": "b"}], "connector": connector}
        status, got = await call(env, "POST", "tenants/acme/policies", body)
        assert status == 400, got
        assert field in [v["field"] for v in got["error"]["fieldViolations"]], got
