"""The HTTP gateway: REST/JSON routes transcoded to gRPC, the OpenAPI
document, and the /health /ready /live probes. It dispatches through
whatever channel the host hands it per service: the in-process channel in
`serve`, a gRPC channel when the service runs elsewhere."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Awaitable, Callable, Mapping
from typing import Any
from urllib.parse import parse_qsl

import grpc
import orjson
from aiohttp import web
from google.protobuf import descriptor, descriptor_pb2
from grpc import aio

from campaignexpress.audience.v1 import audience_service_pb2
from campaignexpress.bidding.v1 import bidding_service_pb2
from campaignexpress.messaging.v1 import message_pb2, messaging_service_pb2
from gateway import preference_page
from gateway.errors import error_body
from gateway.openapi import build_openapi
from gateway.serverlog import ClientErrorLog
from gateway.tracking import AUDIENCE_SERVICE, TRACKING_PATHS, bearer, ingest_request, size_limit
from gateway.transcoder import Route, Router, build_request, render, routes_for
from services.bidding.openrtb_json import OPENRTB_VERSION, decode_bid_request, encode_bid_response
from services.common.bodies import body_too_large, content_encoding, decompress
from services.common.errors import ERROR_DOMAIN, DomainError, InvalidArgument, Unauthenticated
from services.common.spans import incoming_span

log = logging.getLogger("campaign_express.gateway")

ChannelFor = Callable[[str], Any]  # full service name -> channel
#: Each backend's state, "ok" when it is ready (Backends.check).
Readiness = Callable[[], Awaitable[Mapping[str, str]]]

FORWARDED_HEADERS = ("authorization", "x-tenant-id", "traceparent", "tracestate")
CALL_TIMEOUT_SECONDS = 30.0
#: Providers post receipts as forms (Twilio's status callbacks).
RECEIPT_METHOD = "/campaignexpress.messaging.v1.MessagingService/ReceiveProviderReceipt"
FORM = "application/x-www-form-urlencoded"
MESSAGING_SERVICE = "campaignexpress.messaging.v1.MessagingService"
SENDGRID_SIGNATURE = "X-Twilio-Email-Event-Webhook-Signature"
SENDGRID_TIMESTAMP = "X-Twilio-Email-Event-Webhook-Timestamp"
#: Meta's signature of a WhatsApp webhook ("sha256=<hex HMAC of the body>").
META_SIGNATURE = "X-Hub-Signature-256"


def receipt_payload(request: web.Request, raw: bytes) -> dict[str, Any]:
    """A provider's receipt as ReceiveProviderReceipt takes it: Twilio's form
    fields and X-Twilio-Signature, or SendGrid's event batch (the body as
    signed) with its signature and timestamp headers, or WhatsApp's
    webhook (the body as signed) with its signature header."""
    text = raw.decode("utf-8", "replace")
    if request.content_type == FORM:
        fields = dict(parse_qsl(text, keep_blank_values=True))
        return {"fields": fields, "signature": request.headers.get("X-Twilio-Signature", "")}
    signature = request.headers.get(SENDGRID_SIGNATURE) or request.headers.get(META_SIGNATURE, "")
    return {
        "fields": {"body": text, "timestamp": request.headers.get(SENDGRID_TIMESTAMP, "")},
        "signature": signature,
    }


#: A transparent 1x1 GIF (the open pixel's answer).
PIXEL = bytes.fromhex(
    "47494638396101000100800000000000ffffff21f90401000000002c00000000010001000002024401003b"
)
#: A streamed file (an export) may take this long in all.
STREAM_TIMEOUT_SECONDS = 1800.0
BIDDING_SERVICE = "campaignexpress.bidding.v1.BiddingService"


def _json(data: Any, status: int = 200, headers: Mapping[str, str] | None = None) -> web.Response:
    return web.Response(
        body=orjson.dumps(data),
        status=status,
        content_type="application/json",
        headers=headers,
    )


MAX_REQUEST_ID_LENGTH = 128


def _is_header_text(value: str) -> bool:
    """gRPC metadata values (and what we echo in headers) must be printable
    ASCII; aiohttp hands other bytes over as surrogate escapes."""
    return value.isascii() and value.isprintable()


def _request_id(request: web.Request) -> str:
    """The caller's x-request-id (its first 128 characters) when it is text,
    else a fresh one (a bad one is then refused by `_call_metadata`)."""
    value = request.headers.get("x-request-id", "")
    if value and _is_header_text(value):
        return value[:MAX_REQUEST_ID_LENGTH]
    return uuid.uuid4().hex


def _call_metadata(request: web.Request, request_id: str) -> list[tuple[str, str]]:
    """The headers passed on to the gRPC call. A header that is not printable
    ASCII text is the client's error: 401 for credentials, 400 otherwise."""
    given_id = request.headers.get("x-request-id", "")
    if given_id and not _is_header_text(given_id):
        raise InvalidArgument.field("x-request-id", "must be printable ASCII")
    metadata = [("x-request-id", request_id)]
    for name in FORWARDED_HEADERS:
        value = request.headers.get(name)
        if not value:
            continue
        if not _is_header_text(value):
            if name == "authorization":
                raise Unauthenticated(
                    "the authorization header must be `Bearer <API key or token>` in ASCII",
                    reason="BAD_AUTHORIZATION_SCHEME",
                )
            raise InvalidArgument.field(name, "must be printable ASCII")
        metadata.append((name, value))
    return metadata


class Gateway:
    def __init__(
        self,
        services: list[descriptor.ServiceDescriptor],
        channel_for: ChannelFor,
        readiness: Readiness,
        descriptor_set: descriptor_pb2.FileDescriptorSet | None = None,
    ) -> None:
        self.router = Router(r for s in services for r in routes_for(s))
        self._channel_for = channel_for
        self._readiness = readiness
        self._callables: dict[str, Any] = {}
        self._services = [s.full_name for s in services]
        self._descriptor_set = descriptor_set
        self._openapi: bytes | None = None
        self._process_bid: Any = None
        self._ingest: Any = None
        self._track_engagement: Any = None
        self._max_request_bytes = 4 * 1024 * 1024

    def _callable(self, route: Route) -> Any:
        found = self._callables.get(route.grpc_method)
        if found is None:
            found = self._channel_for(route.service).unary_unary(
                route.grpc_method,
                request_serializer=route.request_class.SerializeToString,
                response_deserializer=route.response_class.FromString,
            )
            self._callables[route.grpc_method] = found
        return found

    async def handle(self, request: web.Request) -> web.StreamResponse:
        request_id = _request_id(request)
        headers = {"X-Request-Id": request_id}
        try:
            metadata = _call_metadata(request, request_id)
        except DomainError as exc:
            return self._domain_error(exc, request_id)
        matched = self.router.match(request.method, request.path)
        if matched is None:
            allowed = self.router.allowed_verbs(request.path)
            code = grpc.StatusCode.UNIMPLEMENTED if allowed else grpc.StatusCode.NOT_FOUND
            status, body, _ = error_body(
                code,
                f"{request.method} {request.path} is not an API route"
                + (f"; allowed: {', '.join(allowed)}" if allowed else ""),
                (),
                request_id,
            )
            status = 405 if allowed else 404
            body["error"]["code"] = status
            if allowed:
                headers["Allow"] = ", ".join(allowed)
            return _json(body, status, headers)
        route, path_values = matched
        try:
            payload: Any = None
            verifying = route.grpc_method == RECEIPT_METHOD and request.method == "GET"
            if route.grpc_method == RECEIPT_METHOD and (
                request.content_type == FORM
                or request.headers.get(SENDGRID_SIGNATURE)
                or request.headers.get(META_SIGNATURE)
            ):
                payload = receipt_payload(request, await self._read_body(request))
            elif route.body:
                raw = await self._read_body(request)
                if raw.strip():
                    try:
                        payload = orjson.loads(raw)
                    except orjson.JSONDecodeError as exc:
                        return self._bad_body(f"body is not valid JSON: {exc}", request_id)
            if verifying:  # a webhook's verification: its query is the provider's
                message = build_request(route, path_values, None, ())
                message.fields.update(dict(request.query))  # type: ignore[attr-defined]
            else:
                message = build_request(route, path_values, payload, request.query.items())
        except DomainError as exc:
            return self._domain_error(exc, request_id)
        if route.streaming:
            return await self._stream(request, route, message, metadata, headers)
        try:
            reply = await self._callable(route)(
                message, metadata=metadata, timeout=CALL_TIMEOUT_SECONDS
            )
        except aio.AioRpcError as exc:
            status, body, extra = error_body(
                exc.code(), exc.details() or "", exc.trailing_metadata(), request_id
            )
            headers.update(extra)
            return _json(body, status, headers)
        if verifying:
            return web.Response(text=reply.challenge, headers=headers)
        return _json(render(reply, route.response_body), 200, headers)

    async def _stream(
        self,
        request: web.Request,
        route: Route,
        message: Any,
        metadata: Any,
        headers: dict[str, str],
    ) -> web.StreamResponse:
        """A server stream of HttpBody as one response: its status once the
        first chunk (or an error) arrives, then each chunk as it comes. A
        failure after the first chunk cuts the connection, so the client sees
        a truncated transfer, never a short file that looks whole."""
        found = self._callables.get(route.grpc_method)
        if found is None:
            found = self._channel_for(route.service).unary_stream(
                route.grpc_method,
                request_serializer=route.request_class.SerializeToString,
                response_deserializer=route.response_class.FromString,
            )
            self._callables[route.grpc_method] = found
        chunks = aiter(found(message, metadata=metadata, timeout=STREAM_TIMEOUT_SECONDS))
        try:
            first = await anext(chunks, None)
        except aio.AioRpcError as exc:
            status, body, extra = error_body(
                exc.code(),
                exc.details() or "",
                exc.trailing_metadata(),
                request_id=headers["X-Request-Id"],
            )
            headers.update(extra)
            return _json(body, status, headers)
        response = web.StreamResponse(status=200, headers=headers)
        if first is None:
            await response.prepare(request)
            await response.write_eof()
            return response
        response.content_type, _, charset = first.content_type.partition("; charset=")
        if charset:
            response.charset = charset
        await response.prepare(request)
        try:
            await response.write(first.data)
            async for chunk in chunks:
                await response.write(chunk.data)
        except aio.AioRpcError as exc:
            log.warning("gateway: %s failed mid-stream: %s", route.grpc_method, exc.details())
            if request.transport is not None:
                request.transport.abort()
            return response
        await response.write_eof()
        return response

    async def _read_body(self, request: web.Request) -> bytes:
        """The body, decompressed per Content-Encoding; both the body as sent
        and its decompressed size are capped at the request limit."""
        encoding = content_encoding(request.headers.get("Content-Encoding"))
        try:
            raw = await request.read()
        except web.HTTPRequestEntityTooLarge:
            raise body_too_large(self._max_request_bytes) from None
        return await decompress(raw, encoding, self._max_request_bytes)

    def _bad_body(self, why: str, request_id: str) -> web.Response:
        status, body, _ = error_body(grpc.StatusCode.INVALID_ARGUMENT, why, (), request_id)
        body["error"]["reason"] = "MALFORMED_BODY"
        body["error"]["fieldViolations"] = [{"field": "body", "description": why}]
        return _json(body, status, {"X-Request-Id": request_id})

    def _domain_error(self, exc: DomainError, request_id: str) -> web.Response:
        status, body, _ = error_body(grpc.StatusCode[exc.code], exc.message, (), request_id)
        body["error"]["reason"] = exc.reason
        body["error"]["domain"] = ERROR_DOMAIN
        body["error"]["metadata"] = dict(exc.metadata)
        body["error"]["fieldViolations"] = [
            {"field": v.field, "description": v.description} for v in exc.field_violations
        ]
        return _json(body, status, {"X-Request-Id": request_id})

    async def bid(self, request: web.Request) -> web.Response:
        """OpenRTB 2.6 JSON in and out through the dedicated adapter (not
        protobuf's JSON mapping), dispatched to BiddingService.ProcessBid.
        No bid: HTTP 204."""
        request_id = _request_id(request)
        headers = {"X-Request-Id": request_id, "x-openrtb-version": OPENRTB_VERSION}
        try:
            metadata = _call_metadata(request, request_id)
            body = await self._read_body(request)
            bid_request = decode_bid_request(body, max_bytes=self._max_request_bytes)
        except DomainError as exc:
            response = self._domain_error(exc, request_id)
            response.headers.update(headers)
            return response
        if self._process_bid is None:
            self._process_bid = self._channel_for(BIDDING_SERVICE).unary_unary(
                f"/{BIDDING_SERVICE}/ProcessBid",
                request_serializer=bidding_service_pb2.ProcessBidRequest.SerializeToString,
                response_deserializer=bidding_service_pb2.ProcessBidResponse.FromString,
            )
        try:
            with incoming_span("POST /v1/bid", request.headers) as passed:
                if passed:  # the call below is this span's child
                    metadata = [(k, v) for k, v in metadata if k not in passed]
                    metadata += list(passed.items())
                reply = await self._process_bid(
                    bidding_service_pb2.ProcessBidRequest(request=bid_request),
                    metadata=metadata,
                    timeout=CALL_TIMEOUT_SECONDS,
                )
        except aio.AioRpcError as exc:
            status, payload, extra = error_body(
                exc.code(), exc.details() or "", exc.trailing_metadata(), request_id
            )
            headers.update(extra)
            return _json(payload, status, headers)
        if reply.no_bid:
            headers["X-No-Bid-Reason"] = reply.reason
            return web.Response(status=204, headers=headers)
        return web.Response(
            body=encode_bid_response(reply.response),
            content_type="application/json",
            headers=headers,
        )

    async def engagement(self, request: web.Request) -> web.Response:
        """An email's open pixel (`.../{token}.gif`: a 1x1 GIF, whatever
        happens, so no mail client shows a broken image) or tracked link (a
        redirect to it), recorded by MessagingService.TrackEngagement."""
        token = request.match_info["token"]
        is_pixel = token.endswith(".gif")
        if self._track_engagement is None:
            self._track_engagement = self._channel_for(MESSAGING_SERVICE).unary_unary(
                f"/{MESSAGING_SERVICE}/TrackEngagement",
                request_serializer=messaging_service_pb2.TrackEngagementRequest.SerializeToString,
                response_deserializer=messaging_service_pb2.TrackEngagementResponse.FromString,
            )
        no_store = {"Cache-Control": "no-store, private"}
        try:
            reply = await self._track_engagement(
                messaging_service_pb2.TrackEngagementRequest(token=token),
                metadata=[("x-request-id", _request_id(request))],
                timeout=CALL_TIMEOUT_SECONDS,
            )
        except aio.AioRpcError as exc:
            if is_pixel:
                return web.Response(body=PIXEL, content_type="image/gif", headers=no_store)
            status, payload, _ = error_body(exc.code(), exc.details() or "", (), "")
            return _json(payload, status)
        if reply.kind == "click":
            raise web.HTTPFound(reply.url, headers=no_store)
        return web.Response(body=PIXEL, content_type="image/gif", headers=no_store)

    async def preferences(self, request: web.Request) -> web.Response:
        """The preference center's page (gateway/preference_page.py): GET
        shows the person's groups, a posted form changes them."""
        token = request.match_info["token"]
        pb = messaging_service_pb2
        metadata = [("x-request-id", _request_id(request))]
        note = ""
        try:
            if request.method == "POST":
                form = await request.post()
                fields = {key: [str(v) for v in form.getall(key)] for key in set(form.keys())}
                call = self._channel_for(MESSAGING_SERVICE).unary_unary(
                    f"/{MESSAGING_SERVICE}/UpdatePreferences",
                    request_serializer=pb.UpdatePreferencesRequest.SerializeToString,
                    response_deserializer=pb.UpdatePreferencesResponse.FromString,
                )
                wanted = [
                    message_pb2.GroupChoice(group=c["group"], subscribed=c["subscribed"])
                    for c in preference_page.choices_from_form(fields)
                ]
                reply: Any = await call(
                    pb.UpdatePreferencesRequest(token=token, choices=wanted),
                    metadata=metadata,
                    timeout=CALL_TIMEOUT_SECONDS,
                )
                note = "Saved. Your choices apply from the next message."
            else:
                call = self._channel_for(MESSAGING_SERVICE).unary_unary(
                    f"/{MESSAGING_SERVICE}/GetPreferences",
                    request_serializer=pb.GetPreferencesRequest.SerializeToString,
                    response_deserializer=pb.GetPreferencesResponse.FromString,
                )
                reply = await call(
                    pb.GetPreferencesRequest(token=token),
                    metadata=metadata,
                    timeout=CALL_TIMEOUT_SECONDS,
                )
        except aio.AioRpcError as exc:
            status, _, _ = error_body(exc.code(), exc.details() or "", (), "")
            text = (
                "This link is not valid. Use the one in your latest message."
                if status == 400
                else "Your preferences cannot be shown just now. Please try again later."
            )
            body = preference_page.page((), note=text, error=True)
            return web.Response(
                text=body, status=status, content_type="text/html",
                headers=preference_page.HEADERS,
            )  # fmt: skip
        choices = render(reply).get("choices", [])
        body = preference_page.page(choices, note=note)
        return web.Response(text=body, content_type="text/html", headers=preference_page.HEADERS)

    async def track(self, request: web.Request) -> web.Response:
        """Segment's HTTP Tracking API (gateway/tracking.py), dispatched to
        AudienceService.IngestEvents; `{"success": true}` when taken."""
        request_id = _request_id(request)
        headers = {"X-Request-Id": request_id}
        kind = TRACKING_PATHS[request.path]
        limit = size_limit(kind)
        try:
            metadata = [
                (k, v) for k, v in _call_metadata(request, request_id) if k != "authorization"
            ]
            metadata.append(("authorization", bearer(request.headers.get("authorization", ""))))
            body = await self._read_body(request)
            if len(body) > limit:
                status, payload, _ = error_body(
                    grpc.StatusCode.INVALID_ARGUMENT,
                    f"the body is larger than {limit} bytes (Segment's limit)",
                    (),
                    request_id,
                )
                payload["error"]["fieldViolations"] = [
                    {"field": "body", "description": f"is larger than {limit} bytes"}
                ]
                return _json(payload, 413, headers)
            ingest = ingest_request(kind, body)
        except DomainError as exc:
            response = self._domain_error(exc, request_id)
            response.headers.update(headers)
            return response
        if self._ingest is None:
            self._ingest = self._channel_for(AUDIENCE_SERVICE).unary_unary(
                f"/{AUDIENCE_SERVICE}/IngestEvents",
                request_serializer=audience_service_pb2.IngestEventsRequest.SerializeToString,
                response_deserializer=audience_service_pb2.IngestEventsResponse.FromString,
            )
        try:
            await self._ingest(ingest, metadata=metadata, timeout=CALL_TIMEOUT_SECONDS)
        except aio.AioRpcError as exc:
            status, payload, extra = error_body(
                exc.code(), exc.details() or "", exc.trailing_metadata(), request_id
            )
            if kind:  # one call, sent as a batch of one: name its fields as sent
                error = payload["error"]
                error["message"] = str(error.get("message", "")).replace("batch[0].", "")
                for violation in error.get("fieldViolations", []):
                    violation["field"] = violation["field"].removeprefix("batch[0].")
            headers.update(extra)
            return _json(payload, status, headers)
        return _json({"success": True}, 200, headers)

    async def health(self, request: web.Request) -> web.Response:
        return _json({"status": "ok"})

    async def live(self, request: web.Request) -> web.Response:
        return _json({"status": "alive"})

    async def ready(self, request: web.Request) -> web.Response:
        states = dict(await self._readiness())
        ok = all(state == "ok" for state in states.values())
        body: dict[str, Any] = {
            "status": "ready" if ok else "not ready",
            "checks": {name: state == "ok" for name, state in states.items()},
        }
        problems = {name: state for name, state in states.items() if state != "ok"}
        if problems:
            body["problems"] = problems  # which backend, and down or slow
        return _json(body, 200 if ok else 503)

    async def openapi(self, request: web.Request) -> web.Response:
        if self._openapi is None:
            if self._descriptor_set is None:
                return _json({"error": {"code": 404, "message": "no descriptor set"}}, 404)
            document = build_openapi(self._descriptor_set, services=self._services)
            self._openapi = orjson.dumps(document)
        return web.Response(body=self._openapi, content_type="application/json")

    def runner(self, max_request_bytes: int, shutdown_timeout: float) -> web.AppRunner:
        """The HTTP server of this gateway. aiohttp's own request
        decompression is off: it would inflate a whole body on the event loop
        before a handler could refuse it (services/common/bodies.py does it in slices)."""
        return web.AppRunner(
            self.application(max_request_bytes),
            access_log=None,
            shutdown_timeout=shutdown_timeout,
            auto_decompress=False,
            logger=ClientErrorLog(logging.getLogger("aiohttp.server")),
        )

    def application(self, max_request_bytes: int) -> web.Application:
        self._max_request_bytes = max_request_bytes
        # The bid route reads and limits its body itself (also after gzip).
        app = web.Application(client_max_size=max_request_bytes + 1)
        app.router.add_get("/health", self.health)
        app.router.add_get("/live", self.live)
        app.router.add_get("/ready", self.ready)
        app.router.add_get("/openapi.json", self.openapi)
        if BIDDING_SERVICE in self._services:
            app.router.add_post("/v1/bid", self.bid)
        if MESSAGING_SERVICE in self._services:
            app.router.add_get("/v1/t/{token}", self.engagement)
            app.router.add_get("/preferences/{token}", self.preferences)
            app.router.add_post("/preferences/{token}", self.preferences)
        if AUDIENCE_SERVICE in self._services:
            for path in TRACKING_PATHS:
                app.router.add_post(path, self.track)
        app.router.add_route("*", "/{tail:.*}", self.handle)
        return app
