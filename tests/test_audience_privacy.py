"""Data-subject requests (FR-PLT-007): a person's export holds what every
store has of them; their erasure leaves nothing of them in any store (the
management database, the hot store, both analytics tables, the journals, the
audit log) while other people stay; the completion records keep a hash, not
the identity asked for."""

from __future__ import annotations

import asyncio
import hashlib
import pathlib
import re
from typing import Any

from services.audience.profiles import hashed_identity
from services.bidding.profiles import profile_key, tenant_user
from tests.conftest import Env
from tests.test_audience_segments import PRO, create, ingest
from tests.test_audience_service import call
from tests.test_bidding_e2e import bid_request, live_campaign, post_bid

EVE_IDS = ("eve", "eve-cookie", "EVE-IFA-1", "eve@example.com")


async def seed(env: Env, flush_bids: bool = True) -> dict[str, Any]:
    segment = await create(env, PRO, "Pro plan")
    await ingest(
        env,
        {"type": "identify", "userId": "eve", "messageId": "e1",
         "traits": {"plan": "pro", "email": "eve@example.com"},
         "context": {"device": {"advertisingId": "EVE-IFA-1"}}},
        {"type": "identify", "userId": "frank", "traits": {"plan": "pro"}, "messageId": "f1"},
    )  # fmt: skip
    await ingest(
        env, {"type": "page", "anonymousId": "eve-cookie", "name": "Home", "messageId": "e2"}
    )
    # signing in on the browsing device: the anonymous profile is merged (audited)
    await ingest(
        env,
        {"type": "track", "userId": "eve", "anonymousId": "eve-cookie",
         "event": "Order Completed", "messageId": "e3"},
    )  # fmt: skip
    await live_campaign(env)
    for n, user in enumerate(("eve", "frank")):
        status, _, _ = await post_bid(env, bid_request(f"r{n}", user=user))
        assert status == 200
    platform = env.running.platform
    await platform.api("audience").events.flush()
    if flush_bids:
        await platform.api("bidding").pipeline.flush()
    return segment


async def dsr(env: Env, kind: str, subject_kind: str, value: str) -> dict[str, Any]:
    status, body = await call(
        env,
        "POST",
        "tenants/acme/dataSubjectRequests",
        {"kind": kind, "subject": {"kind": subject_kind, "value": value}},
    )
    assert status == 200, body
    record: dict[str, Any] = body["dataSubjectRequest"]
    return record


async def analytics_rows(env: Env, user: str) -> int:
    store = env.running.platform.kernel.backends.analytics
    ((events,),) = await store.query(
        f"SELECT count() FROM events WHERE user_id = '{user}' OR anonymous_id = '{user}'"
    )
    ((bids,),) = await store.query(f"SELECT count() FROM bid_events WHERE user_id = '{user}'")
    ((decided,),) = await store.query(f"SELECT count() FROM bid_decisions WHERE user_id = '{user}'")
    return int(events) + int(bids) + int(decided)


async def test_an_export_holds_what_every_store_has(env: Env) -> None:
    segment = await seed(env)
    record = await dsr(env, "DATA_SUBJECT_REQUEST_KIND_EXPORT", "user_id", "eve")
    assert record["state"] == "DATA_SUBJECT_REQUEST_STATE_SUCCEEDED", record
    archive = record["archive"]
    assert len(archive["profiles"]) == 2  # eve's, and the anonymous one merged into it
    kinds = {i["kind"] for i in archive["identities"]}
    assert {"user_id", "anonymous_id", "ifa", "email_sha256"} <= kinds
    assert len(archive["events"]) == 3 and {e["event_id"] for e in archive["events"]} == {
        "e1",
        "e2",
        "e3",
    }
    assert len(archive["bidEvents"]) >= 1
    # what the model saw of them when it bid (the learning loop's log)
    decisions = archive["domains"]["bidding"]["bidDecisions"]
    assert decisions and {d["user_id"] for d in decisions} <= {"eve", "eve-cookie", "EVE-IFA-1"}
    assert all(len(d["features"]) == 140 for d in decisions)
    assert archive["segments"] == [segment["name"]]
    assert archive["eventCounts"]
    assert record["summary"]["events"] == 3
    # the record keeps a hash of the identity, and never the archive
    status, got = await call(env, "GET", record["name"])
    assert status == 200 and "archive" not in got["dataSubjectRequest"]
    assert got["dataSubjectRequest"]["subject"] == {
        "kind": "user_id",
        "value": hashlib.sha256(b"eve").hexdigest(),
    }


async def test_an_erasure_leaves_nothing_of_the_person_anywhere(env: Env) -> None:
    # the bids' events still in bidding's journal: the erasure flushes them first
    segment = await seed(env, flush_bids=False)
    platform = env.running.platform
    eve = (await call(env, "GET", "tenants/acme/profiles:resolve?kind=user_id&value=eve"))[1]
    eve_profile = eve["profile"]["name"].rsplit("/", 1)[1]
    status, audit = await call(env, "GET", "tenants/acme/auditEvents?action=MergeProfiles")
    assert "eve-cookie" in str(audit)  # the merge is in the audit log before
    # a decision for eve and one for frank: in the decision log, with their user ids
    two_arms = {"displayName": "p", "arms": [{"id": "a"}, {"id": "b"}]}
    status, policy = await call(env, "POST", "tenants/acme/policies", two_arms)
    for user in ("eve", "frank"):
        status, _ = await call(env, "POST", f"{policy['name']}:decide", {"userId": user})
        assert status == 200

    record = await dsr(env, "DATA_SUBJECT_REQUEST_KIND_ERASE", "email", "EVE@example.com ")
    assert record["state"] == "DATA_SUBJECT_REQUEST_STATE_SUCCEEDED", record
    summary = record["summary"]
    assert summary["profiles"] == 2 and summary["events"] == 3 and summary["bidEvents"] >= 1
    assert summary["auditRecordsRedacted"] >= 1

    # the management database
    for kind, value in (
        ("user_id", "eve"),
        ("anonymous_id", "eve-cookie"),
        ("ifa", "EVE-IFA-1"),
        ("email", "eve@example.com"),
    ):
        status, _ = await call(
            env, "GET", f"tenants/acme/profiles:resolve?kind={kind}&value={value}"
        )
        assert status == 404, kind
    db = platform.kernel.backends.db
    async with db.engine.connect() as conn:
        from sqlalchemy import text

        for table, column in (
            ("audience_profiles", "id"),
            ("audience_identities", "profile_id"),
            ("audience_event_counts", "profile_id"),
            ("audience_segment_members", "profile_id"),
        ):
            left = await conn.scalar(
                text(f"SELECT count(*) FROM {table} WHERE {column} = :p"), {"p": eve_profile}
            )
            assert left == 0, table
        values = ["eve", "eve-cookie", "EVE-IFA-1", hashed_identity("email", "eve@example.com")[1]]
        for value in values:
            left = await conn.scalar(
                text("SELECT count(*) FROM audience_identities WHERE value = :v"), {"v": value}
            )
            assert left == 0, value
    status, got = await call(env, "GET", segment["name"])
    assert got["segment"]["size"] == "1"  # frank only
    # the hot store
    kv = platform.kernel.backends.hot_store
    for value in ("eve", "eve-cookie", "EVE-IFA-1"):
        assert await kv.get(profile_key(tenant_user("acme", value))) is None, value
    assert await kv.get(profile_key(tenant_user("acme", "frank"))) is not None
    # the analytics store
    for user in ("eve", "eve-cookie", "EVE-IFA-1"):
        assert await analytics_rows(env, user) == 0, user
    assert await analytics_rows(env, "frank") >= 3  # an event, a bid and its decision
    logged = await platform.kernel.backends.analytics.query(
        "SELECT user_id, count() FROM decision_log GROUP BY user_id"
    )
    assert dict(logged) == {"frank": 1}, logged
    # the journals
    data_dir = pathlib.Path(platform.kernel.settings.data_dir)
    files = await asyncio.to_thread(lambda: list(data_dir.rglob("*.jsonl*")))
    for path in files:
        content = await asyncio.to_thread(path.read_bytes)
        for value in EVE_IDS:
            assert value.encode() not in content, (path, value)
    # the audit log
    status, audit = await call(env, "GET", "tenants/acme/auditEvents?pageSize=1000")
    assert status == 200
    text_of_log = str(audit)
    for value in (*EVE_IDS, eve_profile):
        assert (
            re.search(rf"(?<![A-Za-z0-9]){re.escape(value)}(?![A-Za-z0-9])", text_of_log) is None
        ), value
    assert "[erased]" in text_of_log
    # the record of the request: no raw identity
    status, listed = await call(env, "GET", "tenants/acme/dataSubjectRequests")
    assert status == 200 and "eve@example.com" not in str(listed).lower()
    # frank is untouched
    status, _ = await call(env, "GET", "tenants/acme/profiles:resolve?kind=user_id&value=frank")
    assert status == 200


async def test_requests_are_checked(env: Env) -> None:
    nobody = {"kind": "user_id", "value": "nobody"}
    status, body = await call(
        env, "POST", "tenants/acme/dataSubjectRequests",
        {"kind": "DATA_SUBJECT_REQUEST_KIND_ERASE", "subject": nobody},
    )  # fmt: skip
    assert status == 404, body
    for body, field in (
        ({"subject": {"kind": "user_id", "value": "x"}}, "data_subject_request.kind"),
        ({"kind": "DATA_SUBJECT_REQUEST_KIND_EXPORT", "subject": {"kind": "user_id"}},
         "data_subject_request.subject.value"),
        ({"kind": "DATA_SUBJECT_REQUEST_KIND_EXPORT", "subject": {"kind": "shoe", "value": "x"}},
         "data_subject_request.subject.kind"),
    ):  # fmt: skip
        status, answer = await call(env, "POST", "tenants/acme/dataSubjectRequests", body)
        assert status == 400, answer
        assert field in [v["field"] for v in answer["error"]["fieldViolations"]], answer
    status, _ = await call(
        env, "POST", "tenants/acme/dataSubjectRequests",
        {"kind": "DATA_SUBJECT_REQUEST_KIND_EXPORT", "subject": {"kind": "user_id", "value": "x"}},
        role="ANALYST",
    )  # fmt: skip
    assert status == 403
