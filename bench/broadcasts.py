"""Broadcasts to a large segment on one node: a `serve --demo` process pinned
to core 0 (embedded SQLite, chDB, in-process bus), the webhook receiver
and this process on core 1.

The segment's members are written straight into the management database
before the broadcast (ingesting them through the API is the audience
bench's subject). The broadcast (at its highest pace) hands pages of 500
members to the page handlers, which queue one message each (messaging's
outbox); messaging's sender then renders each and posts it, signed, to
the receiver. Reported: how fast members are queued (fan-out), how fast
messages arrive (delivery), the server's CPU, and, with a kill -9 of the
server half-way and a restart on the same data dir, that every member
got exactly one message.

    python -m bench.broadcasts                       # bench/reports/broadcasts.md
    python -m bench.broadcasts --members 1000000 --kill-members 0 \
        --report bench/reports/broadcasts-1m.md
    python -m bench.broadcasts --members 20000 --kill-members 5000 --no-report
"""

from __future__ import annotations

import argparse
import asyncio
import os
import pathlib
import shutil
import sqlite3
import tempfile
import time
from collections import Counter
from typing import Any

import aiohttp
import orjson
from aiohttp import web

from bench.ingest import Server
from bench.messaging import HEADERS, SECRET, _post, _quiet, _ready
from bench.platform_calls import _cpu_model, _cpu_seconds

REPORT = pathlib.Path(__file__).parent / "reports" / "broadcasts.md"
TENANT = "demo"


class Receiver:
    """The webhook provider: how many messages came for each member."""

    def __init__(self) -> None:
        self.count: Counter[str] = Counter()
        self.url = ""
        self._runner: web.AppRunner | None = None

    async def start(self) -> None:
        async def hook(request: web.Request) -> web.Response:
            self.count[orjson.loads(await request.read())["p"]] += 1
            return web.Response(status=204)

        application = web.Application()
        application.add_routes([web.post("/hook", hook)])
        self._runner = web.AppRunner(application, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.url = f"http://127.0.0.1:{port}/hook"

    @property
    def arrived(self) -> int:
        return sum(self.count.values())

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()


def add_members(data_dir: pathlib.Path, segment_id: str, prefix: str, count: int) -> None:
    """`count` profiles, all members of the segment (the server is stopped)."""
    now = int(time.time() * 1e6)
    db = sqlite3.connect(data_dir / "campaign-express.db")
    try:
        with db:
            db.executemany(
                "INSERT INTO audience_profiles (id, tenant_id, traits, event_count, "
                "first_seen_time, last_seen_time, merged_into, version, create_time, "
                "update_time, consent) VALUES (?, ?, ?, 0, ?, ?, NULL, 1, ?, ?, '{}')",
                ((f"{prefix}{n:08d}", TENANT, '{"bench": "' + prefix + '"}', now, now, now, now)
                 for n in range(count)),
            )  # fmt: skip
            db.executemany(
                "INSERT INTO audience_segment_members (segment_id, profile_id, tenant_id, "
                "enter_time) VALUES (?, ?, ?, ?)",
                ((segment_id, f"{prefix}{n:08d}", TENANT, now) for n in range(count)),
            )
            db.execute("UPDATE audience_segments SET size = ? WHERE id = ?", (count, segment_id))
    finally:
        db.close()


async def get(http: aiohttp.ClientSession, url: str) -> Any:
    async with http.get(url, headers=HEADERS) as reply:
        return await reply.json()


async def prepare(
    http: aiohttp.ClientSession, server: Server, receiver: Receiver, prefix: str
) -> tuple[str, str]:
    """A webhook provider, a template, a segment (empty yet): their names."""
    api = f"{server.base_url}/v1/tenants/{TENANT}"
    await _ready(http, api)
    await _quiet(server)
    await _post(http, f"{api}/channelProviders", {
        "displayName": "bench hook", "kind": "PROVIDER_KIND_WEBHOOK",
        "config": {"url": receiver.url, "secret": SECRET}})  # fmt: skip
    made = await _post(http, f"{api}/templates", {
        "displayName": "sale", "channel": "MESSAGE_CHANNEL_WEBHOOK",
        "contents": {"en": {"subject": "s", "text": '{"p": "{{ profile.id }}"}'}}})  # fmt: skip
    segment = await _post(http, f"{api}/segments", {
        "displayName": f"bench {prefix}", "description": "",
        "condition": {"trait": {"trait": "bench", "comparison": "COMPARISON_EQUALS",
                                "value": prefix}}})  # fmt: skip
    return made["template"]["name"], segment["segment"]["name"]


async def run_broadcast(
    http: aiohttp.ClientSession,
    server: Server,
    receiver: Receiver,
    template: str,
    segment: str,
    members: int,
    kill_at: int = 0,
) -> dict[str, Any]:
    """Broadcast to the segment; with `kill_at`, kill -9 the server once that
    many messages arrived and start it again."""
    api = f"{server.base_url}/v1/tenants/{TENANT}"
    made = await _post(http, f"{api}/broadcasts", {
        "displayName": "bench", "segment": segment, "template": template,
        "perMinute": 1_000_000})  # fmt: skip
    name = made["broadcast"]["name"]
    start = time.perf_counter()
    cpu = _cpu_seconds(server.pid)
    queued_at = 0.0
    killed = False
    restart_seconds = 0.0
    deadline = start + 3600
    shown = start
    while receiver.arrived < members and time.perf_counter() < deadline:
        await asyncio.sleep(0.2)
        if time.perf_counter() - shown >= 60:
            shown = time.perf_counter()
            print(f"  {shown - start:.0f} s: {receiver.arrived:,} of {members:,} arrived",
                  flush=True)  # fmt: skip
        if kill_at and not killed and receiver.arrived >= kill_at:
            server.kill()
            killed = True
            began = time.perf_counter()
            await server.start()
            restart_seconds = time.perf_counter() - began
            continue
        if not queued_at:
            body = await get(http, f"{server.base_url}/v1/{name}")
            if int(body["broadcast"]["progress"].get("done", 0)) >= members:
                queued_at = time.perf_counter() - start
    total = time.perf_counter() - start
    await asyncio.sleep(2.0)  # anything sent twice arrives meanwhile
    cpu = _cpu_seconds(server.pid) - cpu  # (not meant for a run with a kill)
    body = await get(http, f"{server.base_url}/v1/{name}")
    twice = sum(n - 1 for n in receiver.count.values() if n > 1)
    return {
        "queued_s": queued_at or total,
        "total_s": total,
        "arrived": len(receiver.count),
        "twice": twice,
        "state": body["broadcast"]["state"],
        "cpu": cpu / total,
        "restart_s": restart_seconds,
    }


async def measure(members: int, kill_members: int, pin: bool) -> list[str]:
    workdir = pathlib.Path(tempfile.mkdtemp(prefix="cx-bench-broadcasts-"))
    receiver = Receiver()
    await receiver.start()
    server = Server(workdir / "data", pin=pin)
    lines = [
        "# Broadcasts",
        "",
        f"Machine: {_cpu_model()}, {os.cpu_count()} CPUs; `serve --demo` (embedded SQLite, "
        "chDB, in-process bus) pinned to core 0; the webhook receiver and the benchmark on "
        "core 1. The segment's members written into the database first; the broadcast at "
        "its highest pace (1,000,000 a minute: pages of 500); each member one webhook "
        "message (Liquid render, rules, HMAC-signed POST). `python -m bench.broadcasts`.",
        "",
        "| members | all queued in | queued/s | all delivered in | delivered/min | "
        "exactly once | serve CPU |",
        "|---|---|---|---|---|---|---|",
    ]
    try:
        await server.start()
        async with aiohttp.ClientSession() as http:
            template, segment = await prepare(http, server, receiver, "big")
            crash_template, crash_segment = template, ""
            if kill_members:
                _, crash_segment = await prepare_segment(http, server, "crash")
            server.stop()
            add_members(server.data_dir, segment.rsplit("/", 1)[1], "big", members)
            if kill_members:
                add_members(server.data_dir, crash_segment.rsplit("/", 1)[1], "crash",
                            kill_members)  # fmt: skip
            await server.start()
            await _quiet(server)
            print(f"broadcasting to {members:,} members", flush=True)
            out = await run_broadcast(http, server, receiver, template, segment, members)
            once = "yes" if out["arrived"] == members and not out["twice"] else (
                f"no: {out['arrived']:,} arrived, {out['twice']:,} twice")  # fmt: skip
            lines.append(
                f"| {members:,} | {out['queued_s']:.1f} s | {members / out['queued_s']:,.0f} | "
                f"{out['total_s']:.1f} s | {members / out['total_s'] * 60:,.0f} | {once} | "
                f"{out['cpu']:.0%} |"
            )
            print(lines[-1], flush=True)
            if kill_members:
                receiver.count.clear()
                print(f"broadcasting to {kill_members:,}, kill -9 half-way", flush=True)
                out = await run_broadcast(
                    http, server, receiver, crash_template, crash_segment, kill_members,
                    kill_members // 2,
                )  # fmt: skip
                lines += [
                    "",
                    f"kill -9 half-way: {kill_members:,} members; the server killed once "
                    f"{kill_members // 2:,} messages had arrived and started again on the "
                    f"same data dir ({out['restart_s']:.1f} s to healthy); the broadcast "
                    f"went on from its cursor and ended {out['state']} in "
                    f"{out['total_s']:.1f} s: {out['arrived']:,} of {kill_members:,} members "
                    f"got a message, {out['twice']:,} got one twice.",
                ]
                print(lines[-1], flush=True)
    finally:
        server.stop()
        await receiver.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    return lines


async def prepare_segment(
    http: aiohttp.ClientSession, server: Server, prefix: str
) -> tuple[str, str]:
    api = f"{server.base_url}/v1/tenants/{TENANT}"
    segment = await _post(http, f"{api}/segments", {
        "displayName": f"bench {prefix}", "description": "",
        "condition": {"trait": {"trait": "bench", "comparison": "COMPARISON_EQUALS",
                                "value": prefix}}})  # fmt: skip
    return "", segment["segment"]["name"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--members", type=int, default=100_000)
    parser.add_argument("--kill-members", type=int, default=20_000)
    parser.add_argument("--no-pin", action="store_true")
    parser.add_argument("--no-report", action="store_true")
    parser.add_argument("--report", type=pathlib.Path, default=REPORT)
    args = parser.parse_args()
    pin = not args.no_pin and (os.cpu_count() or 1) > 1
    if pin:
        os.sched_setaffinity(0, {1})
    lines = asyncio.run(measure(args.members, args.kill_members, pin))
    print("\n".join(lines))
    if not args.no_report:
        args.report.write_text("\n".join(lines).rstrip() + "\n")
        print(f"wrote {args.report}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
