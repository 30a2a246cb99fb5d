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

``record`` takes no lock and does no bisect: it appends the value to its
attribute set's pending list, which ``fold`` empties into the points under the
lock, in one batch per list, before anything reads or writes the points
(``points``, the exemplar methods, ``open_interval``). The loop folds too when a
list grows past ``max_pending``, so memory stays bounded without a reader. A
list is only ever appended to without the lock and emptied from the front
under it, so a fold running beside the loop neither loses nor repeats a value;
each list keeps its values in recording order, so sums come out bit for bit as
if each value had been added when recorded.

Who reads it: ``traced_transport.exporters.histograms.attach(reader)`` merges these points into
what an SDK metric reader collects. Until a reader is attached, Telemetry also
hands every value to the API histogram, so an app with its own SDK set-up loses
nothing.
"""

from __future__ import annotations

import sys
import threading
import time
from bisect import bisect_left, bisect_right
from collections.abc import Hashable, Sequence
from functools import reduce
from operator import add
from typing import Any, NamedTuple, Optional

# How many values an attribute set's pending list holds before the loop folds them in itself: small
# enough that the len() checking it returns one of CPython's cached small ints instead of a new int,
# and a small batch sorts cheaper per value.
MAX_PENDING = 255
# Below this many values a fold counts them one by one; from it on, the sort's fixed cost pays off.
_BATCH = 16

if sys.version_info < (3, 12):

    def _sum_in_order(values: list[float], start: float) -> float:
        # sum() adds floats one after the other here, as ``+=`` per value did.
        return sum(values, start)

else:

    def _sum_in_order(values: list[float], start: float) -> float:
        # sum() compensates rounding from 3.12 on: a left fold keeps the sum ``+=`` per value made.
        return reduce(add, values, start)


class Exemplar(NamedTuple):
    """One observation a bucket points at: the value, when (epoch ns), and its span's ids."""

    value: float
    time_ns: int
    trace_id: int
    span_id: int


class HistogramPoint:
    """One attribute set's state. Written under the aggregate's lock (by ``fold`` and the exemplar methods)."""

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

    ``record`` appends without a lock, so any thread may record as well as read.
    ``pending(key, attributes)`` hands out the list ``record`` appends to, for a
    caller that saves the lookup by appending to it directly.

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
        # Per attribute set: the values recorded since the last fold, and the attributes a new point gets.
        self._pending: dict[Hashable, list[float]] = {}
        self._attributes: dict[Hashable, dict[str, Any]] = {}
        self.max_pending = MAX_PENDING
        # Per delta reader: its points since its last read, and when that was.
        # Each one is [points, start_ns].
        self._intervals: list[list[Any]] = []

    def record(self, value: float, key: Hashable, attributes: dict[str, Any]) -> None:
        values = self._pending.get(key)
        if values is None:
            values = self.pending(key, attributes)
        values.append(value)
        if len(values) > self.max_pending:
            self.fold()

    def pending(self, key: Hashable, attributes: dict[str, Any]) -> list[float]:
        """The list ``key``'s values wait in until a fold: appending a value to it records the value.

        The same list for the aggregate's lifetime (a fold empties it in place).
        A caller only appends to it, and calls ``fold()`` once it holds more
        than ``max_pending`` values.
        """
        values = self._pending.get(key)
        if values is None:
            with self._lock:
                values = self._pending.get(key)
                if values is None:
                    values = self._pending[key] = []
                    self._attributes[key] = attributes
        return values

    def fold(self) -> None:
        """Count the pending values into the points (thread-safe)."""
        with self._lock:
            self._fold()

    def _fold(self) -> None:
        # Under the lock. The copy and the deletion are one C call each: a value the
        # loop appends between them is past the copied prefix and stays for the next fold.
        for key, values in self._pending.items():
            if values:
                batch = values[:]
                del values[: len(batch)]
                self._add_batch(key, self._attributes[key], batch)

    def _add_batch(self, key: Hashable, attributes: dict[str, Any], batch: list[float]) -> None:
        """Each value of ``batch`` counted in order, in the cumulative point and each interval's;
        for a large batch, with the per-value work done in C."""
        size = len(self.bounds) + 1
        points = [self._points.get(key) or self._points.setdefault(key, HistogramPoint(attributes, size))]
        for interval in self._intervals:
            points.append(interval[0].get(key) or interval[0].setdefault(key, HistogramPoint(attributes, size)))
        if len(batch) >= _BATCH:
            totals = [_sum_in_order(batch, point.sum) for point in points]
            # A NaN (in the batch or counted earlier) leaves min, max and the sorted order meaningless:
            # those batches take the loop below.
            if totals[0] == totals[0]:
                batch.sort()
                # The sort is stable: of equal values (0.0 and -0.0) the first recorded comes first, the one
                # ``<`` and ``>`` per value keep.
                low = batch[0]
                high = batch[bisect_left(batch, batch[-1])]
                bounds = self.bounds
                last = bisect_left(bounds, high)
                # A value counts in the first bucket whose bound it does not exceed (bisect_left on the
                # bounds): a bucket gets the values up to its bound less those up to the previous one.
                added = []
                below = 0
                for i in range(bisect_left(bounds, low), last):
                    upto = bisect_right(batch, bounds[i])
                    added.append((i, upto - below))
                    below = upto
                added.append((last, len(batch) - below))
                for point, total in zip(points, totals):
                    point.sum = total
                    counts = point.counts
                    for i, n in added:
                        counts[i] += n
                    if low < point.min:
                        point.min = low
                    if high > point.max:
                        point.max = high
                return
        bounds = self.bounds
        for value in batch:
            i = bisect_left(bounds, value)
            for point in points:
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
            # The values recorded before this one are counted before it, as they were recorded.
            self._fold()
            self._add_batch(key, attributes, [value])
            self._set_exemplar(self._points[key], i, exemplar)
            for interval in self._intervals:
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
            # The value may still be pending: its point must exist for the exemplar to land.
            self._fold()
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
            # Values recorded before the interval opened belong to the intervals open then, not to it.
            self._fold()
            self._intervals.append(interval)
        return interval

    def close_interval(self, interval: list[Any]) -> None:
        with self._lock:
            if interval in self._intervals:
                self._intervals.remove(interval)

    def points(self, interval: Optional[list[Any]] = None) -> tuple[int, list[PointView]]:
        """``(start_ns, points)``: cumulative since creation, or the interval's since its last read."""
        with self._lock:
            self._fold()
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


__all__ = ["MAX_PENDING", "Exemplar", "HistogramAggregate", "HistogramPoint", "PointView"]
