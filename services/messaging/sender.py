"""The sender: takes due messages from the outbox, a batch at a time, and
for each one decides, renders and dispatches:

1. who: the recipient's profile (through the audience domain's directory)
   and address (the recipient's own, else the profile's `email` / `phone`
   trait); none -> aborted `no_address`;
2. may we: a suppression in force for the address on the channel (or every
   channel) -> aborted `suppressed` (an opt-out stops marketing only:
   transactional messages still go, as they do without marketing consent);
   a marketing message to a person who refused marketing on that channel ->
   aborted `no_consent`, to one in the tenant's global control group ->
   aborted `global_control`;
3. what: the pinned template version rendered in the person's locale; an
   error -> aborted `template_error` (with the line and column);
3b. delivery rules (services/messaging/rules.py): quiet hours hold (or
   drop) a marketing message; a frequency cap it would exceed -> aborted
   `frequency_capped`;
4. through whom: the tenant's providers for the channel in priority order,
   failing over to the next on an error that another provider might not
   have; a permanent refusal -> failed (a bounced address is suppressed);
   every provider out -> queued again with exponential backoff, failed
   after MAX_ATTEMPTS.

Once (kill -9 included): a message is claimed with a lease (state
`sending`) before it goes to a provider and recorded after. A sender that
dies between the provider's acceptance and the record leaves messages in
`sending`; when their lease runs out they become `unknown` and are never
sent again: at most once, the uncertain few reported rather than
duplicated (docs/messaging.md).

Every outcome is a lifecycle event in the `message_events` table."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import logging
import os
import pathlib
import random
import socket
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import orjson
import sqlalchemy as sa
from prometheus_client import CollectorRegistry

from services.analytics.events import EventRow
from services.backends.interfaces import AnalyticsStore
from services.backends.kv import MemoryKeyValueStore
from services.common.clock import now_us
from services.common.errors import NotFound
from services.common.loopmetrics import Counter
from services.db import Database
from services.messaging import rendering
from services.messaging.catalogs import Catalogs
from services.messaging.channels.base import Outgoing, ProviderError
from services.messaging.channels.sms_text import measure
from services.messaging.connected import Connected, ConnectedError
from services.messaging.events import event_row
from services.messaging.feed import FEED_CHANNELS, Feed
from services.messaging.messages import Message, from_row
from services.messaging.preferences import Groups
from services.messaging.providers import KINDS, Provider, Providers, cost_micros
from services.messaging.rules import (
    Caps,
    DeliveryRules,
    QuietHours,
    person_key,
    quiet_until,
    zone_of,
)
from services.messaging.send_time import best_time
from services.messaging.suppressions import Suppressions, normalized
from services.messaging.tables import messaging_messages
from services.messaging.templates import Templates

log = logging.getLogger(__name__)

BATCH = 64
RECORD_STEP = 32  # messages sent, then recorded, together
CONCURRENCY = 64
LEASE_US = 60 * 1_000_000
MAX_ATTEMPTS = 5
RETRY_BASE_US = 30 * 1_000_000  # then x4 each time: 30 s, 2 min, 8 min, 32 min
POLL_SECONDS = 0.5
#: A claim whose lease ran out this many times over belongs to a sender
#: that did not come back: its messages become UNKNOWN.
ORPHAN_LEASES = 10
#: The attempt journal is emptied when it grows past this, between batches.
JOURNAL_MAX_BYTES = 4 * 1024 * 1024
#: Push channels and the device platforms they reach.
PUSH_CHANNELS = {"web_push": ("web",), "push": ("ios", "android")}
#: Mobile push providers and the device platforms each serves.
PUSH_PLATFORMS = {"fcm": ("android",), "apns": ("ios",)}
#: What an in-app message or content card records as its address.
FEED_ADDRESS = "feed"
#: What a webhook message records as its address (it goes to the endpoint).
WEBHOOK_ADDRESS = "webhook"
#: Provider kinds that post receipts to us (their status callback URL).
RECEIPTS = frozenset({"twilio"})  # SendGrid's Event Webhook is set in its console
ADDRESS_TRAIT = {"email": "email", "sms": "phone", "whatsapp": "phone"}


#: A provider that failed this many messages in a row (with errors another
#: provider might not have) is skipped for BREAKER_SECONDS while a provider
#: after it is not (a lone provider is always tried: its messages' retries
#: are the backoff); then the next message tries it again.
BREAKER_FAILURES = 5
BREAKER_SECONDS = 30.0


class Breakers:
    """A circuit breaker per provider, in this process: while a provider is
    failing, messages go straight to the next one instead of each waiting
    for its errors."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._failures: dict[str, int] = {}
        self._open_until: dict[str, float] = {}

    def is_open(self, provider_id: str) -> bool:
        return self._open_until.get(provider_id, 0.0) > self._clock()

    def failed(self, provider_id: str, name: str) -> None:
        failures = self._failures.get(provider_id, 0) + 1
        self._failures[provider_id] = failures
        if failures >= BREAKER_FAILURES and not self.is_open(provider_id):
            self._open_until[provider_id] = self._clock() + BREAKER_SECONDS
            log.warning(
                "messaging: provider %s failed %d messages in a row; skipped for %.0f s",
                name, failures, BREAKER_SECONDS,
            )  # fmt: skip

    def succeeded(self, provider_id: str) -> None:
        self._failures.pop(provider_id, None)
        self._open_until.pop(provider_id, None)


@dataclass(frozen=True, slots=True)
class Person:
    """What the sender needs of a recipient's profile."""

    id: str
    traits: Mapping[str, Any]
    # Per channel: True (granted), False (refused), None (never asked).
    marketing: Mapping[str, bool | None] = field(default_factory=dict)


class Directory(Protocol):
    """The audience domain's profiles, as the sender reads them."""

    async def person(self, tenant_id: str, profile_id: str, user_id: str) -> Person | None: ...

    async def people(self, tenant_id: str, profile_ids: Sequence[str]) -> Mapping[str, Person]: ...

    async def push_targets(self, tenant_id: str, profile_id: str) -> list[Any]: ...

    async def token_gone(self, tenant_id: str, platform: str, token: str, reason: str) -> bool: ...


Emit = Callable[[EventRow], object]


@dataclass(frozen=True, slots=True)
class Spend:
    """What a campaign's sent message cost (for the campaign's budget)."""

    campaign_id: str
    message_id: str
    currency: str
    micros: int


def campaign_send(message: Message) -> bool:
    """Whether a live campaign's reconciliation made it (services/messaging/
    campaign_sends.py keys them `campaign:<campaign>:<profile>`)."""
    return bool(message.campaign_id) and message.idempotency_key.startswith(
        f"campaign:{message.campaign_id}:"
    )


@dataclass(slots=True)
class Outcome:
    state: str  # sent, aborted, failed, queued (retry)
    abort_reason: str = ""
    error: str = ""
    provider_id: str = ""
    provider_message_id: str = ""
    address: str = ""
    locale: str = ""
    profile_id: str = ""
    next_attempt_time: int = 0
    send_time: int = 0
    held: bool = False  # queued again by quiet hours: not a try
    segments: int = 0  # an SMS's
    encoding: str = ""
    send_time_method: str = ""  # chosen now (send-time optimisation)
    send_time_confidence: float = 0.0
    cost_micros: int = 0  # what the provider charges for it (its config)
    cost_currency: str = ""


class SenderMetrics:
    """What the sender did with each message it took (alerts: failures)."""

    def __init__(self, registry: CollectorRegistry | None) -> None:
        self.outcomes = Counter(
            "campaign_express_messages",
            "Messages the sender finished, by channel and outcome (sent, failed, "
            "aborted) and, for aborted ones, the reason.",
            ["channel", "outcome", "reason"],
            registry=registry,
        )


class Sender:
    def __init__(
        self,
        db: Database,
        templates: Templates,
        providers: Providers,
        suppressions: Suppressions,
        directory: Directory,
        emit: Emit,
        *,
        clock: Callable[[], int] = now_us,
        unsubscribe_url: Callable[[str, str, str], str] | None = None,
        receipt_url: Callable[[str], str] | None = None,
        track_html: Callable[[str, str, str, str], str] | None = None,
        rules: DeliveryRules | None = None,
        feed: Feed | None = None,
        campaign_rate: Callable[[str, str], int] | None = None,
        campaign_quiet: Callable[[str, str], QuietHours | None] | None = None,
        campaign_currency: Callable[[str, str], str | None] | None = None,
        spend: Callable[[str, list[Spend]], Awaitable[None]] | None = None,
        catalogs: Catalogs | None = None,
        groups: Groups | None = None,
        analytics: AnalyticsStore | None = None,
        preferences_url: Callable[[str, str], str] | None = None,
        caps: Caps | None = None,
        lease_seconds: float = LEASE_US / 1e6,
        retry_seconds: float = RETRY_BASE_US / 1e6,
        journal: pathlib.Path | None = None,
        name: str = "",
    ) -> None:
        self._db = db
        self._templates = templates
        self._providers = providers
        self._suppressions = suppressions
        #: (tenant, the person's unit) -> in the tenant's global control
        #: group (decisioning's interface; None where it does not run)
        self.global_control: Callable[[str, str], Awaitable[bool]] | None = None
        self._directory = directory
        self._emit = emit
        self._clock = clock
        self._unsubscribe_url = unsubscribe_url
        self._receipt_url = receipt_url
        self._track_html = track_html
        self._lease_us = int(lease_seconds * 1e6)
        self._retry_us = int(retry_seconds * 1e6)
        self._rules = rules or DeliveryRules(db, clock=clock)
        self._feed = feed
        self._campaign_rate = campaign_rate
        self._campaign_quiet = campaign_quiet
        self._campaign_currency = campaign_currency
        self._spend = spend
        self._catalogs = catalogs
        self._groups = groups
        self._analytics = analytics
        self._preferences_url = preferences_url
        self._connected = Connected()
        self._caps = caps or Caps(MemoryKeyValueStore())
        self._caps_store = self._caps.store
        # This sender's name on its claims, and the journal of its attempts
        # (None: no journal, every claim left behind becomes UNKNOWN).
        self.name = name or f"{socket.gethostname()}:{os.getpid()}"
        self._journal_path = journal
        self._journal_fd = -1
        self._handed: set[str] = set()  # this round's messages handed to a provider
        self._adapters: dict[tuple[str, str], Any] = {}
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._gate = asyncio.Semaphore(CONCURRENCY)
        self.breakers = Breakers()
        #: Counted outcomes (set by the module, with the process's registry).
        self.metrics: SenderMetrics | None = None

    # -- running ----------------------------------------------------------------

    def wake(self) -> None:
        self._wake.set()

    async def start(self) -> None:
        await self.settle_own()
        await self.recover()
        self._task = asyncio.get_running_loop().create_task(self._loop(), name="message-sender")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        for adapter in self._adapters.values():
            with contextlib.suppress(Exception):
                await adapter.close()
        self._adapters.clear()
        await self._connected.close()
        if self._journal_fd >= 0:
            os.close(self._journal_fd)
            self._journal_fd = -1

    async def _loop(self) -> None:
        while True:
            try:
                done = await self.run_once()
                if done:
                    continue
                await self.recover()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.warning("messaging: a send round failed; trying again", exc_info=True)
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(POLL_SECONDS):
                    await self._wake.wait()

    async def run_once(self, limit: int = BATCH) -> int:
        """Claim and send one batch of due messages; how many were taken."""
        claimed = await self._claim(limit)
        if not claimed:
            return 0
        # Recorded a step at a time: what a kill leaves uncertain is at most
        # one step (those handed over, not yet recorded).
        for first in range(0, len(claimed), RECORD_STEP):
            step = claimed[first : first + RECORD_STEP]
            outcomes = await self._send_all(step)
            await self._record(step, outcomes)
            await self._record_spend(step, outcomes)
        self._handed.clear()
        self._trim_journal()
        return len(claimed)

    async def settle_own(self) -> tuple[int, int]:
        """What this sender (its host and worker) left `sending` when it
        last stopped: messages in its attempt journal become `unknown`, the
        others go back to the queue. (requeued, unknown)."""
        attempted: set[str] = set()
        if self._journal_path is not None and self._journal_path.exists():
            text = self._journal_path.read_text(errors="replace")
            attempted = {line for line in text.splitlines() if line}
        now = self._clock()
        m = messaging_messages.c
        async with self._db.engine.begin() as conn:
            rows = (
                await conn.execute(
                    sa.select(messaging_messages).where(m.state == "sending", m.sender == self.name)
                )
            ).all()
            back = [r.id for r in rows if r.id not in attempted]
            unknown = [r for r in rows if r.id in attempted]
            for first in range(0, len(back), 500):
                await conn.execute(
                    messaging_messages.update()
                    .where(m.id.in_(back[first : first + 500]), m.state == "sending")
                    .values(
                        state="queued",
                        next_attempt_time=now,
                        update_time=now,
                        attempts=m.attempts - 1,
                        sender="",
                    )
                )
            await self._mark_unknown(conn, unknown, now)
        if self._journal_path is not None:
            self._journal_path.parent.mkdir(parents=True, exist_ok=True)
            self._journal_path.write_text("")
        if rows:
            log.warning(
                "messaging: settled what this sender left mid-send: %d queued again, %d UNKNOWN",
                len(back),
                len(unknown),
            )
        return len(back), len(unknown)

    async def _mark_unknown(self, conn: Any, rows: Sequence[Any], now: int) -> None:
        if not rows:
            return
        m = messaging_messages.c
        ids = [r.id for r in rows]
        for first in range(0, len(ids), 500):
            await conn.execute(
                messaging_messages.update()
                .where(m.id.in_(ids[first : first + 500]), m.state == "sending")
                .values(
                    state="unknown",
                    update_time=now,
                    error="the sender stopped after handing it to the provider",
                )
            )
        for row in rows:
            self._event(from_row(row), "unknown", now, reason="sender stopped mid-send")

    async def recover(self) -> int:
        """Messages of senders that did not come back (`sending`, their
        lease ORPHAN_LEASES times over) become `unknown`: they may have gone
        out, so they are not sent again."""
        now = self._clock()
        m = messaging_messages.c
        async with self._db.engine.begin() as conn:
            rows = (
                await conn.execute(
                    sa.select(messaging_messages)
                    .where(
                        m.state == "sending",
                        m.lease_until < now - (ORPHAN_LEASES - 1) * self._lease_us,
                        m.sender != self.name,
                    )
                    .limit(1000)
                )
            ).all()
            if not rows:
                return 0
            await self._mark_unknown(conn, rows, now)
        log.warning("messaging: %d messages of a sender gone are now UNKNOWN", len(rows))
        return len(rows)

    # -- claiming and recording -------------------------------------------------------

    async def _claim(self, limit: int) -> list[Message]:
        now = self._clock()
        m = messaging_messages.c
        async with self._db.engine.begin() as conn:
            if self._db.is_sqlite:  # the write lock first (see audience Profiles.ingest)
                await conn.execute(sa.text("DELETE FROM messaging_messages WHERE 0 = 1"))
            query = (
                sa.select(messaging_messages)
                .where(m.state == "queued", m.next_attempt_time <= now)
                .order_by(m.next_attempt_time)
                .limit(limit)
            )
            if not self._db.is_sqlite:
                query = query.with_for_update(skip_locked=True)
            rows = (await conn.execute(query)).all()
            if not rows:
                return []
            await conn.execute(
                messaging_messages.update()
                .where(m.id.in_([r.id for r in rows]))
                .values(
                    state="sending",
                    lease_until=now + self._lease_us,
                    attempts=m.attempts + 1,
                    update_time=now,
                    sender=self.name,
                )
            )
        return [from_row(r) for r in rows]

    async def _record(self, messages: Sequence[Message], outcomes: Sequence[Outcome]) -> None:
        now = self._clock()
        m = messaging_messages.c
        values = [
            {
                "b_id": message.id,
                "state": o.state,
                "abort_reason": o.abort_reason,
                "error": o.error[:2000],
                "provider_id": o.provider_id,
                "provider_message_id": o.provider_message_id[:300],
                "address": o.address[:320],
                "locale": o.locale,
                "profile_id": o.profile_id or message.profile_id,
                "next_attempt_time": o.next_attempt_time or message.create_time,
                "attempts": message.attempts if o.held else message.attempts + 1,
                "segments": o.segments,
                "encoding": o.encoding,
                "send_time_method": o.send_time_method or message.send_time_method,
                "send_time_confidence": o.send_time_confidence or message.send_time_confidence,
                "send_time": o.send_time,
                "update_time": now,
            }
            for message, o in zip(messages, outcomes, strict=True)
        ]
        async with self._db.engine.begin() as conn:
            await conn.execute(
                messaging_messages.update().where(
                    m.id == sa.bindparam("b_id"), m.state == "sending"
                ),
                values,
            )
        metrics = self.metrics
        for message, o in zip(messages, outcomes, strict=True):
            if o.state == "queued":
                continue  # tried again later: its outcome comes then
            if metrics is not None:
                metrics.outcomes.labels(message.channel, o.state, o.abort_reason).inc()
            self._event(
                message,
                o.state,
                now,
                profile_id=o.profile_id,
                provider_id=o.provider_id,
                reason=o.abort_reason or o.error,
            )

    async def _record_spend(self, messages: Sequence[Message], outcomes: Sequence[Outcome]) -> None:
        """Campaign messages that cost something, on their campaigns' budgets
        (the ledger takes each message once: its id is the entry's key)."""
        if self._spend is None:
            return
        by_tenant: dict[str, list[Spend]] = defaultdict(list)
        for message, o in zip(messages, outcomes, strict=True):
            if o.state == "sent" and o.cost_micros and campaign_send(message):
                by_tenant[message.tenant_id].append(
                    Spend(message.campaign_id, message.id, o.cost_currency, o.cost_micros)
                )
        for tenant_id, spent in by_tenant.items():
            try:
                await self._spend(tenant_id, spent)
            except Exception:  # the messages went: their cost is noted in the log
                log.warning(
                    "messaging: %d messages' cost not recorded on their campaigns (%s)",
                    len(spent),
                    ", ".join(f"{s.message_id}={s.micros}" for s in spent[:10]),
                    exc_info=True,
                )

    def _event(
        self,
        message: Message,
        kind: str,
        at: int,
        *,
        profile_id: str = "",
        provider_id: str = "",
        reason: str = "",
    ) -> None:
        self._emit(
            event_row(
                at,
                message.tenant_id,
                message.id,
                kind,
                channel=message.channel,
                template_id=message.template_id,
                template_version=message.template_version,
                campaign_id=message.campaign_id,
                profile_id=profile_id or message.profile_id,
                provider_id=provider_id,
                reason=reason,
                transactional=message.transactional,
            )
        )

    # -- deciding and sending ---------------------------------------------------------

    async def _people(self, messages: Sequence[Message]) -> list[Person | None]:
        """Each message's person: those named by profile id looked up together
        (per tenant), the rest one by one."""
        by_tenant: dict[str, list[str]] = defaultdict(list)
        for message in messages:
            if message.profile_id:
                by_tenant[message.tenant_id].append(message.profile_id)
        known: dict[tuple[str, str], Person] = {}
        for tenant_id, profile_ids in by_tenant.items():
            found = await self._directory.people(tenant_id, profile_ids)
            known.update(((tenant_id, pid), person) for pid, person in found.items())
        by_user = [m for m in messages if not m.profile_id]
        found_by_user = dict(
            zip(
                (m.id for m in by_user),
                await asyncio.gather(*(self._person(m) for m in by_user)),
                strict=True,
            )
        )
        return [
            known.get((m.tenant_id, m.profile_id)) if m.profile_id else found_by_user[m.id]
            for m in messages
        ]

    async def _send_all(self, messages: Sequence[Message]) -> list[Outcome]:
        people = await self._people(messages)
        targets: dict[str, list[Any]] = {}
        for message, person in zip(messages, people, strict=True):
            if message.channel in PUSH_CHANNELS and person is not None:
                found = await self._directory.push_targets(message.tenant_id, person.id)
                targets[message.id] = [
                    t for t in found if t.platform in PUSH_CHANNELS[message.channel]
                ]
        addresses = [
            self._address(m, p, targets.get(m.id, []))
            for m, p in zip(messages, people, strict=True)
        ]
        blocked: dict[tuple[str, str], dict[str, Any]] = {}
        wanted: dict[tuple[str, str], list[str]] = defaultdict(list)
        for message, address in zip(messages, addresses, strict=True):
            if address:
                wanted[(message.tenant_id, message.channel)].append(address)
        for (tenant_id, channel), found in wanted.items():
            blocked[(tenant_id, channel)] = await self._suppressions.blocking(
                tenant_id, channel, found
            )

        async def one(message: Message, person: Person | None, address: str) -> Outcome:
            async with self._gate:
                suppressed = blocked.get((message.tenant_id, message.channel), {}).get(address)
                try:
                    return await self._send(
                        message, person, address, suppressed, targets.get(message.id, [])
                    )
                except Exception as error:  # a bug must not hold the batch
                    log.exception("messaging: sending %s failed unexpectedly", message.id)
                    if message.id in self._handed:  # it may have gone out
                        return Outcome("unknown", error=f"unexpected: {error!r}"[:500],
                                       address=address)  # fmt: skip
                    return Outcome("queued", error=f"unexpected: {error!r}"[:500],
                                   address=address, next_attempt_time=self._clock()
                                   + self._retry_us)  # fmt: skip

        return list(
            await asyncio.gather(
                *(one(m, p, a) for m, p, a in zip(messages, people, addresses, strict=True))
            )
        )

    async def _person(self, message: Message) -> Person | None:
        """One message's person (by profile id, else by user id)."""
        r = message.recipient
        if not (message.profile_id or r.get("user_id")):
            return None
        try:
            return await self._directory.person(
                message.tenant_id, message.profile_id, r.get("user_id", "")
            )
        except NotFound:
            return None

    @staticmethod
    def _address(message: Message, person: Person | None, targets: Sequence[Any] = ()) -> str:
        if message.channel in FEED_CHANNELS:
            return FEED_ADDRESS if person is not None else ""
        if message.channel in PUSH_CHANNELS:
            return f"{len(targets)} device(s)" if targets else ""
        if message.channel == "webhook":
            return WEBHOOK_ADDRESS  # the provider's endpoint: nobody's address
        own = {"email": "email", "sms": "phone", "whatsapp": "phone"}.get(message.channel, "")
        if not own:
            return ""
        address = message.recipient.get(own, "")
        if not address and person is not None:
            value = person.traits.get(ADDRESS_TRAIT[message.channel])
            address = value if isinstance(value, str) else ""
        return normalized(address)

    async def _send(
        self,
        message: Message,
        person: Person | None,
        address: str,
        suppressed: Any,
        targets: Sequence[Any] = (),
    ) -> Outcome:
        profile_id = person.id if person is not None else message.profile_id
        now = self._clock()
        if message.optimal and not message.send_time_method and self._analytics is not None:
            best = await best_time(
                self._analytics, message.tenant_id, profile_id, message.template_id, now
            )
            if best.at_us > now:  # wait for it (not a try)
                return Outcome("queued", address=address, profile_id=profile_id,
                               next_attempt_time=best.at_us, held=True,
                               send_time_method=best.method,
                               send_time_confidence=best.confidence)  # fmt: skip
            # within the best hour already: it goes now, and says how the time was chosen
            outcome = await self._send_now(message, person, address, suppressed, targets)
            outcome.send_time_method = outcome.send_time_method or best.method
            outcome.send_time_confidence = outcome.send_time_confidence or best.confidence
            return outcome
        return await self._send_now(message, person, address, suppressed, targets)

    async def _send_now(
        self,
        message: Message,
        person: Person | None,
        address: str,
        suppressed: Any,
        targets: Sequence[Any] = (),
    ) -> Outcome:
        profile_id = person.id if person is not None else message.profile_id
        now = self._clock()
        if not address:
            why = "the recipient has no address for this channel"
            if (message.profile_id or message.recipient.get("user_id")) and person is None:
                why = "no such profile"
            return Outcome("aborted", "no_address", why, profile_id=profile_id)
        if suppressed is not None and not (
            message.transactional and suppressed.reason == "user_opt_out"
        ):  # an opt-out stops marketing; receipts and resets still go
            return Outcome(
                "aborted", "suppressed", suppressed.reason, address=address, profile_id=profile_id
            )
        if not message.transactional and person is not None:
            if person.marketing.get(message.channel) is False:
                return Outcome(
                    "aborted",
                    "no_consent",
                    "the person refused marketing on this channel",
                    address=address,
                    profile_id=profile_id,
                )
            held = self.global_control
            unit = getattr(person, "unit", "") or person.id
            if held is not None and await held(message.tenant_id, unit):
                return Outcome(
                    "aborted",
                    "global_control",
                    "the person is in the tenant's global control group: no marketing",
                    address=address,
                    profile_id=profile_id,
                )
        traits = dict(person.traits) if person is not None else {}
        rules = await self._rules.of_tenant(message.tenant_id)
        zone = zone_of(traits, rules)
        if not message.transactional and message.channel not in FEED_CHANNELS:
            quiet, quiet_zone = rules.quiet, zone
            own = (
                self._campaign_quiet
                and message.campaign_id
                and self._campaign_quiet(message.tenant_id, message.campaign_id)
            )  # a campaign's own quiet hours, in place of the tenant's
            if own:
                quiet = own
                quiet_zone = zone_of(traits, dataclasses.replace(rules, quiet=own))
            until = quiet_until(quiet, quiet_zone, now)
            if until is not None and quiet.action == "drop":
                return Outcome(
                    "aborted",
                    "quiet_hours",
                    f"quiet hours {quiet.start}-{quiet.end}",
                    address=address,
                    profile_id=profile_id,
                )
            if until is not None:  # held: it goes when they end, not counted as a try
                return Outcome(
                    "queued",
                    error="held for quiet hours",
                    address=address,
                    profile_id=profile_id,
                    next_attempt_time=until,
                    held=True,
                )
        if campaign_send(message) and self._campaign_currency is not None:
            if self._campaign_currency(message.tenant_id, message.campaign_id) is None:
                return Outcome("aborted", "campaign_inactive",
                               "the campaign is not live (paused, ended or out of budget)",
                               address=address, profile_id=profile_id)  # fmt: skip
        violated, taken = await self._caps.reserve(
            rules,
            person=person_key(profile_id, address),
            channel=message.channel,
            campaign_id=message.campaign_id,
            transactional=message.transactional,
            zone=zone,
            now=now,
        )
        if violated is not None:
            return Outcome(
                "aborted",
                "frequency_capped",
                violated.describe(),
                address=address,
                profile_id=profile_id,
            )
        outcome = await self._deliver(message, traits, address, profile_id, targets)
        if outcome.state != "sent":
            await self._caps.release(taken)  # not sent: its places go back
        return outcome

    async def _deliver(
        self,
        message: Message,
        traits: dict[str, Any],
        address: str,
        profile_id: str,
        targets: Sequence[Any] = (),
    ) -> Outcome:
        """Render and hand to the providers."""
        now = self._clock()
        try:
            template = await self._templates.find(
                message.tenant_id, message.template_id, message.template_version
            )
        except NotFound:
            return Outcome(
                "aborted",
                "template_error",
                "the template was deleted",
                address=address,
                profile_id=profile_id,
            )
        locale = rendering.pick_locale(
            template.contents, str(traits.get("locale", "") or ""), template.default_locale
        )
        if template.group_id and not message.transactional and self._groups is not None:
            if not await self._groups.subscribed(message.tenant_id, template.group_id, profile_id):
                return Outcome("aborted", "unsubscribed", "not subscribed to its group",
                               address=address, profile_id=profile_id)  # fmt: skip
        about: dict[str, Any] = {"id": message.id}
        if profile_id and self._preferences_url is not None:
            about["preferences_url"] = self._preferences_url(message.tenant_id, profile_id)
        variables = {
            "profile": {**traits, "id": profile_id},
            "data": message.data,
            "message": about,
            "tenant": {"id": message.tenant_id},
        }
        if self._catalogs is not None:
            variables["catalogs"] = await self._catalogs.for_render(
                message.tenant_id, list(template.contents[locale].values())
            )
        if template.connected:
            rules = await self._rules.of_tenant(message.tenant_id)
            try:
                variables["connected"] = await self._connected.fetch_all(
                    template.connected, variables, rules.connected_hosts
                )
            except ConnectedError as error:
                return Outcome("aborted", "connected_content", str(error), address=address,
                               locale=locale, profile_id=profile_id)  # fmt: skip
        try:
            rendered = rendering.render(
                template.contents[locale], variables, strict=template.strict
            )
        except rendering.TemplateError as error:
            return Outcome(
                "aborted",
                "template_error",
                str(error),
                address=address,
                locale=locale,
                profile_id=profile_id,
            )
        if message.channel in FEED_CHANNELS and self._feed is not None:
            item = await self._feed.deliver(
                message_id=message.id,
                tenant_id=message.tenant_id,
                profile_id=profile_id,
                channel=message.channel,
                title=rendered["subject"],
                body=rendered["text"],
                html=rendered["html"],
                data=message.data,
            )
            return Outcome(
                "sent",
                provider_message_id=item.name,
                address=address,
                locale=locale,
                profile_id=profile_id,
                send_time=self._clock(),
            )
        if message.campaign_id and self._campaign_rate is not None:
            rate = self._campaign_rate(message.tenant_id, message.campaign_id)
            wait = await self._throttled(f"c:{message.tenant_id}:{message.campaign_id}", rate)
            if wait:
                return Outcome("queued", error=f"throttled: the campaign's {rate}/min",
                               address=address, locale=locale, profile_id=profile_id,
                               next_attempt_time=now + int(wait * 1e6), held=True)  # fmt: skip
        providers = await self._providers.for_channel(message.tenant_id, message.channel)
        if not providers:
            return Outcome(
                "aborted",
                "no_provider",
                f"the tenant has no {message.channel} provider",
                address=address,
                locale=locale,
                profile_id=profile_id,
            )
        unsubscribe = ""
        if message.channel == "email" and not message.transactional and self._unsubscribe_url:
            unsubscribe = self._unsubscribe_url(message.tenant_id, message.channel, address)
        html = rendered["html"]
        if html and message.channel == "email" and self._track_html is not None:
            html = self._track_html(message.tenant_id, message.id, html, unsubscribe)
        outgoing = Outgoing(
            message.id,
            message.tenant_id,
            address,
            rendered["subject"],
            html,
            rendered["text"],
            unsubscribe_url=unsubscribe,
            locale=locale,
            devices=tuple(targets),
        )
        sms = measure(rendered["text"]) if message.channel == "sms" else None
        if sms is not None and not sms.segments:
            return Outcome("aborted", "template_error", "the SMS body is empty",
                           address=address, locale=locale, profile_id=profile_id)  # fmt: skip
        journaled = False

        def handing_over() -> None:  # journaled once, before the first provider sees it
            nonlocal journaled
            if not journaled:
                self._attempting(message.id)
                journaled = True

        async def dispatch(outgoing: Outgoing, providers: Sequence[Provider]) -> Outcome:
            errors: list[str] = []
            waits: list[float] = []  # providers busy (their send rate): seconds to wait
            for n, provider in enumerate(providers):
                if self.breakers.is_open(provider.id) and any(
                    not self.breakers.is_open(p.id) for p in providers[n + 1 :]
                ):  # failing lately, and another may take it: straight to that one
                    errors.append(f"{provider.display_name}: skipped, failing lately")
                    continue
                wait = await self._throttled(f"p:{provider.id}", provider.config.get(
                    "rate_per_minute", ""))  # fmt: skip
                if wait:
                    waits.append(wait)
                    continue
                if self._receipt_url is not None and provider.kind in RECEIPTS:
                    outgoing = dataclasses.replace(
                        outgoing, receipt_url=self._receipt_url(provider.name)
                    )
                try:
                    provider_message_id = await self._adapter(provider).send(outgoing, handing_over)
                except ProviderError as error:
                    errors.append(f"{provider.display_name}: {error}")
                    if not error.permanent:
                        self.breakers.failed(provider.id, provider.display_name)
                    if error.permanent:
                        if error.bounced:
                            await self._suppressions.add(
                                message.tenant_id,
                                address,
                                message.channel,
                                "bounced",
                                note=f"bounced at {provider.display_name}",
                            )
                        return Outcome(
                            "failed",
                            error="; ".join(errors),
                            provider_id=provider.id,
                            address=address,
                            locale=locale,
                            profile_id=profile_id,
                        )
                    continue
                self.breakers.succeeded(provider.id)
                cost = cost_micros(provider.config.get("cost_per_message", "")) or 0
                return Outcome(
                    "sent",
                    cost_micros=cost * max(1, sms.segments if sms else 1),
                    cost_currency=provider.config.get("cost_currency", ""),
                    provider_id=provider.id,
                    provider_message_id=provider_message_id,
                    address=address,
                    locale=locale,
                    profile_id=profile_id,
                    send_time=self._clock(),
                    segments=sms.segments if sms else 0,
                    encoding=sms.encoding if sms else "",
                )
            if waits and len(waits) == len(providers):  # all busy: when one has room
                return Outcome(
                    "queued",
                    error="throttled: the providers' send rate",
                    address=address,
                    locale=locale,
                    profile_id=profile_id,
                    next_attempt_time=now + int(min(waits) * 1e6),
                    held=True,
                )
            # every provider out: later, or never
            if message.attempts + 1 >= MAX_ATTEMPTS:
                return Outcome(
                    "failed",
                    error="; ".join(errors),
                    address=address,
                    locale=locale,
                    profile_id=profile_id,
                )
            delay = self._retry_us * 4**message.attempts
            delay = int(delay * random.uniform(0.8, 1.2))
            return Outcome(
                "queued",
                error="; ".join(errors),
                address=address,
                locale=locale,
                profile_id=profile_id,
                next_attempt_time=now + delay,
            )

        try:
            if message.channel != "push":
                return await dispatch(outgoing, providers)
            # mobile push: each platform's devices through the providers that serve it
            outcomes = []
            for platform in ("android", "ios"):
                group = tuple(t for t in outgoing.devices if t.platform == platform)
                serving = [p for p in providers if platform in PUSH_PLATFORMS.get(p.kind, ())]
                if group and serving:
                    outcomes.append(
                        await dispatch(dataclasses.replace(outgoing, devices=group), serving)
                    )
            if not outcomes:
                return Outcome("aborted", "no_provider", "no push provider for these devices",
                               address=address, locale=locale, profile_id=profile_id)  # fmt: skip
            sent = [o for o in outcomes if o.state == "sent"]
            if sent:
                first = sent[0]
                first.provider_message_id = "; ".join(o.provider_message_id for o in sent)
                return first
            queued = [o for o in outcomes if o.state == "queued"]
            return queued[0] if queued else outcomes[0]
        finally:  # tokens the push service said are gone
            platforms = {t.token: t.platform for t in outgoing.devices}
            for token in outgoing.gone:
                await self._directory.token_gone(
                    message.tenant_id,
                    platforms.get(token, "web"),
                    token,
                    "the push service says it is gone",
                )

    async def _throttled(self, key: str, per_minute: Any) -> float:
        """Take a send from this bucket (hot store: across processes); the
        seconds to wait when it is empty, 0 when sending may go on."""
        try:
            rate = int(per_minute or 0)
        except (TypeError, ValueError):
            return 0.0
        if rate <= 0:
            return 0.0
        taken = await self._caps_store.take_token(
            f"mthrottle:{key}", rate / 60.0, max(1, rate // 60)
        )
        return 0.0 if taken.allowed else max(0.01, taken.retry_after)

    def _attempting(self, message_id: str) -> None:
        """Journal that this message is about to reach a provider."""
        self._handed.add(message_id)
        if self._journal_path is None:
            return
        if self._journal_fd < 0:
            self._journal_path.parent.mkdir(parents=True, exist_ok=True)
            self._journal_fd = os.open(
                self._journal_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600
            )
        os.write(self._journal_fd, f"{message_id}\n".encode())

    def _trim_journal(self) -> None:
        """Between batches nothing is in flight: a long journal is emptied."""
        if self._journal_fd >= 0 and os.fstat(self._journal_fd).st_size > JOURNAL_MAX_BYTES:
            os.ftruncate(self._journal_fd, 0)

    def _adapter(self, provider: Provider) -> Any:
        fingerprint = hashlib.sha256(orjson.dumps(provider.config, option=orjson.OPT_SORT_KEYS))
        key = (provider.id, fingerprint.hexdigest())
        adapter = self._adapters.get(key)
        if adapter is None:
            adapter = self._adapters[key] = KINDS[provider.kind][1].new_sender(provider.config)
        return adapter
