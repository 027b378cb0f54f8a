"""Services call each other through generated stubs: in one process over the
in-process channel (no sockets), across servers over gRPC. The caller (the
auth servicer) is the same code in both cases."""

from __future__ import annotations

import asyncio
import pathlib
import time

import aiohttp
import grpc
import pytest
from grpc import aio

from campaignexpress.auth.v1 import auth_service_pb2 as auth_pb
from campaignexpress.auth.v1 import auth_service_pb2_grpc as auth_grpc
from services.host.channel import HandlerRegistry, LocalChannel
from services.host.serve import start
from tests.conftest import Env, make_settings, seed_tenants


def handled(env_platform: object, method: str) -> float:
    registry = env_platform.metrics_registry  # type: ignore[attr-defined]
    total = 0.0
    for metric in registry.collect():
        for sample in metric.samples:
            if sample.name.endswith("_handled_total") and sample.labels["grpc_method"] == method:
                total += sample.value
    return total


GET_TENANT = "/campaignexpress.tenancy.v1.TenancyService/GetTenant"


async def test_in_process_call_uses_the_local_channel(env: Env) -> None:
    platform = env.running.platform
    assert platform.channel_for("tenancy") is platform.local_channel
    before = handled(platform, GET_TENANT)
    reply = await auth_grpc.AuthServiceStub(env.channel).GetCurrentIdentity(
        auth_pb.GetCurrentIdentityRequest(), metadata=env.auth(role="VIEWER")
    )
    assert reply.tenant.display_name == "Acme"
    # The nested call went through the interceptors (metrics) in this process.
    assert handled(platform, GET_TENANT) == before + 1


async def test_cross_server_call_goes_over_grpc(tmp_path: pathlib.Path) -> None:
    """Server A runs tenancy; server B runs auth and audit and reaches
    tenancy at A's address. Both share one database and secret."""
    shared = {
        "database_url": f"sqlite:///{tmp_path / 'shared.db'}",
        "clickhouse_url": f"chdb://{tmp_path / 'analytics'}",
        "jwt_secret": "s" * 40,
    }
    a = await start(make_settings(tmp_path / "a", services="tenancy", gateway=False, **shared))
    b = await start(
        make_settings(
            tmp_path / "b",
            services="auth,audit",
            remote_services=f"tenancy=127.0.0.1:{a.platform.grpc_port}",
            **shared,
        )
    )
    try:
        keys = await seed_tenants(b)
        assert b.platform.channel_for("tenancy") is not b.platform.local_channel
        async with aio.insecure_channel(f"127.0.0.1:{b.platform.grpc_port}") as channel:
            stub = auth_grpc.AuthServiceStub(channel)
            metadata = [("authorization", f"Bearer {keys['globex']['ADMIN']}")]
            reply = await stub.GetCurrentIdentity(
                auth_pb.GetCurrentIdentityRequest(), metadata=metadata
            )
            assert reply.tenant.name == "tenants/globex"
            assert handled(a.platform, GET_TENANT) == 1  # served by A
            assert handled(b.platform, GET_TENANT) == 0
            # B's gateway dispatches tenancy routes to A over its gRPC channel.
            async with aiohttp.ClientSession() as http:
                async with http.get(
                    f"http://127.0.0.1:{b.http_port}/v1/tenants/globex",
                    headers={"Authorization": f"Bearer {keys['globex']['VIEWER']}"},
                ) as r:
                    assert r.status == 200
                    assert (await r.json())["tenant"]["displayName"] == "Globex"
            assert handled(a.platform, GET_TENANT) == 2
            # B does not serve tenancy itself.
            with pytest.raises(aio.AioRpcError) as caught:
                await channel.unary_unary(GET_TENANT)(b"", metadata=metadata)
            assert caught.value.code() == grpc.StatusCode.UNIMPLEMENTED
            # A down: B degrades to UNAVAILABLE, it does not crash.
            await a.stop()
            with pytest.raises(aio.AioRpcError) as caught:
                await stub.GetCurrentIdentity(
                    auth_pb.GetCurrentIdentityRequest(), metadata=metadata, timeout=5
                )
            assert caught.value.code() in (
                grpc.StatusCode.UNAVAILABLE,
                grpc.StatusCode.DEADLINE_EXCEEDED,
            )
            assert b.platform.backends is not None
    finally:
        await b.stop()
        if a.platform.server is not None:
            await a.stop()


# -- the in-process channel on its own --------------------------------------


def _echo_registry() -> HandlerRegistry:
    async def unary(request: bytes, context: object) -> bytes:
        return request.upper()

    async def server_stream(request: bytes, context: object):  # type: ignore[no-untyped-def]
        for part in request.split(b","):
            yield part

    async def client_stream(requests, context):  # type: ignore[no-untyped-def]
        return b"+".join([r async for r in requests])

    async def bidi(requests, context):  # type: ignore[no-untyped-def]
        async for r in requests:
            yield r[::-1]

    async def fails(request: bytes, context) -> bytes:  # type: ignore[no-untyped-def]
        await context.abort(grpc.StatusCode.NOT_FOUND, "no such thing")
        return b""

    async def slow(request: bytes, context) -> bytes:  # type: ignore[no-untyped-def]
        await asyncio.sleep(float(request))
        return b"late"

    handlers = {
        "Slow": grpc.unary_unary_rpc_method_handler(slow),
        "Unary": grpc.unary_unary_rpc_method_handler(unary),
        "ServerStream": grpc.unary_stream_rpc_method_handler(server_stream),
        "ClientStream": grpc.stream_unary_rpc_method_handler(client_stream),
        "Bidi": grpc.stream_stream_rpc_method_handler(bidi),
        "Fails": grpc.unary_unary_rpc_method_handler(fails),
    }
    registry = HandlerRegistry()
    registry.add_registered_method_handlers("test.Echo", handlers)
    return registry


async def test_local_channel_supports_all_four_call_kinds() -> None:
    channel = LocalChannel(_echo_registry())
    assert await channel.unary_unary("/test.Echo/Unary")(b"abc") == b"ABC"
    assert [p async for p in channel.unary_stream("/test.Echo/ServerStream")(b"a,b,c")] == [
        b"a",
        b"b",
        b"c",
    ]

    async def requests():  # type: ignore[no-untyped-def]
        for item in (b"x", b"y"):
            yield item

    assert await channel.stream_unary("/test.Echo/ClientStream")(requests()) == b"x+y"
    assert [r async for r in channel.stream_stream("/test.Echo/Bidi")(iter([b"ab", b"cd"]))] == [
        b"ba",
        b"dc",
    ]


async def test_local_channel_reports_status_like_a_network_channel() -> None:
    channel = LocalChannel(_echo_registry())
    with pytest.raises(aio.AioRpcError) as caught:
        await channel.unary_unary("/test.Echo/Fails")(b"")
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    assert caught.value.details() == "no such thing"
    with pytest.raises(aio.AioRpcError) as caught:
        await channel.unary_unary("/test.Echo/Missing")(b"")
    assert caught.value.code() == grpc.StatusCode.UNIMPLEMENTED


async def test_local_channel_enforces_the_call_deadline() -> None:
    """A unary call past its timeout ends DEADLINE_EXCEEDED, as over the
    network; within it, it answers."""
    channel = LocalChannel(_echo_registry())
    slow = channel.unary_unary("/test.Echo/Slow")
    started = time.monotonic()
    with pytest.raises(aio.AioRpcError) as caught:
        await slow(b"5", timeout=0.05)
    assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert time.monotonic() - started < 1.0
    assert await slow(b"0.01", timeout=2) == b"late"
    assert await slow(b"0") == b"late"  # no timeout


async def test_local_channel_wraps_a_method_once_and_intercepts_every_call() -> None:
    """The interceptors wrap a method's handler on its first call only; what
    the wrapper does runs on every call, with that call's metadata."""
    wrapped: list[str] = []
    seen: list[str] = []

    class Recording(aio.ServerInterceptor):  # type: ignore[misc]
        async def intercept_service(self, continuation, details):  # type: ignore[no-untyped-def]
            wrapped.append(details.method)
            handler = await continuation(details)
            if handler is None:
                return None
            inner = handler.unary_unary

            async def behaviour(request, context):  # type: ignore[no-untyped-def]
                seen.append(dict(context.invocation_metadata())["caller"])
                return await inner(request, context)

            return grpc.unary_unary_rpc_method_handler(behaviour)

    channel = LocalChannel(_echo_registry(), [Recording()])
    unary = channel.unary_unary("/test.Echo/Unary")
    assert await unary(b"a", metadata=[("caller", "first")]) == b"A"
    assert await unary(b"b", metadata=[("caller", "second")]) == b"B"
    with pytest.raises(aio.AioRpcError):
        await channel.unary_unary("/test.Echo/Missing")(b"", metadata=[("caller", "third")])
    assert wrapped == ["/test.Echo/Unary", "/test.Echo/Missing"]
    assert seen == ["first", "second"]
