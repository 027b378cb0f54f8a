"""The fault tier: bench/faults.py's plan, shortened, with assertions.

Under steady bid load (80 bids/s, tmax 100 ms) a `serve` process on real
PostgreSQL, Redis and NATS servers of the test's own lives through each of
them frozen (SIGSTOP) and killed (SIGKILL, then started again; NATS with an
empty JetStream store), then its own SIGKILL and restart. Expected, per
backend (docs/operations.md, "When a backend fails"):

- PostgreSQL: bids do not touch it (API keys come from the authenticator's
  cache and its outage grace): every bid answered on time.
- Redis: profiles fall back to the default, campaigns whose caps fail closed
  sit out, those whose caps fail open bid on; every bid answered on time, each
  hot-store wait cut at its 20 ms budget.
- NATS: bids do not touch it; every bid answered on time.
- The server: requests during the restart fail (nothing listens); after it,
  every bid it had answered is in analytics (the journal replays).

After all of them: every won bid's win is in analytics once (the notices were
sent twice and retried until answered 200), in the spend ledger once, and in
its frequency-cap counter once.
"""

from __future__ import annotations

import os
import pathlib
import signal
import subprocess
import sys
from typing import Any

import pytest

from bench.faults import BACKENDS, TMAX_MS, read_run

pytestmark = [pytest.mark.backends, pytest.mark.faults]

RATE = 80.0
# Each fault held 3 s and 4 s between them (the no-fault phase: its last
# 3 s): ~240 requests a phase. With the 1 s and ~80 requests it had, one
# hiccup of this 2-core VM (two requests late) failed the 99% bound.
HOLD_SECONDS = 3.0
STEADY_SECONDS = 4.0
RECOVERY_LIMIT_SECONDS = 20.0
ROOT = pathlib.Path(__file__).resolve().parents[1]


def _run_plan(directory: pathlib.Path) -> tuple[Any, str]:
    """bench/faults.py's plan, in a process (and session) of its own: the
    load generator measures latency from each request's scheduled time, so
    it must not share a process (and its interpreter lock) with whatever
    earlier tests left running in this one."""
    directory.mkdir(parents=True, exist_ok=True)
    figures = directory / "run.json"
    argv = [
        sys.executable, "-m", "bench.faults", "--no-report", "--json", str(figures),
        "--rate", str(RATE), "--freeze", str(HOLD_SECONDS), "--kill", str(HOLD_SECONDS),
        "--steady", str(STEADY_SECONDS), "--recovery-limit", str(RECOVERY_LIMIT_SECONDS),
    ]  # fmt: skip
    # in a session of its own: a timeout ends it with the servers it started
    plan = subprocess.Popen(
        argv, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        start_new_session=True,
    )  # fmt: skip
    try:
        out, err = plan.communicate(timeout=400)
    except subprocess.TimeoutExpired:
        os.killpg(plan.pid, signal.SIGKILL)
        out, err = plan.communicate()
    log = out + err[-4000:]
    assert plan.returncode == 0, log
    return read_run(figures), log


def _check_behaviour(run: Any, log: str) -> None:
    """What must hold on every run, however busy the machine: no error, every
    phase measured, recovery, bidding going on, and every count exact."""
    by_fault = {f.fault: f for f in run.faults}
    steady = by_fault["no fault"]
    assert steady.bid_share > 0.5, (steady, log)
    for backend in BACKENDS:
        for how in ("frozen", "killed"):
            fault = by_fault[f"{backend} {how}"]
            assert fault.requests >= RATE * HOLD_SECONDS * 0.8, log
            assert fault.errors == 0, (fault, log)
            assert fault.recovery_s is not None, (fault, log)
            # bidding goes on: Redis takes the capped fail-closed campaigns
            # out, nothing else changes what is bid
            assert fault.bid_share >= 0.5 * steady.bid_share, (fault, log)
    killed = by_fault["server killed (SIGKILL)"]
    assert killed.recovery_s is not None, log
    c = run.consistency
    assert c.answered_bids > 1_000, c
    assert c.missing_from_analytics == 0, c
    assert c.win_notices > 200, c
    assert c.unsettled_notices == 0, c
    assert c.duplicate_win_events == 0, c
    assert c.wins_missing_from_analytics == 0, c
    assert c.wins_not_in_ledger == 0, c
    assert c.cap_mismatches == 0, c


def _timing_problems(run: Any) -> list[str]:
    """The latency bounds a run missed. Answered on time despite each fault
    (a noisy 2-core machine may push a few bids past tmax: 97%, not 100%),
    the few late ones only just late (a bid waiting on the failed backend
    would take its timeout: seconds), and the restart within its limit."""
    by_fault = {f.fault: f for f in run.faults}
    problems = []
    steady = by_fault["no fault"]
    if steady.on_time < 0.99:
        problems.append(f"no fault: {steady.on_time:.1%} on time")
    for backend in BACKENDS:
        for how in ("frozen", "killed"):
            fault = by_fault[f"{backend} {how}"]
            if fault.on_time < 0.97 or fault.p99_ms >= 1.5 * TMAX_MS:
                problems.append(f"{fault.fault}: {fault.on_time:.1%} on time, "
                                f"p99 {fault.p99_ms:.0f} ms")  # fmt: skip
    killed = by_fault["server killed (SIGKILL)"]
    if killed.recovery_s is not None and killed.recovery_s >= RECOVERY_LIMIT_SECONDS:
        problems.append(f"restart ready after {killed.recovery_s:.1f} s")
    return problems


@pytest.mark.timeout(900)
def test_bids_notices_and_events_live_through_every_backend_fault(
    tmp_path: pathlib.Path,
) -> None:
    run, log = _run_plan(tmp_path / "first")
    _check_behaviour(run, log)
    late = _timing_problems(run)
    if late:
        # Latency on this shared 2-core machine is noisy under the full
        # suite: a run that misses a latency bound (and nothing else) is run
        # again, and the second must meet every bound. A real slowdown fails
        # both; what must never happen (errors, lost or doubled events)
        # fails the first.
        run, log = _run_plan(tmp_path / "again")
        _check_behaviour(run, log)
        assert not _timing_problems(run), (late, _timing_problems(run), log)
