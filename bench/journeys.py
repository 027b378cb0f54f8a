"""Journeys on the embedded engine, on a 2-core machine laid out as one
would run it: a `serve --demo` process pinned to core 0, its Temporal dev
server (a child process) moved to core 1, and, in this process on core 1
too, the load and a webhook receiver.

- Trigger -> first action: people enter a journey whose first step sends a
  webhook (EnterJourney over REST at a fixed rate, open loop); each entry's
  latency runs from its request to the webhook's arrival.
- Timer lateness: a journey that waits 2 s, then sends; lateness is the
  arrival minus (the entry's answer + 2 s).

CPU is reported for the serving process and for the Temporal server.

    python -m bench.journeys                  # bench/reports/journeys.md
    python -m bench.journeys --rates 10,20 --seconds 5 --no-report
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import pathlib
import shutil
import tempfile
import time

import aiohttp
import orjson
from aiohttp import web

from bench.ingest import Server
from bench.messaging import SECRET, _post, _quiet, _ready
from bench.openloop import run_open_loop
from bench.platform_calls import _cpu_model, _cpu_seconds

REPORT = pathlib.Path(__file__).parent / "reports" / "journeys.md"
WAIT_SECONDS = 2.0
PEOPLE = 200  # the demo's people (demo-user-0000..0199)


class Receiver:
    """The webhook provider: when each entry's message arrived (the entry's
    number is the webhook's body)."""

    def __init__(self) -> None:
        self.arrived: dict[str, float] = {}
        self.url = ""
        self._runner: web.AppRunner | None = None

    async def start(self) -> None:
        async def hook(request: web.Request) -> web.Response:
            body = orjson.loads(await request.read())
            self.arrived.setdefault(str(body["entry"]), time.perf_counter())
            return web.Response(status=204)

        application = web.Application()
        application.add_routes([web.post("/hook", hook)])
        self._runner = web.AppRunner(application, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.url = f"http://127.0.0.1:{port}/hook"

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()


def _temporal_pid(server_pid: int) -> int | None:
    """The Temporal dev server among the serving process's children."""
    for task in pathlib.Path(f"/proc/{server_pid}/task").iterdir():
        try:
            children = (task / "children").read_text().split()
        except OSError:
            continue
        for child in children:
            try:
                if b"temporal" in pathlib.Path(f"/proc/{child}/cmdline").read_bytes():
                    return int(child)
            except OSError:
                continue
    return None


def _pin(pid: int, core: int) -> None:
    """Every thread of a process (Go runs several) onto one core."""
    for task in os.listdir(f"/proc/{pid}/task"):
        with contextlib.suppress(OSError):
            os.sched_setaffinity(int(task), {core})


def _p(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


async def _phase(
    http: aiohttp.ClientSession,
    api: str,
    journey: str,
    receiver: Receiver,
    server: Server,
    rate: float,
    seconds: float,
    wait: float,
    pin_temporal: bool,
) -> tuple[str, bool]:
    started: dict[str, float] = {}
    answered: dict[str, float] = {}
    counter = iter(range(10**9))

    async def one() -> None:
        n = next(counter)
        key = f"{journey.rsplit('/', 1)[1]}-{rate}-{n}"
        started[key] = time.perf_counter()
        await _post(http, f"{api.rsplit('/tenants', 1)[0]}/{journey}:enter", {
            "userId": f"demo-user-{n % PEOPLE:04d}", "idempotencyKey": key,
            "data": {"entry": key}})  # fmt: skip
        answered[key] = time.perf_counter()

    receiver.arrived.clear()
    temporal = _temporal_pid(server.pid)
    if temporal and pin_temporal:
        _pin(temporal, 1)
    cpu = _cpu_seconds(server.pid)
    temporal_cpu = _cpu_seconds(temporal) if temporal else 0.0
    wall = time.perf_counter()
    result = await run_open_loop(one, rate, seconds, max_in_flight=500)
    deadline = time.perf_counter() + 60 + wait
    while len(set(started) & set(receiver.arrived)) < len(started):
        if time.perf_counter() > deadline:
            break
        await asyncio.sleep(0.05)
    wall = time.perf_counter() - wall
    cpu = (_cpu_seconds(server.pid) - cpu) / wall
    temporal_cpu = ((_cpu_seconds(temporal) - temporal_cpu) / wall) if temporal else 0.0
    arrived = [k for k in started if k in receiver.arrived]
    if wait:
        values = [(receiver.arrived[k] - answered[k] - wait) * 1000 for k in arrived
                  if k in answered]  # fmt: skip
    else:
        values = [(receiver.arrived[k] - started[k]) * 1000 for k in arrived]
    first = min(started.values(), default=0.0)
    last = max((receiver.arrived[k] for k in arrived), default=first)
    rate_out = len(arrived) / (last - first - wait) if last - first > wait else 0.0
    refused = f" ({result.errors} refused)" if result.errors else ""
    if os.environ.get("BENCH_DEBUG"):
        answers = [(answered[k] - started[k]) * 1000 for k in answered]
        print(f"answer p50 {_p(answers, 0.5):.0f} ms p99 {_p(answers, 0.99):.0f} ms")
    line = (
        f"| {rate:,.0f} | {rate_out:,.1f} | {len(arrived):,}/{len(started):,}{refused} | "
        f"{_p(values, 0.5):.0f} ms | {_p(values, 0.99):.0f} ms | {cpu:.0%} | {temporal_cpu:.0%} |"
    )
    complete = len(arrived) >= 0.99 * max(1, len(started)) and not result.errors
    return line, complete


async def measure(rates: list[float], seconds: float, pin: bool, timer_rate: float) -> list[str]:
    workdir = pathlib.Path(tempfile.mkdtemp(prefix="cx-bench-journeys-"))
    receiver = Receiver()
    await receiver.start()
    server = Server(workdir / "data", pin=pin)
    head = "| entries offered/s | completed/s | arrived | {} p50 | p99 | serve CPU | Temporal CPU |"
    lines = [
        "# Journeys",
        "",
        f"Machine: {_cpu_model()}, {os.cpu_count()} CPUs; "
        + (
            "`serve --demo` (embedded SQLite and chDB) pinned to core 0, its Temporal dev "
            "server (SQLite file) on core 1 with the load and the webhook receiver"
            if pin
            else "nothing pinned"
        )
        + ". `python -m bench.journeys`.",
        "",
        "Trigger -> first action (EnterJourney over REST -> the journey's first step, a "
        "webhook message, arrives):",
        "",
        head.format("entry -> webhook"),
        "|---|---|---|---|---|---|---|",
    ]
    try:
        await server.start()
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=500)) as http:
            api = f"{server.base_url}/v1/tenants/demo"
            await _ready(http, api)
            await _quiet(server)
            await _post(http, f"{api}/channelProviders", {
                "displayName": "bench hook", "kind": "PROVIDER_KIND_WEBHOOK",
                "config": {"url": receiver.url, "secret": SECRET}})  # fmt: skip
            made = await _post(http, f"{api}/templates", {
                "displayName": "step", "channel": "MESSAGE_CHANNEL_WEBHOOK",
                "contents": {"en": {"subject": "s",
                                    "text": '{"entry": "{{ data.entry }}"}'}}})  # fmt: skip
            template = made["template"]["name"]
            journeys = {}
            for label, nodes in (
                ("now", [{"id": "send", "send": {"template": template}}]),
                ("later", [{"id": "wait", "wait": {"duration": f"{WAIT_SECONDS:g}s"},
                            "next": "send"}, {"id": "send", "send": {"template": template}}]),
            ):  # fmt: skip
                made = await _post(http, f"{api}/journeys", {
                    "displayName": label, "trigger": {"api": {}},
                    "reentry": "REENTRY_POLICY_ALWAYS", "nodes": nodes})  # fmt: skip
                journeys[label] = made["journey"]["name"]
                await _post(http, f"{server.base_url}/v1/{journeys[label]}:publish", {})
            for rate in rates:
                line, complete = await _phase(
                    http, api, journeys["now"], receiver, server, rate, seconds, 0.0, pin
                )
                lines.append(line)
                print(line, flush=True)
                if not complete:
                    break
            lines += [
                "",
                f"Timer lateness (a {WAIT_SECONDS:g} s wait, then the webhook; lateness = "
                f"arrival - entry answered - {WAIT_SECONDS:g} s):",
                "",
                head.format("lateness"),
                "|---|---|---|---|---|---|---|",
            ]
            line, _ = await _phase(
                http,
                api,
                journeys["later"],
                receiver,
                server,
                timer_rate,
                seconds,
                WAIT_SECONDS,
                pin,
            )
            lines.append(line)
            print(line, flush=True)
    finally:
        server.stop()
        await receiver.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    lines += [
        "",
        "Each entry is a Temporal workflow (started by the REST call) whose steps run as "
        "local activities in the serving process: a state check, the send (messaging's "
        "outbox), the steps recorded; the message then goes through messaging's sender "
        "(rules, render, signed webhook). `completed/s` counts arrivals per second from "
        "the first entry. Where an entry's CPU goes (py-spy): SQL through SQLAlchemy and "
        "aiosqlite ~35%, the REST call ~10%, Temporal's worker ~15%, the sender ~10%.",
    ]
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rates", default="2,5,10,20,40")
    parser.add_argument("--timer-rate", type=float, default=5.0)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--no-pin", action="store_true")
    parser.add_argument("--no-report", action="store_true")
    args = parser.parse_args()
    rates = [float(r) for r in args.rates.split(",")]
    if not args.no_pin and (os.cpu_count() or 1) > 1:
        os.sched_setaffinity(0, {1})
    lines = asyncio.run(measure(rates, args.seconds, not args.no_pin, args.timer_rate))
    print("\n".join(lines))
    if not args.no_report:
        REPORT.write_text("\n".join(lines).rstrip() + "\n")
        print(f"wrote {REPORT}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
