"""Journey steps beyond send, wait and decide, over REST on the embedded
Temporal dev server with a real SMTP server: a weighted split (the same
path for the same person, the one a simulation shows), a send whose
template is gone taking its error branch, a wait until a time of day in
the person's time zone, event triggers with property filters, per-node
analytics counted once per step, and what saving refuses (naming the
field)."""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import Iterator
from typing import Any

import pytest

from services.journeys.model import (
    Definition,
    Node,
    last_fire,
    next_fire,
    seconds_until,
    split_path,
)
from tests.conftest import Env
from tests.smtp_server import SmtpServer, serve_smtp
from tests.test_audience_segments import PRO, create, ingest
from tests.test_audience_service import call
from tests.test_journeys import email, instance_when, subjects_when
from tests.test_messaging import provider, template

#: Enough people that both paths of an even split are taken (all on one
#: path: a chance of 2 in 65,536; profile ids, which the draw hashes, are random).
PEOPLE = tuple(f"p{n:02d}" for n in range(16))


@pytest.fixture
def smtp() -> Iterator[SmtpServer]:
    yield from serve_smtp()


def test_a_split_draws_by_weight_and_the_same_for_the_same_person() -> None:
    node = Node("ab", "split", paths=((1, "a"), (3, "b")))
    drawn = [split_path(node, f"person-{n}:1")[0] for n in range(4000)]
    assert 0.22 < drawn.count("a") / len(drawn) < 0.28  # a quarter, give or take
    assert [split_path(node, f"person-{n}:1")[0] for n in range(4000)] == drawn
    assert split_path(node, "person-1:1")[1] in ("path 0", "path 1")


def test_a_time_of_day_comes_next_in_the_zone() -> None:
    utc = dt.UTC
    # 07:30 UTC is 08:30 in Paris (winter): 09:00 there is half an hour away
    now = dt.datetime(2026, 1, 15, 7, 30, tzinfo=utc)
    assert seconds_until(now, "09:00", "Europe/Paris") == 1800
    # past it already today: tomorrow
    assert seconds_until(now, "08:00", "Europe/Paris") == 23.5 * 3600
    # the exact minute: a day later, not now
    assert seconds_until(dt.datetime(2026, 1, 15, 9, 0, tzinfo=utc), "09:00", "") == 86400
    # across the spring change in New York (8 March 2026, 02:00 -> 03:00):
    # 09:00 on the 8th is 13:00 UTC, 23 hours after 09:00 on the 7th (14:00 UTC)
    before = dt.datetime(2026, 3, 7, 14, 0, 30, tzinfo=utc)
    assert seconds_until(before, "09:00", "America/New_York") == 23 * 3600 - 30
    # an unknown zone (from a person's trait): UTC
    assert seconds_until(now, "08:00", "Mars/Olympus") == 1800


async def test_splits_error_branches_and_node_analytics(env: Env, smtp: SmtpServer) -> None:
    await provider(env, smtp.port)
    left = await template(env, email("Left"))
    right = await template(env, email("Right"))
    status, body = await call(env, "POST", "tenants/acme/journeys", {
        "displayName": "A/B", "trigger": {"api": {}}, "reentry": "REENTRY_POLICY_ALWAYS",
        "nodes": [
            {"id": "ab", "split": {"paths": [{"weight": 1, "next": "a"},
                                             {"weight": 1, "next": "b"}]}},
            {"id": "a", "send": {"template": left["name"]}},
            {"id": "b", "send": {"template": right["name"], "onError": "oops"}},
            {"id": "oops", "exit": {}},
        ]})  # fmt: skip
    assert status == 200, body
    journey = body["journey"]
    name = journey["name"]
    assert journey["nodes"][0]["split"]["paths"][1] == {"weight": 1, "next": "b"}
    assert journey["nodes"][2]["send"]["onError"] == "oops"
    status, _ = await call(env, "POST", f"{name}:publish", {})
    for person in PEOPLE:
        traits = {"email": f"{person}@example.com", "first_name": person}
        await ingest(env, {"type": "identify", "userId": person, "traits": traits})

    # the simulation shows each person's path before anyone enters
    expected: dict[str, str] = {}
    for person in PEOPLE:
        status, walked = await call(env, "POST", f"{name}:simulate", {"userId": person})
        assert status == 200, walked
        steps = walked["steps"]
        assert steps[0]["node"] == "ab" and steps[0]["outcome"] in ("path 0", "path 1")
        expected[person] = steps[1]["node"]
        assert (
            steps[1]["outcome"]
            == f"would send {left['name'] if steps[1]['node'] == 'a' else right['name']}"
        )
        assert walked["endState"] == "INSTANCE_STATE_COMPLETED"
    assert set(expected.values()) == {"a", "b"}, expected  # both paths taken

    # without an error branch, a send that cannot be sent fails the way
    status, body = await call(env, "POST", "tenants/acme/journeys", {
        "displayName": "No fallback", "trigger": {"api": {}},
        "nodes": [{"id": "only", "send": {"template": right["name"]}}]})  # fmt: skip
    fragile = body["journey"]["name"]
    await call(env, "POST", f"{fragile}:publish", {})

    # the right template is deleted: its people take the error branch
    status, _ = await call(env, "DELETE", right["name"])
    assert status == 200
    status, entered = await call(env, "POST", f"{fragile}:enter", {"userId": PEOPLE[0]})
    failed = await instance_when(env, entered["instance"]["name"],
                                 lambda i: i["state"] == "INSTANCE_STATE_FAILED")  # fmt: skip
    assert failed["currentNode"] == "only" and "is gone" in failed["exitReason"], failed
    ways = {}
    for person in PEOPLE:
        status, entered = await call(env, "POST", f"{name}:enter", {"userId": person})
        assert status == 200, entered
        ways[person] = entered["instance"]["name"]
    for person, way in ways.items():
        done = await instance_when(env, way, lambda i: i["state"] != "INSTANCE_STATE_ACTIVE")
        outcomes = [(h.get("node", ""), h["outcome"].split(" ")[0]) for h in done["history"]]
        if expected[person] == "a":
            assert done["state"] == "INSTANCE_STATE_COMPLETED", done
            assert outcomes == [("ab", "path"), ("a", "message"), ("", "reached")]
        else:
            assert done["state"] == "INSTANCE_STATE_EXITED", done
            assert outcomes == [("ab", "path"), ("b", "error:"), ("oops", "exit")]
            assert "gone" in done["history"][1]["outcome"]
    on_left = sorted(p for p, path in expected.items() if path == "a")
    got = await subjects_when(smtp, f"{on_left[-1]}@example.com", 1)
    assert got == [f"Left {on_left[-1]}"]
    # each entry the same path as before (re-entry ALWAYS): counted per visit
    for person in PEOPLE[:2]:
        status, again = await call(env, "POST", f"{name}:enter", {"userId": person})
        await instance_when(env, again["instance"]["name"],
                            lambda i: i["state"] != "INSTANCE_STATE_ACTIVE")  # fmt: skip
        status, way = await call(env, "GET", again["instance"]["name"])
        assert way["instance"]["history"][1]["node"] == expected[person]

    status, stats = await call(env, "GET", f"{name}/analytics")
    assert status == 200, stats
    by_node = {n["node"]: n for n in stats["nodes"]}
    assert [n["node"] for n in stats["nodes"]] == ["ab", "a", "b", "oops"]
    on = {path: [p for p in PEOPLE for _ in range(2 if p in PEOPLE[:2] else 1)
                 if expected[p] == path] for path in ("a", "b")}  # fmt: skip
    assert int(by_node["ab"]["entered"]) == len(PEOPLE) + 2
    assert int(by_node["a"].get("entered", 0)) == len(on["a"])
    assert int(by_node["a"].get("exited", 0)) == len(on["a"])  # reached the end there
    assert int(by_node["b"].get("entered", 0)) == len(on["b"])
    assert int(by_node["b"].get("errors", 0)) == len(on["b"])
    assert int(by_node["oops"].get("exited", 0)) == len(on["b"])
    status, v1 = await call(env, "GET", f"{name}/analytics?version=1")
    assert v1 == stats
    status, bad = await call(env, "GET", f"{name}/analytics?version=7")
    assert status == 400 and bad["error"]["fieldViolations"][0]["field"] == "version"


async def test_time_of_day_waits_event_filters_and_simulated_waits(
    env: Env, smtp: SmtpServer
) -> None:
    await provider(env, smtp.port)
    thanks = await template(env, email("Big spender"))
    await ingest(env, {"type": "identify", "userId": "vic", "traits": {
        "email": "vic@example.com", "first_name": "Vic", "timezone": "Asia/Tokyo"}})  # fmt: skip
    status, body = await call(env, "POST", "tenants/acme/journeys", {
        "displayName": "Big orders", "reentry": "REENTRY_POLICY_ALWAYS",
        "trigger": {"event": {"event": "order_completed", "filters": [
            {"property": "total", "comparison": "TRAIT_COMPARISON_GREATER_THAN", "value": 100}]}},
        "nodes": [
            {"id": "thanks", "send": {"template": thanks["name"]}, "next": "morning"},
            {"id": "morning", "wait": {"timeOfDay": "09:00"}, "next": "review"},
            {"id": "review", "wait": {"untilEvent": "review_written", "duration": "86400s",
                                      "timeoutNext": "bye"}},
            {"id": "bye", "exit": {}},
        ]})  # fmt: skip
    assert status == 200, body
    name = body["journey"]["name"]
    trigger = body["journey"]["trigger"]["event"]
    assert trigger["filters"][0]["property"] == "total" and trigger["filters"][0]["value"] == 100
    assert body["journey"]["nodes"][1]["wait"] == {"timeOfDay": "09:00"}
    await call(env, "POST", f"{name}:publish", {})

    # a simulation: the morning wait ends at nine in Tokyo; with the review
    # written the way completes, without it times out a day later and exits
    for events, end in ((["review_written"], "COMPLETED"), ([], "EXITED")):
        status, walked = await call(env, "POST", f"{name}:simulate",
                                    {"userId": "vic", "events": events})  # fmt: skip
        assert status == 200, walked
        assert walked["endState"] == f"INSTANCE_STATE_{end}"
        morning = walked["steps"][1]
        assert morning["outcome"] == "would wait until 09:00 Asia/Tokyo"
        tokyo = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=float(morning["at"][:-1]))
        at = tokyo.astimezone(dt.timezone(dt.timedelta(hours=9)))
        assert (at.hour, at.minute) == (9, 0) or (at.hour, at.minute, at.second) == (8, 59, 59)
    assert walked["steps"][2]["outcome"] == "timed out after 86400s"

    # only orders over 100 make people enter
    await ingest(env, {"type": "track", "userId": "vic", "event": "order_completed",
                       "messageId": "o-1", "properties": {"total": 40}},
                 {"type": "track", "userId": "vic", "event": "order_completed",
                  "messageId": "o-2", "properties": {"total": 400}})  # fmt: skip
    assert await subjects_when(smtp, "vic@example.com", 1) == ["Big spender Vic"]
    status, listed = await call(env, "GET", f"{name}/instances")
    (way,) = listed["instances"]
    waiting = await instance_when(env, way["name"], lambda i: i.get("currentNode") == "morning")
    assert waiting["state"] == "INSTANCE_STATE_WAITING"
    assert waiting["history"][-1]["outcome"] == "waiting until 09:00 Asia/Tokyo"


async def test_saving_refuses_bad_steps_naming_the_field(env: Env) -> None:
    welcome = await template(env, email("Hello"))
    send = {"id": "s", "send": {"template": welcome["name"]}}
    cases: list[tuple[dict[str, Any], str]] = [
        ({"trigger": {"api": {}}, "nodes": [{"id": "w", "wait": {"timeOfDay": "25:00"}}]},
         "journey.nodes[0].wait.time_of_day"),
        ({"trigger": {"api": {}}, "nodes": [
            {"id": "w", "wait": {"timeOfDay": "09:00", "timeZone": "Nowhere/City"}}]},
         "journey.nodes[0].wait.time_zone"),
        ({"trigger": {"api": {}}, "nodes": [
            {"id": "w", "wait": {"timeOfDay": "09:00", "duration": "60s"}}]},
         "journey.nodes[0].wait.duration"),
        ({"trigger": {"api": {}}, "nodes": [
            {"id": "ab", "split": {"paths": [{"weight": 1, "next": "s"}]}}, send]},
         "journey.nodes[0].split.paths"),
        ({"trigger": {"api": {}}, "nodes": [
            {"id": "ab", "split": {"paths": [{"weight": 0, "next": "s"},
                                             {"weight": 1, "next": "s"}]}}, send]},
         "journey.nodes[0].split.paths[0].weight"),
        ({"trigger": {"api": {}}, "nodes": [
            {"id": "ab", "split": {"paths": [{"weight": 1, "next": "s"},
                                             {"weight": 1, "next": "t"}]}}, send]},
         "journey.nodes[0].split.paths[1].next"),
        ({"trigger": {"api": {}}, "nodes": [{**send, "send": {**send["send"],
                                                                "onError": "nope"}}]},
         "journey.nodes[0].send.on_error"),
        ({"trigger": {"event": {"event": "x", "filters": [{"property": "total"}]}},
          "nodes": [send]}, "journey.trigger.event.filters[0].comparison"),
        ({"trigger": {"event": {"event": "x", "filters": [
            {"property": "total", "comparison": "TRAIT_COMPARISON_LESS_THAN"}]}},
          "nodes": [send]}, "journey.trigger.event.filters[0].value"),
    ]  # fmt: skip
    for journey, field in cases:
        status, answer = await call(env, "POST", "tenants/acme/journeys",
                                    {"displayName": "bad", **journey})  # fmt: skip
        assert status == 400, (field, answer)
        fields = [v["field"] for v in answer["error"]["fieldViolations"]]
        assert field in fields, (field, fields)
    # simulate: an unknown version, or a person who is not there
    ok = {"displayName": "ok", "trigger": {"api": {}}, "nodes": [send]}
    status, body = await call(env, "POST", "tenants/acme/journeys", ok)
    name = body["journey"]["name"]
    status, answer = await call(env, "POST", f"{name}:simulate", {"userId": "x", "version": 3})
    assert status == 400 and answer["error"]["fieldViolations"][0]["field"] == "version"
    status, answer = await call(env, "POST", f"{name}:simulate", {"userId": "nobody-here"})
    assert status == 400 and answer["error"]["fieldViolations"][0]["field"] == "user_id"


async def test_segment_triggers_enter_people_who_join_or_leave(env: Env, smtp: SmtpServer) -> None:
    await provider(env, smtp.port)
    hello, bye = await template(env, email("Hello pro")), await template(env, email("Miss you"))
    segment = await create(env, PRO, "Pro plan")
    for change, message in (("SEGMENT_CHANGE_ENTERED", hello), ("SEGMENT_CHANGE_EXITED", bye)):
        status, body = await call(env, "POST", "tenants/acme/journeys", {
            "displayName": change, "reentry": "REENTRY_POLICY_ALWAYS",
            "trigger": {"segment": {"segment": segment["name"], "change": change}},
            "nodes": [{"id": "s", "send": {"template": message["name"]}}]})  # fmt: skip
        assert status == 200, body
        assert body["journey"]["trigger"]["segment"]["change"] == change
        await call(env, "POST", f"{body['journey']['name']}:publish", {})
    wes = {"email": "wes@example.com", "first_name": "Wes", "plan": "pro"}
    await ingest(env, {"type": "identify", "userId": "wes", "traits": wes})
    assert await subjects_when(smtp, "wes@example.com", 1) == ["Hello pro Wes"]
    await ingest(env, {"type": "identify", "userId": "wes", "traits": {"plan": "free"}})
    assert await subjects_when(smtp, "wes@example.com", 2) == ["Hello pro Wes", "Miss you Wes"]
    # a segment of another tenant, or none
    for name, why in ((segment["name"].replace("acme", "globex"), "another tenant's"),
                      ("tenants/acme/segments/nope", "no such segment"),
                      ("segments/nope", "must be")):  # fmt: skip
        status, answer = await call(env, "POST", "tenants/acme/journeys", {
            "displayName": "bad", "trigger": {"segment": {"segment": name}},
            "nodes": [{"id": "s", "send": {"template": hello["name"]}}]})  # fmt: skip
        assert status == 400, answer
        (violation,) = answer["error"]["fieldViolations"]
        assert violation["field"] == "journey.trigger.segment.segment"
        assert why in violation["description"], violation


async def test_update_and_start_journey_steps(env: Env, smtp: SmtpServer) -> None:
    await provider(env, smtp.port)
    tips = await template(env, email("Tips"))
    status, body = await call(env, "POST", "tenants/acme/journeys", {
        "displayName": "Tips", "trigger": {"api": {}},
        "nodes": [{"id": "t", "send": {"template": tips["name"]}}]})  # fmt: skip
    follow_up = body["journey"]["name"]
    await call(env, "POST", f"{follow_up}:publish", {})
    status, body = await call(env, "POST", "tenants/acme/journeys", {
        "displayName": "Onboard", "trigger": {"api": {}},
        "nodes": [
            {"id": "mark", "update": {"traits": {"onboarded": True, "stage": "tips"}},
             "next": "check"},
            {"id": "check", "decision": {"branches": [
                {"trait": "onboarded", "comparison": "TRAIT_COMPARISON_EQUALS", "value": True,
                 "next": "more"}], "otherwise": "out"}},
            {"id": "more", "startJourney": {"journey": follow_up}},
            {"id": "out", "exit": {}},
        ]})  # fmt: skip
    assert status == 200, body
    name = body["journey"]["name"]
    assert body["journey"]["nodes"][0]["update"]["traits"] == {"onboarded": True, "stage": "tips"}
    await call(env, "POST", f"{name}:publish", {})
    await ingest(env, {"type": "identify", "userId": "xia",
                       "traits": {"email": "xia@example.com", "first_name": "Xia"}})  # fmt: skip
    # the simulation sees the traits the update step would set
    status, walked = await call(env, "POST", f"{name}:simulate", {"userId": "xia"})
    assert [s["outcome"] for s in walked["steps"]] == [
        "would set onboarded, stage",
        "branch 0",
        f"would enter {follow_up}",
        "reached the end",
    ]
    status, entered = await call(env, "POST", f"{name}:enter", {"userId": "xia"})
    done = await instance_when(env, entered["instance"]["name"],
                               lambda i: i["state"] == "INSTANCE_STATE_COMPLETED")  # fmt: skip
    assert [h["outcome"] for h in done["history"]][:3] == [
        "set onboarded, stage",
        "branch 0",
        f"entered {follow_up}",
    ]
    status, profile = await call(env, "GET", done["profile"])
    assert profile["profile"]["traits"]["stage"] == "tips"
    assert await subjects_when(smtp, "xia@example.com", 1) == ["Tips Xia"]
    # a journey that starts itself, or one that is not there: refused
    for target, why in ((name, "not this journey"),
                        ("tenants/acme/journeys/nope", "no such journey")):  # fmt: skip
        status, answer = await call(env, "PATCH", f"{name}?updateMask=nodes", {
            "nodes": [{"id": "go", "startJourney": {"journey": target}}]})  # fmt: skip
        assert status == 400, answer
        (violation,) = answer["error"]["fieldViolations"]
        assert violation["field"] == "journey.nodes[0].start_journey.journey"
        assert why in violation["description"]
    status, answer = await call(env, "POST", "tenants/acme/journeys", {
        "displayName": "bad", "trigger": {"api": {}},
        "nodes": [{"id": "u", "update": {"traits": {}}}]})  # fmt: skip
    assert answer["error"]["fieldViolations"][0]["field"] == "journey.nodes[0].update.traits"


async def test_rollback_publishes_an_earlier_version_again(env: Env, smtp: SmtpServer) -> None:
    await provider(env, smtp.port)
    first, second = await template(env, email("First")), await template(env, email("Second"))
    status, body = await call(env, "POST", "tenants/acme/journeys", {
        "displayName": "Versions", "trigger": {"api": {}}, "reentry": "REENTRY_POLICY_ALWAYS",
        "nodes": [{"id": "s", "send": {"template": first["name"]}}]})  # fmt: skip
    name = body["journey"]["name"]
    await call(env, "POST", f"{name}:publish", {})
    status, _ = await call(env, "PATCH", f"{name}?updateMask=nodes", {
        "nodes": [{"id": "s2", "send": {"template": second["name"]}}]})  # fmt: skip
    status, v2 = await call(env, "POST", f"{name}:publish", {})
    assert v2["journey"]["version"] == 2
    status, back = await call(env, "POST", f"{name}:rollback", {"version": 1})
    assert status == 200, back
    assert back["journey"]["version"] == 3 and back["journey"]["nodes"][0]["id"] == "s"
    await ingest(env, {"type": "identify", "userId": "yan",
                       "traits": {"email": "yan@example.com", "first_name": "Yan"}})  # fmt: skip
    status, entered = await call(env, "POST", f"{name}:enter", {"userId": "yan"})
    assert entered["instance"]["version"] == 3
    assert await subjects_when(smtp, "yan@example.com", 1) == ["First Yan"]
    # each version walks its own definition
    status, walked = await call(env, "POST", f"{name}:simulate", {"userId": "yan", "version": 2})
    assert walked["steps"][0]["node"] == "s2"
    status, answer = await call(env, "POST", f"{name}:rollback", {"version": 9})
    assert status == 400 and answer["error"]["fieldViolations"][0]["field"] == "version"


async def test_a_digest_gathers_a_burst_of_events_into_one_message(
    env: Env, smtp: SmtpServer
) -> None:
    await provider(env, smtp.port)
    each = "{% for e in data.digest.events %}{{ e.by }} {% endfor %}"
    status, made = await call(env, "POST", "tenants/acme/templates", {
        "displayName": "Comments", "channel": "MESSAGE_CHANNEL_EMAIL",
        "contents": {"en": {"subject": "{{ data.digest.count }} new comments",
                            "text": each}}})  # fmt: skip
    assert status == 200, made
    status, body = await call(env, "POST", "tenants/acme/journeys", {
        "displayName": "Comment digest", "reentry": "REENTRY_POLICY_ALWAYS",
        "trigger": {"event": {"event": "comment_added"}},
        "nodes": [{"id": "gather", "digest": {"event": "comment_added", "window": "2s"},
                   "next": "tell"},
                  {"id": "tell", "send": {"template": made["template"]["name"]}}]})  # fmt: skip
    assert status == 200, body
    name = body["journey"]["name"]
    assert body["journey"]["nodes"][0]["digest"] == {"event": "comment_added", "window": "2s"}
    await call(env, "POST", f"{name}:publish", {})
    await ingest(env, {"type": "identify", "userId": "zed",
                       "traits": {"email": "zed@example.com"}})  # fmt: skip
    for n, who in enumerate(("ann", "bo", "cy")):
        await ingest(env, {"type": "track", "userId": "zed", "event": "comment_added",
                           "messageId": f"c-{n}", "properties": {"by": who}})  # fmt: skip
    assert await subjects_when(smtp, "zed@example.com", 1, within=10) == ["3 new comments"]
    (mail,) = smtp.to("zed@example.com")
    assert mail.get_content().split() == ["ann", "bo", "cy"]
    status, listed = await call(env, "GET", f"{name}/instances")
    (way,) = listed["instances"]  # one way for the burst
    outcomes = [h["outcome"] for h in way["history"]]
    assert outcomes[:2] == ["collecting comment_added for 2s", "digested 3 comment_added"]
    status, answer = await call(env, "POST", "tenants/acme/journeys", {
        "displayName": "bad", "trigger": {"api": {}},
        "nodes": [{"id": "d", "digest": {"event": "", "window": "0s"}}]})  # fmt: skip
    fields = {v["field"] for v in answer["error"]["fieldViolations"]}
    assert fields == {"journey.nodes[0].digest.event", "journey.nodes[0].digest.window"}


def test_cron_schedules_fire_in_their_zone() -> None:
    weekly = Definition(trigger="schedule", cron="0 9 * * MON", cron_zone="America/New_York")
    # Saturday 7 March 2026, noon in New York: next Monday 09:00 EDT (13:00 UTC)
    saturday = int(dt.datetime(2026, 3, 7, 17, 0, tzinfo=dt.UTC).timestamp() * 1e6)
    monday = int(dt.datetime(2026, 3, 9, 13, 0, tzinfo=dt.UTC).timestamp() * 1e6)
    assert next_fire(weekly, saturday) == monday
    # the Monday before, 09:00 EST (14:00 UTC)
    before = int(dt.datetime(2026, 3, 2, 14, 0, tzinfo=dt.UTC).timestamp() * 1e6)
    assert last_fire(weekly, saturday) == before
    assert last_fire(weekly, monday) == monday  # its own time counts
    once = Definition(trigger="schedule", at_us=monday)
    assert next_fire(once, saturday) == monday and next_fire(once, monday) is None
    assert last_fire(once, saturday) is None and last_fire(once, monday + 1) == monday


async def test_a_scheduled_journey_enters_its_segment_at_its_time(
    env: Env, smtp: SmtpServer
) -> None:
    await provider(env, smtp.port)
    hello = await template(env, email("Scheduled"))
    segment = await create(env, PRO, "Pro plan")
    for who in ("amy", "bea"):
        traits = {"email": f"{who}@example.com", "first_name": who, "plan": "pro"}
        await ingest(env, {"type": "identify", "userId": who, "traits": traits})
    at = (dt.datetime.now(dt.UTC) + dt.timedelta(seconds=3)).isoformat().replace("+00:00", "Z")
    status, body = await call(env, "POST", "tenants/acme/journeys", {
        "displayName": "Once", "trigger": {"schedule": {"segment": segment["name"], "at": at}},
        "nodes": [{"id": "s", "send": {"template": hello["name"]}}]})  # fmt: skip
    assert status == 200, body
    name = body["journey"]["name"]
    assert body["journey"]["trigger"]["schedule"]["segment"] == segment["name"]
    await call(env, "POST", f"{name}:publish", {})
    assert await subjects_when(smtp, "amy@example.com", 1, within=20) == ["Scheduled amy"]
    assert await subjects_when(smtp, "bea@example.com", 1) == ["Scheduled bea"]
    status, listed = await call(env, "GET", "tenants/acme/broadcasts")
    (broadcast,) = listed["broadcasts"]  # one, however many processes looked
    assert broadcast["journey"] == name and broadcast["displayName"].startswith("Once at ")
    # it does not come again
    await asyncio.sleep(6)
    assert len(smtp.received) == 2

    past = (dt.datetime.now(dt.UTC) - dt.timedelta(hours=1)).isoformat().replace("+00:00", "Z")
    send = [{"id": "s", "send": {"template": hello["name"]}}]
    cases = [
        ({"segment": segment["name"], "cron": "61 * * * *"}, "cron", "not a cron expression"),
        ({"segment": segment["name"], "cron": "0 0 30 2 *"}, "cron", "not a cron expression"),
        ({"segment": segment["name"]}, "cron", "one of cron"),
        ({"segment": segment["name"], "cron": "0 9 * * *", "at": at}, "cron", "one of cron"),
        ({"segment": segment["name"], "at": past}, "at", "in the future"),
        ({"segment": segment["name"], "cron": "0 9 * * *", "timeZone": "Moon/Base"},
         "time_zone", "no time zone"),
        ({"segment": "tenants/acme/segments/nope", "cron": "0 9 * * *"}, "segment",
         "no such segment"),
    ]  # fmt: skip
    for schedule, field, why in cases:
        status, answer = await call(env, "POST", "tenants/acme/journeys", {
            "displayName": "bad", "trigger": {"schedule": schedule}, "nodes": send})  # fmt: skip
        assert status == 400, (schedule, answer)
        found = {v["field"]: v["description"] for v in answer["error"]["fieldViolations"]}
        assert why in found.get(f"journey.trigger.schedule.{field}", ""), (schedule, found)


async def test_a_throttle_lets_so_many_through_a_window(env: Env, smtp: SmtpServer) -> None:
    await provider(env, smtp.port)
    note = await template(env, email("Reminder"))
    status, body = await call(env, "POST", "tenants/acme/journeys", {
        "displayName": "One reminder a day", "trigger": {"api": {}},
        "reentry": "REENTRY_POLICY_ALWAYS",
        "nodes": [
            {"id": "daily", "throttle": {"limit": 1, "window": "86400s", "overNext": "skip"},
             "next": "send"},
            {"id": "send", "send": {"template": note["name"]}},
            {"id": "skip", "exit": {}}]})  # fmt: skip
    assert status == 200, body
    daily = body["journey"]["name"]
    assert body["journey"]["nodes"][0]["throttle"] == {
        "limit": 1,
        "window": "86400s",
        "scope": "THROTTLE_SCOPE_PERSON",
        "overNext": "skip",
    }
    await call(env, "POST", f"{daily}:publish", {})
    for who in ("ida", "jon"):
        traits = {"email": f"{who}@example.com", "first_name": who}
        await ingest(env, {"type": "identify", "userId": who, "traits": traits})
    outcomes = []
    for who in ("ida", "ida", "jon"):  # per person: ida's second way is over the limit
        status, entered = await call(env, "POST", f"{daily}:enter", {"userId": who})
        done = await instance_when(env, entered["instance"]["name"],
                                   lambda i: i["state"] != "INSTANCE_STATE_ACTIVE")  # fmt: skip
        outcomes.append((done["state"], done["history"][0]["outcome"]))
    assert outcomes == [("INSTANCE_STATE_COMPLETED", "through"),
                        ("INSTANCE_STATE_EXITED", "over the limit"),
                        ("INSTANCE_STATE_COMPLETED", "through")]  # fmt: skip
    assert await subjects_when(smtp, "ida@example.com", 1) == ["Reminder ida"]

    # everybody's ways together, without an over branch: the second waits
    # for the next window, then goes through
    status, body = await call(env, "POST", "tenants/acme/journeys", {
        "displayName": "Trickle", "trigger": {"api": {}},
        "nodes": [
            {"id": "slow", "throttle": {"limit": 1, "window": "2s",
                                        "scope": "THROTTLE_SCOPE_JOURNEY"}, "next": "send"},
            {"id": "send", "send": {"template": note["name"]}}]})  # fmt: skip
    trickle = body["journey"]["name"]
    await call(env, "POST", f"{trickle}:publish", {})
    ways = []
    for who in ("ida", "jon"):
        status, entered = await call(env, "POST", f"{trickle}:enter", {"userId": who})
        ways.append(entered["instance"]["name"])
    ended = [await instance_when(env, w, lambda i: i["state"] == "INSTANCE_STATE_COMPLETED")
             for w in ways]  # fmt: skip
    throttled = [e for e in ended if e["history"][0]["outcome"].startswith("throttled")]
    assert len(throttled) == 1, [e["history"] for e in ended]
    assert throttled[0]["history"][1]["outcome"] == "through"
    status, stats = await call(env, "GET", f"{trickle}/analytics")
    slow = next(n for n in stats["nodes"] if n["node"] == "slow")
    assert slow["entered"] == "2"  # a way that waited is counted once
    bad = {"limit": 0, "window": "0s", "overNext": "x"}
    status, answer = await call(env, "POST", "tenants/acme/journeys", {
        "displayName": "bad", "trigger": {"api": {}},
        "nodes": [{"id": "t", "throttle": bad}]})  # fmt: skip
    fields = {v["field"] for v in answer["error"]["fieldViolations"]}
    assert fields == {"journey.nodes[0].throttle.limit", "journey.nodes[0].throttle.window",
                      "journey.nodes[0].throttle.over_next"}  # fmt: skip


async def test_journeys_of_an_exclusive_group_compete_for_a_trigger(
    env: Env, smtp: SmtpServer
) -> None:
    await provider(env, smtp.port)
    names = {}
    for label, group, priority in (("High", "promo", 10), ("Low", "promo", 5), ("Own", "", 0)):
        made = await template(env, email(label))
        status, body = await call(env, "POST", "tenants/acme/journeys", {
            "displayName": label, "exclusiveGroup": group, "priority": priority,
            "trigger": {"event": {"event": "cart_abandoned"}},
            "nodes": [{"id": "s", "send": {"template": made["name"]}}]})  # fmt: skip
        assert status == 200, body
        names[label] = body["journey"]["name"]
        await call(env, "POST", f"{names[label]}:publish", {})
    assert body["journey"].get("exclusiveGroup", "") == ""
    await ingest(env, {"type": "identify", "userId": "kai",
                       "traits": {"email": "kai@example.com", "first_name": "kai"}},
                 {"type": "track", "userId": "kai", "event": "cart_abandoned"})  # fmt: skip
    got = sorted(await subjects_when(smtp, "kai@example.com", 2))
    await asyncio.sleep(1.0)  # the low-priority one never comes
    assert (
        sorted(m["Subject"] for m in smtp.to("kai@example.com")) == got == ["High kai", "Own kai"]
    )
    status, listed = await call(env, "GET", f"{names['Low']}/instances")
    assert listed.get("instances", []) == []
    status, answer = await call(env, "PATCH", f"{names['Low']}?updateMask=priority,exclusiveGroup",
                                {"priority": 5000, "exclusiveGroup": "no spaces"})  # fmt: skip
    fields = {v["field"] for v in answer["error"]["fieldViolations"]}
    assert fields == {"journey.priority", "journey.exclusive_group"}


async def test_a_drip_goes_on_when_its_email_is_clicked(env: Env, smtp: SmtpServer) -> None:
    await provider(env, smtp.port)
    promo = await template(env, {
        "displayName": "promo", "channel": "MESSAGE_CHANNEL_EMAIL",
        "contents": {"en": {"subject": "Sale", "text": "Sale",
                            "html": '<html><body><a href="https://shop.example/sale">Shop</a>'
                                    "</body></html>"}}})  # fmt: skip
    thanks = await template(env, email("Thanks"))
    status, body = await call(env, "POST", "tenants/acme/journeys", {
        "displayName": "Drip", "trigger": {"api": {}},
        "nodes": [
            {"id": "promo", "send": {"template": promo["name"]}, "next": "clicked"},
            {"id": "clicked", "wait": {"untilEvent": "message_clicked", "duration": "60s"},
             "next": "thanks"},
            {"id": "thanks", "send": {"template": thanks["name"]}}]})  # fmt: skip
    name = body["journey"]["name"]
    await call(env, "POST", f"{name}:publish", {})
    await ingest(env, {"type": "identify", "userId": "lia",
                       "traits": {"email": "lia@example.com", "first_name": "lia"}})  # fmt: skip
    status, entered = await call(env, "POST", f"{name}:enter", {"userId": "lia"})
    await instance_when(env, entered["instance"]["name"],
                        lambda i: i.get("currentNode") == "clicked")  # fmt: skip
    assert await subjects_when(smtp, "lia@example.com", 1) == ["Sale"]
    (mail,) = smtp.to("lia@example.com")
    html = mail.get_body(("html",)).get_content()  # type: ignore[union-attr]
    link = html.split('href="')[1].split('"')[0]
    path = "/v1/t/"
    async with env.http.get(env.base_url + path + link.split(path)[1],
                            allow_redirects=False) as reply:  # fmt: skip
        assert reply.status == 302
    done = await instance_when(env, entered["instance"]["name"],
                               lambda i: i["state"] == "INSTANCE_STATE_COMPLETED")  # fmt: skip
    assert [h["outcome"] for h in done["history"]][2] == "event message_clicked"
    assert await subjects_when(smtp, "lia@example.com", 2) == ["Sale", "Thanks lia"]
