"""Traces exported over OTLP: a `serve` process with `--otlp-endpoint` sends
the spans of a traced REST bid (one carrying a sampled W3C traceparent) to
a local OTLP/gRPC receiver, one trace from the gateway through ProcessBid
to the processor's decision and its scoring, each span the child of the
one before; without a traceparent, nothing is exported (tracing is off by
default for calls that do not ask for it)."""

from __future__ import annotations

import asyncio
import os
import pathlib
import time
from typing import Any

import aiohttp
import orjson
from grpc import aio
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc

from tests.backend_servers import free_port
from tests.test_demo_formats import REQUESTS, USA
from tests.test_process import announced_key, started


class Receiver(trace_service_pb2_grpc.TraceServiceServicer):
    """An OTLP/gRPC trace receiver that keeps every span it is sent."""

    def __init__(self) -> None:
        self.spans: list[Any] = []
        self.service_names: set[str] = set()

    async def Export(
        self, request: trace_service_pb2.ExportTraceServiceRequest, context: Any
    ) -> trace_service_pb2.ExportTraceServiceResponse:
        for resource in request.resource_spans:
            for attribute in resource.resource.attributes:
                if attribute.key == "service.name":
                    self.service_names.add(attribute.value.string_value)
            for scope in resource.scope_spans:
                self.spans.extend(scope.spans)
        return trace_service_pb2.ExportTraceServiceResponse()

    def of_trace(self, trace_id: str) -> dict[str, Any]:
        return {s.name: s for s in self.spans if s.trace_id.hex() == trace_id}


async def test_a_traced_bid_is_exported_from_the_gateway_to_its_scoring(
    tmp_path: pathlib.Path,
) -> None:
    receiver = Receiver()
    server = aio.server()
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(receiver, server)
    port = free_port()
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    try:
        async with started(tmp_path, "otlp", "--otlp-endpoint", f"http://127.0.0.1:{port}",
                           demo=True) as (proc, ports):  # fmt: skip
            key = announced_key(proc.stdout())
            base = f"http://127.0.0.1:{ports['http']}"
            trace_id, caller = os.urandom(16).hex(), os.urandom(8).hex()
            body = {"id": "traced", "device": USA, "user": {"id": "visitor-1"}, "tmax": 500,
                    **REQUESTS["banner"]}  # fmt: skip
            async with aiohttp.ClientSession() as http:
                for _ in range(100):  # the demo data is seeded once /ready says so
                    async with http.get(f"{base}/ready") as r:
                        if r.status == 200:
                            break
                    await asyncio.sleep(0.1)
                headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
                async with http.post(f"{base}/v1/bid", data=orjson.dumps(
                        {**body, "id": "untraced"}), headers=headers) as r:  # fmt: skip
                    assert r.status == 200, await r.text()
                headers["traceparent"] = f"00-{trace_id}-{caller}-01"
                async with http.post(f"{base}/v1/bid", data=orjson.dumps(body),
                                     headers=headers) as r:  # fmt: skip
                    assert r.status == 200, await r.text()
            wanted = {"POST /v1/bid", "bid.decide", "bid.score"}
            deadline = time.monotonic() + 15  # spans go out in batches, every second
            while not wanted <= set(receiver.of_trace(trace_id)) or len(receiver.of_trace(
                    trace_id)) < 4:  # fmt: skip
                assert time.monotonic() < deadline, [s.name for s in receiver.spans]
                await asyncio.sleep(0.2)
    finally:
        await server.stop(None)
    spans = receiver.of_trace(trace_id)
    [process_bid] = [s for n, s in spans.items() if n.endswith("BiddingService/ProcessBid")]
    gateway, decide, score = spans["POST /v1/bid"], spans["bid.decide"], spans["bid.score"]
    assert gateway.parent_span_id.hex() == caller  # the exchange's trace, continued
    assert process_bid.parent_span_id == gateway.span_id
    assert decide.parent_span_id == process_bid.span_id
    assert score.parent_span_id == decide.span_id
    assert gateway.start_time_unix_nano <= decide.start_time_unix_nano
    assert score.end_time_unix_nano <= gateway.end_time_unix_nano
    assert receiver.service_names == {"campaign-express"}
    # the untraced bid made no span: every span exported is of the traced one
    assert {s.trace_id.hex() for s in receiver.spans} == {trace_id}
