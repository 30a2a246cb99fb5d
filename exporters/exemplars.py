"""Histogram exemplars on Prometheus bucket samples (rendered by the OpenMetrics format only).

OpenTelemetry's Prometheus exporter turns ``HistogramDataPoint``s into
``prometheus_client`` families and drops their ``exemplars``. Here they are put
back: :func:`attach` finds each exemplar's bucket sample (same metric, same
labels, the bucket its value falls in) and sets ``Sample.exemplar`` on it, with
the labels Grafana and Prometheus look for::

    transport_connection_duration_seconds_bucket{le="0.5",...} 12 # {span_id="00f0...",trace_id="4bf9..."} 0.42 1700000000.123000000

The Prometheus text format has no place for them: ``generate_latest`` ignores
them, so a classic scrape is byte for byte what it was.
"""

from __future__ import annotations

import json
from bisect import bisect_left
from collections.abc import Iterable, Mapping
from typing import Any, Optional

__all__ = ["attach", "index", "openmetrics_exemplar"]

SCOPE_LABEL_PREFIX = "otel_scope_"


def openmetrics_exemplar(trace_id: int, span_id: int, value: float, time_ns: Optional[int]) -> Any:
    """A ``prometheus_client`` Exemplar with the W3C hex ids (32 and 16 digits) OpenMetrics consumers link by."""
    from prometheus_client.samples import Exemplar, Timestamp

    timestamp = None if time_ns is None else Timestamp(time_ns // 1_000_000_000, time_ns % 1_000_000_000)
    return Exemplar({"trace_id": f"{trace_id:032x}", "span_id": f"{span_id:016x}"}, value, timestamp)


def _rules() -> tuple[Any, Any]:
    try:
        from opentelemetry.exporter.prometheus._mapping import sanitize_attribute, sanitize_full_name
    except ImportError:  # pragma: no cover - older exporters: the same rules, by hand
        import re

        def sanitize_attribute(key: str) -> str:
            return re.sub(r"[^a-zA-Z0-9]+", "_", key)

        def sanitize_full_name(name: str) -> str:
            return re.sub(r"[^a-zA-Z0-9:]+", "_", name)

    return sanitize_attribute, sanitize_full_name


def _label_value(value: Any) -> str:
    # The exporter's rule: strings as they are, anything else as JSON.
    return value if isinstance(value, str) else json.dumps(value, default=str)


def _series(labels: Mapping[str, str]) -> tuple:
    # The exporter gives every series of a family the same label names, "" where a point lacks the
    # attribute; Prometheus reads an empty label as an absent one, and so does this match.
    return tuple(
        sorted((k, v) for k, v in labels.items() if v != "" and k != "le" and not k.startswith(SCOPE_LABEL_PREFIX))
    )


def index(metrics_data: Any) -> dict[tuple, dict[int, Any]]:
    """``{(metric name, series labels): {bucket index: (time_ns, Exemplar)}}`` of every histogram point's exemplars.

    The latest per bucket when a point lists several for one bucket (the SDK's own reservoirs may).
    """
    from opentelemetry.sdk.metrics.export import Histogram

    out: dict[tuple, dict[int, Any]] = {}
    if metrics_data is None:
        return out
    sanitize_attribute, sanitize_full_name = _rules()
    for rm in metrics_data.resource_metrics:
        for sm in rm.scope_metrics:
            for metric in sm.metrics:
                data = metric.data
                if not isinstance(data, Histogram):
                    continue
                name = None
                for point in data.data_points:
                    exemplars = getattr(point, "exemplars", None)
                    if not exemplars:
                        continue
                    name = name or sanitize_full_name(metric.name)
                    labels = {sanitize_attribute(k): _label_value(v) for k, v in point.attributes.items()}
                    buckets = out.setdefault((name, _series(labels)), {})
                    bounds = point.explicit_bounds
                    for e in exemplars:
                        if e.trace_id is None or e.span_id is None:
                            continue
                        i = bisect_left(bounds, e.value)
                        have = buckets.get(i)
                        if have is None or have[0] <= e.time_unix_nano:
                            ex = openmetrics_exemplar(e.trace_id, e.span_id, e.value, e.time_unix_nano)
                            buckets[i] = (e.time_unix_nano, ex)
    return out


def attach(families: Iterable[Any], exemplars: Mapping[tuple, Mapping[int, Any]]) -> list:
    """``families`` with each exemplar set on its bucket sample (families of other kinds pass through)."""
    families = list(families)
    if not exemplars:
        return families
    for family in families:
        if family.type != "histogram":
            continue
        names = {family.name}
        if getattr(family, "unit", "") and family.name.endswith("_" + family.unit):
            names.add(family.name[: -len(family.unit) - 1])
        bucket_name = family.name + "_bucket"
        position: dict[tuple, int] = {}
        samples = family.samples
        for n, sample in enumerate(samples):
            if sample.name != bucket_name:
                continue
            series = _series(sample.labels)
            i = position.get(series, 0)
            position[series] = i + 1
            for name in names:
                found = exemplars.get((name, series))
                if found is not None and i in found:
                    samples[n] = sample._replace(exemplar=found[i][1])
                    break
    return families
