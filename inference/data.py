"""Logged events as arrays, from columns read out of CSV files, Parquet files or
the analytics store (the reading of the latter two lives in services/, which
has the store; this module needs only the csv module and NumPy).

The logged-impression schema (one row per shown offer; `campaign-express model
simulate` writes it, `model train` reads it):

==============  =========================================================
column          meaning
==============  =========================================================
event_time      when the impression was served: epoch seconds, or ISO 8601
request_id      the bid request (optional)
offer_id        the offer shown
position        0-based slot it was shown in
features        the user part of the feature vector at serving time
                (140 numbers, `inference.features`; shorter lists are
                zero-padded)
candidates      the offers the logging policy chose from (list; optional)
propensity      probability the logging policy gave the shown offer
clicked         1 when the impression was clicked, else 0
converted       1 when it led to a conversion, else 0 (optional)
value           value of the impression in currency units, e.g. the
                conversion's value (optional)
variant         DCO variant index shown, -1 for none (optional)
==============  =========================================================

In CSV files list cells are JSON arrays (``[0.1, 0.2]``, ``["a", "b"]``).
"""

from __future__ import annotations

import csv
import datetime as dt
import json
import math
import os
import pathlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from inference.features import USER_DIM

__all__ = [
    "EVENT_COLUMNS",
    "LIST_COLUMNS",
    "DataError",
    "LoggedEvents",
    "as_list",
    "read_csv_columns",
    "user_matrix",
    "write_csv_columns",
]

EVENT_COLUMNS = (
    "event_time",
    "request_id",
    "offer_id",
    "position",
    "features",
    "candidates",
    "propensity",
    "clicked",
    "converted",
    "value",
    "variant",
)
LIST_COLUMNS = ("features", "candidates")

Columns = Mapping[str, Sequence[Any]]


class DataError(ValueError):
    """Logged data that cannot be used; the message names the column."""


def _float_array(columns: Columns, name: str, default: float | None = None) -> npt.NDArray[Any]:
    values = columns.get(name)
    n = _length(columns)
    if values is None:
        if default is None:
            raise DataError(f"column {name!r} is missing (columns: {', '.join(columns)})")
        return np.full(n, default, dtype=np.float64)
    try:
        array = np.asarray([math.nan if v is None or v == "" else v for v in values], np.float64)
    except (TypeError, ValueError):
        raise DataError(f"column {name!r} must hold numbers") from None
    return array


def _length(columns: Columns) -> int:
    lengths = {len(v) for v in columns.values()}
    if len(lengths) > 1:
        raise DataError("columns have different lengths")
    return lengths.pop() if lengths else 0


def _epoch(value: Any) -> float:
    if isinstance(value, dt.datetime):
        moment = value if value.tzinfo else value.replace(tzinfo=dt.UTC)
        return moment.timestamp()
    if isinstance(value, int | float):
        return float(value)
    text = str(value).strip()
    try:
        return float(text)
    except ValueError:
        pass
    try:
        moment = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise DataError(f"event_time {text!r} is neither epoch seconds nor ISO 8601") from None
    return _epoch(moment)


def as_list(value: Any, column: str) -> list[Any]:
    if isinstance(value, list | tuple | np.ndarray):
        return list(value)
    if isinstance(value, str):
        try:
            parsed = json.loads(value) if value.strip() else []
        except ValueError:
            raise DataError(f"column {column!r} cells must be JSON arrays") from None
        if isinstance(parsed, list):
            return parsed
    raise DataError(f"column {column!r} cells must be lists")


def user_matrix(values: Sequence[Any], column: str = "features") -> npt.NDArray[np.float32]:
    """(n, 140) user parts from a column of number lists (zero-padded)."""
    out = np.zeros((len(values), USER_DIM), dtype=np.float32)
    for i, cell in enumerate(values):
        row = as_list(cell, column)
        if len(row) > USER_DIM:
            raise DataError(f"column {column!r} row {i} has {len(row)} values; at most {USER_DIM}")
        try:
            out[i, : len(row)] = np.asarray(row, dtype=np.float32)
        except (TypeError, ValueError):
            raise DataError(f"column {column!r} row {i} must hold numbers") from None
    if not np.all(np.isfinite(out)):
        raise DataError(f"column {column!r} holds NaN or infinite values")
    return out


@dataclass(frozen=True)
class LoggedEvents:
    """Logged impressions as arrays (see the module docstring for columns)."""

    time: npt.NDArray[np.float64]
    user: npt.NDArray[np.float32]  # (n, 140)
    offer_ids: list[str]
    position: npt.NDArray[np.int64]
    clicked: npt.NDArray[np.float32]
    converted: npt.NDArray[np.float32]
    value: npt.NDArray[np.float32]
    variant: npt.NDArray[np.int64]  # -1: none
    propensity: npt.NDArray[np.float64]  # NaN: unknown
    candidates: list[tuple[str, ...]] | None = None

    def __len__(self) -> int:
        return len(self.offer_ids)

    @classmethod
    def from_columns(cls, columns: Columns) -> LoggedEvents:
        _length(columns)
        for name in ("event_time", "offer_id", "features", "clicked"):
            if name not in columns:
                raise DataError(f"column {name!r} is missing (columns: {', '.join(columns)})")
        clicked = _float_array(columns, "clicked")
        if np.any((clicked != 0) & (clicked != 1)):
            raise DataError("column 'clicked' must hold 0 or 1")
        converted = _float_array(columns, "converted", 0.0)
        has_value = "value" in columns
        value = _float_array(columns, "value", 0.0) if has_value else converted.copy()
        candidates = None
        if "candidates" in columns:
            candidates = [
                tuple(str(c) for c in as_list(cell, "candidates")) for cell in columns["candidates"]
            ]
        return cls(
            time=np.asarray([_epoch(v) for v in columns["event_time"]], dtype=np.float64),
            user=user_matrix(columns["features"]),
            offer_ids=[str(v) for v in columns["offer_id"]],
            position=np.nan_to_num(_float_array(columns, "position", 0.0)).astype(np.int64),
            clicked=clicked.astype(np.float32),
            converted=np.nan_to_num(converted).astype(np.float32),
            value=np.nan_to_num(value).astype(np.float32),
            variant=np.nan_to_num(_float_array(columns, "variant", -1.0), nan=-1).astype(np.int64),
            propensity=_float_array(columns, "propensity", math.nan),
            candidates=candidates,
        )

    def take(self, index: npt.NDArray[np.int64]) -> LoggedEvents:
        return LoggedEvents(
            time=self.time[index],
            user=self.user[index],
            offer_ids=[self.offer_ids[i] for i in index],
            position=self.position[index],
            clicked=self.clicked[index],
            converted=self.converted[index],
            value=self.value[index],
            variant=self.variant[index],
            propensity=self.propensity[index],
            candidates=None if self.candidates is None else [self.candidates[i] for i in index],
        )


def read_csv_columns(path: str | os.PathLike[str]) -> dict[str, list[Any]]:
    """Columns of a CSV file with a header row; list cells stay JSON text."""
    with open(path, newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        if reader.fieldnames is None:
            raise DataError(f"{path} has no header row")
        columns: dict[str, list[Any]] = {name: [] for name in reader.fieldnames}
        for row in reader:
            for name in reader.fieldnames:
                columns[name].append(row.get(name, ""))
    return columns


def write_csv_columns(path: str | os.PathLike[str], columns: Columns) -> pathlib.Path:
    """Write columns as CSV (lists as JSON arrays)."""
    target = pathlib.Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    names = list(columns)
    n = _length(columns)
    with open(target, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(names)
        for i in range(n):
            writer.writerow(
                [
                    json.dumps(list(v)) if isinstance(v, list | tuple) else v
                    for v in (columns[name][i] for name in names)
                ]
            )
    return target
