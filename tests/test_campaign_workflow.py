"""The governed workflow over gRPC: stages, approvals, scheduler, calendar."""

from __future__ import annotations

import asyncio
import datetime as dt

import grpc
import pytest
from google.protobuf import field_mask_pb2, timestamp_pb2
from grpc import aio

from campaignexpress.auth.v1 import auth_pb2
from campaignexpress.auth.v1 import auth_service_pb2 as auth_svc
from campaignexpress.auth.v1 import auth_service_pb2_grpc as auth_grpc
from campaignexpress.campaigns.v1 import campaign_pb2 as cpb
from campaignexpress.campaigns.v1 import campaign_service_pb2 as svc
from campaignexpress.type.v1 import access_pb2
from tests.campaign_helpers import create_with_offer, stub, usd
from tests.conftest import Env, error_details


async def approver_key(
    env: Env, role: str, approval_roles: list[str], tenant: str = "acme"
) -> list:
    made = await auth_grpc.AuthServiceStub(env.channel).CreateApiKey(
        auth_svc.CreateApiKeyRequest(
            parent=f"tenants/{tenant}",
            api_key=auth_pb2.ApiKey(
                display_name=f"{role} {approval_roles}",
                roles=[access_pb2.Role.Value(f"ROLE_{role}")],
                approval_roles=approval_roles,
            ),
        ),
        metadata=env.auth(tenant),
    )
    return [("authorization", f"Bearer {made.secret}")]


def local_in(seconds: float, zone: str = "UTC") -> str:
    import zoneinfo

    moment = dt.datetime.now(zoneinfo.ZoneInfo(zone)) + dt.timedelta(seconds=seconds)
    return moment.replace(tzinfo=None).isoformat(timespec="seconds")


async def wait_stage(env: Env, name: str, stage: int, seconds: float = 10) -> cpb.Campaign:
    deadline = asyncio.get_running_loop().time() + seconds
    while True:
        got = (
            await stub(env.channel).GetCampaign(
                svc.GetCampaignRequest(name=name), metadata=env.auth()
            )
        ).campaign
        if got.stage == stage or asyncio.get_running_loop().time() > deadline:
            return got
        await asyncio.sleep(0.1)


async def test_lifecycle_with_auto_approval_scheduler_pause_resume(env: Env) -> None:
    s = stub(env.channel)
    schedule = cpb.Schedule(
        start_date_time=local_in(2, "Asia/Tokyo"),
        end_date_time=local_in(3600, "Asia/Tokyo"),
        time_zone="Asia/Tokyo",
    )
    c = await create_with_offer(env.channel, env.auth(), schedule=schedule)
    submitted = await s.SubmitCampaign(
        svc.SubmitCampaignRequest(name=c.name, comment="go"), metadata=env.auth()
    )
    # $500 total is under the Standard rule's $1,000 auto-approval.
    assert submitted.campaign.stage == cpb.STAGE_APPROVED
    assert submitted.transition.actor == "system/approval-rules"
    assert submitted.campaign.approval_rule.endswith("/approvalRules/standard")
    scheduled = await s.ScheduleCampaign(
        svc.ScheduleCampaignRequest(name=c.name), metadata=env.auth()
    )
    assert scheduled.campaign.stage == cpb.STAGE_SCHEDULED
    live = await wait_stage(env, c.name, cpb.STAGE_LIVE)
    assert live.stage == cpb.STAGE_LIVE  # moved by the scheduler at the local start
    operator = env.auth(role="OPERATOR")
    paused = await s.PauseCampaign(
        svc.PauseCampaignRequest(name=c.name, comment="check"), metadata=operator
    )
    assert paused.campaign.stage == cpb.STAGE_PAUSED
    with pytest.raises(aio.AioRpcError) as caught:  # viewers cannot pause
        await s.ResumeCampaign(
            svc.ResumeCampaignRequest(name=c.name), metadata=env.auth(role="VIEWER")
        )
    assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED
    resumed = await s.ResumeCampaign(svc.ResumeCampaignRequest(name=c.name), metadata=operator)
    assert resumed.campaign.stage == cpb.STAGE_LIVE
    await s.CompleteCampaign(svc.CompleteCampaignRequest(name=c.name), metadata=env.auth())
    archived = await s.ArchiveCampaign(svc.ArchiveCampaignRequest(name=c.name), metadata=env.auth())
    assert archived.campaign.stage == cpb.STAGE_ARCHIVED
    history = await s.ListCampaignTransitions(
        svc.ListCampaignTransitionsRequest(name=c.name), metadata=env.auth()
    )
    assert [t.action for t in history.transitions] == [
        "SUBMIT",
        "APPROVE",
        "SCHEDULE",
        "GO_LIVE",
        "PAUSE",
        "RESUME",
        "COMPLETE",
        "ARCHIVE",
    ]
    go_live = history.transitions[3]
    assert go_live.actor == "system/scheduler"
    pause = history.transitions[4]
    assert pause.comment == "check" and pause.role == "operator"
    assert pause.actor.startswith("tenants/acme/apiKeys/")


async def test_invalid_action_names_stage_and_allowed_actions(env: Env) -> None:
    c = await create_with_offer(env.channel, env.auth())
    with pytest.raises(aio.AioRpcError) as caught:
        await stub(env.channel).LaunchCampaign(
            svc.LaunchCampaignRequest(name=c.name), metadata=env.auth()
        )
    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    details = error_details(caught.value)
    assert details["reason"] == "INVALID_TRANSITION"
    assert details["metadata"] == {"stage": "DRAFT", "allowed_actions": "SUBMIT"}
    assert "DRAFT" in caught.value.details() and "SUBMIT" in caught.value.details()


async def test_standard_review_needs_a_manager_and_not_the_submitter(env: Env) -> None:
    s = stub(env.channel)
    c = await create_with_offer(env.channel, env.auth(), budget=cpb.Budget(total=usd(5000)))
    submitted = await s.SubmitCampaign(svc.SubmitCampaignRequest(name=c.name), metadata=env.auth())
    assert submitted.campaign.stage == cpb.STAGE_IN_REVIEW
    with pytest.raises(aio.AioRpcError) as caught:  # the submitter cannot approve
        await s.ApproveCampaign(svc.ApproveCampaignRequest(name=c.name), metadata=env.auth())
    assert error_details(caught.value)["reason"] == "SELF_REVIEW"
    with pytest.raises(aio.AioRpcError) as caught:  # analysts lack CAMPAIGN_WRITE
        await s.ApproveCampaign(
            svc.ApproveCampaignRequest(name=c.name), metadata=env.auth(role="ANALYST")
        )
    assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED
    approved = await s.ApproveCampaign(
        svc.ApproveCampaignRequest(name=c.name, comment="ok"), metadata=env.auth(role="MANAGER")
    )
    assert approved.campaign.stage == cpb.STAGE_APPROVED
    assert approved.transition.role == "manager"
    # A change after approval needs a new approval.
    edited = await s.UpdateCampaign(
        svc.UpdateCampaignRequest(
            campaign=cpb.Campaign(name=c.name, display_name="Winter sale 2"),
            update_mask=field_mask_pb2.FieldMask(paths=["display_name"]),
        ),
        metadata=env.auth(),
    )
    assert edited.campaign.stage == cpb.STAGE_DRAFT


async def test_high_budget_needs_two_distinct_directors_counted_once(env: Env) -> None:
    s = stub(env.channel)
    c = await create_with_offer(
        env.channel, env.auth(), budget=cpb.Budget(total=usd(60_000), daily=usd(2_000))
    )
    await s.SubmitCampaign(svc.SubmitCampaignRequest(name=c.name), metadata=env.auth())
    got = (await s.GetCampaign(svc.GetCampaignRequest(name=c.name), metadata=env.auth())).campaign
    assert got.approval_rule.endswith("/high-budget")
    with pytest.raises(aio.AioRpcError) as caught:  # managers are not directors
        await s.ApproveCampaign(
            svc.ApproveCampaignRequest(name=c.name), metadata=env.auth(role="MANAGER")
        )
    assert error_details(caught.value)["metadata"]["required_role"] == "director"
    directors = [await approver_key(env, "MANAGER", ["director"]) for _ in range(5)]
    pending = await s.ListPendingApprovals(
        svc.ListPendingApprovalsRequest(parent="tenants/acme"), metadata=directors[0]
    )
    assert [p.campaign.name for p in pending.pending_approvals] == [c.name]
    first = await s.ApproveCampaign(svc.ApproveCampaignRequest(name=c.name), metadata=directors[0])
    assert first.campaign.stage == cpb.STAGE_IN_REVIEW and not first.HasField("transition")
    again = await s.ApproveCampaign(svc.ApproveCampaignRequest(name=c.name), metadata=directors[0])
    assert again.campaign.stage == cpb.STAGE_IN_REVIEW  # one approver counts once
    mine = await s.ListPendingApprovals(
        svc.ListPendingApprovalsRequest(parent="tenants/acme"), metadata=directors[0]
    )
    assert list(mine.pending_approvals) == []  # nothing left for this director
    # Four more directors at once: exactly one transition to Approved.
    results = await asyncio.gather(
        *(
            s.ApproveCampaign(svc.ApproveCampaignRequest(name=c.name), metadata=d)
            for d in directors[1:]
        ),
        return_exceptions=True,
    )
    outcomes = [r for r in results if not isinstance(r, Exception)]
    errors = [r for r in results if isinstance(r, Exception)]
    # A losing approver either raced the winner's write (ABORTED) or read the
    # campaign once it was already Approved (FAILED_PRECONDITION, stage APPROVED).
    unexpected = [
        repr(e)
        for e in errors
        if not (
            isinstance(e, aio.AioRpcError)
            and (
                e.code() == grpc.StatusCode.ABORTED
                or (
                    e.code() == grpc.StatusCode.FAILED_PRECONDITION
                    and error_details(e)["metadata"].get("stage") == "APPROVED"
                )
            )
        )
    ]
    assert unexpected == []
    assert sum(1 for r in outcomes if r.HasField("transition")) == 1
    history = await s.ListCampaignTransitions(
        svc.ListCampaignTransitionsRequest(name=c.name), metadata=env.auth()
    )
    assert [t.action for t in history.transitions] == ["SUBMIT", "APPROVE"]


async def test_rejection_and_resubmission_start_a_new_round(env: Env) -> None:
    s = stub(env.channel)
    c = await create_with_offer(env.channel, env.auth(), budget=cpb.Budget(total=usd(5000)))
    await s.SubmitCampaign(svc.SubmitCampaignRequest(name=c.name), metadata=env.auth())
    with pytest.raises(aio.AioRpcError) as caught:
        await s.RejectCampaign(
            svc.RejectCampaignRequest(name=c.name), metadata=env.auth(role="MANAGER")
        )
    assert "comment" in error_details(caught.value)["fields"]
    rejected = await s.RejectCampaign(
        svc.RejectCampaignRequest(name=c.name, comment="no CTA"), metadata=env.auth(role="MANAGER")
    )
    assert rejected.campaign.stage == cpb.STAGE_REJECTED
    resubmitted = await s.SubmitCampaign(
        svc.SubmitCampaignRequest(name=c.name), metadata=env.auth()
    )
    assert resubmitted.campaign.stage == cpb.STAGE_IN_REVIEW
    changes = await s.RequestCampaignChanges(
        svc.RequestCampaignChangesRequest(name=c.name, comment="smaller budget"),
        metadata=env.auth(role="MANAGER"),
    )
    assert changes.campaign.stage == cpb.STAGE_DRAFT


async def test_regulated_channel_needs_compliance_and_legal_review(env: Env) -> None:
    s = stub(env.channel)
    c = await create_with_offer(env.channel, env.auth(), channels=[cpb.CHANNEL_SMS])
    submitted = await s.SubmitCampaign(svc.SubmitCampaignRequest(name=c.name), metadata=env.auth())
    assert submitted.campaign.stage == cpb.STAGE_IN_REVIEW  # no auto-approval here
    assert submitted.campaign.approval_rule.endswith("/regulated-channel")
    officer = await approver_key(env, "MANAGER", ["compliance"])
    with pytest.raises(aio.AioRpcError) as caught:
        await s.ApproveCampaign(svc.ApproveCampaignRequest(name=c.name), metadata=officer)
    assert "legal_reviewed" in error_details(caught.value)["fields"]
    done = await s.ApproveCampaign(
        svc.ApproveCampaignRequest(name=c.name, legal_reviewed=True), metadata=officer
    )
    assert done.campaign.stage == cpb.STAGE_IN_REVIEW  # 1 of 2


async def test_rules_listed_in_order_and_updated_by_admins(env: Env) -> None:
    s = stub(env.channel)
    rules = await s.ListApprovalRules(
        svc.ListApprovalRulesRequest(parent="tenants/acme"), metadata=env.auth(role="VIEWER")
    )
    assert [r.display_name for r in rules.approval_rules] == [
        "Regulated Channel",
        "High Budget",
        "Standard",
    ]
    standard = rules.approval_rules[2]
    assert standard.auto_approve_below_budget.amount_micros == 1_000_000_000
    with pytest.raises(aio.AioRpcError) as caught:
        await s.UpdateApprovalRule(
            svc.UpdateApprovalRuleRequest(
                approval_rule=cpb.ApprovalRule(name=standard.name, min_approvals=2),
                update_mask=field_mask_pb2.FieldMask(paths=["min_approvals"]),
            ),
            metadata=env.auth(role="MANAGER"),
        )
    assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED
    updated = await s.UpdateApprovalRule(
        svc.UpdateApprovalRuleRequest(
            approval_rule=cpb.ApprovalRule(name=standard.name, min_approvals=2),
            update_mask=field_mask_pb2.FieldMask(paths=["min_approvals"]),
        ),
        metadata=env.auth(),
    )
    assert updated.approval_rule.min_approvals == 2
    with pytest.raises(aio.AioRpcError) as caught:
        await s.UpdateApprovalRule(
            svc.UpdateApprovalRuleRequest(
                approval_rule=cpb.ApprovalRule(name=standard.name, min_approvals=0),
                update_mask=field_mask_pb2.FieldMask(paths=["min_approvals"]),
            ),
            metadata=env.auth(),
        )
    assert "approval_rule.min_approvals" in error_details(caught.value)["fields"]


async def test_calendar_by_date_range(env: Env) -> None:
    s = stub(env.channel)
    dec = await create_with_offer(env.channel, env.auth(), display_name="December")
    await create_with_offer(
        env.channel,
        env.auth(),
        display_name="March",
        schedule=cpb.Schedule(
            start_date_time="2027-03-01T00:00", end_date_time="2027-03-31T00:00", time_zone="UTC"
        ),
    )

    def ts(text: str) -> timestamp_pb2.Timestamp:
        t = timestamp_pb2.Timestamp()
        t.FromJsonString(text)
        return t

    window = await s.GetCampaignCalendar(
        svc.GetCampaignCalendarRequest(
            parent="tenants/acme",
            start_time=ts("2026-12-15T00:00:00Z"),
            end_time=ts("2027-01-15T00:00:00Z"),
        ),
        metadata=env.auth(),
    )
    assert [e.campaign for e in window.entries] == [dec.name]
    # New York midnight is 05:00 UTC.
    assert window.entries[0].start_time.ToJsonString() == "2026-12-01T05:00:00Z"
    with pytest.raises(aio.AioRpcError) as caught:
        await s.GetCampaignCalendar(
            svc.GetCampaignCalendarRequest(parent="tenants/acme"), metadata=env.auth()
        )
    assert {"start_time", "end_time"} <= set(error_details(caught.value)["fields"])


async def test_scheduler_never_transitions_twice(env: Env) -> None:
    s = stub(env.channel)
    c = await create_with_offer(
        env.channel,
        env.auth(),
        schedule=cpb.Schedule(
            start_date_time=local_in(3600), end_date_time=local_in(7200), time_zone="UTC"
        ),
    )
    await s.SubmitCampaign(svc.SubmitCampaignRequest(name=c.name), metadata=env.auth())
    await s.ScheduleCampaign(svc.ScheduleCampaignRequest(name=c.name), metadata=env.auth())
    workflow = env.running.platform.api("campaigns").workflow
    # Pretend the start has come, for several schedulers at once (processes,
    # restarts): only one makes the transition.
    real_clock = workflow._clock
    workflow._clock = lambda: real_clock() + 3_700_000_000
    try:
        moved = await asyncio.gather(*(workflow.run_due_transitions() for _ in range(4)))
    finally:
        workflow._clock = real_clock
    assert sum(moved) == 1
    history = await s.ListCampaignTransitions(
        svc.ListCampaignTransitionsRequest(name=c.name), metadata=env.auth()
    )
    assert [t.action for t in history.transitions].count("GO_LIVE") == 1
