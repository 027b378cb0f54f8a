"""Accepted tracking calls survive a kill -9 of the server: a `serve` process
takes Segment batches under open-loop load, is killed (SIGKILL) halfway and
started again on the same data directory; every call answered 200 is then in
the events table and applied to profiles (bench/ingest.py's kill run, short)."""

from __future__ import annotations

import pathlib

import pytest

from bench.ingest import Server, kill_run


@pytest.mark.timeout(240)
async def test_every_accepted_call_survives_a_kill_of_the_server(tmp_path: pathlib.Path) -> None:
    server = Server(tmp_path / "data", pin=False)
    await server.start()
    try:
        run = await kill_run(server, rate=20.0, batch=25, seconds=3.0, users=50)
    finally:
        server.stop()
    assert run.accepted >= 20 * 25 * 2  # answered before and after the kill
    assert run.missing_from_events == 0
    assert run.missing_from_profiles == 0
