"""Journeys among journeys, over REST on the embedded Temporal dev server
with a real SMTP server: a cap on ways under way, prerequisites (only who
completed A enters B), start_after (nobody enters C before B has ended),
dependency cycles refused, conflicts between ACTIVE journeys reported
before activation (ValidateJourney) and at it (PublishJourney), and ways
moved to a new version by a node mapping (the rest stay on theirs)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from services.journeys.model import Definition, Node, first_send_seconds
from tests.conftest import Env
from tests.smtp_server import SmtpServer, serve_smtp
from tests.test_audience_segments import ingest
from tests.test_audience_service import call
from tests.test_journeys import email, instance_when, subjects_when
from tests.test_journeys_parallel import _journey, _person, _replays
from tests.test_messaging import provider, template


@pytest.fixture
def smtp() -> Iterator[SmtpServer]:
    yield from serve_smtp()


def _waits_for(event: str, seconds: str = "60s") -> dict[str, Any]:
    return {"duration": seconds, "untilEvent": event}


def test_the_first_message_comes_after_the_shortest_wait() -> None:
    mail = "tenants/acme/templates/t"
    nodes = (Node("d", "decision", otherwise="slow", branches=()), Node("slow", "wait", "m",
             seconds=7200), Node("m", "send", template=mail))  # fmt: skip
    assert first_send_seconds(Definition(nodes=nodes)) == 7200
    # a wait for an event may end at once; its timeout branch takes the whole wait
    quick = (Node("w", "wait", "m", seconds=600, until_event="clicked", timeout_next="late"),
             Node("m", "send", template=mail), Node("late", "exit"))  # fmt: skip
    assert first_send_seconds(Definition(nodes=quick)) == 0
    assert first_send_seconds(Definition(nodes=(Node("x", "exit"),))) is None


async def test_a_cap_on_ways_under_way(env: Env, smtp: SmtpServer) -> None:
    await provider(env, smtp.port)
    name = await _journey(env, {
        "displayName": "Capped", "trigger": {"api": {}}, "maxConcurrentWays": 2,
        "nodes": [{"id": "hold", "wait": _waits_for("done")}]})  # fmt: skip
    for user in ("a1", "a2", "a3"):
        await _person(env, user)
    ways = {}
    for user in ("a1", "a2"):
        status, entered = await call(env, "POST", f"{name}:enter", {"userId": user})
        assert status == 200, entered
        ways[user] = entered["instance"]["name"]
    status, refused = await call(env, "POST", f"{name}:enter", {"userId": "a3"})
    assert status == 400 and "its cap" in refused["error"]["message"], refused
    status, body = await call(env, "GET", name)
    assert (body["journey"]["maxConcurrentWays"], body["journey"]["runningWays"]) == (2, "2")
    # one way ends: room for one more
    await instance_when(env, ways["a1"], lambda i: i["state"] == "INSTANCE_STATE_WAITING")
    await ingest(env, {"type": "track", "userId": "a1", "event": "done"})
    await instance_when(env, ways["a1"], lambda i: i["state"] == "INSTANCE_STATE_COMPLETED")
    status, body = await call(env, "GET", name)
    assert body["journey"]["runningWays"] == "1"
    status, entered = await call(env, "POST", f"{name}:enter", {"userId": "a3"})
    assert status == 200, entered
    # a retried entry of a way under way is not counted twice
    status, again = await call(env, "POST", f"{name}:enter", {"userId": "a3"})
    assert status == 200 and again["instance"]["name"] == entered["instance"]["name"]
    status, body = await call(env, "GET", name)
    assert body["journey"]["runningWays"] == "2"
    status, bad = await call(env, "PATCH", f"{name}?updateMask=maxConcurrentWays",
                             {"maxConcurrentWays": -1})  # fmt: skip
    assert status == 400 and "journey.max_concurrent_ways" in str(bad), bad


async def test_prerequisites_start_after_and_cycles(env: Env, smtp: SmtpServer) -> None:
    await provider(env, smtp.port)
    welcome = await template(env, email("Welcome"))
    first = await _journey(env, {
        "displayName": "First", "trigger": {"api": {}},
        "nodes": [{"id": "hi", "send": {"template": welcome["name"]}}]})  # fmt: skip
    second = await _journey(env, {
        "displayName": "Second", "trigger": {"api": {}}, "prerequisites": [first],
        "nodes": [{"id": "hold", "wait": {"duration": "60s"}}]})  # fmt: skip
    third = await _journey(env, {
        "displayName": "Third", "trigger": {"api": {}}, "startAfter": second,
        "nodes": [{"id": "hi", "send": {"template": welcome["name"]}}]})  # fmt: skip
    for user in ("done", "new"):
        await _person(env, user)
    status, entered = await call(env, "POST", f"{first}:enter", {"userId": "done"})
    await instance_when(env, entered["instance"]["name"],
                        lambda i: i["state"] == "INSTANCE_STATE_COMPLETED")  # fmt: skip
    status, entered = await call(env, "POST", f"{second}:enter", {"userId": "done"})
    assert status == 200, entered
    status, refused = await call(env, "POST", f"{second}:enter", {"userId": "new"})
    assert status == 400, refused
    assert f"has not completed {first}" in refused["error"]["message"]
    # the third starts once the second has ended
    status, refused = await call(env, "POST", f"{third}:enter", {"userId": "done"})
    assert status == 400 and "ACTIVE" in refused["error"]["message"], refused
    status, _ = await call(env, "POST", f"{second}:complete", {})
    assert status == 200
    status, entered = await call(env, "POST", f"{third}:enter", {"userId": "done"})
    assert status == 200, entered

    # what saving refuses: unknown journeys, itself, another tenant's, a cycle
    status, bad = await call(env, "POST", "tenants/acme/journeys", {
        "displayName": "x", "trigger": {"api": {}},
        "prerequisites": ["tenants/acme/journeys/nope", "tenants/other/journeys/j"],
        "startAfter": "somewhere",
        "nodes": [{"id": "end", "exit": {}}]})  # fmt: skip
    fields = {v["field"]: v["description"] for v in bad["error"]["fieldViolations"]}
    assert fields == {"journey.prerequisites[1]": "another tenant's",
                      "journey.start_after": "must be tenants/{t}/journeys/{id}"}, bad  # fmt: skip
    status, bad = await call(env, "PATCH", f"{first}?updateMask=prerequisites",
                             {"prerequisites": ["tenants/acme/journeys/nope"]})  # fmt: skip
    assert status == 400 and "no such journey" in str(bad), bad
    status, bad = await call(env, "PATCH", f"{first}?updateMask=startAfter", {"startAfter": first})
    assert status == 400 and "not this journey" in str(bad), bad
    status, bad = await call(env, "PATCH", f"{first}?updateMask=prerequisites",
                             {"prerequisites": [third]})  # fmt: skip
    assert status == 400, bad
    cycle = f"a cycle of dependencies: {first} -> {third} -> {second} -> {first}"
    assert cycle in str(bad), bad


async def test_conflicts_are_reported_before_and_at_activation(env: Env, smtp: SmtpServer) -> None:
    await provider(env, smtp.port)
    hello = await template(env, email("Hello"))
    send = {"id": "hi", "send": {"template": hello["name"]}}

    async def draft(display: str, **more: Any) -> str:
        nodes = more.pop("nodes", [send])
        status, made = await call(env, "POST", "tenants/acme/journeys", {
            "displayName": display, "trigger": {"event": {"event": "signed_up"}},
            "nodes": nodes, **more})  # fmt: skip
        assert status == 200, made
        return str(made["journey"]["name"])

    welcome = await draft("Welcome")
    status, published = await call(env, "POST", f"{welcome}:publish", {})
    assert status == 200 and "conflicts" not in published, published
    promo = await draft("Promo", nodes=[
        {"id": "soon", "wait": {"duration": "3600s"}, "next": "hi"}, send])  # fmt: skip
    status, checked = await call(env, "POST", f"{promo}:validate", {})
    assert status == 200, checked
    assert checked.get("problems", []) == []
    assert checked["conflicts"] == [{"journey": welcome, "gap": "3600s",
                                     "reason": "both start at the event 'signed_up'"}]  # fmt: skip
    status, published = await call(env, "POST", f"{promo}:publish", {})
    assert status == 200 and published["conflicts"][0]["journey"] == welcome, published
    # no conflict: two days apart; one exclusive group; one after the other
    later = await draft("Later", nodes=[
        {"id": "days", "wait": {"duration": "172800s"}, "next": "hi"}, send])  # fmt: skip
    grouped = await draft("Grouped", exclusiveGroup="onboarding")
    status, _ = await call(env, "PATCH", f"{welcome}?updateMask=exclusiveGroup",
                           {"exclusiveGroup": "onboarding"})  # fmt: skip
    await call(env, "POST", f"{welcome}:publish", {})
    after = await draft("After", prerequisites=[promo], nodes=[
        {"id": "days", "wait": {"duration": "172800s"}, "next": "hi"}, send])  # fmt: skip
    for name, expected in ((later, []), (grouped, [promo]), (after, [])):
        status, checked = await call(env, "POST", f"{name}:validate", {})
        found = [c["journey"] for c in checked.get("conflicts", [])]
        assert found == expected, (name, checked)
    # problems are reported, not raised: the template is gone
    status, _ = await call(env, "DELETE", hello["name"])
    status, checked = await call(env, "POST", f"{later}:validate", {})
    assert status == 200, checked
    assert checked["problems"] == [{"field": "journey.nodes[1].send.template",
                                    "description": "node 'hi': no such template"}]  # fmt: skip


async def test_ways_move_to_a_new_version_by_a_node_mapping(env: Env, smtp: SmtpServer) -> None:
    await provider(env, smtp.port)
    one, old, new = [await template(env, email(s)) for s in ("One", "Old", "New")]
    name = await _journey(env, {
        "displayName": "Versions", "trigger": {"api": {}},
        "nodes": [
            {"id": "one", "send": {"template": one["name"]}, "next": "hold"},
            {"id": "hold", "wait": {"duration": "120s"}, "next": "old"},
            {"id": "old", "send": {"template": old["name"]}},
        ]})  # fmt: skip
    ways = {}
    for user in ("m1", "m2"):
        await _person(env, user)
        status, entered = await call(env, "POST", f"{name}:enter", {"userId": user})
        ways[user] = entered["instance"]["name"]
    for way in ways.values():
        await instance_when(env, way, lambda i: i["state"] == "INSTANCE_STATE_WAITING")
    v2 = [{"id": "one", "send": {"template": one["name"]}, "next": "short"},
          {"id": "short", "wait": {"duration": "1s"}, "next": "new"},
          {"id": "new", "send": {"template": new["name"]}}]  # fmt: skip
    status, _ = await call(env, "PATCH", f"{name}?updateMask=nodes", {"nodes": v2})
    assert status == 200
    status, bad = await call(env, "POST", f"{name}:publish", {"nodeMapping": {"hold": "nope"}})
    assert status == 400 and "node_mapping[hold]" in str(bad), bad
    # without a mapping, ways stay on their version
    status, published = await call(env, "POST", f"{name}:publish", {})
    assert status == 200 and published["journey"]["version"] == 2, published
    assert "migratingWays" not in published
    status, body = await call(env, "GET", ways["m1"])
    assert (body["instance"]["version"], body["instance"]["state"]) == (
        1, "INSTANCE_STATE_WAITING")  # fmt: skip
    # with one, the waiting ways go on at the new version's node
    status, published = await call(env, "POST", f"{name}:publish",
                                   {"nodeMapping": {"hold": "short"}})  # fmt: skip
    assert status == 200, published
    assert (published["journey"]["version"], published["migratingWays"]) == (3, "2")
    moved = {}
    for user, way in ways.items():
        moved[user] = await instance_when(
            env, way, lambda i: i["state"] == "INSTANCE_STATE_COMPLETED"
        )
        assert moved[user]["version"] == 3, moved[user]
        outcomes = [h["outcome"] for h in moved[user]["history"]]
        assert "moved from version 1 at hold to version 3 at short" in outcomes, outcomes
        assert await subjects_when(smtp, f"{user}@example.com", 2) == [
            f"One {user.title()}", f"New {user.title()}"]  # fmt: skip
    await _replays(env, *moved.values())
