"""Rows <-> domain records, and the small SQL helpers the campaign modules
share (idempotency keys, revisions)."""

from __future__ import annotations

import dataclasses
import uuid
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from services.campaigns.model import (
    Campaign,
    CampaignSpec,
    Offer,
    OfferSpec,
    Revision,
    TransitionRecord,
    from_json,
    to_json,
)
from services.campaigns.tables import (
    campaign_revisions,
    campaigns,
    idempotency_keys,
    offers,
    transitions,
)


def campaign_from_row(row: Any) -> Campaign:
    m = row._mapping
    return Campaign(
        id=m["id"],
        tenant_id=m["tenant_id"],
        spec=from_json(CampaignSpec, m["spec"]),
        stage=m["stage"],
        revision=m["revision"],
        approval_rule=m["approval_rule"],
        submission=m["submission"],
        version=m["version"],
        create_time=m["create_time"],
        update_time=m["update_time"],
    )


def offer_from_row(row: Any) -> Offer:
    m = row._mapping
    return Offer(
        id=m["id"],
        tenant_id=m["tenant_id"],
        campaign_id=m["campaign_id"],
        spec=from_json(OfferSpec, m["spec"]),
        version=m["version"],
        create_time=m["create_time"],
        update_time=m["update_time"],
    )


def revision_from_row(row: Any) -> Revision:
    m = row._mapping
    return Revision(
        campaign_id=m["campaign_id"],
        tenant_id=m["tenant_id"],
        revision=m["revision"],
        spec=from_json(CampaignSpec, m["spec"]),
        stage=m["stage"],
        actor=m["actor"],
        change=m["change"],
        create_time=m["create_time"],
    )


async def load_campaign(conn: AsyncConnection, tenant_id: str, campaign_id: str) -> Campaign | None:
    row = (
        await conn.execute(
            campaigns.select().where(
                campaigns.c.tenant_id == tenant_id, campaigns.c.id == campaign_id
            )
        )
    ).first()
    return campaign_from_row(row) if row else None


async def load_offers(conn: AsyncConnection, campaign_id: str) -> list[Offer]:
    rows = await conn.execute(
        offers.select()
        .where(offers.c.campaign_id == campaign_id)
        .order_by(offers.c.create_time, offers.c.id)
    )
    return [offer_from_row(r) for r in rows.all()]


async def write_revision(
    conn: AsyncConnection, campaign: Campaign, actor: str, change: str, now: int
) -> None:
    await conn.execute(
        campaign_revisions.insert().values(
            campaign_id=campaign.id,
            revision=campaign.revision,
            tenant_id=campaign.tenant_id,
            display_name=campaign.spec.display_name,
            spec=to_json(campaign.spec),
            stage=campaign.stage,
            actor=actor,
            change=change[:500],
            create_time=now,
        )
    )


async def remembered(conn: AsyncConnection, tenant_id: str, method: str, key: str) -> Any | None:
    """The stored result of an earlier call with this idempotency key."""
    if not key:
        return None
    row = (
        await conn.execute(
            sa.select(idempotency_keys.c.result).where(
                idempotency_keys.c.tenant_id == tenant_id,
                idempotency_keys.c.method == method,
                idempotency_keys.c.key == key,
            )
        )
    ).first()
    return row[0] if row else None


async def remember(
    conn: AsyncConnection, tenant_id: str, method: str, key: str, result: Any, now: int
) -> None:
    """Store a call's result under its key, in the call's own transaction: a
    concurrent retry with the same key fails on the primary key and rolls back."""
    if key:
        await conn.execute(
            idempotency_keys.insert().values(
                tenant_id=tenant_id, method=method, key=key, result=result, create_time=now
            )
        )


async def record_transition(
    conn: AsyncConnection,
    campaign: Campaign,
    action: str,
    from_stage: str,
    to_stage: str,
    actor: str,
    role: str,
    comment: str,
    now: int,
) -> TransitionRecord:
    record = TransitionRecord(action, from_stage, to_stage, actor, role, comment[:2000], now)
    await conn.execute(
        transitions.insert().values(
            id=f"{now:016x}{uuid.uuid4().hex[:8]}",
            tenant_id=campaign.tenant_id,
            campaign_id=campaign.id,
            **dataclasses.asdict(record),
        )
    )
    return record
