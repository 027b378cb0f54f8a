"""start_eagerly: a coroutine runs at once, and becomes a task only if it
has to wait; the task then behaves like one made by create_task."""

from __future__ import annotations

import asyncio
import contextvars

import pytest

from services.common.eager import Finished, start_eagerly

marker: contextvars.ContextVar[str] = contextvars.ContextVar("marker", default="caller")


async def test_a_coroutine_that_never_waits_completes_on_the_call() -> None:
    ran: list[str] = []

    async def quick() -> int:
        ran.append("ran")
        return 7

    started = start_eagerly(quick(), asyncio.get_running_loop())
    assert isinstance(started, Finished)
    assert started.result == 7
    assert ran == ["ran"]


async def test_a_coroutine_that_waits_is_finished_by_a_task() -> None:
    gate: asyncio.Future[int] = asyncio.get_running_loop().create_future()
    steps: list[str] = []

    async def slow() -> int:
        steps.append("before")
        value = await gate
        steps.append("after")
        await asyncio.sleep(0)  # a bare yield to the loop
        return value + 1

    started = start_eagerly(slow(), asyncio.get_running_loop())
    assert isinstance(started, asyncio.Task)
    assert steps == ["before"]  # ran up to its first wait, synchronously
    gate.set_result(41)
    assert await started == 42
    assert steps == ["before", "after"]


async def test_exceptions_reach_the_caller_or_the_task() -> None:
    async def fails_at_once() -> None:
        raise ValueError("first step")

    with pytest.raises(ValueError, match="first step"):
        start_eagerly(fails_at_once(), asyncio.get_running_loop())

    gate: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    async def fails_later() -> None:
        await gate
        raise KeyError("later")

    task = start_eagerly(fails_later(), asyncio.get_running_loop())
    assert isinstance(task, asyncio.Task)
    gate.set_result(None)
    with pytest.raises(KeyError):
        await task


async def test_cancelling_the_task_cancels_the_coroutine() -> None:
    cleaned: list[str] = []
    never: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    async def waits_forever() -> None:
        try:
            await never
        finally:
            cleaned.append("finally")

    task = start_eagerly(waits_forever(), asyncio.get_running_loop())
    assert isinstance(task, asyncio.Task)
    await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert cleaned == ["finally"]
    assert never.cancelled()


async def test_a_failed_wait_is_raised_inside_the_coroutine() -> None:
    gate: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    async def handles() -> str:
        try:
            await gate
        except RuntimeError as exc:
            return f"handled {exc}"
        return "no error"

    task = start_eagerly(handles(), asyncio.get_running_loop())
    assert isinstance(task, asyncio.Task)
    gate.set_exception(RuntimeError("backend down"))
    assert await task == "handled backend down"


async def test_context_changes_stay_inside_the_coroutine() -> None:
    gate: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    seen: list[str] = []

    async def sets() -> None:
        marker.set("inside")
        await gate
        seen.append(marker.get())

    task = start_eagerly(sets(), asyncio.get_running_loop())
    assert marker.get() == "caller"
    assert isinstance(task, asyncio.Task)
    gate.set_result(None)
    await task
    assert seen == ["inside"]  # the task goes on in the coroutine's own context
    assert marker.get() == "caller"
