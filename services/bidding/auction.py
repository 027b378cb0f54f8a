"""From scored candidates to one winner per impression (request-flow document,
steps 6-8): loyalty boost on the recommended bid, the floor in its own
currency, the best score per impression, one offer per response unless its
campaign allows repeats."""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

from services.bidding.currency import Rates, UnknownCurrency
from services.bidding.matching import Candidate, Slot


class Scored(NamedTuple):
    candidate: Candidate
    score: float  # 0..1 from the model
    ctr: float
    price_cpm: float  # in the campaign's currency, boost applied
    currency: str


class Winner(NamedTuple):
    imp_id: str
    scored: Scored
    price_cpm: float  # in the response currency


def price_candidates(
    candidates: Sequence[Candidate],
    scores: Sequence[float],
    ctrs: Sequence[float],
    loyalty_tier: str,
) -> list[Scored]:
    """Each candidate's bid, with its model outputs: its base CPM (the
    offer's, else the campaign's max CPM) scaled by the model's score between
    0.5x and 1.5x, capped at the max CPM, then boosted for the user's loyalty
    tier and the campaign's own tier rule (`LiveCampaign.tier_boost`)."""
    out = []
    for candidate, score, ctr in zip(candidates, scores, ctrs, strict=True):
        live, facts, _ = candidate
        clipped = score if 0.0 <= score <= 1.0 else (1.0 if score > 1.0 else 0.0)
        price = facts.base_cpm * (0.5 + clipped)
        max_cpm = live.max_cpm
        if max_cpm is not None and price > max_cpm:
            price = max_cpm
        boost = live.tier_boost.get(loyalty_tier, 1.0)
        out.append(Scored(candidate, score, ctr, price * boost, facts.currency))
    return out


def _score(scored: Scored) -> float:
    return scored.score


def choose_winners(
    scored: Sequence[Scored], slots: Sequence[Slot], rates: Rates, response_currency: str
) -> tuple[list[Winner], str]:
    """Winners in slot order, and a no-bid reason when there are none.

    Per slot, the best candidate that fits it and clears its floor: highest
    score, then highest price in the response currency, then offer name;
    an offer wins once per response unless its campaign allows repeats.
    Candidates are visited best score first, so a slot stops at the first
    that qualifies once no other has as high a score. Without winners the
    reason is "unknown currency" if a candidate's price could not be
    converted, else "below floor" if one was under its floor."""
    ranked = sorted(scored, key=_score, reverse=True)
    winners: list[Winner] = []
    used: set[str] = set()
    unknown_currency = below_floor = False
    for slot in slots:
        imp_id, floor, floor_currency = slot.imp_id, slot.floor, slot.floor_currency
        best: tuple[float, float, str, Scored] | None = None
        for s in ranked:
            if best is not None and s.score < best[0]:
                break  # the rest score lower: none can win this slot
            candidate = s.candidate
            if imp_id not in candidate.slots:
                continue
            offer_name = candidate.facts.name
            if offer_name in used and not candidate.live.campaign.spec.allow_repeat_offers:
                continue
            price, currency = s.price_cpm, s.currency
            try:
                in_floor = (
                    price
                    if currency == floor_currency
                    else rates.convert(price, currency, floor_currency)
                )
                in_response = (
                    price
                    if currency == response_currency
                    else rates.convert(price, currency, response_currency)
                )
            except UnknownCurrency:
                unknown_currency = True
                continue
            if in_floor < floor:
                below_floor = True
                continue
            if best is None or (s.score, in_response, offer_name) > best[:3]:
                best = (s.score, in_response, offer_name, s)
        if best is not None:
            used.add(best[2])
            winners.append(Winner(imp_id, best[3], round(best[1], 6)))
    if winners:
        return winners, ""
    if unknown_currency:
        return winners, "unknown currency"
    return winners, "below floor" if below_floor else "no candidate"
