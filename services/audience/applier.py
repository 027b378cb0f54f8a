"""Tracking calls applied to profiles after they are durable: the events
pipeline's follower (services.analytics.pipeline.JournalFollower).

    IngestEvents -> journal (acknowledged: fdatasync'ed) -> answer
                         |-> the events table (analytics store), in batches
                         `-> this applier -> Profiles.ingest (management DB)
                                          -> on_applied (bid-time view, ...)

The applier takes acknowledged calls in emit order and applies them in
batches (up to `batch_max` calls of one tenant in one transaction; a batch
gathers for `gather_seconds`, 20 ms, unless it is full), within tens of
milliseconds when the database keeps up. Each call is applied once: its
messageId is recorded in the same transaction as its effect, so applying a
call again (after a crash, from the journal) changes nothing.

Nothing is lost while the database is down or slow: the batch is retried
with backoff (`retry_min` .. `retry_max`), the calls wait in memory, and the
journal keeps every segment file until the applier is done with it; a
process killed meanwhile finds those files at its next start and applies
them (before anything new). A call the database refuses as such (not an
outage: e.g. a value it cannot store) is retried alone and, refused again,
logged and skipped (counted in `failed`), so it cannot block the others.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import pathlib
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from services.analytics.events import EventRow
from services.analytics.journal import CorruptSegment, read_segment
from services.audience.events import row_call
from services.audience.profiles import IngestResult, Profiles
from services.audience.tracking import TrackedCall
from services.backends.outages import is_backend_outage

log = logging.getLogger(__name__)

#: A batch slower than this to apply is logged (the promise is 1 s).
SLOW_BATCH_SECONDS = 0.5

#: Called after each applied batch: (tenant id, source, the calls, the result).
AppliedHook = Callable[[str, str, Sequence[TrackedCall], IngestResult], Awaitable[None]]


def chain(*hooks: AppliedHook | None) -> AppliedHook | None:
    """One hook that calls each given one in turn (None: there is none)."""
    present = [hook for hook in hooks if hook is not None]
    if not present:
        return None

    async def each(
        tenant_id: str, source: str, calls: Sequence[TrackedCall], result: IngestResult
    ) -> None:
        for hook in present:
            try:
                await hook(tenant_id, source, calls, result)
            except Exception:  # one hook's failure must not skip the others
                log.exception("audience: after applying calls of tenant %s", tenant_id)

    return each


class Listeners:
    """Other domains' hooks on applied calls (a journey's event trigger):
    each gets every applied batch, after the audience's own hooks."""

    def __init__(self) -> None:
        self._hooks: list[AppliedHook] = []

    def register(self, hook: AppliedHook) -> None:
        self._hooks.append(hook)

    async def on_applied(
        self, tenant_id: str, source: str, calls: Sequence[TrackedCall], result: IngestResult
    ) -> None:
        for hook in self._hooks:
            try:
                await hook(tenant_id, source, calls, result)
            except Exception:
                log.exception("audience: a listener of tenant %s's calls failed", tenant_id)


@dataclass(slots=True)
class _Watch:
    first: int
    last: int
    future: asyncio.Future[list[str]]
    outcomes: dict[int, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class ApplierStats:
    fed: int  # calls handed over (acknowledged)
    applied: int  # of those, done (applied, duplicates and failed)
    recovered: int  # calls applied from journal files an earlier process left
    failed: int  # calls refused by the database (logged, skipped)
    retries: int  # batches tried again after a database failure

    @property
    def lag(self) -> int:
        return self.fed - self.applied


class ProfileApplier:
    def __init__(
        self,
        profiles: Profiles,
        *,
        on_applied: AppliedHook | None = None,
        batch_max: int = 500,
        gather_seconds: float = 0.02,
        retry_min: float = 0.05,
        retry_max: float = 5.0,
        metrics_registry: CollectorRegistry | None = None,
    ) -> None:
        self._profiles = profiles
        self._on_applied = on_applied
        self._batch_max = batch_max
        self._gather = gather_seconds
        self._retry_min = retry_min
        self._retry_max = retry_max
        self._queue: deque[EventRow] = deque()
        self._wake = asyncio.Event()
        self._fed = 0
        self._applied = 0
        self._recovered_calls = 0
        self._failed = 0
        self._retries = 0
        self._recovered: list[tuple[int, pathlib.Path]] = []
        self._recovered_done: set[int] = set()
        self._progress: Callable[[], None] = lambda: None
        self._task: asyncio.Task[None] | None = None
        self._watches: list[_Watch] = []
        self._waiters: list[tuple[int, asyncio.Future[None]]] = []
        if metrics_registry is not None:
            metrics_registry.register(_StatsCollector(self))

    # -- JournalFollower --------------------------------------------------

    def start(
        self, recovered: list[tuple[int, pathlib.Path]], progress: Callable[[], None]
    ) -> None:
        self._recovered = list(recovered)
        self._progress = progress
        self._task = asyncio.get_running_loop().create_task(
            self._run(), name="audience-profile-applier"
        )

    def feed(self, rows: list[EventRow]) -> None:
        self._queue.extend(rows)
        self._fed += len(rows)
        self._wake.set()

    def done_with(self, number: int, recovered: bool, last: int) -> bool:
        return number in self._recovered_done if recovered else self._applied >= last

    # -- for callers --------------------------------------------------------

    def stats(self) -> ApplierStats:
        return ApplierStats(
            self._fed, self._applied, self._recovered_calls, self._failed, self._retries
        )

    def watch(self, first: int, last: int) -> asyncio.Future[list[str]]:
        """The outcome of fed calls number `first`..`last` (1-based, emit
        order): per call, the profile id it was applied to, "" for a
        duplicate or a failed call. Register before they are applied (right
        after emitting them)."""
        future: asyncio.Future[list[str]] = asyncio.get_running_loop().create_future()
        if last < first:
            future.set_result([])
        else:
            self._watches.append(_Watch(first, last, future))
        return future

    async def wait_applied(self, upto: int) -> None:
        """Until the first `upto` calls fed are applied."""
        if self._applied >= upto:
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append((upto, future))
        await future

    async def stop(self, grace: float = 5.0) -> None:
        """Apply what was fed for up to `grace` seconds, then stop (what is
        left is in the journal's files: applied at the next start)."""
        if self._task is not None and not self._task.done() and self._applied < self._fed:
            try:
                async with asyncio.timeout(grace):
                    await self.wait_applied(self._fed)
            except TimeoutError:
                log.warning(
                    "audience: stopped with %d calls not applied; the journal keeps them",
                    self._fed - self._applied,
                )
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None
        for _, future in self._waiters:
            if not future.done():
                future.cancel()
        for watch in self._watches:
            if not watch.future.done():
                watch.future.cancel()

    # -- the task -------------------------------------------------------------

    async def _run(self) -> None:
        for number, path in self._recovered:
            try:
                data = await asyncio.to_thread(read_segment, path, for_store=False)
                rows: list[EventRow] = [tuple(r) for r in data.rows]
            except (FileNotFoundError, CorruptSegment) as exc:
                log.error("audience: journal file %s cannot be applied: %s", path, exc)
                rows = []
            if rows:
                log.info("audience: applying %d calls from %s", len(rows), path)
            await self._apply(rows, None)
            self._recovered_calls += len(rows)
            self._recovered_done.add(number)
            self._progress()
        self._recovered = []
        while True:
            if not self._queue:
                self._wake.clear()
                await self._wake.wait()
                continue
            if len(self._queue) < self._batch_max and self._gather > 0:
                # Gather calls for a moment: a transaction per handful of
                # calls would cost most of the database's time in overhead.
                await asyncio.sleep(self._gather)
            take = min(len(self._queue), self._batch_max)
            rows = [self._queue.popleft() for _ in range(take)]
            base = self._applied + 1
            started = time.monotonic()
            await self._apply(rows, base)
            took = time.monotonic() - started
            if took > SLOW_BATCH_SECONDS:
                log.warning(
                    "audience: %d calls took %.2f s to apply (%d waiting)",
                    take,
                    took,
                    len(self._queue),
                )
            self._applied += take
            self._settle()
            self._progress()

    def _settle(self) -> None:
        applied = self._applied
        if self._waiters:
            keep = []
            for upto, future in self._waiters:
                if applied >= upto:
                    if not future.done():
                        future.set_result(None)
                else:
                    keep.append((upto, future))
            self._waiters = keep
        if self._watches:
            left = []
            for watch in self._watches:
                if applied >= watch.last:
                    if not watch.future.done():
                        numbers = range(watch.first, watch.last + 1)
                        watch.future.set_result([watch.outcomes.get(n, "") for n in numbers])
                else:
                    left.append(watch)
            self._watches = left

    async def _apply(self, rows: list[EventRow], base: int | None) -> None:
        """Apply rows (numbered from `base` when live) in runs of one tenant
        and source, each run one transaction."""
        parsed: list[tuple[int, str, str, TrackedCall]] = []
        for offset, row in enumerate(rows):
            try:
                tenant_id, source, call = row_call(row)
            except (ValueError, KeyError, TypeError, IndexError) as exc:
                self._failed += 1
                log.error("audience: a journaled call cannot be read (%s): %r", exc, row[:2])
                continue
            parsed.append((offset, tenant_id, source, call))
        for (tenant_id, source), run in itertools.groupby(parsed, key=lambda p: (p[1], p[2])):
            items = list(run)
            calls = [item[3] for item in items]
            result = await self._ingest(tenant_id, calls)
            if result is None:  # refused as a whole: one by one
                for item in items:
                    single = await self._ingest(tenant_id, [item[3]])
                    if single is None:
                        self._failed += 1
                        log.error(
                            "audience: call %s of tenant %s refused by the database; skipped",
                            item[3].message_id[:100],
                            tenant_id,
                        )
                        continue
                    await self._after(base, [item], tenant_id, source, single)
                continue
            await self._after(base, items, tenant_id, source, result)

    async def _after(
        self,
        base: int | None,
        items: list[tuple[int, str, str, TrackedCall]],
        tenant_id: str,
        source: str,
        result: IngestResult,
    ) -> None:
        if base is not None and self._watches:
            for (offset, *_), profile_id in zip(items, result.profile_ids, strict=True):
                number = base + offset
                for watch in self._watches:
                    if watch.first <= number <= watch.last:
                        watch.outcomes[number] = profile_id
        if self._on_applied is not None:
            try:
                await self._on_applied(tenant_id, source, [item[3] for item in items], result)
            except Exception:  # what follows an applied call must not stop applying
                log.exception("audience: after applying calls of tenant %s", tenant_id)

    async def _ingest(self, tenant_id: str, calls: list[TrackedCall]) -> IngestResult | None:
        """Profiles.ingest, retried while the database is out; None when it
        refuses these calls as such."""
        delay = self._retry_min
        logged = False
        while True:
            try:
                return await self._profiles.ingest(tenant_id, calls)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if not is_backend_outage(exc):
                    if len(calls) == 1:
                        log.warning("audience: the database refused call: %r", exc)
                    return None
                self._retries += 1
                if not logged:
                    log.warning("audience: profiles wait for the database (%r)", exc)
                    logged = True
            await asyncio.sleep(delay)
            delay = min(delay * 2, self._retry_max)


class _StatsCollector(Collector):
    """Prometheus view of ApplierStats, read at scrape time."""

    def __init__(self, applier: ProfileApplier) -> None:
        self._applier = applier

    def collect(self) -> Iterator[Metric]:
        stats = self._applier.stats()
        prefix = "campaign_express_audience_applier_"
        for name, doc in (
            ("fed", "Calls acknowledged and handed to the profile applier."),
            ("applied", "Calls the profile applier is done with (duplicates and failed included)."),
            ("recovered", "Calls applied from journal files left by an earlier process."),
            ("failed", "Calls the database refused (skipped; alert on > 0)."),
            ("retries", "Batches tried again after a database failure."),
        ):
            yield CounterMetricFamily(prefix + name, doc, value=getattr(stats, name))
        yield GaugeMetricFamily(
            prefix + "lag", "Calls acknowledged and not yet applied to profiles.", stats.lag
        )
