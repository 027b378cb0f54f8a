"""The decisioning tables' reads and writes: policies, their arms'
statistics (changed only in the transaction that records a reward, or by
adding decision counts), and rewarded decisions (once each)."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError

from services.common.clock import now_us
from services.common.errors import InvalidArgument, NotFound
from services.common.pagination import PageTokens, scope
from services.db import Database
from services.decisioning.bandits import ArmState, learn
from services.decisioning.tables import (
    decision_arms,
    decision_forwards,
    decision_policies,
    decision_rewards,
)

DEFAULT_PAGE_SIZE = 100
MAX_PAGE_SIZE = 1_000
#: The holdout's row among a policy's arms.
HOLDOUT = ""


@dataclass(frozen=True, slots=True)
class PolicyRow:
    id: str
    tenant_id: str
    display_name: str
    state: str
    spec: Mapping[str, Any]
    create_time: int
    update_time: int

    @property
    def name(self) -> str:
        return f"tenants/{self.tenant_id}/policies/{self.id}"


def _policy(row: Any) -> PolicyRow:
    return PolicyRow(row.id, row.tenant_id, row.display_name, row.state, dict(row.spec),
                     row.create_time, row.update_time)  # fmt: skip


class Store:
    def __init__(
        self, db: Database, page_tokens: PageTokens, *, clock: Callable[[], int] = now_us
    ) -> None:
        self._db = db
        self._pages = page_tokens
        self._clock = clock

    # -- policies ---------------------------------------------------------------

    async def create(
        self, policy: PolicyRow, arm_ids: Sequence[str], forwards: Sequence[dict[str, Any]] = ()
    ) -> None:
        async with self._db.engine.begin() as conn:
            await conn.execute(
                decision_policies.insert().values(
                    id=policy.id,
                    tenant_id=policy.tenant_id,
                    display_name=policy.display_name,
                    state=policy.state,
                    spec=dict(policy.spec),
                    create_time=policy.create_time,
                    update_time=policy.update_time,
                )
            )
            await self._add_arms(conn, policy.id, [HOLDOUT, *arm_ids])
            await _forward(conn, forwards)

    async def _add_arms(self, conn: Any, policy_id: str, arm_ids: Sequence[str]) -> None:
        now = self._clock()
        if arm_ids:
            await conn.execute(
                decision_arms.insert(),
                [
                    {"policy_id": policy_id, "arm_id": arm, "n": 0, "reward_sum": 0.0,
                     "reward_sq": 0.0, "unit": True, "decisions": 0, "model": None,
                     "metrics": {}, "update_time": now}
                    for arm in arm_ids
                ],
            )  # fmt: skip

    async def get(self, tenant_id: str, policy_id: str) -> PolicyRow:
        p = decision_policies.c
        async with self._db.engine.connect() as conn:
            row = (
                await conn.execute(
                    sa.select(decision_policies).where(p.tenant_id == tenant_id, p.id == policy_id)
                )
            ).first()
        if row is None:
            name = f"tenants/{tenant_id}/policies/{policy_id}"
            raise NotFound(f"{name} not found", metadata={"resource": name})
        return _policy(row)

    async def list_policies(
        self, tenant_id: str, page_size: int, page_token: str
    ) -> tuple[list[PolicyRow], str]:
        if page_size < 0 or page_size > MAX_PAGE_SIZE:
            raise InvalidArgument.field("page_size", f"0 to {MAX_PAGE_SIZE}")
        size = page_size or DEFAULT_PAGE_SIZE
        request = scope("decisioning.ListPolicies", tenant_id)
        cursor = self._pages.decode(request, page_token, "t", "id")
        p = decision_policies.c
        query = (
            sa.select(decision_policies)
            .where(p.tenant_id == tenant_id)
            .order_by(p.create_time.desc(), p.id.desc())
            .limit(size + 1)
        )
        if cursor is not None:
            query = query.where(
                sa.or_(
                    p.create_time < cursor["t"],
                    sa.and_(p.create_time == cursor["t"], p.id < cursor["id"]),
                )
            )
        async with self._db.engine.connect() as conn:
            rows = (await conn.execute(query)).all()
        found = [_policy(r) for r in rows[:size]]
        token = ""
        if len(rows) > size:
            token = self._pages.encode(request, {"t": found[-1].create_time, "id": found[-1].id})
        return found, token

    async def update(
        self,
        policy: PolicyRow,
        *,
        display_name: str | None = None,
        state: str | None = None,
        spec: Mapping[str, Any] | None = None,
        new_arms: Sequence[str] = (),
        only_from: Sequence[str] = (),
        forwards: Sequence[dict[str, Any]] = (),
    ) -> bool:
        """Change a policy (with `only_from`: only while in one of those
        states); whether it changed."""
        p = decision_policies.c
        values: dict[str, Any] = {"update_time": self._clock()}
        if display_name is not None:
            values["display_name"] = display_name
        if state is not None:
            values["state"] = state
        if spec is not None:
            values["spec"] = dict(spec)
        query = decision_policies.update().where(p.id == policy.id)
        if only_from:
            query = query.where(p.state.in_(list(only_from)))
        async with self._db.engine.begin() as conn:
            changed = await conn.execute(query.values(**values))
            if changed.rowcount and new_arms:
                await self._add_arms(conn, policy.id, new_arms)
            if changed.rowcount:
                await _forward(conn, forwards)
        return bool(changed.rowcount)

    # -- statistics -------------------------------------------------------------

    async def arms(self, policy_id: str, dimension: int) -> dict[str, ArmState]:
        """Every arm's statistics (the holdout's under HOLDOUT)."""
        a = decision_arms.c
        async with self._db.engine.connect() as conn:
            rows = (
                await conn.execute(sa.select(decision_arms).where(a.policy_id == policy_id))
            ).all()
        return {row.arm_id: _arm(row, dimension) for row in rows}

    async def add_decisions(self, counts: Mapping[tuple[str, str], int]) -> None:
        """Decisions made in this process since the last time."""
        if not counts:
            return
        a = decision_arms.c
        async with self._db.engine.begin() as conn:
            for (policy_id, arm_id), count in sorted(counts.items()):
                await conn.execute(
                    decision_arms.update()
                    .where(a.policy_id == policy_id, a.arm_id == arm_id)
                    .values(decisions=a.decisions + count)
                )

    async def reward(
        self,
        decision_key: str,
        policy_id: str,
        arm_id: str,
        reward: float,
        features: Sequence[float] | None,
        dimension: int,
        metrics: Mapping[str, float],
        forward: dict[str, Any] | None = None,
    ) -> ArmState | None:
        """Record a decision's reward and teach its arm (or the holdout's
        row), in one transaction; None when it was rewarded before."""
        a = decision_arms.c
        now = self._clock()
        try:
            async with self._db.engine.begin() as conn:
                await conn.execute(
                    decision_rewards.insert().values(
                        decision_key=decision_key,
                        policy_id=policy_id,
                        arm_id=arm_id,
                        reward=reward,
                        reward_time=now,
                    )
                )
                row = (
                    await conn.execute(
                        sa.select(decision_arms)
                        .where(a.policy_id == policy_id, a.arm_id == arm_id)
                        .with_for_update()
                    )
                ).first()
                if row is None:
                    raise NotFound(f"arm {arm_id!r} not found")
                arm = _arm(row, dimension)
                learn(arm, reward, features)
                for name, value in metrics.items():
                    count, total, squares = arm.metrics.get(name, [0.0, 0.0, 0.0])
                    arm.metrics[name] = [count + 1, total + value, squares + value * value]
                await conn.execute(
                    decision_arms.update()
                    .where(a.policy_id == policy_id, a.arm_id == arm_id)
                    .values(
                        n=arm.n,
                        reward_sum=arm.reward_sum,
                        reward_sq=arm.reward_sq,
                        unit=arm.unit,
                        model=_model(arm),
                        metrics=arm.metrics,
                        update_time=now,
                    )
                )
                if forward is not None:  # to the external service, with the reward
                    await _forward(conn, [forward])
        except IntegrityError:
            return None
        return arm


async def _forward(conn: Any, rows: Sequence[dict[str, Any]]) -> None:
    if rows:
        await conn.execute(decision_forwards.insert(), list(rows))


def _arm(row: Any, dimension: int) -> ArmState:
    arm = ArmState(
        id=row.arm_id,
        n=int(row.n),
        reward_sum=float(row.reward_sum),
        reward_sq=float(row.reward_sq),
        unit=bool(row.unit),
        decisions=int(row.decisions),
        metrics={k: [float(x) for x in v] for k, v in (row.metrics or {}).items()},
    )
    if dimension:
        model = row.model or {}
        if "a" in model and "b" in model:
            arm.a = np.asarray(model["a"], dtype=np.float64)
            arm.b = np.asarray(model["b"], dtype=np.float64)
        arm.prepare(dimension)
    return arm


def _model(arm: ArmState) -> dict[str, Any] | None:
    if arm.a is None or arm.b is None:
        return None
    return {"a": arm.a.tolist(), "b": arm.b.tolist()}
