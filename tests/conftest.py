"""Shared fixtures. Test tiers:

- unit: domain objects, config, transcoding, no server;
- in-process gRPC: a real grpc.aio server on port 0 and a real channel;
- gateway: real HTTP requests against the running gateway;
- real backends: the same platform tests on PostgreSQL + Redis + NATS
  (started by tests/backend_servers.py), marked `backends`.
"""

from __future__ import annotations

import dataclasses
import pathlib
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import grpc
import pytest
from grpc import aio

from services.db import Database
from services.host.config import load_settings
from services.host.platform import load_modules, migration_locations
from services.host.serve import Running, start

pytest_plugins = ["tests.backend_servers"]

TENANTS = ("acme", "globex")
ROLES = ("ADMIN", "MANAGER", "OPERATOR", "ANALYST", "VIEWER")


@pytest.fixture(params=["embedded", pytest.param("real", marks=pytest.mark.backends)])
def backend_urls(request: pytest.FixtureRequest) -> dict[str, str]:
    """Embedded defaults, or PostgreSQL + Redis + NATS servers."""
    if request.param == "embedded":
        return {}
    return {
        "database_url": request.getfixturevalue("postgres_url_fresh"),
        "redis_url": request.getfixturevalue("redis_url_flushed"),
        "nats_url": request.getfixturevalue("nats_url"),
    }


async def migrate(db: Database) -> None:
    """Bring a database to the head of every registered domain's migrations."""
    await db.migrate(migration_locations(load_modules().values()))


def make_settings(data_dir: pathlib.Path, **overrides: Any) -> Any:
    flags: dict[str, Any] = {
        "data_dir": str(data_dir),
        "host": "127.0.0.1",
        "http_port": 0,
        "grpc_port": 0,
        "metrics_port": 0,
        "tracing": True,
        "shutdown_grace_seconds": 1,
    }
    flags.update(overrides)
    return load_settings(flags, environ={})


@dataclasses.dataclass
class Env:
    """A running platform with two seeded tenants and a key per role."""

    running: Running
    keys: dict[str, dict[str, str]]  # tenant -> role -> API key secret
    channel: aio.Channel
    http: aiohttp.ClientSession

    @property
    def grpc_address(self) -> str:
        return f"127.0.0.1:{self.running.platform.grpc_port}"

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.running.http_port}"

    def auth(self, tenant: str = "acme", role: str = "ADMIN") -> list[tuple[str, str]]:
        return [("authorization", f"Bearer {self.keys[tenant][role]}")]

    def headers(self, tenant: str = "acme", role: str = "ADMIN") -> dict[str, str]:
        return {"Authorization": f"Bearer {self.keys[tenant][role]}"}


async def seed_tenants(running: Running) -> dict[str, dict[str, str]]:
    """Two tenants with a key per role, written through the tenancy and auth
    domains' in-process interfaces (there in every process, also one that
    serves neither)."""
    kernel = running.platform.kernel
    tenancy, auth = kernel.interface("user_directory"), kernel.interface("call_authenticator")
    keys: dict[str, dict[str, str]] = {}
    for tenant in TENANTS:
        await tenancy.create_tenant(None, tenant, tenant.title(), {})
        keys[tenant] = {}
        for role in ROLES:
            _, secret = await auth.create_api_key(
                None, f"tenants/{tenant}", f"{role.lower()} key", [role]
            )
            keys[tenant][role] = secret
    return keys


@pytest.fixture
async def env(
    tmp_path: pathlib.Path, backend_urls: dict[str, str], request: pytest.FixtureRequest
) -> AsyncIterator[Env]:
    overrides = getattr(request, "param", {}) or {}
    settings = make_settings(tmp_path, **backend_urls, **overrides)
    running = await start(settings)
    try:
        keys = await seed_tenants(running)
        async with (
            aio.insecure_channel(f"127.0.0.1:{running.platform.grpc_port}") as channel,
            aiohttp.ClientSession() as http,
        ):
            yield Env(running, keys, channel, http)
    finally:
        await running.stop()


def error_details(exc: aio.AioRpcError) -> dict[str, Any]:
    """ErrorInfo and BadRequest of a failed call, decoded from its trailers."""
    from google.rpc import error_details_pb2, status_pb2

    found: dict[str, Any] = {"reason": None, "fields": {}, "retry_after": None, "status": None}
    for key, value in exc.trailing_metadata() or ():
        if key == "grpc-status-details-bin":
            status = status_pb2.Status.FromString(value)
            found["status"] = status
            for detail in status.details:
                info, bad = error_details_pb2.ErrorInfo(), error_details_pb2.BadRequest()
                if detail.Unpack(info):
                    found["reason"] = info.reason
                    found["metadata"] = dict(info.metadata)
                elif detail.Unpack(bad):
                    found["fields"] = {v.field: v.description for v in bad.field_violations}
        elif key == "retry-after":
            found["retry_after"] = value
    return found


__all__ = ["Env", "error_details", "grpc", "make_settings", "migrate", "seed_tenants"]
