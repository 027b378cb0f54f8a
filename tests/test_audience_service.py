"""AudienceService over REST through the gateway: tracking calls in, profiles
out; each message once, identities merged, tenant isolation, permissions and
bad input answered 400 naming the field."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import grpc
import pytest
from grpc import aio

from tests.conftest import Env


async def call(
    env: Env, verb: str, path: str, body: Any = None, *, tenant: str = "acme", role: str = "ADMIN"
) -> tuple[int, Any]:
    async with env.http.request(
        verb, f"{env.base_url}/v1/{path}", json=body, headers=env.headers(tenant, role)
    ) as reply:
        return reply.status, await reply.json()


async def applied(
    env: Env, kind: str, value: str, done: Callable[[Any], bool], within: float = 1.0
) -> Any:
    """The profile of an identity once `done(profile)`: the calls accepted
    before are applied within `within` seconds (the promise)."""
    path = f"tenants/acme/profiles:resolve?kind={kind}&value={value}"
    deadline = time.monotonic() + within
    while True:
        status, found = await call(env, "GET", path)
        if status == 200 and done(found["profile"]):
            return found["profile"]
        assert time.monotonic() < deadline, f"not applied within {within} s: {status} {found}"
        await asyncio.sleep(0.02)


async def test_calls_build_profiles_that_are_read_changed_and_deleted(env: Env) -> None:
    status, ingested = await call(
        env,
        "POST",
        "tenants/acme/events:ingest",
        {
            "batch": [
                {
                    "type": "track",
                    "anonymousId": "anon-7",
                    "event": "Viewed Boots",
                    "messageId": "m1",
                    "properties": {"sku": "b-1"},
                },  # fmt: skip
                {
                    "type": "identify",
                    "userId": 4242,
                    "anonymousId": "anon-7",
                    "traits": {"email": "ann@example.com", "tier": "gold"},
                    "messageId": "m2",
                },  # fmt: skip
                {"type": "track", "userId": "4242", "event": "Bought Boots", "messageId": "m3"},
            ],
            "context": {"library": {"name": "analytics-python"}},
            "sentAt": "2026-12-06T12:00:00Z",
            "waitForProfiles": True,
        },
    )
    assert status == 200, ingested
    assert ingested["accepted"] == 3
    assert ingested["applied"] == 3 and len(set(ingested["profiles"])) == 1
    name = ingested["profiles"][0]
    assert name.startswith("tenants/acme/profiles/")
    # the retry of a call is applied once
    retried = {"type": "track", "userId": "4242", "event": "Bought Boots", "messageId": "m3"}
    status, again = await call(
        env, "POST", "tenants/acme/events:ingest", {"batch": [retried], "waitForProfiles": True}
    )
    assert status == 200 and again["duplicates"] == 1 and again.get("applied", 0) == 0

    status, got = await call(env, "GET", name)
    profile = got["profile"]
    assert status == 200 and profile["name"] == name
    assert profile["traits"] == {"email": "ann@example.com", "tier": "gold"}
    assert profile["eventCount"] == "2"  # int64 as a JSON string
    assert {(i["kind"], i["value"]) for i in profile["identities"]} >= {
        ("anonymous_id", "anon-7"),
        ("user_id", "4242"),  # a numeric userId is its decimal string
    }
    assert {i["kind"] for i in profile["identities"]} == {"anonymous_id", "user_id", "email_sha256"}
    for query in ("kind=anonymous_id&value=anon-7", "kind=email&value=ANN@example.com"):
        status, resolved = await call(env, "GET", f"tenants/acme/profiles:resolve?{query}")
        assert status == 200 and resolved["profile"]["name"] == name, query
    status, listed = await call(env, "GET", "tenants/acme/profiles?pageSize=10")
    assert status == 200 and [p["name"] for p in listed["profiles"]] == [name]
    status, later = await call(
        env, "GET", "tenants/acme/profiles?seenSinceTime=2099-01-01T00:00:00Z"
    )
    assert status == 200 and later.get("profiles", []) == []

    status, updated = await call(
        env, "POST", f"{name}:updateTraits", {"setTraits": {"plan": "pro"}, "unsetTraits": ["tier"]}
    )
    assert status == 200
    assert updated["profile"]["traits"] == {"email": "ann@example.com", "plan": "pro"}

    status, _ = await call(env, "DELETE", name)
    assert status == 200
    status, gone = await call(env, "GET", name)
    assert status == 404, gone
    status, _ = await call(env, "GET", "tenants/acme/profiles:resolve?kind=user_id&value=4242")
    assert status == 404


async def test_profiles_are_the_tenants_own_and_need_the_cdp_permissions(env: Env) -> None:
    status, ingested = await call(
        env, "POST", "tenants/acme/events:ingest",
        {"batch": [{"type": "identify", "userId": "u1", "traits": {"a": 1}}],
         "waitForProfiles": True},
    )  # fmt: skip
    assert status == 200
    name = ingested["profiles"][0]
    status, _ = await call(env, "GET", name, tenant="globex")
    assert status == 403
    status, _ = await call(
        env, "POST", "tenants/acme/events:ingest",
        {"batch": [{"type": "identify", "userId": "u2"}]}, tenant="globex",
    )  # fmt: skip
    assert status == 403
    status, _ = await call(env, "GET", name, role="VIEWER")  # no CDP_READ
    assert status == 403


async def test_bad_calls_are_refused_naming_the_field(env: Env) -> None:
    cases: list[tuple[str, str, Any, str]] = [
        (
            "POST",
            "tenants/acme/events:ingest",
            {"batch": [{"type": "track", "userId": "u"}]},
            "batch[0].event",
        ),  # fmt: skip
        ("POST", "tenants/acme/events:ingest", {"batch": []}, "batch"),
        (
            "POST",
            "tenants/acme/events:ingest",
            {"batch": [{"type": "identify", "userId": "u"}], "sentAt": "soon"},
            "sentAt",
        ),  # fmt: skip
        ("GET", "tenants/acme/profiles?pageSize=5000", None, "page_size"),
        ("GET", "tenants/acme/profiles?pageToken=forged", None, "page_token"),
        ("GET", "tenants/acme/profiles:resolve?kind=shoe_size&value=x", None, "kind"),
        ("GET", "tenants/acme/profiles:resolve?kind=user_id", None, "value"),
        (
            "POST",
            "tenants/acme/profiles/p1:updateTraits",
            {"setTraits": {"a": 1}, "unsetTraits": ["a"]},
            "traits",
        ),  # fmt: skip
    ]
    for verb, path, body, field in cases:
        status, answer = await call(env, verb, path, body)
        assert status == 400, (path, answer)
        fields = [v["field"] for v in answer["error"]["fieldViolations"]]
        assert field in fields, (path, answer)


def basic(key: str) -> dict[str, str]:
    import base64

    return {"Authorization": "Basic " + base64.b64encode(f"{key}:".encode()).decode()}


async def segment(env: Env, path: str, body: Any, headers: dict[str, str]) -> tuple[int, Any]:
    import gzip

    import orjson

    data = body if isinstance(body, bytes) else orjson.dumps(body)
    extra = {}
    if path.endswith("#gzip"):
        path, data, extra = path[:-5], gzip.compress(data), {"Content-Encoding": "gzip"}
    async with env.http.post(
        f"{env.base_url}/v1/{path}",
        data=data,
        headers={**headers, **extra, "Content-Type": "application/json"},
    ) as reply:
        return reply.status, await reply.json()


async def test_segment_sources_send_unchanged_with_the_key_as_write_key(env: Env) -> None:
    key = env.keys["acme"]["ADMIN"]
    answers = [
        await segment(
            env,
            "identify",
            {"userId": "seg-1", "traits": {"name": "Ann"}, "messageId": "s1"},
            basic(key),
        ),  # fmt: skip
        await segment(
            env,
            "track",
            {
                "userId": "seg-1",
                "event": "Clicked",
                "messageId": "s2",
                "sentAt": "2026-12-06T12:00:00Z",
            },
            basic(key),
        ),  # fmt: skip
        await segment(
            env,
            "page#gzip",
            {"anonymousId": "cookie-1", "name": "Home", "messageId": "s3"},
            env.headers(),
        ),  # fmt: skip
        await segment(
            env,
            "batch",
            {
                "batch": [
                    {
                        "type": "alias",
                        "userId": "seg-1",
                        "previousId": "cookie-1",
                        "messageId": "s4",
                    },
                    {"type": "screen", "userId": "seg-1", "name": "Cart", "messageId": "s5"},
                    {"type": "track", "userId": "seg-1", "event": "Clicked", "messageId": "s2"},
                ],
                "context": {"app": {"name": "shop"}},
            },
            basic(key),
        ),  # fmt: skip
    ]
    assert answers == [(200, {"success": True})] * 4
    # applied within a second of the answers
    profile = await applied(env, "user_id", "seg-1", lambda p: p.get("eventCount") == "3")
    assert profile["traits"] == {"name": "Ann"}
    # track s2 (its retry in the batch collapsed), page, screen: 3
    assert {(i["kind"], i["value"]) for i in profile["identities"]} == {
        ("user_id", "seg-1"),
        ("anonymous_id", "cookie-1"),
    }
    # the calls went to the key's tenant only
    status, _ = await call(
        env, "GET", "tenants/globex/profiles:resolve?kind=user_id&value=seg-1", tenant="globex"
    )
    assert status == 404


async def test_segment_paths_refuse_bad_keys_sizes_and_calls(env: Env) -> None:
    from services.audience.tracking import MAX_BATCH_BYTES, MAX_CALL_BYTES

    key = env.keys["acme"]["ADMIN"]
    fine = {"userId": "u", "event": "e"}
    assert (await segment(env, "track", fine, basic("cx_not-a-key-at-all-000000")))[0] == 401
    assert (await segment(env, "track", fine, {"Authorization": "Basic %%%"}))[0] == 401
    assert (await segment(env, "track", fine, {"Authorization": "Digest x"}))[0] == 401
    assert (await segment(env, "track", fine, {}))[0] == 401
    viewer = env.keys["acme"]["VIEWER"]  # may not write events
    assert (await segment(env, "track", fine, basic(viewer)))[0] == 403
    big = {"userId": "u", "event": "e", "properties": {"blob": "x" * MAX_CALL_BYTES}}
    status, answer = await segment(env, "track", big, basic(key))
    assert status == 413 and answer["error"]["fieldViolations"][0]["field"] == "body"
    many = {
        "batch": [{"type": "track", "userId": "u", "event": "x" * 1000}] * (MAX_BATCH_BYTES // 1000)
    }
    assert (await segment(env, "batch", many, basic(key)))[0] == 413
    for path, body, field in (
        ("track", {"userId": "u"}, "event"),  # one call: its field as sent
        ("identify", {"traits": {}}, "userId"),
        ("track", b"{not json", "body"),
        ("track", [1], "body"),
        ("batch", {"batch": [{"type": "track", "userId": "u", "event": "e"}, 7]}, "batch[1]"),
        ("batch", {"batch": "no"}, "batch"),
        ("batch", {"batch": [{"type": "identify", "userId": "u"}], "sentAt": 5}, "sentAt"),
    ):
        status, answer = await segment(env, path, body, basic(key))
        assert status == 400, (path, body, answer)
        fields = [v["field"] for v in answer["error"]["fieldViolations"]]
        assert field in fields, (path, answer)


async def test_merges_are_in_the_audit_log(env: Env) -> None:
    status, first = await call(
        env, "POST", "tenants/acme/events:ingest",
        {"batch": [{"type": "page", "anonymousId": "visitor-9", "name": "Home"},
                   {"type": "identify", "userId": "member-9"}],
         "waitForProfiles": True},
    )  # fmt: skip
    assert status == 200 and len(set(first["profiles"])) == 2
    survivor = first["profiles"][1]
    status, _ = await call(
        env, "POST", "tenants/acme/events:ingest",
        {"batch": [{"type": "track", "userId": "member-9", "anonymousId": "visitor-9",
                    "event": "Signed In"}],
         "waitForProfiles": True},
    )  # fmt: skip
    assert status == 200
    status, audit = await call(env, "GET", "tenants/acme/auditEvents?action=MergeProfiles")
    assert status == 200, audit
    [event] = audit["auditEvents"]
    assert event["resource"] == survivor
    assert first["profiles"][0].rsplit("/", 1)[1] in event["detail"]
    assert "visitor-9 signed in as user_id member-9" in event["detail"]
    # a sender's batch lookup finds the merged-away profile's survivor
    directory = env.running.platform.kernel.interface("audience_directory")
    merged_away, kept = (p.rsplit("/", 1)[1] for p in first["profiles"])
    people = await directory.people("acme", [merged_away, kept, "no-such-profile"])
    assert set(people) == {merged_away, kept}
    assert people[merged_away].id == people[kept].id == kept
    assert await directory.people("globex", [kept]) == {}  # another tenant's: not there


async def test_a_sources_write_key_sends_events_and_nothing_else(env: Env) -> None:
    status, created = await call(
        env, "POST", "tenants/acme/sources", {"displayName": "Web shop", "kind": "SOURCE_KIND_WEB"}
    )
    assert status == 200, created
    source = created["source"]
    key = source["writeKey"]
    assert source["kind"] == "SOURCE_KIND_WEB" and source["name"].startswith(
        "tenants/acme/sources/"
    )
    assert source["apiKey"].startswith("tenants/acme/apiKeys/")
    status, got = await call(env, "GET", source["name"])
    assert status == 200 and "writeKey" not in got["source"]  # shown once
    status, listed = await call(env, "GET", "tenants/acme/sources?pageSize=10")
    assert status == 200 and [s["name"] for s in listed["sources"]] == [source["name"]]

    sent = {"userId": "shopper-1", "event": "Viewed", "messageId": "w1"}
    assert await segment(env, "track", sent, basic(key)) == (200, {"success": True})
    await applied(env, "user_id", "shopper-1", lambda p: p.get("eventCount") == "1")
    # the events table names the source
    audience = env.running.platform.api("audience")
    await audience.events.flush()
    store = env.running.platform.kernel.backends.analytics
    rows = await store.query("SELECT source FROM events WHERE event_id = 'w1'")
    assert [r[0] for r in rows] == [source["name"]]

    # the write key can do nothing else
    bearer = {"Authorization": f"Bearer {key}"}
    for verb, path in (
        ("GET", "tenants/acme/profiles"),
        ("GET", "tenants/acme"),
        ("GET", "tenants/acme/sources"),
    ):
        async with env.http.request(verb, f"{env.base_url}/v1/{path}", headers=bearer) as r:
            assert r.status == 403, (path, await r.text())

    # deleting the source revokes its key
    status, _ = await call(env, "DELETE", source["name"])
    assert status == 200
    status, answer = await segment(env, "track", {**sent, "messageId": "w2"}, basic(key))
    assert status == 401, answer
    status, _ = await call(env, "GET", source["name"])
    assert status == 404


async def test_sources_are_checked_and_need_cdp_write(env: Env) -> None:
    for body, field in (
        ({"displayName": "x"}, "source.kind"),
        ({"kind": "SOURCE_KIND_POS"}, "source.display_name"),
        ({"displayName": "x" * 201, "kind": "SOURCE_KIND_POS"}, "source.display_name"),
    ):
        status, answer = await call(env, "POST", "tenants/acme/sources", body)
        assert status == 400, answer
        assert field in [v["field"] for v in answer["error"]["fieldViolations"]], answer
    status, _ = await call(
        env, "POST", "tenants/acme/sources", {"displayName": "x", "kind": "SOURCE_KIND_POS"},
        role="ANALYST",
    )  # fmt: skip
    assert status == 403
    status, _ = await call(env, "GET", "tenants/acme/sources/nope")
    assert status == 404


async def test_a_grpc_stream_of_batches_is_answered_in_order(env: Env) -> None:
    from google.protobuf import struct_pb2

    from campaignexpress.audience.v1 import audience_service_pb2 as apb
    from campaignexpress.audience.v1 import audience_service_pb2_grpc as agrpc

    def batch(sequence: int, *calls: dict[str, Any]) -> apb.StreamEventsRequest:
        request = apb.StreamEventsRequest(parent="tenants/-", sequence=sequence)
        for c in calls:
            message = struct_pb2.Struct()
            message.update(c)
            request.batch.append(message)
        return request

    requests = [
        batch(1, {"type": "identify", "userId": "pos-1", "traits": {"store": "Lisbon"}}),
        batch(2, {"type": "track", "userId": "pos-1"}),  # no event: refused
        batch(3, *[{"type": "track", "userId": "pos-1", "event": f"Scan {n}"} for n in range(3)]),
    ]

    async def send() -> Any:
        for request in requests:
            yield request

    stub = agrpc.AudienceServiceStub(env.channel)
    answers = [a async for a in stub.StreamEvents(send(), metadata=env.auth())]
    assert [(a.sequence, a.accepted) for a in answers] == [(1, 1), (2, 0), (3, 3)]
    assert not answers[0].HasField("error")
    assert answers[1].error.code == 3  # INVALID_ARGUMENT, the stream went on
    assert "batch[0].event" in answers[1].error.message
    await applied(env, "user_id", "pos-1", lambda p: p.get("eventCount") == "3")
    # a key that may not send events cannot stream them either
    viewer = [("authorization", f"Bearer {env.keys['acme']['VIEWER']}")]
    with pytest.raises(aio.AioRpcError) as refused:
        _ = [a async for a in stub.StreamEvents(send(), metadata=viewer)]
    assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED


async def test_sources_publish_on_the_bus(env: Env) -> None:
    import orjson

    status, created = await call(
        env, "POST", "tenants/acme/sources", {"displayName": "Store 12", "kind": "SOURCE_KIND_POS"}
    )
    assert status == 200, created
    source_id = created["source"]["name"].rsplit("/", 1)[1]
    bus = env.running.platform.kernel.backends.bus
    subject = f"campaign-express.ingest.acme.{source_id}"
    # unreadable, unknown source, bad call: each dropped, none blocks the next
    await bus.publish(subject, b"{nope")
    await bus.publish("campaign-express.ingest.acme.no-such-source",
                      orjson.dumps({"type": "identify", "userId": "ghost"}))  # fmt: skip
    await bus.publish(subject, orjson.dumps({"batch": [{"type": "track", "userId": "x"}]}))
    await bus.publish(
        subject,
        orjson.dumps(
            {
                "batch": [
                    {"type": "identify", "userId": "till-1", "traits": {"store": 12}},
                    {"type": "track", "userId": "till-1", "event": "Purchase"},
                ],
                "sentAt": "2026-12-06T12:00:00Z",
            }
        ),
    )
    await bus.publish(subject, orjson.dumps({"type": "track", "userId": "till-1", "event": "Scan"}))
    profile = await applied(env, "user_id", "till-1", lambda p: p.get("eventCount") == "2", 3.0)
    assert profile["traits"] == {"store": 12}
    for user in ("ghost", "x"):
        status, _ = await call(
            env, "GET", f"tenants/acme/profiles:resolve?kind=user_id&value={user}"
        )
        assert status == 404
