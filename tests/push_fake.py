"""A local push service for web push tests, over HTTPS (a self-signed
certificate made here), checking what RFC 8030, 8291 and 8292 require: a
TTL header, `Content-Encoding: aes128gcm`, `Authorization: vapid t=<JWT>,
k=<key>` with an ES256 JWT (signature checked against `k`; `aud` this
service's origin, `exp` within 24 hours, a `sub` contact), and a payload it
decrypts with the browser's private key and auth secret (http_ece), as a
browser would. Subscriptions it is told are gone answer 410."""

from __future__ import annotations

import base64
import datetime as dt
import ipaddress
import os
import pathlib
import ssl
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import http_ece
import orjson
from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from cryptography.x509.oid import NameOID


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def unb64url(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


@dataclass
class Browser:
    """One browser's push subscription: its keys, as PushManager makes them."""

    endpoint: str
    key: ec.EllipticCurvePrivateKey = field(
        default_factory=lambda: ec.generate_private_key(ec.SECP256R1())
    )
    auth: bytes = field(default_factory=lambda: os.urandom(16))

    @property
    def keys(self) -> dict[str, str]:
        point = self.key.public_key().public_bytes(
            serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
        )
        return {"p256dh": b64url(point), "auth": b64url(self.auth)}


@dataclass
class PushService:
    origin: str = ""
    cert_file: str = ""
    browsers: dict[str, Browser] = field(default_factory=dict)
    received: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    refused: list[str] = field(default_factory=list)
    gone: set[str] = field(default_factory=set)

    def subscribe(self, name: str) -> Browser:
        browser = Browser(f"{self.origin}/push/{name}")
        self.browsers[name] = browser
        return browser


def _check_vapid(header: str, origin: str) -> str:
    """Why a VAPID Authorization header is bad ("" if it is good)."""
    if not header.startswith("vapid "):
        return "Authorization is not vapid"
    parts = dict(p.strip().split("=", 1) for p in header[6:].split(","))
    token, key = parts.get("t", ""), parts.get("k", "")
    try:
        head, claims, signature = token.split(".")
        public = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), unb64url(key))
        raw = unb64url(signature)
        der = encode_dss_signature(int.from_bytes(raw[:32], "big"), int.from_bytes(raw[32:], "big"))
        public.verify(der, f"{head}.{claims}".encode(), ec.ECDSA(hashes.SHA256()))
    except Exception as exc:
        return f"VAPID signature: {exc!r}"
    if orjson.loads(unb64url(head)).get("alg") != "ES256":
        return "VAPID alg"
    body = orjson.loads(unb64url(claims))
    if body.get("aud") != origin:
        return f"VAPID aud {body.get('aud')} != {origin}"
    if not time.time() < int(body.get("exp", 0)) <= time.time() + 86400:
        return "VAPID exp"
    if not str(body.get("sub", "")).startswith(("mailto:", "https:")):
        return "VAPID sub"
    return ""


def app(service: PushService) -> web.Application:
    async def push(request: web.Request) -> web.Response:
        name = request.match_info["name"]
        browser = service.browsers.get(name)
        if browser is None or name in service.gone:
            return web.Response(status=410)
        why = ""
        if not request.headers.get("TTL", "").isdigit():
            why = "TTL header"
        elif request.headers.get("Content-Encoding") != "aes128gcm":
            why = "Content-Encoding"
        else:
            why = _check_vapid(request.headers.get("Authorization", ""), service.origin)
        if why:
            service.refused.append(why)
            return web.Response(status=400, text=why)
        body = await request.read()
        plain = http_ece.decrypt(body, private_key=browser.key, auth_secret=browser.auth,
                                 version="aes128gcm")  # fmt: skip
        service.received.append((name, orjson.loads(plain)))
        return web.Response(status=201, headers={"Location": f"{service.origin}/m/{len(body)}"})

    application = web.Application()
    application.add_routes([web.post("/push/{name}", push)])
    return application


def _certificate(directory: pathlib.Path) -> tuple[str, str]:
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_file, key_file = directory / "push.crt", directory / "push.key"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return str(cert_file), str(key_file)


async def serve_push(directory: pathlib.Path) -> AsyncIterator[PushService]:
    service = PushService()
    cert_file, key_file = _certificate(directory)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert_file, key_file)
    runner = web.AppRunner(app(service))
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=context)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    service.origin = f"https://127.0.0.1:{port}"
    service.cert_file = cert_file
    try:
        yield service
    finally:
        await runner.cleanup()
