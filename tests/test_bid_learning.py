"""The bid model's learning loop: the auction explores with known
propensities, every bid logs what the model saw and what it drew from,
clicks label the shown bids, a retraining learns from them and publishes
only a better model, and serving reloads it."""

from __future__ import annotations

import asyncio
import dataclasses
import math
import pathlib
import time
from collections import Counter
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from inference.checkpoint import default_checkpoint, load_checkpoint
from inference.evaluate import off_policy_gate
from services.bidding.auction import Scored, choose_winners, run_auction
from services.bidding.currency import Rates
from services.bidding.decisions import Exploration
from services.bidding.matching import Candidate
from services.campaigns.index import LiveCampaign
from services.campaigns.model import Money
from services.inference.logs import read_columns
from services.inference.retrain import Retrainer
from tests.conftest import Env
from tests.test_bidding_auction import auction_floors, auction_slots, campaign, offer
from tests.test_bidding_e2e import OFFER, SYSTEM, bid_request, post_bid, spec


@pytest.mark.parametrize("rate", [0.05, 0.3, 1.0])
@pytest.mark.parametrize("k", [1, 2, 3, 5])
def test_picks_follow_their_propensities(rate: float, k: int) -> None:
    """Over many requests each of the k candidates is drawn as often as its
    logged propensity says, and the propensities sum to one."""
    exploration = Exploration(rate, 5)
    n = 20_000
    counts: Counter[int] = Counter()
    propensity: dict[int, float] = {}
    explored = 0
    for i in range(n):
        index, p, was_explored = exploration.pick(exploration.draw(f"req-{i}", "1"), k)
        counts[index] += 1
        explored += was_explored
        assert propensity.setdefault(index, p) == p  # one propensity per index
    assert sum(propensity.values()) == pytest.approx(1.0) or k == 1
    for index, p in propensity.items():
        se = math.sqrt(p * (1 - p) / n)
        assert abs(counts[index] / n - p) <= 4.5 * se + 1e-9, (index, counts[index], p)
    if k > 1:
        assert abs(explored / n - rate) <= 4.5 * math.sqrt(rate * (1 - rate) / n) + 1e-9
    else:
        assert counts == {0: n} and propensity == {0: 1.0} and explored == 0
    # the draw is fixed by the ids: a decision can be replayed
    assert exploration.draw("req-1", "1") == exploration.draw("req-1", "1")
    assert exploration.draw("req-1", "1") != exploration.draw("req-1", "2")


def test_bad_exploration_settings_are_refused() -> None:
    for rate, top in ((-0.1, 3), (1.5, 3), (0.1, 0), (0.1, 17), (math.nan, 3)):
        with pytest.raises(ValueError):
            Exploration(rate, top)


def _auction_inputs(
    rows: list[tuple[float, float, str, set[str], int, bool]],
) -> tuple[list[Candidate], list[float], list[float]]:
    candidates, scores = [], []
    for score, cpm, cur, imps, offer_no, repeats in rows:
        made = offer(f"o{offer_no}", f"c{offer_no}", bid_cpm=Money(cur, int(cpm * 1e6)))
        live = LiveCampaign(campaign(f"c{offer_no}", allow_repeat_offers=repeats), (made,))
        candidates.append(Candidate(live, live.offer_facts[0], tuple(sorted(imps))))
        scores.append(score)
    return candidates, scores, [0.0] * len(rows)


_rows = st.lists(
    st.tuples(
        st.sampled_from([0.1, 0.5, 0.5, 0.9]),
        st.sampled_from([0.5, 1.0, 2.0]),
        st.sampled_from(["USD", "EUR", "XYZ"]),
        st.sets(st.sampled_from(["1", "2", "3"]), min_size=1),
        st.integers(0, 5),
        st.booleans(),
    ),
    max_size=12,
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_rows, auction_floors, st.integers(2, 4), st.integers(0, 3))
def test_an_exploring_auction_draws_from_the_best_qualifying_candidates(
    rows: list[tuple[float, float, str, set[str], int, bool]],
    floors: list[tuple[float, str]],
    top: int,
    forced: int,
) -> None:
    """Never exploring, it picks exactly the greedy auction's winners; each
    pick is drawn from at most `top` candidates that fit the slot, clear its
    floor and are not used, the greedy pick first; forcing index j picks the
    j-th of them."""
    rates = Rates()
    candidates, scores, ctrs = _auction_inputs(rows)
    slots = auction_slots(floors)
    greedy, reason = run_auction(candidates, scores, ctrs, "", slots, rates, "USD")
    pools: list[int] = []

    def never(imp_id: str, k: int) -> tuple[int, float, bool]:
        pools.append(k)
        return 0, 1.0, False

    same, same_reason = run_auction(candidates, scores, ctrs, "", slots, rates, "USD", never, top)
    assert [(w.imp_id, w.scored.candidate.facts.name, w.price_cpm) for w in same] == [
        (w.imp_id, w.scored.candidate.facts.name, w.price_cpm) for w in greedy
    ]
    assert same_reason == reason
    for w, k in zip(same, pools, strict=True):
        assert 1 <= len(w.drawn_from) == k <= top
        assert candidates[w.drawn_from[0]] is w.scored.candidate
        drawn = [scores[i] for i in w.drawn_from]
        assert drawn[0] == max(drawn) and drawn[1:] == sorted(drawn[1:], reverse=True)
        for i in w.drawn_from:
            assert w.imp_id in candidates[i].slots
    # force the pick: the j-th of the pool (or its last)
    chosen: list[tuple[int, int]] = []

    def force(imp_id: str, k: int) -> tuple[int, float, bool]:
        j = min(forced, k - 1)
        chosen.append((j, k))
        return j, 0.25, j > 0

    explored, _ = run_auction(candidates, scores, ctrs, "", slots, rates, "USD", force, top)
    if not explored:
        return
    first = explored[0]
    j, _k = chosen[0]
    assert candidates[first.drawn_from[j]] is first.scored.candidate
    assert (first.propensity, first.explored) == (0.25, j > 0)
    names = [w.scored.candidate.facts.name for w in explored]
    repeatable = {c.facts.name for c in candidates if c.live.campaign.spec.allow_repeat_offers}
    for name in set(names) - repeatable:  # an offer wins once unless it may repeat
        assert names.count(name) == 1
    # and choose_winners, the exhaustive auction, agrees with the greedy pick
    eager = choose_winners(
        [Scored(c, s, 0.0, *_price(c, s)) for c, s in zip(candidates, scores, strict=True)],
        slots,
        rates,
        "USD",
    )
    assert [w.scored.candidate.facts.name for w in eager[0]] == [
        w.scored.candidate.facts.name for w in greedy
    ]


def _price(candidate: Candidate, score: float) -> tuple[float, str]:
    from services.bidding.auction import price_candidates

    priced = price_candidates([candidate], [score], [0.0], "")[0]
    return priced.price_cpm, priced.currency


LEARNING = {
    "bid_exploration": 0.5,
    "bid_exploration_top": 3,
    "inference_reload_seconds": 0.2,
    "rate_limit_per_second": 0,
}


async def _three_offer_campaign(env: Env) -> dict[str, str]:
    """A live campaign of three offers that fit the same slot: offer id ->
    the model's id of it (its resource name)."""
    platform = env.running.platform
    offers = [
        dataclasses.replace(OFFER, display_name=name, markup_template=f"<a>{name}</a>")
        for name in ("red", "green", "blue")
    ]
    created = await platform.api("campaigns").campaigns.create(
        None, "tenants/acme", spec(), offers_to_add=offers
    )
    await platform.api("campaigns").workflow.act(SYSTEM, created.name, "SUBMIT")
    await platform.api("campaigns").workflow.act(SYSTEM, created.name, "GO_LIVE")
    index = platform.api("bidding").index
    await index.wait_for(lambda i: i.get(created.name) is not None, timeout=2.0)
    return {o.id: o.name for o in index.get(created.name).offers}


async def _bid(env: Env, request_id: str, user: str) -> dict[str, Any]:
    status, _, raw = await post_bid(env, bid_request(request_id, user=user))
    assert status == 200, raw
    return dict(orjson.loads(raw)["seatbid"][0]["bid"][0])


async def _notice(env: Env, url: str) -> None:
    url = url.replace("http://localhost:8080", env.base_url).replace("${AUCTION_PRICE}", "1")
    async with env.http.get(url) as r:
        assert r.status == 200, await r.text()


@pytest.mark.parametrize("env", [LEARNING], indirect=True)
async def test_bids_log_their_decisions_clicks_label_them_and_a_retrained_model_is_served(
    env: Env,
) -> None:
    platform = env.running.platform
    store = platform.backends.analytics
    model_ids = await _three_offer_campaign(env)
    engine = platform.api("inference")
    untrained = engine.model().checkpoint_sha256
    # 1. traffic; every bid is shown, and people click one offer only: the
    # most shown of those the untrained model does not rank first
    bids = [await _bid(env, f"learn-{i}", f"person-{i}") for i in range(160)]
    await platform.api("bidding").decisions.flush()
    ((untrained_pick,),) = await store.query(
        "SELECT offer_id FROM bid_decisions FINAL WHERE tenant_id = 'acme' AND explored = 0 "
        "GROUP BY offer_id ORDER BY count() DESC LIMIT 1"
    )
    shown = Counter(b["adid"] for b in bids if model_ids[b["adid"]] != untrained_pick)
    (liked, _), *_ = shown.most_common(1)
    for i, bid in enumerate(bids):
        if i % 4:  # some exchanges send the billing notice only
            await _notice(env, bid["nurl"])
        else:
            await _notice(env, bid["burl"])
        if bid["adid"] == liked:
            await _notice(env, bid["nurl"].split("&", 1)[0].replace("/v1/win?", "/v1/click?"))
    await platform.api("bidding").pipeline.flush()

    # 2. the log: what the model saw, what the pick was drawn from, and how likely
    rows = await store.query(
        "SELECT request_id, offer_id, intDiv(length(base64Decode(features)), 4), candidates, "
        "scores, propensity, "
        "explored, model, user_id FROM bid_decisions FINAL WHERE tenant_id = 'acme' "
        "ORDER BY request_id"
    )
    assert len(rows) == 160
    by_request = {row[0]: row for row in rows}
    explored = 0
    for i, bid in enumerate(bids):
        _, offer_id, dim, candidates, scores, propensity, was_explored, model, user = by_request[
            f"learn-{i}"
        ]
        assert offer_id == model_ids[bid["adid"]] and offer_id in candidates
        assert (dim, len(candidates), model, user) == (140, 3, untrained, f"person-{i}")
        assert sorted(candidates) == sorted(model_ids.values())
        assert scores[0] == max(scores)
        explored += was_explored
        share = 0.5 / 3
        if was_explored:
            assert propensity == pytest.approx(
                1 - 0.5 + share if candidates[0] == offer_id else share
            )
        else:
            assert candidates[0] == offer_id and propensity == pytest.approx(1 - 0.5 + share)
    assert 40 <= explored <= 120  # half of 160, give or take 6 standard errors

    # 3. shown bids with their labels, in the schema `model train` reads
    shown = await store.query(
        "SELECT offer_id, clicked, propensity FROM bid_impressions WHERE tenant_id = 'acme'"
    )
    assert len(shown) == 160
    ((dims, zeros),) = await store.query(
        "SELECT groupUniqArray(length(features)), countIf(arraySum(arrayMap(x -> abs(x), "
        "features)) = 0) FROM bid_impressions"
    )
    assert (dims, zeros) == ([140], 0)  # the vectors decoded from the log
    clicks = Counter(offer for offer, clicked, _ in shown if clicked)
    assert set(clicks) == {model_ids[liked]}
    assert clicks[model_ids[liked]] == sum(1 for b in bids if b["adid"] == liked) > 0

    # 4. a retraining learns that people click the liked offer, beats the untrained
    # model on held-out log loss and off-policy, and is published
    published = engine.watched_path
    retrainer = Retrainer(
        store, platform.settings.data_dir, pathlib.Path(published), every_seconds=0,
        min_rows=100, epochs=30,
    )  # fmt: skip
    outcome = await retrainer.run_once(batch_size=16)
    assert outcome.published, (outcome.why, outcome.report)
    assert outcome.rows == 160
    ope = outcome.report["offPolicy"]
    assert ope["rows"] == 32 and ope["new"] >= ope["current"]
    assert outcome.report["validation"]["log_loss"] < outcome.report["current"]["log_loss"]
    assert ope["differenceLow"] > 0  # significantly better: it ranks the liked offer first
    # the other way round the gate refuses: the untrained model is
    # significantly worse off-policy than the trained one
    columns = await read_columns("bid_impressions", store)
    trained = load_checkpoint(published)
    backwards = off_policy_gate(columns, 0.2, new=default_checkpoint(), current=trained)
    assert backwards is not None and backwards["better"] is False
    assert backwards["differenceHigh"] < 0 and backwards["new"] == 0.0

    # 5. serving reloads it, and bids go to the liked offer unless they explore
    deadline = time.monotonic() + 10
    while engine.model().checkpoint_sha256 != outcome.report["checkpoint_sha256"]:
        assert time.monotonic() < deadline, "the published model was not reloaded"
        await asyncio.sleep(0.05)
    after = [await _bid(env, f"after-{i}", f"person-{i}") for i in range(40)]
    await platform.api("bidding").decisions.flush()
    greedy = await store.query(
        "SELECT offer_id, model FROM bid_decisions FINAL "
        "WHERE tenant_id = 'acme' AND request_id LIKE 'after-%' AND explored = 0"
    )
    assert greedy and {row for row in greedy} == {
        (model_ids[liked], outcome.report["checkpoint_sha256"])
    }
    assert sum(1 for b in after if b["adid"] == liked) >= len(greedy)
