"""An outage in the log: one line when a backend goes away, a reminder while
it stays away, one when it is back; every failed call counted in metrics."""

from __future__ import annotations

import asyncio
import logging
import pathlib
import signal
from typing import Any

import aiohttp
import pytest
import redis.exceptions
from prometheus_client import CollectorRegistry

from services.backends.watch import BackendWatch, backend_of
from services.host.serve import start
from tests.conftest import make_settings, seed_tenants


def failures(registry: CollectorRegistry, backend: str) -> float:
    value = registry.get_sample_value(
        "campaign_express_backend_failures_total", {"backend": backend}
    )
    return value or 0.0


async def test_one_line_down_reminders_and_one_line_back(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, "campaign_express.backends")
    now = [0.0]
    up = asyncio.Event()

    async def ping() -> bool:
        return up.is_set()

    registry = CollectorRegistry()
    watch = BackendWatch(
        {"hot_store": ping},
        registry,
        remind_seconds=30,
        probe_interval=0.01,
        monotonic=lambda: now[0],
    )
    error = redis.exceptions.ConnectionError("Connection refused")
    for second in range(61):  # a minute of failing calls, 100 a second
        now[0] = float(second)
        for _ in range(100):
            watch.report(error)
    lines = [r.getMessage() for r in caplog.records]
    assert lines[0].startswith("hot_store is unavailable: ConnectionError")
    assert [line.split(" after")[0] for line in lines[1:]] == ["hot_store still unavailable"] * 2
    assert failures(registry, "hot_store") == 6100
    assert watch.is_down("hot_store")
    up.set()  # the probe sees it answer again
    for _ in range(100):
        if not watch.is_down("hot_store"):
            break
        await asyncio.sleep(0.01)
    assert caplog.records[-1].getMessage().startswith("hot_store is back after 60.0 s (6100 failed")
    await watch.close()


def test_errors_name_their_backend() -> None:
    import nats.errors
    import sqlalchemy.exc

    assert backend_of(redis.exceptions.TimeoutError()) == "hot_store"
    assert backend_of(sqlalchemy.exc.OperationalError("SELECT 1", None, Exception())) == "database"
    assert backend_of(nats.errors.NoServersError()) == "bus"
    assert backend_of(ConnectionRefusedError()) == "backend"


@pytest.mark.backends
async def test_calls_during_a_redis_outage_log_one_line(
    tmp_path: pathlib.Path, private_redis: tuple[str, Any], caplog: pytest.LogCaptureFixture
) -> None:
    """Redis killed under steady authenticated calls: their rate limit, which
    reads it, lets them through (it protects; it is not worth failing a call
    for), and the log has one line for the outage, not one per call."""
    url, redis_server = private_redis
    running = await start(make_settings(tmp_path, redis_url=url))
    caplog.set_level(logging.INFO)
    try:
        keys = await seed_tenants(running)
        headers = {"Authorization": f"Bearer {keys['acme']['ADMIN']}"}
        redis_server.proc.send_signal(signal.SIGKILL)
        redis_server.proc.wait()
        async with aiohttp.ClientSession() as http:
            for _ in range(40):
                async with http.get(
                    f"http://127.0.0.1:{running.http_port}/v1/tenants/acme", headers=headers
                ) as r:
                    assert r.status == 200
        registry = running.platform.metrics_registry
        # the first call finds it down; the others skip it while the watch knows
        assert 1 <= failures(registry, "hot_store") <= 3
        outage_lines = [
            r
            for r in caplog.records
            if r.name == "campaign_express.backends" or "unavailable" in r.getMessage()
        ]
        assert len(outage_lines) == 1, [r.getMessage() for r in outage_lines]
        assert outage_lines[0].getMessage().startswith("hot_store is unavailable")
    finally:
        await running.stop()
