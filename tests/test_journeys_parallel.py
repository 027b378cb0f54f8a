"""Parallel branches and their join, over REST on the embedded Temporal dev
server with a real SMTP server: the branches of a parallel step run at the
same time (each with its own waits) and meet at the join, which goes on when
all arrived (ALL) or at the first (ANY, the others stop); an exit on one
branch takes the person out and stops the rest; a simulation shows the
branches and when the join comes; saving refuses graphs whose branches
leak, naming the node."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest
from temporalio.worker import Replayer

from services.journeys.domain import simulate
from services.journeys.model import Branch, Definition, Node, check
from services.journeys.workflow import JourneyWorkflow
from tests.conftest import Env
from tests.smtp_server import SmtpServer, serve_smtp
from tests.test_audience_segments import ingest
from tests.test_audience_service import call
from tests.test_journeys import email, instance_when, subjects_when
from tests.test_messaging import provider, template


@pytest.fixture
def smtp() -> Iterator[SmtpServer]:
    yield from serve_smtp()


async def _no_template(tenant: str, template: str) -> bool:
    return True  # (the graph's shape is what these checks are about)


async def _problems(*nodes: Node) -> list[str]:
    found = await check(Definition(nodes=nodes), "acme", _no_template)
    return [f"{v.field}: {v.description}" for v in found]


async def test_saving_checks_that_branches_stay_inside() -> None:
    fork = Node("fork", "parallel", forks=("a", "b"), join="meet")
    good = (fork, Node("a", "wait", "meet", seconds=5), Node("b", "exit"),
            Node("meet", "join", "end"), Node("end", "exit"))  # fmt: skip
    assert await _problems(*good) == []
    # nested: a parallel step inside a branch, its join inside too
    inner = Node("inner", "parallel", forks=("x", "y"), join="inner_meet")
    nested = (fork, Node("a", "wait", "inner", seconds=5), inner,
              Node("x", "wait", "inner_meet", seconds=1),
              Node("y", "wait", "inner_meet", seconds=2),
              Node("inner_meet", "join", "meet"), Node("b", "exit"),
              Node("meet", "join"))  # fmt: skip
    assert await _problems(*nested) == []

    back = (fork, Node("a", "wait", "fork", seconds=5), Node("b", "exit"), Node("meet", "join"))
    assert any("nodes[0].parallel.branches: node 'fork': a branch leads back to it" in p
               for p in await _problems(*back))  # fmt: skip
    not_a_join = (fork, Node("a", "wait", "meet", seconds=5), Node("b", "exit"),
                  Node("meet", "wait", seconds=1))  # fmt: skip
    assert await _problems(*not_a_join) == [
        "journey.nodes[0].parallel.join: node 'fork': 'meet' is not a join step"]  # fmt: skip
    orphan = (Node("w", "wait", "j", seconds=1), Node("j", "join"))
    assert await _problems(*orphan) == ["journey.nodes[1]: node 'j': a join of no parallel step"]
    # a node outside the branches leading into them (or straight to the join)
    into = (Node("start", "decision", otherwise="fork",
                 branches=(Branch("vip", "exists", None, "a"),)),
            fork, Node("a", "wait", "meet", seconds=5), Node("b", "exit"),
            Node("meet", "join"))  # fmt: skip
    assert any(p.startswith("journey.nodes[0]: node 'start' leads to 'a', inside the branches")
               for p in await _problems(*into)), await _problems(*into)  # fmt: skip
    # a branch leaving through another parallel step's join
    leak = (fork, Node("a", "wait", "inner_meet", seconds=1), Node("b", "exit"),
            Node("meet", "join"), Node("outer", "wait", "inner", seconds=1),
            inner, Node("x", "wait", "inner_meet", seconds=1), Node("y", "exit"),
            Node("inner_meet", "join", "meet"))  # fmt: skip
    assert any("a branch leads out through 'inner_meet'" in p for p in await _problems(*leak))
    few = (Node("fork", "parallel", forks=("a",), join="meet"), Node("a", "wait", "meet",
           seconds=1), Node("meet", "join", mode="some"))  # fmt: skip
    assert await _problems(*few) == [
        "journey.nodes[0].parallel.branches: node 'fork': 2-10 branches",
        "journey.nodes[2].join.mode: node 'meet': ALL or ANY",
    ]


def test_a_simulation_walks_each_branch_and_joins_when_they_arrive() -> None:
    fork = Node("fork", "parallel", forks=("a", "b"), join="meet")
    nodes = (fork, Node("a", "wait", "mail", seconds=10), Node("mail", "send", "meet",
             template="tenants/acme/templates/t"), Node("b", "wait", "meet", seconds=30),
             Node("meet", "join", "bye"), Node("bye", "exit"))  # fmt: skip
    walked = simulate(Definition(nodes=nodes), "p1", {}, set(), 0)
    assert walked.steps == [
        ("fork", "2 branches", 0.0),
        ("a", "would wait 10s", 10.0),
        ("mail", "would send tenants/acme/templates/t", 10.0),
        ("b", "would wait 30s", 30.0),
        ("meet", "2 of 2 branches arrived", 30.0),
        ("bye", "exit step", 30.0),
    ]
    assert walked.end_state == "exited"
    first = (*nodes[:4], Node("meet", "join", "bye", mode="any"), nodes[5])
    walked = simulate(Definition(nodes=first), "p1", {}, set(), 0)
    assert walked.steps[4] == ("meet", "the first branch arrived", 10.0)
    # an exit on a branch: out, at that branch's time
    out = (fork, Node("a", "wait", "gone", seconds=10), Node("gone", "exit"), *nodes[3:])
    walked = simulate(Definition(nodes=out), "p1", {}, set(), 0)
    assert (walked.end_state, walked.steps[-1]) == ("exited", ("gone", "exit step", 10.0))


async def _journey(env: Env, body: dict[str, Any]) -> str:
    status, made = await call(env, "POST", "tenants/acme/journeys", body)
    assert status == 200, made
    name: str = made["journey"]["name"]
    status, published = await call(env, "POST", f"{name}:publish", {})
    assert status == 200, published
    return name


async def _replays(env: Env, *ways: dict[str, Any]) -> None:
    """The ways' recorded histories replay in Temporal's sandbox (which
    fails on anything non-deterministic, such as branches scheduled in
    another order) to the same end."""
    client = await env.running.platform.api("journeys").engine.client()
    replayer = Replayer(workflows=[JourneyWorkflow])
    for way in ways:
        history = await client.get_workflow_handle(way["name"].rsplit("/", 1)[1]).fetch_history()
        replayed = await replayer.replay_workflow(history, raise_on_replay_failure=False)
        assert replayed.replay_failure is None, replayed.replay_failure


async def _person(env: Env, user: str) -> None:
    await ingest(env, {"type": "identify", "userId": user, "traits": {
        "email": f"{user}@example.com", "first_name": user.title()}})  # fmt: skip


async def test_branches_run_together_and_meet_at_the_join(env: Env, smtp: SmtpServer) -> None:
    """Email now and again after 1 s on one branch, a note after 1 s on the
    other: the join waits for both, then the wrap-up goes once."""
    await provider(env, smtp.port)
    now, later, other, wrap = [await template(env, email(s))
                               for s in ("Now", "Later", "Other", "Wrap")]  # fmt: skip
    name = await _journey(env, {
        "displayName": "Both", "trigger": {"api": {}},
        "nodes": [
            {"id": "fork", "parallel": {"branches": ["now", "other_wait"], "join": "meet"}},
            {"id": "now", "send": {"template": now["name"]}, "next": "pause"},
            {"id": "pause", "wait": {"duration": "1s"}, "next": "later"},
            {"id": "later", "send": {"template": later["name"]}, "next": "meet"},
            {"id": "other_wait", "wait": {"duration": "1s"}, "next": "other"},
            {"id": "other", "send": {"template": other["name"]}, "next": "meet"},
            {"id": "meet", "join": {}, "next": "wrap"},
            {"id": "wrap", "send": {"template": wrap["name"]}},
        ]})  # fmt: skip
    status, body = await call(env, "GET", name)
    assert body["journey"]["nodes"][0]["parallel"] == {"branches": ["now", "other_wait"],
                                                       "join": "meet"}  # fmt: skip
    assert body["journey"]["nodes"][6]["join"] == {"mode": "JOIN_MODE_ALL"}
    await _person(env, "ada")
    started = time.monotonic()
    status, entered = await call(env, "POST", f"{name}:enter", {"userId": "ada"})
    assert status == 200, entered
    done = await instance_when(env, entered["instance"]["name"],
                               lambda i: i["state"] == "INSTANCE_STATE_COMPLETED")  # fmt: skip
    took = time.monotonic() - started
    assert 1.0 <= took < 10, took  # the two 1 s waits at the same time, not one after the other
    steps = [(h.get("node", ""), h["outcome"]) for h in done["history"]]
    assert steps[0] == ("fork", "2 branches")
    assert ("meet", "2 of 2 branches arrived") in steps
    assert steps.index(("meet", "2 of 2 branches arrived")) > max(
        n for n, (node, _) in enumerate(steps) if node in ("later", "other")
    )
    # each goes once; the order they reach the mail server is not the order
    # they were queued (the sender sends a batch at once), so the join's
    # order is checked on the steps above, not on arrivals
    got = await subjects_when(smtp, "ada@example.com", 4)
    assert sorted(got) == ["Later Ada", "Now Ada", "Other Ada", "Wrap Ada"], got
    status, stats = await call(env, "GET", f"{name}/analytics")
    assert status == 200, stats
    entered_at = {n["node"]: int(n.get("entered", 0)) for n in stats["nodes"]}
    assert entered_at["fork"] == entered_at["meet"] == entered_at["wrap"] == 1, stats
    await _replays(env, done)


async def test_the_first_branch_wins_an_any_join_and_an_exit_ends_all(
    env: Env, smtp: SmtpServer
) -> None:
    """ANY: whichever comes first of a click and 30 s goes on, the other
    branch stops (its reminder never goes). An exit on one branch takes the
    person out while the other still waits."""
    await provider(env, smtp.port)
    thanks, reminder = [await template(env, email(s)) for s in ("Thanks", "Reminder")]
    race = await _journey(env, {
        "displayName": "Race", "trigger": {"api": {}},
        "nodes": [
            {"id": "fork", "parallel": {"branches": ["click", "slow"], "join": "meet"}},
            {"id": "click", "wait": {"duration": "60s", "untilEvent": "clicked"},
             "next": "meet"},
            {"id": "slow", "wait": {"duration": "30s"}, "next": "remind"},
            {"id": "remind", "send": {"template": reminder["name"]}, "next": "meet"},
            {"id": "meet", "join": {"mode": "JOIN_MODE_ANY"}, "next": "thanks"},
            {"id": "thanks", "send": {"template": thanks["name"]}},
        ]})  # fmt: skip
    out = await _journey(env, {
        "displayName": "Out", "trigger": {"api": {}},
        "nodes": [
            {"id": "fork", "parallel": {"branches": ["soon", "slow"], "join": "meet"}},
            {"id": "soon", "wait": {"duration": "1s"}, "next": "leave"},
            {"id": "leave", "exit": {}},
            {"id": "slow", "wait": {"duration": "30s"}, "next": "remind"},
            {"id": "remind", "send": {"template": reminder["name"]}, "next": "meet"},
            {"id": "meet", "join": {}},
        ]})  # fmt: skip
    await _person(env, "bo")
    await _person(env, "cy")
    status, entered = await call(env, "POST", f"{race}:enter", {"userId": "bo"})
    way = entered["instance"]["name"]
    await instance_when(env, way, lambda i: i["state"] == "INSTANCE_STATE_WAITING")
    started = time.monotonic()
    await ingest(env, {"type": "track", "userId": "bo", "event": "clicked"})
    done = await instance_when(env, way, lambda i: i["state"] == "INSTANCE_STATE_COMPLETED")
    assert time.monotonic() - started < 15  # not the 30 s branch
    steps = [(h.get("node", ""), h["outcome"]) for h in done["history"]]
    assert ("click", "event clicked") in steps and ("meet", "1 of 2 branches arrived") in steps
    assert not any(node == "remind" for node, _ in steps)
    assert await subjects_when(smtp, "bo@example.com", 1) == ["Thanks Bo"]

    status, entered = await call(env, "POST", f"{out}:enter", {"userId": "cy"})
    started = time.monotonic()
    gone = await instance_when(env, entered["instance"]["name"],
                               lambda i: i["state"] == "INSTANCE_STATE_EXITED")  # fmt: skip
    assert time.monotonic() - started < 15
    assert gone["currentNode"] == "leave" and gone["exitReason"] == "exit step", gone
    assert smtp.to("cy@example.com") == []
    await _replays(env, done, gone)
