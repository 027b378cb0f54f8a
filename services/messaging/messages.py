"""Messages: each one a row of the outbox from the moment it is accepted
(`send` answers once the row is committed), with the template version it
will be rendered from pinned then. Senders (services/messaging/sender.py)
take due rows, and record what became of each. A caller's idempotency key
makes a retried send return the first message."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import orjson
import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from services.common import names
from services.common.call import Principal
from services.common.clock import now_us
from services.common.errors import (
    FailedPrecondition,
    FieldViolation,
    InvalidArgument,
    NotFound,
    collect,
)
from services.common.ids import random_hex_id
from services.common.pagination import PageTokens, scope
from services.db import Database
from services.messaging.suppressions import E164, normalized
from services.messaging.tables import messaging_messages
from services.messaging.templates import Template, Templates

STATES = ("queued", "sending", "sent", "aborted", "failed", "unknown")
MAX_DATA_BYTES = 64 * 1024
MAX_KEY = 200
MAX_BATCH = 1_000
DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 1_000


@dataclass(frozen=True, slots=True)
class Message:
    id: str
    tenant_id: str
    template_id: str
    template_version: int
    channel: str
    recipient: dict[str, str]
    data: dict[str, Any]
    transactional: bool
    idempotency_key: str
    campaign_id: str
    profile_id: str
    state: str
    abort_reason: str = ""
    error: str = ""
    provider_id: str = ""
    provider_message_id: str = ""
    address: str = ""
    locale: str = ""
    attempts: int = 0
    create_time: int = 0
    send_time: int = 0
    update_time: int = 0
    segments: int = 0
    encoding: str = ""
    receipt: str = ""
    receipt_time: int = 0
    optimal: bool = False  # send at the person's best hour (send_time.py)
    send_time_method: str = ""
    send_time_confidence: float = 0.0

    @property
    def name(self) -> str:
        return f"tenants/{self.tenant_id}/messages/{self.id}"


def read_recipient(recipient: Mapping[str, str], tenant_id: str) -> dict[str, str]:
    at = "message.recipient"
    bad: list[FieldViolation] = []
    out = {
        k: str(recipient.get(k, "") or "").strip() for k in ("profile", "user_id", "email", "phone")
    }
    if not any(out.values()):
        bad.append(FieldViolation(at, "required: a profile, a user id, an email or a phone"))
    if out["profile"]:
        parts = out["profile"].split("/")
        if len(parts) != 4 or parts[0] != "tenants" or parts[2] != "profiles" or not parts[3]:
            bad.append(FieldViolation(f"{at}.profile", "must be tenants/{t}/profiles/{p}"))
        elif parts[1] != tenant_id:
            bad.append(FieldViolation(f"{at}.profile", "belongs to another tenant"))
    if len(out["user_id"]) > 1024:
        bad.append(FieldViolation(f"{at}.user_id", "at most 1024 characters"))
    if out["email"] and "@" not in out["email"] or out["email"] and not normalized(out["email"]):
        bad.append(FieldViolation(f"{at}.email", "not an email address"))
    if out["phone"] and not E164.match(out["phone"]):
        bad.append(FieldViolation(f"{at}.phone", "must be E.164: + and 7-15 digits"))
    collect(bad)
    return out


class Messages:
    def __init__(
        self,
        db: Database,
        templates: Templates,
        *,
        clock: Callable[[], int] = now_us,
        page_tokens: PageTokens | None = None,
        on_queued: Callable[[list[Message]], None] | None = None,
    ) -> None:
        self._db = db
        self._templates = templates
        self._clock = clock
        self._pages = page_tokens or PageTokens("messaging-messages")
        # Told of every message stored (the tracking event; waking a sender).
        self.on_queued = on_queued

    async def send(
        self,
        caller: Principal,
        parent: str,
        *,
        template: str,
        recipient: Mapping[str, str],
        data: Mapping[str, Any],
        transactional: bool,
        idempotency_key: str,
        campaign: str = "",
        optimal: bool = False,
    ) -> tuple[Message, bool]:
        """Store a message to send; (the message, whether this call stored
        it: False when its key was used before)."""
        tenant_id = names.own_tenant(parent, caller.tenant_id)
        bad: list[FieldViolation] = []
        if not template:
            bad.append(FieldViolation("message.template", "required"))
        if len(idempotency_key) > MAX_KEY:
            bad.append(FieldViolation("message.idempotency_key", f"at most {MAX_KEY} characters"))
        if len(orjson.dumps(dict(data))) > MAX_DATA_BYTES:
            bad.append(FieldViolation("message.data", f"at most {MAX_DATA_BYTES // 1024} KiB"))
        campaign_id = ""
        if campaign:
            parts = campaign.split("/")
            if len(parts) != 4 or parts[:1] != ["tenants"] or parts[2] != "campaigns":
                bad.append(FieldViolation("message.campaign", "must be tenants/{t}/campaigns/{c}"))
            elif parts[1] != tenant_id:
                bad.append(FieldViolation("message.campaign", "belongs to another tenant"))
            else:
                campaign_id = parts[3]
        collect(bad)
        read = read_recipient(recipient, tenant_id)
        if idempotency_key:
            existing = await self._by_key(tenant_id, idempotency_key)
            if existing is not None:
                return existing, False
        template_tenant, template_id = names.parse_name(
            template, "message.template", "tenants", "templates"
        )
        if template_tenant != tenant_id:
            raise InvalidArgument.field("message.template", "belongs to another tenant")
        try:
            found = await self._templates.find(tenant_id, template_id)
        except NotFound:
            raise InvalidArgument.field("message.template", f"{template} does not exist") from None
        now = self._clock()
        message = Message(
            random_hex_id(),
            tenant_id,
            template_id,
            found.version,
            found.channel,
            read,
            dict(data),
            transactional,
            idempotency_key,
            campaign_id,
            read["profile"].split("/")[-1] if read["profile"] else "",
            "queued",
            create_time=now,
            update_time=now,
            optimal=optimal,
        )
        try:
            async with self._db.engine.begin() as conn:
                await conn.execute(messaging_messages.insert(), [_values(message)])
        except sa.exc.IntegrityError:
            existing = await self._by_key(tenant_id, idempotency_key) if idempotency_key else None
            if existing is None:
                raise
            return existing, False  # a concurrent send with the same key won
        if self.on_queued is not None:
            self.on_queued([message])
        return message, True

    async def send_many(
        self, caller: Principal, parent: str, items: Sequence[Mapping[str, Any]]
    ) -> tuple[list[Message], int]:
        """Store up to MAX_BATCH messages in one transaction; (the messages in
        order, how many were stored now). Each item as `send` takes it."""
        tenant_id = names.own_tenant(parent, caller.tenant_id)
        if not 1 <= len(items) <= MAX_BATCH:
            raise InvalidArgument.field("messages", f"1-{MAX_BATCH:,} messages a call")
        now = self._clock()
        templates: dict[str, Template] = {}
        drafts: list[Message] = []
        bad: list[FieldViolation] = []
        for n, item in enumerate(items):
            at = f"messages[{n}]"
            try:
                drafts.append(await self._draft(tenant_id, item, now, templates))
            except InvalidArgument as error:
                bad += [
                    FieldViolation(v.field.replace("message.", f"{at}.", 1), v.description)
                    for v in error.field_violations
                ] or [FieldViolation(at, str(error))]
        collect(bad)
        keys = [d.idempotency_key for d in drafts if d.idempotency_key]
        existing: dict[str, Message] = {}
        m = messaging_messages.c
        async with self._db.engine.connect() as conn:
            for first in range(0, len(keys), 500):
                for row in await conn.execute(
                    sa.select(messaging_messages).where(
                        m.tenant_id == tenant_id,
                        m.idempotency_key.in_(keys[first : first + 500]),
                    )
                ):
                    existing[row.idempotency_key] = from_row(row)
        fresh: list[Message] = []
        seen: set[str] = set()
        out: list[Message] = []
        for draft in drafts:
            key = draft.idempotency_key
            if key and (key in existing or key in seen):
                out.append(existing.get(key) or next(f for f in fresh if f.idempotency_key == key))
                continue
            if key:
                seen.add(key)
            fresh.append(draft)
            out.append(draft)
        if fresh:
            async with self._db.engine.begin() as conn:
                await conn.execute(messaging_messages.insert(), [_values(f) for f in fresh])
            if self.on_queued is not None:
                self.on_queued(fresh)
        return out, len(fresh)

    async def _draft(
        self,
        tenant_id: str,
        item: Mapping[str, Any],
        now: int,
        templates: dict[str, Template],
    ) -> Message:
        """A message checked as `send` checks it (not stored)."""
        bad: list[FieldViolation] = []
        template = str(item.get("template", ""))
        key = str(item.get("idempotency_key", ""))
        data = dict(item.get("data") or {})
        if not template:
            bad.append(FieldViolation("message.template", "required"))
        if len(key) > MAX_KEY:
            bad.append(FieldViolation("message.idempotency_key", f"at most {MAX_KEY} characters"))
        if len(orjson.dumps(data)) > MAX_DATA_BYTES:
            bad.append(FieldViolation("message.data", f"at most {MAX_DATA_BYTES // 1024} KiB"))
        collect(bad)
        read = read_recipient(item.get("recipient") or {}, tenant_id)
        found = templates.get(template)
        if found is None:
            template_tenant, template_id = names.parse_name(
                template, "message.template", "tenants", "templates"
            )
            if template_tenant != tenant_id:
                raise InvalidArgument.field("message.template", "belongs to another tenant")
            try:
                found = templates[template] = await self._templates.find(tenant_id, template_id)
            except NotFound:
                raise InvalidArgument.field(
                    "message.template", f"{template} does not exist"
                ) from None
        return Message(
            random_hex_id(),
            tenant_id,
            found.id,
            found.version,
            found.channel,
            read,
            data,
            bool(item.get("transactional")),
            key,
            "",
            read["profile"].split("/")[-1] if read["profile"] else "",
            "queued",
            create_time=now,
            update_time=now,
            optimal=bool(item.get("optimal")),
        )

    async def enqueue_many(
        self,
        tenant_id: str,
        template: Template,
        campaign_id: str,
        profile_ids: Sequence[str],
        key_prefix: str,
        optimal: bool = False,
        data: Mapping[str, Any] | None = None,
    ) -> list[Message]:
        """Messages of a template to these profiles, each keyed
        `{key_prefix}{profile id}`: a profile that has one already is
        skipped. Returns the messages stored now."""
        if not profile_ids:
            return []
        now = self._clock()
        drafts = {
            f"{key_prefix}{pid}": Message(
                random_hex_id(),
                tenant_id,
                template.id,
                template.version,
                template.channel,
                {"profile": f"tenants/{tenant_id}/profiles/{pid}"},
                dict(data or {}),
                False,
                f"{key_prefix}{pid}",
                campaign_id,
                pid,
                "queued",
                create_time=now,
                update_time=now,
                optimal=optimal,
            )
            for pid in profile_ids
        }
        insert = (sqlite_insert if self._db.is_sqlite else postgresql_insert)(messaging_messages)
        m = messaging_messages.c
        # One statement with many parameter sets (compiled once and cached;
        # SQLAlchemy batches it as "insert many values" with RETURNING),
        # not a statement of many VALUES (compiled anew for every batch: at
        # broadcast rates, most of the process's time went to compiling).
        statement = insert.on_conflict_do_nothing(
            index_elements=[m.tenant_id, m.idempotency_key],
            index_where=m.idempotency_key.is_not(None),
        ).returning(m.idempotency_key)
        async with self._db.engine.begin() as conn:
            result = await conn.execute(statement, [_values(d) for d in drafts.values()])
            stored = [drafts[key] for key in result.scalars()]
        if stored and self.on_queued is not None:
            self.on_queued(stored)
        return stored

    async def replay(self, caller: Principal, name: str) -> Message:
        """Queue a message again: a FAILED or UNKNOWN one, or a delivered
        webhook (receivers drop repeats by its id); FailedPrecondition
        otherwise."""
        found = await self.get(caller, name)
        if not (
            found.state in ("failed", "unknown")
            or (found.state == "sent" and found.channel == "webhook")
        ):
            raise FailedPrecondition(
                f"{name} is {found.state.upper()}: only FAILED or UNKNOWN messages (or a sent "
                "webhook) are replayed",
                reason="NOT_REPLAYABLE",
            )
        now = self._clock()
        m = messaging_messages.c
        async with self._db.engine.begin() as conn:
            done = await conn.execute(
                messaging_messages.update()
                .where(m.id == found.id, m.state == found.state)
                .values(state="queued", attempts=0, next_attempt_time=now, error="",
                        abort_reason="", sender="", update_time=now)
            )  # fmt: skip
        if not done.rowcount:
            raise FailedPrecondition(f"{name} changed meanwhile; try again")
        replayed = await self.get(caller, name)
        if self.on_queued is not None:
            self.on_queued([replayed])
        return replayed

    async def record_receipt(
        self, tenant_id: str, provider_id: str, provider_message_id: str, receipt: str, at: int
    ) -> Message | None:
        """Note a provider's receipt on the message it names (None: no such
        message of that provider)."""
        m = messaging_messages.c
        where = sa.and_(
            m.tenant_id == tenant_id,
            m.provider_message_id == provider_message_id,
            m.provider_id == provider_id,
        )
        async with self._db.engine.begin() as conn:
            row = (await conn.execute(sa.select(messaging_messages).where(where))).first()
            if row is None:
                return None
            await conn.execute(
                messaging_messages.update()
                .where(m.id == row.id)
                .values(receipt=receipt[:60], receipt_time=at, update_time=at)
            )
        return from_row(row)

    async def by_key(self, tenant_id: str, key: str) -> Message | None:
        """The message of an idempotency key, if any."""
        return await self._by_key(tenant_id, key)

    async def _by_key(self, tenant_id: str, key: str) -> Message | None:
        m = messaging_messages.c
        async with self._db.engine.connect() as conn:
            row = (
                await conn.execute(
                    sa.select(messaging_messages).where(
                        m.tenant_id == tenant_id, m.idempotency_key == key
                    )
                )
            ).first()
        return None if row is None else from_row(row)

    async def find(self, tenant_id: str, message_id: str) -> Message | None:
        m = messaging_messages.c
        async with self._db.engine.connect() as conn:
            row = (
                await conn.execute(
                    sa.select(messaging_messages).where(
                        m.tenant_id == tenant_id, m.id == message_id
                    )
                )
            ).first()
        return None if row is None else from_row(row)

    async def get(self, caller: Principal, name: str) -> Message:
        tenant_id, message_id = names.parse_name(name, "name", "tenants", "messages")
        names.require_same_tenant(name, "name", caller.tenant_id)
        m = messaging_messages.c
        async with self._db.engine.connect() as conn:
            row = (
                await conn.execute(
                    sa.select(messaging_messages).where(
                        m.tenant_id == tenant_id, m.id == message_id
                    )
                )
            ).first()
        if row is None:
            raise NotFound(f"{name} not found", metadata={"resource": name})
        return from_row(row)

    async def list_messages(
        self,
        caller: Principal,
        parent: str,
        *,
        page_size: int = 0,
        page_token: str = "",
        state: str = "",
        profile: str = "",
    ) -> tuple[list[Message], str]:
        tenant_id = names.own_tenant(parent, caller.tenant_id)
        if not 0 <= page_size <= MAX_PAGE_SIZE:
            raise InvalidArgument.field("page_size", f"must be 0-{MAX_PAGE_SIZE}")
        if state and state not in STATES:
            raise InvalidArgument.field("state", "not a message state")
        profile_id = ""
        if profile:
            _, profile_id = names.parse_name(profile, "profile", "tenants", "profiles")
            names.require_same_tenant(profile, "profile", caller.tenant_id)
        size = page_size or DEFAULT_PAGE_SIZE
        request = scope("messaging.ListMessages", tenant_id, state, profile_id)
        cursor = self._pages.decode(request, page_token, "t", "id")
        m = messaging_messages.c
        query = (
            sa.select(messaging_messages)
            .where(m.tenant_id == tenant_id)
            .order_by(m.create_time.desc(), m.id.desc())
            .limit(size + 1)
        )
        if state:
            query = query.where(m.state == state)
        if profile_id:
            query = query.where(m.profile_id == profile_id)
        if cursor is not None:
            query = query.where(
                sa.or_(
                    m.create_time < cursor["t"],
                    sa.and_(m.create_time == cursor["t"], m.id < cursor["id"]),
                )
            )
        async with self._db.engine.connect() as conn:
            rows = (await conn.execute(query)).all()
        found = [from_row(r) for r in rows[:size]]
        token = ""
        if len(rows) > size:
            token = self._pages.encode(request, {"t": found[-1].create_time, "id": found[-1].id})
        return found, token


def _values(message: Message) -> dict[str, Any]:
    return {
        "id": message.id,
        "tenant_id": message.tenant_id,
        "idempotency_key": message.idempotency_key or None,
        "template_id": message.template_id,
        "template_version": message.template_version,
        "channel": message.channel,
        "recipient": message.recipient,
        "data": message.data,
        "transactional": message.transactional,
        "campaign_id": message.campaign_id,
        "profile_id": message.profile_id,
        "state": message.state,
        "abort_reason": "",
        "error": "",
        "provider_id": "",
        "provider_message_id": "",
        "address": "",
        "locale": "",
        "attempts": 0,
        "next_attempt_time": message.create_time,
        "lease_until": 0,
        "sender": "",
        "segments": 0,
        "encoding": "",
        "receipt": "",
        "receipt_time": 0,
        "optimal": message.optimal,
        "send_time_method": "",
        "send_time_confidence": 0.0,
        "create_time": message.create_time,
        "send_time": 0,
        "update_time": message.update_time,
    }


def from_row(row: Any) -> Message:
    return Message(
        row.id,
        row.tenant_id,
        row.template_id,
        row.template_version,
        row.channel,
        dict(row.recipient),
        dict(row.data),
        bool(row.transactional),
        row.idempotency_key or "",
        row.campaign_id,
        row.profile_id,
        row.state,
        row.abort_reason,
        row.error,
        row.provider_id,
        row.provider_message_id,
        row.address,
        row.locale,
        row.attempts,
        row.create_time,
        row.send_time,
        row.update_time,
        row.segments,
        row.encoding,
        row.receipt,
        row.receipt_time,
        bool(row.optimal),
        row.send_time_method,
        float(row.send_time_confidence),
    )
