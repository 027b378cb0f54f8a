"""The real `campaign-express agents` command next to `campaign-express serve
--demo`, as subprocesses on real PostgreSQL, Redis and NATS JetStream.

The deployment is the one docs/bidding.md describes: every process has the
same DATABASE_URL, REDIS_URL and NATS_URL, and its own gRPC and metrics ports.
One agents process has a data dir of its own, the other shares the
platform's: the embedded analytics store (chDB) and the analytics journal lock
their directories to one process, so an agents process claims a slot of its
own under `<data dir>/agents/` (services/host/serve.py, claim_agents_slot).
All of them get the same JWT secret (CAMPAIGN_EXPRESS_JWT_SECRET), which also
signs the notice URLs of bids: a bid made by an agent is settled by the
platform's gateway.

Requests are published with nats-py on JetStream (`campaign-bids.bid-requests`)
with the `reply-to` header naming a subject under `campaign-bids.`, which the
test subscribes to (a plain NATS reply inbox is not answered: see
gateway/agents.py). The bid request is the one tests/test_bid_agents.py uses: a
300x250 banner in the USA, which both demo campaigns (services/campaigns/demo.py)
serve at up to $4 CPM.
"""

from __future__ import annotations

import asyncio
import contextlib
import pathlib
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import nats
import orjson
import pytest

from gateway.agents import REQUEST_SUBJECT
from tests.test_bidding_e2e import bid_request
from tests.test_process import (
    JWT_SECRET,
    Proc,
    announced_key,
    base_env,
    free_port,
    metric_value,
    serve_args,
    serving,
)

pytestmark = pytest.mark.backends

AGENTS_READY = "Campaign Express bid agents: 2 consuming campaign-bids.bid-requests"
GRACE = 2  # --shutdown-grace-seconds of every process here
STOP_WITHIN = 5.0  # seconds an agents process may take to exit on SIGTERM
REPLY_WAIT = 15.0
# The processor's clock starts when it takes the request; 200 ms (the shared
# sample's tmax) is tight for a process that has just started on a loaded
# 2-core runner, and a late decision is a TMAX_EXCEEDED no-bid. This test is
# about the transport, so its requests allow 2 s.
TMAX_MS = 2000


def demo_request(request_id: str, user: str) -> dict[str, Any]:
    return bid_request(request_id, user=user, tmax=TMAX_MS)


def agents_args(data_dir: pathlib.Path) -> tuple[list[str], int]:
    metrics = free_port()
    args = [
        "agents",
        "--agents-per-node",
        "2",
        "--data-dir",
        str(data_dir),
        "--host",
        "127.0.0.1",
        "--grpc-port",
        str(free_port()),
        "--metrics-port",
        str(metrics),
        "--shutdown-grace-seconds",
        str(GRACE),
    ]
    return args, metrics


async def requests_counted(metrics_port: int) -> float:
    """Bid requests the process's bid processor decided (bid + no-bid)."""
    async with (
        aiohttp.ClientSession() as http,
        http.get(f"http://127.0.0.1:{metrics_port}/metrics") as resp,
    ):
        assert resp.status == 200
        return metric_value(await resp.text(), "campaign_express_bids_total")


class BidClient:
    """nats-py on the test's side: publishes bid requests on JetStream and
    collects the answers on its own reply subject, keyed by x-request-id."""

    def __init__(self, nc: Any, key: str) -> None:
        self._nc = nc
        self._js = nc.jetstream()
        self._key = key
        self.reply_to = f"campaign-bids.bid-responses.{uuid.uuid4().hex}"
        self._answers: dict[str, Any] = {}
        self._arrived = asyncio.Event()
        self._sub: Any = None

    async def start(self) -> None:
        async def on_answer(msg: Any) -> None:
            self._answers[(msg.headers or {}).get("x-request-id", "")] = msg
            self._arrived.set()

        self._sub = await self._nc.subscribe(self.reply_to, cb=on_answer)
        await self._nc.flush()

    async def send(self, request_id: str, body: dict[str, Any]) -> None:
        ack = await self._js.publish(
            REQUEST_SUBJECT,
            orjson.dumps(body),
            headers={
                "authorization": f"Bearer {self._key}",
                "reply-to": self.reply_to,
                "x-request-id": request_id,
            },
        )
        assert ack.stream == "CAMPAIGN_EXPRESS", ack

    async def answers(self, ids: list[str], procs: list[Proc]) -> dict[str, Any]:
        end = time.monotonic() + REPLY_WAIT
        while not all(i in self._answers for i in ids):
            left = end - time.monotonic()
            if left <= 0:
                missing = [i for i in ids if i not in self._answers]
                pytest.fail(
                    f"no answer to {missing}\n" + "\n".join(p.output() for p in procs),
                    pytrace=False,
                )
            self._arrived.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._arrived.wait(), min(left, 0.5))
        return {i: self._answers[i] for i in ids}


def assert_demo_bid(answer: Any, request_id: str) -> dict[str, Any]:
    """A 200 answer whose body is a bid of a demo campaign for imp 1."""
    headers = answer.headers or {}
    assert headers.get("status") == "200", (headers, answer.data[:500])
    assert headers.get("x-openrtb-version") == "2.6"
    response = orjson.loads(answer.data)
    assert response["id"] == request_id
    bid = response["seatbid"][0]["bid"][0]
    assert bid["impid"] == "1"
    assert 0.5 <= bid["price"] <= 4.0, bid["price"]  # the floor .. the demo's max CPM
    assert bid["adomain"] == ["shop.example"]
    assert (bid["w"], bid["h"]) == (300, 250)
    assert "-300x250.png" in bid["adm"] and "${AUCTION_PRICE}" in bid["nurl"]
    return dict(bid)


@contextlib.asynccontextmanager
async def nats_client(url: str) -> AsyncIterator[Any]:
    nc = await nats.connect(url, connect_timeout=5)
    try:
        yield nc
    finally:
        await nc.close()


async def test_agents_processes_answer_bid_requests_and_stop_on_sigterm(
    tmp_path: pathlib.Path,
    nats_url: str,
    redis_url_flushed: str,
    postgres_url_fresh: str,
) -> None:
    http = free_port()
    env = base_env(
        DATABASE_URL=postgres_url_fresh,
        REDIS_URL=redis_url_flushed,
        NATS_URL=nats_url,
        CAMPAIGN_EXPRESS_JWT_SECRET=JWT_SECRET,
        CAMPAIGN_EXPRESS_PUBLIC_URL=f"http://127.0.0.1:{http}",
        CAMPAIGN_EXPRESS_LOG_LEVEL="WARNING",
    )
    platform_args = serve_args(tmp_path / "platform", http, free_port(), free_port(), "--demo")
    platform_args[platform_args.index("--shutdown-grace-seconds") + 1] = str(GRACE)
    a_args, a_metrics = agents_args(tmp_path / "agents-a")
    # agents-b runs on the platform's own data dir, next to it
    b_args, b_metrics = agents_args(tmp_path / "platform")
    async with (
        serving(tmp_path, "platform", platform_args, env) as platform,
        nats_client(nats_url) as nc,
    ):
        key = announced_key(await platform.wait_ready(http_port=http, needle="Try: curl"))
        client = BidClient(nc, key)
        await client.start()

        async with serving(tmp_path, "agents-a", a_args, env) as agents_a:
            await agents_a.wait_for_output(AGENTS_READY)
            await client.send("first", demo_request("first", "u-first"))
            first = (await client.answers(["first"], [agents_a]))["first"]
            bid = assert_demo_bid(first, "first")

            # A second process joins the queue group without any coordination.
            async with serving(tmp_path, "agents-b", b_args, env) as agents_b:
                await agents_b.wait_for_output(AGENTS_READY)
                # its own journal next to the platform's (worker-0)
                journals = tmp_path / "platform" / "analytics-journal"
                assert (journals / "worker-agents-0").is_dir(), list(journals.iterdir())
                a_before = await requests_counted(a_metrics)
                b_before = await requests_counted(b_metrics)
                ids = [f"both-{i}" for i in range(20)]
                for i, request_id in enumerate(ids):
                    await client.send(request_id, demo_request(request_id, f"u{i}"))
                got = await client.answers(ids, [agents_a, agents_b])
                for request_id in ids:
                    assert_demo_bid(got[request_id], request_id)
                a_done = await requests_counted(a_metrics) - a_before
                b_done = await requests_counted(b_metrics) - b_before
                # Each request decided once, and both processes took a share
                # (all 20 on one side: probability 2 x 2^-20).
                assert a_done + b_done == 20 and a_done > 0 and b_done > 0, (a_done, b_done)

                started = time.monotonic()
                code = await agents_a.terminate(deadline=STOP_WITHIN)
                took = time.monotonic() - started
                assert code == 0, f"rc {code} after {took:.1f}s\n{agents_a.output()}"
                assert took < STOP_WITHIN

                # The remaining process takes everything from now on.
                await client.send("after", demo_request("after", "u-after"))
                assert_demo_bid((await client.answers(["after"], [agents_b]))["after"], "after")

                started = time.monotonic()
                code = await agents_b.terminate(deadline=STOP_WITHIN)
                assert code == 0, f"rc {code}\n{agents_b.output()}"
                assert time.monotonic() - started < STOP_WITHIN

        # The agent's notice URL is signed with the shared secret and points at
        # the platform (CAMPAIGN_EXPRESS_PUBLIC_URL): its gateway settles the win.
        win = bid["nurl"].replace("${AUCTION_PRICE}", "1.25")
        async with aiohttp.ClientSession() as session, session.get(win) as resp:
            assert resp.status == 200, await resp.text()
        assert await platform.terminate() == 0, platform.output()
