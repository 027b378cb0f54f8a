"""The lock-free hot-path metrics expose exactly what prometheus_client's
Counter and Histogram would for the same updates."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client import Counter as ReferenceCounter
from prometheus_client import Histogram as ReferenceHistogram

from services.common.loopmetrics import Counter, Histogram

BUCKETS = (5e-05, 0.0002, 0.0005, 0.001, 1.0)

values = st.floats(min_value=0, max_value=10, allow_nan=False)
updates = st.lists(st.tuples(st.sampled_from(["bid", "no_bid", "x y"]), values), max_size=40)


def exposition(counter_type: type, histogram_type: type, steps: list[tuple[str, float]]) -> str:
    registry = CollectorRegistry()
    by_outcome = counter_type("campaign_express_bids", "Bids.", ["outcome"], registry=registry)
    plain = counter_type("campaign_express_boosted", "Boosted.", registry=registry)
    latency = histogram_type(
        "campaign_express_bid_seconds", "Time.", buckets=BUCKETS, registry=registry
    )
    by_method = histogram_type(
        "campaign_express_handling_seconds", "Time.", ["method"], buckets=BUCKETS, registry=registry
    )
    for label, value in steps:
        by_outcome.labels(label).inc(value)
        plain.inc()
        latency.observe(value)
        by_method.labels(label).observe(value / 1000)
    text = generate_latest(registry).decode()
    return "\n".join(line for line in text.splitlines() if "_created" not in line)


@given(updates)
def test_exposition_matches_prometheus_client(steps: list[tuple[str, float]]) -> None:
    assert exposition(Counter, Histogram, steps) == exposition(
        ReferenceCounter, ReferenceHistogram, steps
    )


def test_bucket_bounds_are_inclusive() -> None:
    histogram = Histogram("h", "H.", buckets=(1.0, 2.0))
    for value in (1.0, 1.5, 2.0, 3.0):
        histogram.observe(value)
    (family,) = histogram.collect()
    buckets = {s.labels["le"]: s.value for s in family.samples if s.name == "h_bucket"}
    assert buckets == {"1.0": 1, "2.0": 3, "+Inf": 4}


def test_bad_use_is_refused() -> None:
    registry = CollectorRegistry()
    counter = Counter("c", "C.", ["outcome"], registry=registry)
    with pytest.raises(ValueError, match="label values"):
        counter.labels("a", "b")
    with pytest.raises(ValueError, match="use labels"):
        counter.inc()
    with pytest.raises(ValueError, match="only go up"):
        counter.labels("a").inc(-1)
    with pytest.raises(ValueError):
        Counter("c", "Again.", registry=registry)  # the registry refuses a duplicate name
    with pytest.raises(ValueError, match="increasing"):
        Histogram("h", "H.", buckets=(2.0, 1.0))
    with pytest.raises(ValueError, match="documentation"):
        Counter("d", "")
