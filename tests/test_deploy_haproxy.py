"""HAProxy in front of the bidding fleet (deploy/haproxy/haproxy.cfg): the
configuration is valid (`haproxy -c`), and Debian's haproxy run with it in
front of two `serve` processes passes OpenRTB over HTTP/1.1 and gRPC over
HTTP/2 to both; when one is killed (-9) mid-load, bids keep flowing, with
no more failures than the requests in flight at the kill. The only change
to the committed configuration is discovery: two local servers in place of
the DNS `server-template`."""

from __future__ import annotations

import asyncio
import contextlib
import os
import pathlib
import re
import shutil
import signal
import subprocess
import time
from collections.abc import AsyncIterator, Iterator

import aiohttp
import orjson
from grpc import aio

from campaignexpress.bidding.v1 import bidding_service_pb2, bidding_service_pb2_grpc
from services.bidding.openrtb_json import decode_bid_request
from tests.backend_servers import free_port
from tests.test_demo_formats import REQUESTS, USA
from tests.test_process import base_env, started

CONFIG = pathlib.Path(__file__).parent.parent / "deploy" / "haproxy" / "haproxy.cfg"
HAPROXY = shutil.which("haproxy") or "/usr/sbin/haproxy"
KEY = "cx_haproxy_demo_key_0123456789"
RATE = 100  # bids a second, open loop


def _env(http: int, grpc_port: int) -> dict[str, str]:
    binds = {"CX_HTTP_BIND": f"127.0.0.1:{http}", "CX_GRPC_BIND": f"127.0.0.1:{grpc_port}"}
    return {**os.environ, **binds, "CX_BIDDING_HOST": "bidding.invalid"}


def test_the_configuration_is_valid() -> None:
    done = subprocess.run([HAPROXY, "-c", "-f", str(CONFIG)], env=_env(free_port(), free_port()),
                          capture_output=True, text=True, timeout=30)  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr


def local_config(backends: list[dict[str, int]]) -> str:
    """The committed configuration with these servers for its DNS template."""
    text = CONFIG.read_text()

    def servers(match: re.Match[str]) -> str:
        port, options = match.group(1), match.group(2)
        options = options.replace("resolvers cluster init-addr none", "").strip()
        kind = "grpc" if port == "9090" else "http"
        return "\n".join(f"    server b{n} 127.0.0.1:{b[kind]} {options}"
                         .replace("check port 8080", f"check port {b['http']}")
                         for n, b in enumerate(backends))  # fmt: skip

    local, count = re.subn(
        r'    server-template bidding 1-40 "\$\{CX_BIDDING_HOST\}":(\d+) (.*)', servers, text
    )
    assert count == 2, "the configuration's two backends changed: update this test"
    return local


@contextlib.contextmanager
def haproxy(tmp: pathlib.Path, config: str) -> Iterator[tuple[int, int]]:
    """Debian's haproxy with `config`, on two free ports (HTTP, gRPC)."""
    http, grpc_port = free_port(), free_port()
    path = tmp / "haproxy.cfg"
    path.write_text(config)
    with open(tmp / "haproxy.log", "wb") as log:
        proc = subprocess.Popen([HAPROXY, "-f", str(path)], env=_env(http, grpc_port),
                                stdout=log, stderr=subprocess.STDOUT)  # fmt: skip
        try:
            yield http, grpc_port
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)


@contextlib.asynccontextmanager
async def proxied(tmp: pathlib.Path, config: str) -> AsyncIterator[tuple[int, int]]:
    with haproxy(tmp, config) as ports:
        yield ports


async def test_bids_keep_flowing_when_a_backend_dies(tmp_path: pathlib.Path) -> None:
    env = base_env(CAMPAIGN_EXPRESS_DEMO_API_KEY=KEY)
    body = {"device": USA, "user": {"id": "visitor-1"}, "tmax": 500, **REQUESTS["banner"]}
    async with (
        started(tmp_path, "bid1", env=env, data_dir=tmp_path / "d1", demo=True) as (kept, p1),
        started(tmp_path, "bid2", env=env, data_dir=tmp_path / "d2", demo=True) as (killed, p2),
        proxied(tmp_path, local_config([p1, p2])) as (http, grpc_port),
        aiohttp.ClientSession() as client,
    ):
        headers = {"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"}
        for port in (p1["http"], p2["http"]):  # both seeded and ready
            deadline = time.monotonic() + 60
            while True:
                async with client.get(f"http://127.0.0.1:{port}/ready") as r:
                    if r.status == 200:
                        break
                assert time.monotonic() < deadline, "a backend never got ready"
                await asyncio.sleep(0.1)
        await asyncio.sleep(2.5)  # haproxy's checks see both up (rise 2, 1 s apart)
        url = f"http://127.0.0.1:{http}/v1/bid"
        # gRPC over HTTP/2 through the proxy
        async with aio.insecure_channel(f"127.0.0.1:{grpc_port}") as channel:
            stub = bidding_service_pb2_grpc.BiddingServiceStub(channel)
            raw = orjson.dumps({**body, "id": "grpc-1"})
            request = decode_bid_request(raw, max_bytes=len(raw))
            reply = await stub.ProcessBid(
                bidding_service_pb2.ProcessBidRequest(request=request),
                metadata=(("authorization", f"Bearer {KEY}"),), timeout=10,
            )  # fmt: skip
            assert not reply.no_bid and reply.response.seatbid[0].bid[0].price > 0
        outcomes: list[int] = []
        in_flight = 0
        at_kill: list[int] = []

        async def one(n: int) -> None:
            nonlocal in_flight
            in_flight += 1
            try:
                data = orjson.dumps({**body, "id": f"r{n}"})
                async with client.post(url, data=data, headers=headers,
                                       timeout=aiohttp.ClientTimeout(total=10)) as r:  # fmt: skip
                    await r.read()
                    outcomes.append(r.status)
            except (aiohttp.ClientError, TimeoutError):
                outcomes.append(0)
            finally:
                in_flight -= 1

        tasks = []
        started_at = time.monotonic()
        for n in range(RATE * 6):  # 6 s, open loop; one backend killed after 2 s
            await asyncio.sleep(max(0.0, started_at + n / RATE - time.monotonic()))
            if n == RATE * 2:
                at_kill.append(in_flight)  # (the kill happens between two sends)
                os.kill(killed.pid, signal.SIGKILL)
            tasks.append(asyncio.create_task(one(n)))
        await asyncio.gather(*tasks)
        assert kept.popen.poll() is None and killed.popen.poll() is not None
    failures = [s for s in outcomes if s not in (200, 204)]
    assert len(outcomes) == RATE * 6
    assert len(failures) <= at_kill[0], (failures, at_kill)
    assert outcomes[-RATE:].count(200) == RATE  # the last second: all on the survivor
