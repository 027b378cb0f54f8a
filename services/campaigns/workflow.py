"""The governed campaign workflow (FR-WKF-001..010): stages, actions, the
transition matrix, approval rules and approvals, the pending-approval queue,
the calendar, and the scheduler that starts and ends scheduled campaigns.

Every stage change is one conditional UPDATE (`WHERE stage = <from> AND
version = <seen>`) in the same transaction as its transition record, so
concurrent actors, several scheduler processes and restarts can never make a
transition twice."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Protocol

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection

from services.backends import BusMessage, MessageBus, Subscription
from services.campaigns import store
from services.campaigns.domain import Campaigns
from services.campaigns.events import SUBJECT_PREFIX, CampaignEvents, campaign_changed
from services.campaigns.model import Campaign, Money, TransitionRecord, from_json, to_json
from services.campaigns.schedule import bounds_us
from services.campaigns.store import record_transition
from services.campaigns.tables import approval_rules, approvals, campaigns, offers, transitions
from services.campaigns.validation import CHANNELS
from services.common import names, pagination
from services.common.call import Principal
from services.common.clock import Clock, now_us
from services.common.errors import (
    Aborted,
    FailedPrecondition,
    FieldViolation,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    collect,
)
from services.common.pagination import PageTokens
from services.db import Database

log = logging.getLogger(__name__)

SCHEDULER_ACTOR = "system/scheduler"
RULES_ACTOR = "system/approval-rules"

# The transition matrix: action -> {from stage: to stage}.
MATRIX: dict[str, dict[str, str]] = {
    "SUBMIT": {"DRAFT": "IN_REVIEW", "REJECTED": "IN_REVIEW"},
    "APPROVE": {"IN_REVIEW": "APPROVED"},
    "REJECT": {"IN_REVIEW": "REJECTED"},
    "REQUEST_CHANGES": {"IN_REVIEW": "DRAFT"},
    "SCHEDULE": {"APPROVED": "SCHEDULED"},
    "GO_LIVE": {"APPROVED": "LIVE", "SCHEDULED": "LIVE"},
    "PAUSE": {"SCHEDULED": "PAUSED", "LIVE": "PAUSED"},
    "RESUME": {"PAUSED": "LIVE"},
    "COMPLETE": {"LIVE": "COMPLETED", "PAUSED": "COMPLETED"},
    "ARCHIVE": {"COMPLETED": "ARCHIVED"},
}

# RBAC roles that may take each action (the RPC's permission is checked
# first; pausing and resuming only need CAMPAIGN_READ so operators can).
OPERATIONAL_ROLES = frozenset({"ADMIN", "MANAGER", "OPERATOR"})
ACTION_ROLES: dict[str, frozenset[str]] = {
    "PAUSE": OPERATIONAL_ROLES,
    "RESUME": OPERATIONAL_ROLES,
}
REVIEW_ACTIONS = ("APPROVE", "REJECT", "REQUEST_CHANGES")


def allowed_actions(stage: str) -> list[str]:
    return [action for action, moves in MATRIX.items() if stage in moves]


@dataclass(frozen=True, slots=True)
class ApprovalRule:
    id: str
    display_name: str
    required_role: str
    min_approvals: int
    auto_approve_below_budget: Money = field(default_factory=Money)
    min_total_budget: Money = field(default_factory=Money)
    channels: list[str] = field(default_factory=list)
    creative_review: bool = False
    legal_review: bool = False
    priority: int = 0
    disabled: bool = False

    def name(self, tenant_id: str) -> str:
        return f"tenants/{tenant_id}/approvalRules/{self.id}"

    def matches(self, campaign: Campaign) -> bool:
        if self.disabled:
            return False
        if self.channels and not set(self.channels) & set(campaign.spec.channels):
            return False
        if self.min_total_budget.is_set:
            total = campaign.spec.budget.total
            # Thresholds apply in their own currency only.
            if total.currency_code != self.min_total_budget.currency_code:
                return False
            if total.amount_micros < self.min_total_budget.amount_micros:
                return False
        return True

    def auto_approves(self, campaign: Campaign) -> bool:
        limit = self.auto_approve_below_budget
        total = campaign.spec.budget.total
        return (
            limit.is_set
            and total.currency_code == limit.currency_code
            and total.amount_micros < limit.amount_micros
        )


def _usd(units: int) -> Money:
    return Money("USD", units * 1_000_000)


# The rules every tenant starts with (BRD "Seeded Approval Rules").
DEFAULT_RULES = (
    ApprovalRule(
        "regulated-channel",
        "Regulated Channel",
        required_role="compliance",
        min_approvals=2,
        channels=["SMS", "EMAIL"],
        legal_review=True,
        priority=20,
    ),
    ApprovalRule(
        "high-budget",
        "High Budget",
        required_role="director",
        min_approvals=2,
        min_total_budget=_usd(50_000),
        priority=10,
    ),
    ApprovalRule(
        "standard",
        "Standard",
        required_role="manager",
        min_approvals=1,
        auto_approve_below_budget=_usd(1_000),
        priority=0,
    ),
)


def ordered(rules: list[ApprovalRule]) -> list[ApprovalRule]:
    """Matching order: priority, highest first; ties by id. Deterministic."""
    return sorted(rules, key=lambda r: (-r.priority, r.id))


def validate_rule(rule: ApprovalRule) -> list[FieldViolation]:
    v: list[FieldViolation] = []
    p = "approval_rule"
    if not rule.display_name.strip():
        v.append(FieldViolation(f"{p}.display_name", "is required"))
    if not rule.required_role.strip():
        v.append(FieldViolation(f"{p}.required_role", "is required"))
    if not 1 <= rule.min_approvals <= 10:
        v.append(FieldViolation(f"{p}.min_approvals", "must be 1-10"))
    for key in ("auto_approve_below_budget", "min_total_budget"):
        money: Money = getattr(rule, key)
        if money.is_set and (len(money.currency_code) != 3 or money.amount_micros <= 0):
            v.append(FieldViolation(f"{p}.{key}", "needs a currency and a positive amount"))
    for channel in rule.channels:
        if channel not in CHANNELS:
            v.append(FieldViolation(f"{p}.channels", f"unknown channel {channel!r}"))
    if not -1000 <= rule.priority <= 1000:
        v.append(FieldViolation(f"{p}.priority", "must be -1000..1000"))
    return v


@dataclass(frozen=True, slots=True)
class ActionResult:
    campaign: Campaign
    transition: TransitionRecord | None  # None: an approval short of the minimum


@dataclass(frozen=True, slots=True)
class Pending:
    campaign: Campaign
    rule: ApprovalRule
    approvers: list[str]
    submit_time: int


@dataclass(frozen=True, slots=True)
class CalendarItem:
    campaign: Campaign
    start_time: int
    end_time: int


def _actor_role(caller: Principal, action: str, rule: ApprovalRule | None) -> str:
    if action in REVIEW_ACTIONS and rule is not None:
        return rule.required_role
    for role in ("ADMIN", "MANAGER", "OPERATOR", "ANALYST", "VIEWER"):
        if role in caller.roles:
            return role.lower()
    return ""


ApprovalRolesOf = Callable[[str, str], Awaitable[frozenset[str]]]


class Workflow:
    def __init__(
        self,
        db: Database,
        campaigns_domain: Campaigns,
        events: CampaignEvents,
        clock: Clock = now_us,
        *,
        page_tokens: PageTokens,
    ) -> None:
        self._db = db
        self._campaigns = campaigns_domain
        self._events = events
        self._clock = clock
        self._pages = page_tokens

    # -- approval rules ----------------------------------------------------

    async def rules(self, tenant_id: str) -> list[ApprovalRule]:
        """The tenant's rules; the default set is written on first use."""
        async with self._db.engine.connect() as conn:
            rows = (
                await conn.execute(
                    approval_rules.select().where(approval_rules.c.tenant_id == tenant_id)
                )
            ).all()
        if not rows:
            now = self._clock()
            try:
                async with self._db.engine.begin() as conn:
                    for rule in DEFAULT_RULES:
                        await conn.execute(
                            approval_rules.insert().values(
                                tenant_id=tenant_id,
                                id=rule.id,
                                spec=to_json(rule),
                                version=1,
                                update_time=now,
                            )
                        )
            except IntegrityError:
                pass  # another call seeded them first
            return ordered(list(DEFAULT_RULES))
        return ordered([from_json(ApprovalRule, r.spec) for r in rows])

    async def list_rules(self, caller: Principal, parent: str) -> list[ApprovalRule]:
        names.require_same_tenant(parent, "parent", caller.tenant_id)
        (tenant_id,) = names.parse_name(parent, "parent", "tenants")
        return await self.rules(tenant_id)

    async def update_rule(
        self, caller: Principal, name: str, incoming: ApprovalRule, paths: list[str]
    ) -> ApprovalRule:
        names.require_same_tenant(name, "approval_rule.name", caller.tenant_id)
        tenant_id, rule_id = names.parse_name(
            name, "approval_rule.name", "tenants", "approvalRules"
        )
        current = {r.id: r for r in await self.rules(tenant_id)}.get(rule_id)
        if current is None:
            raise NotFound(f"{name} not found", metadata={"resource": name})
        updatable = [f.name for f in dataclasses.fields(ApprovalRule) if f.name != "id"]
        changes = {}
        for path in paths or updatable:
            if path not in updatable:
                raise InvalidArgument.field(
                    "update_mask", f"approval_rule.{path} is not an updatable field"
                )
            changes[path] = getattr(incoming, path)
        rule = dataclasses.replace(current, **changes)
        collect(validate_rule(rule))
        async with self._db.engine.begin() as conn:
            await conn.execute(
                approval_rules.update()
                .where(approval_rules.c.tenant_id == tenant_id, approval_rules.c.id == rule_id)
                .values(
                    spec=to_json(rule),
                    version=approval_rules.c.version + 1,
                    update_time=self._clock(),
                )
            )
        return rule

    async def match_rule(self, campaign: Campaign) -> ApprovalRule:
        for rule in await self.rules(campaign.tenant_id):
            if rule.matches(campaign):
                return rule
        raise FailedPrecondition(
            "no approval rule matches this campaign; enable a catch-all rule",
            reason="NO_APPROVAL_RULE",
        )

    # -- actions -----------------------------------------------------------

    async def act(
        self,
        caller: Principal,
        name: str,
        action: str,
        comment: str = "",
        etag: str = "",
        *,
        creative_reviewed: bool = False,
        legal_reviewed: bool = False,
    ) -> ActionResult:
        campaign = await self._campaigns.get(caller, name)
        if etag and etag != campaign.etag:
            raise Aborted(f"{name} changed since it was read (etag {campaign.etag})")
        if len(comment) > 2000:
            raise InvalidArgument.field("comment", "at most 2000 characters")
        self._check_allowed(campaign, action)
        roles = ACTION_ROLES.get(action)
        if roles is not None and not roles & caller.roles:
            raise PermissionDenied(
                f"{action} needs one of the roles {', '.join(sorted(roles))}",
                reason="MISSING_ROLE",
            )
        if action == "SUBMIT":
            return await self._submit(caller, campaign, comment)
        if action in REVIEW_ACTIONS:
            return await self._review(
                caller, campaign, action, comment, creative_reviewed, legal_reviewed
            )
        to_stage = MATRIX[action][campaign.stage]
        if action == "RESUME" and campaign.spec.schedule.start_date_time:
            start, _ = _bounds(campaign)
            if start is not None and self._clock() < start:
                to_stage = "SCHEDULED"  # paused before its start: wait for it again
        if action in ("GO_LIVE", "SCHEDULE", "RESUME"):
            _, end = _bounds(campaign)
            if end is not None and self._clock() >= end:
                raise FailedPrecondition(
                    f"{name}'s schedule ended; it cannot {action.lower().replace('_', ' ')}",
                    reason="SCHEDULE_ENDED",
                )
        role = _actor_role(caller, action, None)
        moved, record = await self._move(campaign, action, to_stage, caller.subject, role, comment)
        return ActionResult(moved, record)

    def _check_allowed(self, campaign: Campaign, action: str) -> None:
        if campaign.stage not in MATRIX[action]:
            allowed = allowed_actions(campaign.stage)
            raise FailedPrecondition(
                f"cannot {action} a campaign in stage {campaign.stage}; allowed: "
                f"{', '.join(allowed) or 'none'}",
                reason="INVALID_TRANSITION",
                metadata={"stage": campaign.stage, "allowed_actions": ",".join(allowed)},
            )

    async def _move(
        self,
        campaign: Campaign,
        action: str,
        to_stage: str,
        actor: str,
        role: str,
        comment: str,
        *,
        conn: AsyncConnection | None = None,
        extra: dict[str, object] | None = None,
    ) -> tuple[Campaign, TransitionRecord]:
        """The conditional stage change and its transition record, atomically."""
        now = self._clock()
        values: dict[str, object] = {
            "stage": to_stage,
            "version": campaign.version + 1,
            "update_time": now,
            **(extra or {}),
        }
        moved = dataclasses.replace(
            campaign,
            stage=to_stage,
            version=campaign.version + 1,
            update_time=now,
            approval_rule=str(values.get("approval_rule", campaign.approval_rule)),
            submission=int(values.get("submission", campaign.submission)),  # type: ignore[call-overload]
        )

        async def run(c: AsyncConnection) -> TransitionRecord:
            result = await c.execute(
                campaigns.update()
                .where(
                    campaigns.c.id == campaign.id,
                    campaigns.c.stage == campaign.stage,
                    campaigns.c.version == campaign.version,
                )
                .values(**values)
            )
            if result.rowcount != 1:
                raise Aborted(
                    f"{campaign.name} changed concurrently; read it again and retry",
                    reason="CONCURRENT_TRANSITION",
                )
            return await record_transition(
                c, moved, action, campaign.stage, to_stage, actor, role, comment, now
            )

        if conn is not None:
            record = await run(conn)
        else:
            async with self._db.engine.begin() as c:
                record = await run(c)
            await self._published(moved)
        return moved, record

    async def _published(self, campaign: Campaign) -> None:
        await self._events.publish(campaign_changed(campaign))

    async def _submit(self, caller: Principal, campaign: Campaign, comment: str) -> ActionResult:
        if not await self._has_offers(campaign) and any(
            c in campaign.spec.channels for c in ("DISPLAY", "VIDEO", "NATIVE", "AUDIO", "DOOH")
        ):
            raise FailedPrecondition(
                f"{campaign.name} has no offers; add one before submitting",
                reason="NO_OFFERS",
            )
        rule = await self.match_rule(campaign)
        role = _actor_role(caller, "SUBMIT", None)
        async with self._db.engine.begin() as conn:
            submitted, record = await self._move(
                campaign,
                "SUBMIT",
                "IN_REVIEW",
                caller.subject,
                role,
                comment,
                conn=conn,
                extra={"approval_rule": rule.id, "submission": campaign.submission + 1},
            )
            if rule.auto_approves(campaign):
                submitted, record = await self._move(
                    submitted,
                    "APPROVE",
                    "APPROVED",
                    RULES_ACTOR,
                    rule.required_role,
                    "auto-approved: total budget below "
                    f"{_money_text(rule.auto_approve_below_budget)} ({rule.display_name})",
                    conn=conn,
                )
        await self._published(submitted)
        return ActionResult(submitted, record)

    async def _has_offers(self, campaign: Campaign) -> bool:
        async with self._db.engine.connect() as conn:
            found = await conn.execute(
                sa.select(offers.c.id).where(offers.c.campaign_id == campaign.id).limit(1)
            )
            return found.first() is not None

    async def _review(
        self,
        caller: Principal,
        campaign: Campaign,
        action: str,
        comment: str,
        creative_reviewed: bool,
        legal_reviewed: bool,
    ) -> ActionResult:
        rules = {r.id: r for r in await self.rules(campaign.tenant_id)}
        rule = rules.get(campaign.approval_rule) or await self.match_rule(campaign)
        if rule.required_role not in caller.approval_roles:
            raise PermissionDenied(
                f"{action} of {campaign.name} needs the approval role "
                f"{rule.required_role!r} ({rule.display_name} rule)",
                reason="MISSING_APPROVAL_ROLE",
                metadata={"required_role": rule.required_role},
            )
        submitter = await self._submitter(campaign)
        if submitter == caller.subject:
            raise PermissionDenied(
                "the submitter of a campaign cannot review it", reason="SELF_REVIEW"
            )
        if action != "APPROVE":
            if action == "REJECT" and not comment.strip():
                raise InvalidArgument.field("comment", "a rejection needs a reason")
            to_stage = MATRIX[action][campaign.stage]
            moved, record = await self._move(
                campaign, action, to_stage, caller.subject, rule.required_role, comment
            )
            return ActionResult(moved, record)
        violations = []
        if rule.creative_review and not creative_reviewed:
            violations.append(
                FieldViolation(
                    "creative_reviewed", f"the {rule.display_name} rule requires a creative review"
                )
            )
        if rule.legal_review and not legal_reviewed:
            violations.append(
                FieldViolation(
                    "legal_reviewed", f"the {rule.display_name} rule requires a legal review"
                )
            )
        collect(violations)
        return await self._approve(caller, campaign, rule, comment)

    async def _approve(
        self, caller: Principal, campaign: Campaign, rule: ApprovalRule, comment: str
    ) -> ActionResult:
        now = self._clock()
        async with self._db.engine.begin() as conn:
            # A no-op write first: it takes the campaign's row lock on
            # PostgreSQL and the write lock on SQLite, so concurrent approvals
            # of one campaign count one after the other.
            await conn.execute(
                campaigns.update()
                .where(campaigns.c.id == campaign.id)
                .values(version=campaigns.c.version)
            )
            current = await store.load_campaign(conn, campaign.tenant_id, campaign.id)
            if (
                current is None
                or current.stage != "IN_REVIEW"
                or (current.submission != campaign.submission)
            ):
                raise Aborted(
                    f"{campaign.name} left review concurrently; read it again",
                    reason="CONCURRENT_TRANSITION",
                )
            exists = (
                await conn.execute(
                    sa.select(approvals.c.approver).where(
                        approvals.c.campaign_id == current.id,
                        approvals.c.submission == current.submission,
                        approvals.c.approver == caller.subject,
                    )
                )
            ).first()
            if exists is None:
                await conn.execute(
                    approvals.insert().values(
                        campaign_id=current.id,
                        submission=current.submission,
                        approver=caller.subject,
                        tenant_id=current.tenant_id,
                        role=rule.required_role,
                        time=now,
                    )
                )
            count = (
                await conn.execute(
                    sa.select(sa.func.count()).where(
                        approvals.c.campaign_id == current.id,
                        approvals.c.submission == current.submission,
                    )
                )
            ).scalar_one()
            if count < rule.min_approvals:
                return ActionResult(current, None)
            moved, record = await self._move(
                current,
                "APPROVE",
                "APPROVED",
                caller.subject,
                rule.required_role,
                comment or f"{count} of {rule.min_approvals} approvals",
                conn=conn,
            )
        await self._published(moved)
        return ActionResult(moved, record)

    async def _submitter(self, campaign: Campaign) -> str:
        async with self._db.engine.connect() as conn:
            row = (
                await conn.execute(
                    sa.select(transitions.c.actor)
                    .where(
                        transitions.c.campaign_id == campaign.id,
                        transitions.c.action == "SUBMIT",
                    )
                    .order_by(transitions.c.time.desc(), transitions.c.id.desc())
                    .limit(1)
                )
            ).first()
        return str(row[0]) if row else ""

    async def approvers(self, campaign: Campaign) -> list[str]:
        async with self._db.engine.connect() as conn:
            rows = await conn.execute(
                sa.select(approvals.c.approver)
                .where(
                    approvals.c.campaign_id == campaign.id,
                    approvals.c.submission == campaign.submission,
                )
                .order_by(approvals.c.time)
            )
            return [str(r[0]) for r in rows.all()]

    # -- queries -----------------------------------------------------------

    async def transitions(
        self, caller: Principal, name: str, page_size: int, page_token: str
    ) -> tuple[list[TransitionRecord], str]:
        campaign = await self._campaigns.get(caller, name)
        size = names.page_size(page_size)
        scope = pagination.scope("ListCampaignTransitions", name)
        cursor = self._pages.decode(scope, page_token, "t", "id")
        t = transitions.c
        query = (
            sa.select(t.id, t.action, t.from_stage, t.to_stage, t.actor, t.role, t.comment, t.time)
            .where(t.campaign_id == campaign.id)
            .order_by(t.time, t.id)
            .limit(size + 1)
        )
        if cursor:
            after_t, after_id = int(cursor["t"]), str(cursor["id"])
            query = query.where(
                sa.or_(t.time > after_t, sa.and_(t.time == after_t, t.id > after_id))
            )
        async with self._db.engine.connect() as conn:
            rows = (await conn.execute(query)).all()
        records = [
            TransitionRecord(r.action, r.from_stage, r.to_stage, r.actor, r.role, r.comment, r.time)
            for r in rows
        ]
        token = ""
        if len(rows) > size:
            token = self._pages.encode(scope, {"t": rows[size - 1].time, "id": rows[size - 1].id})
        return records[:size], token

    async def pending(
        self,
        caller: Principal,
        parent: str,
        approver: str,
        approver_roles: frozenset[str],
        page_size: int,
        page_token: str,
    ) -> tuple[list[Pending], str]:
        """Campaigns in review whose rule needs a role the approver holds and
        that the approver has not yet approved in this round."""
        names.require_same_tenant(parent, "parent", caller.tenant_id)
        (tenant_id,) = names.parse_name(parent, "parent", "tenants")
        size = names.page_size(page_size)
        scope = pagination.scope("ListPendingApprovals", parent, approver, sorted(approver_roles))
        cursor = self._pages.decode(scope, page_token, "t", "id")
        rules = {r.id: r for r in await self.rules(tenant_id)}
        c = campaigns.c
        query = (
            campaigns.select()
            .where(c.tenant_id == tenant_id, c.stage == "IN_REVIEW")
            .order_by(c.update_time, c.id)
        )
        if cursor:
            after_t, after_id = int(cursor["t"]), str(cursor["id"])
            query = query.where(
                sa.or_(c.update_time > after_t, sa.and_(c.update_time == after_t, c.id > after_id))
            )
        result: list[Pending] = []
        async with self._db.engine.connect() as conn:
            for row in (await conn.execute(query)).all():
                campaign = store.campaign_from_row(row)
                rule = rules.get(campaign.approval_rule)
                if rule is None or rule.required_role not in approver_roles:
                    continue
                done = await self.approvers(campaign)
                if approver in done:
                    continue
                submit_time = (
                    await conn.execute(
                        sa.select(sa.func.max(transitions.c.time)).where(
                            transitions.c.campaign_id == campaign.id,
                            transitions.c.action == "SUBMIT",
                        )
                    )
                ).scalar_one() or campaign.update_time
                result.append(Pending(campaign, rule, done, int(submit_time)))
                if len(result) > size:
                    break
        token = ""
        if len(result) > size:
            last = result[size - 1].campaign
            token = self._pages.encode(scope, {"t": last.update_time, "id": last.id})
        return result[:size], token

    async def calendar(
        self, caller: Principal, parent: str, start: int | None, end: int | None
    ) -> list[CalendarItem]:
        names.require_same_tenant(parent, "parent", caller.tenant_id)
        (tenant_id,) = names.parse_name(parent, "parent", "tenants")
        if start is None or end is None:
            raise InvalidArgument(
                "start_time and end_time are required",
                field_violations=[
                    FieldViolation(f, "is required")
                    for f, v in (("start_time", start), ("end_time", end))
                    if v is None
                ],
            )
        if end <= start:
            raise InvalidArgument.field("end_time", "must be after start_time")
        if end - start > 400 * 86_400 * 1_000_000:
            raise InvalidArgument.field("end_time", "the range is at most 400 days")
        c = campaigns.c
        query = (
            campaigns.select()
            .where(c.tenant_id == tenant_id, c.start_time < end, c.end_time > start)
            .order_by(c.start_time, c.id)
            .limit(5000)
        )
        async with self._db.engine.connect() as conn:
            rows = (await conn.execute(query)).all()
        return [CalendarItem(store.campaign_from_row(r), r.start_time, r.end_time) for r in rows]

    # -- scheduler -----------------------------------------------------------

    async def run_due_transitions(self) -> int:
        """Scheduled -> Live at start, Live/Paused -> Completed at end, for
        every tenant. Returns how many transitions were made."""
        now = self._clock()
        async with self._db.engine.connect() as conn:
            rows = (await conn.execute(_DUE_TRANSITIONS, {"now": now})).all()
        moved = 0
        for row in rows:
            campaign = store.campaign_from_row(row)
            ended = row.end_time is not None and row.end_time <= now
            action, to_stage = ("COMPLETE", "COMPLETED") if ended else ("GO_LIVE", "LIVE")
            try:
                await self._move(
                    campaign,
                    action,
                    to_stage,
                    SCHEDULER_ACTOR,
                    "system",
                    "schedule " + ("ended" if ended else "started"),
                )
                moved += 1
            except Aborted:
                continue  # another scheduler or a user moved it first
        return moved

    async def seconds_to_next_transition(self) -> float | None:
        """How long until the next schedule transition falls due (0 if one is
        due now), or None when no campaign has one ahead."""
        now = self._clock()
        async with self._db.engine.connect() as conn:
            starts, ends = (await conn.execute(_NEXT_TRANSITIONS, {"now": now})).one()
        ahead = [t for t in (starts, ends) if t is not None]
        return max(0.0, (min(ahead) - now) / 1e6) if ahead else None


# The scheduler's queries, built once: building the expression cost more than
# running it. A campaign in one of these stages completes at its end.
_COMPLETABLE = ("LIVE", "PAUSED", "SCHEDULED")
_DUE_TRANSITIONS = (
    campaigns.select()
    .where(
        sa.or_(
            sa.and_(
                campaigns.c.stage == "SCHEDULED",
                campaigns.c.start_time <= sa.bindparam("now"),
            ),
            sa.and_(
                campaigns.c.stage.in_(_COMPLETABLE),
                campaigns.c.end_time <= sa.bindparam("now"),
            ),
        )
    )
    .limit(500)
)
# The earliest start of a SCHEDULED campaign and the earliest end of a
# completable one, after `now`.
_NEXT_TRANSITIONS = sa.select(
    sa.select(sa.func.min(campaigns.c.start_time))
    .where(campaigns.c.stage == "SCHEDULED", campaigns.c.start_time > sa.bindparam("now"))
    .scalar_subquery(),
    sa.select(sa.func.min(campaigns.c.end_time))
    .where(
        campaigns.c.stage.in_(_COMPLETABLE),
        campaigns.c.end_time > sa.bindparam("now"),
    )
    .scalar_subquery(),
)


def _bounds(campaign: Campaign) -> tuple[int | None, int | None]:
    return bounds_us(campaign.spec.schedule)


def _money_text(money: Money) -> str:
    return f"{money.amount_micros / 1_000_000:,.2f} {money.currency_code}"


# Every tenant's campaign events (a plain subscription: every process gets them).
CHANGES_SUBJECT = f"{SUBJECT_PREFIX}.>"


class BudgetSweep(Protocol):
    async def sweep(self, now: int | None = None) -> int: ...


class Scheduler:
    """Makes the schedule's transitions (`run_due_transitions`) when they
    fall due, and runs the budget sweep every `sweep_interval` seconds
    (pacing alerts and local-midnight resets need no finer grain; the sweep
    reads every live campaign and its spend, too much to do every second
    next to bidding). Safe to run in every process: each transition is
    conditional.

    It does not poll the database every second: after each pass it reads
    when the next transition falls due and sleeps until then, until a
    campaign changes (with `bus`: every process hears every campaign event,
    so a campaign scheduled anywhere wakes it), or `resync_interval` at the
    most (an event lost on the way). Passes are at least `interval` apart,
    so a transition happens within about `interval` of its time."""

    def __init__(
        self,
        workflow: Workflow,
        budgets: BudgetSweep | None = None,
        *,
        bus: MessageBus | None = None,
        interval: float = 1.0,
        sweep_interval: float = 30.0,
        resync_interval: float = 30.0,
    ) -> None:
        self._workflow = workflow
        self._budgets = budgets
        self._bus = bus
        self._interval = interval
        self._sweep_interval = sweep_interval
        self._resync_interval = resync_interval
        self._changed = asyncio.Event()
        self._subscription: Subscription | None = None
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._loop())

    async def _on_change(self, message: BusMessage) -> None:
        self._changed.set()

    async def _subscribe(self) -> None:
        if self._bus is None or self._subscription is not None:
            return
        try:
            self._subscription = await self._bus.subscribe(CHANGES_SUBJECT, self._on_change)
        except Exception:  # the resync interval still bounds how late it can be
            log.warning("scheduler: cannot subscribe to campaign changes", exc_info=True)

    async def _loop(self) -> None:
        next_sweep = 0.0
        while True:
            await self._subscribe()
            self._changed.clear()  # a change from here on calls for another pass
            wait = self._resync_interval
            try:
                await self._workflow.run_due_transitions()
                due_in = await self._workflow.seconds_to_next_transition()
                if due_in is not None:
                    wait = min(wait, due_in)
                if self._budgets is not None and time.monotonic() >= next_sweep:
                    # Pacing alerts and budget resets need no notice to happen.
                    next_sweep = time.monotonic() + self._sweep_interval
                    await self._budgets.sweep()
            except Exception:  # a database outage must not end the scheduler
                log.warning("scheduler pass failed; retrying", exc_info=True)
                wait = self._interval
            if self._budgets is not None:
                wait = min(wait, max(0.0, next_sweep - time.monotonic()))
            deadline = time.monotonic() + wait
            await asyncio.sleep(self._interval)  # at most one pass per interval
            remaining = deadline - time.monotonic()
            if remaining > 0 and not self._changed.is_set():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._changed.wait(), remaining)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None
        if self._subscription is not None:
            await self._subscription.unsubscribe()
            self._subscription = None
