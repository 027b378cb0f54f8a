"""Templates: Liquid text per locale, versioned. Every change makes a new
version (kept for good: a message names the version it was rendered from);
saving checks every part's syntax and names the part, line and column of
the first error (`template.contents[en].html: line 3, column 7: ...`)."""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

from services.common import names
from services.common.call import Principal
from services.common.clock import now_us
from services.common.errors import FieldViolation, InvalidArgument, NotFound, collect
from services.common.ids import random_hex_id
from services.common.pagination import PageTokens, scope
from services.common.validation import check_text
from services.db import Database
from services.messaging import rendering
from services.messaging.connected import Source, read_sources
from services.messaging.tables import messaging_template_versions, messaging_templates

CHANNELS = ("email", "sms", "push", "web_push", "whatsapp", "webhook", "in_app", "content_card")
MAX_LOCALES = 50
DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 1_000
_LOCALE = re.compile(r"^[A-Za-z]{2,3}([-_][A-Za-z0-9]{2,8}){0,3}$")


@dataclass(frozen=True, slots=True)
class Template:
    id: str
    tenant_id: str
    display_name: str
    channel: str
    version: int
    contents: dict[str, dict[str, str]]  # locale -> {subject, html, text}
    default_locale: str
    strict: bool
    create_time: int
    update_time: int
    connected: tuple[Source, ...] = ()
    group_id: str = ""  # its subscription group ("" none)

    @property
    def name(self) -> str:
        return f"tenants/{self.tenant_id}/templates/{self.id}"


def read_contents(contents: Any, default_locale: str, channel: str) -> dict[str, dict[str, str]]:
    """Contents checked: locales, parts, sizes, Liquid syntax; InvalidArgument
    naming every bad field."""
    bad: list[FieldViolation] = []
    at = "template.contents"
    if not isinstance(contents, Mapping) or not contents:
        raise InvalidArgument.field(at, "required: the content of at least one locale")
    if len(contents) > MAX_LOCALES:
        raise InvalidArgument.field(at, f"at most {MAX_LOCALES} locales")
    out: dict[str, dict[str, str]] = {}
    for locale, content in contents.items():
        where = f"{at}[{locale}]"
        if not isinstance(locale, str) or not _LOCALE.match(locale):
            bad.append(FieldViolation(where, "the locale must look like en, pt-BR or zh-Hant-TW"))
            continue
        if not isinstance(content, Mapping):
            bad.append(FieldViolation(where, "must be an object of subject, html, text"))
            continue
        parts: dict[str, str] = {}
        for part in rendering.PARTS:
            text = content.get(part, "") or ""
            if not isinstance(text, str):
                bad.append(FieldViolation(f"{where}.{part}", "must be text"))
                continue
            if len(text) > rendering.MAX_TEMPLATE_CHARS:
                bad.append(
                    FieldViolation(
                        f"{where}.{part}", f"at most {rendering.MAX_TEMPLATE_CHARS:,} characters"
                    )
                )
                continue
            problem = rendering.check(text)
            if problem is not None:
                bad.append(FieldViolation(f"{where}.{part}", str(problem)))
            parts[part] = text
        if not any(parts.values()):
            bad.append(FieldViolation(where, "needs a subject, html or text"))
        elif channel == "email" and not (parts.get("html") or parts.get("text")):
            bad.append(FieldViolation(where, "an email needs html or text"))
        out[locale] = parts
    if default_locale not in contents:
        bad.append(FieldViolation("template.default_locale", f"{default_locale!r} has no content"))
    collect(bad)
    return out


class Templates:
    def __init__(
        self,
        db: Database,
        *,
        clock: Callable[[], int] = now_us,
        page_tokens: PageTokens | None = None,
    ) -> None:
        self._db = db
        self._clock = clock
        self._pages = page_tokens or PageTokens("messaging-templates")
        self._versions: dict[tuple[str, int], Template] = {}  # immutable: cached
        # Whether a subscription group exists (the preference center's).
        self.group_exists: Callable[[str, str], Awaitable[bool]] | None = None

    async def create(
        self,
        caller: Principal,
        parent: str,
        *,
        display_name: str,
        channel: str,
        contents: Any,
        default_locale: str,
        strict: bool,
        connected: Sequence[Mapping[str, Any]] = (),
        subscription_group: str = "",
    ) -> Template:
        tenant_id = names.own_tenant(parent, caller.tenant_id)
        bad: list[FieldViolation] = []
        check_text(bad, "template.display_name", display_name, required=True, max_len=200)
        if channel not in CHANNELS:
            bad.append(FieldViolation("template.channel", "required: a message channel"))
        sources, wrong = read_sources(connected)
        collect(bad + wrong)
        group_id = await self._group(tenant_id, subscription_group)
        locale = default_locale or "en"
        read = read_contents(contents, locale, channel)
        now = self._clock()
        template = Template(
            random_hex_id(),
            tenant_id,
            display_name,
            channel,
            1,
            read,
            locale,
            strict,
            now,
            now,
            sources,
            group_id,
        )
        async with self._db.engine.begin() as conn:
            await conn.execute(
                messaging_templates.insert().values(
                    id=template.id,
                    tenant_id=tenant_id,
                    display_name=display_name,
                    channel=channel,
                    version=1,
                    create_time=now,
                    update_time=now,
                )
            )
            await self._insert_version(conn, template)
        return template

    async def update(
        self,
        caller: Principal,
        name: str,
        paths: Sequence[str],
        *,
        display_name: str,
        contents: Any,
        default_locale: str,
        strict: bool,
        connected: Sequence[Mapping[str, Any]] = (),
        subscription_group: str = "",
    ) -> Template:
        """A new version with the fields in `paths` changed (empty: all)."""
        tenant_id, template_id = _template(caller, name, "template.name")
        allowed = {
            "display_name",
            "contents",
            "default_locale",
            "strict",
            "connected_content",
            "subscription_group",
        }
        fields = set(paths) or allowed
        if unknown := fields - allowed:
            raise InvalidArgument.field("update_mask", f"{sorted(unknown)[0]!r}: not changeable")
        async with self._db.engine.begin() as conn:
            current = await self._get(conn, tenant_id, template_id, 0, lock=True)
            new_name = display_name if "display_name" in fields else current.display_name
            bad: list[FieldViolation] = []
            check_text(bad, "template.display_name", new_name, required=True, max_len=200)
            sources, wrong = read_sources(connected)
            collect(bad + (wrong if "connected_content" in fields else []))
            locale = (
                (default_locale or "en") if "default_locale" in fields else current.default_locale
            )
            read = (
                read_contents(contents, locale, current.channel)
                if "contents" in fields
                else read_contents(current.contents, locale, current.channel)
            )
            now = self._clock()
            template = Template(
                template_id,
                tenant_id,
                new_name,
                current.channel,
                current.version + 1,
                read,
                locale,
                strict if "strict" in fields else current.strict,
                current.create_time,
                now,
                sources if "connected_content" in fields else current.connected,
                await self._group(tenant_id, subscription_group)
                if "subscription_group" in fields
                else current.group_id,
            )
            await conn.execute(
                messaging_templates.update()
                .where(messaging_templates.c.id == template_id)
                .values(display_name=new_name, version=template.version, update_time=now)
            )
            await self._insert_version(conn, template)
        return template

    async def _insert_version(self, conn: Any, template: Template) -> None:
        await conn.execute(
            messaging_template_versions.insert().values(
                template_id=template.id,
                version=template.version,
                tenant_id=template.tenant_id,
                contents=template.contents,
                default_locale=template.default_locale,
                strict=template.strict,
                connected=[dataclasses.asdict(c) for c in template.connected],
                subscription_group=template.group_id,
                create_time=template.update_time,
            )
        )

    async def _group(self, tenant_id: str, name: str) -> str:
        """A subscription group's id from its name ("" for none)."""
        if not name:
            return ""
        parts = name.split("/")
        field = "template.subscription_group"
        if len(parts) != 4 or parts[0] != "tenants" or parts[2] != "subscriptionGroups":
            raise InvalidArgument.field(field, "must be tenants/{t}/subscriptionGroups/{g}")
        if parts[1] != tenant_id or (
            self.group_exists is not None and not await self.group_exists(tenant_id, parts[3])
        ):
            raise InvalidArgument.field(field, f"{name} is not one of this tenant's groups")
        return parts[3]

    async def get(self, caller: Principal, name: str, version: int = 0) -> Template:
        tenant_id, template_id = _template(caller, name, "name")
        if version < 0:
            raise InvalidArgument.field("version", "must be 0 (current) or more")
        return await self.find(tenant_id, template_id, version)

    async def find(self, tenant_id: str, template_id: str, version: int = 0) -> Template:
        """A template at a version (0: current); NotFound if either is not."""
        cached = self._versions.get((template_id, version)) if version else None
        if cached is not None and cached.tenant_id == tenant_id:
            return cached
        async with self._db.engine.connect() as conn:
            found = await self._get(conn, tenant_id, template_id, version)
        self._versions[(template_id, found.version)] = found
        return found

    async def _get(
        self, conn: Any, tenant_id: str, template_id: str, version: int, *, lock: bool = False
    ) -> Template:
        t, v = messaging_templates.c, messaging_template_versions.c
        name = f"tenants/{tenant_id}/templates/{template_id}"
        query = sa.select(messaging_templates).where(t.tenant_id == tenant_id, t.id == template_id)
        if lock:
            query = query.with_for_update()
        head = (await conn.execute(query)).first()
        if head is None:
            raise NotFound(f"{name} not found", metadata={"resource": name})
        wanted = version or head.version
        row = (
            await conn.execute(
                sa.select(messaging_template_versions).where(
                    v.template_id == template_id, v.version == wanted
                )
            )
        ).first()
        if row is None:
            raise NotFound(f"{name} has no version {wanted}", metadata={"resource": name})
        return Template(
            template_id,
            tenant_id,
            head.display_name,
            head.channel,
            wanted,
            dict(row.contents),
            row.default_locale,
            bool(row.strict),
            head.create_time,
            row.create_time,
            tuple(Source(**c) for c in (row.connected or [])),
            row.subscription_group or "",
        )

    async def list_templates(
        self, caller: Principal, parent: str, page_size: int = 0, page_token: str = ""
    ) -> tuple[list[Template], str]:
        tenant_id = names.own_tenant(parent, caller.tenant_id)
        if not 0 <= page_size <= MAX_PAGE_SIZE:
            raise InvalidArgument.field("page_size", f"must be 0-{MAX_PAGE_SIZE}")
        size = page_size or DEFAULT_PAGE_SIZE
        request = scope("messaging.ListTemplates", tenant_id)
        cursor = self._pages.decode(request, page_token, "t", "id")
        t = messaging_templates.c
        query = (
            sa.select(t.id)
            .where(t.tenant_id == tenant_id)
            .order_by(t.create_time.desc(), t.id.desc())
            .limit(size + 1)
        )
        if cursor is not None:
            query = query.where(
                sa.or_(
                    t.create_time < cursor["t"],
                    sa.and_(t.create_time == cursor["t"], t.id < cursor["id"]),
                )
            )
        async with self._db.engine.connect() as conn:
            ids = list(await conn.scalars(query))
            found = [await self._get(conn, tenant_id, i, 0) for i in ids[:size]]
        token = ""
        if len(ids) > size:
            last = found[-1]
            token = self._pages.encode(request, {"t": last.create_time, "id": last.id})
        return found, token

    async def delete(self, caller: Principal, name: str) -> None:
        tenant_id, template_id = _template(caller, name, "name")
        t = messaging_templates.c
        async with self._db.engine.begin() as conn:
            gone = await conn.execute(
                messaging_templates.delete().where(t.tenant_id == tenant_id, t.id == template_id)
            )
        if not gone.rowcount:
            raise NotFound(f"{name} not found", metadata={"resource": name})


def _template(caller: Principal, name: str, field: str) -> tuple[str, str]:
    tenant_id, template_id = names.parse_name(name, field, "tenants", "templates")
    names.require_same_tenant(name, field, caller.tenant_id)
    return tenant_id, template_id
