"""CampaignService: protos in, domain calls, protos out."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from campaignexpress.campaigns.v1 import (
    budget_pb2,
    campaign_pb2,
    campaign_service_pb2,
    campaign_service_pb2_grpc,
)
from services.campaigns import convert
from services.campaigns.budget import Budgets, DeliveryEventIn
from services.campaigns.domain import Campaigns
from services.campaigns.templates import TEMPLATES
from services.campaigns.workflow import ApprovalRule, Workflow
from services.common.call import current_principal
from services.common.protoconv import micros, timestamp

pb = campaign_service_pb2

ApprovalRolesOf = Callable[[str, str], Awaitable[frozenset[str]]]


def _paths(mask: Any, prefix: str) -> list[str]:
    return [p.removeprefix(prefix + ".") for p in mask.paths]


def rule_out(rule: ApprovalRule, tenant_id: str) -> campaign_pb2.ApprovalRule:
    return campaign_pb2.ApprovalRule(
        name=rule.name(tenant_id),
        display_name=rule.display_name,
        required_role=rule.required_role,
        min_approvals=rule.min_approvals,
        auto_approve_below_budget=convert.money_out(rule.auto_approve_below_budget),
        min_total_budget=convert.money_out(rule.min_total_budget),
        channels=convert.channel_values(rule.channels),  # type: ignore[arg-type]
        creative_review=rule.creative_review,
        legal_review=rule.legal_review,
        priority=rule.priority,
        disabled=rule.disabled,
    )


def rule_in(rule: campaign_pb2.ApprovalRule) -> ApprovalRule:
    return ApprovalRule(
        id="",
        display_name=rule.display_name,
        required_role=rule.required_role,
        min_approvals=rule.min_approvals,
        auto_approve_below_budget=convert.money_in(rule.auto_approve_below_budget),
        min_total_budget=convert.money_in(rule.min_total_budget),
        channels=convert.channel_names(rule.channels),
        creative_review=rule.creative_review,
        legal_review=rule.legal_review,
        priority=rule.priority,
        disabled=rule.disabled,
    )


class CampaignServicer(campaign_service_pb2_grpc.CampaignServiceServicer):
    def __init__(
        self,
        campaigns: Campaigns,
        workflow: Workflow,
        budgets: Budgets,
        approval_roles_of: ApprovalRolesOf,
    ) -> None:
        self._campaigns = campaigns
        self._workflow = workflow
        self._budgets = budgets
        self._approval_roles_of = approval_roles_of

    # -- campaigns ---------------------------------------------------------

    async def CreateCampaign(self, request: pb.CreateCampaignRequest, context: Any) -> Any:
        campaign = await self._campaigns.create(
            current_principal(),
            request.parent,
            convert.spec_in(request.campaign),
            request.template_id,
            request.request_id,
        )
        return pb.CreateCampaignResponse(campaign=convert.campaign_out(campaign))

    async def GetCampaign(self, request: pb.GetCampaignRequest, context: Any) -> Any:
        campaign = await self._campaigns.get(current_principal(), request.name, request.revision)
        return pb.GetCampaignResponse(campaign=convert.campaign_out(campaign))

    async def ListCampaigns(self, request: pb.ListCampaignsRequest, context: Any) -> Any:
        found, token = await self._campaigns.list_campaigns(
            current_principal(),
            request.parent,
            request.page_size,
            request.page_token,
            request.filter,
        )
        return pb.ListCampaignsResponse(
            campaigns=[convert.campaign_out(c) for c in found], next_page_token=token
        )

    async def UpdateCampaign(self, request: pb.UpdateCampaignRequest, context: Any) -> Any:
        campaign = await self._campaigns.update(
            current_principal(),
            request.campaign.name,
            convert.spec_in(request.campaign),
            _paths(request.update_mask, "campaign"),
            request.campaign.etag,
        )
        return pb.UpdateCampaignResponse(campaign=convert.campaign_out(campaign))

    async def DeleteCampaign(self, request: pb.DeleteCampaignRequest, context: Any) -> Any:
        await self._campaigns.delete(current_principal(), request.name, request.etag)
        return pb.DeleteCampaignResponse()

    async def CloneCampaign(self, request: pb.CloneCampaignRequest, context: Any) -> Any:
        campaign = await self._campaigns.clone(
            current_principal(), request.name, request.display_name
        )
        return pb.CloneCampaignResponse(campaign=convert.campaign_out(campaign))

    async def ListCampaignRevisions(
        self, request: pb.ListCampaignRevisionsRequest, context: Any
    ) -> Any:
        caller = current_principal()
        current = await self._campaigns.get(caller, request.name)
        found, token = await self._campaigns.revisions(
            caller, request.name, request.page_size, request.page_token
        )
        revisions = []
        for r in found:
            snapshot = convert.campaign_out(current)
            snapshot.ClearField("etag")
            for field in (
                "display_name",
                "objective",
                "channels",
                "schedule",
                "budget",
                "pacing_mode",
                "bid_strategy",
                "targeting",
                "frequency_caps",
                "loyalty_rules",
                "labels",
                "allow_repeat_offers",
                "cap_failure_mode",
                "messaging",
            ):
                snapshot.ClearField(field)
            convert.spec_out(r.spec, snapshot)
            snapshot.revision = r.revision
            snapshot.stage = campaign_pb2.Stage.Value("STAGE_" + r.stage)
            revisions.append(
                campaign_pb2.CampaignRevision(
                    revision=r.revision,
                    campaign=snapshot,
                    actor=r.actor,
                    change=r.change,
                    create_time=timestamp(r.create_time),
                )
            )
        return pb.ListCampaignRevisionsResponse(revisions=revisions, next_page_token=token)

    async def RollbackCampaign(self, request: pb.RollbackCampaignRequest, context: Any) -> Any:
        campaign = await self._campaigns.rollback(
            current_principal(), request.name, request.revision, request.etag
        )
        return pb.RollbackCampaignResponse(campaign=convert.campaign_out(campaign))

    async def ImportCampaigns(self, request: pb.ImportCampaignsRequest, context: Any) -> Any:
        bundles = [
            (convert.spec_in(b.campaign), [convert.offer_spec_in(o) for o in b.offers])
            for b in request.bundles
        ]
        created = await self._campaigns.import_bundles(
            current_principal(), request.parent, bundles, request.request_id
        )
        return pb.ImportCampaignsResponse(campaigns=[convert.campaign_out(c) for c in created])

    async def ExportCampaigns(self, request: pb.ExportCampaignsRequest, context: Any) -> Any:
        exported = await self._campaigns.export(current_principal(), request.parent, request.filter)
        return pb.ExportCampaignsResponse(
            bundles=[
                pb.CampaignBundle(
                    campaign=convert.campaign_out(c), offers=[convert.offer_out(o) for o in offers]
                )
                for c, offers in exported
            ]
        )

    async def ListCampaignTemplates(
        self, request: pb.ListCampaignTemplatesRequest, context: Any
    ) -> Any:
        templates = []
        for t in TEMPLATES.values():
            campaign = campaign_pb2.Campaign()
            convert.spec_out(t.spec, campaign)
            templates.append(
                pb.CampaignTemplate(
                    template_id=t.template_id,
                    display_name=t.display_name,
                    description=t.description,
                    campaign=campaign,
                )
            )
        return pb.ListCampaignTemplatesResponse(templates=templates)

    # -- offers ------------------------------------------------------------

    async def CreateOffer(self, request: pb.CreateOfferRequest, context: Any) -> Any:
        offer = await self._campaigns.create_offer(
            current_principal(),
            request.parent,
            convert.offer_spec_in(request.offer),
            request.request_id,
        )
        return pb.CreateOfferResponse(offer=convert.offer_out(offer))

    async def GetOffer(self, request: pb.GetOfferRequest, context: Any) -> Any:
        offer = await self._campaigns.get_offer(current_principal(), request.name)
        return pb.GetOfferResponse(offer=convert.offer_out(offer))

    async def ListOffers(self, request: pb.ListOffersRequest, context: Any) -> Any:
        found, token = await self._campaigns.list_offers(
            current_principal(), request.parent, request.page_size, request.page_token
        )
        return pb.ListOffersResponse(
            offers=[convert.offer_out(o) for o in found], next_page_token=token
        )

    async def UpdateOffer(self, request: pb.UpdateOfferRequest, context: Any) -> Any:
        offer = await self._campaigns.update_offer(
            current_principal(),
            request.offer.name,
            convert.offer_spec_in(request.offer),
            _paths(request.update_mask, "offer"),
            request.offer.etag,
        )
        return pb.UpdateOfferResponse(offer=convert.offer_out(offer))

    async def DeleteOffer(self, request: pb.DeleteOfferRequest, context: Any) -> Any:
        await self._campaigns.delete_offer(current_principal(), request.name)
        return pb.DeleteOfferResponse()

    # -- workflow ------------------------------------------------------------

    async def _act(self, request: Any, action: str, response: Any, **review: bool) -> Any:
        result = await self._workflow.act(
            current_principal(), request.name, action, request.comment, request.etag, **review
        )
        reply = response(campaign=convert.campaign_out(result.campaign))
        if result.transition is not None:
            reply.transition.CopyFrom(convert.transition_out(result.transition))
        return reply

    async def SubmitCampaign(self, request: pb.SubmitCampaignRequest, context: Any) -> Any:
        return await self._act(request, "SUBMIT", pb.SubmitCampaignResponse)

    async def ApproveCampaign(self, request: pb.ApproveCampaignRequest, context: Any) -> Any:
        return await self._act(
            request,
            "APPROVE",
            pb.ApproveCampaignResponse,
            creative_reviewed=request.creative_reviewed,
            legal_reviewed=request.legal_reviewed,
        )

    async def RejectCampaign(self, request: pb.RejectCampaignRequest, context: Any) -> Any:
        return await self._act(request, "REJECT", pb.RejectCampaignResponse)

    async def RequestCampaignChanges(
        self, request: pb.RequestCampaignChangesRequest, context: Any
    ) -> Any:
        return await self._act(request, "REQUEST_CHANGES", pb.RequestCampaignChangesResponse)

    async def ScheduleCampaign(self, request: pb.ScheduleCampaignRequest, context: Any) -> Any:
        return await self._act(request, "SCHEDULE", pb.ScheduleCampaignResponse)

    async def LaunchCampaign(self, request: pb.LaunchCampaignRequest, context: Any) -> Any:
        return await self._act(request, "GO_LIVE", pb.LaunchCampaignResponse)

    async def PauseCampaign(self, request: pb.PauseCampaignRequest, context: Any) -> Any:
        return await self._act(request, "PAUSE", pb.PauseCampaignResponse)

    async def ResumeCampaign(self, request: pb.ResumeCampaignRequest, context: Any) -> Any:
        return await self._act(request, "RESUME", pb.ResumeCampaignResponse)

    async def CompleteCampaign(self, request: pb.CompleteCampaignRequest, context: Any) -> Any:
        return await self._act(request, "COMPLETE", pb.CompleteCampaignResponse)

    async def ArchiveCampaign(self, request: pb.ArchiveCampaignRequest, context: Any) -> Any:
        return await self._act(request, "ARCHIVE", pb.ArchiveCampaignResponse)

    async def ListCampaignTransitions(
        self, request: pb.ListCampaignTransitionsRequest, context: Any
    ) -> Any:
        found, token = await self._workflow.transitions(
            current_principal(), request.name, request.page_size, request.page_token
        )
        return pb.ListCampaignTransitionsResponse(
            transitions=[convert.transition_out(t) for t in found], next_page_token=token
        )

    async def ListPendingApprovals(
        self, request: pb.ListPendingApprovalsRequest, context: Any
    ) -> Any:
        caller = current_principal()
        approver = request.approver or caller.subject
        roles = (
            caller.approval_roles
            if approver == caller.subject
            else await self._approval_roles_of(caller.tenant_id, approver)
        )
        found, token = await self._workflow.pending(
            caller, request.parent, approver, roles, request.page_size, request.page_token
        )
        return pb.ListPendingApprovalsResponse(
            pending_approvals=[
                campaign_pb2.PendingApproval(
                    campaign=convert.campaign_out(p.campaign),
                    rule=rule_out(p.rule, p.campaign.tenant_id),
                    approvals=len(p.approvers),
                    approvers=p.approvers,
                    submit_time=timestamp(p.submit_time),
                )
                for p in found
            ],
            next_page_token=token,
        )

    async def ListApprovalRules(self, request: pb.ListApprovalRulesRequest, context: Any) -> Any:
        caller = current_principal()
        rules = await self._workflow.list_rules(caller, request.parent)
        return pb.ListApprovalRulesResponse(
            approval_rules=[rule_out(r, caller.tenant_id) for r in rules]
        )

    async def UpdateApprovalRule(self, request: pb.UpdateApprovalRuleRequest, context: Any) -> Any:
        caller = current_principal()
        rule = await self._workflow.update_rule(
            caller,
            request.approval_rule.name,
            rule_in(request.approval_rule),
            _paths(request.update_mask, "approval_rule"),
        )
        return pb.UpdateApprovalRuleResponse(approval_rule=rule_out(rule, caller.tenant_id))

    async def GetCampaignCalendar(
        self, request: pb.GetCampaignCalendarRequest, context: Any
    ) -> Any:
        items = await self._workflow.calendar(
            current_principal(),
            request.parent,
            micros(request.start_time, request.HasField("start_time"), "start_time"),
            micros(request.end_time, request.HasField("end_time"), "end_time"),
        )
        return pb.GetCampaignCalendarResponse(
            entries=[
                campaign_pb2.CalendarEntry(
                    campaign=i.campaign.name,
                    display_name=i.campaign.spec.display_name,
                    stage=campaign_pb2.Stage.Value("STAGE_" + i.campaign.stage),
                    start_time=timestamp(i.start_time),
                    end_time=timestamp(i.end_time),
                    time_zone=i.campaign.spec.schedule.time_zone,
                )
                for i in items
            ]
        )

    # -- budgets -------------------------------------------------------------

    async def GetBudgetStatus(self, request: pb.GetBudgetStatusRequest, context: Any) -> Any:
        status = await self._budgets.status(current_principal(), request.campaign)
        m = convert.money_out
        return pb.GetBudgetStatusResponse(
            budget_status=budget_pb2.BudgetStatus(
                campaign=status.campaign,
                total_spend=m(status.total_spend),
                daily_spend=m(status.daily_spend),
                total_remaining=m(status.total_remaining),
                daily_remaining=m(status.daily_remaining),
                expected_daily_spend=m(status.expected_daily_spend),
                pacing_ratio=status.pacing_ratio,
                bid_rate=status.bid_rate,
                can_bid=status.can_bid,
                day=status.day,
            )
        )

    async def ListBudgetAlerts(self, request: pb.ListBudgetAlertsRequest, context: Any) -> Any:
        found, token = await self._budgets.list_alerts(
            current_principal(),
            request.parent,
            request.campaign,
            request.page_size,
            request.page_token,
        )
        return pb.ListBudgetAlertsResponse(
            budget_alerts=[
                budget_pb2.BudgetAlert(
                    name=a.name,
                    campaign=a.campaign,
                    type=budget_pb2.AlertType.Value("ALERT_TYPE_" + a.type),
                    day=a.day,
                    spend=convert.money_out(a.spend),
                    threshold=convert.money_out(a.threshold),
                    message=a.message,
                    create_time=timestamp(a.create_time),
                )
                for a in found
            ],
            next_page_token=token,
        )

    async def GetCampaignMetrics(self, request: pb.GetCampaignMetricsRequest, context: Any) -> Any:
        found = await self._budgets.metrics(current_principal(), request.campaign)
        m = convert.money_out
        return pb.GetCampaignMetricsResponse(
            metrics=budget_pb2.CampaignMetrics(
                campaign=found.campaign,
                impressions=found.impressions,
                clicks=found.clicks,
                conversions=found.conversions,
                spend=m(found.spend),
                revenue=m(found.revenue),
                roas=found.roas,
                roi_percent=found.roi_percent,
                cpa=m(found.cpa),
                cpc=m(found.cpc),
                cpm=m(found.cpm),
                ctr=found.ctr,
            )
        )

    async def RecordDeliveryEvents(
        self, request: pb.RecordDeliveryEventsRequest, context: Any
    ) -> Any:
        events = [
            DeliveryEventIn(
                campaign=e.campaign,
                bid_id=e.bid_id,
                type=convert.delivery_type_name(e.type),
                amount=convert.money_in(e.amount),
                event_time=micros(
                    e.event_time, e.HasField("event_time"), f"events[{i}].event_time"
                ),
            )
            for i, e in enumerate(request.events)
        ]
        recorded = await self._budgets.record_events(current_principal(), request.parent, events)
        return pb.RecordDeliveryEventsResponse(recorded=recorded)
