"""Gateway tier: real HTTP requests against the running REST gateway."""

from __future__ import annotations

import asyncio
import pathlib
import signal
import time
from typing import Any

import aiohttp
import pytest

from services.host.serve import start
from tests.conftest import Env, make_settings

PASSWORD = "correct horse battery"


async def test_probes_and_openapi(env: Env) -> None:
    async with env.http.get(f"{env.base_url}/health") as r:
        assert r.status == 200 and (await r.json())["status"] == "ok"
    async with env.http.get(f"{env.base_url}/live") as r:
        assert r.status == 200
    async with env.http.get(f"{env.base_url}/ready") as r:
        body = await r.json()
        assert r.status == 200
        assert body["checks"] == {
            "database": True,
            "hot_store": True,
            "bus": True,
            "analytics": True,
        }
    async with env.http.get(f"{env.base_url}/openapi.json") as r:
        doc = await r.json()
    assert doc["openapi"].startswith("3.")
    assert "/v1/tenants/{tenant}/users" in doc["paths"]


async def test_ready_reports_a_failed_backend(env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    async def down() -> bool:
        return False

    monkeypatch.setattr(env.running.platform.backends.hot_store, "ping", down)
    async with env.http.get(f"{env.base_url}/ready") as r:
        assert r.status == 503
        body = await r.json()
        assert body["checks"]["hot_store"] is False
        assert body["problems"] == {"hot_store": "down"}


@pytest.mark.backends
async def test_ready_answers_in_time_naming_a_frozen_backend(
    tmp_path: pathlib.Path, private_redis: tuple[str, Any]
) -> None:
    """A Redis frozen with SIGSTOP: /ready still answers within about its
    1 s deadline, naming the backend that did not answer; thawed, ready again."""
    url, redis_server = private_redis
    running = await start(make_settings(tmp_path, redis_url=url))
    try:
        async with aiohttp.ClientSession() as http:
            ready = f"http://127.0.0.1:{running.http_port}/ready"
            async with http.get(ready) as r:
                assert r.status == 200
            redis_server.proc.send_signal(signal.SIGSTOP)
            try:
                started = time.perf_counter()
                async with http.get(ready) as r:
                    elapsed = time.perf_counter() - started
                    body = await r.json()
                assert r.status == 503 and elapsed < 3, (elapsed, body)
                assert body["problems"] == {"hot_store": "no answer within 1 s"}
                assert body["checks"]["database"] is True
            finally:
                redis_server.proc.send_signal(signal.SIGCONT)
            for _ in range(50):
                async with http.get(ready) as r:
                    if r.status == 200:
                        break
                await asyncio.sleep(0.1)
            assert r.status == 200
    finally:
        await running.stop()


async def test_status_codes_401_403_400(env: Env) -> None:
    url = f"{env.base_url}/v1/tenants/acme/users"
    async with env.http.post(url, json={"email": "a@acme.example"}) as r:
        assert r.status == 401
        assert (await r.json())["error"]["status"] == "UNAUTHENTICATED"
    async with env.http.post(
        url, json={"email": "a@acme.example"}, headers=env.headers(role="VIEWER")
    ) as r:
        assert r.status == 403
        assert (await r.json())["error"]["reason"] == "MISSING_PERMISSION"
    async with env.http.post(
        url, json={"email": "nope", "password": "short"}, headers=env.headers()
    ) as r:
        assert r.status == 400
        error = (await r.json())["error"]
        assert error["status"] == "INVALID_ARGUMENT"
        fields = {v["field"] for v in error["fieldViolations"]}
        assert fields == {"user.email", "user.password", "user.roles"}
        assert r.headers["X-Request-Id"] == error["requestId"]


@pytest.mark.parametrize(
    ("body", "field"),
    [
        (b"{not json", "body"),
        (b'{"email": 5}', "email"),
        (b'{"roles": ["ROLE_WIZARD"]}', "roles"),
        (b'{"unknownField": 1}', "unknownField"),
        (b"[1, 2]", "body"),
    ],
)
async def test_malformed_bodies_are_400_naming_the_field(env: Env, body: bytes, field: str) -> None:
    async with env.http.post(
        f"{env.base_url}/v1/tenants/acme/users",
        data=body,
        headers={**env.headers(), "Content-Type": "application/json"},
    ) as r:
        assert r.status == 400
        error = (await r.json())["error"]
        assert error["fieldViolations"], error
        assert any(
            field in v["field"] or field in v["description"] for v in error["fieldViolations"]
        )


async def test_query_parameters_are_typed_and_checked(env: Env) -> None:
    url = f"{env.base_url}/v1/tenants/acme/users"
    for i in range(3):
        async with env.http.post(
            url,
            json={"email": f"q{i}@acme.example", "password": PASSWORD, "roles": ["ROLE_VIEWER"]},
            headers=env.headers(),
        ) as r:
            assert r.status == 200, await r.text()
    async with env.http.get(url, params={"pageSize": "2"}, headers=env.headers()) as r:
        page = await r.json()
    assert len(page["users"]) == 2 and page["nextPageToken"]
    async with env.http.get(
        url, params={"page_size": "2", "pageToken": page["nextPageToken"]}, headers=env.headers()
    ) as r:
        assert len((await r.json())["users"]) == 1
    async with env.http.get(url, params={"pageSize": "many"}, headers=env.headers()) as r:
        assert r.status == 400
        assert (await r.json())["error"]["fieldViolations"][0]["field"] == "pageSize"
    async with env.http.get(url, params={"colour": "red"}, headers=env.headers()) as r:
        assert r.status == 400
        assert "unknown query parameter" in (await r.text())


async def test_patch_with_update_mask_and_custom_verb(env: Env) -> None:
    async with env.http.post(
        f"{env.base_url}/v1/tenants/acme/users",
        json={"email": "p@acme.example", "password": PASSWORD, "roles": ["ROLE_VIEWER"]},
        headers=env.headers(),
    ) as r:
        name = (await r.json())["user"]["name"]
    async with env.http.patch(
        f"{env.base_url}/v1/{name}",
        params={"updateMask": "displayName,roles"},
        json={"displayName": "Pat", "roles": ["ROLE_ANALYST"], "email": "ignored@x.example"},
        headers=env.headers(),
    ) as r:
        user = (await r.json())["user"]
        assert r.status == 200, user
    assert user["displayName"] == "Pat" and user["roles"] == ["ROLE_ANALYST"]
    assert user["email"] == "p@acme.example"

    async with env.http.post(
        f"{env.base_url}/v1/tenants/acme/apiKeys",
        json={"displayName": "tmp", "roles": ["ROLE_VIEWER"]},
        headers=env.headers(),
    ) as r:
        key = await r.json()
    async with env.http.post(
        f"{env.base_url}/v1/{key['apiKey']['name']}:revoke", json={}, headers=env.headers()
    ) as r:
        assert r.status == 200
        assert "revokeTime" in (await r.json())["apiKey"]
    async with env.http.get(
        f"{env.base_url}/v1/auth/identity", headers={"Authorization": f"Bearer {key['secret']}"}
    ) as r:
        assert r.status == 401


async def test_unknown_route_404_and_wrong_verb_405(env: Env) -> None:
    async with env.http.get(f"{env.base_url}/v1/nothing/here", headers=env.headers()) as r:
        assert r.status == 404
        assert (await r.json())["error"]["code"] == 404
    async with env.http.put(f"{env.base_url}/v1/tenants/acme/users", headers=env.headers()) as r:
        assert r.status == 405
        assert set(r.headers["Allow"].split(", ")) == {"GET", "POST"}


async def test_delete_and_not_found(env: Env) -> None:
    async with env.http.post(
        f"{env.base_url}/v1/tenants/acme/users",
        json={"email": "d@acme.example", "password": PASSWORD, "roles": ["ROLE_VIEWER"]},
        headers=env.headers(),
    ) as r:
        name = (await r.json())["user"]["name"]
    async with env.http.delete(f"{env.base_url}/v1/{name}", headers=env.headers()) as r:
        assert r.status == 200 and await r.json() == {}
    async with env.http.get(f"{env.base_url}/v1/{name}", headers=env.headers()) as r:
        assert r.status == 404
        assert (await r.json())["error"]["status"] == "NOT_FOUND"


async def test_login_and_jwt_over_rest(env: Env) -> None:
    await env.running.platform.api("tenancy").create_user(
        None, "tenants/acme", "jo@acme.example", "Jo", ["ANALYST"], PASSWORD
    )
    async with env.http.post(
        f"{env.base_url}/v1/auth:login",
        json={"tenant": "tenants/acme", "email": "jo@acme.example", "password": PASSWORD},
    ) as r:
        tokens = (await r.json())["tokens"]
    async with env.http.get(
        f"{env.base_url}/v1/auth/identity",
        headers={"Authorization": f"Bearer {tokens['accessToken']}"},
    ) as r:
        me = await r.json()
    assert me["principal"]["roles"] == ["ROLE_ANALYST"]
    assert me["tenant"]["name"] == "tenants/acme"
    async with env.http.get(
        f"{env.base_url}/v1/auth/identity",
        headers={"Authorization": f"Bearer {tokens['accessToken'][:-4]}AAAA"},
    ) as r:
        assert r.status == 401
        assert (await r.json())["error"]["reason"] == "BAD_TOKEN"


@pytest.mark.parametrize(
    "env", [{"rate_limit_per_second": 0.5, "rate_limit_burst": 2}], indirect=True
)
async def test_rate_limit_is_429_with_retry_after(env: Env) -> None:
    url = f"{env.base_url}/v1/auth/identity"
    statuses = []
    for _ in range(3):
        async with env.http.get(url, headers=env.headers()) as r:
            statuses.append(r.status)
            retry_after = r.headers.get("Retry-After")
    assert statuses == [200, 200, 429]
    assert retry_after is not None and int(retry_after) >= 1


@pytest.mark.parametrize("env", [{"max_request_bytes": 2048}], indirect=True)
async def test_body_over_the_limit_is_refused(env: Env) -> None:
    async with env.http.post(
        f"{env.base_url}/v1/tenants/acme/users",
        json={"email": "big@acme.example", "displayName": "x" * 5000},
        headers=env.headers(),
    ) as r:
        # the JSON error of every bad body (as on /v1/bid), not aiohttp's bare 413
        assert r.status == 400
        error = (await r.json())["error"]
        assert (error["reason"], error["fieldViolations"][0]["field"]) == ("BODY_TOO_LARGE", "body")
