"""A local stand-in for the CDP platforms' APIs, for the connector tests:
each endpoint checks what the platform's documentation requires (path,
authentication, content type, body shape) and records what it took;
`fail_next` makes the next requests answer 503."""

from __future__ import annotations

import base64
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

SEGMENT_WRITE_KEY = "seg-write-key"
MPARTICLE_KEY, MPARTICLE_SECRET = "mp-key", "mp-secret"
SF_CLIENT_ID, SF_CLIENT_SECRET = "sf-client", "sf-secret"
TEALIUM_ACCOUNT, TEALIUM_PROFILE = "acme-account", "main"
ZEOTAP_KEY, ZEOTAP_ORG = "zeotap-key", 1577


def _basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


@dataclass
class Fakes:
    base_url: str = ""
    received: dict[str, list[Any]] = field(default_factory=dict)
    refused: list[str] = field(default_factory=list)
    fail_next: int = 0
    sf_rows: list[dict[str, Any]] = field(default_factory=list)  # what the Query API holds

    def took(self, platform: str) -> list[Any]:
        return self.received.setdefault(platform, [])


def app(fakes: Fakes) -> web.Application:
    def refuse(why: str, status: int = 400) -> web.Response:
        fakes.refused.append(why)
        return web.json_response({"error": why}, status=status)

    def failing() -> bool:
        if fakes.fail_next > 0:
            fakes.fail_next -= 1
            return True
        return False

    async def segment_batch(request: web.Request) -> web.Response:
        if failing():
            return web.Response(status=503)
        if request.headers.get("Authorization") != _basic(SEGMENT_WRITE_KEY, ""):
            return refuse("segment: Basic auth with the write key as user name", 401)
        body = await request.json()
        calls = body.get("batch")
        if not isinstance(calls, list) or not calls:
            return refuse("segment: batch must be a non-empty array")
        for call in calls:
            if call.get("type") != "identify" or not (
                call.get("userId") or call.get("anonymousId")
            ):
                return refuse("segment: identify calls need userId or anonymousId")
            if not isinstance(call.get("traits"), dict) or not call.get("messageId"):
                return refuse("segment: traits object and messageId")
        fakes.took("segment").extend(calls)
        return web.json_response({"success": True})

    async def mparticle_bulk(request: web.Request) -> web.Response:
        if failing():
            return web.Response(status=503)
        if request.headers.get("Authorization") != _basic(MPARTICLE_KEY, MPARTICLE_SECRET):
            return refuse("mparticle: Basic auth with key and secret", 401)
        batches = await request.json()
        if not isinstance(batches, list) or not 1 <= len(batches) <= 100:
            return refuse("mparticle: an array of 1-100 batches")
        for batch in batches:
            if batch.get("environment") not in ("production", "development"):
                return refuse("mparticle: environment")
            if not batch.get("user_identities"):
                return refuse("mparticle: user identities are required")
            if not isinstance(batch.get("user_attributes", {}), dict):
                return refuse("mparticle: user_attributes object")
        fakes.took("mparticle").extend(batches)
        return web.Response(status=202)

    async def sf_token(request: web.Request) -> web.Response:
        form = await request.post()
        if (form.get("grant_type"), form.get("client_id"), form.get("client_secret")) != (
            "client_credentials",
            SF_CLIENT_ID,
            SF_CLIENT_SECRET,
        ):
            return refuse("salesforce: client credentials", 401)
        return web.json_response(
            {"access_token": "core-token", "instance_url": f"{fakes.base_url}/sf-org"}
        )

    async def sf_exchange(request: web.Request) -> web.Response:
        form = await request.post()
        if (
            form.get("grant_type") != "urn:salesforce:grant-type:external:cdp"
            or form.get("subject_token") != "core-token"
            or form.get("subject_token_type") != "urn:ietf:params:oauth:token-type:access_token"
        ):
            return refuse("salesforce: the Data Cloud token exchange", 401)
        return web.json_response(
            {
                "access_token": "dc-token",
                "instance_url": f"{fakes.base_url}/dc",
                "token_type": "Bearer",
            }
        )

    def dc_auth(request: web.Request) -> bool:
        return request.headers.get("Authorization") == "Bearer dc-token"

    async def sf_ingest(request: web.Request) -> web.Response:
        if failing():
            return web.Response(status=503)
        if not dc_auth(request):
            return refuse("salesforce: Bearer Data Cloud token", 401)
        body = await request.json()
        if not isinstance(body.get("data"), list) or not body["data"]:
            return refuse("salesforce: {data: [...]}")
        fakes.took(
            f"salesforce:{request.match_info['source']}/{request.match_info['object']}"
        ).extend(body["data"])
        return web.json_response({"accepted": True}, status=202)

    async def sf_query(request: web.Request) -> web.Response:
        if not dc_auth(request):
            return refuse("salesforce: Bearer Data Cloud token", 401)
        sql = (await request.json()).get("sql", "")
        match = re.fullmatch(
            r"SELECT \* FROM (\w+)(?: WHERE (\w+) > '([^']*)')? ORDER BY (\w+) LIMIT (\d+)", sql
        )
        if not match:
            return refuse(f"salesforce: unexpected SQL {sql!r}")
        _, field_name, after, order, limit = match.groups()
        rows = sorted(fakes.sf_rows, key=lambda r: r[order])
        if after is not None:
            rows = [r for r in rows if r[field_name] > after]
        rows = rows[: int(limit)]
        columns = sorted({k for r in fakes.sf_rows for k in r})
        return web.json_response(
            {
                "data": [[r.get(c) for c in columns] for r in rows],
                "metadata": {
                    c: {"type": "VARCHAR", "placeInOrder": i} for i, c in enumerate(columns)
                },
                "done": True,
            }
        )

    async def tealium_bulk(request: web.Request) -> web.Response:
        if failing():
            return web.Response(status=503)
        body = await request.json()
        shared = body.get("shared") or {}
        if (shared.get("tealium_account"), shared.get("tealium_profile")) != (
            TEALIUM_ACCOUNT,
            TEALIUM_PROFILE,
        ):
            return refuse("tealium: shared account and profile")
        events = body.get("events")
        if not isinstance(events, list) or not events:
            return refuse("tealium: events array")
        for event in events:
            if not event.get("tealium_event") or not event.get("tealium_visitor_id"):
                return refuse("tealium: tealium_event and tealium_visitor_id")
        fakes.took("tealium").extend(events)
        return web.Response(status=204)

    def zeotap_checked(request: web.Request, body: Any, scope: str) -> str:
        """Why a Profile API request is refused ("" if it is not)."""
        if request.headers.get("apikey") != ZEOTAP_KEY:
            return "zeotap: apikey header"
        if scope not in request.headers.get("scopes", "").split(","):
            return f"zeotap: scopes header with {scope}"
        if request.content_type != "application/json" or not isinstance(body, dict):
            return "zeotap: a JSON object"
        if body.get("orgId") != ZEOTAP_ORG or not isinstance(body.get("region"), str):
            return "zeotap: orgId (a number) and region"
        ids = body.get("ids")
        if not isinstance(ids, dict) or len(ids) != 1:
            return "zeotap: ids with exactly one identifier type"
        return ""

    async def zeotap_upsert(request: web.Request) -> web.Response:
        if failing():
            return web.Response(status=503)
        body = await request.json()
        why = zeotap_checked(request, body, "profile.write")
        if why:
            return refuse(why, 401 if "apikey" in why else 400)
        ((id_type, value),) = body["ids"].items()
        upsert = body.get("upsert")
        if not isinstance(value, str) or not value:
            return refuse("zeotap: one identifier value")
        if not isinstance(upsert, dict) or not isinstance(upsert.get("profile"), dict):
            return refuse("zeotap: upsert.profile object")
        fakes.took("zeotap").append(body)
        return web.json_response(
            [{"ucid": f"ucid-{value}", "ids": {id_type: [{id_type: value}]},
              "profile": upsert["profile"], "region": body["region"]}]
        )  # fmt: skip

    async def zeotap_delete(request: web.Request) -> web.Response:
        body = await request.json()
        why = zeotap_checked(request, body, "profile.delete")
        if why:
            return refuse(why, 401 if "apikey" in why else 400)
        ((_, values),) = body["ids"].items()
        if not isinstance(values, list) or not 1 <= len(values) <= 400:
            return refuse("zeotap: 1-400 ids to delete")
        if not isinstance(body.get("sendEmailNotification", False), bool):
            return refuse("zeotap: sendEmailNotification boolean")
        fakes.took("zeotap:deleted").extend(values)
        known = {b["ids"][next(iter(b["ids"]))] for b in fakes.took("zeotap")}
        return web.json_response(
            {
                "ucids": [f"ucid-{v}" for v in values if v in known],
                "deletedProfiles": [f"ucid-{v}" for v in values if v in known],
                "profilesNotFound": [v for v in values if v not in known],
            }
        )

    application = web.Application()
    application.add_routes(
        [
            web.post("/segment/v1/batch", segment_batch),
            web.post("/mparticle/v2/bulkevents", mparticle_bulk),
            web.post("/sf-login/services/oauth2/token", sf_token),
            web.post("/sf-org/services/a360/token", sf_exchange),
            web.post("/dc/api/v1/ingest/sources/{source}/{object}", sf_ingest),
            web.post("/dc/api/v2/query", sf_query),
            web.post("/tealium/bulk-event", tealium_bulk),
            web.post("/zeotap/cdp/v1/users", zeotap_upsert),
            web.post("/zeotap/cdp/v1/users/_delete", zeotap_delete),
        ]
    )
    return application


async def serve_fakes() -> AsyncIterator[Fakes]:
    fakes = Fakes()
    runner = web.AppRunner(app(fakes))
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    fakes.base_url = f"http://127.0.0.1:{port}"
    try:
        yield fakes
    finally:
        await runner.cleanup()
