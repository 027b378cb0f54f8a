"""The tracing interceptor: calls without a traceparent skip OpenTelemetry
under the default sampler; calls with one (and every call under another
sampler) get the span OpenTelemetry makes, with the caller's trace id."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import grpc
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF, ParentBased

from services.host.channel import HandlerRegistry, LocalChannel
from services.host.tracing import TracingInterceptor

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
SAMPLED = f"00-{TRACE_ID}-00f067aa0ba902b7-01"
UNSAMPLED = f"00-{TRACE_ID}-00f067aa0ba902b7-00"


Seen = list[tuple[trace.SpanContext, bool]]  # the handler's current span, recording then


def _setup(every_call: bool) -> tuple[LocalChannel, Seen, InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider(sampler=ParentBased(root=ALWAYS_OFF))
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    seen: Seen = []

    def look() -> None:
        span = trace.get_current_span()
        seen.append((span.get_span_context(), span.is_recording()))

    async def unary(request: bytes, context: Any) -> bytes:
        look()
        return request.upper()

    async def bidi(requests: AsyncIterator[bytes], context: Any) -> AsyncIterator[bytes]:
        async for request in requests:
            look()
            yield request[::-1]

    registry = HandlerRegistry()
    registry.add_registered_method_handlers(
        "test.Echo",
        {
            "Unary": grpc.unary_unary_rpc_method_handler(unary),
            "Bidi": grpc.stream_stream_rpc_method_handler(bidi),
        },
    )
    interceptor = TracingInterceptor(every_call=every_call, tracer_provider=provider)
    return LocalChannel(registry, [interceptor]), seen, exporter


async def test_a_call_without_traceparent_gets_no_span() -> None:
    channel, seen, exporter = _setup(every_call=False)
    assert await channel.unary_unary("/test.Echo/Unary")(b"a") == b"A"
    bidi = channel.stream_stream("/test.Echo/Bidi")(iter([b"ab", b"cd"]))
    assert [r async for r in bidi] == [b"ba", b"dc"]
    assert [context.is_valid for context, _ in seen] == [False, False, False]
    assert exporter.get_finished_spans() == ()


async def test_a_call_with_traceparent_gets_the_callers_trace() -> None:
    channel, seen, exporter = _setup(every_call=False)
    unary = channel.unary_unary("/test.Echo/Unary")
    assert await unary(b"a", metadata=[("traceparent", UNSAMPLED)]) == b"A"
    assert await unary(b"b", metadata=[("traceparent", SAMPLED)]) == b"B"
    bidi = channel.stream_stream("/test.Echo/Bidi")
    replies = bidi(iter([b"xy"]), metadata=[("traceparent", SAMPLED)])
    assert [r async for r in replies] == [b"yx"]
    assert [f"{context.trace_id:032x}" for context, _ in seen] == [TRACE_ID] * 3
    assert [recording for _, recording in seen] == [False, True, True]
    exported = exporter.get_finished_spans()
    assert [s.name for s in exported] == ["/test.Echo/Unary", "/test.Echo/Bidi"]


async def test_another_sampler_traces_every_call() -> None:
    channel, seen, _ = _setup(every_call=True)
    assert await channel.unary_unary("/test.Echo/Unary")(b"a") == b"A"
    ((context, recording),) = seen
    assert context.is_valid and not recording
