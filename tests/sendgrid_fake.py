"""A local stand-in for SendGrid's v3 Mail Send API (`POST /v3/mail/send`),
checking what SendGrid's documentation requires: a Bearer API key, a JSON
body with personalizations (each with `to`), `from.email`, a `subject`,
`content` with text/plain before text/html. It answers 202 with an
X-Message-Id header (400 with SendGrid's error JSON for addresses it is
told to refuse), and signs Event Webhook batches as SendGrid does (ECDSA
P-256 with SHA-256 over the timestamp and the body, with a key pair made
here; the provider is given the public key in SendGrid's base64 form)."""

from __future__ import annotations

import base64
import secrets
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import orjson
from aiohttp import web
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

API_KEY = "SG.test-key"


@dataclass
class SendGridFake:
    base_url: str = ""
    sent: list[dict[str, Any]] = field(default_factory=list)
    refused: list[str] = field(default_factory=list)
    invalid: set[str] = field(default_factory=set)
    key: ec.EllipticCurvePrivateKey = field(
        default_factory=lambda: ec.generate_private_key(ec.SECP256R1())
    )

    @property
    def public_key(self) -> str:
        der = self.key.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        return base64.b64encode(der).decode()

    async def post_events(
        self, http: aiohttp.ClientSession, url: str, events: list[dict[str, Any]],
        *, forge: bool = False,
    ) -> int:  # fmt: skip
        body = orjson.dumps(events).decode()
        timestamp = str(int(time.time()))
        signer = ec.generate_private_key(ec.SECP256R1()) if forge else self.key
        signature = signer.sign((timestamp + body).encode(), ec.ECDSA(hashes.SHA256()))
        headers = {
            "Content-Type": "application/json",
            "X-Twilio-Email-Event-Webhook-Signature": base64.b64encode(signature).decode(),
            "X-Twilio-Email-Event-Webhook-Timestamp": timestamp,
        }
        async with http.post(url, data=body, headers=headers) as reply:
            return reply.status


def app(fake: SendGridFake) -> web.Application:
    def error(status: int, message: str, field_name: str | None = None) -> web.Response:
        fake.refused.append(message)
        return web.json_response(
            {"errors": [{"message": message, "field": field_name, "help": None}]}, status=status
        )

    async def send(request: web.Request) -> web.Response:
        if request.headers.get("Authorization") != f"Bearer {API_KEY}":
            return error(401, "The provided authorization grant is invalid, expired, or revoked")
        if request.content_type != "application/json":
            return error(400, "Content-Type should be application/json.")
        body = await request.json()
        people = body.get("personalizations")
        if not isinstance(people, list) or not people or not all(p.get("to") for p in people):
            return error(400, "The personalizations field is required", "personalizations")
        if not (body.get("from") or {}).get("email"):
            return error(400, "The from object must be provided", "from")
        if not body.get("subject"):
            return error(400, "The subject is required", "subject")
        content = body.get("content") or []
        types = [c.get("type") for c in content]
        if not types or types[0] != "text/plain" or any(not c.get("value") for c in content):
            return error(400, "text/plain must come first, values non-empty", "content")
        for person in people:
            for to in person["to"]:
                if to.get("email") in fake.invalid:
                    return error(400, "Does not contain a valid address.", "personalizations.0.to")
        fake.sent.append(body)
        return web.Response(status=202, headers={"X-Message-Id": secrets.token_urlsafe(16)})

    application = web.Application()
    application.add_routes([web.post("/v3/mail/send", send)])
    return application


async def serve_sendgrid() -> AsyncIterator[SendGridFake]:
    fake = SendGridFake()
    runner = web.AppRunner(app(fake))
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    fake.base_url = f"http://127.0.0.1:{port}"
    try:
        yield fake
    finally:
        await runner.cleanup()
