"""Explicit-bucket histograms aggregated on the event loop, exactly, without the SDK.

opentelemetry-sdk's ``Histogram.record()`` (a lock, an attribute-set lookup,
the exemplar machinery) costs more than everything else a short connection
costs us; ``bench/churn_callgrind.py`` measures it. A bisect into a list of
counts costs a small fraction of that, and the result is the same
aggregation the SDK would make with the same bucket boundaries: cumulative
counts per bucket (upper bound inclusive, as OpenTelemetry defines them), sum,
count, min and max, per attribute set.

Who reads it: ``traced_transport.exporters.histograms.attach(reader)`` merges these points into
what an SDK metric reader collects. Until a reader is attached, Telemetry also
hands every value to the API histogram, so an app with its own SDK set-up loses
nothing.
"""

from __future__ import annotations

import threading
import time
from bisect import bisect_left
from collections.abc import Hashable, Sequence
from typing import NamedTuple, Optional


class HistogramPoint:
    """One attribute set's state. Written on the loop under the aggregate's lock."""

    __slots__ = ("attributes", "counts", "sum", "min", "max")

    def __init__(self, attributes: dict, buckets: int) -> None:
        self.attributes = attributes
        self.counts = [0] * buckets
        self.sum = 0.0
        self.min = float("inf")
        self.max = float("-inf")


class PointView(NamedTuple):
    """A copy of one point, taken under the lock (count always equals sum(counts))."""

    attributes: dict
    counts: tuple
    count: int
    sum: float
    min: float
    max: float


class HistogramAggregate:
    """An instrument's points. ``record`` runs on the loop; ``points`` on any thread.

    Delta readers each get their own interval: ``open_interval()`` returns a
    handle whose points restart at every ``points(handle)`` read.
    """

    def __init__(self, name: str, unit: str, description: str, bounds: Sequence[float]) -> None:
        self.name = name
        self.unit = unit
        self.description = description
        self.bounds = tuple(float(b) for b in bounds)
        self.start_ns = time.time_ns()
        self._lock = threading.Lock()
        self._points: dict[Hashable, HistogramPoint] = {}
        # Per delta reader: its points since its last read, and when that was.
        self._intervals: list[list] = []

    def record(self, value: float, key: Hashable, attributes: dict) -> None:
        i = bisect_left(self.bounds, value)
        with self._lock:
            # _add inlined for the cumulative points: this runs once per connection.
            point = self._points.get(key)
            if point is None:
                point = self._points[key] = HistogramPoint(attributes, len(self.bounds) + 1)
            point.counts[i] += 1
            point.sum += value
            if value < point.min:
                point.min = value
            if value > point.max:
                point.max = value
            if self._intervals:
                for interval in self._intervals:
                    self._add(interval[0], i, value, key, attributes)

    def _add(self, points: dict, i: int, value: float, key: Hashable, attributes: dict) -> None:
        point = points.get(key)
        if point is None:
            point = points[key] = HistogramPoint(attributes, len(self.bounds) + 1)
        point.counts[i] += 1
        point.sum += value
        if value < point.min:
            point.min = value
        if value > point.max:
            point.max = value

    def open_interval(self) -> list:
        """A delta reader's handle; its first interval starts now."""
        interval = [{}, time.time_ns()]
        with self._lock:
            self._intervals.append(interval)
        return interval

    def close_interval(self, interval: list) -> None:
        with self._lock:
            if interval in self._intervals:
                self._intervals.remove(interval)

    def points(self, interval: Optional[list] = None) -> tuple[int, list[PointView]]:
        """``(start_ns, points)``: cumulative since creation, or the interval's since its last read."""
        with self._lock:
            if interval is None:
                start, source = self.start_ns, self._points
            else:
                start, source = interval[1], interval[0]
                interval[0] = {}
                interval[1] = time.time_ns()
            views = [
                PointView(p.attributes, tuple(p.counts), sum(p.counts), p.sum, p.min, p.max) for p in source.values()
            ]
        return start, views

    def __repr__(self) -> str:
        return f"<HistogramAggregate {self.name} points={len(self._points)}>"


__all__ = ["HistogramAggregate", "HistogramPoint", "PointView"]
