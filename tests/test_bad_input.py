"""Bad input at the edges answers 4xx / INVALID_ARGUMENT, never a 5xx, a stall
or a traceback: request bytes that do not parse on every unary RPC and on
StreamBids, compressed bodies, bytes that are not text, forged page tokens."""

from __future__ import annotations

import asyncio
import base64
import gzip
import logging
import re
import time
import zlib
from collections.abc import AsyncIterator
from typing import Any

import grpc
import orjson
import pytest
from aiohttp.http_exceptions import BadHttpMessage
from backports import zstd
from google.api import annotations_pb2
from google.protobuf import descriptor, message_factory
from grpc import aio

from campaignexpress.bidding.v1 import bidding_service_pb2 as bpb
from gateway.openapi import load_descriptor_set
from gateway.serverlog import ClientErrorLog
from services.bidding.openrtb_json import decode_bid_request
from services.common.call import Principal
from services.common.errors import InvalidArgument
from services.common.pagination import PageTokens, scope
from services.common.rbac import ALL_PERMISSIONS
from services.host.platform import load_modules
from tests.conftest import Env, error_details

# Bytes no message parses: a truncated varint tag, and field number 0.
NOT_A_MESSAGE = (b"\xff\xff\xff", b"\x00")


def unary_methods() -> list[str]:
    """Every unary RPC of the platform's contracts, as /package.Service/Method."""
    methods = []
    for file in load_descriptor_set().file:
        if not file.package.startswith("campaignexpress."):
            continue
        for service in file.service:
            for method in service.method:
                if not (method.client_streaming or method.server_streaming):
                    methods.append(f"/{file.package}.{service.name}/{method.name}")
    return sorted(methods)


UNARY = unary_methods()


def test_every_service_is_covered() -> None:
    services = {m.split("/")[1] for m in UNARY}
    assert len(services) >= 6 and len(UNARY) >= 40, UNARY


@pytest.mark.parametrize("authenticated", [False, True], ids=["anonymous", "admin"])
async def test_unparseable_unary_requests_are_invalid_argument(
    env: Env, authenticated: bool, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    metadata = env.auth() if authenticated else []
    for method in UNARY:
        call = env.channel.unary_unary(method)  # raw bytes in and out
        for garbage in NOT_A_MESSAGE:
            with pytest.raises(aio.AioRpcError) as failed:
                await call(garbage, metadata=metadata, timeout=10)
            assert failed.value.code() == grpc.StatusCode.INVALID_ARGUMENT, method
            details = error_details(failed.value)
            assert details["reason"] == "MALFORMED_MESSAGE", method
            assert "request" in details["fields"], method
    assert not [r for r in caplog.records if r.exc_info], "a traceback was logged"
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


async def test_unparseable_stream_frame_ends_the_stream_with_invalid_argument(
    env: Env,
) -> None:
    request = decode_bid_request(
        orjson.dumps(
            {
                "id": "ok",
                "imp": [{"id": "1", "banner": {"w": 300, "h": 250}}],
                "device": {"geo": {"country": "USA"}},
                "user": {"id": "u1"},
            }
        ),
        max_bytes=1 << 20,
    )
    good = bpb.StreamBidsRequest(request=request).SerializeToString()
    stream = env.channel.stream_stream("/campaignexpress.bidding.v1.BiddingService/StreamBids")

    async def frames() -> AsyncIterator[bytes]:
        yield good
        yield NOT_A_MESSAGE[0]
        yield good

    call = stream(frames(), metadata=env.auth(), timeout=10)
    answered = []
    with pytest.raises(aio.AioRpcError) as failed:
        async for raw in call:
            answered.append(bpb.StreamBidsResponse.FromString(raw).request_id)
    assert failed.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error_details(failed.value)["reason"] == "MALFORMED_MESSAGE"
    assert answered in ([], ["ok"])  # the first request may be answered before the end


async def test_unparseable_frame_ends_stream_predict_with_invalid_argument(env: Env) -> None:
    from campaignexpress.inference.v1 import inference_pb2, inference_service_pb2

    good = inference_service_pb2.StreamPredictRequest(
        request_id="ok",
        profile=inference_pb2.ScoringProfile(interests=[0.1]),
        offer_ids=["offer-1"],
    ).SerializeToString()
    stream = env.channel.stream_stream(
        "/campaignexpress.inference.v1.InferenceService/StreamPredict"
    )

    async def frames() -> AsyncIterator[bytes]:
        yield good
        yield NOT_A_MESSAGE[1]

    with pytest.raises(aio.AioRpcError) as failed:
        async for _ in stream(frames(), metadata=env.auth(), timeout=10):
            pass
    assert failed.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error_details(failed.value)["reason"] == "MALFORMED_MESSAGE"


# --------------------------------------------------------------------------- bodies

BOMB_OUTPUT = 64 * 1024 * 1024  # far past the default 4 MiB request limit


def compressors() -> dict[str, Any]:
    return {
        "gzip": gzip.compress,
        "deflate": zlib.compress,
        "zstd": zstd.compress,
    }


def json_body_routes(env: Env) -> list[tuple[str, bytes]]:
    """A transcoded route with a body and the OpenRTB route, each with a body it takes."""
    user = orjson.dumps(
        {"email": "zip@acme.example", "password": "long-enough-pw", "roles": ["ROLE_VIEWER"]}
    )
    bid = orjson.dumps({"id": "r1", "imp": [{"id": "1", "banner": {"w": 300, "h": 250}}]})
    return [(f"{env.base_url}/v1/tenants/acme/users", user), (f"{env.base_url}/v1/bid", bid)]


@pytest.mark.parametrize("encoding", ["gzip", "deflate", "zstd"])
async def test_compressed_bodies_are_read(env: Env, encoding: str) -> None:
    for url, body in json_body_routes(env):
        headers = {**env.headers(), "Content-Encoding": encoding}
        async with env.http.post(url, data=compressors()[encoding](body), headers=headers) as r:
            assert r.status in (200, 204), (url, r.status, await r.text())


@pytest.mark.parametrize("encoding", ["gzip", "deflate", "zstd"])
async def test_corrupt_truncated_and_bomb_bodies_are_400(env: Env, encoding: str) -> None:
    compress = compressors()[encoding]
    for url, body in json_body_routes(env):
        packed = compress(body)
        cases = {
            "corrupt": b"\x00\x01garbage" + packed[8:],
            "truncated": packed[: len(packed) // 2],
            "trailing": packed + b"more",
            "bomb": compress(b" " * BOMB_OUTPUT),
        }
        for case, data in cases.items():
            for headers in (
                {"Content-Encoding": encoding},
                {**env.headers(), "Content-Encoding": encoding},
            ):
                async with env.http.post(url, data=data, headers=headers) as r:
                    assert r.status == 400, (url, case, r.status)
                    error = (await r.json())["error"]
                    expected = "BODY_TOO_LARGE" if case == "bomb" else "MALFORMED_BODY"
                    assert error["reason"] == expected, (url, case, error)
                    assert error["fieldViolations"][0]["field"] == "body"


async def test_unsupported_encoding_is_400(env: Env) -> None:
    for url, body in json_body_routes(env):
        for encoding in ("br", "gzip, gzip", "compress", "\u00e9"):
            headers = {**env.headers(), "Content-Encoding": encoding}
            async with env.http.post(url, data=body, headers=headers) as r:
                assert r.status == 400, (url, encoding)
                error = (await r.json())["error"]
                assert error["reason"] == "UNSUPPORTED_CONTENT_ENCODING"


async def test_bomb_uploads_do_not_hold_up_other_requests(env: Env) -> None:
    """Unauthenticated decompression bombs on both body routes (and the
    metrics port, which reads no body) while another client polls /live:
    every poll is answered promptly."""
    bomb = gzip.compress(b"\x00" * BOMB_OUTPUT)
    metrics = f"http://127.0.0.1:{env.running.metrics_port}/metrics"
    urls = [url for url, _ in json_body_routes(env)] + [metrics]
    stop = asyncio.Event()

    async def upload(url: str) -> int:
        sent = 0
        while not stop.is_set():
            async with env.http.post(url, data=bomb, headers={"Content-Encoding": "gzip"}) as r:
                assert r.status == (405 if url == metrics else 400)
                sent += 1
        return sent

    uploads = [asyncio.create_task(upload(urls[i % 3])) for i in range(9)]
    latencies = []
    try:
        for _ in range(40):
            started = time.perf_counter()
            async with env.http.get(f"{env.base_url}/live") as r:
                assert r.status == 200
            latencies.append(time.perf_counter() - started)
            await asyncio.sleep(0.01)
    finally:
        stop.set()
        sent = sum(await asyncio.gather(*uploads))
    assert sent >= 8
    # One bomb inflates in slices of 256 KiB with the loop turning between
    # them; inflating a whole one at once took ~30 ms here, eight at a time
    # several hundred.
    assert max(latencies) < 0.5, sorted(latencies)[-5:]


# ------------------------------------------------------------------ bytes that are not text


async def raw_http(env: Env, request: bytes) -> tuple[int, bytes]:
    """Send `request` as is (clients refuse to send such bytes) -> status, body."""
    reader, writer = await asyncio.open_connection("127.0.0.1", env.running.http_port)
    try:
        writer.write(request)
        await writer.drain()
        data = await asyncio.wait_for(reader.read(), 10)
    finally:
        writer.close()
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), body


NOT_TEXT = (b"\xff\xfe", b"\xc3\x28", b"\xed\xa0\x80", b"caf\xc3\xa9", b"\x00\x01")


def not_text_requests(key: bytes) -> dict[str, bytes]:
    """Requests carrying bytes that are not valid (ASCII) text in a header, the
    query string or a notice token, on authenticated and anonymous routes."""
    auth = b"Authorization: Bearer " + key + b"\r\n"
    cases: dict[str, bytes] = {}
    for i, bad in enumerate(NOT_TEXT):
        escaped = "".join(f"%{b:02x}" for b in bad).encode()
        get = b"GET /v1/auth/identity HTTP/1.1\r\nHost: x\r\n"
        cases[f"authorization-{i}"] = get + b"Authorization: Bearer " + bad + b"\r\n"
        cases[f"scheme-{i}"] = get + b"Authorization: " + bad + b"\r\n"
        for header in (b"X-Request-Id", b"X-Tenant-Id", b"traceparent", b"tracestate"):
            cases[f"{header.decode()}-{i}"] = get + auth + header + b": " + bad + b"\r\n"
        users = b"GET /v1/tenants/acme/users?"
        cases[f"query-value-{i}"] = (
            users + b"pageToken=" + escaped + b" HTTP/1.1\r\nHost: x\r\n" + auth
        )
        cases[f"query-key-{i}"] = users + escaped + b"=1 HTTP/1.1\r\nHost: x\r\n" + auth
        cases[f"query-raw-{i}"] = users + b"filter=" + bad + b" HTTP/1.1\r\nHost: x\r\n" + auth
        cases[f"path-{i}"] = b"GET /v1/tenants/" + escaped + b" HTTP/1.1\r\nHost: x\r\n" + auth
        for notice in (b"win", b"billing", b"loss"):
            cases[f"{notice.decode()}-token-{i}"] = (
                b"GET /v1/" + notice + b"?t=" + escaped + b"&price=1 HTTP/1.1\r\nHost: x\r\n"
            )
            cases[f"{notice.decode()}-raw-{i}"] = (
                b"GET /v1/" + notice + b"?t=" + bad + b" HTTP/1.1\r\nHost: x\r\n"
            )
        bid = b"POST /v1/bid HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n"
        cases[f"bid-authorization-{i}"] = bid + b"Authorization: Bearer " + bad + b"\r\n"
        cases[f"bid-encoding-{i}"] = bid + auth + b"Content-Encoding: " + bad + b"\r\n"
    return {name: request + b"Connection: close\r\n\r\n" for name, request in cases.items()}


async def test_bytes_that_are_not_text_get_4xx(env: Env, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    for name, request in not_text_requests(env.keys["acme"]["ADMIN"].encode()).items():
        if request.startswith(b"POST"):
            request += b"{}"
        status, body = await raw_http(env, request)
        assert 400 <= status < 500, (name, status, body[:200])
    assert not [r for r in caplog.records if r.exc_info], "a traceback was logged"


async def test_refused_requests_are_logged_once_without_traceback_and_cannot_flood(
    env: Env, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    request = b"GET /live HTTP/1.1\r\nHost: x\r\nX-Bad: \x00\x01\r\nConnection: close\r\n\r\n"
    for _ in range(50):
        status, _ = await raw_http(env, request)
        assert status == 400
    lines = [r for r in caplog.records if r.name == "aiohttp.server"]
    assert 1 <= len(lines) <= 10
    assert all(r.exc_info is None and "\n" not in r.getMessage() for r in lines)
    assert all(r.levelno == logging.WARNING for r in lines)


def test_client_error_log_counts_what_it_suppressed(caplog: pytest.LogCaptureFixture) -> None:
    now = [0.0]
    log = ClientErrorLog(
        logging.getLogger("test.serverlog"), burst=2, window=10, clock=lambda: now[0]
    )
    caplog.set_level(logging.INFO, "test.serverlog")
    error = BadHttpMessage("Invalid header value char:\n\n  b'X: \\x00'")
    for _ in range(5):
        log.exception("Error handling request", exc_info=error)
    assert len(caplog.records) == 2
    now[0] = 11.0
    log.exception("Error handling request", exc_info=error)
    assert "(3 more client errors not logged)" in caplog.records[-1].getMessage()
    log.exception("server bug", exc_info=RuntimeError("boom"))  # not a client error
    assert caplog.records[-1].exc_info is not None and caplog.records[-1].levelno == logging.ERROR


# ------------------------------------------------------------------ page tokens


def list_methods() -> list[tuple[str, descriptor.MethodDescriptor, str]]:
    """Every RPC that pages (its request has `page_token`), with the resource
    pattern its HTTP rule binds (`tenants/*` or `tenants/*/campaigns/*`)."""
    found = []
    for module in load_modules().values():
        for service in module.services:
            for method in service.descriptor.methods:
                if "page_token" not in method.input_type.fields_by_name:
                    continue
                rule = method.GetOptions().Extensions[annotations_pb2.http]
                template = getattr(rule, rule.WhichOneof("pattern") or "get")
                match = re.search(r"\{[a-z_]+=([^}]*)\}", template)
                found.append((service.full_name, method, match.group(1) if match else ""))
    return found


LISTS = list_methods()
#: A resource of each collection that lists live under, made by the test.
RESOURCES: dict[str, str] = {}


def test_every_list_rpc_is_covered() -> None:
    names = {m.name for _, m, _ in LISTS}
    assert {"ListTenants", "ListUsers", "ListApiKeys", "ListAuditEvents", "ListCampaigns"} <= names
    assert len(LISTS) >= 10


def list_request(
    method: descriptor.MethodDescriptor, pattern: str, campaign: str, token: str
) -> Any:
    """`campaign`: the name of a resource of each collection lists live
    under (a campaign, a segment), by collection, or a campaign's name."""
    request = message_factory.GetMessageClass(method.input_type)(page_size=1, page_token=token)
    resource = "tenants/acme"
    if pattern.count("/") == 3:
        collection = pattern.split("/")[2]
        resource = RESOURCES.get(collection, campaign)
    for field in ("parent", "name"):
        if field in method.input_type.fields_by_name and pattern:
            setattr(request, field, resource)
    return request


async def call_list(
    env: Env, service: str, method: descriptor.MethodDescriptor, request: Any
) -> Any:
    call = env.channel.unary_unary(
        f"/{service}/{method.name}",
        request_serializer=lambda m: m.SerializeToString(),
        response_deserializer=message_factory.GetMessageClass(method.output_type).FromString,
    )
    return await call(request, metadata=env.auth(), timeout=10)


# Every list, first pages and forged tokens: more calls than the per-key
# management burst allows, and this test is about tokens, not the limit.
@pytest.mark.parametrize("env", [{"rate_limit_per_second": 0}], indirect=True)
async def test_forged_stale_or_foreign_page_tokens_are_invalid_argument_on_every_list(
    env: Env,
) -> None:
    campaign = await _a_campaign(env)
    RESOURCES["campaigns"] = campaign
    RESOURCES["segments"] = await _a_segment(env)
    RESOURCES["catalogs"] = await _a_catalog(env)
    RESOURCES["journeys"] = await _a_journey(env)
    RESOURCES["profiles"] = "tenants/acme/profiles/anyone"  # (lists need no such profile)
    RESOURCES["loyaltyMembers"] = await _a_member(env)
    keys = message_factory.GetMessageClass(
        next(m for _, m, _ in LISTS if m.name == "ListApiKeys").input_type
    )
    api_keys = next((s, m) for s, m, _ in LISTS if m.name == "ListApiKeys")
    first = await call_list(env, *api_keys, keys(parent="tenants/acme", page_size=1))
    real = first.next_page_token
    assert real  # five keys: there is a next page
    again = await call_list(
        env, *api_keys, keys(parent="tenants/acme", page_size=1, page_token=real)
    )
    assert again.api_keys[0].name != first.api_keys[0].name  # the real token works
    flipped = real[:10] + ("A" if real[10] != "A" else "B") + real[11:]
    unsigned = base64.urlsafe_b64encode(
        orjson.dumps({"t": 1, "id": "x", "after": "a", "before": 9, "id2": 1})
    ).decode()
    forged = ["abc", "!!!!", "====", "\u00e9t\u00e9", "a" * 5000, flipped, unsigned, real[:-4]]
    for service, method, pattern in LISTS:
        # a valid first page: the request itself is fine
        await call_list(env, service, method, list_request(method, pattern, campaign, ""))
        for token in forged + ([] if method.name == "ListApiKeys" else [real]):
            with pytest.raises(aio.AioRpcError) as failed:
                await call_list(
                    env, service, method, list_request(method, pattern, campaign, token)
                )
            assert failed.value.code() == grpc.StatusCode.INVALID_ARGUMENT, (method.name, token)
            assert "page_token" in error_details(failed.value)["fields"], (method.name, token)
    # the same list with other parameters is another request
    with pytest.raises(aio.AioRpcError) as failed:
        await call_list(
            env, *api_keys, keys(parent="tenants/acme", show_revoked=True, page_token=real)
        )
    assert "page_token" in error_details(failed.value)["fields"]


async def _a_segment(env: Env) -> str:
    segment = await env.running.platform.api("audience").segments.create(
        Principal("tenants/acme/apiKeys/t", "acme", frozenset({"ADMIN"}), ALL_PERMISSIONS),
        "tenants/acme",
        "any",
        "",
        {"lifecycle": {"stage": "LIFECYCLE_STAGE_NEW"}},
    )
    name: str = segment.name
    return name


def _admin() -> Principal:
    return Principal("tenants/acme/apiKeys/t", "acme", frozenset({"ADMIN"}), ALL_PERMISSIONS)


async def _a_catalog(env: Env) -> str:
    catalog = await env.running.platform.api("messaging").catalogs.create(
        _admin(), "tenants/acme", "products", "Products"
    )
    name: str = catalog.name
    return name


async def _a_member(env: Env) -> str:
    ledger = env.running.platform.api("loyalty")
    name = "tenants/acme/loyaltyMembers/member-1"
    for n in range(2):
        await ledger.earn(_admin(), name, 500, "", f"purchase-{n}")
    return name


async def _a_journey(env: Env) -> str:
    from services.journeys.model import Definition, Node

    journey = await env.running.platform.api("journeys").create(
        _admin(), "tenants/acme", "any", Definition(nodes=(Node("a", "exit"),))
    )
    name: str = journey.name
    return name


async def _a_campaign(env: Env) -> str:
    from campaignexpress.campaigns.v1 import campaign_service_pb2
    from tests.campaign_helpers import campaign_msg, stub

    reply = await stub(env.channel).CreateCampaign(
        campaign_service_pb2.CreateCampaignRequest(parent="tenants/acme", campaign=campaign_msg()),
        metadata=env.auth(),
    )
    return str(reply.campaign.name)


def test_page_tokens_expire_and_bind_their_request() -> None:
    now = [1_000_000.0]
    tokens = PageTokens("secret-one", clock=lambda: now[0])
    token = tokens.encode(scope("ListUsers", "tenants/acme"), {"t": 5, "id": "u1"})
    assert tokens.decode(scope("ListUsers", "tenants/acme"), token, "t", "id") == {
        "t": 5,
        "id": "u1",
    }
    for other_scope in (scope("ListUsers", "tenants/globex"), scope("ListApiKeys", "tenants/acme")):
        with pytest.raises(InvalidArgument):
            tokens.decode(other_scope, token)
    with pytest.raises(InvalidArgument):  # another deployment's secret
        PageTokens("secret-two", clock=lambda: now[0]).decode(
            scope("ListUsers", "tenants/acme"), token
        )
    with pytest.raises(InvalidArgument):  # a key the cursor lacks
        tokens.decode(scope("ListUsers", "tenants/acme"), token, "t", "id", "after")
    now[0] += 24 * 3600 + 1
    with pytest.raises(InvalidArgument) as stale:
        tokens.decode(scope("ListUsers", "tenants/acme"), token, "t", "id")
    assert "expired" in stale.value.message
