"""Campaigns and offers: create, read, list, change, delete, clone, revisions
and rollback, templates, import and export. Workflow stage changes live in
workflow.py, budgets in budget.py; all three share the store helpers."""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import Callable, Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection

from services.campaigns import store
from services.campaigns.events import CampaignEvent, CampaignEvents, campaign_changed
from services.campaigns.model import (
    Campaign,
    CampaignSpec,
    Offer,
    OfferSpec,
    Revision,
    to_json,
)
from services.campaigns.schedule import bounds_us
from services.campaigns.tables import campaign_revisions, campaigns, offers
from services.campaigns.templates import TEMPLATES
from services.campaigns.validation import validate_campaign, validate_offer
from services.common import names, pagination
from services.common.call import Principal
from services.common.clock import Clock, now_us
from services.common.errors import (
    Aborted,
    FailedPrecondition,
    FieldViolation,
    InvalidArgument,
    NotFound,
    collect,
)
from services.common.pagination import PageTokens
from services.db import Database

# Stages in which the definition may change, and what a change does there.
FROZEN_STAGES = {
    "IN_REVIEW": "is in review",
    "COMPLETED": "is completed",
    "ARCHIVED": "is archived",
}
# A change to an approved (or scheduled) campaign needs a new approval.
REAPPROVAL_STAGES = ("APPROVED", "SCHEDULED")
DELETABLE_STAGES = ("DRAFT", "REJECTED", "ARCHIVED")
MAX_IMPORT = 500
MAX_OFFERS_PER_CAMPAIGN = 64


def apply_mask(current: Any, incoming: Any, paths: Sequence[str], prefix: str) -> Any:
    """`current` with the fields named by `paths` (dotted, into nested
    dataclasses) taken from `incoming`; an unknown path is INVALID_ARGUMENT."""
    result = current
    for path in paths:
        parts = path.split(".")
        result = _replace_path(result, incoming, parts, path, prefix)
    return result


def _replace_path(current: Any, incoming: Any, parts: list[str], path: str, prefix: str) -> Any:
    fields = {f.name for f in dataclasses.fields(current)}
    head = parts[0]
    if head not in fields:
        raise InvalidArgument.field("update_mask", f"{prefix}.{path} is not an updatable field")
    if len(parts) == 1:
        return dataclasses.replace(current, **{head: getattr(incoming, head)})
    inner = getattr(current, head)
    if not dataclasses.is_dataclass(inner):
        raise InvalidArgument.field("update_mask", f"{prefix}.{path} is not an updatable field")
    return dataclasses.replace(
        current, **{head: _replace_path(inner, getattr(incoming, head), parts[1:], path, prefix)}
    )


def _changed_fields(before: Any, after: Any) -> list[str]:
    return [
        f.name
        for f in dataclasses.fields(before)
        if getattr(before, f.name) != getattr(after, f.name)
    ]


def _with_template(spec: CampaignSpec, template_id: str) -> CampaignSpec:
    """The template's values under the caller's: a field the caller set (not
    at its default) wins."""
    template = TEMPLATES.get(template_id)
    if template is None:
        raise InvalidArgument.field(
            "template_id", f"unknown template; known: {', '.join(sorted(TEMPLATES))}"
        )
    default = CampaignSpec()
    merged = template.spec
    for f in dataclasses.fields(CampaignSpec):
        value = getattr(spec, f.name)
        if value != getattr(default, f.name):
            merged = dataclasses.replace(merged, **{f.name: value})
    if spec.labels:
        merged = dataclasses.replace(merged, labels={**template.spec.labels, **spec.labels})
    return merged


class Filter:
    """`stage=STAGE_LIVE AND channel=CHANNEL_EMAIL AND labels.team=x AND
    display_name:sale` (AIP-160 subset)."""

    def __init__(self, text: str) -> None:
        self.stage = ""
        self.checks: list[Callable[[Campaign], bool]] = []
        for term in (t.strip() for t in text.split(" AND ") if t.strip()):
            self._parse(term)

    def _parse(self, term: str) -> None:
        if ":" in term and "=" not in term:
            key, _, value = term.partition(":")
            if key.strip() != "display_name":
                raise InvalidArgument.field("filter", f"`:` only works on display_name: {term!r}")
            needle = value.strip().strip('"').lower()
            self.checks.append(lambda c: needle in c.spec.display_name.lower())
            return
        key, sep, value = term.partition("=")
        key, value = key.strip(), value.strip().strip('"')
        if not sep or not value:
            raise InvalidArgument.field("filter", f"cannot parse {term!r}")
        if key == "stage":
            self.stage = value.upper().removeprefix("STAGE_")
        elif key == "channel":
            channel = value.upper().removeprefix("CHANNEL_")
            self.checks.append(lambda c: channel in c.spec.channels)
        elif key == "objective":
            objective = value.upper().removeprefix("OBJECTIVE_")
            self.checks.append(lambda c: c.spec.objective == objective)
        elif key.startswith("labels."):
            label = key.removeprefix("labels.")
            self.checks.append(lambda c: c.spec.labels.get(label) == value)
        else:
            raise InvalidArgument.field(
                "filter",
                f"unknown field {key!r}; use stage, channel, objective, labels.KEY, display_name",
            )

    def matches(self, campaign: Campaign) -> bool:
        return all(check(campaign) for check in self.checks)


class Campaigns:
    def __init__(
        self,
        db: Database,
        events: CampaignEvents,
        clock: Clock = now_us,
        *,
        page_tokens: PageTokens,
    ) -> None:
        self._db = db
        self._events = events
        self._clock = clock
        self._pages = page_tokens

    # -- reading ----------------------------------------------------------

    async def find(self, tenant_id: str, campaign_id: str) -> Campaign | None:
        async with self._db.engine.connect() as conn:
            return await store.load_campaign(conn, tenant_id, campaign_id)

    async def get(self, caller: Principal, name: str, revision: int = 0) -> Campaign:
        names.require_same_tenant(name, "name", caller.tenant_id)
        tenant_id, campaign_id = names.parse_name(name, "name", "tenants", "campaigns")
        campaign = await self.find(tenant_id, campaign_id)
        if campaign is None:
            raise NotFound(f"{name} not found", metadata={"resource": name})
        if revision and revision != campaign.revision:
            past = await self._revision(campaign, revision)
            return dataclasses.replace(
                campaign, spec=past.spec, stage=past.stage, revision=past.revision
            )
        return campaign

    async def _revision(self, campaign: Campaign, revision: int) -> Revision:
        if revision < 1 or revision > campaign.revision:
            raise InvalidArgument.field("revision", f"must be between 1 and {campaign.revision}")
        async with self._db.engine.connect() as conn:
            row = (
                await conn.execute(
                    campaign_revisions.select().where(
                        campaign_revisions.c.campaign_id == campaign.id,
                        campaign_revisions.c.revision == revision,
                    )
                )
            ).first()
        if row is None:
            raise NotFound(f"revision {revision} of {campaign.name} not found")
        return store.revision_from_row(row)

    async def list_campaigns(
        self, caller: Principal, parent: str, page_size: int, page_token: str, filter_text: str
    ) -> tuple[list[Campaign], str]:
        names.require_same_tenant(parent, "parent", caller.tenant_id)
        (tenant_id,) = names.parse_name(parent, "parent", "tenants")
        size = names.page_size(page_size)
        scope = pagination.scope("ListCampaigns", parent, filter_text)
        cursor = self._pages.decode(scope, page_token, "t", "id")
        flt = Filter(filter_text)
        found: list[Campaign] = []
        after = (int(cursor["t"]), str(cursor["id"])) if cursor else None
        c = campaigns.c
        while len(found) <= size:
            query = (
                campaigns.select()
                .where(c.tenant_id == tenant_id)
                .order_by(c.create_time.desc(), c.id.desc())
                .limit(size * 2 + 1)
            )
            if flt.stage:
                query = query.where(c.stage == flt.stage)
            if after:
                query = query.where(
                    sa.or_(
                        c.create_time < after[0],
                        sa.and_(c.create_time == after[0], c.id < after[1]),
                    )
                )
            async with self._db.engine.connect() as conn:
                batch = [store.campaign_from_row(r) for r in (await conn.execute(query)).all()]
            if not batch:
                break
            for campaign in batch:
                if flt.matches(campaign):
                    found.append(campaign)
                    if len(found) > size:
                        break
            after = (batch[-1].create_time, batch[-1].id)
            if len(batch) < size * 2 + 1:
                break
        token = ""
        if len(found) > size:
            last = found[size - 1]
            token = self._pages.encode(scope, {"t": last.create_time, "id": last.id})
        return found[:size], token

    async def revisions(
        self, caller: Principal, name: str, page_size: int, page_token: str
    ) -> tuple[list[Revision], str]:
        campaign = await self.get(caller, name)
        size = names.page_size(page_size)
        scope = pagination.scope("ListCampaignRevisions", campaign.name)
        cursor = self._pages.decode(scope, page_token, "before")
        query = (
            campaign_revisions.select()
            .where(campaign_revisions.c.campaign_id == campaign.id)
            .order_by(campaign_revisions.c.revision.desc())
            .limit(size + 1)
        )
        if cursor:
            query = query.where(campaign_revisions.c.revision < int(cursor["before"]))
        async with self._db.engine.connect() as conn:
            rows = [store.revision_from_row(r) for r in (await conn.execute(query)).all()]
        token = (
            self._pages.encode(scope, {"before": rows[size - 1].revision})
            if len(rows) > size
            else ""
        )
        return rows[:size], token

    # -- writing ----------------------------------------------------------

    async def create(
        self,
        caller: Principal | None,
        parent: str,
        spec: CampaignSpec,
        template_id: str = "",
        request_id: str = "",
        *,
        offers_to_add: Sequence[OfferSpec] = (),
    ) -> Campaign:
        if caller is not None:
            names.require_same_tenant(parent, "parent", caller.tenant_id)
        (tenant_id,) = names.parse_name(parent, "parent", "tenants")
        if template_id:
            spec = _with_template(spec, template_id)
        collect(validate_campaign(spec))
        violations: list[FieldViolation] = []
        for i, offer in enumerate(offers_to_add):
            violations += validate_offer(offer, f"offers[{i}]")
        collect(violations)
        actor = caller.subject if caller else "system/bootstrap"
        try:
            async with self._db.engine.begin() as conn:
                earlier = await store.remembered(conn, tenant_id, "CreateCampaign", request_id)
                if earlier is not None:
                    found = await store.load_campaign(conn, tenant_id, str(earlier))
                    if found is not None:
                        return found
                campaign = await self._insert(
                    conn, tenant_id, spec, actor, "created", offers_to_add
                )
                await store.remember(
                    conn,
                    tenant_id,
                    "CreateCampaign",
                    request_id,
                    campaign.id,
                    campaign.create_time,
                )
        except IntegrityError:
            if not request_id:
                raise
            # A concurrent retry with the same key committed first: return its result.
            async with self._db.engine.connect() as conn:
                earlier = await store.remembered(conn, tenant_id, "CreateCampaign", request_id)
                found = await store.load_campaign(conn, tenant_id, str(earlier))
            if found is None:
                raise
            return found
        await self._changed(campaign)
        return campaign

    async def _insert(
        self,
        conn: AsyncConnection,
        tenant_id: str,
        spec: CampaignSpec,
        actor: str,
        change: str,
        offers_to_add: Sequence[OfferSpec] = (),
    ) -> Campaign:
        now = self._clock()
        start, end = bounds_us(spec.schedule)
        campaign = Campaign(
            id=uuid.uuid4().hex[:16],
            tenant_id=tenant_id,
            spec=spec,
            stage="DRAFT",
            revision=1,
            approval_rule="",
            submission=0,
            version=1,
            create_time=now,
            update_time=now,
        )
        await conn.execute(
            campaigns.insert().values(
                id=campaign.id,
                tenant_id=tenant_id,
                display_name=spec.display_name,
                stage="DRAFT",
                spec=to_json(spec),
                revision=1,
                approval_rule="",
                submission=0,
                start_time=start,
                end_time=end,
                version=1,
                create_time=now,
                update_time=now,
            )
        )
        await store.write_revision(conn, campaign, actor, change, now)
        for offer_spec in offers_to_add:
            await self._insert_offer(conn, campaign, offer_spec, now)
        return campaign

    async def update(
        self,
        caller: Principal,
        name: str,
        incoming: CampaignSpec,
        paths: Sequence[str],
        etag: str,
    ) -> Campaign:
        current = await self.get(caller, name)
        if current.stage in FROZEN_STAGES:
            raise FailedPrecondition(
                f"{name} {FROZEN_STAGES[current.stage]}: its definition cannot change",
                reason="CAMPAIGN_FROZEN",
                metadata={"stage": current.stage},
            )
        if etag and etag != current.etag:
            raise Aborted(f"{name} changed since it was read (etag {current.etag})")
        spec = apply_mask(
            current.spec,
            incoming,
            paths or [f.name for f in dataclasses.fields(CampaignSpec)],
            "campaign",
        )
        collect(validate_campaign(spec))
        changed = _changed_fields(current.spec, spec)
        if not changed:
            return current
        stage = "DRAFT" if current.stage in REAPPROVAL_STAGES else current.stage
        return await self._save_spec(
            current, spec, caller.subject, "changed " + ", ".join(changed), stage
        )

    async def _save_spec(
        self, current: Campaign, spec: CampaignSpec, actor: str, change: str, stage: str
    ) -> Campaign:
        now = self._clock()
        start, end = bounds_us(spec.schedule)
        updated = dataclasses.replace(
            current,
            spec=spec,
            stage=stage,
            revision=current.revision + 1,
            version=current.version + 1,
            update_time=now,
        )
        async with self._db.engine.begin() as conn:
            result = await conn.execute(
                campaigns.update()
                .where(campaigns.c.id == current.id, campaigns.c.version == current.version)
                .values(
                    display_name=spec.display_name,
                    spec=to_json(spec),
                    stage=stage,
                    revision=updated.revision,
                    start_time=start,
                    end_time=end,
                    version=updated.version,
                    update_time=now,
                )
            )
            if result.rowcount != 1:
                raise Aborted(f"{current.name} changed concurrently; read it again and retry")
            await store.write_revision(conn, updated, actor, change, now)
            if stage != current.stage:
                await store.record_transition(
                    conn,
                    updated,
                    "EDIT",
                    current.stage,
                    stage,
                    actor,
                    "",
                    "changed after approval; needs a new approval",
                    now,
                )
        await self._changed(updated)
        return updated

    async def rollback(self, caller: Principal, name: str, revision: int, etag: str) -> Campaign:
        current = await self.get(caller, name)
        if current.stage in FROZEN_STAGES:
            raise FailedPrecondition(
                f"{name} {FROZEN_STAGES[current.stage]}: it cannot be rolled back",
                reason="CAMPAIGN_FROZEN",
                metadata={"stage": current.stage},
            )
        if etag and etag != current.etag:
            raise Aborted(f"{name} changed since it was read (etag {current.etag})")
        past = await self._revision(current, revision)
        stage = "DRAFT" if current.stage in REAPPROVAL_STAGES else current.stage
        return await self._save_spec(
            current, past.spec, caller.subject, f"rolled back to revision {revision}", stage
        )

    async def delete(self, caller: Principal, name: str, etag: str) -> None:
        current = await self.get(caller, name)
        if current.stage not in DELETABLE_STAGES:
            raise FailedPrecondition(
                f"{name} is {current.stage}; only {', '.join(DELETABLE_STAGES)} campaigns "
                "can be deleted (complete and archive it first)",
                reason="CAMPAIGN_NOT_DELETABLE",
                metadata={"stage": current.stage},
            )
        if etag and etag != current.etag:
            raise Aborted(f"{name} changed since it was read (etag {current.etag})")
        async with self._db.engine.begin() as conn:
            await conn.execute(offers.delete().where(offers.c.campaign_id == current.id))
            result = await conn.execute(
                campaigns.delete().where(
                    campaigns.c.id == current.id, campaigns.c.version == current.version
                )
            )
            if result.rowcount != 1:
                raise Aborted(f"{name} changed concurrently; read it again and retry")
        await self._events.publish(
            CampaignEvent("campaign.deleted", current.tenant_id, current.name, stage="DELETED")
        )

    async def clone(self, caller: Principal, name: str, display_name: str) -> Campaign:
        source = await self.get(caller, name)
        title = display_name or f"Copy of {source.spec.display_name}"[:200]
        spec = dataclasses.replace(source.spec, display_name=title)
        collect(validate_campaign(spec))
        async with self._db.engine.begin() as conn:
            source_offers = await store.load_offers(conn, source.id)
            copy = await self._insert(
                conn,
                source.tenant_id,
                spec,
                caller.subject,
                f"cloned from {source.name}",
                [o.spec for o in source_offers],
            )
        await self._changed(copy)
        return copy

    async def import_bundles(
        self,
        caller: Principal,
        parent: str,
        bundles: Sequence[tuple[CampaignSpec, Sequence[OfferSpec]]],
        request_id: str,
    ) -> list[Campaign]:
        names.require_same_tenant(parent, "parent", caller.tenant_id)
        (tenant_id,) = names.parse_name(parent, "parent", "tenants")
        if not bundles:
            raise InvalidArgument.field("bundles", "nothing to import")
        if len(bundles) > MAX_IMPORT:
            raise InvalidArgument.field("bundles", f"at most {MAX_IMPORT} campaigns per import")
        violations: list[FieldViolation] = []
        for i, (spec, offer_specs) in enumerate(bundles):
            violations += validate_campaign(spec, f"bundles[{i}].campaign")
            if len(offer_specs) > MAX_OFFERS_PER_CAMPAIGN:
                violations.append(FieldViolation(f"bundles[{i}].offers", "too many offers"))
            for j, offer in enumerate(offer_specs):
                violations += validate_offer(offer, f"bundles[{i}].offers[{j}]")
        collect(violations)  # all or nothing
        async with self._db.engine.begin() as conn:
            earlier = await store.remembered(conn, tenant_id, "ImportCampaigns", request_id)
            if earlier is not None:
                found = [await store.load_campaign(conn, tenant_id, str(i)) for i in earlier]
                return [c for c in found if c is not None]
            created = [
                await self._insert(conn, tenant_id, spec, caller.subject, "imported", offer_specs)
                for spec, offer_specs in bundles
            ]
            await store.remember(
                conn,
                tenant_id,
                "ImportCampaigns",
                request_id,
                [c.id for c in created],
                self._clock(),
            )
        for campaign in created:
            await self._changed(campaign)
        return created

    async def export(
        self, caller: Principal, parent: str, filter_text: str
    ) -> list[tuple[Campaign, list[Offer]]]:
        result: list[tuple[Campaign, list[Offer]]] = []
        token = ""
        while True:
            page, token = await self.list_campaigns(caller, parent, 1000, token, filter_text)
            async with self._db.engine.connect() as conn:
                for campaign in page:
                    result.append((campaign, await store.load_offers(conn, campaign.id)))
            if not token:
                return result

    # -- offers -----------------------------------------------------------

    async def _insert_offer(
        self, conn: AsyncConnection, campaign: Campaign, spec: OfferSpec, now: int
    ) -> Offer:
        offer = Offer(
            id=uuid.uuid4().hex[:16],
            tenant_id=campaign.tenant_id,
            campaign_id=campaign.id,
            spec=spec,
            version=1,
            create_time=now,
            update_time=now,
        )
        await conn.execute(
            offers.insert().values(
                id=offer.id,
                tenant_id=offer.tenant_id,
                campaign_id=campaign.id,
                display_name=spec.display_name,
                status=spec.status,
                spec=to_json(spec),
                version=1,
                create_time=now,
                update_time=now,
            )
        )
        return offer

    def _check_offers_editable(self, campaign: Campaign) -> None:
        if campaign.stage in FROZEN_STAGES:
            raise FailedPrecondition(
                f"{campaign.name} {FROZEN_STAGES[campaign.stage]}: its offers cannot change",
                reason="CAMPAIGN_FROZEN",
                metadata={"stage": campaign.stage},
            )

    async def create_offer(
        self, caller: Principal, parent: str, spec: OfferSpec, request_id: str = ""
    ) -> Offer:
        campaign = await self.get(caller, parent)
        self._check_offers_editable(campaign)
        collect(validate_offer(spec))
        async with self._db.engine.begin() as conn:
            earlier = await store.remembered(conn, campaign.tenant_id, "CreateOffer", request_id)
            if earlier is not None:
                row = (await conn.execute(offers.select().where(offers.c.id == earlier))).first()
                if row is not None:
                    return store.offer_from_row(row)
            count = (
                await conn.execute(
                    sa.select(sa.func.count()).where(offers.c.campaign_id == campaign.id)
                )
            ).scalar_one()
            if count >= MAX_OFFERS_PER_CAMPAIGN:
                raise FailedPrecondition(
                    f"{campaign.name} already has {count} offers (limit {MAX_OFFERS_PER_CAMPAIGN})",
                    reason="TOO_MANY_OFFERS",
                )
            offer = await self._insert_offer(conn, campaign, spec, self._clock())
            await store.remember(
                conn, campaign.tenant_id, "CreateOffer", request_id, offer.id, offer.create_time
            )
        await self._offer_changed(offer, campaign)
        return offer

    async def get_offer(self, caller: Principal, name: str) -> Offer:
        names.require_same_tenant(name, "name", caller.tenant_id)
        tenant_id, campaign_id, offer_id = names.parse_name(
            name, "name", "tenants", "campaigns", "offers"
        )
        async with self._db.engine.connect() as conn:
            row = (
                await conn.execute(
                    offers.select().where(
                        offers.c.tenant_id == tenant_id,
                        offers.c.campaign_id == campaign_id,
                        offers.c.id == offer_id,
                    )
                )
            ).first()
        if row is None:
            raise NotFound(f"{name} not found", metadata={"resource": name})
        return store.offer_from_row(row)

    async def list_offers(
        self, caller: Principal, parent: str, page_size: int, page_token: str
    ) -> tuple[list[Offer], str]:
        campaign = await self.get(caller, parent)
        size = names.page_size(page_size)
        scope = pagination.scope("ListOffers", campaign.name)
        cursor = self._pages.decode(scope, page_token, "t", "id")
        o = offers.c
        query = (
            offers.select()
            .where(o.campaign_id == campaign.id)
            .order_by(o.create_time, o.id)
            .limit(size + 1)
        )
        if cursor:
            t, last = int(cursor["t"]), str(cursor["id"])
            query = query.where(sa.or_(o.create_time > t, sa.and_(o.create_time == t, o.id > last)))
        async with self._db.engine.connect() as conn:
            rows = [store.offer_from_row(r) for r in (await conn.execute(query)).all()]
        token = ""
        if len(rows) > size:
            token = self._pages.encode(
                scope, {"t": rows[size - 1].create_time, "id": rows[size - 1].id}
            )
        return rows[:size], token

    async def update_offer(
        self, caller: Principal, name: str, incoming: OfferSpec, paths: Sequence[str], etag: str
    ) -> Offer:
        current = await self.get_offer(caller, name)
        campaign = await self.get(caller, current.campaign_name)
        self._check_offers_editable(campaign)
        if etag and etag != current.etag:
            raise Aborted(f"{name} changed since it was read (etag {current.etag})")
        spec = apply_mask(
            current.spec,
            incoming,
            paths or [f.name for f in dataclasses.fields(OfferSpec)],
            "offer",
        )
        collect(validate_offer(spec))
        now = self._clock()
        async with self._db.engine.begin() as conn:
            result = await conn.execute(
                offers.update()
                .where(offers.c.id == current.id, offers.c.version == current.version)
                .values(
                    display_name=spec.display_name,
                    status=spec.status,
                    spec=to_json(spec),
                    version=current.version + 1,
                    update_time=now,
                )
            )
            if result.rowcount != 1:
                raise Aborted(f"{name} changed concurrently; read it again and retry")
        updated = dataclasses.replace(
            current, spec=spec, version=current.version + 1, update_time=now
        )
        await self._offer_changed(updated, campaign)
        return updated

    async def delete_offer(self, caller: Principal, name: str) -> None:
        current = await self.get_offer(caller, name)
        campaign = await self.get(caller, current.campaign_name)
        self._check_offers_editable(campaign)
        async with self._db.engine.begin() as conn:
            await conn.execute(offers.delete().where(offers.c.id == current.id))
        await self._events.publish(
            CampaignEvent(
                "offer.deleted",
                campaign.tenant_id,
                campaign.name,
                stage=campaign.stage,
                revision=campaign.revision,
                offer=current.name,
            )
        )

    # -- events -----------------------------------------------------------

    async def _changed(self, campaign: Campaign) -> None:
        await self._events.publish(campaign_changed(campaign))

    async def _offer_changed(self, offer: Offer, campaign: Campaign) -> None:
        await self._events.publish(
            CampaignEvent(
                "offer.changed",
                campaign.tenant_id,
                campaign.name,
                stage=campaign.stage,
                revision=campaign.revision,
                offer=offer.name,
            )
        )
