"""LoyaltyService over gRPC: protos in, domain values out (and back)."""

from __future__ import annotations

from typing import Any

from campaignexpress.loyalty.v1 import loyalty_pb2 as lpb
from campaignexpress.loyalty.v1 import loyalty_service_pb2 as pb
from campaignexpress.loyalty.v1 import loyalty_service_pb2_grpc as pb_grpc
from services.common import names
from services.common.call import current_principal
from services.common.errors import FieldViolation, InvalidArgument, collect
from services.common.protoconv import micros, timestamp
from services.common.status import status_of
from services.loyalty.ledger import Applied, Ledger, Member, Transaction
from services.loyalty.program import EarnRule, Program, Reward
from services.loyalty.signals import RewardSignals

_TIERS: dict[str, lpb.Tier.ValueType] = {
    "BASIC": lpb.TIER_BASIC,
    "SILVER": lpb.TIER_SILVER,
    "GOLD": lpb.TIER_GOLD,
    "RESERVE": lpb.TIER_RESERVE,
}
_TIER_NAMES: dict[int, str] = {v: k for k, v in _TIERS.items()}
_KINDS: dict[str, lpb.TransactionKind.ValueType] = {
    "earn": lpb.TRANSACTION_KIND_EARN,
    "redeem": lpb.TRANSACTION_KIND_REDEEM,
    "expire": lpb.TRANSACTION_KIND_EXPIRE,
    "reversal": lpb.TRANSACTION_KIND_REVERSAL,
}
_KIND_NAMES: dict[int, str] = {v: k for k, v in _KINDS.items()}
_SIGNALS: dict[int, str] = {
    pb.SIGNAL_TYPE_CLICKED: "clicked",
    pb.SIGNAL_TYPE_REDEEMED: "redeemed",
    pb.SIGNAL_TYPE_IGNORED: "ignored",
}


def _tier_name(value: int) -> str:
    # an unknown number is the caller's error, named by the domain
    return _TIER_NAMES.get(value, "" if value == 0 else f"#{value}")


def member_proto(m: Member, program: Program) -> lpb.LoyaltyMember:
    share, needed = m.progress()
    return lpb.LoyaltyMember(
        name=m.name, tier=_TIERS[m.tier], stars_balance=m.balance, qualifying_stars=m.qualifying,
        lifetime_stars=m.lifetime, redemptions=m.redemptions, stars_redeemed=m.redeemed,
        stars_expired=m.expired, tier_progress=share, stars_to_next_tier=needed,
        enroll_time=timestamp(m.enroll_time), last_activity_time=timestamp(m.last_activity_time),
        period_end_time=timestamp(m.period_end), expire_time=timestamp(m.expire_time(program)),
        tier_change_time=timestamp(m.tier_change_time),
    )  # fmt: skip


def transaction_proto(t: Transaction) -> lpb.LoyaltyTransaction:
    member = f"tenants/{t.tenant_id}/loyaltyMembers/{t.member_id}"
    return lpb.LoyaltyTransaction(
        name=t.name, kind=_KINDS[t.kind], stars=t.stars, amount_cents=t.amount_cents,
        channel=t.channel, referral=t.referral, digital=t.digital, rate=t.rate,
        reward_id=t.reward_id, reason=t.reason,
        reverses=f"{member}/transactions/{t.reverses}" if t.reverses else "",
        balance_after=t.balance_after, tier_after=_TIERS[t.tier_after],
        create_time=timestamp(t.create_time), actor=t.actor,
    )  # fmt: skip


def program_proto(name: str, p: Program) -> lpb.LoyaltyProgram:
    return lpb.LoyaltyProgram(
        name=name,
        earn_rules=[
            lpb.EarnRule(id=r.id, channel=r.channel, multiplier=r.multiplier,
                         start_time=timestamp(r.start_us or None),
                         end_time=timestamp(r.end_us or None))
            for r in p.earn_rules
        ],
        rewards=[
            lpb.Reward(id=r.id, display_name=r.display_name, stars=r.stars,
                       value_cents=r.value_cents,
                       min_tier=_TIERS.get(r.min_tier, lpb.TIER_UNSPECIFIED))
            for r in p.rewards
        ],
        expiry_days=p.expiry_days,
        update_time=timestamp(p.update_time or None),
    )  # fmt: skip


class LoyaltyServicer(pb_grpc.LoyaltyServiceServicer):
    def __init__(self, ledger: Ledger, signals: RewardSignals) -> None:
        self._ledger = ledger
        self._signals = signals

    async def _applied(self, applied: Applied) -> tuple[Any, Any]:
        program = await self._ledger.program(applied.member.tenant_id)
        return transaction_proto(applied.transaction), member_proto(applied.member, program)

    async def GetLoyaltyProgram(self, request: pb.GetLoyaltyProgramRequest, context: Any) -> Any:
        found = await self._ledger.get_program(current_principal(), request.name)
        return pb.GetLoyaltyProgramResponse(loyalty_program=program_proto(request.name, found))

    async def UpdateLoyaltyProgram(
        self, request: pb.UpdateLoyaltyProgramRequest, context: Any
    ) -> Any:
        p = request.loyalty_program
        where = "loyalty_program"
        rules = []
        for i, r in enumerate(p.earn_rules):
            at = f"{where}.earn_rules[{i}]"
            start = micros(r.start_time, r.HasField("start_time"), f"{at}.start_time")
            end = micros(r.end_time, r.HasField("end_time"), f"{at}.end_time")
            rules.append(EarnRule(r.id, r.channel, r.multiplier, start or 0, end or 0))
        rewards = [
            Reward(r.id, r.display_name, r.stars, r.value_cents, _tier_name(r.min_tier))
            for r in p.rewards
        ]
        made = await self._ledger.update_program(
            current_principal(), p.name, rules, rewards, p.expiry_days
        )
        return pb.UpdateLoyaltyProgramResponse(loyalty_program=program_proto(p.name, made))

    async def EarnStars(self, request: pb.EarnStarsRequest, context: Any) -> Any:
        applied = await self._ledger.earn(
            current_principal(), request.member, request.amount_cents, request.channel,
            request.transaction_id, request.referral, request.digital,
        )  # fmt: skip
        transaction, member = await self._applied(applied)
        return pb.EarnStarsResponse(transaction=transaction, member=member,
                                    tier_changed=applied.tier_changed,
                                    duplicate=applied.duplicate)  # fmt: skip

    async def RedeemStars(self, request: pb.RedeemStarsRequest, context: Any) -> Any:
        applied = await self._ledger.redeem(
            current_principal(), request.member, request.reward_id, request.stars,
            request.transaction_id, request.reason,
        )  # fmt: skip
        transaction, member = await self._applied(applied)
        return pb.RedeemStarsResponse(
            transaction=transaction, member=member, duplicate=applied.duplicate
        )

    async def BatchRecordLoyaltyTransactions(
        self, request: pb.BatchRecordLoyaltyTransactionsRequest, context: Any
    ) -> Any:
        caller = current_principal()
        operations = []
        bad: list[FieldViolation] = []
        for i, op in enumerate(request.operations):
            at = f"operations[{i}]"
            try:
                which = op.WhichOneof("operation")
                if which == "earn":
                    e = op.earn
                    operations.append(self._ledger.earn_operation(
                        caller, e.member, e.amount_cents, e.channel, e.transaction_id,
                        e.referral, e.digital, at=f"{at}.earn.",
                    ))  # fmt: skip
                elif which == "redeem":
                    r = op.redeem
                    operations.append(await self._ledger.redeem_operation(
                        caller, r.member, r.reward_id, r.stars, r.transaction_id, r.reason,
                        at=f"{at}.redeem.",
                    ))  # fmt: skip
                else:
                    bad.append(FieldViolation(at, "an earn or a redeem"))
            except InvalidArgument as error:
                bad += error.field_violations
        collect(bad)
        results = await self._ledger.apply_batch(caller, request.parent, operations)
        program = await self._ledger.program(names.own_tenant(request.parent, caller.tenant_id))
        answer = pb.BatchRecordLoyaltyTransactionsResponse()
        for result in results:
            if isinstance(result, Applied):
                answer.results.add(
                    transaction=transaction_proto(result.transaction),
                    member=member_proto(result.member, program),
                    tier_changed=result.tier_changed, duplicate=result.duplicate,
                )  # fmt: skip
            else:
                answer.results.add(error=status_of(result))
        return answer

    async def ReverseTransaction(self, request: pb.ReverseTransactionRequest, context: Any) -> Any:
        applied = await self._ledger.reverse(
            current_principal(), request.name, request.transaction_id, request.reason
        )
        transaction, member = await self._applied(applied)
        return pb.ReverseTransactionResponse(
            transaction=transaction, member=member, duplicate=applied.duplicate
        )

    async def GetLoyaltyMember(self, request: pb.GetLoyaltyMemberRequest, context: Any) -> Any:
        member, program = await self._ledger.get_member(current_principal(), request.name)
        return pb.GetLoyaltyMemberResponse(loyalty_member=member_proto(member, program))

    async def ListLoyaltyMembers(self, request: pb.ListLoyaltyMembersRequest, context: Any) -> Any:
        tier = _tier_name(request.tier)
        if tier.startswith("#"):
            raise InvalidArgument.field("tier", "BASIC, SILVER, GOLD or RESERVE")
        found, program, token = await self._ledger.list_members(
            current_principal(), request.parent, request.page_size, request.page_token, tier
        )
        return pb.ListLoyaltyMembersResponse(
            loyalty_members=[member_proto(m, program) for m in found], next_page_token=token
        )

    async def ListLoyaltyTransactions(
        self, request: pb.ListLoyaltyTransactionsRequest, context: Any
    ) -> Any:
        kind = _KIND_NAMES.get(request.kind, "")
        if request.kind and not kind:
            raise InvalidArgument.field("kind", "EARN, REDEEM, EXPIRE or REVERSAL")
        found, token = await self._ledger.list_transactions(
            current_principal(), request.parent, request.page_size, request.page_token, kind
        )
        return pb.ListLoyaltyTransactionsResponse(
            transactions=[transaction_proto(t) for t in found], next_page_token=token
        )

    async def ExpireLoyaltyStars(self, request: pb.ExpireLoyaltyStarsRequest, context: Any) -> Any:
        tenant_id = names.own_tenant(request.parent, current_principal().tenant_id)
        swept = await self._ledger.sweep(tenant_id)
        return pb.ExpireLoyaltyStarsResponse(
            members_expired=swept.members_expired, stars_expired=swept.stars_expired,
            periods_closed=swept.periods_closed,
        )  # fmt: skip

    async def RecordRewardSignal(self, request: pb.RecordRewardSignalRequest, context: Any) -> Any:
        found = await self._signals.record(
            current_principal(), request.member, request.offer_id,
            _SIGNALS.get(request.signal_type, ""),
            request.signal_id, request.policy, request.decision_id,
        )  # fmt: skip
        return pb.RecordRewardSignalResponse(
            reward=found.reward, tier=_TIERS.get(found.tier, lpb.TIER_UNSPECIFIED),
            decision_duplicate=found.decision_duplicate,
        )  # fmt: skip
