"""Scheduled retraining: the learning loop's last step, inside `serve`.

Every `model_retrain_hours` one process per host (worker 0) takes the latest
`model_retrain_rows` shown bids of `bid_impressions` (services/bidding/
decisions.py: what the model saw, what was drawn, propensities, clicks),
writes them to a Parquet file under the data directory and runs `campaign-
express model train --input that --output <the served checkpoint>` as a
child process (training takes CPU the bid path must keep; JAX, the `ml`
extra, is needed there only). The command publishes only a model better
than the served one on held-out log loss and off-policy (SNIPS on the
logged propensities); every serving process then reloads the file within
`inference_reload_seconds`. At scale, run the same command as one scheduled
job against ClickHouse instead, and leave this off (0)."""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import json
import logging
import pathlib
import sys
from dataclasses import dataclass
from typing import Any

from services.backends.analytics import table_exists
from services.backends.interfaces import AnalyticsStore
from services.inference.logs import read_columns, write_columns

log = logging.getLogger(__name__)

TABLE = "bid_impressions"
MIN_ROWS = 1_000
DEFAULT_ROWS = 200_000


@dataclass(frozen=True)
class RetrainOutcome:
    rows: int
    published: bool
    report: dict[str, Any]  # the train command's JSON report ({} when skipped)
    why: str = ""  # when nothing was trained


class Retrainer:
    def __init__(
        self,
        store: AnalyticsStore,
        data_dir: pathlib.Path,
        output: pathlib.Path,
        *,
        every_seconds: float,
        rows: int = DEFAULT_ROWS,
        min_rows: int = MIN_ROWS,
        epochs: int = 5,
        table: str = TABLE,
    ) -> None:
        self._store = store
        self._data_dir = data_dir
        self._output = output
        self._every = every_seconds
        self._rows = rows
        self._min_rows = min_rows
        self._epochs = epochs
        self._table = table
        self._task: asyncio.Task[None] | None = None
        self.last: RetrainOutcome | None = None

    async def start(self) -> None:
        if self._every > 0:
            self._task = asyncio.create_task(self._loop(), name="model-retrain")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self._every)
            try:
                self.last = outcome = await self.run_once()
            except Exception:
                log.exception("scheduled retraining failed")
                continue
            log.info(
                "scheduled retraining on %d shown bids: %s",
                outcome.rows,
                "published" if outcome.published else outcome.why or "not published",
            )

    async def run_once(self, *, batch_size: int = 256) -> RetrainOutcome:
        if importlib.util.find_spec("jax") is None:
            return RetrainOutcome(0, False, {}, "JAX is not installed (the ml extra)")
        if not await table_exists(self._store, self._table):
            return RetrainOutcome(0, False, {}, f"no {self._table} yet")
        columns = await read_columns(self._table, self._store, latest=self._rows)
        rows = len(columns.get("event_time", []))
        if rows < self._min_rows:
            return RetrainOutcome(
                rows, False, {}, f"{rows} shown bids, fewer than {self._min_rows}"
            )
        folder = self._data_dir / "models"
        folder.mkdir(parents=True, exist_ok=True)
        data = await write_columns(str(folder / "training.parquet"), columns, self._store)
        command = [
            sys.executable, "-m", "services.host.cli", "model", "train",
            "--input", str(data), "--output", str(self._output),
            "--epochs", str(self._epochs), "--batch-size", str(batch_size),
            "--data-dir", str(self._data_dir), "--json",
        ]  # fmt: skip
        process = await asyncio.create_subprocess_exec(
            *command, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
        )
        out, err = await process.communicate()
        try:
            report = json.loads(out)
        except ValueError:
            tail = err.decode(errors="replace").strip().splitlines()[-3:]
            return RetrainOutcome(rows, False, {}, "training failed: " + " | ".join(tail))
        return RetrainOutcome(rows, bool(report.get("published")), report)
