"""CDP connectors against local fakes of Segment, mParticle, Salesforce Data
Cloud and Tealium that check each platform's documented request: every
profile sent with the mappings applied, a failed run resumed by the next
(only what was not sent goes again), Salesforce rows read in and applied as
profiles, secrets never shown, bad definitions 400."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Any

import pytest

from tests import cdp_fakes
from tests.cdp_fakes import Fakes
from tests.conftest import Env
from tests.test_audience_segments import ingest
from tests.test_audience_service import applied, call


@pytest.fixture
async def fakes() -> AsyncIterator[Fakes]:
    async for served in cdp_fakes.serve_fakes():
        yield served


async def connector(env: Env, body: dict[str, Any]) -> dict[str, Any]:
    status, created = await call(env, "POST", "tenants/acme/connectors", body)
    assert status == 200, created
    made: dict[str, Any] = created["connector"]
    return made


async def run(env: Env, name: str) -> list[dict[str, Any]]:
    status, body = await call(env, "POST", f"{name}:run", {})
    assert status == 200, body
    runs: list[dict[str, Any]] = body["runs"]
    return runs


def configs(base: str) -> dict[str, dict[str, Any]]:
    return {
        "segment": {"base_url": f"{base}/segment", "write_key": cdp_fakes.SEGMENT_WRITE_KEY},
        "mparticle": {"base_url": f"{base}/mparticle", "api_key": cdp_fakes.MPARTICLE_KEY,
                      "api_secret": cdp_fakes.MPARTICLE_SECRET},
        "salesforce_data_cloud": {"login_url": f"{base}/sf-login",
                                  "client_id": cdp_fakes.SF_CLIENT_ID,
                                  "client_secret": cdp_fakes.SF_CLIENT_SECRET,
                                  "source_api_name": "campaign_express",
                                  "object_name": "Profile"},
        "tealium": {"base_url": f"{base}/tealium", "account": cdp_fakes.TEALIUM_ACCOUNT,
                    "profile": cdp_fakes.TEALIUM_PROFILE},
        "zeotap": {"base_url": f"{base}/zeotap", "api_key": cdp_fakes.ZEOTAP_KEY,
                   "org_id": str(cdp_fakes.ZEOTAP_ORG), "region": "UK"},
    }  # fmt: skip


async def test_profiles_go_out_to_each_platform_and_resume_after_a_failure(
    env: Env, fakes: Fakes
) -> None:
    await ingest(
        env,
        *[
            {"type": "identify", "userId": f"c{n}", "messageId": f"m{n}",
             "traits": {"email": f"c{n}@example.com", "plan": "pro"}}
            for n in range(3)
        ],
    )  # fmt: skip
    made = {}
    for platform, config in configs(fakes.base_url).items():
        made[platform] = await connector(
            env,
            {"displayName": platform, "platform": platform, "direction": "outbound",
             "config": config,
             "mappings": [{"platformField": "Email__c", "canonicalField": "email"},
                          {"platformField": "plan", "canonicalField": "plan"}]},
        )  # fmt: skip
        runs = await run(env, made[platform]["name"])
        assert [(r["state"], r.get("records")) for r in runs] == [("succeeded", "3")], runs
    assert fakes.refused == []
    assert sorted(c["userId"] for c in fakes.took("segment")) == ["c0", "c1", "c2"]
    by_user = {c["userId"]: c for c in fakes.took("segment")}
    assert by_user["c0"]["traits"] == {"Email__c": "c0@example.com", "plan": "pro"}
    assert {b["user_identities"]["customer_id"] for b in fakes.took("mparticle")} == {
        "c0", "c1", "c2"
    }  # fmt: skip
    rows = fakes.took("salesforce:campaign_express/Profile")
    assert {r["user_id"] for r in rows} == {"c0", "c1", "c2"} and rows[0]["Email__c"]
    assert {e["tealium_visitor_id"] for e in fakes.took("tealium")} == {"c0", "c1", "c2"}
    upserts = {b["ids"]["user_id"]: b for b in fakes.took("zeotap")}
    assert set(upserts) == {"c0", "c1", "c2"}
    assert upserts["c1"]["upsert"]["profile"] == {"Email__c": "c1@example.com", "plan": "pro"}
    assert upserts["c1"]["region"] == "UK"
    # secrets are write-only
    status, listed = await call(env, "GET", "tenants/acme/connectors")
    assert status == 200
    assert all(
        c["config"].get(k, "***") == "***"
        for c in listed["connectors"]
        for k in ("write_key", "api_secret", "client_secret", "api_key")
    )
    assert cdp_fakes.SEGMENT_WRITE_KEY not in str(listed)

    # one profile changes; the platform is down for the next run: it fails,
    # and the run after it sends only that profile
    await ingest(env, {"type": "identify", "userId": "c1", "messageId": "m9",
                       "traits": {"plan": "free"}})  # fmt: skip
    fakes.fail_next = 1
    failed = await run(env, made["segment"]["name"])
    assert failed[0]["state"] == "failed" and "503" in failed[0]["error"]
    again = await run(env, made["segment"]["name"])
    assert again[0]["state"] == "succeeded" and again[0]["records"] == "1"
    assert fakes.took("segment")[-1]["userId"] == "c1"
    assert fakes.took("segment")[-1]["traits"]["plan"] == "free"
    status, history = await call(env, "GET", f"{made['segment']['name']}/syncRuns")
    assert [r["state"] for r in history["runs"]] == ["succeeded", "failed", "succeeded"]


async def test_salesforce_rows_are_read_in_as_profiles(env: Env, fakes: Fakes) -> None:
    fakes.sf_rows = [
        {"Id__c": "sf-1", "Email__c": "ann@example.com", "LastModifiedDate__c": "2026-12-01"},
        {"Id__c": "sf-2", "Email__c": "bob@example.com", "LastModifiedDate__c": "2026-12-02"},
    ]
    config = {**configs(fakes.base_url)["salesforce_data_cloud"], "query_object": "Contact__dlm"}
    made = await connector(
        env,
        {"displayName": "SF in", "platform": "salesforce_data_cloud", "direction": "inbound",
         "config": config,
         "mappings": [{"platformField": "Id__c", "canonicalField": "user_id"},
                      {"platformField": "Email__c", "canonicalField": "email"}]},
    )  # fmt: skip
    runs = await run(env, made["name"])
    assert [(r["direction"], r["state"], r["records"]) for r in runs] == [
        ("inbound", "succeeded", "2")
    ], runs
    profile = await applied(env, "user_id", "sf-2", lambda p: True, within=2.0)
    assert profile["traits"] == {"email": "bob@example.com"}
    # the next run starts after the last row read
    fakes.sf_rows.append(
        {"Id__c": "sf-3", "Email__c": "cy@example.com", "LastModifiedDate__c": "2026-12-03"}
    )
    runs = await run(env, made["name"])
    assert runs[0]["records"] == "1"


async def test_bad_connectors_are_refused_and_schedules_run(env: Env, fakes: Fakes) -> None:
    base = {"displayName": "x", "platform": "segment", "direction": "outbound",
            "config": {"write_key": "k"}}  # fmt: skip
    for change, field in (
        ({"platform": "braze"}, "connector.platform"),
        ({"platform": "zeotap", "config": {"api_key": "k", "org_id": "acme"}},
         "connector.config.org_id"),
        ({"platform": "zeotap", "config": {"api_key": "k"}}, "connector.config.org_id"),
        ({"platform": "zeotap", "direction": "inbound",
          "config": {"api_key": "k", "org_id": "1"}}, "connector.direction"),
        ({"config": {}}, "connector.config.write_key"),
        ({"direction": "inbound"}, "connector.direction"),
        ({"config": {"write_key": "k", "base_url": "ftp://x"}}, "connector.config.base_url"),
        ({"scheduleMinutes": -1}, "connector.schedule_minutes"),
    ):  # fmt: skip
        status, answer = await call(env, "POST", "tenants/acme/connectors", {**base, **change})
        assert status == 400, (change, answer)
        assert field in [v["field"] for v in answer["error"]["fieldViolations"]], answer
    # a scheduled connector runs when due
    await ingest(env, {"type": "identify", "userId": "sched-1", "messageId": "s1"})
    await connector(
        env,
        {"displayName": "hourly", "platform": "segment", "direction": "outbound",
         "scheduleMinutes": 60, "config": configs(fakes.base_url)["segment"]},
    )  # fmt: skip
    connectors = env.running.platform.api("audience").connectors
    started = time.monotonic()
    assert await connectors.run_due() == 1
    assert await connectors.run_due() == 0  # not due again for an hour
    assert time.monotonic() - started < 10
    assert [c["userId"] for c in fakes.took("segment")] == ["sched-1"]


async def test_an_erased_person_is_deleted_from_zeotap_too(env: Env, fakes: Fakes) -> None:
    """A data-subject erasure asks each outbound Zeotap connector to delete
    the person (Profile API deletion); an export names the platforms their
    profile is sent to; a platform that cannot be reached fails the request."""
    await ingest(
        env,
        {"type": "identify", "userId": "gone-1", "anonymousId": "anon-g", "messageId": "g1",
         "traits": {"plan": "pro"}},
        {"type": "identify", "userId": "stays-1", "messageId": "s1"},
    )  # fmt: skip
    made = await connector(
        env,
        {"displayName": "zeotap", "platform": "zeotap", "direction": "outbound",
         "config": configs(fakes.base_url)["zeotap"]},
    )  # fmt: skip
    assert (await run(env, made["name"]))[0]["state"] == "succeeded"
    assert {b["ids"]["user_id"] for b in fakes.took("zeotap")} == {"gone-1", "stays-1"}

    status, body = await call(
        env, "POST", "tenants/acme/dataSubjectRequests",
        {"kind": "DATA_SUBJECT_REQUEST_KIND_EXPORT",
         "subject": {"kind": "user_id", "value": "gone-1"}},
    )  # fmt: skip
    assert status == 200, body
    shared = body["dataSubjectRequest"]["archive"]["domains"]["connectedPlatforms"]
    assert shared == [{"connector": made["name"], "platform": "zeotap"}]

    status, body = await call(
        env, "POST", "tenants/acme/dataSubjectRequests",
        {"kind": "DATA_SUBJECT_REQUEST_KIND_ERASE",
         "subject": {"kind": "user_id", "value": "gone-1"}},
    )  # fmt: skip
    assert status == 200, body
    record = body["dataSubjectRequest"]
    assert record["state"] == "DATA_SUBJECT_REQUEST_STATE_SUCCEEDED", record
    assert sorted(fakes.took("zeotap:deleted")) == ["anon-g", "gone-1"]
    assert record["summary"]["connectedPlatforms"] == 2
    assert fakes.refused == []

    # Zeotap unreachable: the erasure is recorded as failed, not as done
    status, _ = await call(env, "DELETE", made["name"])
    assert status == 200
    await connector(
        env,
        {"displayName": "zeotap", "platform": "zeotap", "direction": "outbound",
         "config": {**configs(fakes.base_url)["zeotap"], "base_url": "http://127.0.0.1:9"}},
    )  # fmt: skip
    status, body = await call(
        env, "POST", "tenants/acme/dataSubjectRequests",
        {"kind": "DATA_SUBJECT_REQUEST_KIND_ERASE",
         "subject": {"kind": "user_id", "value": "stays-1"}},
    )  # fmt: skip
    assert status == 200, body
    assert body["dataSubjectRequest"]["state"] == "DATA_SUBJECT_REQUEST_STATE_FAILED"
    # nothing was removed here: the request can be made again
    status, _ = await call(env, "GET", "tenants/acme/profiles:resolve?kind=user_id&value=stays-1")
    assert status == 200
