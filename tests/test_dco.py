"""Dynamic creative optimisation (FR-DCO-001..006): templates with slots,
variants chosen by Thompson sampling with exploration and segment affinity,
counted once per event, and assembled into the bid's markup."""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import orjson
import pytest

from services.decisioning.dco import (
    Counts,
    Slot,
    SlotOption,
    TemplateSpec,
    Variants,
    choose,
    validate,
    wilson,
)
from tests.conftest import Env
from tests.test_audience_service import call
from tests.test_bidding_e2e import OFFER, SYSTEM, bid_request, post_bid, spec

TEMPLATES = "tenants/acme/creativeTemplates"

BANNER: dict[str, Any] = {
    "displayName": "Boots banner",
    "markup": "<a href='${CLICK_URL}' style='color:{{colour}}'><h1>{{ headline }}</h1>"
    "<img src='{{image}}'></a>",
    "slots": [
        {"name": "headline", "options": [
            {"id": "h1", "value": "Boots for every trail"},
            {"id": "h2", "value": "Match day boots", "segments": ["sports-fans"]},
        ]},
        {"name": "image", "options": [
            {"id": "trail", "value": "https://cdn.shop.example/trail.png"},
            {"id": "pitch", "value": "https://cdn.shop.example/pitch.png",
             "segments": ["sports-fans"]},
            {"id": "city", "value": "https://cdn.shop.example/city.png"},
        ]},
        {"name": "colour", "options": [{"id": "red", "value": "#c00"},
                                       {"id": "blue", "value": "#00c"}]},
    ],
}  # fmt: skip


def fields(body: Any) -> set[str]:
    return {v["field"] for v in body["error"].get("fieldViolations", [])}


def _spec(options: list[int], exploration: float = 0.1, **kw: Any) -> TemplateSpec:
    slots = tuple(
        Slot(f"s{i}", tuple(SlotOption(f"o{j}", f"<{i}.{j}>") for j in range(n)))
        for i, n in enumerate(options)
    )
    markup = "".join(f"{{{{s{i}}}}}" for i in range(len(options)))
    return TemplateSpec("t", markup, slots, exploration, **kw)


async def test_a_template_is_managed_over_rest(env: Env) -> None:
    status, made = await call(env, "POST", f"{TEMPLATES}?creativeTemplateId=boots", BANNER)
    assert status == 200, made
    assert made["name"] == f"{TEMPLATES}/boots" and made["variantCount"] == 12
    assert made["explorationRate"] == 0.1  # FR-DCO-006's default
    assert made["weights"] == {"ctr": 0.5, "cvr": 0.3, "segmentAffinity": 0.2}  # FR-DCO-003
    status, again = await call(env, "POST", f"{TEMPLATES}?creativeTemplateId=boots", BANNER)
    assert status == 409, again
    status, got = await call(env, "GET", f"{TEMPLATES}/boots")
    assert status == 200 and got == made
    await call(env, "POST", f"{TEMPLATES}?creativeTemplateId=other", BANNER)
    status, page = await call(env, "GET", f"{TEMPLATES}?pageSize=1")
    assert [t["name"] for t in page["creativeTemplates"]] == [f"{TEMPLATES}/boots"]
    status, rest = await call(
        env, "GET", f"{TEMPLATES}?pageSize=1&pageToken={page['nextPageToken']}"
    )
    assert [t["name"] for t in rest["creativeTemplates"]] == [f"{TEMPLATES}/other"]
    assert not rest.get("nextPageToken")
    status, chosen = await call(env, "POST", f"{TEMPLATES}/boots:choose", {})
    assert status == 200, chosen
    h, image, colour = chosen["variantId"].split(".")
    assert f"color:{'#c00' if colour == 'red' else '#00c'}" in chosen["markup"]
    assert f"{image}.png" in chosen["markup"] and "{{" not in chosen["markup"]
    status, _ = await call(env, "DELETE", f"{TEMPLATES}/other")
    assert status == 200
    status, gone = await call(env, "GET", f"{TEMPLATES}/other")
    assert status == 404, gone
    status, denied = await call(env, "GET", f"{TEMPLATES}/boots", tenant="globex")
    assert status == 403, denied


async def test_templates_that_cannot_work_are_400_naming_each_field(env: Env) -> None:
    bad = {
        "displayName": "",
        "markup": "<p>{{headline}} {{missing}}</p>",
        "slots": [
            {"name": "headline", "options": [{"id": "a", "value": "x"}, {"id": "a", "value": "y"}]},
            {"name": "unused", "options": [{"id": "b", "value": "z"}]},
            {"name": "Bad Name", "options": []},
        ],
        "explorationRate": 1.5,
        "weights": {"ctr": 0.5, "cvr": 0.5, "segmentAffinity": 0.5},
    }  # fmt: skip
    status, got = await call(env, "POST", f"{TEMPLATES}?creativeTemplateId=bad", bad)
    assert status == 400, got
    assert fields(got) == {
        "creative_template.display_name", "creative_template.markup",
        "creative_template.slots[0].options[1].id", "creative_template.slots[1].name",
        "creative_template.slots[2].name", "creative_template.slots[2].options",
        "creative_template.exploration_rate", "creative_template.weights",
    }, got  # fmt: skip
    status, got = await call(env, "POST", f"{TEMPLATES}?creativeTemplateId=X", BANNER)
    assert status == 400 and fields(got) == {"creative_template_id"}, got
    # FR-DCO-005: at most 1,000 combinations
    assert validate(_spec([10, 10, 10])) == []
    [too_many] = validate(_spec([10, 10, 11]))
    assert too_many.field == "creative_template.slots" and "1,100 variants" in too_many.description
    status, got = await call(env, "POST", f"{TEMPLATES}/nope:choose", {})
    assert status == 404, got


def test_thompson_sampling_finds_the_best_variant_and_explores_ten_percent() -> None:
    rng = np.random.default_rng(7)
    variants = Variants(_spec([2, 3]))
    true_ctr = np.full(len(variants), 0.02)
    best = variants.index["o1.o2"]
    true_ctr[best] = 0.06
    counts = Counts(len(variants))
    explored, late = 0, []
    for t in range(8_000):
        c = choose(variants, counts, (), rng)
        i = variants.index[c.variant_id]
        explored += c.explored
        counts.add(i, "impression")
        if rng.random() < true_ctr[i]:
            counts.add(i, "click")
        if t >= 6_000:
            late.append(i)
    assert 0.08 <= explored / 8_000 <= 0.12  # FR-DCO-006
    assert np.mean(np.array(late) == best) > 0.75  # (a uniform choice: 1/6)


def test_a_variant_score_weighs_ctr_cvr_and_segment_affinity() -> None:
    rng = np.random.default_rng(1)
    spec = TemplateSpec(
        "t", "{{a}}{{b}}",
        (Slot("a", (SlotOption("plain", "x"), SlotOption("sport", "y", ("sports-fans",)))),
         Slot("b", (SlotOption("plain", "x"), SlotOption("sport", "y", ("sports-fans",))))),
        exploration_rate=0.0, weights=(0.0, 0.0, 1.0),
    )  # fmt: skip
    variants, counts = Variants(spec), Counts(4)
    assert list(variants.affinity(["sports-fans", "x"])) == [0.0, 0.5, 0.5, 1.0]  # type: ignore[arg-type]
    assert variants.affinity(["gamers"]) is None
    assert {choose(variants, counts, ["sports-fans"], rng).variant_id for _ in range(50)} == {
        "sport.sport"
    }
    # CVR only: the variant converting its clicks wins, whatever its CTR
    by_cvr = Variants(dataclasses.replace(spec, weights=(0.0, 1.0, 0.0)))
    counts.impressions[:] = 1_000
    counts.clicks[:] = 100
    counts.conversions[:] = [5, 5, 40, 5]
    chosen = {choose(by_cvr, counts, (), rng).variant_id for _ in range(50)}
    assert chosen == {"sport.plain"}
    # the default weights: each part relative to the best draw, so at most 1
    c = choose(Variants(dataclasses.replace(spec, weights=(0.5, 0.3, 0.2))), counts,
               ["sports-fans"], rng)  # fmt: skip
    assert not c.explored and 0.0 < c.score <= 1.0 and c.affinity in (0.0, 0.5, 1.0)


def test_wilson_intervals() -> None:
    p, low, high = wilson(10, 100)
    assert p == 0.1 and low == pytest.approx(0.05523, abs=1e-4)
    assert high == pytest.approx(0.17437, abs=1e-4)
    assert wilson(0, 0) == (0.0, 0.0, 0.0)


async def test_variant_events_count_once_and_report_per_variant(env: Env) -> None:
    await call(env, "POST", f"{TEMPLATES}?creativeTemplateId=boots", BANNER)
    events = [
        {"eventId": event_id, "variantId": variant, "type": f"VARIANT_EVENT_TYPE_{kind}"}
        for event_id, variant, kind in [
            ("b1-imp", "h2.pitch.red", "IMPRESSION"), ("b2-imp", "h2.pitch.red", "IMPRESSION"),
            ("b1-click", "h2.pitch.red", "CLICK"), ("b1-conv", "h2.pitch.red", "CONVERSION"),
            ("b3-imp", "h1.city.blue", "IMPRESSION"),
        ]
    ]  # fmt: skip
    path = f"{TEMPLATES}/boots:recordEvents"
    status, got = await call(env, "POST", path, {"events": events})
    assert status == 200 and got["recorded"] == 5, got
    status, got = await call(env, "POST", path, {"events": events + events})  # a retry
    assert status == 200 and got.get("recorded", 0) == 0, got
    status, stats = await call(env, "GET", f"{TEMPLATES}/boots/stats?pageSize=2")
    assert status == 200 and stats["variantCount"] == 12, stats
    top = stats["variants"][0]
    assert top["variantId"] == "h2.pitch.red"
    assert (top["impressions"], top["clicks"], top["conversions"]) == ("2", "1", "1")
    assert top["ctr"] == 0.5 and 0 < top["ctrLow"] < 0.5 < top["ctrHigh"] <= 1
    assert len(stats["variants"]) == 2
    bad = [
        {"eventId": "", "variantId": "h9.pitch.red", "type": "VARIANT_EVENT_TYPE_UNSPECIFIED"},
    ]
    status, got = await call(env, "POST", path, {"events": bad})
    assert status == 400 and fields(got) == {
        "events[0].event_id", "events[0].variant_id", "events[0].type"
    }, got  # fmt: skip
    status, got = await call(env, "POST", path, {"events": []})
    assert status == 400 and fields(got) == {"events"}, got


async def test_a_dco_offer_bids_a_variant_and_its_notices_count_it(env: Env) -> None:
    status, made = await call(env, "POST", f"{TEMPLATES}?creativeTemplateId=boots", BANNER)
    assert status == 200, made
    platform = env.running.platform
    offer = dataclasses.replace(OFFER, creative_template=f"{TEMPLATES}/boots")
    campaign = await platform.api("campaigns").campaigns.create(
        None, "tenants/acme", spec(), offers_to_add=[offer]
    )
    await platform.api("campaigns").workflow.act(SYSTEM, campaign.name, "SUBMIT")
    await platform.api("campaigns").workflow.act(SYSTEM, campaign.name, "GO_LIVE")
    await platform.api("bidding").index.wait_for(
        lambda i: i.get(campaign.name) is not None, timeout=2.0
    )
    await call(env, "POST", f"{TEMPLATES}/boots:choose", {})  # this process has read it
    status, _, raw = await post_bid(env, bid_request("dco-1", user="u-dco"))
    assert status == 200, raw
    bid = orjson.loads(raw)["seatbid"][0]["bid"][0]
    offer_id, variant = bid["crid"].split(".", 1)
    assert offer_id == bid["adid"] and variant.count(".") == 2
    assert "<h1>" in bid["adm"] and "{{" not in bid["adm"]
    assert "/v1/click?t=" in bid["adm"]  # ${CLICK_URL} filled in the variant's markup
    win = bid["nurl"].replace("http://localhost:8080", env.base_url)
    for _ in range(2):  # a retried win: one impression
        async with env.http.get(win.replace("${AUCTION_PRICE}", "2")) as r:
            assert r.status == 200
    click = bid["adm"].split("href='", 1)[1].split("'", 1)[0]
    async with env.http.get(click.replace("http://localhost:8080", env.base_url)) as r:
        assert r.status == 200
    status, stats = await call(env, "GET", f"{TEMPLATES}/boots/stats?pageSize=1")
    top = stats["variants"][0]
    assert (top["variantId"], top["impressions"], top["clicks"]) == (variant, "1", "1"), stats
    # a template deleted: the offer bids with its own markup again
    status, _ = await call(env, "DELETE", f"{TEMPLATES}/boots")
    assert status == 200
    status, _, raw = await post_bid(env, bid_request("dco-2", user="u-dco"))
    bid = orjson.loads(raw)["seatbid"][0]["bid"][0]
    assert status == 200 and bid["crid"] == bid["adid"] and "<h1>" not in bid["adm"], bid


async def test_an_offer_names_a_template_by_its_resource_name(env: Env) -> None:
    from services.common.errors import InvalidArgument

    offer = dataclasses.replace(OFFER, creative_template="creativeTemplates/boots")
    with pytest.raises(InvalidArgument) as raised:
        await env.running.platform.api("campaigns").campaigns.create(
            None, "tenants/acme", spec(), offers_to_add=[offer]
        )
    assert [v.field for v in raised.value.field_violations] == ["offers[0].creative_template"]
