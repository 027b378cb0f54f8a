"""Messaging throughput and latency, end to end: a `serve` process (pinned
to one core) takes messages over REST (BatchSendMessages, 50 a call: a
Liquid template with 20 variables and a loop, to bare addresses), and its
sender renders them, applies the rules (suppression, consent, caps, quiet
hours) and hands them to a local provider in this process: a webhook
receiver (signed HTTP POST). Each message's latency runs from its send
request's scheduled time (open loop) to its arrival at the provider; the
server's CPU is read from /proc. Also the render time of that template
alone, in this process.

    python -m bench.messaging                  # bench/reports/messaging.md
    python -m bench.messaging --rates 200,500 --seconds 5 --no-report
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import os
import pathlib
import shutil
import tempfile
import time
from typing import Any

import aiohttp
from aiohttp import web

from bench.ingest import Server
from bench.openloop import run_open_loop
from bench.platform_calls import BENCH_KEY, _cpu_model, _cpu_seconds
from services.messaging import rendering

REPORT = pathlib.Path(__file__).parent / "reports" / "messaging.md"
HEADERS = {"Authorization": f"Bearer {BENCH_KEY}"}
#: Messages per BatchSendMessages call (the offered rate is messages a second).
BATCH = 50
SECRET = "whsec_" + base64.b64encode(b"b" * 32).decode()
#: A typical email: 20 variables, a loop over the order's lines, filters.
HTML = (
    "<html><body><h1>Hi {{ profile.first_name | default: 'there' }},</h1>"
    "<p>Order {{ data.order_id }} of {{ data.date }} ships to {{ data.street }}, "
    "{{ data.city }} {{ data.zip }}, {{ data.country }}.</p><table>"
    "{% for line in data.lines %}<tr><td>{{ line.name }}</td><td>{{ line.qty }}</td>"
    "<td>{{ line.price | money: data.currency }}</td></tr>{% endfor %}</table>"
    "<p>Subtotal {{ data.subtotal | money: data.currency }}, shipping "
    "{{ data.shipping | money: data.currency }}, tax {{ data.tax | money: data.currency }}, "
    "total <b>{{ data.total | money: data.currency }}</b>.</p>"
    "<p>Carrier {{ data.carrier }}, tracking {{ data.tracking }}, ETA {{ data.eta }}.</p>"
    "<p>Questions? {{ data.support_email }} or {{ data.support_phone }}. Points earned: "
    "{{ data.points }} ({{ data.tier | upcase }}).</p>"
    '<a href="https://shop.example/orders/{{ data.order_id }}">Your order</a></body></html>'
)
TEXT = "Hi {{ profile.first_name | default: 'there' }}, order {{ data.order_id }} shipped."
DATA: dict[str, Any] = {
    "order_id": "A-1042", "date": "2026-12-06", "street": "Rua Augusta 10", "city": "Lisboa",
    "zip": "1100-053", "country": "PT", "currency": "EUR",
    "lines": [{"name": f"Item {n}", "qty": n % 3 + 1, "price": 9.5 + n} for n in range(5)],
    "subtotal": 72.5, "shipping": 4.9, "tax": 16.7, "total": 94.1, "carrier": "CTT",
    "tracking": "RR123456789PT", "eta": "2026-12-09", "support_email": "help@shop.example",
    "support_phone": "+351210000000", "points": 94, "tier": "gold",
}  # fmt: skip


def render_times(samples: int = 5_000) -> tuple[float, float]:
    """p50 and p99 (ms) of rendering the template's three parts."""
    content = {"subject": "Order {{ data.order_id }}", "html": HTML, "text": TEXT}
    variables = {"profile": {"first_name": "Ana"}, "data": DATA}
    times = []
    for _ in range(samples):
        started = time.perf_counter()
        rendering.render(content, variables, strict=False)
        times.append((time.perf_counter() - started) * 1000)
    times.sort()
    return times[len(times) // 2], times[int(len(times) * 0.99)]


class Receiver:
    """The webhook provider: when each message arrived."""

    def __init__(self) -> None:
        self.arrived: dict[str, float] = {}
        self.repeats = 0  # arrivals of a message that had arrived already
        self.url = ""
        self._runner: web.AppRunner | None = None

    async def start(self) -> None:
        async def hook(request: web.Request) -> web.Response:
            await request.read()
            message_id = request.headers["webhook-id"]
            self.repeats += message_id in self.arrived
            self.arrived.setdefault(message_id, time.perf_counter())
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


async def _post(http: aiohttp.ClientSession, url: str, body: Any) -> Any:
    async with http.post(url, json=body, headers=HEADERS) as reply:
        answer = await reply.json()
        if reply.status != 200:
            raise RuntimeError(f"{url}: {reply.status} {answer}")
        return answer


async def _ready(http: aiohttp.ClientSession, api: str) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        async with http.get(f"{api}/templates", headers=HEADERS) as reply:
            if reply.status == 200:
                return
        await asyncio.sleep(0.2)
    raise RuntimeError("the demo tenant never came up")


def _thread_cpu(pid: int) -> dict[str, float]:
    """CPU seconds of each of a process's threads, by thread name."""
    seconds: dict[str, float] = {}
    for task in pathlib.Path(f"/proc/{pid}/task").iterdir():
        try:
            name = (task / "comm").read_text().strip()
            used = int((task / "schedstat").read_text().split()[0]) / 1e9
        except (OSError, ValueError, IndexError):
            continue
        name = "main" if task.name == str(pid) else name.rstrip("0123456789_-") or name
        seconds[name] = seconds.get(name, 0.0) + used
    return seconds


async def _quiet(server: Server, limit: float = 180) -> None:
    """Until the server has finished its start-up work (the demo's seeding):
    under 10% of a core over a second."""
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        before = _cpu_seconds(server.pid)
        await asyncio.sleep(1)
        if _cpu_seconds(server.pid) - before < 0.1:
            return


async def _one_rate(
    http: aiohttp.ClientSession,
    api: str,
    template: str,
    receiver: Receiver,
    server: Server,
    rate: float,
    seconds: float,
) -> tuple[str, bool]:
    """(the report's line, whether every message arrived)."""
    scheduled: dict[str, float] = {}
    counter = iter(range(10**9))

    async def one() -> None:
        start = time.perf_counter()
        batch = [
            {"template": template, "recipient": {"email": f"b{next(counter)}@example.com"},
             "data": DATA, "transactional": True}
            for _ in range(BATCH)
        ]  # fmt: skip
        answer = await _post(http, f"{api}/messages:batchSend", {"messages": batch})
        for message in answer["messages"]:
            scheduled[message["name"].rsplit("/", 1)[1]] = start

    receiver.arrived.clear()
    receiver.repeats = 0
    threads_before = _thread_cpu(server.pid)
    cpu_before, wall_before = _cpu_seconds(server.pid), time.perf_counter()
    result = await run_open_loop(one, rate / BATCH, seconds, max_in_flight=200)
    deadline = time.perf_counter() + 30
    while len(set(scheduled) & set(receiver.arrived)) < len(scheduled):
        if time.perf_counter() > deadline:
            break
        await asyncio.sleep(0.05)
    wall = time.perf_counter() - wall_before
    cpu = (_cpu_seconds(server.pid) - cpu_before) / wall
    threads = _thread_cpu(server.pid)
    shares = sorted(((threads[n] - threads_before.get(n, 0.0)) / wall, n) for n in threads)
    print("  server threads:", ", ".join(f"{n} {s:.0%}" for s, n in reversed(shares[-6:])))
    arrived = [i for i in scheduled if i in receiver.arrived]
    latencies = sorted((receiver.arrived[i] - scheduled[i]) * 1000 for i in arrived)
    first = min(scheduled.values(), default=0.0)
    last = max((receiver.arrived[i] for i in arrived), default=first)
    rate_out = len(arrived) / (last - first) if last > first else 0.0

    def p(q: float) -> float:
        return latencies[min(len(latencies) - 1, int(q * len(latencies)))] if latencies else 0.0

    refused = f" ({result.errors} refused)" if result.errors else ""
    line = (
        f"| {rate:,.0f} | {rate_out:,.0f} | {len(arrived):,}/{len(scheduled):,}{refused} | "
        f"{receiver.repeats} | {p(0.5):.1f} ms | {p(0.99):.1f} ms | {cpu:.0%} |"
    )
    return line, len(arrived) >= 0.99 * max(1, len(scheduled)) and not result.errors


async def measure(rates: list[float], seconds: float, pin: bool, profile: str = "") -> list[str]:
    workdir = pathlib.Path(tempfile.mkdtemp(prefix="cx-bench-messaging-"))
    receiver = Receiver()
    await receiver.start()
    server = Server(workdir / "data", pin=pin, profile=profile)
    p50, p99 = render_times()
    lines = [
        "# Messaging",
        "",
        f"Machine: {_cpu_model()}, {os.cpu_count()} CPUs; the server pinned to one core "
        f"({'taskset -c 0' if pin else 'not pinned'}), embedded SQLite, chDB and hot store; "
        "the client and the webhook receiver in the benchmark's process"
        f"{' on the other cores' if pin else ''}. "
        "`python -m bench.messaging`.",
        "",
        f"Render of a typical email (20 variables, a loop over 5 lines, money filters; "
        f"subject, HTML and text): p50 {p50:.3f} ms, p99 {p99:.3f} ms.",
        "",
        "| offered/s | sent/s | delivered | twice | p50 send -> provider | p99 | server CPU |",
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
                "displayName": "order shipped", "channel": "MESSAGE_CHANNEL_WEBHOOK",
                "contents": {"en": {"subject": "Order {{ data.order_id }}", "html": HTML,
                                    "text": TEXT}}})  # fmt: skip
            template = made["template"]["name"]
            for rate in rates:
                line, complete = await _one_rate(
                    http, api, template, receiver, server, rate, seconds
                )
                lines.append(line)
                print(line, flush=True)
                if not complete:
                    break  # past what it can carry
    finally:
        server.stop()
        await receiver.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    lines += [
        "",
        f"Messages are accepted over REST {BATCH} at a time (BatchSendMessages: stored in the "
        "outbox, answered QUEUED), each taken "
        "by the sender a batch at a time, rendered, checked against suppression, consent, "
        "frequency caps and quiet hours, and POSTed to the receiver, signed "
        "(Standard Webhooks); its outcome is recorded 32 at a time and its lifecycle events "
        "journaled to the analytics store. `sent/s` is messages delivered per second from "
        "the first send request to the last arrival.",
    ]
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rates", default="500,1000,2000,3000")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--no-pin", action="store_true")
    parser.add_argument("--no-report", action="store_true")
    parser.add_argument("--cprofile", default="", help="run the server under cProfile into FILE")
    args = parser.parse_args()
    rates = [float(r) for r in args.rates.split(",")]
    if not args.no_pin and (os.cpu_count() or 1) > 1:  # the load off the server's core
        os.sched_setaffinity(0, set(range(1, os.cpu_count() or 2)))
    lines = asyncio.run(measure(rates, args.seconds, pin=not args.no_pin, profile=args.cprofile))
    print("\n".join(lines))
    if not args.no_report:
        REPORT.write_text("\n".join(lines).rstrip() + "\n")
        print(f"wrote {REPORT}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
