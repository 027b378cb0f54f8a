"""Background priority for the embedded analytics engine's native threads.

chDB runs ClickHouse inside the serving process: its inserts and, every few
seconds, its MergeTree merges run on threads of its own (ThreadPool,
MergeMutate, BgSchPool, ...) at the process's priority. When the event loop
and those threads want the same core, Linux shares it between them, and a
merge of ~10-20 ms of CPU holds bids back for that long: on a server core
busy with bids, that is what the p99 shows (bench/reports/bidding.md: one
pinned core at 1,400 bids/s, p99 16-20 ms before, 3-7 ms after). At nice 10
the scheduler gives the serving threads ~90% of a contended core, while on an
idle core the engine runs at full speed. Its work is never lost by waiting:
events are journaled before the engine sees them (services.analytics.pipeline).

Which threads: those named by ClickHouse's thread pools (`is_engine_thread`),
never a Python thread. A thread the engine names otherwise keeps its
priority, which is no worse than without this module. Threads inherit their
creator's priority, but the engine starts some from threads that existed
before, so `lower_engine_threads` is called again after engine work. Linux
only (per-thread nice through /proc and setpriority); elsewhere a no-op.
"""

from __future__ import annotations

import os
import pathlib
import threading

__all__ = [
    "BACKGROUND_NICE",
    "is_engine_thread",
    "lower_current_thread",
    "lower_engine_threads",
]

# CFS weight 110 against 1024 at nice 0: ~10% of a contended core.
BACKGROUND_NICE = 10

# Names (Linux comm, at most 15 characters) ClickHouse gives its threads.
_ENGINE_PREFIXES = ("Bg", "MergeMutate", "PoolDelayExec", "Query", "SystemLog", "jemalloc_bg")
_ENGINE_NAMES = frozenset(
    {"ThreadPool", "Common", "Fetch", "Move", "MemoryWorker", "AsyncLoader", "IOThreadPool"}
)

_TASKS = pathlib.Path("/proc/self/task")
# Linux: a thread id is a setpriority target, and /proc lists the threads.
_SUPPORTED = _TASKS.is_dir() and hasattr(os, "setpriority")


def is_engine_thread(name: str) -> bool:
    """Whether a thread of this name belongs to the embedded ClickHouse."""
    return name in _ENGINE_NAMES or name.startswith(_ENGINE_PREFIXES)


def lower_engine_threads(nice: int = BACKGROUND_NICE) -> int:
    """Raise the nice value of the engine's threads to at least `nice`;
    returns how many threads it changed."""
    if not _SUPPORTED:
        return 0
    python_threads = {t.native_id for t in threading.enumerate()}
    changed = 0
    for task in _TASKS.iterdir():
        try:
            tid = int(task.name)
            if tid in python_threads or not is_engine_thread((task / "comm").read_text().strip()):
                continue
            if os.getpriority(os.PRIO_PROCESS, tid) < nice:
                os.setpriority(os.PRIO_PROCESS, tid, nice)
                changed += 1
        except (OSError, ValueError):
            continue  # the thread ended meanwhile
    return changed


def lower_current_thread(nice: int = BACKGROUND_NICE) -> None:
    """Raise the calling thread's nice value to at least `nice` (threads it
    starts from now on inherit it)."""
    if not _SUPPORTED:
        return
    tid = threading.get_native_id()
    try:
        if os.getpriority(os.PRIO_PROCESS, tid) < nice:
            os.setpriority(os.PRIO_PROCESS, tid, nice)
    except OSError:
        pass  # a sandbox that forbids it: the thread keeps its priority
