"""Budget pacing math, pure (no database, no clock): the even pacing curve and
the throttle that makes spend follow it (BO-007: within +-5%).

The curve. Under EVEN pacing a campaign should have spent, by a moment of its
local day, `target x elapsed / total`, where `elapsed` and `total` are the
ACTIVE seconds of the day (dayparts and the schedule's start/end respected;
see `schedule.active_seconds_of_day`) and `target` is the day's budget.

The throttle. Bidding takes each opportunity with probability `bid_rate`.
Traffic, win rates and prices vary, so no fixed rate works; the pacer is a
small adaptive controller, ticked every few seconds (the live index refreshes
it every 30 s at most, and each status read ticks it too):

1. it estimates the campaign's *capacity*: what it would spend per active
   second if it took every opportunity, as spend observed / (bid rate in force
   x active seconds), both sums decaying with a half-life of `HALF_LIFE_S` so
   the estimate follows traffic through the day;
2. it looks `HORIZON_S` ahead and asks for the rate that brings spend exactly
   onto the curve there: `rate = (expected(elapsed + h) - spend) / (capacity x h)`,
   clamped to [0, 1]. Being behind raises the rate, being ahead lowers it (to 0
   when spend is already past where the curve will be), so errors never
   accumulate: each tick corrects the whole gap, spread over the horizon.

Before anything is known (a new campaign, a new process) the rate is 1 until
the first tick has seen spend. The hard daily cap is separate and exact: the
bidder stops at the cap (`may_spend`), so a day overshoots by at most one
impression. tests/test_campaign_budget.py proves the tracking by simulating
whole days of Poisson traffic at several levels.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

# How far ahead the throttle aims to be back on the curve. Shorter reacts
# faster but passes more noise (few wins per horizon) into the rate.
HORIZON_S = 600.0
# Half-life of the capacity estimate: long enough to average many wins, short
# enough to follow the daily traffic shape.
HALF_LIFE_S = 900.0
# Before this much of the day's active time has passed, pacing is not judged
# (alerts): the curve is too close to zero for a ratio to mean anything.
JUDGE_AFTER_FRACTION = 0.10
# Spend within this fraction of the curve is on pace.
TOLERANCE = 0.05


def expected_spend(target_micros: int, elapsed_s: float, total_s: float) -> int:
    """Spend the even curve asks for after `elapsed_s` of `total_s` active
    seconds of the day (0 when the day has no active time)."""
    if total_s <= 0 or target_micros <= 0:
        return 0
    fraction = min(1.0, max(0.0, elapsed_s / total_s))
    return round(target_micros * fraction)


def pacing_ratio(spend_micros: int, expected_micros: int) -> float:
    """spend / expected; 1 is on pace; 0 while nothing is expected yet."""
    return spend_micros / expected_micros if expected_micros > 0 else 0.0


def pacing_verdict(spend_micros: int, target_micros: int, elapsed_s: float, total_s: float) -> str:
    """ "BEHIND", "AHEAD" or "" (on pace, or too early in the day to judge:
    less than `JUDGE_AFTER_FRACTION` of the active time has passed)."""
    if total_s <= 0 or elapsed_s < JUDGE_AFTER_FRACTION * total_s:
        return ""
    expected = expected_spend(target_micros, elapsed_s, total_s)
    if expected <= 0:
        return ""
    ratio = spend_micros / expected
    if ratio < 1 - TOLERANCE:
        return "BEHIND"
    if ratio > 1 + TOLERANCE:
        return "AHEAD"
    return ""


def may_spend(spend_micros: int, cap_micros: int) -> bool:
    """The hard cap, checked by the bidder before each bid with its own,
    current spend: bidding stops once spend reaches the cap, so the cap is
    overshot by at most the last impression's price."""
    return spend_micros < cap_micros


@dataclass(frozen=True, slots=True)
class PacerState:
    """What the throttle remembers between ticks, for one campaign."""

    day: str = ""  # local day the state belongs to
    elapsed_s: float = 0.0  # active seconds elapsed at the last tick
    spend_micros: int = 0  # today's spend at the last tick
    bid_rate: float = 1.0  # the throttle in force since the last tick
    # Decaying sums for the capacity estimate (spend per active second at rate 1).
    spend_sum: float = 0.0
    exposure: float = 0.0  # sum of bid_rate x active seconds
    ticks: int = 0

    @property
    def capacity(self) -> float | None:
        """Estimated spend (micros) per active second when taking every
        opportunity; None until some exposure has been observed."""
        if self.exposure <= 1e-9:
            return None
        return self.spend_sum / self.exposure


def tick(
    state: PacerState,
    *,
    day: str,
    spend_micros: int,
    target_micros: int,
    elapsed_s: float,
    total_s: float,
) -> PacerState:
    """Advance the throttle: learn from what happened since the last tick,
    then choose the bid rate for the time until the next one.

    `spend_micros` is today's spend so far, `target_micros` today's budget,
    `elapsed_s` / `total_s` the active seconds elapsed / in the whole day."""
    if state.day != day:
        # A new day: spend restarts at 0; the capacity estimate carries over
        # (yesterday's traffic is the best guess for today) at half weight.
        state = PacerState(
            day=day,
            elapsed_s=elapsed_s,
            spend_micros=spend_micros,
            bid_rate=state.bid_rate if state.ticks else 1.0,
            spend_sum=state.spend_sum * 0.5,
            exposure=state.exposure * 0.5,
            ticks=state.ticks,
        )
    else:
        active = elapsed_s - state.elapsed_s
        spent = max(0, spend_micros - state.spend_micros)
        if active > 0:
            decay = math.pow(0.5, active / HALF_LIFE_S)
            state = replace(
                state,
                spend_sum=state.spend_sum * decay + spent,
                exposure=state.exposure * decay + state.bid_rate * active,
            )
        elif spent:
            # Spend with no active time (late notices): count it as observed.
            state = replace(state, spend_sum=state.spend_sum + spent)
    rate = throttle(
        capacity=state.capacity,
        spend_micros=spend_micros,
        target_micros=target_micros,
        elapsed_s=elapsed_s,
        total_s=total_s,
    )
    return replace(
        state,
        elapsed_s=elapsed_s,
        spend_micros=spend_micros,
        bid_rate=rate,
        ticks=state.ticks + 1,
    )


def throttle(
    *,
    capacity: float | None,
    spend_micros: int,
    target_micros: int,
    elapsed_s: float,
    total_s: float,
) -> float:
    """The bid rate that puts spend back on the even curve `HORIZON_S` of
    active time from now, given the capacity estimate (None: unknown)."""
    if target_micros <= 0 or total_s <= 0 or spend_micros >= target_micros:
        return 0.0
    left = total_s - elapsed_s
    if left <= 0:
        return 0.0
    horizon = min(HORIZON_S, left)
    want = expected_spend(target_micros, elapsed_s + horizon, total_s) - spend_micros
    if want <= 0:
        return 0.0
    if capacity is None or capacity <= 0:
        return 1.0
    return min(1.0, want / (capacity * horizon))
