"""Hand traced_transport's loop-side histogram aggregates straight to SDK metric readers.

``Telemetry`` aggregates the four histograms itself (a list append per value on
the loop, folded into bucket counts when read, see
``traced_transport.telemetry.histogram``). Once a reader is attached here, every
collection of that reader gets those points merged into its ``MetricsData``
as ordinary OpenTelemetry histograms (same name, unit, description, scope and
bucket boundaries the API instruments have), and ``Telemetry`` stops calling
the SDK's ``Histogram.record()``, which costs more than the rest of a short
connection together.

``traced_transport.exporters.sdk.setup()`` and the multi-worker mode attach their readers
themselves. An app with its own ``MeterProvider`` attaches each of its readers::

    reader = PrometheusMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    traced_transport.exporters.histograms.attach(reader)          # the default Telemetry
    traced_transport.exporters.histograms.attach(reader, my_telemetry)

Attach every reader of the provider, or none: a reader left out gets no
histogram values once another one is attached. SDK Views do not apply to these
four histograms (their boundaries are the semantic-convention ones).
A collection in which the SDK itself has no data at all is skipped by the SDK
before it reaches the reader; that cannot happen once a connection has opened
(its counters always have a value). Cumulative readers get points since the Telemetry was made; delta readers get
each interval's points, with the interval's own min and max.

Exemplars (the latest observation per bucket whose connection had a sampled
span) go on the data points' ``exemplars``, as the SDK's own would: the OTLP
exporter sends them, and ``traced_transport.exporters.prometheus`` renders them
in the OpenMetrics format.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any, Optional

from traced_transport.report import RateLimitedLog

_log = RateLimitedLog(logging.getLogger("traced_transport.exporters.histograms"))

__all__ = ["attach", "detach"]

_ATTR = "_traced_transport_histograms"


class _Merger:
    """Replaces a reader's ``_receive_metrics`` with one that merges in the aggregates first."""

    def __init__(self, reader: Any) -> None:
        from opentelemetry.sdk.metrics import Histogram
        from opentelemetry.sdk.metrics.export import AggregationTemporality

        self.reader = reader
        self.original = reader._receive_metrics
        # Keyed by the SDK's private instrument classes, which subclass the public ones.
        temporality = next(
            (
                t
                for cls, t in getattr(reader, "_instrument_class_temporality", {}).items()
                if issubclass(cls, Histogram)
            ),
            None,
        )
        self.delta = temporality == AggregationTemporality.DELTA
        self.temporality = AggregationTemporality.DELTA if self.delta else AggregationTemporality.CUMULATIVE
        self._lock = threading.Lock()
        # (telemetry, {histogram name: delta interval handle or None})
        self.sources: list[tuple[Any, dict]] = []

    def add(self, telemetry: Any) -> bool:
        with self._lock:
            if any(t is telemetry for t, _ in self.sources):
                return False
            handles = {
                name: (agg.open_interval() if self.delta else None) for name, agg in telemetry.histograms.items()
            }
            self.sources.append((telemetry, handles))
            return True

    def remove(self, telemetry: Any) -> bool:
        with self._lock:
            for i, (t, handles) in enumerate(self.sources):
                if t is telemetry:
                    del self.sources[i]
                    for name, handle in handles.items():
                        if handle is not None:
                            t.histograms[name].close_interval(handle)
                    return True
        return False

    def __call__(self, metrics_data: Any, timeout_millis: float = 10_000, **kwargs: Any) -> Any:
        try:
            metrics_data = self.merge(metrics_data)
        except Exception:  # noqa: BLE001 - never lose the SDK's own metrics over ours
            _log(
                "merge",
                "traced_transport.exporters.histograms: merging traced_transport histograms into a collection failed",
                exc_info=True,
            )
        return self.original(metrics_data, timeout_millis=timeout_millis, **kwargs)

    def merge(self, metrics_data: Any) -> Any:
        from opentelemetry.sdk.metrics.export import (
            Histogram,
            HistogramDataPoint,
            Metric,
            MetricsData,
            ResourceMetrics,
            ScopeMetrics,
        )
        from opentelemetry.sdk.util.instrumentation import InstrumentationScope

        with self._lock:
            sources = list(self.sources)
        if not sources or not metrics_data.resource_metrics:
            return metrics_data
        now = time.time_ns()
        ours: list[Any] = []
        scope = None
        for telemetry, handles in sources:
            scope = scope or InstrumentationScope(telemetry.scope_name, telemetry.scope_version)
            for name, agg in telemetry.histograms.items():
                start, points = agg.points(handles.get(name))
                if not points:
                    continue
                bounds = agg.bounds
                data_points = [
                    HistogramDataPoint(
                        exemplars=_exemplars(p.exemplars),
                        attributes=p.attributes,
                        start_time_unix_nano=start,
                        time_unix_nano=now,
                        count=p.count,
                        sum=p.sum,
                        bucket_counts=p.counts,
                        explicit_bounds=bounds,
                        min=p.min,
                        max=p.max,
                    )
                    for p in points
                ]
                ours.append(
                    Metric(
                        name=name,
                        description=agg.description,
                        unit=agg.unit,
                        data=Histogram(data_points=data_points, aggregation_temporality=self.temporality),
                    )
                )
        if not ours:
            return metrics_data
        names = {m.name for m in ours}
        first, *rest = metrics_data.resource_metrics
        scope_metrics = []
        merged = False
        for sm in first.scope_metrics:
            if sm.scope.name == scope.name:
                # Values the API instruments got before the reader was attached are
                # in the aggregates too: ours replace the SDK's points.
                kept = [m for m in sm.metrics if m.name not in names]
                sm = ScopeMetrics(scope=sm.scope, metrics=kept + ours, schema_url=sm.schema_url)
                merged = True
            scope_metrics.append(sm)
        if not merged:
            scope_metrics.append(ScopeMetrics(scope=scope, metrics=ours, schema_url=""))
        first = ResourceMetrics(resource=first.resource, scope_metrics=scope_metrics, schema_url=first.schema_url)
        return MetricsData(resource_metrics=[first, *rest])


def _exemplars(exemplars: Optional[tuple]) -> list:
    """The SDK's Exemplars of a point's per-bucket slots (bucket order, as the SDK lists its own)."""
    if exemplars is None:
        return []
    from opentelemetry.sdk.metrics import Exemplar

    return [Exemplar({}, e.value, e.time_ns, e.span_id, e.trace_id) for e in exemplars if e is not None]


def attach(reader: Any, telemetry: Optional[Any] = None) -> None:
    """Make ``reader`` collect ``telemetry``'s histograms (default: the default Telemetry) directly."""
    telemetry = _or_default(telemetry)
    merger = reader.__dict__.get(_ATTR)
    if merger is None:
        merger = _Merger(reader)
        reader._receive_metrics = merger
        setattr(reader, _ATTR, merger)
    if merger.add(telemetry):
        telemetry.histogram_reader(True)


def detach(reader: Any, telemetry: Optional[Any] = None) -> None:
    """Undo :func:`attach` for one Telemetry on ``reader`` (tests, or a reader being dropped)."""
    telemetry = _or_default(telemetry)
    merger = reader.__dict__.get(_ATTR)
    if merger is not None and merger.remove(telemetry):
        telemetry.histogram_reader(False)


def _or_default(telemetry: Optional[Any]) -> Any:
    if telemetry is None:
        from traced_transport import default_telemetry

        return default_telemetry()
    return telemetry
