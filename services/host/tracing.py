"""The tracing interceptor: OpenTelemetry's gRPC server interceptor, run only
for calls whose span could be recorded.

Under the default sampler (parent-based, root spans off: see
`services.host.logs.tracer_provider`) a call that carries no `traceparent`
is never recorded: OpenTelemetry would still make it a non-recording span
with a fresh random trace id that nothing exports, at ~90 us of CPU per REST
bid (measured, bench/reports/bidding.md). Such calls skip it; an unexpected
error then quotes the request id, which the server's log line carries too.
A call with a `traceparent`, sampled or not, goes through OpenTelemetry, so
the caller's trace id reaches logs and errors; with another sampler chosen
(`OTEL_TRACES_SAMPLER`), every call does."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
from grpc import aio

from services.host.handlers import behaviour_of, rewrapped

TRACEPARENT = "traceparent"


def _has_traceparent(context: Any) -> bool:
    return any(key == TRACEPARENT for key, _ in context.invocation_metadata() or ())


def _unary(plain: Callable[..., Any], traced: Callable[..., Any]) -> Callable[..., Any]:
    async def behaviour(request: Any, context: Any) -> Any:
        chosen = traced if _has_traceparent(context) else plain
        return await chosen(request, context)

    return behaviour


def _streaming(plain: Callable[..., Any], traced: Callable[..., Any]) -> Callable[..., Any]:
    async def behaviour(request: Any, context: Any) -> AsyncIterator[Any]:
        chosen = traced if _has_traceparent(context) else plain
        async for response in chosen(request, context):
            yield response

    return behaviour


class TracingInterceptor(aio.ServerInterceptor):  # type: ignore[misc]
    def __init__(self, *, every_call: bool, tracer_provider: Any = None) -> None:
        from opentelemetry.instrumentation.grpc import aio_server_interceptor

        self._otel = aio_server_interceptor(tracer_provider=tracer_provider)
        self._every_call = every_call

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        plain = await continuation(details)
        if plain is None:
            return None

        async def resolved(_: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler:
            return plain

        traced = await self._otel.intercept_service(resolved, details)
        if self._every_call:
            return traced
        with_span = behaviour_of(traced)
        return rewrapped(
            plain,
            lambda behaviour: _unary(behaviour, with_span),
            lambda behaviour: _streaming(behaviour, with_span),
        )
