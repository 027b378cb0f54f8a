"""Email over SMTP to any server (aiosmtplib): a MIME message with a text and
an HTML part (multipart/alternative), a Message-ID made from the message's
id (so a receiver sees one message however it travels), and for marketing
email List-Unsubscribe with one-click (RFC 8058). Connections are kept
open and reused, a few per provider.

With `dkim_selector` and `dkim_private_key` (an RSA key, PEM) each message
is signed with DKIM (RFC 6376, relaxed/simple, rsa-sha256) for the sender's
domain (or `dkim_domain`), over From, To, Subject, Date, Message-ID and the
List-Unsubscribe headers; the public key goes in DNS at
`<selector>._domainkey.<domain>`.

Config: `host`, `port` (587), `security` (`starttls` default, `tls`,
`none`), `username`, `password`, `from` (an address), `from_name`,
`reply_to`, `dkim_selector`, `dkim_private_key`, `dkim_domain`."""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
from collections.abc import AsyncIterator, Callable, Mapping
from email.message import EmailMessage
from email.policy import SMTP as SMTP_POLICY
from typing import Any

import aiosmtplib
import dkim
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.serialization import load_pem_private_key

from services.common.errors import FieldViolation
from services.common.validation import check_email
from services.messaging.channels.base import Outgoing, ProviderError

SECRETS = frozenset({"password", "dkim_private_key"})
DKIM_HEADERS = (b"from", b"to", b"subject", b"date", b"message-id", b"reply-to",
                b"list-unsubscribe", b"list-unsubscribe-post")  # fmt: skip
SECURITY = ("starttls", "tls", "none")
POOL = 8  # connections kept per provider
TIMEOUT = 20.0


def check_config(config: Mapping[str, str], at: str) -> list[FieldViolation]:
    bad: list[FieldViolation] = []
    if not config.get("host"):
        bad.append(FieldViolation(f"{at}.host", "required: the SMTP server"))
    port = config.get("port", "587")
    if not port.isdigit() or not 1 <= int(port) <= 65535:
        bad.append(FieldViolation(f"{at}.port", "must be a port number, 1-65535"))
    if config.get("security", "starttls") not in SECURITY:
        bad.append(FieldViolation(f"{at}.security", f"must be one of {', '.join(SECURITY)}"))
    if not config.get("from"):
        bad.append(FieldViolation(f"{at}.from", "required: the sender's address"))
    else:
        check_email(bad, f"{at}.from", config["from"])
    if bool(config.get("dkim_selector")) != bool(config.get("dkim_private_key")):
        bad.append(FieldViolation(f"{at}.dkim_selector", "DKIM needs a selector and a key"))
    elif config.get("dkim_private_key"):
        try:
            key = load_pem_private_key(config["dkim_private_key"].encode(), password=None)
            if not isinstance(key, rsa.RSAPrivateKey) or key.key_size < 1024:
                raise ValueError("not RSA")
        except (ValueError, TypeError):
            bad.append(FieldViolation(f"{at}.dkim_private_key", "an RSA key of 1024 bits or more"))
    return bad


def dkim_signed(message: EmailMessage, config: Mapping[str, str]) -> bytes:
    """The message as sent, with its DKIM-Signature first (when configured)."""
    raw = message.as_bytes(policy=SMTP_POLICY)
    if not config.get("dkim_selector"):
        return raw
    domain = config.get("dkim_domain") or config["from"].rsplit("@", 1)[-1]
    signature = dkim.sign(
        raw,
        config["dkim_selector"].encode(),
        domain.encode(),
        config["dkim_private_key"].encode(),
        include_headers=[h for h in DKIM_HEADERS if message.get(h.decode()) is not None],
    )
    return bytes(signature) + raw


def build(outgoing: Outgoing, config: Mapping[str, str]) -> EmailMessage:
    sender = config["from"]
    message = EmailMessage()
    message["From"] = email.utils.formataddr((config.get("from_name", ""), sender))
    message["To"] = outgoing.address
    message["Subject"] = outgoing.subject
    message["Date"] = email.utils.formatdate(localtime=False)
    domain = sender.rsplit("@", 1)[-1]
    message["Message-ID"] = f"<{outgoing.message_id}@{domain}>"
    if config.get("reply_to"):
        message["Reply-To"] = config["reply_to"]
    if outgoing.unsubscribe_url:
        message["List-Unsubscribe"] = f"<{outgoing.unsubscribe_url}>"
        message["List-Unsubscribe-Post"] = "List-Unsubscribe=One-Click"
    for key, value in outgoing.headers.items():
        message[key] = value
    text = outgoing.text or "This message is best read in an email client that shows HTML."
    message.set_content(text)
    if outgoing.html:
        message.add_alternative(outgoing.html, subtype="html")
    return message


class SmtpSender:
    """One provider's connections."""

    def __init__(self, config: Mapping[str, str]) -> None:
        self._config = dict(config)
        self._idle: list[aiosmtplib.SMTP] = []
        self._gate = asyncio.Semaphore(POOL)

    def _client(self) -> aiosmtplib.SMTP:
        c = self._config
        security = c.get("security", "starttls")
        return aiosmtplib.SMTP(
            hostname=c["host"],
            port=int(c.get("port", "587")),
            username=c.get("username") or None,
            password=c.get("password") or None,
            use_tls=security == "tls",
            start_tls=True if security == "starttls" else False,
            timeout=TIMEOUT,
        )

    @contextlib.asynccontextmanager
    async def _connection(self) -> AsyncIterator[aiosmtplib.SMTP]:
        async with self._gate:
            client = self._idle.pop() if self._idle else None
            if client is None or not client.is_connected:
                client = self._client()
                await client.connect()
            try:
                yield client
            except BaseException:
                with contextlib.suppress(Exception):
                    client.close()
                raise
            self._idle.append(client)

    async def send(self, outgoing: Outgoing, handing_over: Callable[[], None]) -> str:
        """Hand the message to the server (calling `handing_over` just
        before: from then on it may arrive); its Message-ID."""
        message = build(outgoing, self._config)
        raw = dkim_signed(message, self._config)
        try:
            async with self._connection() as client:
                handing_over()
                await client.sendmail(self._config["from"], [outgoing.address], raw)
        except aiosmtplib.SMTPRecipientsRefused as exc:
            codes = [r.code for r in exc.recipients]
            permanent = all(500 <= code < 600 for code in codes)
            raise ProviderError(
                f"recipient refused: {exc}", permanent=permanent, bounced=permanent
            ) from None
        except aiosmtplib.SMTPResponseException as exc:
            raise ProviderError(
                f"SMTP {exc.code}: {exc.message}", permanent=500 <= exc.code < 600
            ) from None
        except (aiosmtplib.SMTPException, OSError, TimeoutError) as exc:
            raise ProviderError(f"SMTP server unreachable: {exc!r}", permanent=False) from None
        return str(message["Message-ID"])

    async def close(self) -> None:
        while self._idle:
            client = self._idle.pop()
            with contextlib.suppress(Exception):
                await client.quit()


def new_sender(config: Mapping[str, Any]) -> SmtpSender:
    return SmtpSender({k: str(v) for k, v in config.items()})
