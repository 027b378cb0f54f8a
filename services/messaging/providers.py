"""Channel providers: where a tenant's messages of a channel go, several per
channel in priority order (the sender fails over down the list). Secrets
in the config are write-only (read back as `***`)."""

from __future__ import annotations

import decimal
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

from services.common import names
from services.common.call import Principal
from services.common.clock import now_us
from services.common.errors import FieldViolation, InvalidArgument, NotFound, collect
from services.common.ids import random_hex_id
from services.common.validation import check_text
from services.db import Database
from services.messaging.channels import (
    apns,
    fcm,
    sendgrid_email,
    smtp,
    twilio_sms,
    web_push,
    webhook,
    whatsapp,
)
from services.messaging.tables import messaging_providers
from services.messaging.templates import CHANNELS

#: Kinds of providers, the channel each carries, and their adapter module.
KINDS: dict[str, tuple[str, Any]] = {
    "smtp": ("email", smtp),
    "twilio": ("sms", twilio_sms),
    "webhook": ("webhook", webhook),
    "sendgrid": ("email", sendgrid_email),
    "web_push": ("web_push", web_push),
    "fcm": ("push", fcm),
    "apns": ("push", apns),
    "whatsapp": ("whatsapp", whatsapp),
}
MAX_PROVIDERS = 20  # per tenant
MASK = "***"
#: How long a process trusts its list of a tenant's providers.
CACHE_SECONDS = 5.0


@dataclass(frozen=True, slots=True)
class Provider:
    id: str
    tenant_id: str
    display_name: str
    channel: str
    kind: str
    priority: int
    config: dict[str, str]
    create_time: int

    @property
    def name(self) -> str:
        return f"tenants/{self.tenant_id}/channelProviders/{self.id}"

    def shown(self) -> dict[str, str]:
        """The config with its secrets masked."""
        secrets = KINDS[self.kind][1].SECRETS
        return {k: (MASK if k in secrets and v else v) for k, v in self.config.items()}


def _check_cost(config: Mapping[str, str], at: str) -> list[FieldViolation]:
    """`cost_per_message` (a decimal amount, per SMS segment for SMS) and
    its `cost_currency` (ISO 4217), both or neither."""
    cost, currency = config.get("cost_per_message", ""), config.get("cost_currency", "")
    bad: list[FieldViolation] = []
    if cost and cost_micros(cost) is None:
        bad.append(FieldViolation(f"{at}.cost_per_message", "a decimal amount, 0-100"))
    if bool(cost) != bool(currency):
        bad.append(
            FieldViolation(f"{at}.cost_currency", "both cost_per_message and it, or neither")
        )
    elif currency and not (len(currency) == 3 and currency.isalpha() and currency.isupper()):
        bad.append(FieldViolation(f"{at}.cost_currency", "an ISO 4217 code such as USD"))
    return bad


def cost_micros(text: str) -> int | None:
    """A decimal amount in micros (None: not an amount of 0-100)."""
    try:
        amount = decimal.Decimal(text)
    except decimal.InvalidOperation:
        return None
    if not amount.is_finite() or not 0 <= amount <= 100:
        return None
    return int(amount * 1_000_000)


class Providers:
    def __init__(self, db: Database, *, clock: Callable[[], int] = now_us) -> None:
        self._db = db
        self._clock = clock
        self._cache: dict[str, tuple[float, list[Provider]]] = {}

    async def create(
        self,
        caller: Principal,
        parent: str,
        *,
        display_name: str,
        channel: str,
        kind: str,
        priority: int,
        config: Mapping[str, str],
    ) -> Provider:
        tenant_id = names.own_tenant(parent, caller.tenant_id)
        at = "channel_provider"
        bad: list[FieldViolation] = []
        check_text(bad, f"{at}.display_name", display_name, required=True, max_len=200)
        if kind not in KINDS:
            bad.append(FieldViolation(f"{at}.kind", f"must be one of {', '.join(KINDS)}"))
        elif channel and channel != KINDS[kind][0]:
            bad.append(FieldViolation(f"{at}.channel", f"{kind} carries {KINDS[kind][0]}"))
        if channel and channel not in CHANNELS:
            bad.append(FieldViolation(f"{at}.channel", "not a message channel"))
        if not 0 <= priority <= 1000:
            bad.append(FieldViolation(f"{at}.priority", "must be 0-1000"))
        if kind in KINDS:
            bad += KINDS[kind][1].check_config(config, f"{at}.config")
        rate = config.get("rate_per_minute", "")
        if rate and (not rate.isdigit() or not 1 <= int(rate) <= 1_000_000):
            bad.append(FieldViolation(f"{at}.config.rate_per_minute", "must be 1-1,000,000"))
        bad += _check_cost(config, f"{at}.config")
        collect(bad)
        existing = await self.of_tenant(tenant_id, fresh=True)
        if len(existing) >= MAX_PROVIDERS:
            raise InvalidArgument.field("parent", f"a tenant has at most {MAX_PROVIDERS}")
        provider = Provider(
            random_hex_id(),
            tenant_id,
            display_name,
            KINDS[kind][0],
            kind,
            priority,
            dict(config),
            self._clock(),
        )
        async with self._db.engine.begin() as conn:
            await conn.execute(
                messaging_providers.insert().values(
                    id=provider.id,
                    tenant_id=tenant_id,
                    display_name=display_name,
                    channel=provider.channel,
                    kind=kind,
                    priority=priority,
                    config=provider.config,
                    create_time=provider.create_time,
                )
            )
        self._cache.pop(tenant_id, None)
        return provider

    async def list_providers(self, caller: Principal, parent: str) -> list[Provider]:
        return await self.of_tenant(names.own_tenant(parent, caller.tenant_id), fresh=True)

    async def delete(self, caller: Principal, name: str) -> None:
        tenant_id, provider_id = names.parse_name(name, "name", "tenants", "channelProviders")
        names.require_same_tenant(name, "name", caller.tenant_id)
        p = messaging_providers.c
        async with self._db.engine.begin() as conn:
            gone = await conn.execute(
                messaging_providers.delete().where(p.tenant_id == tenant_id, p.id == provider_id)
            )
        if not gone.rowcount:
            raise NotFound(f"{name} not found", metadata={"resource": name})
        self._cache.pop(tenant_id, None)

    async def of_tenant(self, tenant_id: str, *, fresh: bool = False) -> list[Provider]:
        """The tenant's providers by channel and priority."""
        cached = self._cache.get(tenant_id)
        if not fresh and cached is not None and cached[0] > time.monotonic():
            return cached[1]
        p = messaging_providers.c
        async with self._db.engine.connect() as conn:
            rows = (
                await conn.execute(
                    sa.select(messaging_providers)
                    .where(p.tenant_id == tenant_id)
                    .order_by(p.channel, p.priority, p.create_time, p.id)
                )
            ).all()
        found = [
            Provider(
                r.id,
                r.tenant_id,
                r.display_name,
                r.channel,
                r.kind,
                r.priority,
                dict(r.config),
                r.create_time,
            )
            for r in rows
        ]
        self._cache[tenant_id] = (time.monotonic() + CACHE_SECONDS, found)
        return found

    async def for_channel(self, tenant_id: str, channel: str) -> list[Provider]:
        return [p for p in await self.of_tenant(tenant_id) if p.channel == channel]
