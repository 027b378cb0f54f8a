"""Spans of the platform's own steps (the bid path's processing and
scoring), made only inside a recording span: a call that is not traced
(no sampled `traceparent`, the default) pays one check, ~0.3 us, not a
span's ~5-10 us."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping

from opentelemetry import trace
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

_tracer = trace.get_tracer("campaign_express")
_w3c = TraceContextTextMapPropagator()


@contextlib.contextmanager
def child_span(name: str) -> Iterator[None]:
    """A span named `name` under the current one when that one is recorded."""
    if not trace.get_current_span().is_recording():
        yield
        return
    with _tracer.start_as_current_span(name):
        yield


@contextlib.contextmanager
def incoming_span(name: str, headers: Mapping[str, str]) -> Iterator[dict[str, str]]:
    """A server span continuing the trace of a call that carries a W3C
    `traceparent` (none for a call without one); yields the headers that
    pass the trace on with this span as the parent (empty without a span)."""
    if "traceparent" not in headers:
        yield {}
        return
    parent = _w3c.extract(headers)
    with _tracer.start_as_current_span(name, context=parent, kind=trace.SpanKind.SERVER) as span:
        passed: dict[str, str] = {}
        if span.get_span_context().is_valid:
            _w3c.inject(passed)
        yield passed
