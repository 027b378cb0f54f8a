"""Local stand-ins for the mobile push services, checking what their
documentation requires:

- FCM HTTP v1: the OAuth token endpoint takes a JWT-bearer assertion signed
  RS256 by the service account (checked with its public key; `iss`,
  `scope`, `aud`), and `POST /v1/projects/{project}/messages:send` takes a
  Bearer access token and `{"message": {"token", "notification", "data"}}`;
  a token it is told is gone answers 404 with errorCode UNREGISTERED.
- APNs: HTTP/2 (here cleartext with prior knowledge, served with the h2
  library), `POST /3/device/{token}` with `authorization: bearer <ES256 JWT>`
  (`kid` the key id, `iss` the team id; checked with the key's public half),
  `apns-topic`, `apns-push-type: alert`, an `aps.alert` body; 200 with an
  apns-id, or 410 `{"reason": "Unregistered"}` for a token it is told is
  gone."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import h2.config
import h2.connection
import h2.events
import jwt
import orjson
from aiohttp import web
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

PROJECT = "acme-app"
TEAM_ID, KEY_ID, TOPIC = "TEAM123456", "KEY1234567", "com.acme.app"


def _pem(key: Any) -> str:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()


@dataclass
class Fcm:
    base_url: str = ""
    key: rsa.RSAPrivateKey = field(
        default_factory=lambda: rsa.generate_private_key(public_exponent=65537, key_size=2048)
    )
    sent: list[dict[str, Any]] = field(default_factory=list)
    refused: list[str] = field(default_factory=list)
    gone: set[str] = field(default_factory=set)
    tokens_issued: int = 0

    def service_account(self) -> str:
        return orjson.dumps({
            "type": "service_account", "project_id": PROJECT,
            "client_email": f"push@{PROJECT}.iam.gserviceaccount.com",
            "private_key": _pem(self.key), "token_uri": f"{self.base_url}/token",
        }).decode()  # fmt: skip


def fcm_app(fcm: Fcm) -> web.Application:
    async def token(request: web.Request) -> web.Response:
        form = await request.post()
        if form.get("grant_type") != "urn:ietf:params:oauth:grant-type:jwt-bearer":
            fcm.refused.append("grant_type")
            return web.json_response({"error": "unsupported_grant_type"}, status=400)
        try:
            claims = jwt.decode(str(form.get("assertion", "")), fcm.key.public_key(),
                                algorithms=["RS256"], audience=f"{fcm.base_url}/token")  # fmt: skip
        except jwt.InvalidTokenError as exc:
            fcm.refused.append(f"assertion: {exc}")
            return web.json_response({"error": "invalid_grant"}, status=400)
        if "firebase.messaging" not in claims.get("scope", "") or not claims.get("iss"):
            fcm.refused.append("scope")
            return web.json_response({"error": "invalid_scope"}, status=400)
        fcm.tokens_issued += 1
        return web.json_response({"access_token": f"ya29.fake-{fcm.tokens_issued}",
                                  "expires_in": 3599, "token_type": "Bearer"})  # fmt: skip

    async def send(request: web.Request) -> web.Response:
        if request.match_info["project"] != PROJECT:
            return web.json_response({"error": {"code": 404, "status": "NOT_FOUND"}}, status=404)
        if not request.headers.get("Authorization", "").startswith("Bearer ya29.fake-"):
            return web.json_response({"error": {"code": 401, "status": "UNAUTHENTICATED"}},
                                     status=401)  # fmt: skip
        message = (await request.json()).get("message") or {}
        if not message.get("token") or not (message.get("notification") or {}).get("title"):
            fcm.refused.append("message")
            return web.json_response({"error": {"code": 400, "status": "INVALID_ARGUMENT"}},
                                     status=400)  # fmt: skip
        if message["token"] in fcm.gone:
            return web.json_response({"error": {"code": 404, "status": "NOT_FOUND", "details": [
                {"@type": "type.googleapis.com/google.firebase.fcm.v1.FcmError",
                 "errorCode": "UNREGISTERED"}]}}, status=404)  # fmt: skip
        fcm.sent.append(message)
        return web.json_response({"name": f"projects/{PROJECT}/messages/{len(fcm.sent)}"})

    application = web.Application()
    application.add_routes([
        web.post("/token", token),
        web.post("/v1/projects/{project}/messages:send", send),
    ])  # fmt: skip
    return application


async def serve_fcm() -> AsyncIterator[Fcm]:
    fcm = Fcm()
    runner = web.AppRunner(fcm_app(fcm))
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    fcm.base_url = f"http://127.0.0.1:{port}"
    try:
        yield fcm
    finally:
        await runner.cleanup()


@dataclass
class Apns:
    base_url: str = ""
    key: ec.EllipticCurvePrivateKey = field(
        default_factory=lambda: ec.generate_private_key(ec.SECP256R1())
    )
    sent: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    refused: list[str] = field(default_factory=list)
    gone: set[str] = field(default_factory=set)

    @property
    def private_pem(self) -> str:
        return _pem(self.key)

    def answer(self, headers: dict[str, str], body: bytes) -> tuple[int, dict[str, str], bytes]:
        path = headers.get(":path", "")
        if headers.get(":method") != "POST" or not path.startswith("/3/device/"):
            return 404, {}, b'{"reason":"BadPath"}'
        token = path.removeprefix("/3/device/")
        bearer = headers.get("authorization", "").removeprefix("bearer ")
        try:
            if jwt.get_unverified_header(bearer).get("kid") != KEY_ID:
                raise jwt.InvalidTokenError("kid")
            claims = jwt.decode(bearer, self.key.public_key(), algorithms=["ES256"])
            if claims.get("iss") != TEAM_ID or not claims.get("iat"):
                raise jwt.InvalidTokenError("iss/iat")
        except jwt.InvalidTokenError as exc:
            self.refused.append(f"token: {exc}")
            return 403, {}, b'{"reason":"InvalidProviderToken"}'
        if headers.get("apns-topic") != TOPIC or headers.get("apns-push-type") != "alert":
            self.refused.append("topic or push type")
            return 400, {}, b'{"reason":"BadTopic"}'
        payload = orjson.loads(body)
        if not ((payload.get("aps") or {}).get("alert") or {}).get("title"):
            self.refused.append("aps.alert")
            return 400, {}, b'{"reason":"PayloadEmpty"}'
        if token in self.gone:
            return 410, {}, b'{"reason":"Unregistered","timestamp":1765000000000}'
        self.sent.append((token, payload))
        return 200, {"apns-id": str(uuid.uuid4()).upper()}, b""


class _H2Server(asyncio.Protocol):
    """A minimal HTTP/2 server (prior knowledge) answering with Apns.answer."""

    def __init__(self, apns: Apns) -> None:
        self._apns = apns
        self._conn = h2.connection.H2Connection(
            config=h2.config.H2Configuration(client_side=False, header_encoding="utf-8")
        )
        self._streams: dict[int, tuple[dict[str, str], bytearray]] = {}
        self._transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport
        self._conn.initiate_connection()
        transport.write(self._conn.data_to_send())

    def data_received(self, data: bytes) -> None:
        assert self._transport is not None
        for event in self._conn.receive_data(data):
            if isinstance(event, h2.events.RequestReceived):
                self._streams[event.stream_id] = (dict(event.headers), bytearray())
            elif isinstance(event, h2.events.DataReceived):
                self._streams[event.stream_id][1].extend(event.data)
                self._conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
            elif isinstance(event, h2.events.StreamEnded):
                headers, body = self._streams.pop(event.stream_id)
                status, extra, answer = self._apns.answer(headers, bytes(body))
                out = [
                    (":status", str(status)),
                    ("content-length", str(len(answer))),
                    *extra.items(),
                ]
                self._conn.send_headers(event.stream_id, out, end_stream=not answer)
                if answer:
                    self._conn.send_data(event.stream_id, answer, end_stream=True)
        self._transport.write(self._conn.data_to_send())


async def serve_apns() -> AsyncIterator[Apns]:
    apns = Apns()
    server = await asyncio.get_running_loop().create_server(lambda: _H2Server(apns), "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    apns.base_url = f"http://127.0.0.1:{port}"
    try:
        yield apns
    finally:
        server.close()
        await server.wait_closed()
