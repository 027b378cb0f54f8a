"""A real SMTP server for the tests (aiosmtpd), on a free port of loopback:
it records every message it accepts, refuses the recipients it is told to
(550: a hard bounce) and can fail the next deliveries (451: try later)."""

from __future__ import annotations

import asyncio
import email
import email.policy
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from email.message import EmailMessage
from typing import Any

from aiosmtpd.controller import Controller

from tests.backend_servers import free_port


@dataclass
class Received:
    mail_from: str
    rcpt_tos: list[str]
    message: EmailMessage
    raw: bytes = b""


@dataclass
class SmtpServer:
    port: int = 0
    received: list[Received] = field(default_factory=list)
    refuse: set[str] = field(default_factory=set)  # recipients answered 550
    fail_next: int = 0  # deliveries answered 451
    delay: float = 0.0  # seconds each delivery takes
    lock: threading.Lock = field(default_factory=threading.Lock)

    def to(self, address: str) -> list[EmailMessage]:
        with self.lock:
            return [r.message for r in self.received if address in r.rcpt_tos]


class _Handler:
    def __init__(self, server: SmtpServer) -> None:
        self._server = server

    async def handle_RCPT(
        self, server: Any, session: Any, envelope: Any, address: str, options: Any
    ) -> str:
        if address in self._server.refuse:
            return f"550 5.1.1 <{address}>: no such user"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        if self._server.delay:
            await asyncio.sleep(self._server.delay)
        with self._server.lock:
            if self._server.fail_next > 0:
                self._server.fail_next -= 1
                return "451 4.3.0 try again later"
            parsed = email.message_from_bytes(envelope.content, policy=email.policy.default)
            assert isinstance(parsed, EmailMessage)
            self._server.received.append(
                Received(envelope.mail_from, list(envelope.rcpt_tos), parsed, envelope.content)
            )
        return "250 2.0.0 OK"


def serve_smtp() -> Iterator[SmtpServer]:
    server = SmtpServer(port=free_port())
    controller = Controller(_Handler(server), hostname="127.0.0.1", port=server.port)
    controller.start()
    try:
        yield server
    finally:
        controller.stop()
