"""Counters and histograms for the hot path, without a lock per update.

prometheus_client's Counter and Histogram take a lock on every update (a
histogram two: its bucket and its sum) so that any thread may update them:
~0.6 us per counter increment and ~2 us per observation here, and a bid
makes about eight such updates. The metrics of the bid path are updated by
one thread only, the event loop's, so this module keeps their values in plain
attributes and hands them to the registry at scrape time, in the exposition
prometheus_client would give (`<name>_total` for counters; `_bucket`,
`_count` and `_sum` for histograms).

Use these only for metrics that a single thread updates: two threads
incrementing at once could lose an increment. Reading (a scrape, from any
thread) is safe: it sees each value as of some moment.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Generic, TypeVar

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

__all__ = ["Counter", "Histogram"]

# how prometheus_client writes a bucket bound (`le`): 0.005, 1.0, +Inf
_bound_label: Callable[[float], str] = floatToGoString

DEFAULT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0)


C = TypeVar("C", "_CounterValue", "_HistogramValue")
F = TypeVar("F", CounterMetricFamily, HistogramMetricFamily)


class _Labelled(Collector, Generic[C, F]):
    """A metric family: its children by label values; without label names,
    the family is its own only child."""

    def __init__(
        self,
        name: str,
        documentation: str,
        labelnames: Sequence[str],
        registry: CollectorRegistry | None,
    ) -> None:
        if not name or not documentation:
            raise ValueError("a metric needs a name and a documentation string")
        self._name = name
        self._documentation = documentation
        self._labelnames = tuple(labelnames)
        self._children: dict[tuple[str, ...], C] = {}
        # without label names, the family's one child, updated through it
        self._own: C | None = None
        if not self._labelnames:
            self._own = self._children[()] = self._new_child()
        if registry is not None:
            registry.register(self)

    def labels(self, *values: str) -> C:
        """The child for these label values (made on first use). A lookup
        of label values already seen is one dict access, so callers need
        not keep children of their own."""
        child = self._children.get(values)
        return child if child is not None else self._child(tuple(str(v) for v in values))

    def _child(self, values: tuple[str, ...]) -> C:
        child = self._children.get(values)
        if child is None:
            if len(values) != len(self._labelnames):
                raise ValueError(
                    f"{self._name} takes {len(self._labelnames)} label values, got {len(values)}"
                )
            child = self._children[values] = self._new_child()
        return child

    def _new_child(self) -> C:
        raise NotImplementedError

    def _unlabelled(self) -> C:
        own = self._own
        if own is None:
            raise ValueError(f"{self._name} has labels {self._labelnames}: use labels() first")
        return own

    def describe(self) -> Iterable[Metric]:
        # the family without samples: the registry refuses a duplicate name
        return [self._family()]

    def collect(self) -> Iterator[Metric]:
        family = self._family()
        for values, child in list(self._children.items()):
            self._add_sample(family, list(values), child)
        yield family

    def _family(self) -> F:
        raise NotImplementedError

    def _add_sample(self, family: F, values: list[str], child: C) -> None:
        raise NotImplementedError


class _CounterValue:
    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value = 0.0

    def inc(self, amount: float = 1.0) -> None:
        if amount < 0:
            raise ValueError("counters can only go up")
        self.value += amount


class Counter(_Labelled["_CounterValue", CounterMetricFamily]):
    """A monotonic counter (exposed as `<name>_total`)."""

    def __init__(
        self,
        name: str,
        documentation: str,
        labelnames: Sequence[str] = (),
        *,
        registry: CollectorRegistry | None = None,
    ) -> None:
        super().__init__(name.removesuffix("_total"), documentation, labelnames, registry)

    def _new_child(self) -> _CounterValue:
        return _CounterValue()

    def inc(self, amount: float = 1.0) -> None:
        self._unlabelled().inc(amount)

    def _family(self) -> CounterMetricFamily:
        return CounterMetricFamily(self._name, self._documentation, labels=self._labelnames)

    def _add_sample(
        self, family: CounterMetricFamily, values: list[str], child: _CounterValue
    ) -> None:
        family.add_metric(values, child.value)


class _HistogramValue:
    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)  # the last: above every bound (+Inf)
        self.sum = 0.0

    def observe(self, value: float) -> None:
        # bucket i counts values <= bounds[i], as Prometheus's `le` means
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.sum += value


class Histogram(_Labelled["_HistogramValue", HistogramMetricFamily]):
    """A histogram with fixed bucket bounds (exposed as `_bucket`, `_count`
    and `_sum`, cumulative as Prometheus wants)."""

    def __init__(
        self,
        name: str,
        documentation: str,
        labelnames: Sequence[str] = (),
        *,
        buckets: Sequence[float] = DEFAULT_BUCKETS,
        registry: CollectorRegistry | None = None,
    ) -> None:
        bounds = tuple(float(b) for b in buckets if not math.isinf(b))
        if not bounds or list(bounds) != sorted(set(bounds)):
            raise ValueError("histogram buckets must be increasing and not empty")
        self._bounds = bounds  # before the base class makes a child
        super().__init__(name, documentation, labelnames, registry)

    def _new_child(self) -> _HistogramValue:
        return _HistogramValue(self._bounds)

    def observe(self, value: float) -> None:
        self._unlabelled().observe(value)

    def _family(self) -> HistogramMetricFamily:
        return HistogramMetricFamily(self._name, self._documentation, labels=self._labelnames)

    def _add_sample(
        self, family: HistogramMetricFamily, values: list[str], child: _HistogramValue
    ) -> None:
        counts, total = list(child.counts), child.sum
        cumulative, running = [], 0
        for bound, count in zip((*self._bounds, math.inf), counts, strict=True):
            running += count
            cumulative.append((_bound_label(bound), running))
        family.add_metric(values, cumulative, total)
