"""A journey's ways survive kill -9: `serve` (a real process, its embedded
Temporal dev server a child of it) sends a person the first email, and is
killed while the person waits; its dev server goes with it (nothing left
holding the database). Started again on the same data dir, the wait ends
and the second email goes: each email exactly once, counted at a real SMTP
server."""

from __future__ import annotations

import asyncio
import pathlib
import signal
import subprocess
import time
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest

from services.messaging.sender import RECORD_STEP
from tests.smtp_server import SmtpServer, serve_smtp
from tests.test_process import base_env, http_json, started

KEY = "cx_fixed_demo_key_for_journey_tests_0001"


@pytest.fixture
def smtp() -> Iterator[SmtpServer]:
    yield from serve_smtp()


def dev_servers(data: pathlib.Path) -> list[str]:
    """Temporal dev servers with their database in this data dir."""
    found = subprocess.run(["pgrep", "-f", f"{data}/journeys/temporal.db"],
                           capture_output=True, text=True, check=False)  # fmt: skip
    return found.stdout.split()


async def test_ways_survive_kill_9(tmp_path: pathlib.Path, smtp: SmtpServer) -> None:
    data = tmp_path / "data"
    env = base_env(CAMPAIGN_EXPRESS_DEMO_API_KEY=KEY)

    async def post(base: str, path: str, body: Any) -> Any:
        status, answer = await http_json("POST", f"{base}/v1/{path}", key=KEY, body=body)
        assert status == 200, answer
        return answer

    async with started(tmp_path, "first", data_dir=data, demo=True, env=env) as (proc, ports):
        base = f"http://127.0.0.1:{ports['http']}"
        await post(base, "tenants/demo/channelProviders", {
            "displayName": "local", "kind": "PROVIDER_KIND_SMTP",
            "config": {"host": "127.0.0.1", "port": str(smtp.port), "security": "none",
                       "from": "news@demo.example"}})  # fmt: skip
        names = []
        for subject in ("First", "Second"):
            made = await post(base, "tenants/demo/templates", {
                "displayName": subject, "channel": "MESSAGE_CHANNEL_EMAIL",
                "contents": {"en": {"subject": subject, "text": "t"}}})  # fmt: skip
            names.append(made["template"]["name"])
        made = await post(base, "tenants/demo/journeys", {
            "displayName": "Two emails", "trigger": {"api": {}},
            "nodes": [{"id": "one", "send": {"template": names[0]}, "next": "rest"},
                      {"id": "rest", "wait": {"duration": "4s"}, "next": "two"},
                      {"id": "two", "send": {"template": names[1]}}]})  # fmt: skip
        journey = made["journey"]["name"]
        await post(base, f"{journey}:publish", {})
        await post(base, "tenants/demo/events:ingest", {"batch": [
            {"type": "identify", "userId": "kim", "traits": {"email": "kim@example.com"}}],
            "waitForProfiles": True})  # fmt: skip
        entered = await post(base, f"{journey}:enter", {"userId": "kim"})
        instance = entered["instance"]["name"]
        deadline = time.monotonic() + 20
        while not smtp.to("kim@example.com"):
            assert time.monotonic() < deadline, proc.output()
            await asyncio.sleep(0.05)
        assert dev_servers(data), "the embedded dev server runs"
        proc.signal(signal.SIGKILL)  # while kim waits
        await proc.wait_exit(10)
    deadline = time.monotonic() + 10
    while dev_servers(data):  # it died with its parent
        assert time.monotonic() < deadline, dev_servers(data)
        await asyncio.sleep(0.1)
    assert [m["Subject"] for m in smtp.to("kim@example.com")] == ["First"]

    async with started(tmp_path, "again", data_dir=data, demo=True, env=env) as (proc, ports):
        base = f"http://127.0.0.1:{ports['http']}"
        # a step the killed worker had taken is tried again after its 10 s timeout
        deadline = time.monotonic() + 60
        while len(smtp.to("kim@example.com")) < 2:
            assert time.monotonic() < deadline, proc.output()
            await asyncio.sleep(0.1)
        while True:
            status, body = await http_json("GET", f"{base}/v1/{instance}", key=KEY)
            if body["instance"]["state"] == "INSTANCE_STATE_COMPLETED":
                break
            assert time.monotonic() < deadline, body
            await asyncio.sleep(0.1)
        await asyncio.sleep(1.0)  # nothing more comes
        assert [m["Subject"] for m in smtp.to("kim@example.com")] == ["First", "Second"]
        assert await proc.terminate() == 0, proc.output()
    assert not dev_servers(data)  # stopped with a clean shutdown too


async def test_a_broadcast_survives_kill_9(tmp_path: pathlib.Path, smtp: SmtpServer) -> None:
    """200 demo people, 100 a second: killed after the first pages went out,
    started again on the same data dir, the broadcast goes on from where it
    was; nobody gets the email twice, and everybody gets it but those whose
    message the kill left UNKNOWN."""
    data = tmp_path / "data"
    env = base_env(CAMPAIGN_EXPRESS_DEMO_API_KEY=KEY)

    async def post(base: str, path: str, body: Any) -> Any:
        status, answer = await http_json("POST", f"{base}/v1/{path}", key=KEY, body=body)
        assert status == 200, answer
        return answer

    async with started(tmp_path, "first", data_dir=data, demo=True, env=env) as (proc, ports):
        base = f"http://127.0.0.1:{ports['http']}"
        await post(base, "tenants/demo/channelProviders", {
            "displayName": "local", "kind": "PROVIDER_KIND_SMTP",
            "config": {"host": "127.0.0.1", "port": str(smtp.port), "security": "none",
                       "from": "news@demo.example"}})  # fmt: skip
        made = await post(base, "tenants/demo/templates", {
            "displayName": "Sale", "channel": "MESSAGE_CHANNEL_EMAIL",
            "contents": {"en": {"subject": "Sale", "text": "t"}}})  # fmt: skip
        has_email = {"trait": {"trait": "email", "comparison": "COMPARISON_EXISTS"}}
        segment = await post(base, "tenants/demo/segments", {
            "displayName": "Everyone with an email", "description": "",
            "condition": has_email})  # fmt: skip
        members = int(segment["segment"]["size"])
        assert members == 200
        made = await post(base, "tenants/demo/broadcasts", {
            "displayName": "Sale", "segment": segment["segment"]["name"],
            "template": made["template"]["name"], "perMinute": 6000})  # fmt: skip
        name = made["broadcast"]["name"]
        deadline = time.monotonic() + 20
        while len(smtp.received) < 30:
            assert time.monotonic() < deadline, proc.output()
            await asyncio.sleep(0.02)
        proc.signal(signal.SIGKILL)  # pages handed out, messages queued, some sent
        await proc.wait_exit(10)
    first = len(smtp.received)
    assert first < members, "killed before the end"

    async with started(tmp_path, "again", data_dir=data, demo=True, env=env) as (proc, ports):
        base = f"http://127.0.0.1:{ports['http']}"
        deadline = time.monotonic() + 60
        while True:
            status, body = await http_json("GET", f"{base}/v1/{name}", key=KEY)
            assert status == 200, body
            if body["broadcast"]["state"] == "BROADCAST_STATE_COMPLETED":
                break
            assert time.monotonic() < deadline, (body, proc.output())
            await asyncio.sleep(0.2)
        assert body["broadcast"]["progress"]["done"] == str(members)
        # What the kill caught between handing a message to the SMTP server
        # and recording it is UNKNOWN (it may or may not have gone out) and
        # is never sent again: at most RECORD_STEP of them.
        status, body = await http_json(
            "GET", f"{base}/v1/tenants/demo/messages?state=MESSAGE_STATE_UNKNOWN&pageSize=1000",
            key=KEY)  # fmt: skip
        assert status == 200, body
        unknown = set()
        for message in body.get("messages", []):  # (addressed when sent: the person's email)
            status, person = await http_json(
                "GET", f"{base}/v1/{message['recipient']['profile']}", key=KEY)  # fmt: skip
            assert status == 200, person
            unknown.add(person["profile"]["traits"]["email"])
        assert len(unknown) <= RECORD_STEP
        everyone = {f"person{n}@example.com" for n in range(members)}
        assert unknown <= everyone
        while len(smtp.received) < members - len(unknown):
            assert time.monotonic() < deadline, (len(smtp.received), proc.output())
            await asyncio.sleep(0.1)
        await asyncio.sleep(1.0)  # nothing more comes
        to = Counter(rcpt for r in smtp.received for rcpt in r.rcpt_tos)
        assert max(to.values()) == 1, "nobody gets it twice"
        assert everyone - unknown <= set(to) <= everyone, "everyone else gets it once"
        assert await proc.terminate() == 0, proc.output()
