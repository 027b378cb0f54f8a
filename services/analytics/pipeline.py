"""The loss-free analytics pipeline: emit -> journal -> batches -> the store.

    emit(event)                  loop thread: append to an in-memory inbox. O(1), no I/O,
         |                       never waits for the journal or the sink.
    journal thread               every `commit_interval` (2 ms) or sooner when asked:
         |                       encode the inbox and append it to the open segment file in
         |                       one write(2) (group commit; fsync per policy). Those events
         |                       are now ACKNOWLEDGED. A segment is sealed at `batch_size`
         |                       events or `flush_interval` after its first event.
    delivery task                loop thread: sealed segments in number order; each is one
                                 store.insert (from memory, or read back from its file),
                                 then its file is deleted.

Acknowledgement. An event is acknowledged once its journal line has been
written to the segment file (and fdatasync'ed with fsync="commit", the
default). Acknowledgement is a prefix of emit order: `stats().acknowledged == A`
means the first A events emitted (since start) are acknowledged. Callers that
need the guarantee for what they emitted `await acknowledged()` (a barrier:
returns once every event emitted before the call is journaled); `emit` itself
returns before that, so an event emitted and lost with its process in the same
few milliseconds was never acknowledged. Acknowledged events survive SIGKILL
and, with fsync="commit", a machine crash: a new pipeline on the same
spill_dir replays every segment file left behind, in order.

Zero loss. The journal IS the spill file: every event is on disk before the
sink sees it, so a failing sink costs nothing but memory release:
- the sink fails (an exception, or no answer within `insert_timeout`): the
  segment stays on disk, every in-memory copy is released ("spilled"), and new
  segments go to disk only while the sink is down. The delivery task waits
  with exponential backoff (`retry_min` .. `retry_max`), asks `store.ping()`,
  then retries the SAME segment: segments reach the store strictly in number
  order, lines in file order, each deleted only after its insert returned;
- the in-memory queue is full (sink slower than emit: more than `queue_max`
  sealed events held in memory): new segments are handed over disk-only
  (counted as spilled) and read back when their turn comes. emit is unaffected;
- the journal falls behind by `queue_max` events (the thread starved): emit
  commits the inbox itself, synchronously (measured in the benchmark);
- the journal cannot write (disk full or failing): events stay in the inbox
  and the write is retried; only when the journal is failing AND the inbox
  holds `queue_max` events does emit refuse an event, counting it in
  `dropped` (never acknowledged; alert on dropped > 0).
A crash after an insert and before its file is deleted replays that segment:
the identical block is dropped by the table's insert deduplication, and any
other duplicate collapses on event_id (see events.bid_events_ddl; exact
counts use uniqExact(event_id)).

A segment that the store keeps rejecting while it answers ping
(`max_attempts` times in a row: bad data, not an outage) is renamed to
`*.jsonl.rejected` and skipped, so it cannot block the stream; it stays on disk
(rename it back to replay it) and is counted in `quarantined`.

Threads: `emit`, `flush`, `acknowledged`, `stats` and `stop` belong to the
event loop's thread. One pipeline per spill directory (a lock file enforces it).
"""

from __future__ import annotations

import asyncio
import logging
import pathlib
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any, Protocol

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from services.analytics.events import BID_EVENTS, AnalyticsEvent, EventRow, EventSchema
from services.analytics.journal import (
    REJECTED_SUFFIX,
    CorruptSegment,
    FsyncPolicy,
    SegmentWriter,
    SpillDirLock,
    count_events,
    encode_events,
    read_segment,
    scan_segments,
)
from services.backends.interfaces import AnalyticsStore

__all__ = ["AnalyticsPipeline", "JournalFollower", "PipelineStats"]

log = logging.getLogger(__name__)

_NEW, _RUNNING, _STOPPING, _STOPPED = "new", "running", "stopping", "stopped"


@dataclass(frozen=True, slots=True)
class PipelineStats:
    """Counters since start (events unless named otherwise)."""

    emitted: int  # accepted by emit
    acknowledged: int  # journaled: the first `acknowledged` emitted events are safe
    queued: int  # accepted, held in memory, not yet in the store
    backlog: int  # on disk only (spilled or recovered), waiting for the store
    written: int  # inserted into the store (live and replayed)
    spilled: int  # moved to disk-only delivery: sink down or memory queue full
    replayed: int  # inserted from segment files read back (spilled or recovered)
    recovered: int  # found in the spill directory at start (an earlier process's)
    dropped: int  # refused by emit (journal failing and inbox full); should be 0
    commits: int  # journal group commits (one write each, and an fdatasync with fsync="commit")
    inline_commits: int  # journal commits done by emit itself (journal behind)
    sink_errors: int  # failed inserts
    quarantined: int  # events in segments set aside as rejected by the store
    corrupt_lines: int  # unparsable lines skipped when reading segments back
    sink_up: bool  # the last insert succeeded
    inserts: int = 0  # inserts tried (each a batch of events)
    insert_seconds: float = 0.0  # time those inserts took (ClickHouseSlow: the mean > 1 s)


class JournalFollower(Protocol):
    """Something that applies a pipeline's events somewhere else as well (the
    audience applies tracking calls to profiles), in emit order, from the
    journal's guarantee: a segment file is deleted only once the store has
    its events AND the follower says it is done with them, so a follower
    that dies or falls behind finds them again at the next start.

    Every method is called on the event loop's thread, and must return at
    once (queue the work, do it in a task)."""

    def start(
        self, recovered: list[tuple[int, pathlib.Path]], progress: Callable[[], None]
    ) -> None:
        """Called once at the pipeline's start with the segment files an
        earlier process left (number, path: read them with
        journal.read_segment(path, for_store=False)), to be applied before
        anything fed. Call `progress()` whenever done_with may say yes to
        more."""

    def feed(self, rows: list[EventRow]) -> None:
        """Acknowledged events, as journaled (value tuples in the schema's
        column order), in emit order: the first call holds emitted event 1
        onwards."""

    def done_with(self, number: int, recovered: bool, last: int) -> bool:
        """May segment `number` go? A recovered one: when its file has been
        applied. A live one: when the first `last` events fed are."""


@dataclass(slots=True)
class _Sealed:
    """A complete segment waiting for the store."""

    number: int
    path: pathlib.Path
    count: int
    rows: list[list[Any]] | None  # None: read it back from the file
    attempts: int = 0  # consecutive failed inserts while the store answered ping
    last: int = 0  # events journaled up to the end of this one (emit order)
    recovered: bool = False  # left by an earlier process


@dataclass(slots=True)
class _SealDone:
    """Flush requests the journal thread has served: `upto` is the number of
    the last segment sealed when it did."""

    requests: list[asyncio.Future[int]]
    upto: int


class AnalyticsPipeline:
    """Bid events into the analytics store, in batches, losing none.

    `store`: any AnalyticsStore (chDB or a ClickHouse server). `spill_dir`: the
    journal's directory, private to this pipeline and kept across restarts.
    See the module docstring for the guarantees and their limits.
    """

    def __init__(
        self,
        store: AnalyticsStore,
        spill_dir: pathlib.Path,
        *,
        batch_size: int = 10_000,
        flush_interval: float = 1.0,
        queue_max: int = 100_000,
        metrics_registry: CollectorRegistry | None = None,
        table: str = "",
        schema: EventSchema = BID_EVENTS,
        follower: JournalFollower | None = None,
        fsync: FsyncPolicy = "commit",
        commit_interval: float = 0.002,
        insert_timeout: float = 30.0,
        retry_min: float = 0.05,
        retry_max: float = 5.0,
        max_attempts: int = 10,
    ) -> None:
        if batch_size < 1 or queue_max < 1 or max_attempts < 1:
            raise ValueError("batch_size, queue_max and max_attempts must be positive")
        if flush_interval <= 0 or commit_interval < 0 or insert_timeout <= 0:
            raise ValueError("flush_interval and insert_timeout must be positive")
        if not 0 < retry_min <= retry_max:
            raise ValueError("need 0 < retry_min <= retry_max")
        if fsync not in ("commit", "seal", "none"):
            raise ValueError(f"unknown fsync policy {fsync!r}")
        self._store = store
        self._dir = pathlib.Path(spill_dir)
        self._schema = schema
        self._table = table or schema.table
        self._time_index = schema.time_index
        self._follower = follower
        self._batch_size = batch_size
        self._flush_interval = flush_interval
        self._queue_max = queue_max
        self._fsync: FsyncPolicy = fsync
        self._commit_interval = commit_interval
        self._commit_max = min(batch_size, 4096)
        self._insert_timeout = insert_timeout
        self._retry_min = retry_min
        self._retry_max = retry_max
        self._max_attempts = max_attempts
        self._state = _NEW
        self._loop: asyncio.AbstractEventLoop | None = None
        self._dir_lock: SpillDirLock | None = None

        # emit side (loop thread writes; the journal thread pops)
        self._inbox: deque[AnalyticsEvent | EventRow] = deque()
        # With a follower: events emitted and not yet fed to it (loop thread).
        self._tail: deque[AnalyticsEvent | EventRow] = deque()
        self._fed = 0
        self._kept: deque[_Sealed] = deque()  # delivered; the follower still needs them
        self._emitted = 0
        self._dropped = 0
        self._inline_commits = 0

        # journal side: everything below is changed under _lock only
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._journal_idle = False
        self._journal_failing = False
        self._stop_journal = False
        self._thread: threading.Thread | None = None
        self._writer: SegmentWriter | None = None
        self._writer_opened = 0.0
        self._next_number = 0
        self._last_sealed = -1
        self._acked = 0
        # Events the journal is done with: acknowledged, or dropped as not
        # encodable (never journaled, but nothing to wait for either).
        self._settled = 0
        # Events taken from the inbox: written to the open segment, or dropped
        # as not encodable. Written and not yet synced (fsync="commit"):
        self._journaled = 0
        self._unsynced = 0
        self._unsynced_bad = 0
        self._commits = 0
        self._journal_dropped = 0
        self._handed_in_memory = 0
        self._spilled_at_seal = 0
        self._seal_requests: deque[asyncio.Future[int]] = deque()
        self._handoff: deque[_Sealed | _SealDone] = deque()
        self._handoff_scheduled = False

        # delivery side (loop thread)
        self._fifo: deque[_Sealed] = deque()
        self._work = asyncio.Event()
        self._deliverer: asyncio.Task[None] | None = None
        self._schema_ready = False
        self._sink_up = True
        self._released_in_memory = 0
        self._backlog = 0
        self._written = 0
        self._replayed = 0
        self._spilled_live = 0
        self._recovered = 0
        self._sink_errors = 0
        self._inserts = 0
        self._insert_seconds = 0.0
        self._quarantined = 0
        self._corrupt_lines = 0
        self._delivered_upto = -1
        self._ack_waiters: list[tuple[int, asyncio.Future[None]]] = []
        self._flush_waiters: list[tuple[int, asyncio.Future[None]]] = []

        if metrics_registry is not None:
            metrics_registry.register(_StatsCollector(self))

    # ------------------------------------------------------------------ API

    async def start(self) -> None:
        """Take the spill directory, queue the segments an earlier process
        left for replay (before anything new), create the table if the store
        answers, and start the journal thread and the delivery task."""
        if self._state != _NEW:
            raise RuntimeError(f"pipeline is {self._state}")
        self._loop = asyncio.get_running_loop()
        await asyncio.to_thread(self._dir.mkdir, parents=True, exist_ok=True)
        self._dir_lock = SpillDirLock(self._dir)
        try:
            found = await asyncio.to_thread(
                lambda: [(n, p, count_events(p)) for n, p in scan_segments(self._dir)]
            )
        except BaseException:
            self._dir_lock.release()
            raise
        for number, path, count in found:
            self._fifo.append(_Sealed(number, path, count, None, recovered=True))
            self._backlog += count
            self._recovered += count
        if found:
            log.info(
                "analytics: replaying %d events from %d segment files in %s",
                self._recovered,
                len(found),
                self._dir,
            )
        self._next_number = found[-1][0] + 1 if found else 0
        self._last_sealed = self._next_number - 1
        try:
            # Short: a hanging store must not hold up the process's start.
            timeout = min(self._insert_timeout, 5.0)
            await asyncio.wait_for(self._schema.ensure(self._store, self._table), timeout)
            self._schema_ready = True
        except Exception as exc:  # the delivery task retries it with the inserts
            log.warning("analytics: store not ready at start (%s); events are journaled", exc)
        if self._follower is not None:
            self._follower.start([(n, p) for n, p, _ in found], self._follower_progress)
        self._state = _RUNNING
        self._thread = threading.Thread(
            target=self._journal_main, name="analytics-journal", daemon=True
        )
        self._thread.start()
        self._work.set()
        self._deliverer = asyncio.create_task(self._deliver_main(), name="analytics-delivery")

    def emit(self, event: AnalyticsEvent | EventRow) -> bool:
        """Queue one event, or an event row made by `bid_row`/`no_bid_row`.
        Returns at once (O(1), no I/O in the normal case); the event is
        acknowledged within `commit_interval` plus a write, or sooner when
        someone awaits `acknowledged()`. False: the event was refused (counted
        in `dropped`): before start() events wait in memory up to queue_max,
        and a failing journal holds at most queue_max. After stop() this
        raises RuntimeError."""
        state = self._state
        if state is not _RUNNING and state is not _NEW:
            raise RuntimeError(f"analytics pipeline is {state}; the event was not accepted")
        inbox = self._inbox
        if len(inbox) >= self._queue_max:
            return self._overflow(event)
        inbox.append(event)
        self._emitted += 1
        if self._follower is not None:
            self._tail.append(event)
        if self._journal_idle:
            self._journal_idle = False
            self._wake.set()
        return True

    def write_now(self) -> bool:
        """Write what was emitted to the journal file now, on this thread: one
        write(2) and no fsync, so it takes microseconds and those events
        survive the death of the process from here on; the journal thread
        makes them durable per the fsync policy (fdatasync with "commit")
        within `commit_interval`, and only then are they acknowledged.
        True when every event emitted so far is written. False when the
        journal thread holds the journal right now (committing) or the journal
        is failing: then `await acknowledged()`."""
        target = self._emitted
        if self._journaled >= target:
            return True
        if self._journal_failing or self._state is not _RUNNING:
            return False
        if not self._lock.acquire(blocking=False):
            return False
        try:
            self._commit_locked(sync=False)
        finally:
            self._lock.release()
        return self._journaled >= target

    async def acknowledged(self) -> int:
        """Wait until every event emitted before this call is journaled (the
        durability barrier); returns the number acknowledged so far. Bound it
        with asyncio.timeout where the journal may be failing."""
        target = self._emitted
        if self._settled < target:
            waiter = self._require_loop().create_future()
            self._ack_waiters.append((target, waiter))
            self._wake.set()
            self._on_handoff()  # acknowledged in the meantime?
            await waiter
        return self._acked

    async def flush(self) -> None:
        """Seal the open segment and wait until every event emitted before
        this call (and every recovered one) is in the store. While the sink is
        down this waits for it to return: bound it with asyncio.timeout
        (cancelling loses nothing)."""
        if self._state != _RUNNING:
            raise RuntimeError(f"analytics pipeline is {self._state}")
        request: asyncio.Future[int] = self._require_loop().create_future()
        self._seal_requests.append(request)
        self._wake.set()
        upto = await request
        await self._delivered(upto)

    async def stop(self, grace: float = 30.0) -> None:
        """Journal what is in the inbox, seal, and deliver what is left for
        up to `grace` seconds. Anything not delivered by then stays in the
        spill directory and is replayed by the next start. Does not close the
        store (its owner does)."""
        if self._state in (_STOPPING, _STOPPED):
            return
        if self._state == _NEW:
            self._state = _STOPPED
            if self._inbox:  # emitted, never started: never acknowledged either
                self._dropped += len(self._inbox)
                log.error("analytics: %d events dropped: stopped before start", len(self._inbox))
                self._inbox.clear()
            return
        self._state = _STOPPING
        self._stop_journal = True
        self._wake.set()
        try:
            if self._thread is not None:
                await asyncio.to_thread(self._thread.join)
            self._on_handoff()
            try:
                async with asyncio.timeout(grace):
                    await self._delivered(self._last_sealed)
            except TimeoutError:
                left = self._fifo_events()
                log.warning(
                    "analytics: stopped with %d events undelivered; they stay in %s for replay",
                    left,
                    self._dir,
                )
        finally:
            if self._deliverer is not None:
                self._deliverer.cancel()
                try:
                    await self._deliverer
                except asyncio.CancelledError:
                    pass
            for _, waiter in self._ack_waiters + self._flush_waiters:
                if not waiter.done():
                    waiter.set_exception(RuntimeError("analytics pipeline stopped"))
            self._ack_waiters.clear()
            self._flush_waiters.clear()
            if self._dir_lock is not None:
                self._dir_lock.release()
            self._state = _STOPPED

    def stats(self) -> PipelineStats:
        writer = self._writer
        in_memory = self._handed_in_memory - self._released_in_memory
        current = writer.count if writer is not None else 0
        return PipelineStats(
            emitted=self._emitted,
            acknowledged=self._acked,
            queued=len(self._inbox) + current + in_memory,
            backlog=self._backlog,
            written=self._written,
            spilled=self._spilled_at_seal + self._spilled_live,
            replayed=self._replayed,
            recovered=self._recovered,
            dropped=self._dropped + self._journal_dropped,
            commits=self._commits,
            inline_commits=self._inline_commits,
            sink_errors=self._sink_errors,
            quarantined=self._quarantined,
            corrupt_lines=self._corrupt_lines,
            sink_up=self._sink_up,
            inserts=self._inserts,
            insert_seconds=self._insert_seconds,
        )

    @property
    def spill_dir(self) -> pathlib.Path:
        return self._dir

    # ------------------------------------------------------------------ emit overflow

    def _overflow(self, event: AnalyticsEvent | EventRow) -> bool:
        """The inbox holds queue_max events: the journal thread is behind."""
        if self._journal_failing or self._state is _NEW:
            self._dropped += 1
            if self._dropped == 1 or self._dropped % 10_000 == 0:
                log.error(
                    "analytics: %d events dropped: the journal in %s cannot take them",
                    self._dropped,
                    self._dir,
                )
            return False
        self._inbox.append(event)
        self._emitted += 1
        if self._follower is not None:
            self._tail.append(event)
        # Commit here, synchronously, unless the journal thread is committing
        # right now (then it drains the inbox itself in a moment).
        if self._lock.acquire(blocking=False):
            try:
                self._inline_commits += 1
                self._commit_locked()
            finally:
                self._lock.release()
        return True

    # ------------------------------------------------------------------ journal thread

    def _journal_main(self) -> None:
        while True:
            try:
                if self._journal_step():
                    return
            except Exception:  # a bug must not stop the journal for good
                log.exception("analytics: journal error; retrying")
                self._wake.wait(0.1)
                self._wake.clear()

    def _journal_step(self) -> bool:
        """One round of the journal thread: commit, seal when due, then wait
        for the next round. True when the thread is done (stopped)."""
        wake = self._wake
        inbox = self._inbox
        started = time.monotonic()
        with self._lock:
            stopping = self._stop_journal
            # Take the flush requests BEFORE committing: everything emitted
            # before a request is in the inbox now and goes into this seal.
            requests = [self._seal_requests.popleft() for _ in range(len(self._seal_requests))]
            if inbox:
                self._commit_locked()
            else:
                self._sync_locked()  # what write_now wrote from the loop's thread
            if inbox and not stopping:  # the journal is failing: serve them later
                self._seal_requests.extendleft(reversed(requests))
                requests = []
            elif requests or stopping:
                self._seal_locked()
            elif self._writer is not None and started - self._writer_opened >= (
                self._flush_interval
            ):
                self._seal_locked()
            if requests:
                self._hand(_SealDone(requests, self._last_sealed))
            if self._ack_waiters:
                self._schedule_handoff()
            if stopping:
                if inbox:  # the journal cannot write: these were never acknowledged
                    self._journal_dropped += len(inbox)
                    log.error("analytics: %d unjournaled events lost at stop", len(inbox))
                    inbox.clear()
                return True
        if self._journal_failing:
            wake.wait(0.1)
        elif (inbox or self._unsynced) and not self._seal_requests:
            if len(inbox) < self._commit_max:  # group commit: gather for commit_interval
                wake.wait(max(0.0, started + self._commit_interval - time.monotonic()))
        else:
            self._journal_idle = True  # from here on emit wakes the thread
            if not (inbox or self._seal_requests or self._stop_journal):
                timeout = None
                if self._writer is not None:
                    timeout = max(
                        0.0, self._writer_opened + self._flush_interval - time.monotonic()
                    )
                wake.wait(timeout)
            self._journal_idle = False
            wake.clear()
            # Woken by the first event after a quiet spell: gather the events
            # of one commit interval before committing, unless someone waits
            # (an acknowledgement or a flush) or the pipeline stops; they set
            # `wake` and end the gathering early. Committing at once would
            # make one write per event whenever the writes keep up.
            # Events written by write_now count too: their fdatasync is due.
            if (inbox or self._unsynced) and not (
                self._seal_requests or self._stop_journal or self._ack_waiters
            ):
                wake.wait(self._commit_interval)
        wake.clear()
        return False

    def _commit_locked(self, *, sync: bool = True) -> None:
        """Append the inbox to the journal (caller holds _lock); then, unless
        `sync` is False, make it durable (`_sync_locked`)."""
        inbox = self._inbox
        events = [inbox.popleft() for _ in range(len(inbox))]
        position = 0
        while position < len(events):
            writer = self._writer
            if writer is None:
                writer = SegmentWriter(
                    self._dir, self._next_number, self._table, self._fsync, self._schema.columns
                )
                self._next_number += 1
                self._writer = writer
                self._writer_opened = time.monotonic()
            chunk = events[position : position + self._batch_size - writer.count]
            lines, rows, bad = encode_events(chunk, self._time_index)
            try:
                if lines:
                    writer.append(lines, rows)
                    self._commits += 1
            except OSError as exc:
                inbox.extendleft(reversed(events[position:]))
                self._journal_failed(exc)
                return
            position += len(chunk)
            self._journaled += len(chunk)
            self._unsynced += len(lines)
            self._unsynced_bad += bad
            if writer.count >= self._batch_size:
                self._seal_locked()
        if sync or self._fsync != "commit":
            self._sync_locked()

    def _sync_locked(self) -> None:
        """Make what was appended durable (fdatasync with fsync="commit"):
        those events are acknowledged from here on."""
        if not (self._unsynced or self._unsynced_bad):
            return
        writer = self._writer
        if writer is not None:
            try:
                writer.sync()
            except OSError as exc:  # written, not known durable: retried next round
                self._journal_failed(exc)
                return
        self._settle_unsynced()
        if self._journal_failing:
            log.warning("analytics: journal writes work again in %s", self._dir)
        self._journal_failing = False

    def _settle_unsynced(self) -> None:
        self._acked += self._unsynced
        self._settled += self._unsynced + self._unsynced_bad
        self._journal_dropped += self._unsynced_bad
        self._unsynced = self._unsynced_bad = 0
        if self._ack_waiters or self._follower is not None:
            self._schedule_handoff()

    def _journal_failed(self, exc: OSError) -> None:
        if not self._journal_failing:
            log.error("analytics: journal write failed in %s: %s", self._dir, exc)
        self._journal_failing = True

    def _seal_locked(self) -> None:
        writer = self._writer
        if writer is None:
            return
        self._sync_locked()
        self._writer = None
        if writer.count == 0:
            return
        try:
            writer.seal()
        except OSError as exc:  # written but maybe not synced: deliver it anyway
            log.error("analytics: sealing %s failed: %s", writer.path, exc)
        # Sealed: whatever the sync said, its events go on to the store.
        self._settle_unsynced()
        self._last_sealed = writer.number
        in_memory = self._handed_in_memory - self._released_in_memory
        keep = self._sink_up and in_memory + writer.count <= self._queue_max
        if keep:
            self._handed_in_memory += writer.count
        else:
            self._spilled_at_seal += writer.count
        self._hand(
            _Sealed(
                writer.number,
                writer.path,
                writer.count,
                writer.rows if keep else None,
                last=self._journaled,
            )
        )

    def _hand(self, item: _Sealed | _SealDone) -> None:
        self._handoff.append(item)
        self._schedule_handoff()

    def _schedule_handoff(self) -> None:
        if not self._handoff_scheduled and self._loop is not None:
            self._handoff_scheduled = True
            try:
                self._loop.call_soon_threadsafe(self._on_handoff)
            except RuntimeError:  # the loop is closed: nobody is waiting any more
                pass

    # ------------------------------------------------------------------ loop side

    def _on_handoff(self) -> None:
        self._handoff_scheduled = False
        while self._handoff:
            item = self._handoff.popleft()
            if isinstance(item, _Sealed):
                self._fifo.append(item)
                if item.rows is None:
                    self._backlog += item.count
                self._work.set()
            else:
                for request in item.requests:
                    if not request.done():
                        request.set_result(item.upto)
        if self._follower is not None and self._settled > self._fed:
            tail = self._tail
            take = min(self._settled - self._fed, len(tail))
            items = [tail.popleft() for _ in range(take)]
            self._fed += take
            self._follower.feed(
                [item.row() if isinstance(item, AnalyticsEvent) else item for item in items]
            )
        if self._ack_waiters:
            settled = self._settled
            waiting = []
            for target, waiter in self._ack_waiters:
                if settled >= target:
                    if not waiter.done():
                        waiter.set_result(None)
                else:
                    waiting.append((target, waiter))
            self._ack_waiters = waiting

    async def _delivered(self, upto: int) -> None:
        if self._delivered_upto >= upto:
            return
        waiter = self._require_loop().create_future()
        self._flush_waiters.append((upto, waiter))
        await waiter

    async def _deliver_main(self) -> None:
        while True:
            if not self._fifo:
                self._work.clear()
                await self._work.wait()
                continue
            segment = self._fifo[0]
            try:
                if await self._deliver(segment):
                    continue
                await self._wait_for_sink()
                if segment.attempts >= self._max_attempts and self._fifo[0] is segment:
                    await self._quarantine(segment, f"rejected {segment.attempts} times")
            except Exception:  # a bug must not stop delivery for good
                log.exception("analytics: delivery error; retrying")
                await asyncio.sleep(self._retry_max)

    async def _deliver(self, segment: _Sealed) -> bool:
        rows = segment.rows
        columns: list[str] | tuple[str, ...] = self._schema.columns
        if rows is None:
            try:
                data = await asyncio.to_thread(read_segment, segment.path)
            except FileNotFoundError:
                log.error("analytics: segment %s vanished before delivery", segment.path)
                self._finish(segment, 0)
                return True
            except (CorruptSegment, OSError) as exc:
                await self._quarantine(segment, str(exc))
                return True
            rows, columns = data.rows, data.columns
            self._corrupt_lines += data.corrupt_lines
            if data.corrupt_lines:
                log.error(
                    "analytics: %d unreadable lines skipped in %s",
                    data.corrupt_lines,
                    segment.path,
                )
        try:
            if not self._schema_ready:
                await asyncio.wait_for(
                    self._schema.ensure(self._store, self._table), self._insert_timeout
                )
                self._schema_ready = True
            if rows:
                began = time.perf_counter()
                try:
                    await asyncio.wait_for(
                        self._store.insert(self._table, columns, rows), self._insert_timeout
                    )
                finally:  # failed and timed-out inserts count: a slow store is what to see
                    self._inserts += 1
                    self._insert_seconds += time.perf_counter() - began
        except Exception as exc:
            self._sink_errors += 1
            if self._sink_up:
                log.warning("analytics: the store failed (%r); spilling to %s", exc, self._dir)
                self._sink_up = False
            self._spill_memory()
            if not isinstance(exc, TimeoutError | ConnectionError):
                segment.attempts += 1
            return False
        follower = self._follower
        if follower is None or follower.done_with(segment.number, segment.recovered, segment.last):
            try:
                await asyncio.to_thread(segment.path.unlink, missing_ok=True)
            except OSError as exc:  # replayed again at the next start; deduplicated there
                log.error("analytics: cannot delete delivered segment %s: %s", segment.path, exc)
        else:
            self._kept.append(segment)
        if not self._sink_up:
            log.warning("analytics: the store is back; replaying %d events", self._backlog)
            self._sink_up = True
        self._finish(segment, len(rows))
        return True

    def _finish(self, segment: _Sealed, written: int) -> None:
        """The segment is done (delivered, vanished or quarantined)."""
        self._fifo.popleft()
        if segment.rows is not None:
            self._released_in_memory += segment.count
            segment.rows = None
        else:
            self._backlog -= segment.count
            self._replayed += written
        self._written += written
        self._delivered_upto = segment.number
        if self._flush_waiters:
            waiting = []
            for upto, waiter in self._flush_waiters:
                if upto <= segment.number:
                    if not waiter.done():
                        waiter.set_result(None)
                else:
                    waiting.append((upto, waiter))
            self._flush_waiters = waiting

    def _spill_memory(self) -> None:
        """The sink failed: keep no event in memory that is safe on disk."""
        for segment in self._fifo:
            if segment.rows is not None:
                segment.rows = None
                self._released_in_memory += segment.count
                self._spilled_live += segment.count
                self._backlog += segment.count

    async def _wait_for_sink(self) -> None:
        delay = self._retry_min
        while True:
            await asyncio.sleep(delay)
            try:
                up = await asyncio.wait_for(self._store.ping(), self._insert_timeout)
            except Exception:
                up = False
            if up:
                return
            delay = min(delay * 2, self._retry_max)

    async def _quarantine(self, segment: _Sealed, why: str) -> None:
        target = segment.path.with_name(segment.path.name + REJECTED_SUFFIX)
        try:
            await asyncio.to_thread(segment.path.rename, target)
        except OSError as exc:
            log.error("analytics: cannot set %s aside: %s", segment.path, exc)
            return
        log.error(
            "analytics: %d events set aside in %s (%s); rename it back to replay it",
            segment.count,
            target,
            why,
        )
        self._quarantined += segment.count
        self._finish(segment, 0)

    def _follower_progress(self) -> None:
        """The follower applied more: delete the delivered segments it is
        done with (in order; a quick unlink each)."""
        follower, kept = self._follower, self._kept
        while kept and follower is not None:
            segment = kept[0]
            if not follower.done_with(segment.number, segment.recovered, segment.last):
                return
            kept.popleft()
            try:
                segment.path.unlink(missing_ok=True)
            except OSError as exc:  # replayed again at the next start; deduplicated there
                log.error("analytics: cannot delete delivered segment %s: %s", segment.path, exc)

    @property
    def emitted(self) -> int:
        """Events accepted by emit so far: the last one emitted is number
        `emitted` of the follower's feed."""
        return self._emitted

    def _fifo_events(self) -> int:
        return sum(segment.count for segment in self._fifo)

    def _require_loop(self) -> asyncio.AbstractEventLoop:
        if self._loop is None:
            self._loop = asyncio.get_running_loop()
        return self._loop


class _StatsCollector(Collector):
    """Prometheus view of PipelineStats, read at scrape time (emit stays free
    of metric updates)."""

    def __init__(self, pipeline: AnalyticsPipeline) -> None:
        self._pipeline = pipeline

    def collect(self) -> Iterable[Metric]:
        return self._metrics(self._pipeline.stats())

    @staticmethod
    def _metrics(stats: PipelineStats) -> Iterator[Metric]:
        prefix = "campaign_express_analytics_"
        counters = {
            "emitted": "Events accepted by emit.",
            "acknowledged": "Events written to the local journal (safe from process loss).",
            "written": "Events inserted into the analytics store.",
            "spilled": "Events moved to disk-only delivery (store down or memory queue full).",
            "replayed": "Events inserted from journal files read back.",
            "recovered": "Events found in the journal at start, left by an earlier process.",
            "dropped": "Events refused because the journal could not take them (alert on > 0).",
            "commits": "Journal group commits (one write, and one fdatasync with fsync=commit).",
            "inline_commits": "Journal commits done by emit because the journal was behind.",
            "sink_errors": "Failed inserts into the analytics store.",
            "quarantined": "Events in journal files set aside as rejected by the store.",
            "inserts": "Inserts tried into the analytics store (each a batch of events).",
            "insert_seconds": "Seconds those inserts took (their mean: insert_seconds / inserts).",
        }
        for name, doc in counters.items():
            yield CounterMetricFamily(prefix + name, doc, value=getattr(stats, name))
        yield GaugeMetricFamily(
            prefix + "queued", "Events held in memory, not yet in the store.", stats.queued
        )
        yield GaugeMetricFamily(
            prefix + "backlog", "Events on disk only, waiting for the store.", stats.backlog
        )
        yield GaugeMetricFamily(
            prefix + "sink_up", "1 when the last insert into the store succeeded.", stats.sink_up
        )
