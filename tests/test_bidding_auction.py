"""Candidate matching, the auction and notice tokens: pure unit tests."""

from __future__ import annotations

import dataclasses

import pytest

from services.bidding.auction import Scored, choose_winners, recommended_cpm
from services.bidding.currency import Rates
from services.bidding.matching import (
    Context,
    Slot,
    campaign_matches,
    select_candidates,
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
    assert campaign_matches(campaign(targeting=targeting), ctx) == reason


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
    assert campaign_matches(excluded, dataclasses.replace(CTX, loyalty_tier="GOLD")) == (
        "loyalty tier excluded"
    )


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
    found, _ = select_candidates(live, [SLOT], ctx)
    assert [c.offer.id for c in found] == ["fits"]
    private = dataclasses.replace(SLOT, private_auction=True, deals=frozenset({"deal-9"}))
    assert select_candidates(live, [private], CTX)[0] == []
    with_deal = [LiveCampaign(campaign(targeting=Targeting(deals=["deal-9"])), (offer("d"),))]
    assert [c.offer.id for c in select_candidates(with_deal, [private], CTX)[0]] == ["d"]
    assert select_candidates(with_deal, [SLOT], CTX)[0] == []  # deal campaigns need the deal


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
    found, _ = select_candidates(live, [sized, any_size, native, no_attr_3], ctx)
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
    cands, _ = select_candidates([live], [SLOT, dataclasses.replace(SLOT, imp_id="2")], CTX)
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
    nurl, burl, lurl = signer.urls(token)
    assert nurl.startswith("https://bid.example/v1/win?t=") and nurl.endswith("${AUCTION_PRICE}")
    assert "${AUCTION_LOSS}" in lurl and "/v1/billing?" in burl
    t = nurl.split("t=", 1)[1].split("&", 1)[0]
    assert signer.verify(t) == token
    with pytest.raises(InvalidArgument):
        signer.verify(t[:-2] + "AA")
    with pytest.raises(InvalidArgument):
        NoticeSigner("x" * 40, "https://bid.example").verify(t)
    assert parse_price("1.75") == 1.75
    for bad in ("", "${AUCTION_PRICE}", "abc", "-1", "1e9", "nan"):
        with pytest.raises(InvalidArgument):
            parse_price(bad)
