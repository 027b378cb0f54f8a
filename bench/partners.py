"""Demand-partner fan-out figures: what forwarding bid requests to DSPs costs
the bid path.

`serve --demo` (embedded backends) pinned to core 0; this process on core 1
sends open-loop REST `/v1/bid` requests (bench.openrtb_samples' realistic
mix, tmax TMAX_MS) at RATE per second, first with no partner (the internal
path alone), then with two fake DSP partners (tests/fake_dsp.py, in a
process of their own) that answer each request after a uniform 20-80 ms with a bid. For
each phase: bid latency p50/p99 from the scheduled send time, the share
answered within tmax, the share won by a partner, the server's CPU per
request; for each partner its latency percentiles as the server measured
them (its report).

    python -m bench.partners            # bench/reports/partners.md
    python -m bench.partners --seconds 5 --no-report
"""

from __future__ import annotations

import argparse
import asyncio
import pathlib
import random
import shutil
import subprocess
import sys
import tempfile
import time
from typing import Any

import aiohttp
import orjson

from bench.bidding import TCF_CONSENT, ZipfUsers
from bench.faults import settled
from bench.ingest import Server
from bench.openloop import run_open_loop
from bench.openrtb_samples import realistic_request
from bench.platform_calls import BENCH_KEY, _cpu_model, _cpu_seconds
from tests.fake_dsp import FakeDsp

REPORT = pathlib.Path(__file__).parent / "reports" / "partners.md"
TMAX_MS = 120
PARTNERS = "tenants/demo/demandPartners"


class Load:
    def __init__(self, http: aiohttp.ClientSession, base_url: str) -> None:
        self._http = http
        self._url = f"{base_url}/v1/bid"
        rng = random.Random(5)
        users = ZipfUsers(seed=5)
        self._bodies = []
        for uid in users.draw(2_000):
            request = realistic_request(rng, user_id=uid)
            request["user"]["consent"] = TCF_CONSENT
            request["tmax"] = TMAX_MS
            self._bodies.append(orjson.dumps(request))
        self._n = 0
        self.answered = 0
        self.bids = 0
        self.partner_bids = 0

    async def one(self) -> None:
        body = self._bodies[self._n % len(self._bodies)]
        self._n += 1
        async with self._http.post(self._url, data=body) as reply:
            raw = await reply.read()
            if reply.status not in (200, 204):
                raise RuntimeError(f"HTTP {reply.status}")
        self.answered += 1
        if reply.status == 200:
            self.bids += 1
            seats = {s["seat"] for s in orjson.loads(raw)["seatbid"]}
            if seats - {"campaign-express"}:
                self.partner_bids += 1


async def phase(
    name: str, http: aiohttp.ClientSession, server: Server, rate: float, seconds: float
) -> dict[str, Any]:
    load = Load(http, server.base_url)
    await run_open_loop(load.one, rate, 2.0)  # warm-up, not counted
    load = Load(http, server.base_url)
    cpu = _cpu_seconds(server.pid)
    result = await run_open_loop(load.one, rate, seconds)
    cpu = _cpu_seconds(server.pid) - cpu
    on_time = sum(1 for latency in result.latencies if latency * 1e3 < TMAX_MS)
    n = max(1, len(result.latencies))
    row = {
        "phase": name, "rate": result.achieved, "p50": result.percentile(50) * 1e3,
        "p99": result.percentile(99) * 1e3, "on_time": on_time / n, "errors": result.errors,
        "bid_share": load.bids / n, "partner_share": load.partner_bids / n,
        "cpu_us": cpu / n * 1e6,
    }  # fmt: skip
    print(
        f"{name}: {row['rate']:.0f}/s, p50 {row['p50']:.1f} ms, p99 {row['p99']:.1f} ms, "
        f"{row['on_time']:.1%} within tmax, {row['partner_share']:.1%} won by a partner, "
        f"{row['cpu_us']:.0f} us server CPU/request, {row['errors']} errors"
    )
    return row


async def main_async(rate: float, seconds: float) -> tuple[list[dict[str, Any]], list[str]]:
    workdir = pathlib.Path(tempfile.mkdtemp(prefix="cx-partners-"))
    server = Server(workdir / "data", pin=True)
    # the fake DSPs in a process of their own: their serving does not hold up
    # this process's load (whose latency is measured from the scheduled time)
    platforms = ["dv360", "trade_desk"]
    dsps = subprocess.Popen(  # noqa: ASYNC220 - once, before the load
        [*(["taskset", "-c", "1"] if shutil.which("taskset") else []), sys.executable, "-m",
         "tests.fake_dsp", "20-80", *platforms],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert dsps.stdout is not None
    endpoints = (await asyncio.to_thread(dsps.stdout.readline)).split()
    fakes = [
        FakeDsp(p, url=e.removesuffix("/bid")) for p, e in zip(platforms, endpoints, strict=True)
    ]
    headers = {"Authorization": f"Bearer {BENCH_KEY}", "Content-Type": "application/json"}
    try:
        await server.start()
        await settled(server.pid)  # the demo's start-up work done first
        async with aiohttp.ClientSession(
            headers=headers, connector=aiohttp.TCPConnector(limit=1000)
        ) as http:
            rows = [await phase("internal only", http, server, rate, seconds)]
            for dsp in fakes:
                body = {
                    "displayName": dsp.platform, "platform": f"PLATFORM_{dsp.platform.upper()}",
                    "endpoint": dsp.endpoint, "credential": dsp.credential, "enabled": True,
                }  # fmt: skip
                partner_id = dsp.platform.replace("_", "-")
                async with http.post(
                    f"{server.base_url}/v1/{PARTNERS}?demandPartnerId={partner_id}", json=body
                ) as reply:
                    assert reply.status == 200, await reply.text()
            await asyncio.sleep(6)  # every worker has read them (5 s cache)
            rows.append(await phase("two partners, 20-80 ms", http, server, rate, seconds))
            lines = []
            for dsp in fakes:
                partner = dsp.platform.replace("_", "-")
                async with http.get(f"{server.base_url}/v1/{PARTNERS}/{partner}:report") as r:
                    got = await r.json()
                lines.append(
                    f"| {partner} | {got.get('requests', 0)} | {got.get('bidResponses', 0)} | "
                    f"{got.get('timeouts', 0)} | {got.get('errors', 0)} | "
                    f"{got.get('p50Ms', 0):.1f} | {got.get('p99Ms', 0):.1f} |"
                )
            return rows, lines
    finally:
        server.stop()
        dsps.terminate()
        dsps.wait()
        shutil.rmtree(workdir, ignore_errors=True)


def write_report(rows: list[dict[str, Any]], partners: list[str], seconds: float) -> None:
    lines = [
        "# Demand-partner fan-out",
        "",
        f"Machine: {_cpu_model()}; server pinned to one core, load and the fake DSPs' "
        "process on the other. "
        f"`python -m bench.partners` ({seconds:g} s a phase, open loop, REST `/v1/bid`, "
        f"realistic request mix, tmax {TMAX_MS} ms; written {time.strftime('%Y-%m-%d')}).",
        "",
        "| phase | rate /s | p50 ms | p99 ms | within tmax | with a bid | won by a partner "
        "| server CPU us/request | errors |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['phase']} | {r['rate']:.0f} | {r['p50']:.1f} | {r['p99']:.1f} | "
            f"{r['on_time']:.1%} | {r['bid_share']:.1%} | {r['partner_share']:.1%} | "
            f"{r['cpu_us']:.0f} | {r['errors']} |"
        )
    lines += [
        "",
        "Partners (as the server measured them):",
        "",
        "| partner | requests | bid responses | timeouts | errors | p50 ms | p99 ms |",
        "|---|---|---|---|---|---|---|",
        *partners,
        "",
    ]
    REPORT.write_text("\n".join(lines))
    print(f"wrote {REPORT}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rate", type=float, default=200.0, help="bid requests per second")
    parser.add_argument("--seconds", type=float, default=15.0, help="seconds a phase")
    parser.add_argument("--no-report", action="store_true", help="print only")
    args = parser.parse_args()
    rows, partners = asyncio.run(main_async(args.rate, args.seconds))
    print("\n".join(partners))
    if not args.no_report:
        write_report(rows, partners, args.seconds)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
