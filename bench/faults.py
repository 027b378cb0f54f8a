"""Fault injection under steady bid load: what bids, notices and events live
through when PostgreSQL, Redis or NATS freezes or dies, or the server itself
is killed with SIGKILL (issue 14's figures; tests/test_faults.py runs the same
plan, shorter, and asserts on it).

    python -m bench.faults --freeze 10 --kill 15 --rate 200

Set-up: PostgreSQL, Redis (append-only file, fsync always) and NATS JetStream
servers of the run's own (started as the tests start them), one `campaign-
express serve` on them with the demo tenant and bench.bidding's 16 live
campaigns x 4 offers; campaigns 0-3 carry a frequency cap that fails closed
(the default), 4-7 one that fails open. Load: OpenRTB JSON bid requests
(bench/openrtb_samples.py, tmax 100 ms, Zipf users) on `POST /v1/bid` at a
fixed rate, open loop, over the whole run. A quarter of the bids are won: the
win notice (nurl) is sent twice, as an exchange retrying would, and again
until it is answered 200, backing off from 0.5 s to 8 s (on connections of
its own: notices waiting on a stalled backend do not hold up bids).

Plan, one fault after the other, each after a steady spell: PostgreSQL, Redis
and NATS are each frozen (SIGSTOP to the server's process group, then
SIGCONT) and killed (SIGKILL, then started again on the same port: PostgreSQL
runs crash recovery, Redis reloads its file, NATS comes back with an EMPTY
JetStream store), and the server is killed with SIGKILL and started again on
the same data directory.

Per fault: the share of bids answered on time (200 or 204 before tmax), the
share answered with a bid, p50/p99 of the answered bids, errors (anything
else: 5xx, refused connections), and the recovery time: from the end of the
fault (SIGCONT, or the restarted process accepting connections) until
/ready answers 200 again. At the end (the server stopped cleanly, so its
journal is delivered): answered bids missing from analytics (goal 0),
duplicated win events after FINAL (goal 0), won bids whose spend is not in
the ledger once, and won bids whose frequency-cap impression is not counted
exactly once.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import dataclasses
import datetime as dt
import gc
import json
import logging
import os
import pathlib
import platform
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from urllib.parse import urlsplit

import aiohttp
import orjson
from grpc import aio

from bench.bidding import KEY, TCF_CONSENT, ZipfUsers, seed_offers
from bench.openrtb_samples import realistic_request
from bench.platform_calls import _cpu_model, _cpu_seconds, _free_port
from campaignexpress.campaigns.v1 import campaign_pb2 as cpb
from services.analytics.events import TABLE
from services.backends.analytics import open_analytics_store
from services.bidding.caps import FrequencyCaps
from services.bidding.notices import NoticeToken
from tests.backend_servers import PrivateNats, PrivatePostgres, RestartableRedis

log = logging.getLogger("bench.faults")

TMAX_MS = 100
WIN_SHARE = 0.25
NOTICE_RETRY_SECONDS = 0.5
NOTICE_RETRY_MAX_SECONDS = 8.0
BACKENDS = ("postgres", "redis", "nats")
REPORT = pathlib.Path(__file__).parent / "reports" / "faults.md"


# --------------------------------------------------------------------------- the servers


class Rig:
    """The backend servers and the platform process on them."""

    def __init__(self, data_dir: pathlib.Path) -> None:
        self.data_dir = data_dir
        self.postgres = PrivatePostgres()
        self.redis = RestartableRedis()
        self.nats = PrivateNats()
        self.http_port, self.grpc_port, self.metrics_port = (
            _free_port(),
            _free_port(),
            _free_port(),
        )
        self.server: subprocess.Popen[bytes] | None = None
        self.log_path = data_dir.parent / "serve.log"

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def start_server(self) -> None:
        env = dict(
            os.environ,
            DATABASE_URL=self.postgres.url,
            REDIS_URL=self.redis.url,
            NATS_URL=self.nats.url,
            CAMPAIGN_EXPRESS_DEMO_API_KEY=KEY,
            CAMPAIGN_EXPRESS_RATE_LIMIT_PER_SECOND="0",
            CAMPAIGN_EXPRESS_LOG_LEVEL="WARNING",
            CAMPAIGN_EXPRESS_PUBLIC_URL=self.base_url,
        )
        env.pop("CLICKHOUSE_URL", None)  # embedded analytics, in the data dir
        argv = [
            sys.executable, "-m", "services.host.cli", "serve", "--demo",
            "--host", "127.0.0.1", "--data-dir", str(self.data_dir),
            "--http-port", str(self.http_port), "--grpc-port", str(self.grpc_port),
            "--metrics-port", str(self.metrics_port),
        ]  # fmt: skip
        with open(self.log_path, "ab") as log:
            self.server = subprocess.Popen(
                argv, env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT
            )

    def kill_server(self) -> None:
        assert self.server is not None
        self.server.kill()
        self.server.wait()

    def stop_server(self, timeout: float = 60.0) -> int | None:
        if self.server is None or self.server.poll() is not None:
            return None if self.server is None else self.server.returncode
        self.server.terminate()
        try:
            return self.server.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.server.kill()
            return self.server.wait()

    def freeze(self, backend: str) -> None:
        if backend == "postgres":
            self.postgres.freeze()
        else:
            server = self._killable(backend).server
            assert server is not None
            server.proc.send_signal(signal.SIGSTOP)

    def thaw(self, backend: str) -> None:
        if backend == "postgres":
            self.postgres.thaw()
        else:
            server = self._killable(backend).server
            assert server is not None
            server.proc.send_signal(signal.SIGCONT)

    def kill(self, backend: str) -> None:
        if backend == "postgres":
            self.postgres.kill()
        else:
            self._killable(backend).kill()

    def restart(self, backend: str) -> None:
        """Start a killed backend again (blocking until it accepts connections)."""
        if backend == "postgres":
            self.postgres.start()
        elif backend == "redis":
            self.redis.start()
        else:
            self.nats.restart(empty_store=True)

    def _killable(self, backend: str) -> RestartableRedis | PrivateNats:
        return self.redis if backend == "redis" else self.nats

    def close(self) -> None:
        with contextlib.suppress(Exception):
            if self.server is not None and self.server.poll() is None:
                self.server.kill()
                self.server.wait()
        for server in (self.postgres, self.redis, self.nats):
            with contextlib.suppress(Exception):
                if server.server is not None and server.server.proc.poll() is None:
                    server.server.proc.send_signal(signal.SIGCONT)
                server.stop()


async def settled(pid: int, limit: float = 60.0) -> None:
    """Until the process uses under 5% of a core over three seconds in a row
    (or `limit`)."""
    deadline = time.monotonic() + limit
    quiet = 0
    while time.monotonic() < deadline and quiet < 3:
        before = _cpu_seconds(pid)
        await asyncio.sleep(1)
        quiet = quiet + 1 if _cpu_seconds(pid) - before < 0.05 else 0


async def wait_ready(base_url: str, deadline: float) -> float | None:
    """Seconds until GET /ready answers 200 (polling every 50 ms), or None."""
    started = time.monotonic()
    timeout = aiohttp.ClientTimeout(total=1.5)
    async with aiohttp.ClientSession(timeout=timeout) as http:
        while time.monotonic() < deadline:
            try:
                async with http.get(base_url + "/ready") as reply:
                    if reply.status == 200:
                        return time.monotonic() - started
            except (aiohttp.ClientError, TimeoutError):
                pass
            await asyncio.sleep(0.05)
    return None


async def watch_ready(base_url: str, stop: asyncio.Event) -> Counter[str]:
    """Poll /ready every 250 ms until `stop`: how often each answer came
    ("200", "503 postgres: down", "no answer")."""
    seen: Counter[str] = Counter()
    timeout = aiohttp.ClientTimeout(total=1.5)
    async with aiohttp.ClientSession(timeout=timeout) as http:
        while not stop.is_set():
            try:
                async with http.get(base_url + "/ready") as reply:
                    body = orjson.loads(await reply.read())
                    problems = ", ".join(f"{k}: {v}" for k, v in body.get("problems", {}).items())
                    seen[f"{reply.status} {problems}".strip()] += 1
            except (aiohttp.ClientError, TimeoutError, ValueError):
                seen["no answer"] += 1
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 0.25)
    return seen


async def seed_campaigns(grpc_port: int) -> None:
    """bench.bidding's 16 campaigns, with a frequency cap (1,000 a day: never
    reached, but read on every bid) on 0-7: 0-3 fail closed (the default), 4-7
    fail open."""

    def caps(number: int, campaign: cpb.Campaign) -> None:
        if number < 8:
            campaign.frequency_caps.add(max_impressions=1000, window=cpb.CAP_WINDOW_DAY)
            campaign.cap_failure_mode = (
                cpb.CAP_FAILURE_MODE_OPEN if number >= 4 else cpb.CAP_FAILURE_MODE_CLOSED
            )

    async with aio.insecure_channel(f"127.0.0.1:{grpc_port}") as channel:
        await seed_offers(channel, caps)


# --------------------------------------------------------------------------- the load


@dataclass(slots=True)
class Sample:
    at: float  # scheduled send time, monotonic
    latency: float  # seconds from `at`; inf when unanswered
    status: int  # HTTP status; 0: no answer (refused, reset, client timeout)
    bids: list[str] = field(default_factory=list)  # bid ids answered
    error: str = ""  # why there was no answer: the exception's type and text


@dataclass
class Notice:
    token: NoticeToken
    path: str
    sends: int = 0
    ok: int = 0  # 200 answers (the first books, the retries must not)
    done: bool = False
    last: str = ""  # the last answer: a status, or the client's error


def decode_token(t: str) -> NoticeToken:
    """A notice token's fields, read without checking its signature (the
    server checks it)."""
    body = t.partition(".")[0]
    raw = orjson.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
    return NoticeToken(*raw[1:])


class Load:
    """Open-loop bid requests at `rate` per second from start() to stop(),
    each recorded as a Sample; a WIN_SHARE of the bids get win notices."""

    def __init__(self, base_url: str, rate: float, seed: int = 3) -> None:
        self.base_url = base_url
        self.rate = rate
        self.samples: list[Sample] = []
        self.notices: dict[str, Notice] = {}
        self._rng = random.Random(seed)
        self._users = ZipfUsers(seed=seed)
        self._bodies = self._pool(2_000)
        self._running = False
        self._tasks: set[asyncio.Task[None]] = set()
        self._driver: asyncio.Task[None] | None = None
        self._http: aiohttp.ClientSession | None = None
        # notices on connections of their own, as an exchange's notice
        # sender: notices waiting on a stalled backend do not hold up bids
        self._notice_http: aiohttp.ClientSession | None = None

    def _pool(self, size: int) -> list[bytes]:
        bodies = []
        for uid in self._users.draw(size):
            request = realistic_request(self._rng, user_id=uid)
            request["user"]["consent"] = TCF_CONSENT
            request["tmax"] = TMAX_MS
            bodies.append(orjson.dumps(request))
        return bodies

    async def start(self) -> None:
        self._http = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=500),
            timeout=aiohttp.ClientTimeout(total=2.0),
            headers={"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"},
        )
        self._notice_http = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=200),
            timeout=aiohttp.ClientTimeout(total=5.0),
        )
        self._running = True
        self._driver = asyncio.create_task(self._drive())

    async def stop(self, notice_grace: float) -> None:
        self._running = False
        if self._driver is not None:
            await self._driver
        deadline = time.monotonic() + notice_grace
        # the bids still in flight and the notices still being retried (a
        # bid answered now spawns its notice: wait for those too)
        while self._tasks and (left := deadline - time.monotonic()) > 0:
            await asyncio.wait(set(self._tasks), timeout=left)
        for task in self._tasks:
            task.cancel()
        if self._http is not None:
            await self._http.close()
        if self._notice_http is not None:
            await self._notice_http.close()

    async def _drive(self) -> None:
        interval = 1.0 / self.rate
        started = time.monotonic()
        sent = 0
        while self._running:
            scheduled = started + sent * interval
            delay = scheduled - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            body = self._bodies[sent % len(self._bodies)]
            self._spawn(self._bid(scheduled, body))
            sent += 1

    def _spawn(self, work: Awaitable[None]) -> None:
        task = asyncio.ensure_future(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _bid(self, scheduled: float, body: bytes) -> None:
        assert self._http is not None
        sample = Sample(at=scheduled, latency=float("inf"), status=0)
        self.samples.append(sample)
        try:
            async with self._http.post(self.base_url + "/v1/bid", data=body) as reply:
                payload = await reply.read()
                sample.status = reply.status
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            sample.error = f"{type(exc).__name__}: {exc}"[:200]
            return
        sample.latency = time.monotonic() - scheduled
        if sample.status != 200:
            return
        answer = orjson.loads(payload)
        for seat in answer.get("seatbid", ()):
            for bid in seat.get("bid", ()):
                sample.bids.append(bid["id"])
                if self._rng.random() < WIN_SHARE:
                    parts = urlsplit(bid["nurl"].replace("${AUCTION_PRICE}", str(bid["price"])))
                    t = next(p[2:] for p in parts.query.split("&") if p.startswith("t="))
                    notice = Notice(decode_token(t), f"{parts.path}?{parts.query}")
                    self.notices[bid["id"]] = notice
                    self._spawn(self._win(notice))

    async def _win(self, notice: Notice) -> None:
        """Send the win notice twice (a retry racing the first), then again
        until one is answered 200 (while the run lasts), backing off as
        exchanges do: 0.5 s doubling to 8 s, with jitter."""
        await asyncio.gather(self._send(notice), self._send(notice))
        delay = NOTICE_RETRY_SECONDS
        while not notice.done and (self._running or notice.sends < 30):
            await asyncio.sleep(delay * self._rng.uniform(0.8, 1.2))
            delay = min(delay * 2, NOTICE_RETRY_MAX_SECONDS)
            await self._send(notice)

    async def _send(self, notice: Notice) -> None:
        assert self._notice_http is not None
        notice.sends += 1
        try:
            async with self._notice_http.get(self.base_url + notice.path) as reply:
                body = await reply.read()
                notice.last = f"{reply.status} {body[:200]!r}"
                if reply.status == 200:
                    notice.ok += 1
                    notice.done = True
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            notice.last = repr(exc)


# --------------------------------------------------------------------------- the plan


@dataclass
class FaultResult:
    fault: str  # e.g. "redis freeze"
    seconds: float
    requests: int
    on_time: float  # share answered 200/204 within tmax
    bid_share: float  # share answered with a bid
    p50_ms: float
    p99_ms: float
    errors: int
    recovery_s: float | None
    outcome_counts: dict[int, int]
    ready_said: str = ""  # what /ready answered during the fault
    #: (ms into the fault it was sent, ms it took) of each answer past tmax
    late: list[tuple[int, int]] = field(default_factory=list)
    #: why requests got no answer, with how many
    no_answer: dict[str, int] = field(default_factory=dict)


def summarize(fault: str, samples: list[Sample], since: float, until: float) -> FaultResult:
    window = [s for s in samples if since <= s.at < until]
    answered = sorted(s.latency for s in window if s.status in (200, 204))
    on_time = sum(1 for s in window if s.status in (200, 204) and s.latency * 1e3 < TMAX_MS)
    bids = sum(1 for s in window if s.status == 200)

    def pct(q: float) -> float:
        if not answered:
            return float("nan")
        return answered[min(len(answered) - 1, int(q / 100 * len(answered)))] * 1e3

    n = max(1, len(window))
    return FaultResult(
        fault=fault,
        seconds=until - since,
        requests=len(window),
        on_time=on_time / n,
        bid_share=bids / n,
        p50_ms=pct(50),
        p99_ms=pct(99),
        errors=sum(1 for s in window if s.status not in (200, 204)),
        recovery_s=None,
        outcome_counts=dict(Counter(s.status for s in window)),
        late=[
            (round((s.at - since) * 1e3), round(s.latency * 1e3))
            for s in window
            if s.status in (200, 204) and s.latency * 1e3 >= TMAX_MS
        ],
        no_answer=dict(Counter(s.error for s in window if s.error)),
    )


@dataclass
class Consistency:
    answered_bids: int
    missing_from_analytics: int
    win_notices: int  # won bids whose win notice was answered 200
    unsettled_notices: int  # win notices never answered 200 (goal 0)
    win_events: int  # rows after FINAL
    wins_missing_from_analytics: int  # won bids without a win event
    duplicate_win_events: int  # rows after FINAL minus distinct event ids
    wins_not_in_ledger: int
    ledger_wins: int
    cap_mismatches: int  # (user, campaign) pairs whose day counter != won bids


@dataclass
class Run:
    rate: float
    freeze_s: float
    kill_s: float
    faults: list[FaultResult]
    consistency: Consistency
    machine: str
    wall_s: float


Progress = Callable[[str], object]


async def run_plan(
    workdir: pathlib.Path,
    *,
    rate: float,
    freeze_s: float,
    kill_s: float,
    steady_s: float,
    recovery_limit_s: float,
    backends: tuple[str, ...] = BACKENDS,
    server_kill: bool = True,
    progress: Progress = print,
) -> Run:
    began = time.monotonic()
    rig = Rig(workdir / "data")
    # The load generator's own pauses count as latency (open loop): what a
    # caller (a test run before this one) left on the heap would make each
    # full collection a ~100 ms stall of every request in flight, so it is
    # moved out of the collector's sight for the run.
    gc.collect()
    gc.freeze()
    try:
        rig.start_server()
        if await wait_ready(rig.base_url, time.monotonic() + 90) is None:
            raise RuntimeError(f"the server did not become ready; see {rig.log_path}")
        await seed_campaigns(rig.grpc_port)
        # the demo's start-up work (profiles applied, members' tiers written
        # to their profiles...) done first: the faults are measured from a
        # steady state
        assert rig.server is not None
        await settled(rig.server.pid)
        load = Load(rig.base_url, rate)
        await load.start()
        loaded = time.monotonic()
        await asyncio.sleep(max(steady_s, 2.0))
        # the first second warms connections and caches: not part of "no fault"
        faults = [summarize("no fault", load.samples, loaded + 1.0, time.monotonic())]

        async def one(name: str, inject: Callable[[], None], restore: Callable[[], None],
                      hold: float) -> None:  # fmt: skip
            progress(f"fault: {name} for {hold:g} s")
            since = time.monotonic()
            await asyncio.to_thread(inject)
            stop = asyncio.Event()
            watching = asyncio.create_task(watch_ready(rig.base_url, stop))
            await asyncio.sleep(hold)
            stop.set()
            said = await watching
            await asyncio.to_thread(restore)
            until = time.monotonic()
            recovery = await wait_ready(rig.base_url, until + recovery_limit_s)
            result = summarize(name, load.samples, since, until)
            result.recovery_s = recovery
            result.ready_said = "; ".join(f"{answer} x{n}" for answer, n in said.most_common())
            faults.append(result)
            progress(
                f"  {result.requests} requests: {result.on_time:.1%} on time, "
                f"{result.bid_share:.1%} with a bid, p99 {result.p99_ms:.1f} ms, "
                f"errors {result.errors}, ready again after "
                f"{'-' if recovery is None else f'{recovery:.2f} s'}"
            )
            await asyncio.sleep(steady_s)

        for backend in backends:
            await one(
                f"{backend} frozen",
                lambda b=backend: rig.freeze(b),  # type: ignore[misc]
                lambda b=backend: rig.thaw(b),  # type: ignore[misc]
                freeze_s,
            )
            await one(
                f"{backend} killed",
                lambda b=backend: rig.kill(b),  # type: ignore[misc]
                lambda b=backend: rig.restart(b),  # type: ignore[misc]
                kill_s,
            )
        if server_kill:
            await one("server killed (SIGKILL)", rig.kill_server, rig.start_server, 0.5)
        await load.stop(notice_grace=30.0)
        progress("stopping the server (its journal is delivered on the way out)")
        code = await asyncio.to_thread(rig.stop_server)
        if code not in (0, None):
            raise RuntimeError(f"the server exited with {code}; see {rig.log_path}")
        consistency = await check_consistency(rig, load)
        return Run(
            rate=rate,
            freeze_s=freeze_s,
            kill_s=kill_s,
            faults=faults,
            consistency=consistency,
            machine=f"{_cpu_model()}, {os.cpu_count()} vCPU, Python {platform.python_version()}",
            wall_s=time.monotonic() - began,
        )
    finally:
        gc.unfreeze()
        await asyncio.to_thread(rig.close)


async def check_consistency(rig: Rig, load: Load) -> Consistency:
    answered = {b for s in load.samples for b in s.bids}
    won = {bid: n for bid, n in load.notices.items() if n.done}
    store = await open_analytics_store(None, rig.data_dir)
    try:
        rows = await store.query(f"SELECT DISTINCT bid_id FROM {TABLE} WHERE event_type = 'bid'")
        stored = {str(r[0]) for r in rows}
        ((win_rows, win_ids),) = await store.query(
            f"SELECT count(), uniqExact(event_id) FROM {TABLE} FINAL WHERE event_type = 'win'"
        )
        rows = await store.query(f"SELECT DISTINCT bid_id FROM {TABLE} WHERE event_type = 'win'")
        win_bids = {str(r[0]) for r in rows}
    finally:
        await store.close()
    ledger = await ledger_wins(rig.postgres.url)
    caps_off = await _cap_mismatches(rig.redis.url, list(load.notices.values()))
    return Consistency(
        answered_bids=len(answered),
        missing_from_analytics=len(answered - stored),
        win_notices=len(won),
        unsettled_notices=len(load.notices) - len(won),
        win_events=int(win_rows),
        wins_missing_from_analytics=len(set(won) - win_bids),
        duplicate_win_events=int(win_rows) - int(win_ids),
        wins_not_in_ledger=len(set(won) - ledger),
        ledger_wins=len(ledger),
        cap_mismatches=caps_off,
    )


async def ledger_wins(url: str) -> set[str]:
    import asyncpg

    dsn = url.replace("postgresql+asyncpg://", "postgresql://")
    conn = await asyncpg.connect(dsn)
    try:
        rows = await conn.fetch("SELECT bid_id, count(*) AS n FROM delivery_events "
                                "WHERE type = 'WIN' GROUP BY bid_id")  # fmt: skip
    finally:
        await conn.close()
    if any(r["n"] != 1 for r in rows):
        raise AssertionError("a bid's win is in the ledger more than once")
    return {r["bid_id"] for r in rows}


async def _cap_mismatches(url: str, notices: list[Notice]) -> int:
    """(user, campaign) pairs whose day counters (today and yesterday, UTC)
    do not add up to their won bids (pairs with a notice never answered 200
    are left out: its impression may or may not be counted)."""
    import redis.asyncio as aioredis

    unsettled = {(n.token.user_id, n.token.campaign_id) for n in notices if not n.done}
    for n in notices:
        if not n.done:
            log.warning("win notice never answered 200: %d sends, last %s", n.sends, n.last)
    expected: Counter[tuple[str, str]] = Counter(
        (n.token.user_id, n.token.campaign_id)
        for n in notices
        if n.token.user_id and (n.token.user_id, n.token.campaign_id) not in unsettled
    )
    caps = FrequencyCaps(None)  # type: ignore[arg-type]  # only its key names
    now = time.time_ns() // 1000
    client = aioredis.Redis.from_url(url)
    off = 0
    try:
        for (user, campaign), count in expected.items():
            keys = {
                caps.day_key(user, campaign, now - days * 86_400_000_000, "UTC") for days in (0, 1)
            }
            values = await client.mget(list(keys))
            found = sum(int(v) for v in values if v is not None)
            if found != count:
                off += 1
                log.warning("caps of %s on %s: counted %d, won %d", user, campaign, found, count)
    finally:
        await client.aclose()
    return off


# --------------------------------------------------------------------------- the report


def report_lines(run: Run) -> list[str]:
    c = run.consistency
    lines = [
        f"Run of {dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC on {run.machine}; "
        f"{run.rate:g} bids/s offered (tmax {TMAX_MS} ms), freeze {run.freeze_s:g} s, "
        f"kill {run.kill_s:g} s; {run.wall_s:.0f} s in all.",
        "",
        "| fault | requests | answered on time | with a bid | p50 ms | p99 ms | errors "
        "| /ready during the fault | ready again after |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for f in run.faults:
        if f.fault == "no fault":
            recovery = "-"
        elif f.recovery_s is None:
            recovery = "not within the limit"
        else:
            recovery = f"{f.recovery_s:.2f} s"
        lines.append(
            f"| {f.fault} | {f.requests} | {f.on_time:.1%} | {f.bid_share:.1%} | "
            f"{f.p50_ms:.2f} | {f.p99_ms:.2f} | {f.errors} | {f.ready_said or '-'} | {recovery} |"
        )
    lines += [
        "",
        f"Answered bids: {c.answered_bids}; missing from analytics: "
        f"**{c.missing_from_analytics}**. Won bids (win notice answered 200): {c.win_notices}, "
        f"never answered 200: **{c.unsettled_notices}**; "
        f"win events after FINAL: {c.win_events}, duplicated: **{c.duplicate_win_events}**, "
        f"won bids without one: **{c.wins_missing_from_analytics}**; "
        f"won bids not in the spend ledger: **{c.wins_not_in_ledger}** (ledger wins "
        f"{c.ledger_wins}, none twice); (user, campaign) pairs whose cap count differs from "
        f"their won bids: **{c.cap_mismatches}**.",
    ]
    return lines


def read_run(path: pathlib.Path) -> Run:
    """A run written by `--json`."""
    raw = json.loads(path.read_text())
    faults = [
        FaultResult(**{
            **f,
            "outcome_counts": {int(k): v for k, v in f["outcome_counts"].items()},
            "late": [tuple(pair) for pair in f["late"]],
        })
        for f in raw.pop("faults")
    ]  # fmt: skip
    return Run(**{**raw, "faults": faults, "consistency": Consistency(**raw["consistency"])})


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rate", type=float, default=200.0, help="bids per second offered")
    parser.add_argument("--freeze", type=float, default=10.0, help="seconds each freeze lasts")
    parser.add_argument("--kill", type=float, default=15.0, help="seconds each backend stays dead")
    parser.add_argument("--steady", type=float, default=5.0, help="seconds between faults")
    parser.add_argument(
        "--recovery-limit", type=float, default=60.0, help="seconds each recovery may take"
    )
    parser.add_argument("--no-report", action="store_true", help="print only")
    parser.add_argument(
        "--json", type=pathlib.Path, help="also write the run's figures to this file, as JSON"
    )
    args = parser.parse_args()
    workdir = pathlib.Path(tempfile.mkdtemp(prefix="cx-faults-"))
    try:
        run = asyncio.run(
            run_plan(
                workdir,
                rate=args.rate,
                freeze_s=args.freeze,
                kill_s=args.kill,
                steady_s=args.steady,
                recovery_limit_s=args.recovery_limit,
            )
        )
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    lines = report_lines(run)
    print("\n".join(lines))
    if args.json is not None:
        args.json.write_text(json.dumps(dataclasses.asdict(run)))
    if not args.no_report:
        raw = REPORT.with_name("faults.last-run.md")
        raw.write_text("\n".join(lines) + "\n")
        print(f"wrote {raw} ({REPORT.name} is written by hand from such runs)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
