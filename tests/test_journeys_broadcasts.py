"""Broadcasts over REST, with a real SMTP server: every member of a segment
gets the message once, paced, through pause and resume; a broadcast of
journey entries starts each member's way; a retried create makes one;
cancel stops for good; bad input names its field. (kill -9 during a
broadcast: tests/test_journeys_durability.py.)"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest

from tests.conftest import Env
from tests.smtp_server import SmtpServer, serve_smtp
from tests.test_audience_segments import create, ingest
from tests.test_audience_service import call
from tests.test_journeys import email
from tests.test_messaging import provider, template

VIP = {"trait": {"trait": "tier", "comparison": "COMPARISON_EQUALS", "value": "vip"}}
PEOPLE = 24


@pytest.fixture
def smtp() -> Iterator[SmtpServer]:
    yield from serve_smtp()


async def vips(env: Env, count: int = PEOPLE) -> dict[str, Any]:
    await ingest(env, *({"type": "identify", "userId": f"v{n:02d}",
                         "traits": {"email": f"v{n:02d}@example.com", "tier": "vip"}}
                        for n in range(count)))  # fmt: skip
    await ingest(env, {"type": "identify", "userId": "plain",
                       "traits": {"email": "plain@example.com", "tier": "basic"}})  # fmt: skip
    return await create(env, VIP, "VIPs")


async def broadcast_when(env: Env, name: str, done: Any, within: float = 30.0) -> dict[str, Any]:
    deadline = time.monotonic() + within
    while True:
        status, body = await call(env, "GET", name)
        assert status == 200, body
        if done(body["broadcast"]):
            found: dict[str, Any] = body["broadcast"]
            return found
        assert time.monotonic() < deadline, body
        await asyncio.sleep(0.1)


async def test_every_member_gets_the_message_once_through_pause_and_resume(
    env: Env, smtp: SmtpServer
) -> None:
    await provider(env, smtp.port)
    segment = await vips(env)
    sale = await template(env, email("Sale"))
    body = {
        "displayName": "VIP sale",
        "segment": segment["name"],
        "template": sale["name"],
        "perMinute": 240,
    }  # fmt: skip  (4 a second: a page of 4 each second)
    status, made = await call(env, "POST", "tenants/acme/broadcasts?requestId=sale-1", body)
    assert status == 200, made
    broadcast = made["broadcast"]
    name = broadcast["name"]
    assert broadcast["state"] == "BROADCAST_STATE_RUNNING"
    assert broadcast["progress"]["members"] == str(PEOPLE)
    # a retried create: the same broadcast
    status, again = await call(env, "POST", "tenants/acme/broadcasts?requestId=sale-1", body)
    assert status == 200 and again["broadcast"]["name"] == name

    await broadcast_when(env, name, lambda b: int(b["progress"].get("done", 0)) >= 4)
    status, paused = await call(env, "POST", f"{name}:pause", {})
    assert status == 200 and paused["broadcast"]["state"] == "BROADCAST_STATE_PAUSED"
    await asyncio.sleep(1.5)  # a page handed out before the pause finishes; then nothing
    held = await broadcast_when(env, name, lambda b: True)
    await asyncio.sleep(2.0)
    still = await broadcast_when(env, name, lambda b: True)
    assert still["progress"] == held["progress"] and int(held["progress"]["planned"]) < PEOPLE
    status, resumed = await call(env, "POST", f"{name}:resume", {})
    assert resumed["broadcast"]["state"] == "BROADCAST_STATE_RUNNING"
    done = await broadcast_when(env, name, lambda b: b["state"] == "BROADCAST_STATE_COMPLETED")
    assert done["progress"] == {"members": str(PEOPLE), "planned": str(PEOPLE),
                                "done": str(PEOPLE)}  # fmt: skip
    assert "endTime" in done

    deadline = time.monotonic() + 10
    while len(smtp.received) < PEOPLE:
        assert time.monotonic() < deadline, len(smtp.received)
        await asyncio.sleep(0.05)
    await asyncio.sleep(0.5)
    to = Counter(rcpt for r in smtp.received for rcpt in r.rcpt_tos)
    assert to == Counter({f"v{n:02d}@example.com": 1 for n in range(PEOPLE)})  # once each
    status, listed = await call(env, "GET", "tenants/acme/broadcasts")
    assert [b["name"] for b in listed["broadcasts"]] == [name]
    status, answer = await call(env, "POST", f"{name}:pause", {})
    assert status == 400 and "COMPLETED" in answer["error"]["message"]


async def test_journey_entries_cancel_and_bad_input(env: Env, smtp: SmtpServer) -> None:
    await provider(env, smtp.port)
    segment = await vips(env, 6)
    welcome = await template(env, email("Welcome"))
    status, body = await call(env, "POST", "tenants/acme/journeys", {
        "displayName": "VIP welcome", "trigger": {"api": {}},
        "nodes": [{"id": "hi", "send": {"template": welcome["name"]}}]})  # fmt: skip
    journey = body["journey"]["name"]
    entries = {"displayName": "VIP entries", "segment": segment["name"], "journey": journey}
    status, answer = await call(env, "POST", "tenants/acme/broadcasts", entries)
    assert status == 400  # a DRAFT journey
    assert answer["error"]["fieldViolations"][0]["field"] == "broadcast.journey"
    await call(env, "POST", f"{journey}:publish", {})
    status, made = await call(env, "POST", "tenants/acme/broadcasts", entries)
    assert status == 200, made
    done = await broadcast_when(env, made["broadcast"]["name"],
                                lambda b: b["state"] == "BROADCAST_STATE_COMPLETED")  # fmt: skip
    assert done["progress"]["done"] == "6" and done["journey"] == journey
    status, listed = await call(env, "GET", f"{journey}/instances")
    assert len(listed["instances"]) == 6
    # again: re-entry NEVER keeps everyone out (all skipped)
    status, made = await call(env, "POST", "tenants/acme/broadcasts", entries)
    done = await broadcast_when(env, made["broadcast"]["name"],
                                lambda b: b["state"] == "BROADCAST_STATE_COMPLETED")  # fmt: skip
    assert done["progress"]["skipped"] == "6"

    # cancelled: stopped for good
    slow = {"displayName": "slow", "segment": segment["name"], "template": welcome["name"],
            "perMinute": 1}  # fmt: skip
    status, made = await call(env, "POST", "tenants/acme/broadcasts", slow)
    name = made["broadcast"]["name"]
    status, cancelled = await call(env, "POST", f"{name}:cancel", {})
    assert cancelled["broadcast"]["state"] == "BROADCAST_STATE_CANCELLED"
    status, answer = await call(env, "POST", f"{name}:resume", {})
    assert status == 400 and "CANCELLED" in answer["error"]["message"]

    cases = [
        ({"displayName": "x", "template": welcome["name"]}, "broadcast.segment"),
        ({"displayName": "x", "segment": "tenants/acme/segments/nope",
          "template": welcome["name"]}, "broadcast.segment"),
        ({"displayName": "x", "segment": segment["name"]}, "broadcast.template"),
        ({"displayName": "x", "segment": segment["name"], "template": "tenants/acme/templates/no"},
         "broadcast.template"),
        ({"displayName": "x", "segment": segment["name"], "template": welcome["name"],
          "perMinute": 2_000_000}, "broadcast.per_minute"),
        ({"displayName": "", "segment": segment["name"], "template": welcome["name"]},
         "broadcast.display_name"),
    ]  # fmt: skip
    for bad, field in cases:
        status, answer = await call(env, "POST", "tenants/acme/broadcasts", bad)
        assert status == 400, (field, answer)
        assert field in [v["field"] for v in answer["error"]["fieldViolations"]], (field, answer)
    status, answer = await call(env, "GET", "tenants/acme/broadcasts/nope")
    assert status == 404
    status, answer = await call(env, "GET", name, tenant="globex")
    assert status == 403
