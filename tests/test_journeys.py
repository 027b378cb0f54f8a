"""Journeys end to end over REST, on the embedded Temporal dev server the
platform starts itself, with a real SMTP server: a journey's graph is
checked when saved (each problem naming its node), published, a person
enters (once per key; once ever with re-entry NEVER), gets the first
email, waits (a Temporal timer), is sent down the decision's branch by a
trait, gets the second email, and completes; pausing holds people at their
next step and resuming lets them go on."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from typing import Any

import pytest
from temporalio.worker import Replayer

from services.journeys.workflow import JourneyWorkflow
from tests.conftest import Env
from tests.smtp_server import SmtpServer, serve_smtp
from tests.test_audience_segments import ingest, profile_of
from tests.test_audience_service import call
from tests.test_messaging import provider, template


@pytest.fixture
def smtp() -> Iterator[SmtpServer]:
    yield from serve_smtp()


def email(subject: str) -> dict[str, Any]:
    return {"displayName": subject, "channel": "MESSAGE_CHANNEL_EMAIL",
            "contents": {"en": {"subject": subject + " {{ profile.first_name }}",
                                "text": "{{ data.note | default: 'hi' }}"}}}  # fmt: skip


async def instance_when(env: Env, name: str, done: Any, within: float = 20.0) -> dict[str, Any]:
    deadline = time.monotonic() + within
    while True:
        status, body = await call(env, "GET", name)
        assert status == 200, body
        if done(body["instance"]):
            found: dict[str, Any] = body["instance"]
            return found
        assert time.monotonic() < deadline, body
        await asyncio.sleep(0.1)


async def subjects_when(smtp: SmtpServer, to: str, count: int, within: float = 5.0) -> list[str]:
    """The subjects of the emails to `to`, once `count` have come (a step
    recorded means its message is queued; the sender delivers it soon)."""
    deadline = time.monotonic() + within
    while True:
        subjects = [m["Subject"] for m in smtp.to(to)]
        if len(subjects) >= count or time.monotonic() > deadline:
            return subjects
        await asyncio.sleep(0.05)


async def onboarding(env: Env) -> dict[str, Any]:
    welcome = await template(env, email("Welcome"))
    pro = await template(env, email("Pro tips"))
    status, body = await call(env, "POST", "tenants/acme/journeys", {
        "displayName": "Onboarding",
        "trigger": {"api": {}},
        "nodes": [
            {"id": "welcome", "send": {"template": welcome["name"]}, "next": "pause"},
            {"id": "pause", "wait": {"duration": "1s"}, "next": "plan"},
            {"id": "plan", "decision": {"branches": [
                {"trait": "plan", "comparison": "TRAIT_COMPARISON_EQUALS", "value": "pro",
                 "next": "tips"}], "otherwise": "bye"}},
            {"id": "tips", "send": {"template": pro["name"], "data": {"note": "for pros"}}},
            {"id": "bye", "exit": {}},
        ]})  # fmt: skip
    assert status == 200, body
    journey: dict[str, Any] = body["journey"]
    return journey


async def test_a_person_walks_a_journey(env: Env, smtp: SmtpServer) -> None:
    await provider(env, smtp.port)
    journey = await onboarding(env)
    name = journey["name"]
    assert journey["state"] == "JOURNEY_STATE_DRAFT" and journey.get("version", 0) == 0
    assert journey["reentry"] == "REENTRY_POLICY_NEVER"
    await ingest(env, {"type": "identify", "userId": "ana", "traits": {
        "email": "ana@example.com", "first_name": "Ana", "plan": "pro"}})  # fmt: skip
    # nobody enters a draft
    status, answer = await call(env, "POST", f"{name}:enter", {"userId": "ana"})
    assert status == 400 and "DRAFT" in answer["error"]["message"]
    status, body = await call(env, "POST", f"{name}:publish", {})
    assert status == 200, body
    assert body["journey"]["state"] == "JOURNEY_STATE_ACTIVE" and body["journey"]["version"] == 1

    status, entered = await call(env, "POST", f"{name}:enter", {
        "userId": "ana", "data": {"order": "A-1"}, "idempotencyKey": "signup-ana"})  # fmt: skip
    assert status == 200 and entered["created"] is True, entered
    instance = entered["instance"]
    assert instance["profile"] == await profile_of(env, "ana")
    # once: again with the key, or without (re-entry NEVER)
    for again in ({"userId": "ana", "idempotencyKey": "signup-ana"}, {"userId": "ana"}):
        status, repeat = await call(env, "POST", f"{name}:enter", again)
        assert status == 200 and repeat.get("created", False) is False
        assert repeat["instance"]["name"] == instance["name"]

    done = await instance_when(
        env, instance["name"], lambda i: i["state"] == "INSTANCE_STATE_COMPLETED"
    )
    steps = [(h.get("node", ""), h["outcome"].split(" ")[0]) for h in done["history"]]
    assert steps == [("welcome", "message"), ("pause", "waiting"), ("plan", "branch"),
                     ("tips", "message"), ("", "reached")], steps  # fmt: skip
    waited = int(done["history"][2]["time"] > done["history"][1]["time"])
    assert waited
    subjects = await subjects_when(smtp, "ana@example.com", 2)
    assert subjects == ["Welcome Ana", "Pro tips Ana"]
    (tips,) = [m for m in smtp.to("ana@example.com") if m["Subject"].startswith("Pro")]
    assert tips.get_content().strip() == "for pros"  # the step's data

    # someone not on the pro plan leaves at the exit step
    await ingest(env, {"type": "identify", "userId": "ben", "traits": {
        "email": "ben@example.com", "first_name": "Ben", "plan": "free"}})  # fmt: skip
    status, entered = await call(env, "POST", f"{name}:enter", {"userId": "ben"})
    left = await instance_when(
        env, entered["instance"]["name"], lambda i: i["state"] == "INSTANCE_STATE_EXITED"
    )
    assert left["currentNode"] == "bye" and left["exitReason"] == "exit step"
    status, listed = await call(env, "GET", f"{name}/instances")
    assert [i["profile"] for i in listed["instances"]] == [
        await profile_of(env, "ben"), await profile_of(env, "ana")
    ]  # fmt: skip
    status, listed = await call(env, "GET", f"{name}/instances?state=INSTANCE_STATE_EXITED")
    assert [i["name"] for i in listed["instances"]] == [left["name"]]
    # a person's ways through every journey
    ana = await profile_of(env, "ana")
    status, listed = await call(env, "GET", f"{ana}/journeyInstances")
    assert [i["name"] for i in listed["instances"]] == [done["name"]]
    status, listed = await call(env, "GET", f"{ana}/journeyInstances?state=INSTANCE_STATE_EXITED")
    assert listed.get("instances", []) == []
    status, _ = await call(env, "GET", f"{ana}/journeyInstances", tenant="globex")
    assert status == 403

    # The workers run the workflow outside Temporal's sandbox (for speed):
    # both ways' recorded histories replay in the sandbox, which fails on
    # anything non-deterministic, and to the same end.
    client = await env.running.platform.api("journeys").engine.client()
    replayer = Replayer(workflows=[JourneyWorkflow])
    for way in (done, left):
        history = await client.get_workflow_handle(way["name"].rsplit("/", 1)[1]).fetch_history()
        replayed = await replayer.replay_workflow(history, raise_on_replay_failure=False)
        assert replayed.replay_failure is None, replayed.replay_failure


async def test_pausing_holds_people_at_their_next_step(env: Env, smtp: SmtpServer) -> None:
    await provider(env, smtp.port)
    journey = await onboarding(env)
    name = journey["name"]
    await call(env, "POST", f"{name}:publish", {})
    await ingest(env, {"type": "identify", "userId": "cy", "traits": {
        "email": "cy@example.com", "first_name": "Cy", "plan": "pro"}})  # fmt: skip
    status, entered = await call(env, "POST", f"{name}:enter", {"userId": "cy"})
    assert status == 200, entered
    await instance_when(env, entered["instance"]["name"],
                        lambda i: i.get("currentNode") == "pause")  # fmt: skip
    status, paused = await call(env, "POST", f"{name}:pause", {})
    assert status == 200 and paused["journey"]["state"] == "JOURNEY_STATE_PAUSED"
    held = await instance_when(
        env, entered["instance"]["name"],
        lambda i: i["history"][-1]["outcome"] == "the journey is paused")  # fmt: skip
    assert held["state"] == "INSTANCE_STATE_WAITING"
    await asyncio.sleep(1.5)
    assert [m["Subject"] for m in smtp.to("cy@example.com")] == ["Welcome Cy"]
    status, answer = await call(env, "POST", f"{name}:enter", {"userId": "cy"})
    assert status == 400  # nobody enters a paused journey
    status, resumed = await call(env, "POST", f"{name}:resume", {})
    assert resumed["journey"]["state"] == "JOURNEY_STATE_ACTIVE"
    await instance_when(env, entered["instance"]["name"],
                        lambda i: i["state"] == "INSTANCE_STATE_COMPLETED")  # fmt: skip
    assert await subjects_when(smtp, "cy@example.com", 2) == ["Welcome Cy", "Pro tips Cy"]
    # the rest of the lifecycle: COMPLETED (nobody enters), then ARCHIVED
    status, answer = await call(env, "POST", f"{name}:archive", {})
    assert status == 400  # ACTIVE: complete it first
    status, done = await call(env, "POST", f"{name}:complete", {})
    assert status == 200 and done["journey"]["state"] == "JOURNEY_STATE_COMPLETED"
    status, answer = await call(env, "POST", f"{name}:enter", {"userId": "cy"})
    assert status == 400
    status, archived = await call(env, "POST", f"{name}:archive", {})
    assert status == 200 and archived["journey"]["state"] == "JOURNEY_STATE_ARCHIVED"
    status, answer = await call(env, "PATCH", name, {"displayName": "again"})
    assert status == 400 and "archived" in answer["error"]["message"]


async def test_bad_journeys_are_named(env: Env) -> None:
    welcome = await template(env, email("Welcome"))
    send = {"id": "a", "send": {"template": welcome["name"]}, "next": "b"}
    cases: list[tuple[list[dict[str, Any]], str, str]] = [
        ([], "journey.nodes", "at least one"),
        ([{**send, "next": "nowhere"}], "journey.nodes[0].next", "no node 'nowhere'"),
        ([{**send, "next": ""}, {"id": "b", "exit": {}}], "journey.nodes[1]", "cannot be reached"),
        ([send, {"id": "b", "send": {"template": welcome["name"]}, "next": "a"}],
         "journey.nodes[0]", "loop with no wait"),
        ([{"id": "a", "send": {"template": "tenants/acme/templates/nope"}}],
         "journey.nodes[0].send.template", "no such template"),
        ([{"id": "a", "send": {"template": "tenants/globex/templates/x"}}],
         "journey.nodes[0].send.template", "another tenant"),
        ([{"id": "a", "wait": {"duration": "0s"}}], "journey.nodes[0].wait.duration", "1 second"),
        ([{"id": "a", "decision": {"branches": [{"trait": "plan", "next": "a"}],
                                   "otherwise": "x"}}],
         "journey.nodes[0].decision.branches[0].comparison", "required"),
        ([{"id": "a"}], "journey.nodes[0]", "one step is required"),
        ([{"id": "a b", "exit": {}}], "journey.nodes[0].id", "letters"),
        ([{"id": "a", "exit": {}}, {"id": "a", "exit": {}}], "journey.nodes[1].id", "used by"),
    ]  # fmt: skip
    for nodes, field, words in cases:
        status, answer = await call(env, "POST", "tenants/acme/journeys", {
            "displayName": "bad", "trigger": {"api": {}}, "nodes": nodes})  # fmt: skip
        assert status == 400, (nodes, answer)
        violations = {v["field"]: v["description"] for v in answer["error"]["fieldViolations"]}
        assert field in violations and words in violations[field], (nodes, violations)
    # a loop with a wait is fine
    status, body = await call(env, "POST", "tenants/acme/journeys", {
        "displayName": "drip", "trigger": {"event": {"event": "signed_up"}},
        "nodes": [send, {"id": "b", "wait": {"duration": "86400s"}, "next": "a"}]})  # fmt: skip
    assert status == 200, body
    assert body["journey"]["trigger"] == {"event": {"event": "signed_up"}}
    status, answer = await call(
        env,
        "POST",
        "tenants/acme/journeys",
        {"displayName": "x", "trigger": {"event": {}}, "nodes": [{"id": "a", "exit": {}}]},
    )
    assert status == 400 and "journey.trigger.event.event" in str(answer)
    # tenants and roles
    status, _ = await call(env, "GET", body["journey"]["name"], tenant="globex")
    assert status == 403
    status, _ = await call(env, "POST", "tenants/acme/journeys", {}, role="VIEWER")
    assert status == 403
    status, _ = await call(
        env,
        "POST",
        "tenants/acme/journeys",
        {"displayName": "two", "trigger": {"api": {}}, "nodes": [{"id": "a", "exit": {}}]},
    )
    status, listed = await call(env, "GET", "tenants/acme/journeys?pageSize=1")
    assert [j["displayName"] for j in listed["journeys"]] == ["two"]
    token = listed["nextPageToken"]
    status, listed = await call(env, "GET", f"tenants/acme/journeys?pageSize=1&pageToken={token}")
    assert [j["displayName"] for j in listed["journeys"]] == ["drip"]


async def test_events_make_people_enter(env: Env, smtp: SmtpServer) -> None:
    """An event-triggered journey (re-entry ALWAYS): each `cart_abandoned`
    event enters once (the same messageId again does not), its properties
    are the messages' data; a cooldown journey refuses an early return."""
    await provider(env, smtp.port)
    nudge = await template(env, {"displayName": "nudge", "channel": "MESSAGE_CHANNEL_EMAIL",
                                 "contents": {"en": {"subject": "Still want the {{ data.item }}?",
                                                     "text": "t"}}})  # fmt: skip
    status, body = await call(env, "POST", "tenants/acme/journeys", {
        "displayName": "Cart", "trigger": {"event": {"event": "cart_abandoned"}},
        "reentry": "REENTRY_POLICY_ALWAYS",
        "nodes": [{"id": "nudge", "send": {"template": nudge["name"]}}]})  # fmt: skip
    assert status == 200, body
    name = body["journey"]["name"]
    await call(env, "POST", f"{name}:publish", {})
    await ingest(env, {"type": "identify", "userId": "dee", "traits": {"email": "dee@example.com"}})
    event = {"type": "track", "userId": "dee", "event": "cart_abandoned",
             "properties": {"item": "red shoes"}, "messageId": "evt-1"}  # fmt: skip
    await ingest(env, event)
    await ingest(env, event)  # the same event again: applied once, entered once
    await ingest(env, {**event, "messageId": "evt-2", "properties": {"item": "blue hat"}})
    await ingest(env, {**event, "event": "page_viewed", "messageId": "evt-3"})  # not a trigger
    deadline = time.monotonic() + 20
    subjects: list[str] = []
    while time.monotonic() < deadline:
        subjects = sorted(m["Subject"] for m in smtp.to("dee@example.com"))
        if len(subjects) >= 2:
            break
        await asyncio.sleep(0.1)
    assert subjects == ["Still want the blue hat?", "Still want the red shoes?"]
    status, listed = await call(env, "GET", f"{name}/instances")
    assert len(listed["instances"]) == 2

    # AFTER_COOLDOWN: not again within the hour
    status, body = await call(env, "POST", "tenants/acme/journeys", {
        "displayName": "Hourly", "trigger": {"api": {}},
        "reentry": "REENTRY_POLICY_AFTER_COOLDOWN", "reentryCooldown": "3600s",
        "nodes": [{"id": "x", "exit": {}}]})  # fmt: skip
    assert status == 200, body
    hourly = body["journey"]["name"]
    assert body["journey"]["reentryCooldown"] == "3600s"
    await call(env, "POST", f"{hourly}:publish", {})
    status, first = await call(env, "POST", f"{hourly}:enter", {"userId": "dee"})
    assert status == 200 and first["created"] is True
    status, again = await call(env, "POST", f"{hourly}:enter", {"userId": "dee"})
    assert status == 400 and "again in" in again["error"]["message"]
    status, missing = await call(env, "POST", f"{hourly}:enter", {"userId": "nobody"})
    assert status == 400 and missing["error"]["fieldViolations"][0]["field"] == "user_id"


async def test_waiting_until_an_event_or_a_timeout(env: Env, smtp: SmtpServer) -> None:
    """Abandoned cart: after the nudge, wait up to 2 s for `order_completed`;
    who orders gets the thanks, who does not gets the reminder."""
    await provider(env, smtp.port)
    nudge, thanks, reminder = [await template(env, email(s)) for s in ("Nudge", "Thanks",
                                                                       "Reminder")]  # fmt: skip
    status, body = await call(env, "POST", "tenants/acme/journeys", {
        "displayName": "Cart", "trigger": {"api": {}},
        "nodes": [
            {"id": "nudge", "send": {"template": nudge["name"]}, "next": "wait"},
            {"id": "wait", "wait": {"duration": "2s", "untilEvent": "order_completed",
                                    "timeoutNext": "reminder"}, "next": "thanks"},
            {"id": "thanks", "send": {"template": thanks["name"]}},
            {"id": "reminder", "send": {"template": reminder["name"]}}]})  # fmt: skip
    assert status == 200, body
    name = body["journey"]["name"]
    wait = body["journey"]["nodes"][1]["wait"]
    assert (wait["untilEvent"], wait["timeoutNext"]) == ("order_completed", "reminder")
    await call(env, "POST", f"{name}:publish", {})
    for user in ("eve", "fay"):
        await ingest(env, {"type": "identify", "userId": user, "traits": {
            "email": f"{user}@example.com", "first_name": user.title()}})  # fmt: skip
    ways = {}
    for user in ("eve", "fay"):
        status, entered = await call(env, "POST", f"{name}:enter", {"userId": user})
        ways[user] = entered["instance"]["name"]
    await instance_when(env, ways["eve"], lambda i: i.get("currentNode") == "wait"
                        and i["state"] == "INSTANCE_STATE_WAITING")  # fmt: skip
    await ingest(env, {"type": "track", "userId": "eve", "event": "page_viewed"},
                 {"type": "track", "userId": "eve", "event": "order_completed"})  # fmt: skip
    eve = await instance_when(env, ways["eve"], lambda i: i["state"] == "INSTANCE_STATE_COMPLETED")
    fay = await instance_when(env, ways["fay"], lambda i: i["state"] == "INSTANCE_STATE_COMPLETED")
    assert [h["outcome"] for h in eve["history"]][2] == "event order_completed"
    assert [h["outcome"] for h in fay["history"]][2] == "timed out"
    deadline = time.monotonic() + 5
    while len(smtp.received) < 4:
        assert time.monotonic() < deadline, smtp.received
        await asyncio.sleep(0.05)
    assert [m["Subject"] for m in smtp.to("eve@example.com")] == ["Nudge Eve", "Thanks Eve"]
    assert [m["Subject"] for m in smtp.to("fay@example.com")] == ["Nudge Fay", "Reminder Fay"]
    # timeout_next only with until_event; and it must be a node
    status, answer = await call(env, "POST", "tenants/acme/journeys", {
        "displayName": "x", "trigger": {"api": {}},
        "nodes": [{"id": "w", "wait": {"duration": "2s", "timeoutNext": "w"}}]})  # fmt: skip
    assert status == 400 and "journey.nodes[0].wait.timeout_next" in str(answer)
