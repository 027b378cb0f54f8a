"""Candidate matching, the auction and notice tokens: pure unit tests."""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import hmac
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from services.bidding.auction import Scored, choose_winners, price_candidates, run_auction
from services.bidding.currency import Rates, UnknownCurrency
from services.bidding.matching import (
    MAX_CANDIDATES,
    Candidate,
    CandidateIndex,
    Context,
    Slot,
    campaign_matches,
    deal_allows,
    offer_blocked,
)
from services.bidding.notices import NoticeSigner, NoticeToken, parse_price
from services.campaigns.index import LiveCampaign
from services.campaigns.model import (
    BidStrategy,
    Budget,
    Campaign,
    CampaignSpec,
    Daypart,
    LoyaltyTierRule,
    Money,
    Offer,
    OfferSpec,
    Schedule,
    Size,
    Targeting,
)
from services.common.errors import InvalidArgument

NOW = 1_795_000_000_000_000  # a Tuesday in 2026, UTC


def campaign(cid: str = "c1", **spec: object) -> Campaign:
    base = CampaignSpec(
        display_name=cid,
        channels=["DISPLAY"],
        schedule=Schedule("2026-01-01T00:00", "2030-01-01T00:00", "UTC"),
        budget=Budget(total=Money("USD", 10**9)),
        bid_strategy=BidStrategy("MAX_CPM", max_cpm=Money("USD", 5_000_000)),
    )
    return Campaign(cid, "acme", dataclasses.replace(base, **spec), "LIVE", 1, "", 1, 1, 0, 0)


def offer(oid: str, cid: str = "c1", **spec: object) -> Offer:
    base = OfferSpec(
        display_name=oid,
        format="BANNER",
        sizes=[Size(300, 250)],
        markup_template="<a/>",
        click_url="https://a.example",
        advertiser_domains=["shop.example"],
        iab_categories=["IAB22"],
        bid_cpm=Money("USD", 2_000_000),
    )
    return Offer(oid, "acme", cid, dataclasses.replace(base, **spec), 1, 0, 0)


def select_candidates(live: list[LiveCampaign], slots: list[Slot], ctx: Context) -> list[Candidate]:
    return CandidateIndex(live).select(slots, ctx)


def recommended_cpm(candidate: Candidate, score: float, tier: str) -> tuple[float, str]:
    """One candidate's price and currency through `price_candidates`."""
    (scored,) = price_candidates([candidate], [score], [0.0], tier)
    return scored.price_cpm, scored.currency


def reference_select(
    live: list[LiveCampaign], slots: list[Slot], ctx: Context
) -> list[tuple[str, tuple[str, ...]]]:
    """The rules one campaign and one offer at a time: what the compiled
    index must agree with."""
    out: list[tuple[str, tuple[str, ...]]] = []
    for entry in live:
        if campaign_matches(entry.campaign, ctx) is not None:
            continue
        for facts in entry.offer_facts:
            if offer_blocked(facts, ctx):
                continue
            imp_ids = tuple(
                slot.imp_id
                for slot in slots
                if deal_allows(entry, slot)
                and not facts.placements.isdisjoint(slot.placements)
                and slot.blocked_attributes.isdisjoint(facts.attributes)
            )
            if imp_ids:
                out.append((facts.name, imp_ids))
                if len(out) == MAX_CANDIDATES:
                    return out
    return out


SLOT = Slot("1", frozenset({"BANNER"}), frozenset({(300, 250)}), 0.5, "USD")
CTX = Context(now_us=NOW, country="USA", device_type="MOBILE", site_domain="news.example")


@pytest.mark.parametrize(
    ("targeting", "ctx", "reason"),
    [
        (Targeting(countries=["FRA"]), CTX, "geo"),
        (Targeting(device_types=["DESKTOP"]), CTX, "device"),
        (Targeting(site_deny=["example"]), CTX, "site denied"),
        (Targeting(site_allow=["other.example"]), CTX, "site not allowed"),
        (Targeting(segments=["sports"]), CTX, "segments"),
        (
            Targeting(segments=["sports"]),
            dataclasses.replace(CTX, segments=frozenset({"sports"})),
            None,
        ),
        (Targeting(countries=["USA"], site_allow=["example"]), CTX, None),
    ],
)
def test_targeting_rules(targeting: Targeting, ctx: Context, reason: str | None) -> None:
    c = campaign(targeting=targeting)
    assert campaign_matches(c, ctx) == reason
    found = select_candidates([LiveCampaign(c, (offer("o"),))], [SLOT], ctx)
    assert [x.offer.id for x in found] == ([] if reason else ["o"])


def test_dayparts_and_excluded_loyalty_tiers() -> None:
    hour = (NOW // 3_600_000_000) % 24
    closed = Schedule(
        "2026-01-01T00:00",
        "2030-01-01T00:00",
        "UTC",
        dayparts=[Daypart(start_hour=(hour + 1) % 24 or 1, end_hour=24)],
    )
    assert campaign_matches(campaign(schedule=closed), CTX) in ("daypart", None)
    excluded = campaign(loyalty_rules=[LoyaltyTierRule("gold", exclude=True)])
    gold = dataclasses.replace(CTX, loyalty_tier="GOLD")
    assert campaign_matches(excluded, gold) == "loyalty tier excluded"
    index = CandidateIndex([LiveCampaign(excluded, (offer("o"),))])
    assert index.select([SLOT], gold) == []
    assert [c.offer.id for c in index.select([SLOT], CTX)] == ["o"]


def test_daypart_closes_and_opens_with_the_clock() -> None:
    """The compiled index evaluates dayparts per minute: the same index
    admits the campaign inside its hours and not outside them."""
    hour = (NOW // 3_600_000_000) % 24
    open_now = Daypart(start_hour=hour, end_hour=hour + 1)
    c = campaign(
        schedule=Schedule("2026-01-01T00:00", "2030-01-01T00:00", "UTC", dayparts=[open_now])
    )
    index = CandidateIndex([LiveCampaign(c, (offer("o"),))])
    assert [x.offer.id for x in index.select([SLOT], CTX)] == ["o"]
    an_hour_later = dataclasses.replace(CTX, now_us=NOW + 3_600_000_000)
    assert index.select([SLOT], an_hour_later) == []
    assert [x.offer.id for x in index.select([SLOT], CTX)] == ["o"]


def test_offers_must_fit_the_slot_and_respect_blocks_and_deals() -> None:
    live = [
        LiveCampaign(
            campaign(),
            (
                offer("fits"),
                offer("wrong-size", sizes=[Size(728, 90)]),
                offer("video", format="VIDEO"),
                offer("blocked-cat", iab_categories=["IAB7"]),
            ),
        )
    ]
    ctx = dataclasses.replace(CTX, blocked_categories=frozenset({"IAB7"}))
    found = select_candidates(live, [SLOT], ctx)
    assert [c.offer.id for c in found] == ["fits"]
    private = dataclasses.replace(SLOT, private_auction=True, deals=frozenset({"deal-9"}))
    assert select_candidates(live, [private], CTX) == []
    with_deal = [LiveCampaign(campaign(targeting=Targeting(deals=["deal-9"])), (offer("d"),))]
    assert [c.offer.id for c in select_candidates(with_deal, [private], CTX)] == ["d"]
    assert select_candidates(with_deal, [SLOT], CTX) == []  # deal campaigns need the deal


def test_placement_format_size_and_per_slot_blocks() -> None:
    """Format and size as placement keys: a sized slot takes offers of one of
    its sizes only, a slot without sizes any offer of its formats; native has
    no size; blocked attributes are per slot, blocked advertisers per request
    (compared in lower case); an offer lists every slot it fits."""
    offers = (
        offer("banner-300", sizes=[Size(300, 250)]),
        offer("banner-728", sizes=[Size(728, 90)]),
        offer("banner-nosize", sizes=[]),
        offer("video-640", format="VIDEO", sizes=[Size(640, 480)]),
        offer("native", format="NATIVE", sizes=[]),
        offer("attr-3", sizes=[Size(300, 250)], attributes=[3]),
        offer("brand-x", sizes=[Size(300, 250)], advertiser_domains=["Brand-X.example"]),
    )
    live = [LiveCampaign(campaign(allow_repeat_offers=True), offers)]
    sized = Slot("s", frozenset({"BANNER", "VIDEO"}), frozenset({(300, 250), (640, 480)}), 0, "USD")
    any_size = Slot("a", frozenset({"BANNER"}), frozenset(), 0, "USD")
    native = Slot("n", frozenset({"NATIVE"}), frozenset({(300, 250)}), 0, "USD")
    no_attr_3 = dataclasses.replace(sized, imp_id="b", blocked_attributes=frozenset({3}))
    ctx = dataclasses.replace(CTX, blocked_advertisers=frozenset({"brand-x.example"}))
    found = select_candidates(live, [sized, any_size, native, no_attr_3], ctx)
    assert {c.offer.id: c.slots for c in found} == {
        "banner-300": ("s", "a", "b"),
        "banner-728": ("a",),
        "banner-nosize": ("a",),
        "video-640": ("s", "b"),
        "native": ("n",),
        "attr-3": ("s", "a"),
    }


def test_loyalty_boost_floor_and_one_offer_per_response() -> None:
    c = campaign()
    a, b = offer("a"), offer("b")
    live = LiveCampaign(c, (a, b))
    cands = select_candidates([live], [SLOT, dataclasses.replace(SLOT, imp_id="2")], CTX)
    price_plain, _ = recommended_cpm(cands[0], 0.5, "")
    price_reserve, _ = recommended_cpm(cands[0], 0.5, "RESERVE")
    price_gold, _ = recommended_cpm(cands[0], 0.5, "GOLD")
    assert price_plain == pytest.approx(2.0)
    assert price_reserve == pytest.approx(2.6) and price_gold == pytest.approx(2.3)
    scored = [Scored(cands[0], 0.9, 0.01, 2.0, "USD"), Scored(cands[1], 0.4, 0.01, 2.0, "USD")]
    slots = [SLOT, dataclasses.replace(SLOT, imp_id="2")]
    winners, _ = choose_winners(scored, slots, Rates(), "USD")
    assert [(w.imp_id, w.scored.candidate.offer.id) for w in winners] == [("1", "a"), ("2", "b")]
    high_floor = [dataclasses.replace(SLOT, floor=1.9, floor_currency="EUR")]  # 1.9 EUR > 2 USD
    winners, reason = choose_winners(scored, high_floor, Rates(), "USD")
    assert winners == [] and reason == "below floor"
    odd = [dataclasses.replace(SLOT, floor_currency="XYZ")]
    assert choose_winners(scored, odd, Rates(), "USD") == ([], "unknown currency")


def test_notice_tokens_are_signed_and_prices_checked() -> None:
    signer = NoticeSigner("s" * 40, "https://bid.example")
    token = NoticeToken("acme", "c1", "o1", "bid-1", "1", "u1", "USD", "USD", "r1", "UTC", NOW)
    nurl, burl, lurl, click = signer.urls(token)
    assert nurl.startswith("https://bid.example/v1/win?t=") and nurl.endswith("${AUCTION_PRICE}")
    assert "${AUCTION_LOSS}" in lurl and "/v1/billing?" in burl
    assert click == f"https://bid.example/v1/click?t={nurl.split('t=', 1)[1].split('&', 1)[0]}"
    t = nurl.split("t=", 1)[1].split("&", 1)[0]
    assert signer.verify(t) == token
    with pytest.raises(InvalidArgument):
        signer.verify(t[:-2] + "AA")
    for text in (t[:-2] + "\u00e9\u00e9", "\u00e9." + t, "\u2603"):  # not base64url at all
        with pytest.raises(InvalidArgument):
            signer.verify(text)
    with pytest.raises(InvalidArgument):
        NoticeSigner("x" * 40, "https://bid.example").verify(t)
    # a token from before the array form (a JSON object of the fields) still settles
    body = base64.urlsafe_b64encode(orjson.dumps(token)).decode().rstrip("=")
    earlier = f"{body}.{signer._seal._sign(body.encode())}"
    assert signer.verify(earlier) == token
    assert len(t) < len(earlier) - 150  # the array form: shorter URLs
    # signed, but not a token's layout: refused, naming the parameter
    for raw in ([2, *dataclasses.astuple(token)], [1, "acme"], "text", 5):
        body = base64.urlsafe_b64encode(orjson.dumps(raw)).decode().rstrip("=")
        with pytest.raises(InvalidArgument) as refused:
            signer.verify(f"{body}.{signer._seal._sign(body.encode())}")
        assert refused.value.field_violations[0].field == "t"
    assert parse_price("1.75") == 1.75
    for bad in ("", "${AUCTION_PRICE}", "abc", "-1", "1e9", "nan"):
        with pytest.raises(InvalidArgument):
            parse_price(bad)


# -- the compiled index against the rules, on random worlds -----------------

_COUNTRIES = ["USA", "FRA", "DEU"]
_DEVICES = ["MOBILE", "DESKTOP", "CONNECTED_TV"]
_DOMAINS = ["news.example", "example", "sport.news.example", "other.org", "org"]
_APPS = ["com.game", "com.news", "tv.app"]
_SEGMENTS = ["s1", "s2", "s3"]
_TIERS = ["", "BASIC", "SILVER", "GOLD", "RESERVE"]
_DEALS = ["d1", "d2", "d3"]
_SIZES = [(300, 250), (728, 90), (640, 480)]
_CATEGORIES = ["IAB1", "IAB7", "IAB22"]
_ADVERTISERS = ["a.example", "b.example"]


def _some(values: list[Any]) -> st.SearchStrategy[list[Any]]:
    return st.lists(st.sampled_from(values), max_size=2, unique=True)


def _rarely(strategy: st.SearchStrategy[Any], otherwise: Any) -> st.SearchStrategy[Any]:
    """`strategy` one time in four, else `otherwise`: blocks, closed dayparts
    and exclusions are kept rare so that most examples admit some offers."""
    return st.integers(0, 3).flatmap(lambda k: strategy if k == 0 else st.just(otherwise))


@st.composite
def _live_campaign(draw: st.DrawFn, cid: str) -> LiveCampaign:
    hour = draw(st.integers(0, 23))
    dayparts = draw(_rarely(st.just([Daypart(start_hour=hour, end_hour=hour + 1)]), []))
    # Two rules at most per campaign, so that campaigns are often admitted
    # and each rule decides the outcome in many examples.
    lists = {
        "countries": _COUNTRIES,
        "device_types": _DEVICES,
        "site_allow": _DOMAINS,
        "site_deny": _DOMAINS,
        "app_allow": _APPS,
        "app_deny": _APPS,
        "segments": _SEGMENTS,
        "deals": _DEALS,
    }
    targeted = draw(st.sets(st.sampled_from(sorted(lists)), max_size=2))
    targeting = Targeting(
        **{
            name: draw(st.lists(st.sampled_from(lists[name]), min_size=1, max_size=2, unique=True))
            for name in sorted(targeted)
        }
    )
    rules = [LoyaltyTierRule(tier.lower(), exclude=True) for tier in draw(_some(_TIERS[1:]))]
    c = campaign(
        cid,
        targeting=targeting,
        loyalty_rules=rules,
        schedule=Schedule("2026-01-01T00:00", "2030-01-01T00:00", "UTC", dayparts=dayparts),
    )
    offers = []
    for i in range(draw(st.integers(0, 3))):
        fmt = draw(st.sampled_from(["BANNER", "VIDEO", "NATIVE"]))
        offers.append(
            offer(
                f"{cid}-o{i}",
                cid,
                format=fmt,
                sizes=[Size(w, h) for w, h in draw(_some(_SIZES))],
                attributes=draw(_rarely(_some([1, 2, 3]), [])),
                iab_categories=draw(_some(_CATEGORIES)),
                advertiser_domains=[d.upper() for d in draw(_some(_ADVERTISERS))],
            )
        )
    return LiveCampaign(c, tuple(offers))


_SLOTS = st.lists(
    st.builds(
        Slot,
        imp_id=st.sampled_from(["1", "2", "3"]),
        formats=st.frozensets(
            st.sampled_from(["BANNER", "VIDEO", "NATIVE", "AUDIO"]), min_size=1, max_size=3
        ),
        sizes=_rarely(st.frozensets(st.sampled_from(_SIZES), min_size=1, max_size=2), frozenset()),
        floor=st.just(0.0),
        floor_currency=st.just("USD"),
        deals=st.frozensets(st.sampled_from(_DEALS), max_size=2),
        private_auction=_rarely(st.just(True), False),
        blocked_attributes=_rarely(
            st.frozensets(st.sampled_from([1, 2, 3]), max_size=2), frozenset()
        ),
    ),
    min_size=1,
    max_size=3,
    unique_by=lambda s: s.imp_id,
)

_CONTEXTS = st.builds(
    Context,
    now_us=st.integers(NOW, NOW + 7 * 86_400_000_000),
    country=st.sampled_from(["", *_COUNTRIES]),
    device_type=st.sampled_from(["", *_DEVICES]),
    site_domain=st.sampled_from(["", *_DOMAINS]),
    app_bundle=st.sampled_from(["", *_APPS]),
    segments=st.frozensets(st.sampled_from(_SEGMENTS), max_size=2),
    blocked_categories=_rarely(
        st.frozensets(st.sampled_from(_CATEGORIES), max_size=2), frozenset()
    ),
    blocked_advertisers=_rarely(
        st.frozensets(st.sampled_from(_ADVERTISERS), max_size=1), frozenset()
    ),
    blocked_apps=_rarely(st.frozensets(st.sampled_from(_APPS), max_size=1), frozenset()),
    loyalty_tier=st.sampled_from(_TIERS),
)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    live=st.integers(1, 5).flatmap(
        lambda n: st.tuples(*[_live_campaign(f"c{i}") for i in range(n)])
    ),
    slots=_SLOTS,
    contexts=st.lists(_CONTEXTS, min_size=1, max_size=8),
)
def test_compiled_index_selects_what_the_rules_admit(
    live: tuple[LiveCampaign, ...], slots: list[Slot], contexts: list[Context]
) -> None:
    """Every targeting rule, block, deal and placement, on random campaigns
    and requests: the bitmaps pick exactly the offers (and the slots each
    fits) that the one-campaign-at-a-time rules pick, in the same order; one
    index serves several requests (its daypart minute cache included)."""
    index = CandidateIndex(list(live))
    for ctx in contexts:
        got = [(c.facts.name, c.slots) for c in index.select(slots, ctx)]
        assert got == reference_select(list(live), slots, ctx)


def test_candidates_stop_at_the_cap_in_campaign_order() -> None:
    many = [
        LiveCampaign(
            campaign(f"c{i:02}"), tuple(offer(f"o{i:02}-{j}", f"c{i:02}") for j in range(5))
        )
        for i in range(20)
    ]
    found = CandidateIndex(many).select([SLOT], CTX)
    assert len(found) == MAX_CANDIDATES
    assert [c.offer.id for c in found] == [f"o{i:02}-{j}" for i in range(20) for j in range(5)][
        :MAX_CANDIDATES
    ]
    assert [c.offer.id for c in found] == [
        name.rsplit("/", 1)[1] for name, _ in reference_select(many, [SLOT], CTX)
    ]


def test_campaign_loyalty_rules_multiply_the_tier_boost() -> None:
    rules = [
        LoyaltyTierRule("gold", bid_multiplier=1.5),
        LoyaltyTierRule("green", bid_multiplier=0.8),  # the old entry tier: Silver
    ]
    live = LiveCampaign(campaign(loyalty_rules=rules), (offer("a"),))
    (cand,) = CandidateIndex([live]).select([SLOT], CTX)
    assert recommended_cpm(cand, 0.5, "GOLD")[0] == pytest.approx(2.0 * 1.15 * 1.5)
    assert recommended_cpm(cand, 0.5, "SILVER")[0] == pytest.approx(2.0 * 0.8)
    assert recommended_cpm(cand, 0.5, "BASIC")[0] == pytest.approx(2.0)
    assert recommended_cpm(cand, 0.5, "RESERVE")[0] == pytest.approx(2.0 * 1.3)
    # capped at the campaign's max CPM (5.00) before the boost; 1.5x at score 1
    no_bid_cpm = LiveCampaign(campaign(), (offer("b", bid_cpm=Money()),))
    (cand,) = CandidateIndex([no_bid_cpm]).select([SLOT], CTX)
    price, currency = recommended_cpm(cand, 1.0, "")
    assert price == pytest.approx(5.0) and currency == "USD"
    assert recommended_cpm(cand, 0.0, "GOLD")[0] == pytest.approx(2.5 * 1.15)


def reference_winners(
    scored: list[Scored], slots: list[Slot], rates: Rates, currency: str
) -> tuple[list[tuple[str, str, float]], str]:
    """Every candidate against every slot, in the order given: the auction's
    rules written without its best-score-first shortcut."""
    winners: list[tuple[str, str, float]] = []
    used: set[str] = set()
    failures: set[str] = set()
    for slot in slots:
        best: tuple[float, float, str] | None = None
        for s in scored:
            name = s.candidate.facts.name
            if slot.imp_id not in s.candidate.slots:
                continue
            if name in used and not s.candidate.live.campaign.spec.allow_repeat_offers:
                continue
            try:
                in_floor = rates.convert(s.price_cpm, s.currency, slot.floor_currency)
                in_response = rates.convert(s.price_cpm, s.currency, currency)
            except UnknownCurrency:
                failures.add("unknown currency")
                continue
            if in_floor < slot.floor:
                failures.add("below floor")
                continue
            if best is None or (s.score, in_response, name) > best:
                best = (s.score, in_response, name)
        if best is not None:
            used.add(best[2])
            winners.append((slot.imp_id, best[2], round(best[1], 6)))
    if winners:
        return winners, ""
    for reason in ("unknown currency", "below floor"):
        if reason in failures:
            return winners, reason
    return winners, "no candidate"


def auction_rows(scores: list[float], prices: list[float]) -> st.SearchStrategy[Any]:
    """Candidates as (score, price or base CPM, currency, imp ids, offer
    number shared between candidates, the campaign allows repeats)."""
    return st.lists(
        st.tuples(
            st.sampled_from(scores),
            st.sampled_from(prices),
            st.sampled_from(["USD", "USD", "EUR", "XYZ"]),
            st.sets(st.sampled_from(["1", "2", "3"]), min_size=1),
            st.integers(0, 3),
            st.booleans(),
        ),
        max_size=12,
    )


# (floor, floor currency) per slot
auction_floors = st.lists(
    st.tuples(st.sampled_from([0.0, 0.8, 1.5]), st.sampled_from(["USD", "EUR", "ABC"])),
    min_size=1,
    max_size=3,
)


def auction_slots(floors: list[tuple[float, str]]) -> list[Slot]:
    return [
        Slot(str(i + 1), frozenset({"BANNER"}), frozenset(), floor, floor_cur)
        for i, (floor, floor_cur) in enumerate(floors)
    ]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    auction_rows([0.1, 0.5, 0.5, 0.9], [0.5, 1.0, 2.0, 2.0]),  # ties on purpose
    auction_floors,
    st.sampled_from(["USD", "EUR"]),
)
def test_auction_equals_the_exhaustive_rules(
    rows: list[tuple[float, float, str, set[str], int, bool]],
    floors: list[tuple[float, str]],
    currency: str,
) -> None:
    """Best score first with an early stop picks exactly the winners (and
    the no-bid reason) of comparing every candidate with every slot."""
    rates = Rates()
    scored = []
    for score, price, cur, imps, offer_no, repeats in rows:
        live = LiveCampaign(
            campaign(f"c{offer_no}", allow_repeat_offers=repeats),
            (offer(f"o{offer_no}", f"c{offer_no}"),),
        )
        candidate = Candidate(live, live.offer_facts[0], tuple(sorted(imps)))
        scored.append(Scored(candidate, score, 0.0, price, cur))
    slots = auction_slots(floors)
    winners, reason = choose_winners(scored, slots, rates, currency)
    got = [(w.imp_id, w.scored.candidate.facts.name, w.price_cpm) for w in winners]
    assert (got, reason) == reference_winners(scored, slots, rates, currency)


@given(st.binary(max_size=600), st.text(min_size=1, max_size=50))
def test_notice_signature_is_standard_hmac_sha256(body: bytes, secret: str) -> None:
    signer = NoticeSigner(secret, "https://bid.example")
    key = hashlib.sha256(b"bid-notice:" + secret.encode()).digest()
    expected = base64.urlsafe_b64encode(hmac.digest(key, body, "sha256")[:18]).decode()
    assert signer._seal._sign(body) == expected


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    auction_rows([0.1, 0.5, 0.5, 0.9, 1.2, -0.1], [0.5, 1.0, 2.0]),  # ties, scores to clip
    auction_floors,
    st.sampled_from(["USD", "EUR"]),
    st.sampled_from(["", "GOLD", "RESERVE"]),
)
def test_lazy_pricing_auction_equals_pricing_every_candidate(
    rows: list[tuple[float, float, str, set[str], int, bool]],
    floors: list[tuple[float, str]],
    currency: str,
    tier: str,
) -> None:
    """run_auction prices only the candidates it looks at, and decides
    exactly what choose_winners decides on every candidate priced."""
    rates = Rates()
    candidates, scores = [], []
    for score, cpm, cur, imps, offer_no, repeats in rows:
        made = offer(f"o{offer_no}", f"c{offer_no}", bid_cpm=Money(cur, int(cpm * 1e6)))
        live = LiveCampaign(campaign(f"c{offer_no}", allow_repeat_offers=repeats), (made,))
        candidates.append(Candidate(live, live.offer_facts[0], tuple(sorted(imps))))
        scores.append(score)
    ctrs = [0.01 * i for i in range(len(rows))]
    slots = auction_slots(floors)
    eager = choose_winners(price_candidates(candidates, scores, ctrs, tier), slots, rates, currency)
    assert run_auction(candidates, scores, ctrs, tier, slots, rates, currency) == eager
    with pytest.raises(ValueError):
        run_auction(candidates, scores[:-1] + [0.5, 0.5], ctrs, tier, slots, rates, currency)
