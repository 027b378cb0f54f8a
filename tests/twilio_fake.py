"""A local stand-in for Twilio's Messages API
(`POST /2010-04-01/Accounts/{AccountSid}/Messages.json`), checking what
Twilio's documentation requires: HTTP Basic with the account SID and auth
token, a form body, an E.164 `To`, a `From` or `MessagingServiceSid`, a
`Body`. It answers 201 with the message resource (or Twilio's error JSON
for numbers it is told to refuse), and can post status callbacks signed as
Twilio signs them (X-Twilio-Signature: base64 HMAC-SHA1 of the URL and the
fields sorted by name, keyed with the auth token), computed here
independently of Twilio's library."""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from aiohttp import web

ACCOUNT_SID = "AC" + "0123456789abcdef" * 2
AUTH_TOKEN = "twilio-auth-token"
FROM = "+15005550006"
_E164 = re.compile(r"^\+[1-9][0-9]{6,14}$")


def sign(url: str, fields: dict[str, str], token: str = AUTH_TOKEN) -> str:
    data = url + "".join(f"{k}{fields[k]}" for k in sorted(fields))
    digest = hmac.new(token.encode(), data.encode(), hashlib.sha1).digest()
    return base64.b64encode(digest).decode()


@dataclass
class TwilioFake:
    base_url: str = ""
    sent: list[dict[str, str]] = field(default_factory=list)
    refused: list[str] = field(default_factory=list)
    invalid: set[str] = field(default_factory=set)  # numbers answered 21211

    async def callback(
        self, http: aiohttp.ClientSession, message: dict[str, str], status: str,
        *, deliver_to: str, error_code: str = "", token: str = AUTH_TOKEN,
    ) -> int:  # fmt: skip
        """Post a status callback for a message it took: signed over the
        StatusCallback URL it was given, delivered to `deliver_to` (the
        test's gateway, standing in for the public address)."""
        url = message["StatusCallback"]
        fields = {
            "MessageSid": message["sid"],
            "MessageStatus": status,
            "AccountSid": ACCOUNT_SID,
            "To": message["To"],
            "From": message["From"],
        }
        if error_code:
            fields["ErrorCode"] = error_code
        path = url.split("/v1/", 1)[1]
        async with http.post(
            f"{deliver_to}/v1/{path}", data=fields,
            headers={"X-Twilio-Signature": sign(url, fields, token)},
        ) as reply:  # fmt: skip
            return reply.status


def app(fake: TwilioFake) -> web.Application:
    def error(status: int, code: int, message: str) -> web.Response:
        fake.refused.append(message)
        return web.json_response(
            {"code": code, "message": message, "more_info": f"https://www.twilio.com/docs/errors/{code}",
             "status": status}, status=status)  # fmt: skip

    async def create(request: web.Request) -> web.Response:
        account = request.match_info["account"]
        expected = "Basic " + base64.b64encode(f"{ACCOUNT_SID}:{AUTH_TOKEN}".encode()).decode()
        if account != ACCOUNT_SID or request.headers.get("Authorization") != expected:
            return error(401, 20003, "Authenticate")
        if request.content_type != "application/x-www-form-urlencoded":
            return error(400, 21620, "the body must be a form")
        form = {k: str(v) for k, v in (await request.post()).items()}
        to = form.get("To", "")
        if not _E164.match(to):
            return error(400, 21211, f"The 'To' number {to} is not a valid phone number.")
        if to in fake.invalid:
            return error(400, 21211, f"The 'To' number {to} is not a valid phone number.")
        if not form.get("From") and not form.get("MessagingServiceSid"):
            return error(400, 21603, "A 'From' or 'MessagingServiceSid' parameter is required")
        if not form.get("Body"):
            return error(400, 21602, "Message body is required.")
        sid = "SM" + secrets.token_hex(16)
        fake.sent.append({**form, "sid": sid})
        resource: dict[str, Any] = {
            "sid": sid, "account_sid": ACCOUNT_SID, "to": to, "from": form.get("From"),
            "body": form["Body"], "status": "queued", "num_segments": "1",
            "direction": "outbound-api", "api_version": "2010-04-01",
            "uri": f"/2010-04-01/Accounts/{ACCOUNT_SID}/Messages/{sid}.json",
        }  # fmt: skip
        return web.json_response(resource, status=201)

    application = web.Application()
    application.add_routes([web.post("/2010-04-01/Accounts/{account}/Messages.json", create)])
    return application


async def serve_twilio() -> AsyncIterator[TwilioFake]:
    fake = TwilioFake()
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
