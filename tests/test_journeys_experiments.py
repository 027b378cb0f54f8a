"""Experiment splits: a journey's split that sends each person down the
path of their variant in an experiment (services/decisioning), logs their
exposure, shows it in simulations, and refuses paths that do not match the
experiment's variants."""

from __future__ import annotations

from typing import Any

from tests.conftest import Env
from tests.test_audience_segments import ingest
from tests.test_audience_service import call
from tests.test_experiments import _experiment, _results
from tests.test_journeys import instance_when

PEOPLE = [f"reader-{n}" for n in range(8)]


def _journey(experiment: str, paths: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "displayName": "Onboarding test",
        "trigger": {"api": {}},
        "nodes": [
            {"id": "ab", "split": {"experiment": experiment, "paths": paths}},
            {"id": "a", "update": {"traits": {"onboarding": "short"}}},
            {"id": "b", "update": {"traits": {"onboarding": "long"}}},
        ],
    }


async def test_an_experiment_split_follows_the_persons_variant(env: Env) -> None:
    body = _experiment(variants=[{"id": "short"}, {"id": "long"}], salt="")
    status, made = await call(env, "POST", "tenants/acme/experiments", body)
    assert status == 200, made
    experiment = made["name"]
    paths = [{"variant": "short", "next": "a"}, {"variant": "long", "next": "b"}]

    # saving checks the paths against the experiment's variants
    async def refused(paths: list[dict[str, Any]], field: str, exp: str = experiment) -> None:
        status, got = await call(env, "POST", "tenants/acme/journeys", _journey(exp, paths))
        assert status == 400, (field, got)
        fields = [v["field"] for v in got["error"].get("fieldViolations", [])]
        assert field in fields, (field, got)

    await refused([{"variant": "short", "next": "a"}, {"variant": "tall", "next": "b"}],
                  "journey.nodes[0].split.paths[1].variant")  # fmt: skip
    await refused([{"variant": "short", "next": "a"}, {"variant": "short", "next": "b"}],
                  "journey.nodes[0].split.paths[1].variant")  # fmt: skip
    await refused([{"variant": "short", "next": "a"}, {"next": "b"}],
                  "journey.nodes[0].split.paths[1].variant")  # fmt: skip
    await refused(paths, "journey.nodes[0].split.experiment", "tenants/acme/experiments/nope")
    await refused(paths, "journey.nodes[0].split.experiment", "tenants/globex/experiments/x")
    status, got = await call(env, "POST", "tenants/acme/journeys", {
        "displayName": "Plain split", "trigger": {"api": {}},
        "nodes": [{"id": "ab", "split": {"paths": [{"weight": 1, "next": "a", "variant": "x"},
                                                   {"weight": 1, "next": "a"}]}},
                  {"id": "a", "exit": {}}]})  # fmt: skip
    assert status == 400, got
    assert got["error"]["fieldViolations"][0]["field"] == "journey.nodes[0].split.paths[0].variant"

    status, saved = await call(env, "POST", "tenants/acme/journeys", _journey(experiment, paths))
    assert status == 200, saved
    name = saved["journey"]["name"]
    assert saved["journey"]["nodes"][0]["split"]["paths"][1] == {"next": "b", "variant": "long"}
    status, published = await call(env, "POST", f"{name}:publish", {})
    assert status == 200, published
    for person in PEOPLE:
        await ingest(env, {"type": "identify", "userId": person, "traits": {"plan": "free"}})

    # a draft experiment: everyone takes the control's path
    status, walked = await call(env, "POST", f"{name}:simulate", {"userId": PEOPLE[0]})
    assert walked["steps"][0]["outcome"] == "variant short (not in the experiment)", walked
    status, started = await call(env, "POST", f"{experiment}:start", {})
    assert status == 200, started

    expected = {}
    for person in PEOPLE:
        status, asked = await call(env, "POST", f"{experiment}:assign",
                                   {"userId": person, "skipExposure": True})  # fmt: skip
        expected[person] = asked["variantId"]
        status, walked = await call(env, "POST", f"{name}:simulate", {"userId": person})
        assert status == 200, walked
        assert walked["steps"][0]["outcome"] == f"variant {asked['variantId']}", walked
        assert walked["steps"][1]["node"] == ("a" if asked["variantId"] == "short" else "b")
    assert set(expected.values()) == {"short", "long"}, expected  # both paths taken

    for person in PEOPLE:
        status, entered = await call(env, "POST", f"{name}:enter", {"userId": person})
        assert status == 200, entered
        await instance_when(env, entered["instance"]["name"],
                            lambda i: i["state"] == "INSTANCE_STATE_COMPLETED")  # fmt: skip
        resolve = f"tenants/acme/profiles:resolve?kind=user_id&value={person}"
        status, found = await call(env, "GET", resolve)
        wanted = "short" if expected[person] == "short" else "long"
        assert found["profile"]["traits"]["onboarding"] == wanted, found
    # each way's exposure is the experiment's: every person counted in their variant
    results = await _results(env, experiment, len(PEOPLE), len(PEOPLE))
    counted = {v["variant"]: int(v.get("users", 0)) for v in results["variants"]}
    assert counted == {
        "short": list(expected.values()).count("short"),
        "long": list(expected.values()).count("long"),
    }
