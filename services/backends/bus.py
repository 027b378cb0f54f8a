"""Message buses: an in-process default and NATS JetStream.

Both follow NATS subject rules so code written against one runs on the other:
subjects are dot-separated tokens, ``*`` matches exactly one token and ``>``
matches one or more trailing tokens; subscribers that share a ``queue`` name
split the messages between them; a handler that returns acknowledges the
message and one that raises gets it redelivered, a bounded number of times
(``max_attempts`` / ``max_deliver``, default 5) with a growing delay, after
which it is logged and dropped.

Trace context: ``headers`` are passed through unchanged, end to end. The caller
puts the W3C ``traceparent`` / ``tracestate`` there when publishing and reads
them back from ``BusMessage.headers`` in the handler; the bus never adds, drops
or rewrites a header (NatsBus may show server-side ``Nats-*`` headers only if a
publisher set them).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import logging
import re
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from types import MappingProxyType
from typing import Any

from services.backends.interfaces import BusMessage, MessageBus, MessageHandler, Subscription

__all__ = [
    "DEFAULT_STREAM_SUBJECTS",
    "InProcessBus",
    "NatsBus",
    "open_message_bus",
    "pattern_covers",
    "subject_matches",
]

log = logging.getLogger(__name__)

#: Subjects the default JetStream stream stores. A stream on ``>`` would also
#: capture JetStream's own ``$JS.API.>`` requests and every ``_INBOX`` reply
#: (nats-server 2.15 refuses it: err_code 10052 "capturing all subjects requires
#: no-ack to be true"), so the stream lists the application's subject trees.
DEFAULT_STREAM_SUBJECTS: tuple[str, ...] = ("campaign-express.>", "campaign-bids.>", "audit.>")

_DEFAULT_ATTEMPTS = 5

#: Explicit waits of the NATS client (docs/operations.md, "Client timeouts").
NATS_CONNECT_TIMEOUT_SECONDS = 2.0
NATS_PUBLISH_TIMEOUT_SECONDS = 2.0


# --------------------------------------------------------------------------- subjects


def _split(subject: str, *, wildcards: bool) -> list[str]:
    if not subject:
        raise ValueError("subject must not be empty")
    tokens = subject.split(".")
    for i, tok in enumerate(tokens):
        if not tok or any(c.isspace() for c in tok):
            raise ValueError(f"invalid subject {subject!r}: empty token or whitespace")
        if tok in ("*", ">"):
            if not wildcards:
                raise ValueError(f"cannot publish to wildcard subject {subject!r}")
            if tok == ">" and i != len(tokens) - 1:
                raise ValueError(f"'>' must be the last token in {subject!r}")
        elif "*" in tok or ">" in tok:
            raise ValueError(f"wildcards must be whole tokens in {subject!r}")
    return tokens


def _match_tokens(pattern: Sequence[str], subject: Sequence[str]) -> bool:
    for i, tok in enumerate(pattern):
        if tok == ">":
            return len(subject) > i
        if i >= len(subject) or (tok != "*" and tok != subject[i]):
            return False
    return len(pattern) == len(subject)


def subject_matches(pattern: str, subject: str) -> bool:
    """Whether the literal `subject` is delivered to a subscription on `pattern`."""
    return _match_tokens(_split(pattern, wildcards=True), _split(subject, wildcards=False))


def pattern_covers(outer: str, inner: str) -> bool:
    """Whether every subject matched by `inner` is also matched by `outer`
    (used to check that a subscription filter lies inside the stream)."""
    out = _split(outer, wildcards=True)
    inn = _split(inner, wildcards=True)
    for i, tok in enumerate(out):
        if tok == ">":
            return len(inn) > i
        if i >= len(inn) or inn[i] == ">":
            return False
        if tok != "*" and (inn[i] == "*" or inn[i] != tok):
            return False
    return len(out) == len(inn)


def _frozen_headers(headers: Mapping[str, str] | None) -> Mapping[str, str]:
    return MappingProxyType(dict(headers or {}))


def _backoff(attempt: int, base: float, cap: float) -> float:
    return float(min(cap, base * (2 ** max(0, attempt - 1))))


# --------------------------------------------------------------------------- in-process


class _LocalSub:
    __slots__ = ("active", "handler", "pattern", "queue", "tokens")

    def __init__(self, pattern: str, handler: MessageHandler, queue: str | None) -> None:
        self.pattern = pattern
        self.tokens = _split(pattern, wildcards=True)
        self.handler = handler
        self.queue = queue
        self.active = True


def _if_active(sub: _LocalSub) -> _LocalSub | None:
    return sub if sub.active else None


class _LocalSubscription:
    def __init__(self, bus: InProcessBus, sub: _LocalSub) -> None:
        self._bus = bus
        self._sub = sub

    async def unsubscribe(self) -> None:
        self._bus._remove(self._sub)


class InProcessBus:
    """A bus inside one process, for development, tests and single-node setups.

    Not durable: messages live only in memory and a message published with no
    matching subscriber is dropped. Each delivery runs as its own asyncio task,
    so a slow handler does not hold up others. Queue groups pick members round
    robin; a redelivery picks again, so another member may get the retry.
    """

    def __init__(
        self,
        *,
        max_attempts: int = _DEFAULT_ATTEMPTS,
        backoff_seconds: float = 0.05,
        max_backoff_seconds: float = 1.0,
    ) -> None:
        if max_attempts < 1:
            raise ValueError("max_attempts must be >= 1")
        self._max_attempts = max_attempts
        self._backoff = backoff_seconds
        self._max_backoff = max_backoff_seconds
        self._subs: list[_LocalSub] = []
        self._round_robin: dict[str, int] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._closed = False

    def _remove(self, sub: _LocalSub) -> None:
        sub.active = False
        with contextlib.suppress(ValueError):
            self._subs.remove(sub)

    def _pick_member(self, queue: str, subject: list[str]) -> _LocalSub | None:
        members = [
            s
            for s in self._subs
            if s.queue == queue and s.active and _match_tokens(s.tokens, subject)
        ]
        if not members:
            return None
        n = self._round_robin.get(queue, 0)
        self._round_robin[queue] = n + 1
        return members[n % len(members)]

    def _spawn(self, msg: BusMessage, pick: Callable[[], _LocalSub | None]) -> None:
        task = asyncio.get_running_loop().create_task(self._deliver(msg, pick))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _deliver(self, msg: BusMessage, pick: Callable[[], _LocalSub | None]) -> None:
        for attempt in range(1, self._max_attempts + 1):
            sub = pick()
            if sub is None:  # unsubscribed meanwhile: nobody left to deliver to
                return
            try:
                await sub.handler(msg)
                return
            except Exception:
                if attempt >= self._max_attempts:
                    log.exception(
                        "bus: dropping message on %s after %d failed attempts",
                        msg.subject,
                        attempt,
                    )
                    return
                log.warning(
                    "bus: handler for %s failed (attempt %d/%d), redelivering",
                    msg.subject,
                    attempt,
                    self._max_attempts,
                    exc_info=True,
                )
                await asyncio.sleep(_backoff(attempt, self._backoff, self._max_backoff))

    async def publish(
        self, subject: str, data: bytes, headers: Mapping[str, str] | None = None
    ) -> None:
        if self._closed:
            raise RuntimeError("InProcessBus is closed")
        tokens = _split(subject, wildcards=False)
        msg = BusMessage(subject=subject, data=bytes(data), headers=_frozen_headers(headers))
        queues: list[str] = []
        for sub in self._subs:
            if not _match_tokens(sub.tokens, tokens):
                continue
            if sub.queue is None:
                self._spawn(msg, functools.partial(_if_active, sub))
            elif sub.queue not in queues:
                queues.append(sub.queue)
        for queue in queues:
            self._spawn(msg, functools.partial(self._pick_member, queue, tokens))

    def on_reconnect(self, callback: Callable[[], Awaitable[None]]) -> None:
        """Never called: an in-process bus is never cut off."""

    async def subscribe(
        self, subject: str, handler: MessageHandler, queue: str | None = None
    ) -> Subscription:
        """Deliver messages of `subject` (NATS wildcards allowed) to `handler`.
        Subscribers sharing a `queue` split the messages between them."""
        if self._closed:
            raise RuntimeError("InProcessBus is closed")
        sub = _LocalSub(subject, handler, queue or None)
        self._subs.append(sub)
        return _LocalSubscription(self, sub)

    async def ping(self) -> bool:
        return not self._closed

    async def close(self) -> None:
        """Refuse new messages, then wait for in-flight handlers (and their
        retries) to finish."""
        self._closed = True
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)
        for sub in list(self._subs):
            self._remove(sub)


# --------------------------------------------------------------------------- NATS


def _consumer_name(queue: str, subject: str) -> str:
    """A durable consumer name that is stable for (queue, subject), valid for
    JetStream (no '.', '*', '>', whitespace or path separators) and unique even
    when sanitizing maps two inputs to the same text."""
    raw = f"{queue}__{subject}"
    clean = re.sub(r"[^A-Za-z0-9_-]", "_", raw)[:64]
    digest = hashlib.sha256(raw.encode()).hexdigest()[:10]
    return f"{clean}_{digest}"


class _NatsSubscription:
    def __init__(
        self,
        bus: NatsBus,
        psub: Any,
        stream: str,
        consumer: str,
        *,
        subject: str,
        handler: MessageHandler,
        queue: str | None,
    ):
        self._bus = bus
        self._psub = psub
        self._stream = stream
        self._consumer = consumer
        self._ephemeral = not queue
        self._subject = subject
        self._handler = handler
        self._queue = queue
        self._done = False

    async def restore(self) -> bool:
        """After a reconnect: re-create the consumer when the server lost it
        (restarted without its store, or an ephemeral consumer it dropped) and
        bind to it again. Returns whether it had to."""
        from nats.js.errors import NotFoundError

        if self._done:
            return False
        try:
            await self._bus._jetstream().consumer_info(self._stream, self._consumer)
            return False
        except NotFoundError:
            pass
        inner = getattr(self._psub, "_sub", self._psub)
        with contextlib.suppress(Exception):
            await inner.unsubscribe()
        self._psub, self._consumer = await self._bus._bind(
            self._subject, self._handler, self._queue
        )
        return True

    async def unsubscribe(self) -> None:
        """Stop receiving: buffered messages are still handled (drain). A queue
        group's durable consumer is kept for the other members and for restarts;
        a plain subscription's ephemeral consumer is deleted."""
        if self._done:
            return
        self._done = True
        self._bus._subs.discard(self)
        inner = getattr(self._psub, "_sub", self._psub)
        try:
            await inner.drain()
        except Exception:
            log.debug("bus: drain of %s failed", self._consumer, exc_info=True)
        if self._ephemeral:
            try:
                await self._bus._jetstream().delete_consumer(self._stream, self._consumer)
            except Exception:
                log.debug("bus: could not delete consumer %s", self._consumer, exc_info=True)


class NatsBus:
    """NATS JetStream bus: durable, shared by every process of a deployment.

    On connect it creates, or updates, one stream (file storage, limits
    retention, ``max_age``) over `subjects`: a list of subject trees such as
    ``"campaign-express.>"``. Publishing to a subject outside them is refused
    with ValueError (JetStream would otherwise answer "no responders").
    Patterns starting with a wildcard or ``$`` / ``_INBOX`` are rejected because
    they would capture JetStream's API and reply subjects.

    subscribe() creates a push consumer with explicit acks, ``max_deliver``
    attempts and a growing NAK delay:
    - with `queue`: a durable consumer named after queue+subject and bound to a
      deliver group, so every process subscribing with the same queue shares
      the work, and messages published while all members are down wait for
      them. New consumers start at new messages (DeliverPolicy.NEW).
    - without: an ephemeral consumer that sees messages published from now on
      and is deleted on unsubscribe.
    Handlers run as tasks (at most `max_in_flight` at once); the message is
    acked when the handler returns, NAKed when it raises, and terminated
    (logged and dropped) when it raises on the last allowed delivery.
    """

    def __init__(
        self,
        url: str,
        stream_name: str = "CAMPAIGN_EXPRESS",
        subjects: Iterable[str] = DEFAULT_STREAM_SUBJECTS,
        *,
        max_deliver: int = _DEFAULT_ATTEMPTS,
        ack_wait_seconds: float = 30.0,
        max_age_seconds: float = 7 * 24 * 3600.0,
        backoff_seconds: float = 0.1,
        max_backoff_seconds: float = 5.0,
        max_in_flight: int = 256,
        connect_timeout: float = NATS_CONNECT_TIMEOUT_SECONDS,
        publish_timeout: float = NATS_PUBLISH_TIMEOUT_SECONDS,
        client_name: str = "campaign-express",
    ) -> None:
        self._url = url
        self._stream = stream_name
        self._subjects = tuple(subjects)
        if not self._subjects:
            raise ValueError("NatsBus needs at least one stream subject")
        for pattern in self._subjects:
            first = _split(pattern, wildcards=True)[0]
            if first in ("*", ">") or first.startswith("$") or first == "_INBOX":
                raise ValueError(
                    f"stream subject {pattern!r} would capture JetStream API or reply "
                    "subjects; name an application subject tree such as 'orders.>'"
                )
        if max_deliver < 1:
            raise ValueError("max_deliver must be >= 1")
        self._max_deliver = max_deliver
        self._ack_wait = ack_wait_seconds
        self._max_age = max_age_seconds
        self._backoff = backoff_seconds
        self._max_backoff = max_backoff_seconds
        self._in_flight = asyncio.Semaphore(max_in_flight)
        self._connect_timeout = connect_timeout
        self._publish_timeout = publish_timeout
        self._client_name = client_name
        self._nc: Any = None
        self._js: Any = None
        self._subs: set[_NatsSubscription] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._closed = False
        self._reconnect_listeners: list[Callable[[], Awaitable[None]]] = []
        self._recovering: asyncio.Task[None] | None = None

    @property
    def subjects(self) -> tuple[str, ...]:
        return self._subjects

    def _jetstream(self) -> Any:
        if self._js is None:
            raise RuntimeError("NatsBus is not connected; await connect() first")
        return self._js

    async def connect(self) -> None:
        """Connect and make sure the stream exists with the configured subjects."""
        import nats

        if self._nc is not None:
            return
        self._nc = await nats.connect(
            [server.strip() for server in self._url.split(",") if server.strip()],
            name=self._client_name,
            connect_timeout=self._connect_timeout,
            allow_reconnect=True,
            max_reconnect_attempts=-1,
            reconnect_time_wait=0.5,
            error_cb=self._on_error,
            reconnected_cb=self._on_reconnected,
        )
        self._js = self._nc.jetstream()
        try:
            await self._ensure_stream()
        except BaseException:
            await self._nc.close()
            self._nc = self._js = None
            raise

    async def _on_error(self, exc: Exception) -> None:
        log.debug("bus: NATS connection error: %s", exc)  # the backend watch logs outages

    def on_reconnect(self, callback: Callable[[], Awaitable[None]]) -> None:
        """Call `callback` after each reconnect, once the stream and the
        subscriptions' consumers are back: what was published while this
        process was cut off may not have reached it (e.g. to re-read state)."""
        self._reconnect_listeners.append(callback)

    async def _on_reconnected(self) -> None:
        if self._recovering is None or self._recovering.done():
            self._recovering = asyncio.get_running_loop().create_task(self._recover())

    async def _recover(self) -> None:
        """The server may have come back without its JetStream store: make
        the stream and every consumer again (retrying until JetStream
        answers), then tell the listeners."""
        delay = 0.2
        while not self._closed:
            try:
                await self._ensure_stream()
                restored = 0
                for sub in list(self._subs):
                    restored += await sub.restore()
                break
            except Exception as exc:  # noqa: BLE001 - JetStream not ready yet: again
                log.debug("bus: recovery after reconnect failed (%s); retrying", exc)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
        else:
            return
        if restored:
            log.warning("bus: re-created %d consumers the server had lost", restored)
        for callback in list(self._reconnect_listeners):
            try:
                await callback()
            except Exception:
                log.warning("bus: a reconnect listener failed", exc_info=True)

    async def _ensure_stream(self) -> None:
        from nats.js.api import RetentionPolicy, StorageType, StreamConfig
        from nats.js.errors import BadRequestError, NotFoundError

        js = self._jetstream()
        wanted = StreamConfig(
            name=self._stream,
            subjects=list(self._subjects),
            storage=StorageType.FILE,
            retention=RetentionPolicy.LIMITS,
            max_age=self._max_age,
        )
        try:
            info = await js.stream_info(self._stream)
        except NotFoundError:
            try:
                await js.add_stream(wanted)
                return
            except BadRequestError:  # another process created it first
                info = await js.stream_info(self._stream)
        cfg = info.config
        if sorted(cfg.subjects or []) != sorted(self._subjects) or cfg.max_age != self._max_age:
            cfg.subjects = list(self._subjects)
            cfg.max_age = self._max_age
            await js.update_stream(cfg)

    def _check_subject(self, pattern: str) -> None:
        if not any(pattern_covers(stream_subject, pattern) for stream_subject in self._subjects):
            raise ValueError(
                f"subject {pattern!r} is outside the JetStream stream {self._stream!r} "
                f"(subjects {list(self._subjects)}); add its subject tree to the stream"
            )

    async def publish(
        self, subject: str, data: bytes, headers: Mapping[str, str] | None = None
    ) -> None:
        if self._closed:
            raise RuntimeError("NatsBus is closed")
        _split(subject, wildcards=False)
        self._check_subject(subject)
        from nats.errors import NoRespondersError
        from nats.js.errors import NoStreamResponseError, NotFoundError

        try:
            await self._jetstream().publish(
                subject,
                bytes(data),
                timeout=self._publish_timeout,
                headers=dict(headers or {}) or None,
            )
        except (NoStreamResponseError, NoRespondersError, NotFoundError):
            # The server came back without its store: make the stream again, once.
            await self._ensure_stream()
            await self._jetstream().publish(
                subject,
                bytes(data),
                timeout=self._publish_timeout,
                headers=dict(headers or {}) or None,
            )

    async def subscribe(
        self, subject: str, handler: MessageHandler, queue: str | None = None
    ) -> Subscription:
        """Deliver messages of `subject` (NATS wildcards allowed) to `handler`.
        Subscribers sharing a `queue` split the messages between them."""
        if self._closed:
            raise RuntimeError("NatsBus is closed")
        _split(subject, wildcards=True)
        self._check_subject(subject)
        psub, consumer = await self._bind(subject, handler, queue)
        sub = _NatsSubscription(
            self, psub, self._stream, consumer, subject=subject, handler=handler, queue=queue
        )
        self._subs.add(sub)
        return sub

    async def _bind(
        self, subject: str, handler: MessageHandler, queue: str | None
    ) -> tuple[Any, str]:
        """Create (or find) the subscription's consumer and bind to it."""
        from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
        from nats.js.errors import BadRequestError

        js = self._jetstream()
        config = ConsumerConfig(
            filter_subject=subject,
            ack_policy=AckPolicy.EXPLICIT,
            deliver_policy=DeliverPolicy.NEW,
            ack_wait=self._ack_wait,
            max_deliver=self._max_deliver,
        )
        if queue:
            name = _consumer_name(queue, subject)
            config.durable_name = name
            config.deliver_group = queue
            # Deterministic, so processes racing to create it send the same config.
            config.deliver_subject = f"_CE_DELIVER.{self._stream}.{name}"
            try:
                info = await js.add_consumer(self._stream, config)
            except BadRequestError:  # exists with a config we cannot update: use it
                info = await js.consumer_info(self._stream, name)
        else:
            config.deliver_subject = self._nc.new_inbox()
            info = await js.add_consumer(self._stream, config)
        psub = await js.subscribe_bind(
            stream=self._stream,
            config=info.config,
            consumer=info.name,
            cb=self._callback(handler),
            manual_ack=True,
        )
        return psub, str(info.name)

    def _callback(self, handler: MessageHandler) -> Callable[[Any], Any]:
        async def on_message(msg: Any) -> None:
            await self._in_flight.acquire()
            task = asyncio.get_running_loop().create_task(self._handle(msg, handler))
            self._tasks.add(task)
            task.add_done_callback(self._task_done)

        return on_message

    def _task_done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        self._in_flight.release()

    async def _handle(self, msg: Any, handler: MessageHandler) -> None:
        message = BusMessage(
            subject=msg.subject, data=msg.data, headers=_frozen_headers(msg.headers)
        )
        try:
            await handler(message)
        except Exception:
            attempt = int(msg.metadata.num_delivered)
            try:
                if attempt >= self._max_deliver:
                    log.exception(
                        "bus: dropping message on %s after %d failed deliveries",
                        msg.subject,
                        attempt,
                    )
                    await msg.term()
                else:
                    log.warning(
                        "bus: handler for %s failed (delivery %d/%d), redelivering",
                        msg.subject,
                        attempt,
                        self._max_deliver,
                        exc_info=True,
                    )
                    await msg.nak(delay=_backoff(attempt, self._backoff, self._max_backoff))
            except Exception:
                log.warning("bus: could not NAK message on %s", msg.subject, exc_info=True)
            return
        try:
            await msg.ack()
        except Exception:
            log.warning("bus: could not ack message on %s", msg.subject, exc_info=True)

    async def ping(self) -> bool:
        nc = self._nc
        if nc is None or self._closed or not nc.is_connected:
            return False
        try:
            # A request, not nc.flush(): a flush that times out leaves its
            # cancelled pong future queued in nats-py, and the late PONG then
            # fails the client's read loop (InvalidStateError) for good. A
            # request's future is dropped from the response map when it is
            # cancelled, so a frozen server costs this call its timeout and
            # nothing after. Connected is not enough anyway: the stream must
            # be there to publish to.
            await asyncio.wait_for(self._jetstream().stream_info(self._stream), 2)
        except Exception:
            await self._on_reconnected()  # repair in the background, if it can be
            return False
        return True

    async def close(self) -> None:
        """Drain subscriptions, wait for in-flight handlers to ack, then drain
        the connection (flushing pending publishes)."""
        if self._closed:
            return
        self._closed = True
        if self._recovering is not None and not self._recovering.done():
            self._recovering.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._recovering
        for sub in list(self._subs):
            await sub.unsubscribe()
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)
        if self._nc is not None and not self._nc.is_closed:
            try:
                await self._nc.drain()
            except Exception:
                log.debug("bus: drain failed, closing", exc_info=True)
                await self._nc.close()


async def open_message_bus(url: str | None) -> MessageBus:
    """Pick the bus from NATS_URL: unset/empty or ``memory://`` gives the
    in-process bus; ``nats://`` or ``tls://`` (several comma-separated servers
    allowed) gives a connected NatsBus with the default stream."""
    if not url or url == "memory://":
        return InProcessBus()
    scheme = url.split("://", 1)[0].lower() if "://" in url else ""
    if scheme in ("nats", "tls"):
        bus = NatsBus(url)
        await bus.connect()
        return bus
    raise ValueError(
        f"NATS_URL must be empty, memory://, nats:// or tls://; got a URL with scheme {scheme!r}"
    )


#: How long an API call waits for a best-effort publish before going on.
BEST_EFFORT_PUBLISH_SECONDS = 0.25


class BestEffortPublisher:
    """Publishes that must not hold up the call making them (change events,
    the bus copy of an audit row: the database has the record): each waits
    at most `budget`; one still pending then goes on in the background (the
    client may be reconnecting) with its failure reported, and at most
    `max_pending` wait so (the rest are dropped and reported)."""

    def __init__(
        self,
        bus: MessageBus,
        *,
        report_failure: Callable[[BaseException], None] | None = None,
        budget: float = BEST_EFFORT_PUBLISH_SECONDS,
        max_pending: int = 1000,
    ) -> None:
        self._bus = bus
        self._report = report_failure
        self._budget = budget
        self._max_pending = max_pending
        self._pending: set[asyncio.Future[None]] = set()

    async def publish(
        self, subject: str, data: bytes, headers: Mapping[str, str] | None = None
    ) -> bool:
        """True when the bus took it within the budget."""
        if len(self._pending) >= self._max_pending:
            self._failed(TimeoutError(f"{len(self._pending)} publishes already pending"))
            return False
        task = asyncio.ensure_future(self._bus.publish(subject, data, headers))
        try:
            await asyncio.wait_for(asyncio.shield(task), self._budget)
            return True
        except TimeoutError:
            self._pending.add(task)
            task.add_done_callback(self._settled)
            return False
        except Exception as exc:  # noqa: BLE001 - best effort: reported, not raised
            self._failed(exc)
            return False

    def _settled(self, task: asyncio.Future[None]) -> None:
        self._pending.discard(task)
        if not task.cancelled() and task.exception() is not None:
            self._failed(task.exception())  # type: ignore[arg-type]

    def _failed(self, error: BaseException) -> None:
        if self._report is not None:
            self._report(error)
        else:
            log.warning("bus: a best-effort publish failed: %s", error)

    async def close(self) -> None:
        pending = list(self._pending)
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
