"""The write-ahead journal: numbered, append-only segment files in the spill
directory, one JSON array per event line.

A segment is `<16-digit number>.jsonl`: a header line (a JSON object naming the
format, the table and the columns), then one line per event, each a JSON array
in the header's column order, written with plain `write(2)` calls (no user-space
buffer), so once a write returns the line is in the kernel and survives the
death of the process. Segments are numbered in emit order; a segment is
deleted only after its events are in the store, so the files in the directory
are exactly the events not yet known to be delivered, in order.

A crash can leave the last line of the segment being written incomplete: that
line's write never returned, so the event was never acknowledged; readers skip
it. `cat`, `jq -c` and `wc -l` work on segments for operations.
"""

from __future__ import annotations

import fcntl
import logging
import os
import pathlib
from dataclasses import dataclass
from typing import Any, Literal

import orjson

from services.analytics.events import (
    COLUMNS,
    EVENT_TIME_INDEX,
    AnalyticsEvent,
    EventRow,
    store_row,
)

log = logging.getLogger(__name__)

__all__ = [
    "FORMAT",
    "FsyncPolicy",
    "SegmentData",
    "SegmentWriter",
    "SpillDirLock",
    "count_events",
    "encode_events",
    "read_segment",
    "scan_segments",
    "segment_path",
]

FORMAT = "campaign-express.analytics.v1"
SUFFIX = ".jsonl"
REJECTED_SUFFIX = ".rejected"
LOCK_NAME = "LOCK"

# commit: fsync each group commit before acknowledging it (acknowledged events
#         survive a machine crash or power loss);
# seal:   fsync a segment when it is sealed (acknowledged events survive the
#         death of the process; a machine crash can lose the unsealed tail);
# none:   never fsync (process death only; the OS writes back in its time).
FsyncPolicy = Literal["commit", "seal", "none"]


def segment_path(directory: pathlib.Path, number: int) -> pathlib.Path:
    return directory / f"{number:016d}{SUFFIX}"


def scan_segments(directory: pathlib.Path) -> list[tuple[int, pathlib.Path]]:
    """Segment files in the directory, oldest first."""
    found: list[tuple[int, pathlib.Path]] = []
    for path in directory.iterdir():
        stem = path.name[: -len(SUFFIX)] if path.name.endswith(SUFFIX) else ""
        if stem.isdigit() and path.is_file():
            found.append((int(stem), path))
    found.sort()
    return found


def _fsync_directory(directory: pathlib.Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class SpillDirLock:
    """An exclusive lock on the spill directory (flock on `LOCK`): two
    pipelines appending to and deleting from one journal would lose events.
    The kernel releases it when the process dies, so a restarted process can
    take over a killed one's directory at once."""

    def __init__(self, directory: pathlib.Path) -> None:
        self._fd = os.open(directory / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self._fd)
            raise RuntimeError(
                f"analytics spill directory {directory} is in use by another pipeline "
                "(one spill directory per process)"
            ) from None

    def release(self) -> None:
        if self._fd >= 0:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = -1


@dataclass(slots=True)
class SegmentData:
    """What a segment file holds, ready for AnalyticsStore.insert."""

    columns: list[str]
    rows: list[list[Any]]
    corrupt_lines: int  # complete lines that did not parse (skipped)
    torn_tail: bool  # the last line was incomplete (never acknowledged; skipped)


class CorruptSegment(Exception):
    """A segment whose header is unreadable."""


def read_segment(path: pathlib.Path, *, for_store: bool = True) -> SegmentData:
    """Read a segment back, its rows converted for the store (store_row), or
    as they were journaled with `for_store=False` (what a follower reads)."""
    data = path.read_bytes()
    lines = data.split(b"\n")
    tail = lines.pop()  # b"" when the file ends with a newline
    if not lines:
        # Nothing complete, not even the header: the process died inside the
        # segment's first write, which was never acknowledged.
        return SegmentData(list(COLUMNS), [], 0, bool(tail))
    try:
        header = orjson.loads(lines[0])
        columns = [str(c) for c in header["columns"]]
        if header.get("format") != FORMAT:
            raise ValueError(f"unknown format {header.get('format')!r}")
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
        raise CorruptSegment(f"{path}: unreadable header: {exc}") from exc
    width = len(columns)
    time_index = columns.index("event_time") if for_store and "event_time" in columns else -1
    rows: list[list[Any]] = []
    corrupt = 0
    loads = orjson.loads
    for line in lines[1:]:
        try:
            values = loads(line)
        except orjson.JSONDecodeError:
            corrupt += 1
            continue
        if type(values) is not list or len(values) != width:
            corrupt += 1
            continue
        rows.append(store_row(values, time_index) if time_index >= 0 else values)
    return SegmentData(columns, rows, corrupt, bool(tail))


def count_events(path: pathlib.Path) -> int:
    """Complete event lines in a segment (lines after the header)."""
    with path.open("rb") as f:
        newlines = f.read().count(b"\n")
    return max(0, newlines - 1)


class SegmentWriter:
    """The open segment. Used by one thread at a time (the pipeline's journal
    thread, or the event loop's thread under the same lock).

    `append` writes (the lines are in the kernel: they survive the death of
    the process); `sync` makes what was appended durable per the policy
    (fsync="commit": fdatasync, and the directory once for a new file), so
    that one sync can cover several appends."""

    def __init__(
        self,
        directory: pathlib.Path,
        number: int,
        table: str,
        fsync: FsyncPolicy,
        columns: tuple[str, ...] = COLUMNS,
    ) -> None:
        self.number = number
        self.path = segment_path(directory, number)
        self.count = 0
        self.rows: list[list[Any]] = []
        self._fsync = fsync
        self._directory = directory
        self._fd = -1
        self._size = 0  # bytes in the file (it is new: opened with O_EXCL)
        self._dirty = False  # appended since the last sync
        self._entry_synced = fsync != "commit"  # the file's directory entry
        self._header = (
            orjson.dumps({"format": FORMAT, "table": table, "columns": list(columns)}) + b"\n"
        )

    def append(self, lines: list[bytes], rows: list[list[Any]]) -> None:
        """Write the lines (each ending in a newline) in one `write`; on return
        they are in the kernel. On error the file is cut back to where it was,
        so a retry does not duplicate."""
        data = b"".join(lines)
        if self._fd < 0:
            self._fd = os.open(
                self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND | os.O_CLOEXEC, 0o644
            )
        size = self._size
        if size == 0:
            data = self._header + data
        try:
            view = memoryview(data)
            while view:
                written = os.write(self._fd, view)
                view = view[written:]
        except OSError:
            try:
                os.ftruncate(self._fd, size)
            except OSError:
                pass
            raise
        self._size = size + len(data)
        self._dirty = True
        self.count += len(lines)
        self.rows.extend(rows)

    def sync(self) -> None:
        """With fsync="commit", put what was appended on disk (fdatasync; the
        directory too for a new file). Nothing to do for the other policies."""
        if not self._dirty or self._fsync != "commit":
            return
        os.fdatasync(self._fd)
        if not self._entry_synced:
            _fsync_directory(self._directory)
            self._entry_synced = True
        self._dirty = False

    def seal(self) -> None:
        """Close the file (fsync per policy); it is complete from here on."""
        if self._fd < 0:
            return
        try:
            if self._fsync == "seal":
                os.fdatasync(self._fd)
            else:
                self.sync()
        finally:
            os.close(self._fd)
            self._fd = -1
        if self._fsync == "seal":
            _fsync_directory(self._directory)


def encode_events(
    events: list[AnalyticsEvent | EventRow],
    time_index: int = EVENT_TIME_INDEX,
) -> tuple[list[bytes], list[list[Any]], int]:
    """Journal lines and store rows of events (or event rows; `time_index`:
    the column of their microsecond event time), and how many could not be
    encoded (mutated into bad types after construction; logged, left out)."""
    dumps = orjson.dumps
    option = orjson.OPT_APPEND_NEWLINE
    lines: list[bytes] = []
    rows: list[list[Any]] = []
    bad = 0
    for event in events:
        try:
            values = event.row() if isinstance(event, AnalyticsEvent) else event
            line = dumps(values, option=option)
        except Exception as exc:
            bad += 1
            log.error("analytics: event %r cannot be journaled: %s", event, exc)
            continue
        lines.append(line)
        rows.append(store_row(list(values), time_index))
    return lines, rows, bad
