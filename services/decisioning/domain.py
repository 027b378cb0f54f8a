"""Decision policies: defined and moved through their lifecycle here,
deciding from a per-process copy of their arms' statistics (reloaded when
older than REFRESH_SECONDS, so every process learns a reward within a
second), learning in the transaction that records each reward once.

A decision writes nothing: its id carries what its reward needs (signed,
services/decisioning/tokens.py), and the decisions made are counted in
memory and added to the arms' rows every FLUSH_SECONDS."""

from __future__ import annotations

import asyncio
import contextlib
import copy
import dataclasses
import hashlib
import logging
import math
import os
import re
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

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
from services.common.validation import check_text
from services.decisioning.bandits import (
    ALGORITHMS,
    CONTEXTUAL,
    ArmState,
    choose_many,
    interval,
    welch,
)
from services.decisioning.connector import (
    Connector,
    External,
    ExternalUnavailable,
    catalog_forward,
    check_connector,
    reward_forward,
)
from services.decisioning.log import (
    FLAG_EXPLORED,
    FLAG_EXTERNAL,
    FLAG_HOLDOUT,
    MAX_STOCHASTIC,
    Estimate,
    as_it_decides,
    decision_row,
    estimate,
    estimate_stochastic,
    greedy,
    logged_value,
    read_logged,
    reward_model,
    reward_row,
)
from services.decisioning.store import HOLDOUT, PolicyRow, Store
from services.decisioning.tokens import Decision, DecisionTokens, features_of

log = logging.getLogger(__name__)

STATES = ("draft", "active", "paused", "completed")
MAX_ARMS = 100
MAX_DIMENSION = 256
MAX_HOLDOUT = 0.5
DEFAULT_MIN_SHARE = 0.01
MAX_GUARDRAILS = 10
DEFAULT_ALPHA = 0.01
DEFAULT_MIN_SAMPLES = 100
MAX_CONTEXT_KEYS = 50
MAX_USER_ID = 256
#: Decisions one BatchDecide call may ask for.
MAX_BATCH_DECISIONS = 1_000
#: A process's copy of a policy is reloaded when older than this.
REFRESH_SECONDS = 0.5
#: Decisions made here are added to the arms' rows this often.
FLUSH_SECONDS = 1.0
FIELDS = (
    "display_name", "guardrails", "holdout_share", "control_arm", "exploration", "arms",
    "connector",
)  # fmt: skip
_ARM_ID = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
_METRIC = re.compile(r"^[A-Za-z0-9_.:-]{1,64}$")
_NAMES = {
    "thompson_sampling": "Thompson sampling",
    "ucb1": "UCB1",
    "epsilon_greedy": "epsilon-greedy",
    "lin_ts": "linear Thompson sampling",
    "lin_ucb": "LinUCB",
}


@dataclass(frozen=True, slots=True)
class Guardrail:
    metric: str
    higher_is_worse: bool = True
    alpha: float = DEFAULT_ALPHA
    min_samples: int = DEFAULT_MIN_SAMPLES


@dataclass(frozen=True, slots=True)
class ArmSpec:
    id: str
    attributes: Mapping[str, Any] = field(default_factory=dict)
    stopped: bool = False
    stop_reason: str = ""


@dataclass(frozen=True, slots=True)
class Spec:
    """What a policy is, as stored in its row's `spec`."""

    algorithm: str = "thompson_sampling"
    arms: tuple[ArmSpec, ...] = ()
    dimension: int = 0
    holdout_share: float = 0.0
    control_arm: str = ""
    exploration: float = 0.0  # 0: the algorithm's default
    min_share: float = DEFAULT_MIN_SHARE
    guardrails: tuple[Guardrail, ...] = ()
    connector: Connector | None = None

    @property
    def control(self) -> str:
        return self.control_arm or (self.arms[0].id if self.arms else "")

    def to_json(self) -> dict[str, Any]:
        return {
            "algorithm": self.algorithm,
            "arms": [{"id": a.id, "attributes": dict(a.attributes), "stopped": a.stopped,
                      "stop_reason": a.stop_reason} for a in self.arms],
            "dimension": self.dimension,
            "holdout_share": self.holdout_share,
            "control_arm": self.control_arm,
            "exploration": self.exploration,
            "min_share": self.min_share,
            "guardrails": [{"metric": g.metric, "higher_is_worse": g.higher_is_worse,
                            "alpha": g.alpha, "min_samples": g.min_samples}
                           for g in self.guardrails],
            "connector": self.connector.to_json() if self.connector else None,
        }  # fmt: skip

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Spec:
        return cls(
            algorithm=str(data.get("algorithm", "thompson_sampling")),
            arms=tuple(
                ArmSpec(
                    str(a["id"]),
                    dict(a.get("attributes") or {}),
                    bool(a.get("stopped", False)),
                    str(a.get("stop_reason", "")),
                )
                for a in data.get("arms", [])
            ),  # fmt: skip
            dimension=int(data.get("dimension", 0)),
            holdout_share=float(data.get("holdout_share", 0.0)),
            control_arm=str(data.get("control_arm", "")),
            exploration=float(data.get("exploration", 0.0)),
            min_share=float(data.get("min_share", DEFAULT_MIN_SHARE)),
            guardrails=tuple(Guardrail(**g) for g in data.get("guardrails", [])),
            connector=Connector.from_json(data.get("connector")),
        )


@dataclass(frozen=True, slots=True)
class Policy:
    id: str
    tenant_id: str
    display_name: str
    state: str
    spec: Spec
    create_time: int
    update_time: int

    @property
    def name(self) -> str:
        return f"tenants/{self.tenant_id}/policies/{self.id}"


def _from_row(row: PolicyRow) -> Policy:
    return Policy(row.id, row.tenant_id, row.display_name, row.state, Spec.from_json(row.spec),
                  row.create_time, row.update_time)  # fmt: skip


@dataclass(frozen=True, slots=True)
class Explained:
    summary: str
    scores: list[tuple[str, float, int, float]]  # arm, score, impressions, mean
    features: list[tuple[int, float, float]]  # index (-1 intercept), weight, contribution
    explored: bool
    holdout: bool


@dataclass(frozen=True, slots=True)
class Decided:
    decision_id: str
    arm_id: str
    propensity: float
    explanation: Explained


@dataclass(frozen=True, slots=True)
class ArmSummary:
    arm: str
    impressions: int
    reward_sum: float
    mean: float
    ci: tuple[float, float]
    traffic_share: float
    decisions: int
    stopped: bool
    metrics: dict[str, float]


@dataclass(frozen=True, slots=True)
class LiftSummary:
    holdout_n: int
    holdout_mean: float
    policy_n: int
    policy_mean: float
    lift: float
    ci: tuple[float, float]


@dataclass
class _Loaded:
    """A process's copy of a policy and its arms' statistics."""

    policy: Policy
    arms: list[ArmState]  # in the policy's order
    holdout: ArmState
    loaded: float  # time.monotonic()
    refreshing: bool = False


class Decisions:
    def __init__(
        self,
        store: Store,
        tokens: DecisionTokens,
        *,
        clock: Callable[[], int] = now_us,
        rng: np.random.Generator | None = None,
        external: External | None = None,
        log: Any = None,
        analytics: Any = None,
    ) -> None:
        self.store = store
        self._external = external or External()
        #: the decision log's pipeline (emit), and the store it lands in
        self._log = log
        self._analytics = analytics
        self._tokens = tokens
        self._clock = clock
        self._rng = rng or np.random.default_rng(int.from_bytes(os.urandom(8), "big"))
        self._loaded: dict[str, _Loaded] = {}
        self._counts: Counter[tuple[str, str]] = Counter()
        #: Called when a row for the external service's forwarder was
        #: written (the module wires it to Forwarder.wake).
        self.forwarded: Callable[[], None] = lambda: None
        #: The tenant's global control group (GlobalControls): its members
        #: get the control arm, as held-out people do.
        self.global_control: Any = None
        self._flusher: asyncio.Task[None] | None = None

    # -- running ----------------------------------------------------------------

    async def start(self) -> None:
        self._flusher = asyncio.get_running_loop().create_task(self._flush_loop())

    async def stop(self) -> None:
        if self._flusher is not None:
            self._flusher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._flusher
            self._flusher = None
        try:
            await self.flush()
        except Exception:
            log.warning("decisioning: the last decision counts were not written", exc_info=True)
        await self._external.close()

    async def _flush_loop(self) -> None:
        while True:
            await asyncio.sleep(FLUSH_SECONDS)
            try:
                await self.flush()
            except Exception:
                log.warning("decisioning: decision counts not written; again soon", exc_info=True)

    async def flush(self) -> None:
        counts, self._counts = self._counts, Counter()
        try:
            await self.store.add_decisions(counts)
        except Exception:
            self._counts.update(counts)  # kept for the next time
            raise

    # -- policies ---------------------------------------------------------------

    async def create(
        self, caller: Principal, parent: str, display_name: str, spec: Spec, state: str
    ) -> Policy:
        tenant_id = names.own_tenant(parent, caller.tenant_id)
        if state not in ("", "draft", "active"):
            raise InvalidArgument.field("policy.state", "DRAFT or ACTIVE (the default)")
        bad: list[FieldViolation] = []
        check_text(bad, "policy.display_name", display_name, required=True, max_len=200)
        bad += check_spec(spec)
        collect(bad)
        now = self._clock()
        policy = Policy(random_hex_id(), tenant_id, display_name, state or "active", spec, now,
                        now)  # fmt: skip
        catalog = _catalog(policy, now)
        await self.store.create(_row(policy), [a.id for a in spec.arms], catalog)
        if catalog:
            self.forwarded()
        return policy

    async def get(self, caller: Principal, name: str, field_name: str = "name") -> Policy:
        tenant_id, policy_id = names.parse_name(name, field_name, "tenants", "policies")
        names.require_same_tenant(name, field_name, caller.tenant_id)
        return _from_row(await self.store.get(tenant_id, policy_id))

    async def list_policies(
        self, caller: Principal, parent: str, page_size: int, page_token: str
    ) -> tuple[list[Policy], str]:
        tenant_id = names.own_tenant(parent, caller.tenant_id)
        rows, token = await self.store.list_policies(tenant_id, page_size, page_token)
        return [_from_row(r) for r in rows], token

    async def update(
        self, caller: Principal, name: str, paths: Sequence[str], display_name: str, spec: Spec
    ) -> Policy:
        policy = await self.get(caller, name, "policy.name")
        wanted = set(paths) or set(FIELDS)
        unknown = wanted - set(FIELDS)
        if unknown:
            raise InvalidArgument.field(
                "update_mask", f"unknown fields {sorted(unknown)}; one of {FIELDS}"
            )
        current = policy.spec
        arms = current.arms
        new_arms: list[str] = []
        if "arms" in wanted:
            known = {a.id for a in current.arms}
            new_arms = [a.id for a in spec.arms if a.id not in known]
            arms = current.arms + tuple(a for a in spec.arms if a.id not in known)
        merged = Spec(
            algorithm=current.algorithm,
            arms=arms,
            dimension=current.dimension,
            holdout_share=spec.holdout_share
            if "holdout_share" in wanted
            else current.holdout_share,
            control_arm=spec.control_arm if "control_arm" in wanted else current.control_arm,
            exploration=spec.exploration if "exploration" in wanted else current.exploration,
            min_share=spec.min_share if "guardrails" in wanted else current.min_share,
            guardrails=spec.guardrails if "guardrails" in wanted else current.guardrails,
            connector=_merged_connector(spec.connector, current.connector)
            if "connector" in wanted
            else current.connector,
        )
        new_name = display_name if "display_name" in wanted else policy.display_name
        bad: list[FieldViolation] = []
        check_text(bad, "policy.display_name", new_name, required=True, max_len=200)
        bad += check_spec(merged)
        collect(bad)
        now = self._clock()
        sync = (new_arms or merged.connector != current.connector) and merged.connector
        forwards = _catalog(dataclasses.replace(policy, spec=merged), now) if sync else []
        await self.store.update(_row(policy), display_name=new_name, spec=merged.to_json(),
                                new_arms=new_arms, forwards=forwards)  # fmt: skip
        if forwards:
            self.forwarded()
        self._loaded.pop(policy.id, None)
        return await self.get(caller, name, "policy.name")

    async def move(self, caller: Principal, name: str, state: str) -> Policy:
        """activate (from DRAFT or PAUSED), pause (from ACTIVE), complete
        (from ACTIVE or PAUSED); already there: as it is."""
        allowed = {"active": ("draft", "paused"), "paused": ("active",),
                   "completed": ("active", "paused")}[state]  # fmt: skip
        policy = await self.get(caller, name)
        if policy.state == state:
            return policy
        if not await self.store.update(_row(policy), state=state, only_from=allowed):
            raise FailedPrecondition(
                f"{name} is {policy.state.upper()}; only "
                f"{' or '.join(s.upper() for s in allowed)} may become {state.upper()}"
            )
        self._loaded.pop(policy.id, None)
        return await self.get(caller, name)

    # -- deciding ---------------------------------------------------------------

    async def _copy(self, tenant_id: str, policy_id: str) -> _Loaded:
        """This process's copy of the policy: loaded on first use, reloaded
        (in the background) once older than REFRESH_SECONDS."""
        loaded = self._loaded.get(policy_id)
        if loaded is None or loaded.policy.tenant_id != tenant_id:
            loaded = await self._load(tenant_id, policy_id)
        elif time.monotonic() - loaded.loaded > REFRESH_SECONDS and not loaded.refreshing:
            loaded.refreshing = True
            asyncio.get_running_loop().create_task(self._reload(tenant_id, policy_id))
        return loaded

    async def _reload(self, tenant_id: str, policy_id: str) -> None:
        try:
            await self._load(tenant_id, policy_id)
        except Exception:
            log.warning("decisioning: %s not reloaded", policy_id, exc_info=True)
            found = self._loaded.get(policy_id)
            if found is not None:
                found.refreshing = False

    async def _load(self, tenant_id: str, policy_id: str) -> _Loaded:
        policy = _from_row(await self.store.get(tenant_id, policy_id))
        stats = await self.store.arms(policy_id, policy.spec.dimension)
        arms = []
        for spec in policy.spec.arms:
            arm = stats.get(spec.id) or ArmState(spec.id)
            if policy.spec.dimension and arm.a_inv is None:
                arm.prepare(policy.spec.dimension)
            arm.stopped = spec.stopped
            arms.append(arm)
        holdout = stats.get(HOLDOUT) or ArmState(HOLDOUT)
        loaded = _Loaded(policy, arms, holdout, time.monotonic())
        self._loaded[policy_id] = loaded
        return loaded

    async def decide(
        self,
        caller: Principal,
        name: str,
        features: Sequence[float],
        context: Mapping[str, Any],
        user_id: str,
    ) -> Decided:
        [decided] = await self.decide_many(caller, name, [(features, context, user_id)], at="")
        return decided

    async def decide_many(
        self,
        caller: Principal,
        name: str,
        requests: Sequence[tuple[Sequence[float], Mapping[str, Any], str]],
        *,
        at: str = "requests[{}].",
    ) -> list[Decided]:
        """One decision per (features, context, user id), in order; a bad
        request fails them all, its fields named `at` (formatted with its
        index). The policy is read once and the Thompson samplers draw for
        the whole batch at once (bandits.choose_many)."""
        tenant_id, policy_id = names.parse_name(name, "name", "tenants", "policies")
        names.require_same_tenant(name, "name", caller.tenant_id)
        if not 1 <= len(requests) <= MAX_BATCH_DECISIONS:
            raise InvalidArgument.field("requests", f"1-{MAX_BATCH_DECISIONS:,} decisions")
        loaded = await self._copy(tenant_id, policy_id)
        policy, spec = loaded.policy, loaded.policy.spec
        if policy.state != "active":
            raise FailedPrecondition(f"{name} is {policy.state.upper()}: it does not decide")
        bad: list[FieldViolation] = []
        for n, (features, context, user_id) in enumerate(requests):
            where = at.format(n)
            if len(features) != spec.dimension:
                bad.append(FieldViolation(f"{where}features", f"exactly {spec.dimension} numbers"))
            elif not all(math.isfinite(f) for f in features):
                bad.append(FieldViolation(f"{where}features",
                                          "finite numbers only (no NaN or infinity)"))  # fmt: skip
            if len(context) > MAX_CONTEXT_KEYS:
                bad.append(FieldViolation(f"{where}context", f"at most {MAX_CONTEXT_KEYS} keys"))
            if len(user_id) > MAX_USER_ID:
                bad.append(FieldViolation(f"{where}user_id", f"at most {MAX_USER_ID} characters"))
        collect(bad)
        kept = [features_of(features) for features, _, _ in requests]
        held: list[str] = []  # why each request is held out ("": it is not)
        for _, _, user_id in requests:
            grouped = (
                bool(user_id)
                and self.global_control is not None
                and (await self.global_control.member(tenant_id, user_id))
            )
            if grouped:
                held.append("in the tenant's global control group")
            elif self._held_out(policy, user_id):
                held.append(f"held out ({spec.holdout_share:.0%} of people)")
            else:
                held.append("")
        # each decision's time and nonce (its key: an external service's
        # request id is the key its reward is reported under)
        stamps = [(self._clock(), os.urandom(8)) for _ in requests]
        external: list[Any] = [None] * len(requests)
        why_local = [""] * len(requests)
        if spec.connector is not None:
            for n, (_, context, user_id) in enumerate(requests):
                if held[n]:
                    continue
                request_id = Decision(tenant_id, policy_id, 0, 1.0, *stamps[n][:1], False, (),
                                      stamps[n][1]).key  # fmt: skip
                live = [a.id for a in spec.arms if not a.stopped]
                try:
                    external[n] = await self._external.recommend(
                        spec.connector, request_id, user_id, kept[n], context, live
                    )
                except ExternalUnavailable as error:
                    why_local[n] = f"the external service ({spec.connector.use_case}): {error}"
        local = [n for n in range(len(requests)) if not held[n] and external[n] is None]
        algorithm = spec.algorithm if spec.connector is None else "thompson_sampling"
        local_features = [kept[n] if spec.connector is None else [] for n in local]
        choices = dict(zip(local, choose_many(
            algorithm, loaded.arms, local_features, self._rng,
            exploration=spec.exploration, min_share=spec.min_share,
        ), strict=True))  # fmt: skip
        out: list[Decided] = []
        for n, (_, _, user_id) in enumerate(requests):
            if held[n]:
                arm = next(i for i, a in enumerate(spec.arms) if a.id == spec.control)
                propensity = 1.0
                explained = Explained(f"{held[n]}: the control arm {spec.control!r}", [], [],
                                      False, True)  # fmt: skip
            elif external[n] is not None:  # (never for held-out people: they get the control)
                arm = next(i for i, a in enumerate(spec.arms) if a.id == external[n].arm_id)
                propensity = external[n].propensity
                explained = Explained(
                    f"chosen by the external decisioning service (use case "
                    f"{spec.connector.use_case!r})", [], [], False, False)  # type: ignore[union-attr]  # fmt: skip
            else:
                choice = choices[n]
                arm, propensity = choice.arm, choice.propensity
                explained = _explain(spec, loaded.arms, choice.arm, choice.scores,
                                     choice.explored,
                                     kept[n] if spec.connector is None else [])  # fmt: skip
                if spec.connector is not None:
                    explained = dataclasses.replace(
                        explained,
                        summary=f"{why_local[n]}; local Thompson sampling: {explained.summary}",
                    )
            time_us, nonce = stamps[n]
            decision = Decision(tenant_id, policy_id, arm, propensity, time_us, bool(held[n]),
                                kept[n], nonce)  # fmt: skip
            arm_id = spec.arms[arm].id
            self._counts[(policy_id, HOLDOUT if held[n] else arm_id)] += 1
            if self._log is not None:
                flags = ((FLAG_HOLDOUT if held[n] else 0)
                         | (FLAG_EXTERNAL if external[n] is not None else 0)
                         | (FLAG_EXPLORED if explained.explored else 0))  # fmt: skip
                self._log.emit(decision_row(decision.key, time_us, tenant_id, policy_id, arm_id,
                                            propensity, kept[n], user_id, flags))  # fmt: skip
            out.append(Decided(self._tokens.encode(decision), arm_id, propensity, explained))
        return out

    def _held_out(self, policy: Policy, user_id: str) -> bool:
        share = policy.spec.holdout_share
        if share <= 0:
            return False
        if not user_id:
            return bool(self._rng.random() < share)
        digest = hashlib.sha256(f"{policy.id}\x1f{user_id}".encode()).digest()
        return int.from_bytes(digest[:8], "big") / 2**64 < share

    # -- learning ---------------------------------------------------------------

    async def reward(
        self,
        caller: Principal,
        name: str,
        decision_id: str,
        reward: float,
        metrics: Mapping[str, float],
    ) -> tuple[str, bool]:
        """(the decision's arm, whether it had been rewarded before)."""
        policy = await self.get(caller, name)
        bad: list[FieldViolation] = []
        if not decision_id:
            bad.append(FieldViolation("decision_id", "required"))
        if not math.isfinite(reward):
            bad.append(FieldViolation("reward", "a finite number"))
        known = {g.metric for g in policy.spec.guardrails}
        for metric, value in sorted(metrics.items()):
            if metric not in known:
                bad.append(FieldViolation(f"metrics[{metric}]",
                                          "not a guardrail metric of this policy"))  # fmt: skip
            elif not math.isfinite(value):
                bad.append(FieldViolation(f"metrics[{metric}]", "a finite number"))
        collect(bad)
        decision = self._tokens.decode(decision_id)
        if decision is None:
            raise NotFound("no such decision", metadata={"resource": "decision_id"})
        if (decision.tenant_id, decision.policy_id) != (policy.tenant_id, policy.id):
            raise InvalidArgument.field("decision_id", "a decision of another policy")
        if decision.arm >= len(policy.spec.arms):
            raise InvalidArgument.field("decision_id", "its arm is not the policy's")
        arm_id = policy.spec.arms[decision.arm].id
        features = decision.features if policy.spec.dimension and not decision.holdout else None
        connector = policy.spec.connector
        forward = (
            reward_forward(connector, decision.key, arm_id, reward, self._clock())
            if connector is not None and not decision.holdout
            else None
        )
        learnt = await self.store.reward(
            decision.key,
            policy.id,
            HOLDOUT if decision.holdout else arm_id,
            reward,
            features if connector is None else None,
            policy.spec.dimension if connector is None else 0,
            metrics,
            forward,
        )
        if learnt is None:
            return arm_id, True
        if forward is not None:
            self.forwarded()
        if self._log is not None:
            self._log.emit(reward_row(decision.key, self._clock(), policy.tenant_id, policy.id,
                                      arm_id, reward))  # fmt: skip
        await self._load(policy.tenant_id, policy.id)  # this process learns at once
        if metrics and not decision.holdout:
            await self._guard(policy, arm_id)
        return arm_id, False

    async def evaluate(
        self, caller: Principal, name: str, candidate: str, days: int
    ) -> tuple[int, list[Estimate]]:
        """Off-policy estimates on the policy's logged decisions (log.py)."""
        policy = await self.get(caller, name)
        if not 0 <= days <= 90:
            raise InvalidArgument.field("days", "1-90 (0 means 30)")
        spec = policy.spec
        ids = [a.id for a in spec.arms]
        other = None
        if candidate:
            other = await self.get(caller, candidate, "candidate")
            if [a.id for a in other.spec.arms] != ids or other.spec.dimension != spec.dimension:
                raise InvalidArgument.field(
                    "candidate", "a policy with the same arms, in order, and context dimension"
                )
        if self._analytics is None:
            raise FailedPrecondition("the decision log is not kept in this process")
        if self._log is not None:
            await self._log.flush()  # this process's decisions, in the store now
        since = self._clock() - (days or 30) * 86_400_000_000
        logged = await read_logged(self._analytics, policy.tenant_id, policy.id, since,
                                   spec.dimension)  # fmt: skip
        q = reward_model(logged, ids)
        out = [logged_value(logged)]
        out += [estimate(f"always {arm}", logged, [arm] * len(logged.arms), q) for arm in ids]
        mine = await self._load(policy.tenant_id, policy.id)
        out.append(estimate("greedy (now)", logged,
                            greedy(mine.arms, ids, spec.dimension)(logged), q))  # fmt: skip
        part = logged.head(MAX_STOCHASTIC)
        algorithm = spec.algorithm if spec.connector is None else "thompson_sampling"
        # sampled in a thread, on a copy of what it has learnt, with its own generator
        dimension = spec.dimension if spec.connector is None else 0
        chances = as_it_decides(algorithm, copy.deepcopy(mine.arms), dimension,
                                spec.exploration, spec.min_share,
                                np.random.default_rng())  # fmt: skip
        out.append(estimate_stochastic("as it decides (now)", part,
                                       await asyncio.to_thread(chances, part),
                                       q.head(MAX_STOCHASTIC)))  # fmt: skip
        if other is not None:
            theirs = await self._load(other.tenant_id, other.id)
            out.append(estimate(other.name, logged,
                                greedy(theirs.arms, ids, spec.dimension)(logged), q))  # fmt: skip
        return len(logged.arms), out

    async def _guard(self, policy: Policy, arm_id: str) -> None:
        """Stop the arm when a guardrail metric of it is significantly worse
        than the control arm's (never the control arm, nor the last arm)."""
        spec = policy.spec
        if arm_id == spec.control:
            return
        stats = await self.store.arms(policy.id, 0)
        mine, control = stats.get(arm_id), stats.get(spec.control)
        if mine is None or control is None:
            return
        for guard in spec.guardrails:
            a, c = mine.metrics.get(guard.metric), control.metrics.get(guard.metric)
            if a is None or c is None or min(a[0], c[0]) < guard.min_samples:
                continue
            diff, _, p = welch(a[0], a[1], a[2], c[0], c[1], c[2])
            worse = diff > 0 if guard.higher_is_worse else diff < 0
            live = [x for x in spec.arms if not x.stopped]
            if worse and p < guard.alpha and len(live) > 1:
                direction = "higher" if guard.higher_is_worse else "lower"
                reason = (
                    f"{guard.metric} {direction} than {spec.control!r}'s by {abs(diff):.4g} "
                    f"(p = {p:.2g} < {guard.alpha:g})"
                )
                arms = tuple(
                    ArmSpec(x.id, x.attributes, True, reason) if x.id == arm_id else x
                    for x in spec.arms
                )
                changed = Spec(**{**_fields(spec), "arms": arms})
                await self.store.update(_row(policy), spec=changed.to_json())
                self._loaded.pop(policy.id, None)
                log.warning("decisioning: %s stopped arm %s: %s", policy.name, arm_id, reason)
                return

    # -- stats ------------------------------------------------------------------

    async def stats(
        self, caller: Principal, name: str
    ) -> tuple[list[ArmSummary], LiftSummary, int]:
        policy = await self.get(caller, name)
        await self.flush()  # this process's decisions so far
        stats = await self.store.arms(policy.id, 0)
        holdout = stats.get(HOLDOUT) or ArmState(HOLDOUT)
        arms = [stats.get(a.id) or ArmState(a.id) for a in policy.spec.arms]
        decisions = sum(a.decisions for a in arms) + holdout.decisions
        summaries = [
            ArmSummary(
                spec.id, arm.n, arm.reward_sum, arm.mean,
                interval(arm.n, arm.reward_sum, arm.reward_sq, arm.unit),
                arm.decisions / decisions if decisions else 0.0, arm.decisions, spec.stopped,
                {k: v[1] / v[0] for k, v in sorted(arm.metrics.items()) if v[0]},
            )
            for spec, arm in zip(policy.spec.arms, arms, strict=True)
        ]  # fmt: skip
        n = sum(a.n for a in arms)
        total = sum(a.reward_sum for a in arms)
        squares = sum(a.reward_sq for a in arms)
        diff, se, _ = welch(n, total, squares, holdout.n, holdout.reward_sum, holdout.reward_sq)
        half = 1.959963984540054 * se if math.isfinite(se) else 0.0
        lift = LiftSummary(
            holdout.n, holdout.mean, n, total / n if n else 0.0, diff,
            (diff - half, diff + half) if math.isfinite(se) else (0.0, 0.0),
        )  # fmt: skip
        return summaries, lift, decisions


def _fields(spec: Spec) -> dict[str, Any]:
    return {name: getattr(spec, name) for name in Spec.__dataclass_fields__}


def _catalog(policy: Policy, version: int) -> list[dict[str, Any]]:
    """The forward that tells the policy's external service its arms."""
    connector = policy.spec.connector
    if connector is None:
        return []
    arms = [{"id": a.id, "attributes": dict(a.attributes), "active": not a.stopped}
            for a in policy.spec.arms]  # fmt: skip
    return [catalog_forward(connector, policy.id, version, arms)]


def _merged_connector(given: Connector | None, current: Connector | None) -> Connector | None:
    """An update's connector; its API key kept when not given again (answers
    never show it)."""
    if given is None:
        return None
    if not given.api_key and current is not None:
        return dataclasses.replace(given, api_key=current.api_key)
    return given


def _row(policy: Policy) -> PolicyRow:
    return PolicyRow(policy.id, policy.tenant_id, policy.display_name, policy.state,
                     policy.spec.to_json(), policy.create_time, policy.update_time)  # fmt: skip


def check_spec(spec: Spec) -> list[FieldViolation]:
    """Every problem of a policy's definition, each naming its field."""
    bad: list[FieldViolation] = []
    if spec.algorithm not in ALGORITHMS:
        bad.append(FieldViolation("policy.algorithm", "not an algorithm"))
    if not 2 <= len(spec.arms) <= MAX_ARMS:
        bad.append(FieldViolation("policy.arms", f"2-{MAX_ARMS} arms"))
    seen: set[str] = set()
    for n, arm in enumerate(spec.arms):
        if not _ARM_ID.match(arm.id):
            bad.append(FieldViolation(f"policy.arms[{n}].id",
                                      "letters, digits, _, - and ., 1-64"))  # fmt: skip
        elif arm.id in seen:
            bad.append(FieldViolation(f"policy.arms[{n}].id", f"{arm.id!r} twice"))
        seen.add(arm.id)
    if spec.algorithm in CONTEXTUAL and not 1 <= spec.dimension <= MAX_DIMENSION:
        bad.append(FieldViolation("policy.context_dimension",
                                  f"1-{MAX_DIMENSION} for a contextual algorithm"))  # fmt: skip
    elif spec.algorithm not in CONTEXTUAL and spec.dimension:
        bad.append(FieldViolation("policy.context_dimension",
                                  "0: this algorithm takes no features"))  # fmt: skip
    if not (math.isfinite(spec.holdout_share) and 0 <= spec.holdout_share <= MAX_HOLDOUT):
        bad.append(FieldViolation("policy.holdout_share", f"0 to {MAX_HOLDOUT}"))
    if spec.control_arm and spec.control_arm not in seen:
        bad.append(FieldViolation("policy.control_arm", "not one of the arms"))
    if not (math.isfinite(spec.exploration) and spec.exploration >= 0):
        bad.append(FieldViolation("policy.exploration", "0 or more"))
    elif spec.algorithm == "epsilon_greedy" and spec.exploration > 1:
        bad.append(FieldViolation("policy.exploration", "epsilon-greedy's share: 0 to 1"))
    if spec.arms and not (
        math.isfinite(spec.min_share) and 0 <= spec.min_share <= 1 / len(spec.arms)
    ):
        bad.append(FieldViolation("policy.guardrails.min_arm_share",
                                  f"0 to 1/{len(spec.arms)} (one over the arms)"))  # fmt: skip
    if len(spec.guardrails) > MAX_GUARDRAILS:
        bad.append(FieldViolation("policy.guardrails.metrics", f"at most {MAX_GUARDRAILS}"))
    metrics: set[str] = set()
    for n, guard in enumerate(spec.guardrails):
        where = f"policy.guardrails.metrics[{n}]"
        if not _METRIC.match(guard.metric):
            bad.append(FieldViolation(f"{where}.metric", "letters, digits, _ . : -, 1-64"))
        elif guard.metric in metrics:
            bad.append(FieldViolation(f"{where}.metric", f"{guard.metric!r} twice"))
        metrics.add(guard.metric)
        if not (math.isfinite(guard.alpha) and 0.0001 <= guard.alpha <= 0.2):
            bad.append(FieldViolation(f"{where}.alpha", "0.0001 to 0.2"))
        if not 2 <= guard.min_samples <= 10_000_000:
            bad.append(FieldViolation(f"{where}.min_samples", "2 to 10,000,000"))
    if spec.connector is not None:
        problems = check_connector(spec.connector, "policy.connector")
        bad += [FieldViolation(f, why) for f, why in problems]
    return bad


def _explain(
    spec: Spec,
    arms: Sequence[ArmState],
    chosen: int,
    scores: Sequence[float],
    explored: bool,
    features: Sequence[float],
) -> Explained:
    algorithm = _NAMES.get(spec.algorithm, spec.algorithm)
    arm = arms[chosen]
    table = [
        (spec.arms[i].id, scores[i], a.n, a.mean)
        for i, a in enumerate(arms)
        if not math.isnan(scores[i])
    ]
    if explored:
        summary = (f"{spec.arms[chosen].id!r} drawn at random (exploration: every arm gets "
                   f"its share); {arm.n} rewards so far, mean {arm.mean:.4g}")  # fmt: skip
    else:
        summary = (
            f"{algorithm} scored {spec.arms[chosen].id!r} highest ({scores[chosen]:.4g}; "
            f"{arm.n} rewards so far, mean {arm.mean:.4g})"
        )
    weights: list[tuple[int, float, float]] = []
    if spec.dimension and arm.theta is not None:
        contributions = arm.theta * np.asarray(features, dtype=np.float64)
        # the five largest |contributions|, the first index first among equals
        top = np.argsort(-np.abs(contributions), kind="stable")[:5].tolist()
        theta, parts = arm.theta.tolist(), contributions.tolist()
        weights = [(i, theta[i], parts[i]) for i in top]
    return Explained(summary, table, weights, explored, False)
