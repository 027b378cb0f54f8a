"""The real `campaign-express` command, run as subprocesses.

Every test starts the console script (or `python -m services.host.cli`) with
an explicit environment, free ports and a data directory under tmp_path, waits
for it to announce itself and answer /health, talks to it over real sockets
(REST with aiohttp, gRPC with grpc.aio) and stops it with SIGTERM, checking the
exit code. Servers never outlive their test: `Proc.stop` runs in `finally`
with a bounded wait, then SIGKILL.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import pathlib
import re
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterable, Sequence
from typing import IO, Any

import aiohttp
import grpc
import orjson
import pytest
from grpc import aio
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from campaignexpress.auth.v1 import auth_service_pb2, auth_service_pb2_grpc
from services.host.domains import DOMAINS
from tests.backend_servers import free_port

pytestmark = pytest.mark.timeout(300)

ROOT = pathlib.Path(__file__).resolve().parent.parent
_SCRIPT = pathlib.Path(sys.executable).parent / "campaign-express"
CLI: list[str] = [str(_SCRIPT)] if _SCRIPT.exists() else [sys.executable, "-m", "services.host.cli"]
START_DEADLINE = 30.0
STOP_DEADLINE = 15.0
GRACE = 5
JWT_SECRET = "process-test-jwt-secret-0123456789abcdef"
DEMO_LOGIN = {
    "tenant": "tenants/demo",
    "email": "admin@demo.example",
    "password": "demo-password-1",
}
GET_TENANT = "/campaignexpress.tenancy.v1.TenancyService/GetTenant"
GET_IDENTITY = "/campaignexpress.auth.v1.AuthService/GetCurrentIdentity"
KEY_RE = re.compile(r"admin API key(?: \(shown once\))?: (\S+)")


# --------------------------------------------------------------------------- helpers


def base_env(**extra: str) -> dict[str, str]:
    """A clean environment: nothing of the caller's CAMPAIGN_EXPRESS_*, ports or URLs."""
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": os.environ.get("HOME", "/tmp"),
        "TMPDIR": os.environ.get("TMPDIR", "/tmp"),
        "LANG": "C.UTF-8",
        "PYTHONUNBUFFERED": "1",
        "PYTHONDONTWRITEBYTECODE": "1",
    }
    env.update(extra)
    return env


def run_cli(
    args: Sequence[str], env: dict[str, str] | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*CLI, *args],
        cwd=ROOT,
        env=env if env is not None else base_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


class Proc:
    """One `campaign-express serve` process; output goes to files (no pipes to fill)."""

    def __init__(
        self,
        tmp: pathlib.Path,
        name: str,
        args: Sequence[str],
        env: dict[str, str],
    ) -> None:
        self.name = name
        self.stdout_path = tmp / f"{name}.stdout"
        self.stderr_path = tmp / f"{name}.stderr"
        self._out: IO[bytes] = open(self.stdout_path, "wb")
        self._err: IO[bytes] = open(self.stderr_path, "wb")
        try:
            self.popen = subprocess.Popen(
                [*CLI, *args], cwd=ROOT, env=env, stdout=self._out, stderr=self._err
            )
        except BaseException:
            self._close_files()
            raise

    @property
    def pid(self) -> int:
        return self.popen.pid

    def stdout(self) -> str:
        return self.stdout_path.read_text(errors="replace")

    def output(self) -> str:
        return (
            f"--- {self.name} (pid {self.pid}, rc {self.popen.poll()}) stdout ---\n"
            f"{self.stdout()}\n--- stderr ---\n"
            f"{self.stderr_path.read_text(errors='replace')[-6000:]}"
        )

    async def wait_for_output(self, needle: str, deadline: float = START_DEADLINE) -> str:
        end = time.monotonic() + deadline
        while time.monotonic() < end:
            text = self.stdout()
            if needle in text:
                return text
            if self.popen.poll() is not None:
                break
            await asyncio.sleep(0.05)
        pytest.fail(f"{self.name} never printed {needle!r}\n{self.output()}")

    async def wait_ready(
        self, *, http_port: int | None, needle: str = "Campaign Express serving"
    ) -> str:
        """The start-up announcement, then (with a gateway) /health -> 200."""
        text = await self.wait_for_output(needle)
        if http_port is not None:
            await wait_http_ok(f"http://127.0.0.1:{http_port}/health", self)
        return text

    async def wait_exit(self, deadline: float = STOP_DEADLINE) -> int | None:
        end = time.monotonic() + deadline
        while time.monotonic() < end:
            code = self.popen.poll()
            if code is not None:
                return code
            await asyncio.sleep(0.02)
        return None

    def signal(self, signum: int) -> None:
        if self.popen.poll() is None:
            self.popen.send_signal(signum)

    async def terminate(self, deadline: float = STOP_DEADLINE) -> int | None:
        """SIGTERM and the exit code, or None if it did not exit in time."""
        self.signal(signal.SIGTERM)
        return await self.wait_exit(deadline)

    def stop(self) -> None:
        """Teardown: SIGTERM, bounded wait, SIGKILL; always closes the files."""
        try:
            if self.popen.poll() is None:
                self.popen.send_signal(signal.SIGTERM)
                try:
                    self.popen.wait(STOP_DEADLINE)
                except subprocess.TimeoutExpired:
                    self.popen.kill()
                    self.popen.wait(5)
        finally:
            self._close_files()

    def _close_files(self) -> None:
        for handle in (self._out, self._err):
            with contextlib.suppress(Exception):
                handle.close()


@contextlib.asynccontextmanager
async def serving(
    tmp: pathlib.Path,
    name: str,
    args: Sequence[str],
    env: dict[str, str] | None = None,
) -> AsyncIterator[Proc]:
    proc = Proc(tmp, name, args, env if env is not None else base_env())
    try:
        yield proc
    finally:
        # kill children the supervisor may have left behind (only ours, by pid)
        children = child_pids(proc.pid) if proc.popen.poll() is None else []
        proc.stop()
        for pid in children:
            if _is_cli_process(pid):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)


def _is_cli_process(pid: int) -> bool:
    """Still a live `campaign-express` process (guards against pid reuse)."""
    try:
        cmdline = pathlib.Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
    return not _gone(pid) and b"services.host.cli" in cmdline


def serve_args(
    data_dir: pathlib.Path, http: int, grpc_port: int, metrics: int, *extra: str
) -> list[str]:
    return [
        "serve",
        "--data-dir",
        str(data_dir),
        "--host",
        "127.0.0.1",
        "--http-port",
        str(http),
        "--grpc-port",
        str(grpc_port),
        "--metrics-port",
        str(metrics),
        "--shutdown-grace-seconds",
        str(GRACE),
        *extra,
    ]


@contextlib.asynccontextmanager
async def started(
    tmp: pathlib.Path,
    name: str,
    *extra: str,
    env: dict[str, str] | None = None,
    data_dir: pathlib.Path | None = None,
    demo: bool = False,
) -> AsyncIterator[tuple[Proc, dict[str, int]]]:
    ports = {"http": free_port(), "grpc": free_port(), "metrics": free_port()}
    args = serve_args(
        data_dir or tmp / "data", ports["http"], ports["grpc"], ports["metrics"], *extra
    )
    if demo:
        args.append("--demo")
    async with serving(tmp, name, args, env) as proc:
        await proc.wait_ready(
            http_port=ports["http"], needle="Try: curl" if demo else "Campaign Express serving"
        )
        yield proc, ports


async def wait_http_ok(url: str, proc: Proc, deadline: float = START_DEADLINE) -> None:
    end = time.monotonic() + deadline
    last: object = None
    while time.monotonic() < end:
        if proc.popen.poll() is not None:
            break
        try:
            async with aiohttp.ClientSession() as http, http.get(url) as resp:
                if resp.status == 200:
                    return
                last = resp.status
        except aiohttp.ClientError as exc:
            last = exc
        await asyncio.sleep(0.1)
    pytest.fail(f"{url} never answered 200 (last: {last!r})\n{proc.output()}")


async def http_json(
    method: str, url: str, *, key: str | None = None, body: Any = None
) -> tuple[int, Any]:
    """One request on a NEW connection (fresh session each time)."""
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    async with (
        aiohttp.ClientSession() as http,
        http.request(method, url, headers=headers, json=body) as resp,
    ):
        text = await resp.text()
        if resp.content_type == "application/json":
            return resp.status, json.loads(text)
        return resp.status, text


def announced_key(text: str) -> str:
    match = KEY_RE.search(text)
    assert match, f"no API key in the output:\n{text}"
    return match.group(1)


def child_pids(parent: int) -> list[int]:
    """Direct children of `parent`, from /proc/<pid>/stat (no psutil)."""
    found = []
    for entry in pathlib.Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rfind(")") + 2 :].split()
        if int(fields[1]) == parent:
            found.append(int(entry.name))
    return sorted(found)


def listening_inodes(port: int) -> set[str]:
    """Socket inodes in LISTEN state on `port` (IPv4 and IPv6)."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = pathlib.Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            cols = line.split()
            local, state, inode = cols[1], cols[3], cols[9]
            if state == "0A" and int(local.rsplit(":", 1)[1], 16) == port:
                inodes.add(inode)
    return inodes


def socket_inodes(pid: int) -> set[str]:
    inodes = set()
    fd_dir = pathlib.Path(f"/proc/{pid}/fd")
    with contextlib.suppress(OSError):
        for fd in fd_dir.iterdir():
            with contextlib.suppress(OSError):
                target = os.readlink(fd)
                if target.startswith("socket:["):
                    inodes.add(target[len("socket:[") : -1])
    return inodes


def metric_value(text: str, name: str, **labels: str) -> float:
    """Sum of the samples of `name` whose labels include `labels`."""
    total = 0.0
    for line in text.splitlines():
        if not line.startswith(name + "{") and not line.startswith(name + " "):
            continue
        head, _, value = line.rpartition(" ")
        if all(f'{k}="{v}"' in head for k, v in labels.items()):
            total += float(value)
    return total


async def grpc_identity(address: str, key: str) -> auth_service_pb2.GetCurrentIdentityResponse:
    async with aio.insecure_channel(address) as channel:
        stub = auth_service_pb2_grpc.AuthServiceStub(channel)
        return await stub.GetCurrentIdentity(
            auth_service_pb2.GetCurrentIdentityRequest(),
            metadata=[("authorization", f"Bearer {key}")],
            timeout=10,
        )


async def grpc_health(address: str, service: str = "") -> int:
    async with aio.insecure_channel(address) as channel:
        reply = await health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service=service), timeout=10
        )
        return int(reply.status)


def assert_refused(port: int) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(2)
        with pytest.raises(ConnectionRefusedError):
            s.connect(("127.0.0.1", port))


# --------------------------------------------------------------------------- 1. demo


async def test_demo_prints_a_working_key_and_is_idempotent(tmp_path: pathlib.Path) -> None:
    data = tmp_path / "data"
    async with started(tmp_path, "demo1", data_dir=data, demo=True) as (proc, ports):
        base = f"http://127.0.0.1:{ports['http']}"
        text = proc.stdout()
        key = announced_key(text)
        assert f"curl -H 'Authorization: Bearer {key}' {base}/v1/auth/identity" in text, text

        assert (await http_json("GET", f"{base}/health"))[0] == 200
        status, body = await http_json("GET", f"{base}/v1/auth/identity", key=key)
        assert status == 200, body
        assert body["tenant"]["name"] == "tenants/demo"
        assert body["principal"]["tenant"] == "tenants/demo"
        assert "ROLE_ADMIN" in body["principal"]["roles"]
        status, body = await http_json("GET", f"{base}/v1/auth/identity")
        assert status == 401, body
        assert body["error"]["status"] == "UNAUTHENTICATED"
        status, body = await http_json("GET", f"{base}/v1/auth/identity", key=key + "x")
        assert status == 401, body

        status, body = await http_json("GET", f"{base}/v1/tenants/demo/users", key=key)
        assert status == 200, body
        first_users = sorted(u["name"] for u in body["users"])
        assert len(first_users) == 5
        assert await proc.terminate() == 0, proc.output()

    # Same data dir: the same key, no new users.
    async with started(tmp_path, "demo2", data_dir=data, demo=True) as (proc, ports):
        base = f"http://127.0.0.1:{ports['http']}"
        assert announced_key(proc.stdout()) == key
        status, body = await http_json("GET", f"{base}/v1/tenants/demo/users", key=key)
        assert status == 200, body
        assert sorted(u["name"] for u in body["users"]) == first_users
        status, body = await http_json("GET", f"{base}/v1/tenants/demo/apiKeys", key=key)
        assert status == 200, body
        assert len(body["apiKeys"]) == 1, body
        # Eight live demo campaigns with offers, seeded once (display, one of
        # them for the demo's "Pro plan" segment; video, native, audio, DOOH;
        # a private deal).
        status, body = await http_json("GET", f"{base}/v1/tenants/demo/campaigns", key=key)
        assert status == 200, body
        assert [c["stage"] for c in body["campaigns"]] == ["STAGE_LIVE"] * 8, body
        # Loyalty members across the tiers.
        status, members = await http_json(
            "GET", f"{base}/v1/tenants/demo/loyaltyMembers?tier=TIER_RESERVE", key=key
        )
        assert status == 200 and len(members["loyaltyMembers"]) == 10, members
        targeted = [c for c in body["campaigns"] if c.get("targeting", {}).get("segments")]
        assert [c["displayName"] for c in targeted] == ["Pro members: free shipping"], body
        [boots] = [c for c in body["campaigns"] if c["displayName"] == "Winter boots"]
        offers_path = f"{base}/v1/{boots['name']}/offers"
        status, body = await http_json("GET", offers_path, key=key)
        assert status == 200 and len(body["offers"]) == 3, body
        [half_page] = [o for o in body["offers"] if o.get("creativeTemplate")]
        assert half_page["creativeTemplate"].endswith("/creativeTemplates/boots-300x600")
        # Demo profiles, seeded once (a second seeding applies nothing new).
        status, body = await http_json(
            "GET", f"{base}/v1/tenants/demo/profiles?pageSize=1000", key=key
        )
        assert status == 200 and len(body["profiles"]) == 200, body
        # Demo segments of four kinds, with members.
        status, body = await http_json("GET", f"{base}/v1/tenants/demo/segments", key=key)
        assert status == 200, body
        kinds = {s["displayName"]: s["kind"] for s in body["segments"]}
        assert kinds == {
            "Pro plan": "SEGMENT_KIND_DEMOGRAPHIC",
            "Repeat buyers": "SEGMENT_KIND_BEHAVIOURAL",
            "Active": "SEGMENT_KIND_LIFECYCLE",
            "Lisbon browsers": "SEGMENT_KIND_CUSTOM",
        }, body
        sizes = {s["displayName"]: int(s.get("size", 0)) for s in body["segments"]}
        assert 0 < sizes["Pro plan"] < 200 and 0 < sizes["Active"] < 200, sizes
        assert sizes["Repeat buyers"] > 0, sizes
        # Demo messaging: templates, and a content card in the first people's feeds.
        status, body = await http_json("GET", f"{base}/v1/tenants/demo/templates", key=key)
        assert {"Welcome email", "Winter boots card"} <= {
            t["displayName"] for t in body["templates"]
        }, body
        status, found = await http_json(
            "GET", f"{base}/v1/tenants/demo/profiles:resolve?kind=user_id&value=demo-user-0000",
            key=key,
        )  # fmt: skip
        profile = found["profile"]["name"]
        for _ in range(100):  # the sender delivers it within moments
            status, feed = await http_json("GET", f"{base}/v1/{profile}/feedItems", key=key)
            if feed.get("feedItems"):
                break
            await asyncio.sleep(0.05)
        assert [i["title"] for i in feed["feedItems"]] == ["Winter boots, 30% off"], feed
        # Demo journey: ACTIVE; a signed_up event enters the person (on the
        # embedded Temporal server, started by that first entry).
        status, body = await http_json("GET", f"{base}/v1/tenants/demo/journeys", key=key)
        (journey,) = [j for j in body["journeys"] if j["displayName"] == "Welcome series"]
        assert journey["state"] == "JOURNEY_STATE_ACTIVE", journey
        status, body = await http_json("POST", f"{base}/v1/tenants/demo/events:ingest", key=key,
                                       body={"batch": [{
            "type": "track", "userId": "demo-user-0000", "event": "signed_up",
            "messageId": "demo-signup-0"}], "waitForProfiles": True})  # fmt: skip
        assert status == 200, body
        for _ in range(300):
            status, body = await http_json("GET", f"{base}/v1/{journey['name']}/instances", key=key)
            steps = [h["node"] for i in body.get("instances", []) for h in i.get("history", [])]
            if steps[:2] == ["welcome", "three_days"]:
                break
            await asyncio.sleep(0.1)
        assert steps[:2] == ["welcome", "three_days"], body
        assert await proc.terminate() == 0, proc.output()

    # A fixed secret from the environment is used verbatim.
    fixed = "cx_fixed_demo_key_for_process_tests_0001"
    env = base_env(CAMPAIGN_EXPRESS_DEMO_API_KEY=fixed)
    async with started(tmp_path, "demo3", data_dir=tmp_path / "data3", demo=True, env=env) as (
        proc,
        ports,
    ):
        base = f"http://127.0.0.1:{ports['http']}"
        assert announced_key(proc.stdout()) == fixed
        status, body = await http_json("GET", f"{base}/v1/auth/identity", key=fixed)
        assert status == 200, body
        assert body["tenant"]["name"] == "tenants/demo"
        assert await proc.terminate() == 0, proc.output()


# --------------------------------------------------------------------------- 2. reflection


async def test_grpc_reflection_lists_every_service_and_health_is_serving(
    tmp_path: pathlib.Path,
) -> None:
    async with started(tmp_path, "reflect") as (proc, ports):
        address = f"127.0.0.1:{ports['grpc']}"
        async with aio.insecure_channel(address) as channel:
            stub = reflection_pb2_grpc.ServerReflectionStub(channel)
            call = stub.ServerReflectionInfo(
                iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=10
            )
            names = set()
            async for reply in call:
                names |= {s.name for s in reply.list_services_response.service}
        assert {
            "campaignexpress.tenancy.v1.TenancyService",
            "campaignexpress.auth.v1.AuthService",
            "campaignexpress.audit.v1.AuditService",
            "grpc.health.v1.Health",
            "grpc.reflection.v1alpha.ServerReflection",
        } <= names, names
        serving = health_pb2.HealthCheckResponse.SERVING
        assert await grpc_health(address) == serving
        for service in (
            "campaignexpress.tenancy.v1.TenancyService",
            "campaignexpress.auth.v1.AuthService",
            "campaignexpress.audit.v1.AuditService",
        ):
            assert await grpc_health(address, service) == serving, service
        assert await proc.terminate() == 0, proc.output()


# --------------------------------------------------------------------------- 3. bad config


@pytest.mark.parametrize(
    ("args", "env", "names"),
    [
        (["--http-port", "70000"], {}, "--http-port / HTTP_PORT"),
        ([], {"HTTP_PORT": "abc"}, "--http-port / HTTP_PORT"),
        (["--grpc-port", "-1"], {}, "--grpc-port / GRPC_PORT"),
        (["--services", "nope"], {}, "--services / CAMPAIGN_EXPRESS_SERVICES"),
        ([], {"DATABASE_URL": "mysql://x"}, "--database-url / DATABASE_URL"),
        (["--workers", "0"], {}, "--workers / CAMPAIGN_EXPRESS_WORKERS"),
        (
            ["--remote-services", "tenancy=127.0.0.1:1"],
            {},
            "--remote-services / CAMPAIGN_EXPRESS_REMOTE_SERVICES",
        ),
        (
            [],
            {"CAMPAIGN_EXPRESS_JWT_SECRET": "short"},
            "--jwt-secret / CAMPAIGN_EXPRESS_JWT_SECRET",
        ),
        (["--otlp-endpoint", "otel:4317"], {}, "--otlp-endpoint / CAMPAIGN_EXPRESS_OTLP_ENDPOINT"),
    ],
    ids=[
        "port-range",
        "port-env-not-int",
        "grpc-negative",
        "services",
        "database-scheme",
        "workers",
        "remote-also-local",
        "jwt-short",
        "otlp-no-scheme",
    ],
)
def test_invalid_configuration_fails_fast(
    tmp_path: pathlib.Path, args: list[str], env: dict[str, str], names: str
) -> None:
    data = tmp_path / "data"
    started_at = time.monotonic()
    # Ports come from the environment so that a flag under test overrides them
    # and an environment value under test is not itself overridden by a flag.
    defaults = {
        "HTTP_PORT": "0",
        "GRPC_PORT": "0",
        "METRICS_PORT": "0",
        "CAMPAIGN_EXPRESS_HOST": "127.0.0.1",
    }
    result = run_cli(
        ["serve", "--data-dir", str(data), *args], env=base_env(**{**defaults, **env}), timeout=20
    )
    elapsed = time.monotonic() - started_at
    assert result.returncode == 2, (result.returncode, result.stdout, result.stderr)
    assert names in result.stderr, result.stderr
    assert result.stderr.startswith("campaign-express: invalid "), result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    assert "Campaign Express serving" not in result.stdout
    assert elapsed < 10, elapsed
    assert not data.exists(), "nothing may be created before the settings are valid"


def test_flag_wins_over_a_bad_environment_value(tmp_path: pathlib.Path) -> None:
    """HTTP_PORT=abc is not even looked at when --http-port is given."""
    result = run_cli(
        ["migrate", "--data-dir", str(tmp_path / "data"), "--http-port", "1234"],
        env=base_env(HTTP_PORT="abc"),
    )
    assert result.returncode == 0, result.stderr


# --------------------------------------------------------------------------- 4. env vs flags


async def test_environment_is_honoured_and_flags_override_it(tmp_path: pathlib.Path) -> None:
    env_http, env_grpc, env_metrics = free_port(), free_port(), free_port()
    flag_grpc, flag_metrics = free_port(), free_port()
    env = base_env(
        HTTP_PORT=str(env_http),
        GRPC_PORT=str(env_grpc),
        METRICS_PORT=str(env_metrics),
        CAMPAIGN_EXPRESS_HOST="127.0.0.1",
        CAMPAIGN_EXPRESS_DATA_DIR=str(tmp_path / "env-data"),
        CAMPAIGN_EXPRESS_DEMO="true",
    )
    args = [
        "serve",
        "--grpc-port",
        str(flag_grpc),
        "--metrics-port",
        str(flag_metrics),
        "--shutdown-grace-seconds",
        str(GRACE),
    ]
    async with serving(tmp_path, "envflags", args, env) as proc:
        text = await proc.wait_ready(http_port=env_http, needle="Try: curl")
        # environment: HTTP port, host, data dir, demo
        assert f"HTTP http://127.0.0.1:{env_http}" in text, text
        assert (tmp_path / "env-data" / "demo-api-key").exists()
        # flags beat the environment
        assert f"gRPC 127.0.0.1:{flag_grpc}" in text, text
        assert await grpc_health(f"127.0.0.1:{flag_grpc}") == health_pb2.HealthCheckResponse.SERVING
        assert_refused(env_grpc)
        status, _ = await http_json("GET", f"http://127.0.0.1:{flag_metrics}/metrics")
        assert status == 200
        assert_refused(env_metrics)
        assert await proc.terminate() == 0, proc.output()

    # and the HTTP port itself: flag over HTTP_PORT
    flag_http = free_port()
    args = ["serve", "--http-port", str(flag_http), "--grpc-port", "0", "--metrics-port", "0"]
    async with serving(tmp_path, "envflags2", args, env) as proc:
        text = await proc.wait_ready(http_port=flag_http)
        assert f"HTTP http://127.0.0.1:{flag_http}" in text, text
        assert_refused(env_http)
        assert await proc.terminate() == 0, proc.output()


# --------------------------------------------------------------------------- 5. workers


async def _wait_workers_listening(proc: Proc, ports: Iterable[int], count: int) -> list[int]:
    """Until `count` children each hold a LISTEN socket on every port."""
    ports = list(ports)
    end = time.monotonic() + START_DEADLINE
    children: list[int] = []
    seen: set[int] = set()
    while time.monotonic() < end and proc.popen.poll() is None:
        children = child_pids(proc.pid)
        seen.update(children)
        # a zombie, or already reaped by the supervisor
        dead = sorted(pid for pid in seen if _gone(pid) or pid not in children)
        if dead:
            pytest.fail(f"worker(s) {dead} died during start-up\n{proc.output()}")
        if len(children) == count:
            listening = [listening_inodes(p) for p in ports]
            if all(all(socket_inodes(pid) & inodes for inodes in listening) for pid in children):
                return children
        await asyncio.sleep(0.1)
    pytest.fail(f"workers not listening on {ports} (children {children})\n{proc.output()}")


async def test_workers_share_the_ports_and_stop_cleanly(tmp_path: pathlib.Path) -> None:
    http, grpc_port, metrics = free_port(), free_port(), free_port()
    args = serve_args(tmp_path / "data", http, grpc_port, metrics, "--workers", "2", "--demo")
    async with serving(tmp_path, "workers", args) as proc:
        # first (fails fast if a worker dies), then worker 0's announcement
        children = await _wait_workers_listening(proc, (http, grpc_port, metrics), 2)
        key = announced_key(await proc.wait_ready(http_port=http, needle="Try: curl"))
        assert proc.pid not in children
        # the parent supervises only: it listens on none of the ports
        for port in (http, grpc_port, metrics):
            assert not socket_inodes(proc.pid) & listening_inodes(port), port

        rest = grpc_calls = 0
        for i in range(40):
            if i % 2:
                status, body = await http_json(
                    "GET", f"http://127.0.0.1:{http}/v1/auth/identity", key=key
                )
                assert status == 200, body
                assert body["tenant"]["name"] == "tenants/demo"
                rest += 1
            else:
                reply = await grpc_identity(f"127.0.0.1:{grpc_port}", key)
                assert reply.tenant.name == "tenants/demo"
                grpc_calls += 1

        # Each worker has its own metrics registry behind the shared metrics
        # port; scraping over new connections sees both. Their counts of
        # GetCurrentIdentity must add up to the calls made, both non-zero.
        seen = set()
        for _ in range(30):
            async with (
                aiohttp.ClientSession() as session,
                session.get(f"http://127.0.0.1:{metrics}/metrics") as resp,
            ):
                assert resp.status == 200
                body_text = await resp.text()
            seen.add(
                metric_value(
                    body_text,
                    "campaign_express_grpc_server_handled_total",
                    grpc_method=GET_IDENTITY,
                    grpc_code="OK",
                )
            )
            if len(seen) == 2:
                break
        total = rest + grpc_calls
        if len(seen) == 2:
            assert sum(seen) == total and min(seen) > 0, seen
        else:  # both workers served exactly half; indistinguishable
            assert seen == {total / 2}, seen

        started_at = time.monotonic()
        code = await proc.terminate(deadline=GRACE + 10)
        assert code == 0, proc.output()
        assert time.monotonic() - started_at < GRACE + 5
        for pid in children:
            assert _gone(pid), pid
        for port in (http, grpc_port, metrics):
            assert_refused(port)


def _gone(pid: int) -> bool:
    """The process has exited (no /proc entry, or only a zombie left)."""
    try:
        stat = pathlib.Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat[stat.rfind(")") + 2] in "ZX"


# --------------------------------------------------------------------------- 6. drain


async def _raw_post(port: int, path: str, body: bytes) -> tuple[asyncio.StreamReader, Any]:
    """Connect and send a whole HTTP/1.1 request; the reply is read later."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(
        (
            f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
            "Content-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
        ).encode()
        + body
    )
    await writer.drain()
    return reader, writer


async def _raw_reply(reader: asyncio.StreamReader, writer: Any) -> tuple[int, bytes]:
    try:
        data = await asyncio.wait_for(reader.read(), timeout=30)
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()
    if not data:
        return -1, b"(connection closed without a reply)"
    status = int(data.split(b" ", 2)[1])
    return status, data.partition(b"\r\n\r\n")[2]


async def test_sigterm_drains_in_flight_calls(tmp_path: pathlib.Path) -> None:
    async with started(tmp_path, "drain", demo=True) as (proc, ports):
        body = orjson.dumps(DEMO_LOGIN)
        # sanity: a login works (argon2 verification, tens of ms)
        status, reply = await _raw_reply(*await _raw_post(ports["http"], "/v1/auth:login", body))
        assert status == 200, reply

        # 10 REST logins, each fully sent on its own connection, and 10 gRPC logins
        sent = [await _raw_post(ports["http"], "/v1/auth:login", body) for _ in range(10)]
        rest_calls = [asyncio.ensure_future(_raw_reply(r, w)) for r, w in sent]
        async with aio.insecure_channel(f"127.0.0.1:{ports['grpc']}") as channel:
            await asyncio.wait_for(channel.channel_ready(), 10)
            stub = auth_service_pb2_grpc.AuthServiceStub(channel)
            grpc_calls = [
                asyncio.ensure_future(
                    stub.Login(auth_service_pb2.LoginRequest(**DEMO_LOGIN), timeout=30)
                )
                for _ in range(10)
            ]
            await asyncio.sleep(0.02)
            proc.signal(signal.SIGTERM)
            # replies not yet received when the signal went: truly in flight
            rest_in_flight = sum(not c.done() for c in rest_calls)
            grpc_in_flight = sum(not c.done() for c in grpc_calls)
            rest_results = await asyncio.gather(*rest_calls)
            grpc_results = await asyncio.gather(*grpc_calls, return_exceptions=True)

        code = await proc.wait_exit(GRACE + 10)
        failures = [(s, b[:300]) for s, b in rest_results if s != 200]
        assert not failures, f"REST calls cut by shutdown: {failures}\n{proc.output()}"
        for _, reply in rest_results:
            assert orjson.loads(reply)["tokens"]["accessToken"]
        grpc_failures = [r for r in grpc_results if isinstance(r, BaseException)]
        assert not grpc_failures, f"gRPC calls cut by shutdown: {grpc_failures}"
        assert all(r.tokens.access_token for r in grpc_results)  # type: ignore[union-attr]
        assert code == 0, proc.output()
        assert "shutting down" in proc.stderr_path.read_text()
        # otherwise the test proved nothing: calls must have been in flight
        assert rest_in_flight > 0 and grpc_in_flight > 0, (rest_in_flight, grpc_in_flight)
        for port in ports.values():
            assert_refused(port)


async def test_sigterm_exits_within_the_grace_period_despite_a_stalled_client(
    tmp_path: pathlib.Path,
) -> None:
    grace = 2
    async with started(tmp_path, "stalled", "--shutdown-grace-seconds", str(grace)) as (
        proc,
        ports,
    ):
        # A request whose body never finishes arriving: its handler is in flight.
        reader, writer = await asyncio.open_connection("127.0.0.1", ports["http"])
        try:
            writer.write(
                b"POST /v1/auth:login HTTP/1.1\r\nHost: x\r\n"
                b"Content-Type: application/json\r\nContent-Length: 100\r\n\r\n"
                b'{"tenant"'
            )
            await writer.drain()
            await asyncio.sleep(0.2)
            started_at = time.monotonic()
            code = await proc.terminate(deadline=grace + 6)
            elapsed = time.monotonic() - started_at
            assert code == 0, f"still running {elapsed:.1f}s after SIGTERM\n{proc.output()}"
        finally:
            writer.close()  # lets a server stuck on this request finish its shutdown
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()
        del reader


# --------------------------------------------------------------------------- 7. mesh


@contextlib.asynccontextmanager
async def mesh(tmp_path: pathlib.Path) -> AsyncIterator[dict[str, Any]]:
    db_url = f"sqlite:///{tmp_path / 'shared.db'}"
    env = base_env(CAMPAIGN_EXPRESS_JWT_SECRET=JWT_SECRET)
    seeded = run_cli(
        [
            "create-tenant",
            "acme",
            "--display-name",
            "Acme Corp",
            "--database-url",
            db_url,
            "--data-dir",
            str(tmp_path / "seed"),
        ],
        env=env,
    )
    assert seeded.returncode == 0, seeded.stderr
    key = announced_key(seeded.stdout)

    a_grpc, a_metrics = free_port(), free_port()
    a_args = serve_args(
        tmp_path / "a",
        free_port(),
        a_grpc,
        a_metrics,
        "--services",
        "tenancy",
        "--gateway",
        "false",
        "--database-url",
        db_url,
    )
    async with serving(tmp_path, "mesh-a", a_args, env) as a:
        await a.wait_ready(http_port=None)
        assert await grpc_health(f"127.0.0.1:{a_grpc}") == health_pb2.HealthCheckResponse.SERVING
        b_http, b_grpc, b_metrics = free_port(), free_port(), free_port()
        b_args = serve_args(
            tmp_path / "b",
            b_http,
            b_grpc,
            b_metrics,
            "--services",
            "auth,audit",
            "--remote-services",
            f"tenancy=127.0.0.1:{a_grpc}",
            "--database-url",
            db_url,
        )
        async with serving(tmp_path, "mesh-b", b_args, env) as b:
            await b.wait_ready(http_port=b_http)
            yield {
                "a_args": a_args,
                "env": env,
                "a": a,
                "b": b,
                "key": key,
                "a_grpc": a_grpc,
                "a_metrics": a_metrics,
                "b_http": b_http,
                "b_grpc": b_grpc,
            }


async def _a_get_tenant_count(port: int) -> float:
    async with (
        aiohttp.ClientSession() as http,
        http.get(f"http://127.0.0.1:{port}/metrics") as resp,
    ):
        assert resp.status == 200
        text = await resp.text()
    return metric_value(
        text, "campaign_express_grpc_server_handled_total", grpc_method=GET_TENANT, grpc_code="OK"
    )


async def test_mesh_identity_reads_the_tenant_from_another_process(
    tmp_path: pathlib.Path,
) -> None:
    async with mesh(tmp_path) as m:
        a, b, key = m["a"], m["b"], m["key"]
        # A runs only tenancy, without a gateway; B everything else
        assert "serving tenancy:" in a.stdout()
        assert "serving auth, audit:" in b.stdout()
        before = await _a_get_tenant_count(m["a_metrics"])

        reply = await grpc_identity(f"127.0.0.1:{m['b_grpc']}", key)
        assert reply.tenant.name == "tenants/acme"
        assert reply.tenant.display_name == "Acme Corp"
        status, body = await http_json(
            "GET", f"http://127.0.0.1:{m['b_http']}/v1/auth/identity", key=key
        )
        assert status == 200, body
        assert body["tenant"]["displayName"] == "Acme Corp"
        # B's gateway routes tenancy calls to A as well
        status, body = await http_json(
            "GET", f"http://127.0.0.1:{m['b_http']}/v1/tenants/acme", key=key
        )
        assert status == 200, body
        assert body["tenant"]["name"] == "tenants/acme"

        after = await _a_get_tenant_count(m["a_metrics"])
        assert after - before == 3, (before, after)
        assert b.popen.poll() is None
        assert await b.terminate() == 0, b.output()
        assert await a.terminate() == 0, a.output()


async def test_mesh_remote_service_down_is_unavailable(tmp_path: pathlib.Path) -> None:
    async with mesh(tmp_path) as m:
        a, b, key = m["a"], m["b"], m["key"]
        reply = await grpc_identity(f"127.0.0.1:{m['b_grpc']}", key)
        assert reply.tenant.name == "tenants/acme"
        assert await a.terminate() == 0, a.output()

        status, body = await http_json(
            "GET", f"http://127.0.0.1:{m['b_http']}/v1/auth/identity", key=key
        )
        grpc_error = None
        try:
            await grpc_identity(f"127.0.0.1:{m['b_grpc']}", key)
        except aio.AioRpcError as exc:
            grpc_error = exc
        # B is still up and healthy
        assert b.popen.poll() is None, b.output()
        assert (await http_json("GET", f"http://127.0.0.1:{m['b_http']}/health"))[0] == 200
        assert grpc_error is not None
        assert grpc_error.code() == grpc.StatusCode.UNAVAILABLE, (
            grpc_error.code(),
            grpc_error.details(),
        )
        assert status == 503, body
        assert body["error"]["status"] == "UNAVAILABLE"

        # A comes back on the same port: B's channel reconnects by itself
        async with serving(tmp_path, "mesh-a2", m["a_args"], m["env"]) as a2:
            await a2.wait_ready(http_port=None)
            end = time.monotonic() + 20
            while True:
                try:
                    reply = await grpc_identity(f"127.0.0.1:{m['b_grpc']}", key)
                    break
                except aio.AioRpcError as exc:
                    if exc.code() != grpc.StatusCode.UNAVAILABLE or time.monotonic() > end:
                        raise
                await asyncio.sleep(0.2)
            assert reply.tenant.name == "tenants/acme"
            assert await a2.terminate() == 0, a2.output()
        assert await b.terminate() == 0, b.output()


# --------------------------------------------------------------------------- 8. create-tenant


async def test_create_tenant_bootstrap(tmp_path: pathlib.Path) -> None:
    data = tmp_path / "data"
    result = run_cli(["create-tenant", "acme", "--data-dir", str(data)])
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("created tenants/acme;"), result.stdout
    key = announced_key(result.stdout)

    again = run_cli(["create-tenant", "acme", "--data-dir", str(data)])
    assert again.returncode == 1, (again.stdout, again.stderr)
    assert "already exists" in again.stderr, again.stderr
    assert "Traceback" not in again.stderr
    assert "API key" not in again.stdout

    async with started(tmp_path, "tenant", data_dir=data) as (proc, ports):
        status, body = await http_json(
            "GET", f"http://127.0.0.1:{ports['http']}/v1/auth/identity", key=key
        )
        assert status == 200, body
        assert body["tenant"]["name"] == "tenants/acme"
        assert body["principal"]["roles"] == ["ROLE_ADMIN"]
        assert await proc.terminate() == 0, proc.output()


# --------------------------------------------------------------------------- 9. migrate


def test_migrate_is_idempotent(tmp_path: pathlib.Path) -> None:
    data = tmp_path / "data"
    for _ in range(2):
        result = run_cli(["migrate", "--data-dir", str(data)])
        assert result.returncode == 0, result.stderr
        assert "is up to date" in result.stdout, result.stdout
    db = data / "campaign-express.db"
    assert db.exists()
    with contextlib.closing(sqlite3.connect(db)) as conn:
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        versions = conn.execute("SELECT version_num FROM alembic_version").fetchall()
    assert {"alembic_version"} < tables, tables
    # One row per domain history at its head, less the heads other domains'
    # revisions depend on (Alembic keeps only the outermost).
    names = {v for (v,) in versions}
    assert names and all(v.split("_")[0] in DOMAINS for v in names), names
    assert {"tenants", "api_keys", "audit_events", "campaigns"} < tables


async def test_ready_waits_for_the_demo_data(tmp_path: pathlib.Path) -> None:
    """`serve --demo` answers /ready 503 ("demo data": starting) while it
    seeds the demo tenant, and the demo API key works as soon as /ready
    says 200: a script that waits for /ready never gets a 401."""
    key = "cx_demo_ready_test_key_0123456789"
    ports = {"http": free_port(), "grpc": free_port(), "metrics": free_port()}
    args = serve_args(tmp_path / "data", ports["http"], ports["grpc"], ports["metrics"])
    args += ["--demo", "--demo-api-key", key]
    base = f"http://127.0.0.1:{ports['http']}"
    seen: list[object] = []
    async with serving(tmp_path, "demo-ready", args) as proc, aiohttp.ClientSession() as http:
        end = time.monotonic() + START_DEADLINE
        while True:
            assert time.monotonic() < end and proc.popen.poll() is None, proc.output()
            try:
                async with http.get(f"{base}/ready") as resp:
                    body = await resp.json()
                    if resp.status == 200:
                        break
                    seen.append(body.get("problems"))
            except aiohttp.ClientConnectionError:
                pass
            await asyncio.sleep(0.01)
        headers = {"Authorization": f"Bearer {key}"}
        async with http.get(f"{base}/v1/auth/identity", headers=headers) as resp:
            assert resp.status == 200, await resp.text()
    # while seeding, that is what /ready said (when a probe came in time)
    assert all(isinstance(p, dict) and p.get("demo data") == "starting" for p in seen), seen
