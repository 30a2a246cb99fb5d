"""Explicit-bucket histograms aggregated on the event loop, exactly, without the SDK.

opentelemetry-sdk's ``Histogram.record()`` (a lock, an attribute-set lookup,
the exemplar machinery) costs more than everything else a short connection
costs us; ``bench/churn_callgrind.py`` measures it. A bisect into a list of
counts costs a small fraction of that, and the result is the same
aggregation the SDK would make with the same bucket boundaries: cumulative
counts per bucket (upper bound inclusive, as OpenTelemetry defines them), sum,
count, min and max, per attribute set.

Exemplars: ``record_with_exemplar`` (a value whose connection has a sampled
span) counts the value and keeps, per bucket, the latest such observation
(value, time, trace id, span id), as prometheus_client does; ``add_exemplar``
attaches one to a value counted earlier (a span decided when the connection
ends). ``record`` is untouched by them: a connection without a kept span pays
nothing for exemplars.

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
from typing import Any, NamedTuple, Optional


class Exemplar(NamedTuple):
    """One observation a bucket points at: the value, when (epoch ns), and its span's ids."""

    value: float
    time_ns: int
    trace_id: int
    span_id: int


class HistogramPoint:
    """One attribute set's state. Written on the loop under the aggregate's lock."""

    __slots__ = ("attributes", "counts", "sum", "min", "max", "exemplars")

    def __init__(self, attributes: dict[str, Any], buckets: int) -> None:
        self.attributes = attributes
        self.counts = [0] * buckets
        self.sum = 0.0
        self.min = float("inf")
        self.max = float("-inf")
        # Made on the first exemplar: one slot per bucket, the latest Exemplar or None.
        self.exemplars: Optional[list[Optional[Exemplar]]] = None


class PointView(NamedTuple):
    """A copy of one point, taken under the lock (count always equals sum(counts))."""

    attributes: dict[str, Any]
    counts: tuple[int, ...]
    count: int  # type: ignore[assignment]  # a field named like tuple.count, the public name
    sum: float
    min: float
    max: float
    # Per bucket, the latest Exemplar or None; None when the point never had one.
    exemplars: Optional[tuple[Optional[Exemplar], ...]] = None


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
        # Each one is [points, start_ns].
        self._intervals: list[list[Any]] = []

    def record(self, value: float, key: Hashable, attributes: dict[str, Any]) -> None:
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

    def _add(
        self, points: dict[Hashable, HistogramPoint], i: int, value: float, key: Hashable, attributes: dict[str, Any]
    ) -> None:
        point = points.get(key)
        if point is None:
            point = points[key] = HistogramPoint(attributes, len(self.bounds) + 1)
        point.counts[i] += 1
        point.sum += value
        if value < point.min:
            point.min = value
        if value > point.max:
            point.max = value

    def record_with_exemplar(
        self, value: float, key: Hashable, attributes: dict[str, Any], trace_id: int, span_id: int, time_ns: int
    ) -> None:
        """``record``, and the value becomes its bucket's exemplar (the span must be sampled: the caller checks)."""
        i = bisect_left(self.bounds, value)
        exemplar = Exemplar(value, time_ns, trace_id, span_id)
        with self._lock:
            self._add(self._points, i, value, key, attributes)
            self._set_exemplar(self._points[key], i, exemplar)
            for interval in self._intervals:
                self._add(interval[0], i, value, key, attributes)
                self._set_exemplar(interval[0][key], i, exemplar)

    def add_exemplar(self, value: float, key: Hashable, trace_id: int, span_id: int, time_ns: int) -> None:
        """Make ``value``, counted earlier under ``key`` by ``record``, its bucket's exemplar, unless a newer one is there.

        For spans decided when a connection ends: its pauses and handshake were
        counted before anyone knew the span would be kept. A delta reader whose
        interval no longer has the point gets nothing (the value was exported).
        """
        i = bisect_left(self.bounds, value)
        exemplar = Exemplar(value, time_ns, trace_id, span_id)
        with self._lock:
            for points in (self._points, *(interval[0] for interval in self._intervals)):
                point = points.get(key)
                if point is not None:
                    self._set_exemplar(point, i, exemplar)

    def _set_exemplar(self, point: HistogramPoint, i: int, exemplar: Exemplar) -> None:
        exemplars = point.exemplars
        if exemplars is None:
            exemplars = point.exemplars = [None] * (len(self.bounds) + 1)
        have = exemplars[i]
        if have is None or have.time_ns <= exemplar.time_ns:
            exemplars[i] = exemplar

    def open_interval(self) -> list[Any]:
        """A delta reader's handle; its first interval starts now."""
        interval: list[Any] = [{}, time.time_ns()]
        with self._lock:
            self._intervals.append(interval)
        return interval

    def close_interval(self, interval: list[Any]) -> None:
        with self._lock:
            if interval in self._intervals:
                self._intervals.remove(interval)

    def points(self, interval: Optional[list[Any]] = None) -> tuple[int, list[PointView]]:
        """``(start_ns, points)``: cumulative since creation, or the interval's since its last read."""
        with self._lock:
            if interval is None:
                start, source = self.start_ns, self._points
            else:
                start, source = interval[1], interval[0]
                interval[0] = {}
                interval[1] = time.time_ns()
            views = [
                PointView(
                    p.attributes,
                    tuple(p.counts),
                    sum(p.counts),
                    p.sum,
                    p.min,
                    p.max,
                    None if p.exemplars is None else tuple(p.exemplars),
                )
                for p in source.values()
            ]
        return start, views

    def __repr__(self) -> str:
        return f"<HistogramAggregate {self.name} points={len(self._points)}>"


__all__ = ["Exemplar", "HistogramAggregate", "HistogramPoint", "PointView"]
