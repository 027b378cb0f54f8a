"""Reward signals for the models (FR-LOY-010): how a member took an offer,
worth a reward (clicked +1, redeemed +2, ignored -0.1). Each is recorded as
the member's `Loyalty Reward Signal` track event (events table, profile,
journeys' triggers, the analytics the models train on); given a policy's
decision, it is also that decision's reward in decisioning (counted once
there, however often the signal is sent)."""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from services.common import names
from services.common.call import Principal
from services.common.errors import FieldViolation, InvalidArgument, collect
from services.loyalty.ledger import Ledger, member_name_ids

REWARDS = {"clicked": 1.0, "redeemed": 2.0, "ignored": -0.1}
EVENT = "Loyalty Reward Signal"
MAX_OFFER_ID = 200
_SIGNAL_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$")

#: (policy name, decision id, reward) -> whether the decision had been
#: rewarded before (decisioning's Reward, with the caller's credentials).
DecisionReward = Callable[[str, str, float], Awaitable[bool]]


@dataclass(frozen=True, slots=True)
class Signalled:
    reward: float
    tier: str  # "" when not a member
    decision_duplicate: bool = False


class RewardSignals:
    def __init__(self, ledger: Ledger, recorder: Any, decision_reward: DecisionReward) -> None:
        self._ledger = ledger
        self._recorder = recorder
        self._decision_reward = decision_reward

    async def record(
        self,
        caller: Principal,
        member: str,
        offer_id: str,
        signal: str,
        signal_id: str,
        policy: str,
        decision_id: str,
    ) -> Signalled:
        bad: list[FieldViolation] = []
        tenant_id = member_id = ""
        try:
            tenant_id, member_id = member_name_ids(member, "member", caller)
        except InvalidArgument as error:
            bad += error.field_violations
        if not 1 <= len(offer_id) <= MAX_OFFER_ID or not offer_id.strip():
            bad.append(FieldViolation("offer_id", f"required, 1-{MAX_OFFER_ID} characters"))
        if signal not in REWARDS:
            bad.append(FieldViolation("signal_type", "CLICKED, REDEEMED or IGNORED"))
        if signal_id and not _SIGNAL_ID.match(signal_id):
            bad.append(FieldViolation("signal_id", "1-128 letters, digits, '.', '_', ':' or '-'"))
        if bool(policy) != bool(decision_id):
            bad.append(FieldViolation("decision_id" if policy else "policy",
                                      "policy and decision_id go together"))  # fmt: skip
        elif policy:
            names.require_same_tenant(policy, "policy", caller.tenant_id)
            if len(policy.split("/")) != 4 or policy.split("/")[2] != "policies":
                bad.append(FieldViolation("policy", "must be tenants/{tenant}/policies/{policy}"))
        collect(bad)
        reward = REWARDS[signal]
        tier = await self._ledger.tier_of(tenant_id, member_id)
        properties: dict[str, Any] = {"offer_id": offer_id, "signal": signal, "reward": reward}
        if tier:
            properties["tier"] = tier
        if policy:
            properties |= {"policy": policy, "decision_id": decision_id}
        duplicate = False
        if policy:  # the decision's reward first: a refused one records nothing
            duplicate = await self._decision_reward(policy, decision_id, reward)
        await self._recorder.track(
            tenant_id, member_id, EVENT, properties, source="loyalty",
            message_id=f"loyalty-signal:{signal_id}" if signal_id else "",
        )  # fmt: skip
        return Signalled(reward, tier, duplicate)
