"""A/B/n experiments: defined, started and stopped here; people assigned a
variant deterministically (a hash of the salt and the person: the same
answer in every process, with nothing stored), each assignment logged as an
"Experiment Viewed" track event through the audience domain; results from
those events and the metrics' events (services/decisioning/results.py). A
running experiment whose criteria say `auto_stop` is stopped by itself as
soon as its results name a winner (checked every AUTO_STOP_SECONDS by one
process)."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import math
import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import sqlalchemy as sa

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
from services.common.pagination import PageTokens, scope
from services.common.validation import check_text
from services.db import Database
from services.decisioning.tables import experiments as experiments_table

log = logging.getLogger(__name__)

#: The track event an exposure is logged as (Segment's and GrowthBook's name).
EXPOSURE_EVENT = "Experiment Viewed"
#: The event source exposures are recorded under.
EXPOSURE_SOURCE = "experiments"
STATES = ("draft", "running", "stopped")
KINDS = ("conversion", "count", "sum")
ROLES = ("primary", "guardrail", "secondary")
ENGINES = ("sequential", "frequentist", "bayesian")
CORRECTIONS = ("holm", "benjamini_hochberg", "none")
MIN_VARIANTS, MAX_VARIANTS = 2, 20
MAX_METRICS = 20
MAX_WINDOW_HOURS = 24 * 365
MAX_USER_ID = 200
DEFAULT_CONFIDENCE = 0.95
DEFAULT_MIN_USERS = 100
DEFAULT_MAX_EXPECTED_LOSS = 0.01
DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE = 100, 1_000
#: How often running experiments with `auto_stop` are checked.
AUTO_STOP_SECONDS = 60.0
#: A process's copy of an experiment (for assignment) is this fresh.
REFRESH_SECONDS = 1.0
FIELDS = ("display_name", "metrics", "criteria", "variants", "coverage", "salt")
DRAFT_ONLY = ("variants", "coverage", "salt")
_ID = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
_SALT = re.compile(r"^[A-Za-z0-9_.:-]{0,64}$")


# --------------------------------------------------------------------------- definitions


@dataclass(frozen=True, slots=True)
class Variant:
    id: str
    weight: float = 1.0
    display_name: str = ""


@dataclass(frozen=True, slots=True)
class Metric:
    id: str
    event: str
    kind: str = "conversion"
    property: str = ""
    role: str = "secondary"
    lower_is_better: bool = False
    window_hours: int = 0


@dataclass(frozen=True, slots=True)
class Criteria:
    engine: str = "sequential"
    confidence: float = DEFAULT_CONFIDENCE
    min_users_per_variant: int = DEFAULT_MIN_USERS
    correction: str = "holm"
    max_expected_loss: float = DEFAULT_MAX_EXPECTED_LOSS
    auto_stop: bool = False


@dataclass(frozen=True, slots=True)
class Design:
    """What an experiment is, as stored in its row's `spec`."""

    variants: tuple[Variant, ...] = ()
    coverage: float = 1.0
    salt: str = ""
    metrics: tuple[Metric, ...] = ()
    criteria: Criteria = Criteria()

    @property
    def control(self) -> str:
        return self.variants[0].id if self.variants else ""

    @property
    def primary(self) -> Metric | None:
        return next((m for m in self.metrics if m.role == "primary"), None)

    def to_json(self) -> dict[str, Any]:
        c = self.criteria
        return {
            "variants": [{"id": v.id, "weight": v.weight, "display_name": v.display_name}
                         for v in self.variants],
            "coverage": self.coverage,
            "salt": self.salt,
            "metrics": [{"id": m.id, "event": m.event, "kind": m.kind, "property": m.property,
                         "role": m.role, "lower_is_better": m.lower_is_better,
                         "window_hours": m.window_hours} for m in self.metrics],
            "criteria": {"engine": c.engine, "confidence": c.confidence,
                         "min_users_per_variant": c.min_users_per_variant,
                         "correction": c.correction, "max_expected_loss": c.max_expected_loss,
                         "auto_stop": c.auto_stop},
        }  # fmt: skip

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Design:
        return cls(
            variants=tuple(Variant(**v) for v in data.get("variants", [])),
            coverage=float(data.get("coverage", 1.0)),
            salt=str(data.get("salt", "")),
            metrics=tuple(Metric(**m) for m in data.get("metrics", [])),
            criteria=Criteria(**data.get("criteria", {})),
        )


@dataclass(frozen=True, slots=True)
class Experiment:
    id: str
    tenant_id: str
    display_name: str
    state: str
    design: Design
    start_time: int | None
    end_time: int | None
    winner: str
    stop_reason: str
    create_time: int
    update_time: int

    @property
    def name(self) -> str:
        return f"tenants/{self.tenant_id}/experiments/{self.id}"

    @property
    def salt(self) -> str:
        return self.design.salt or self.id


def with_defaults(design: Design) -> Design:
    """Zeros (proto's unset) replaced by the documented defaults."""
    c = design.criteria
    return replace(
        design,
        variants=tuple(replace(v, weight=v.weight or 1.0) for v in design.variants),
        coverage=design.coverage or 1.0,
        criteria=replace(
            c,
            engine=c.engine or "sequential",
            confidence=c.confidence or DEFAULT_CONFIDENCE,
            min_users_per_variant=c.min_users_per_variant or DEFAULT_MIN_USERS,
            correction=c.correction or "holm",
            max_expected_loss=c.max_expected_loss or DEFAULT_MAX_EXPECTED_LOSS,
        ),
    )


def check_design(design: Design, prefix: str = "experiment") -> list[FieldViolation]:
    bad: list[FieldViolation] = []

    def add(field: str, reason: str) -> None:
        bad.append(FieldViolation(f"{prefix}.{field}", reason))

    if not MIN_VARIANTS <= len(design.variants) <= MAX_VARIANTS:
        add("variants", f"{MIN_VARIANTS}-{MAX_VARIANTS} variants (the first is the control)")
    seen: set[str] = set()
    for i, v in enumerate(design.variants):
        if not _ID.match(v.id):
            add(f"variants[{i}].id", "letters, digits, _, - and ., 1-64 characters")
        elif v.id in seen:
            add(f"variants[{i}].id", f"{v.id!r} is used twice")
        seen.add(v.id)
        if not math.isfinite(v.weight) or v.weight <= 0:
            add(f"variants[{i}].weight", "a positive number (0 means 1)")
        if len(v.display_name) > 200:
            add(f"variants[{i}].display_name", "at most 200 characters")
    if not math.isfinite(design.coverage) or not 0 < design.coverage <= 1:
        add("coverage", "a share in (0, 1] (0 means 1)")
    if not _SALT.match(design.salt):
        add("salt", "letters, digits, _, -, . and :, at most 64 characters")
    if not 1 <= len(design.metrics) <= MAX_METRICS:
        add("metrics", f"1-{MAX_METRICS} metrics, one of them PRIMARY")
    seen = set()
    for i, m in enumerate(design.metrics):
        if not _ID.match(m.id):
            add(f"metrics[{i}].id", "letters, digits, _, - and ., 1-64 characters")
        elif m.id in seen:
            add(f"metrics[{i}].id", f"{m.id!r} is used twice")
        seen.add(m.id)
        if not m.event.strip() or len(m.event) > 200:
            add(f"metrics[{i}].event", "the track event's name, 1-200 characters")
        if m.kind not in KINDS:
            add(f"metrics[{i}].kind", "CONVERSION, COUNT or SUM")
        if m.kind == "sum" and not 1 <= len(m.property) <= 200:
            add(f"metrics[{i}].property", "SUM needs the property to sum (1-200 characters)")
        if m.kind != "sum" and m.property:
            add(f"metrics[{i}].property", "only SUM metrics take a property")
        if m.role not in ROLES:
            add(f"metrics[{i}].role", "PRIMARY, GUARDRAIL or SECONDARY")
        if not 0 <= m.window_hours <= MAX_WINDOW_HOURS:
            add(f"metrics[{i}].window_hours", f"0-{MAX_WINDOW_HOURS} (0: until it stops)")
    primaries = sum(1 for m in design.metrics if m.role == "primary")
    if design.metrics and primaries != 1:
        add("metrics", f"exactly one PRIMARY metric, not {primaries}")
    c = design.criteria
    if c.engine not in ENGINES:
        add("criteria.engine", "SEQUENTIAL, FREQUENTIST or BAYESIAN")
    if not math.isfinite(c.confidence) or not 0.8 <= c.confidence <= 0.999:
        add("criteria.confidence", "0.8-0.999 (0 means 0.95)")
    if not 2 <= c.min_users_per_variant <= 1_000_000_000:
        add("criteria.min_users_per_variant", "2-1,000,000,000 (0 means 100)")
    if c.correction not in CORRECTIONS:
        add("criteria.correction", "HOLM, BENJAMINI_HOCHBERG or NONE")
    if not math.isfinite(c.max_expected_loss) or not 0 < c.max_expected_loss <= 1:
        add("criteria.max_expected_loss", "a share in (0, 1] (0 means 0.01)")
    if c.auto_stop and c.engine == "frequentist":
        add("criteria.auto_stop", "needs the SEQUENTIAL or BAYESIAN engine: a fixed-horizon "
                                  "test may not be looked at until its planned end")  # fmt: skip
    return bad


# --------------------------------------------------------------------------- assignment


def bucket(salt: str, user_id: str) -> tuple[float, float]:
    """Two independent uniform numbers in [0, 1) for a person: the first
    decides coverage, the second the variant."""
    digest = hashlib.sha256(f"{salt}\x00{user_id}".encode()).digest()
    scale = float(1 << 64)
    return (
        int.from_bytes(digest[:8], "big") / scale,
        int.from_bytes(digest[8:16], "big") / scale,
    )


def assign(design: Design, salt: str, user_id: str) -> str | None:
    """The person's variant, or None when outside the coverage."""
    covered, pick = bucket(salt, user_id)
    if covered >= design.coverage:
        return None
    total = sum(v.weight for v in design.variants)
    running = 0.0
    for variant in design.variants:
        running += variant.weight / total
        if pick < running:
            return variant.id
    return design.variants[-1].id


@dataclass(frozen=True, slots=True)
class Assigned:
    variant_id: str
    in_experiment: bool
    exposure_logged: bool


# --------------------------------------------------------------------------- the table


def _experiment(row: Any) -> Experiment:
    return Experiment(row.id, row.tenant_id, row.display_name, row.state,
                      Design.from_json(row.spec), row.start_time, row.end_time, row.winner,
                      row.stop_reason, row.create_time, row.update_time)  # fmt: skip


class ExperimentStore:
    def __init__(self, db: Database, page_tokens: PageTokens) -> None:
        self._db = db
        self._pages = page_tokens

    async def insert(self, e: Experiment) -> None:
        async with self._db.engine.begin() as conn:
            await conn.execute(
                experiments_table.insert().values(
                    id=e.id, tenant_id=e.tenant_id, display_name=e.display_name, state=e.state,
                    spec=e.design.to_json(), start_time=e.start_time, end_time=e.end_time,
                    winner=e.winner, stop_reason=e.stop_reason, create_time=e.create_time,
                    update_time=e.update_time,
                )
            )  # fmt: skip

    async def get(self, tenant_id: str, experiment_id: str) -> Experiment:
        t = experiments_table.c
        async with self._db.engine.connect() as conn:
            row = (
                await conn.execute(
                    sa.select(experiments_table).where(
                        t.tenant_id == tenant_id, t.id == experiment_id
                    )
                )
            ).first()
        if row is None:
            name = f"tenants/{tenant_id}/experiments/{experiment_id}"
            raise NotFound(f"{name} not found", metadata={"resource": name})
        return _experiment(row)

    async def list_experiments(
        self, tenant_id: str, page_size: int, page_token: str
    ) -> tuple[list[Experiment], str]:
        if not 0 <= page_size <= MAX_PAGE_SIZE:
            raise InvalidArgument.field("page_size", f"0 to {MAX_PAGE_SIZE}")
        size = page_size or DEFAULT_PAGE_SIZE
        request = scope("decisioning.ListExperiments", tenant_id)
        cursor = self._pages.decode(request, page_token, "t", "id")
        t = experiments_table.c
        query = (
            sa.select(experiments_table)
            .where(t.tenant_id == tenant_id)
            .order_by(t.create_time.desc(), t.id.desc())
            .limit(size + 1)
        )
        if cursor is not None:
            query = query.where(
                sa.or_(
                    t.create_time < cursor["t"],
                    sa.and_(t.create_time == cursor["t"], t.id < cursor["id"]),
                )
            )
        async with self._db.engine.connect() as conn:
            rows = (await conn.execute(query)).all()
        found = [_experiment(r) for r in rows[:size]]
        token = ""
        if len(rows) > size:
            token = self._pages.encode(request, {"t": found[-1].create_time, "id": found[-1].id})
        return found, token

    async def running(self) -> list[Experiment]:
        """Every tenant's running experiments."""
        t = experiments_table.c
        async with self._db.engine.connect() as conn:
            rows = (
                await conn.execute(sa.select(experiments_table).where(t.state == "running"))
            ).all()
        return [_experiment(r) for r in rows]

    async def update(self, e: Experiment, only_from: Sequence[str], **values: Any) -> bool:
        """Change an experiment while it is in one of `only_from`."""
        t = experiments_table.c
        if "design" in values:
            values["spec"] = values.pop("design").to_json()
        async with self._db.engine.begin() as conn:
            changed = await conn.execute(
                experiments_table.update()
                .where(t.id == e.id, t.tenant_id == e.tenant_id, t.state.in_(list(only_from)))
                .values(**values)
            )
        return bool(changed.rowcount)


# --------------------------------------------------------------------------- the domain


class Experiments:
    def __init__(
        self,
        store: ExperimentStore,
        recorder: Any,
        compute_results: Callable[[Experiment, int], Any] | None = None,
        *,
        clock: Callable[[], int] = now_us,
        auto_stop_seconds: float = AUTO_STOP_SECONDS,
        global_control: Any = None,
    ) -> None:
        self.store = store
        #: GlobalControls: its members get the control variant, not enrolled
        self.global_control = global_control
        self._recorder = recorder  # services.audience.recorder.EventRecorder
        #: (experiment, now) -> awaitable Results; set where results are served
        self.compute_results = compute_results
        self._clock = clock
        self._auto_stop_seconds = auto_stop_seconds
        self._copies: dict[str, tuple[float, Experiment]] = {}
        self._task: asyncio.Task[None] | None = None

    # -- definitions ------------------------------------------------------------

    async def create(
        self, caller: Principal, parent: str, display_name: str, design: Design
    ) -> Experiment:
        tenant_id = names.own_tenant(parent, caller.tenant_id)
        design = with_defaults(design)
        bad: list[FieldViolation] = []
        check_text(bad, "experiment.display_name", display_name, required=True, max_len=200)
        bad += check_design(design)
        collect(bad)
        now = self._clock()
        made = Experiment(random_hex_id(), tenant_id, display_name, "draft", design, None, None,
                          "", "", now, now)  # fmt: skip
        await self.store.insert(made)
        return made

    async def get(self, caller: Principal, name: str, field_name: str = "name") -> Experiment:
        tenant_id, experiment_id = names.parse_name(name, field_name, "tenants", "experiments")
        names.require_same_tenant(name, field_name, caller.tenant_id)
        return await self.store.get(tenant_id, experiment_id)

    async def list_experiments(
        self, caller: Principal, parent: str, page_size: int, page_token: str
    ) -> tuple[list[Experiment], str]:
        tenant_id = names.own_tenant(parent, caller.tenant_id)
        return await self.store.list_experiments(tenant_id, page_size, page_token)

    async def update(
        self, caller: Principal, name: str, paths: Sequence[str], display_name: str,
        design: Design,
    ) -> Experiment:  # fmt: skip
        current = await self.get(caller, name, "experiment.name")
        wanted = set(paths) or set(FIELDS)
        unknown = wanted - set(FIELDS)
        if unknown:
            raise InvalidArgument.field(
                "update_mask", f"unknown fields {sorted(unknown)}; one of {list(FIELDS)}"
            )
        design = with_defaults(design)
        old = current.design
        if current.state != "draft":
            for f in DRAFT_ONLY:
                if f in wanted and getattr(design, f) != getattr(old, f):
                    raise FailedPrecondition(
                        f"{name} is {current.state.upper()}: its {f} decide who gets what and "
                        "change only in DRAFT"
                    )
        merged = Design(
            variants=design.variants if "variants" in wanted else old.variants,
            coverage=design.coverage if "coverage" in wanted else old.coverage,
            salt=design.salt if "salt" in wanted else old.salt,
            metrics=design.metrics if "metrics" in wanted else old.metrics,
            criteria=design.criteria if "criteria" in wanted else old.criteria,
        )
        new_name = display_name if "display_name" in wanted else current.display_name
        bad: list[FieldViolation] = []
        check_text(bad, "experiment.display_name", new_name, required=True, max_len=200)
        bad += check_design(merged)
        collect(bad)
        allowed = ("draft",) if wanted & set(DRAFT_ONLY) and merged != old else STATES
        if not await self.store.update(current, allowed, display_name=new_name, design=merged,
                                       update_time=self._clock()):  # fmt: skip
            raise FailedPrecondition(f"{name} changed state meanwhile; read it and try again")
        self._copies.pop(current.id, None)
        return await self.get(caller, name, "experiment.name")

    async def start(self, caller: Principal, name: str) -> Experiment:
        current = await self.get(caller, name)
        if current.state == "running":
            return current
        now = self._clock()
        if not await self.store.update(current, ("draft",), state="running", start_time=now,
                                       update_time=now):  # fmt: skip
            raise FailedPrecondition(f"{name} is {current.state.upper()}; only DRAFT may start")
        self._copies.pop(current.id, None)
        return await self.get(caller, name)

    async def stop(self, caller: Principal, name: str, winner: str, reason: str) -> Experiment:
        current = await self.get(caller, name)
        bad: list[FieldViolation] = []
        if winner and winner not in {v.id for v in current.design.variants}:
            bad.append(FieldViolation("winner", f"{winner!r} is not one of the variants"))
        check_text(bad, "reason", reason, required=False, max_len=500)
        collect(bad)
        if current.state == "stopped" and current.winner == winner:
            return current
        return await self._stop(current, winner, reason or f"stopped by {caller.subject}")

    async def _stop(self, current: Experiment, winner: str, reason: str) -> Experiment:
        now = self._clock()
        if not await self.store.update(current, ("running",), state="stopped", end_time=now,
                                       winner=winner, stop_reason=reason[:500],
                                       update_time=now):  # fmt: skip
            raise FailedPrecondition(
                f"{current.name} is {current.state.upper()}; only RUNNING may stop"
            )
        self._copies.pop(current.id, None)
        return await self.store.get(current.tenant_id, current.id)

    # -- assignment -------------------------------------------------------------

    async def _copy(self, tenant_id: str, experiment_id: str) -> Experiment:
        held = self._copies.get(experiment_id)
        if held is not None and time.monotonic() - held[0] < REFRESH_SECONDS:
            if held[1].tenant_id == tenant_id:
                return held[1]
        found = await self.store.get(tenant_id, experiment_id)
        self._copies[experiment_id] = (time.monotonic(), found)
        return found

    async def assign(
        self, caller: Principal, name: str, user_id: str, skip_exposure: bool
    ) -> Assigned:
        tenant_id, experiment_id = names.parse_name(name, "name", "tenants", "experiments")
        names.require_same_tenant(name, "name", caller.tenant_id)
        if not user_id.strip() or len(user_id) > MAX_USER_ID:
            raise InvalidArgument.field("user_id", f"the person's id, 1-{MAX_USER_ID} characters")
        return await self.variant_for(tenant_id, experiment_id, user_id, log=not skip_exposure)

    async def variant_for(
        self, tenant_id: str, experiment_id: str, user_id: str, *, log: bool = True
    ) -> Assigned:
        """`assign` for other domains (a journey's experiment split): the
        person's variant, its exposure logged unless `log` is false."""
        skip_exposure = not log
        e = await self._copy(tenant_id, experiment_id)
        if e.state == "stopped":
            return Assigned(e.winner or e.design.control, False, False)
        variant = assign(e.design, e.salt, user_id)
        if e.state != "running" or variant is None:
            return Assigned(e.design.control, False, False)
        if self.global_control is not None and await self.global_control.member(
            tenant_id, user_id
        ):  # no treatment for the tenant's global control group
            return Assigned(e.design.control, False, False)
        if skip_exposure:
            return Assigned(variant, True, False)
        await self._recorder.track(
            tenant_id, user_id, EXPOSURE_EVENT,
            {"experimentId": e.id, "variantId": variant, "experimentName": e.display_name},
            source=EXPOSURE_SOURCE,
        )  # fmt: skip
        return Assigned(variant, True, True)

    # -- results ----------------------------------------------------------------

    async def _results_of(self, e: Experiment) -> Any:
        if self.compute_results is None:
            raise RuntimeError("experiment results are not served in this process")
        return await self.compute_results(e, self._clock())

    async def results(self, caller: Principal, name: str) -> Any:
        e = await self.get(caller, name)
        if e.start_time is None:
            raise FailedPrecondition(f"{name} has not started: it has no results yet")
        return await self._results_of(e)

    # -- stopping by the criteria -----------------------------------------------

    async def start_auto_stop(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._auto_stop_loop())

    async def stop_auto_stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _auto_stop_loop(self) -> None:
        while True:
            await asyncio.sleep(self._auto_stop_seconds)
            try:
                await self.auto_stop_round()
            except Exception:
                log.warning("experiments: the auto-stop round failed; again later", exc_info=True)

    async def auto_stop_round(self) -> list[str]:
        """Stop every running experiment with `auto_stop` whose results name
        a winner; the names of those stopped."""
        stopped = []
        for e in await self.store.running():
            if not e.design.criteria.auto_stop:
                continue
            found = await self._results_of(e)
            if not found.winner:
                continue
            with contextlib.suppress(FailedPrecondition):  # stopped meanwhile
                await self._stop(e, found.winner, f"winner by criteria: {found.verdict}")
                stopped.append(e.name)
                log.info("experiments: %s stopped with winner %s", e.name, found.winner)
        return stopped
