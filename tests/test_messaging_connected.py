"""Connected content: JSON fetched at render time from an allowed host, with
the recipient's variables in its URL, kept per URL for its cache time;
a required source that fails aborts the message, an optional one leaves
the template's defaults; hosts off the tenant's list are never fetched."""

from __future__ import annotations

from collections import Counter
from collections.abc import AsyncIterator, Iterator

import pytest
from aiohttp import web

from tests.conftest import Env
from tests.smtp_server import SmtpServer, serve_smtp
from tests.test_audience_segments import ingest
from tests.test_audience_service import call
from tests.test_messaging import provider, send, settled, template


@pytest.fixture
def smtp() -> Iterator[SmtpServer]:
    yield from serve_smtp()


@pytest.fixture
async def api() -> AsyncIterator[tuple[str, Counter[str]]]:
    hits: Counter[str] = Counter()

    async def weather(request: web.Request) -> web.Response:
        hits[request.path_qs] += 1
        return web.json_response({"zip": request.query["zip"], "temp": 21, "sky": "sunny"})

    async def broken(request: web.Request) -> web.Response:
        hits[request.path] += 1
        return web.Response(status=500)

    async def big(request: web.Request) -> web.Response:
        return web.Response(body=b"[" + b"1," * 200_000 + b"1]", content_type="application/json")

    application = web.Application()
    application.add_routes(
        [web.get("/weather", weather), web.get("/broken", broken), web.get("/big", big)]
    )
    runner = web.AppRunner(application)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        yield f"http://127.0.0.1:{port}", hits
    finally:
        await runner.cleanup()


async def test_connected_content(env: Env, smtp: SmtpServer, api: tuple[str, Counter[str]]) -> None:
    base, hits = api
    path = "tenants/acme/deliveryRules?updateMask=connectedContentHosts"
    hosts = {"connectedContentHosts": ["127.0.0.1", "*.example.com"]}
    status, body = await call(env, "PATCH", path, hosts)
    assert status == 200 and body["deliveryRules"]["connectedContentHosts"] == [
        "127.0.0.1", "*.example.com"]  # fmt: skip
    await provider(env, smtp.port)
    forecast = await template(
        env,
        {"displayName": "forecast", "channel": "MESSAGE_CHANNEL_EMAIL",
         "contents": {"en": {"subject": "{{ connected.weather.temp }}°C in {{ profile.zip }}",
                             "text": "Sky: {{ connected.weather.sky }}. "
                                     "{{ connected.offers.title | default: 'No offers today' }}"}},
         "connectedContent": [
             {"name": "weather", "url": base + "/weather?zip={{ profile.zip }}",
              "cacheSeconds": 60, "required": True},
             {"name": "offers", "url": base + "/broken"}]},
    )  # fmt: skip
    assert forecast["connectedContent"][0]["name"] == "weather"
    await ingest(env, {"type": "identify", "userId": "lu", "traits": {
        "email": "lu@example.com", "zip": "1100"}})  # fmt: skip
    for _ in range(2):
        sent = await send(env, {"template": forecast["name"], "recipient": {"userId": "lu"}})
        assert (await settled(env, sent["message"]["name"]))["state"] == "MESSAGE_STATE_SENT"
    mails = smtp.to("lu@example.com")
    assert [m["Subject"] for m in mails] == ["21°C in 1100"] * 2
    assert mails[0].get_content().strip() == "Sky: sunny. No offers today"
    assert hits["/weather?zip=1100"] == 1  # kept for 60 s
    assert hits["/broken"] == 2  # not kept: it failed

    # required and failing, too big, or on a host not allowed: aborted, with why
    for url, why in ((base + "/broken", "500"), (base + "/big", "bytes"),
                     ("https://api.other.test/x", "not an allowed host")):  # fmt: skip
        strict = await template(
            env,
            {"displayName": "s", "channel": "MESSAGE_CHANNEL_EMAIL",
             "contents": {"en": {"subject": "x", "text": "{{ connected.it }}"}},
             "connectedContent": [{"name": "it", "url": url, "required": True}]},
        )  # fmt: skip
        sent = await send(env, {"template": strict["name"], "recipient": {"userId": "lu"}})
        done = await settled(env, sent["message"]["name"])
        assert done["abortReason"] == "connected_content" and why in done["error"], done

    # a preview fetches too
    status, preview = await call(env, "POST", f"{forecast['name']}:render",
                                 {"data": {}, "profile": (await ingest_name(env))})  # fmt: skip
    assert status == 200 and preview["rendered"]["subject"] == "21°C in 1100"

    # bad definitions
    for source, field in (
        ({"name": "bad-name", "url": base}, "template.connected_content[0].name"),
        ({"name": "x", "url": "ftp://x"}, "template.connected_content[0].url"),
        ({"name": "x", "url": base, "cacheSeconds": 100000},
         "template.connected_content[0].cache_seconds"),
    ):  # fmt: skip
        status, answer = await call(
            env, "POST", "tenants/acme/templates",
            {"displayName": "b", "channel": "MESSAGE_CHANNEL_EMAIL",
             "contents": {"en": {"text": "x"}}, "connectedContent": [source]},
        )  # fmt: skip
        assert status == 400 and field in str(answer), answer
    status, answer = await call(env, "PATCH", "tenants/acme/deliveryRules",
                                {"connectedContentHosts": ["bad host!"]})  # fmt: skip
    assert status == 400


async def ingest_name(env: Env) -> str:
    from tests.test_audience_segments import profile_of

    return await profile_of(env, "lu")
