"""Dynamic creative optimisation (FR-DCO-001..006): creative templates made
of component slots, and the variant each impression gets.

A template is ad markup with `{{slot}}` placeholders; each slot has options
(a headline, an image URL, a call to action, a colour...) and a variant is
one option per slot (at most MAX_VARIANTS per template, FR-DCO-005). Its id
joins its options' ids with `.` in slot order (`h2.hero-blue.buy-now`).

Choosing (FR-DCO-002, 003, 006): with the template's exploration rate
(default 10%) a variant uniformly at random; otherwise Thompson sampling:
each variant's CTR is drawn from Beta(1 + clicks, 1 + impressions - clicks)
and its CVR (conversions per click) from Beta(1 + conversions, 1 + clicks -
conversions), and the variant with the best

    score = 0.5 * CTR / best CTR + 0.3 * CVR / best CVR + 0.2 * affinity

wins, where the draws are taken relative to the best draw (so the three
parts are on one 0-1 scale: a raw CTR of 1% would weigh nothing against an
affinity of 1) and a variant's segment affinity is the share of its options
made for one of the person's segments (0 for people without segments).
The weights are the template's. Until a template has counted a conversion
the CVR part is left out: with no conversions tracked, every click would
otherwise lower its variant's sampled CVR and work against the CTR part.

Counting (FR-DCO-004): impressions, clicks and conversions per variant in
the database, each event once by its id. The bid path's wins and clicks
count themselves (the variant rides in the notice token); conversions, and
impressions of creatives served elsewhere, come through
RecordVariantEvents.

Each process keeps every template it serves, with its variants' counts,
in memory (read again every REFRESH_SECONDS when used; events this process
records count at once): a bid never waits on the database. A template not
in memory yet is read in the background and the bid goes out with the
offer's own markup."""

from __future__ import annotations

import asyncio
import itertools
import logging
import math
import re
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import IntegrityError

from services.common import names
from services.common.call import Principal
from services.common.clock import now_us
from services.common.errors import (
    AlreadyExists,
    FieldViolation,
    InvalidArgument,
    NotFound,
    collect,
)
from services.common.pagination import PageTokens, scope
from services.db import Database
from services.decisioning.tables import (
    decisioning_creative_templates,
    decisioning_variant_events,
    decisioning_variant_stats,
)

log = logging.getLogger(__name__)

MAX_VARIANTS = 1_000
MAX_SLOTS = 10
MAX_OPTIONS = 100
MAX_VALUE_CHARS = 10_000
MAX_MARKUP_CHARS = 65_536
MAX_EVENTS = 1_000
DEFAULT_EXPLORATION = 0.1
DEFAULT_WEIGHTS = (0.5, 0.3, 0.2)
#: How often a served template's counts are read again (other processes'
#: events reach this one's choices within about this long).
REFRESH_SECONDS = 1.0
EVENT_TYPES = ("impression", "click", "conversion")

_SLOT = re.compile(r"^[a-z][a-z0-9_]{0,39}$")
_OPTION = re.compile(r"^[A-Za-z0-9_-]{1,40}$")
_PLACEHOLDER = re.compile(r"\{\{\s*([a-z][a-z0-9_]{0,39})\s*\}\}")


@dataclass(frozen=True, slots=True)
class SlotOption:
    id: str
    value: str
    segments: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Slot:
    name: str
    options: tuple[SlotOption, ...]


@dataclass(frozen=True, slots=True)
class TemplateSpec:
    display_name: str
    markup: str
    slots: tuple[Slot, ...]
    exploration_rate: float = DEFAULT_EXPLORATION
    weights: tuple[float, float, float] = DEFAULT_WEIGHTS

    @property
    def variant_count(self) -> int:
        return math.prod(len(s.options) for s in self.slots) if self.slots else 0

    def to_json(self) -> dict[str, Any]:
        return {
            "markup": self.markup,
            "slots": [
                {"name": s.name, "options": [[o.id, o.value, list(o.segments)] for o in s.options]}
                for s in self.slots
            ],
            "exploration_rate": self.exploration_rate,
            "weights": list(self.weights),
        }

    @staticmethod
    def from_json(display_name: str, raw: dict[str, Any]) -> TemplateSpec:
        w = raw["weights"]
        return TemplateSpec(
            display_name,
            raw["markup"],
            tuple(
                Slot(s["name"], tuple(SlotOption(o[0], o[1], tuple(o[2])) for o in s["options"]))
                for s in raw["slots"]
            ),
            float(raw["exploration_rate"]),
            (float(w[0]), float(w[1]), float(w[2])),
        )


@dataclass(frozen=True, slots=True)
class CreativeTemplate:
    tenant_id: str
    id: str
    spec: TemplateSpec
    create_time: int = 0

    @property
    def name(self) -> str:
        return f"tenants/{self.tenant_id}/creativeTemplates/{self.id}"


@dataclass(frozen=True, slots=True)
class Choice:
    variant_id: str
    markup: str
    explored: bool
    ctr: float = 0.0
    cvr: float = 0.0
    affinity: float = 0.0
    score: float = 0.0


@dataclass(frozen=True, slots=True)
class VariantEvent:
    event_id: str
    variant_id: str
    type: str  # impression, click, conversion


@dataclass(frozen=True, slots=True)
class VariantStats:
    variant_id: str
    impressions: int
    clicks: int
    conversions: int

    @property
    def ctr(self) -> tuple[float, float, float]:
        return wilson(self.clicks, self.impressions)

    @property
    def cvr(self) -> tuple[float, float, float]:
        return wilson(self.conversions, self.clicks)


def wilson(successes: int, trials: int, z: float = 1.959964) -> tuple[float, float, float]:
    """The rate with its 95% Wilson score interval ((0, 0, 0) without trials)."""
    if trials <= 0:
        return 0.0, 0.0, 0.0
    k = min(successes, trials)
    p = k / trials
    denominator = 1 + z * z / trials
    centre = (p + z * z / (2 * trials)) / denominator
    half = z * math.sqrt(p * (1 - p) / trials + z * z / (4 * trials * trials)) / denominator
    return p, max(0.0, centre - half), min(1.0, centre + half)


def validate(spec: TemplateSpec, at: str = "creative_template") -> list[FieldViolation]:
    """Every problem of a template, each naming its field."""
    v: list[FieldViolation] = []
    if not 1 <= len(spec.display_name.strip()) <= 200:
        v.append(FieldViolation(f"{at}.display_name", "1-200 characters"))
    if not spec.markup.strip():
        v.append(FieldViolation(f"{at}.markup", "is required"))
    elif len(spec.markup) > MAX_MARKUP_CHARS:
        v.append(FieldViolation(f"{at}.markup", f"at most {MAX_MARKUP_CHARS:,} characters"))
    if not 1 <= len(spec.slots) <= MAX_SLOTS:
        v.append(FieldViolation(f"{at}.slots", f"1-{MAX_SLOTS} slots"))
    used = set(_PLACEHOLDER.findall(spec.markup))
    seen: set[str] = set()
    for i, slot in enumerate(spec.slots):
        where = f"{at}.slots[{i}]"
        if not _SLOT.match(slot.name):
            v.append(FieldViolation(f"{where}.name", "[a-z][a-z0-9_]{0,39}"))
        elif slot.name in seen:
            v.append(FieldViolation(f"{where}.name", f"{slot.name!r} is there twice"))
        elif slot.name not in used:
            v.append(FieldViolation(f"{where}.name", f"the markup has no {{{{{slot.name}}}}}"))
        seen.add(slot.name)
        if not 1 <= len(slot.options) <= MAX_OPTIONS:
            v.append(FieldViolation(f"{where}.options", f"1-{MAX_OPTIONS} options"))
        ids: set[str] = set()
        for j, option in enumerate(slot.options):
            if not _OPTION.match(option.id):
                v.append(FieldViolation(f"{where}.options[{j}].id", "[A-Za-z0-9_-]{1,40}"))
            elif option.id in ids:
                twice = f"{option.id!r} is there twice"
                v.append(FieldViolation(f"{where}.options[{j}].id", twice))
            ids.add(option.id)
            if len(option.value) > MAX_VALUE_CHARS:
                v.append(FieldViolation(f"{where}.options[{j}].value",
                                        f"at most {MAX_VALUE_CHARS:,} characters"))  # fmt: skip
            if any(not s or len(s) > 64 for s in option.segments):
                v.append(FieldViolation(f"{where}.options[{j}].segments", "1-64 characters each"))
    for name in sorted(used - seen):
        v.append(FieldViolation(f"{at}.markup", f"{{{{{name}}}}} is not a slot"))
    if spec.slots and spec.variant_count > MAX_VARIANTS:
        too_many = f"make {spec.variant_count:,} variants; at most {MAX_VARIANTS:,} (FR-DCO-005)"
        v.append(FieldViolation(f"{at}.slots", too_many))
    if not (0.0 <= spec.exploration_rate <= 1.0):  # NaN fails too
        v.append(FieldViolation(f"{at}.exploration_rate", "0-1"))
    w = spec.weights
    sane = all(x >= 0.0 and math.isfinite(x) for x in w)
    if not sane or not math.isclose(sum(w), 1.0, abs_tol=1e-6):
        v.append(FieldViolation(f"{at}.weights", "non-negative, summing to 1"))
    return v


class Variants:
    """A template compiled for choosing: its variants in a fixed order, the
    option each takes per slot, and their markup assembled on demand."""

    def __init__(self, spec: TemplateSpec) -> None:
        self.spec = spec
        combos = list(itertools.product(*(range(len(s.options)) for s in spec.slots)))
        #: (variants, slots): the option index of each variant in each slot.
        self.choice = np.array(combos, dtype=np.int32).reshape(len(combos), len(spec.slots))
        self.ids = [
            ".".join(spec.slots[s].options[o].id for s, o in enumerate(combo)) for combo in combos
        ]
        self.index = {variant: i for i, variant in enumerate(self.ids)}
        slot_of = {slot.name: i for i, slot in enumerate(spec.slots)}
        pieces = _PLACEHOLDER.split(spec.markup)  # text, slot name, text, slot name, ...
        self._pieces: list[str | int] = [
            slot_of[p] if i % 2 else p for i, p in enumerate(pieces) if p or i % 2
        ]
        self._targeted = any(o.segments for s in spec.slots for o in s.options)

    def __len__(self) -> int:
        return len(self.ids)

    def markup(self, i: int) -> str:
        row = self.choice[i]
        slots = self.spec.slots
        return "".join(
            p if isinstance(p, str) else slots[p].options[row[p]].value for p in self._pieces
        )

    def affinity(self, segments: Iterable[str]) -> np.ndarray | None:
        """Each variant's share of options made for one of `segments`
        (None: none is, or the template targets no segment)."""
        if not self._targeted:
            return None
        wanted = set(segments)
        if not wanted:
            return None
        share = np.zeros(len(self.ids))
        for s, slot in enumerate(self.spec.slots):
            hits = np.array([bool(wanted.intersection(o.segments)) for o in slot.options])
            if hits.any():
                share += hits[self.choice[:, s]]
        return share / len(self.spec.slots) if share.any() else None


class Counts:
    """A template's variants' impressions, clicks and conversions, as arrays."""

    __slots__ = ("impressions", "clicks", "conversions")

    def __init__(self, n: int) -> None:
        self.impressions = np.zeros(n)
        self.clicks = np.zeros(n)
        self.conversions = np.zeros(n)

    def add(self, i: int, kind: str) -> None:
        getattr(self, kind + "s")[i] += 1


def choose(
    variants: Variants,
    counts: Counts,
    segments: Iterable[str],
    rng: np.random.Generator,
) -> Choice:
    spec = variants.spec
    n = len(variants)
    affinity = variants.affinity(segments)
    if rng.random() < spec.exploration_rate:
        i = int(rng.integers(n))
        return Choice(variants.ids[i], variants.markup(i), True,
                      affinity=float(affinity[i]) if affinity is not None else 0.0)  # fmt: skip
    clicks = np.minimum(counts.clicks, counts.impressions)
    conversions = np.minimum(counts.conversions, clicks)
    ctr = rng.beta(1.0 + clicks, 1.0 + counts.impressions - clicks)
    w_ctr, w_cvr, w_affinity = spec.weights
    score = w_ctr * ctr / ctr.max()
    if conversions.any():
        cvr = rng.beta(1.0 + conversions, 1.0 + clicks - conversions)
        score += w_cvr * cvr / cvr.max()
    else:  # no conversion counted yet (or none tracked): no variant is told apart by it
        cvr = np.zeros(n)
    if affinity is not None:
        score += w_affinity * affinity
    i = int(np.argmax(score))
    return Choice(
        variants.ids[i], variants.markup(i), False, float(ctr[i]), float(cvr[i]),
        float(affinity[i]) if affinity is not None else 0.0, float(score[i]),
    )  # fmt: skip


@dataclass(slots=True)
class _Served:
    """A template as this process serves it."""

    template: CreativeTemplate | None  # None: there is no such template
    variants: Variants | None
    counts: Counts | None
    fresh_until: float
    loading: bool = False


def _insert(db: Database, table: sa.Table) -> Any:
    return (sqlite.insert if db.is_sqlite else postgresql.insert)(table)


class CreativeTemplates:
    """Templates (create, get, list, delete), choices and their counts."""

    def __init__(
        self,
        db: Database,
        pages: PageTokens,
        *,
        clock: Callable[[], int] = now_us,
        rng: np.random.Generator | None = None,
    ) -> None:
        self._db = db
        self._pages = pages
        self._clock = clock
        self._rng = rng or np.random.default_rng()
        self._served: dict[tuple[str, str], _Served] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    # ------------------------------------------------------------ management
    def _name(self, caller: Principal, name: str) -> tuple[str, str]:
        names.require_same_tenant(name, "name", caller.tenant_id)
        tenant_id, template_id = names.parse_name(name, "name", "tenants", "creativeTemplates")
        return tenant_id, template_id

    async def create(
        self, caller: Principal, parent: str, template_id: str, spec: TemplateSpec
    ) -> CreativeTemplate:
        tenant_id = names.own_tenant(parent, caller.tenant_id)
        names.validate_id(template_id, "creative_template_id")
        collect(validate(spec))
        made = CreativeTemplate(tenant_id, template_id, spec, self._clock())
        try:
            async with self._db.engine.begin() as conn:
                await conn.execute(
                    decisioning_creative_templates.insert().values(
                        tenant_id=tenant_id, id=template_id, display_name=spec.display_name,
                        spec=spec.to_json(), create_time=made.create_time,
                    )
                )  # fmt: skip
        except IntegrityError:
            raise AlreadyExists(f"{made.name} exists", metadata={"resource": made.name}) from None
        self._served.pop((tenant_id, template_id), None)
        return made

    async def _read(self, tenant_id: str, template_id: str) -> CreativeTemplate | None:
        t = decisioning_creative_templates.c
        async with self._db.engine.connect() as conn:
            row = (
                await conn.execute(
                    sa.select(decisioning_creative_templates).where(
                        t.tenant_id == tenant_id, t.id == template_id
                    )
                )
            ).first()
        return _template(row) if row is not None else None

    async def get(self, caller: Principal, name: str) -> CreativeTemplate:
        found = await self._read(*self._name(caller, name))
        if found is None:
            raise NotFound(f"no creative template {name}", metadata={"resource": name})
        return found

    async def list(
        self, caller: Principal, parent: str, page_size: int, page_token: str
    ) -> tuple[list[CreativeTemplate], str]:
        tenant_id = names.own_tenant(parent, caller.tenant_id)
        size = names.page_size(page_size)
        request = scope("decisioning.ListCreativeTemplates", tenant_id)
        cursor = self._pages.decode(request, page_token, "id")
        t = decisioning_creative_templates.c
        query = (
            sa.select(decisioning_creative_templates)
            .where(t.tenant_id == tenant_id)
            .order_by(t.id)
            .limit(size + 1)
        )
        if cursor is not None:
            query = query.where(t.id > cursor["id"])
        async with self._db.engine.connect() as conn:
            rows = (await conn.execute(query)).all()
        found = [_template(r) for r in rows[:size]]
        token = self._pages.encode(request, {"id": found[-1].id}) if len(rows) > size else ""
        return found, token

    async def delete(self, caller: Principal, name: str) -> None:
        template = await self.get(caller, name)
        key = (template.tenant_id, template.id)
        t = decisioning_creative_templates
        async with self._db.engine.begin() as conn:
            await conn.execute(t.delete().where(t.c.tenant_id == key[0], t.c.id == key[1]))
            for table in (decisioning_variant_stats, decisioning_variant_events):
                await conn.execute(
                    table.delete().where(table.c.tenant_id == key[0], table.c.template_id == key[1])
                )
        self._served.pop(key, None)

    # ------------------------------------------------------------ serving
    def pick(self, tenant_id: str, template_id: str, segments: Iterable[str]) -> Choice | None:
        """The variant for one impression, from memory; None while the
        template is being read (or when there is none)."""
        served = self._served.get((tenant_id, template_id))
        if served is None or (served.fresh_until <= time.monotonic() and not served.loading):
            self._load_soon(tenant_id, template_id, served)
        if served is None or served.variants is None or served.counts is None:
            return None
        return choose(served.variants, served.counts, segments, self._rng)

    async def choose(self, caller: Principal, name: str, segments: Sequence[str]) -> Choice:
        tenant_id, template_id = self._name(caller, name)
        served = await self._serve(tenant_id, template_id)
        if served.variants is None or served.counts is None:
            raise NotFound(f"no creative template {name}", metadata={"resource": name})
        return choose(served.variants, served.counts, segments, self._rng)

    def _load_soon(self, tenant_id: str, template_id: str, served: _Served | None) -> None:
        if served is None:
            served = _Served(None, None, None, 0.0)
            self._served[(tenant_id, template_id)] = served
        served.loading = True
        task = asyncio.get_running_loop().create_task(self._load(tenant_id, template_id))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _load(self, tenant_id: str, template_id: str) -> None:
        try:
            await self._serve(tenant_id, template_id, refresh=True)
        except Exception as error:  # the database is down: try again on a later bid
            log.warning("creative template %s/%s not read: %s", tenant_id, template_id, error)
            served = self._served.get((tenant_id, template_id))
            if served is not None:
                served.loading = False
                served.fresh_until = time.monotonic() + REFRESH_SECONDS

    async def _serve(self, tenant_id: str, template_id: str, refresh: bool = False) -> _Served:
        key = (tenant_id, template_id)
        served = self._served.get(key)
        if served is not None and served.variants is not None and not refresh:
            if served.fresh_until > time.monotonic():
                return served
        template = await self._read(tenant_id, template_id)
        if template is None:
            served = _Served(None, None, None, time.monotonic() + REFRESH_SECONDS)
            self._served[key] = served
            return served
        current = self._served.get(key)
        if current is not None and current.template is not None and current.template == template:
            variants = current.variants
        else:
            variants = Variants(template.spec)
        assert variants is not None
        counts = await self._counts(tenant_id, template_id, variants)
        served = _Served(template, variants, counts, time.monotonic() + REFRESH_SECONDS)
        self._served[key] = served
        return served

    async def _counts(self, tenant_id: str, template_id: str, variants: Variants) -> Counts:
        s = decisioning_variant_stats.c
        async with self._db.engine.connect() as conn:
            rows = (
                await conn.execute(
                    sa.select(s.variant_id, s.impressions, s.clicks, s.conversions).where(
                        s.tenant_id == tenant_id, s.template_id == template_id
                    )
                )
            ).all()
        counts = Counts(len(variants))
        for row in rows:
            i = variants.index.get(row.variant_id)
            if i is not None:
                counts.impressions[i] = row.impressions
                counts.clicks[i] = row.clicks
                counts.conversions[i] = row.conversions
        return counts

    # ------------------------------------------------------------ counting
    async def record(self, caller: Principal, name: str, events: Sequence[VariantEvent]) -> int:
        tenant_id, template_id = self._name(caller, name)
        if not 1 <= len(events) <= MAX_EVENTS:
            raise InvalidArgument.field("events", f"1-{MAX_EVENTS:,} events")
        served = await self._serve(tenant_id, template_id)
        if served.variants is None:
            raise NotFound(f"no creative template {name}", metadata={"resource": name})
        bad: list[FieldViolation] = []
        for i, e in enumerate(events):
            if not 1 <= len(e.event_id) <= 100:
                bad.append(FieldViolation(f"events[{i}].event_id", "1-100 characters"))
            if e.variant_id not in served.variants.index:
                unknown = f"{e.variant_id!r} is not a variant of {name}"
                bad.append(FieldViolation(f"events[{i}].variant_id", unknown))
            if e.type not in EVENT_TYPES:
                bad.append(FieldViolation(f"events[{i}].type", "impression, click or conversion"))
        collect(bad)
        return await self.count(tenant_id, template_id, events)

    async def count(self, tenant_id: str, template_id: str, events: Sequence[VariantEvent]) -> int:
        """Count each event once by its id (the bid path's wins and clicks
        come here); the number counted now."""
        unique = list({e.event_id: e for e in events}.values())
        now = self._clock()
        e = decisioning_variant_events.c
        insert_events = (
            _insert(self._db, decisioning_variant_events)
            .on_conflict_do_nothing(index_elements=[e.tenant_id, e.template_id, e.event_id])
            .returning(e.event_id)
        )
        s = decisioning_variant_stats.c
        by_id = {ev.event_id: ev for ev in unique}
        async with self._db.engine.begin() as conn:
            result = await conn.execute(
                insert_events,
                [{"tenant_id": tenant_id, "template_id": template_id, "event_id": ev.event_id,
                  "variant_id": ev.variant_id, "type": ev.type, "time": now}
                 for ev in unique],
            )  # fmt: skip
            new = [by_id[event_id] for event_id in result.scalars()]
            sums: dict[str, list[int]] = {}
            for ev in new:
                sums.setdefault(ev.variant_id, [0, 0, 0])[EVENT_TYPES.index(ev.type)] += 1
            for variant_id in sorted(sums):  # one order: no deadlock between writers
                imps, clicks, convs = sums[variant_id]
                upsert = _insert(self._db, decisioning_variant_stats).values(
                    tenant_id=tenant_id, template_id=template_id, variant_id=variant_id,
                    impressions=imps, clicks=clicks, conversions=convs,
                )  # fmt: skip
                await conn.execute(
                    upsert.on_conflict_do_update(
                        index_elements=[s.tenant_id, s.template_id, s.variant_id],
                        set_={
                            "impressions": s.impressions + upsert.excluded.impressions,
                            "clicks": s.clicks + upsert.excluded.clicks,
                            "conversions": s.conversions + upsert.excluded.conversions,
                        },
                    )
                )
        served = self._served.get((tenant_id, template_id))
        if served is not None and served.variants is not None and served.counts is not None:
            for ev in new:  # this process's choices learn at once
                i = served.variants.index.get(ev.variant_id)
                if i is not None:
                    served.counts.add(i, ev.type)
        return len(new)

    async def count_one(
        self, tenant_id: str, template_id: str, event_id: str, variant_id: str, kind: str
    ) -> bool:
        """Count one event of the bid path (a win's impression, a click)
        once; whether it counted now."""
        event = VariantEvent(event_id, variant_id, kind)
        return await self.count(tenant_id, template_id, [event]) > 0

    async def stats(
        self, caller: Principal, name: str, page_size: int
    ) -> tuple[Sequence[VariantStats], int]:
        tenant_id, template_id = self._name(caller, name)
        size = names.page_size(page_size)
        template = await self._read(tenant_id, template_id)
        if template is None:
            raise NotFound(f"no creative template {name}", metadata={"resource": name})
        variants = Variants(template.spec)
        counts = await self._counts(tenant_id, template_id, variants)
        clicks = np.minimum(counts.clicks, counts.impressions)
        conversions = np.minimum(counts.conversions, clicks)
        ctr = (1.0 + clicks) / (2.0 + counts.impressions)
        cvr = (1.0 + conversions) / (2.0 + clicks)
        w_ctr, w_cvr, _ = template.spec.weights
        expected = w_ctr * ctr / ctr.max() + w_cvr * cvr / cvr.max()
        order = np.lexsort((np.arange(len(variants)), -expected))[:size]
        return [
            VariantStats(variants.ids[i], int(counts.impressions[i]), int(counts.clicks[i]),
                         int(counts.conversions[i]))
            for i in order
        ], len(variants)  # fmt: skip

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)


def _template(row: Any) -> CreativeTemplate:
    return CreativeTemplate(
        row.tenant_id, row.id, TemplateSpec.from_json(row.display_name, dict(row.spec)),
        row.create_time,
    )  # fmt: skip
