"""Worker side: an SDK ``MetricsData`` as plain JSON-able data (what a worker file holds)."""

from __future__ import annotations

from bisect import bisect_left
from typing import Any

from ._files import COUNTER, GAUGE, HISTOGRAM, UPDOWN, warn_once


def _jsonable(value: Any) -> Any:
    if isinstance(value, (str, bool, int, float)) or value is None:
        return value
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return str(value)


def _attrs(attributes: Any) -> dict:
    return {str(k): _jsonable(v) for k, v in (attributes or {}).items()}


def serialize(metrics_data: Any) -> tuple[list[dict], dict]:
    """``(metrics, resource attributes)`` of an SDK ``MetricsData``, as plain JSON-able data.

    Cumulative sums, gauges and explicit-bucket histograms; anything else (delta
    temporality, exponential histograms) is skipped with a warning, since it cannot be
    summed across processes here.
    """
    from opentelemetry.sdk.metrics.export import AggregationTemporality, Gauge, Histogram, Sum

    out: list[dict] = []
    resource: dict = {}
    if metrics_data is None:
        return out, resource
    for rm in metrics_data.resource_metrics:
        resource.update(_attrs(rm.resource.attributes))
        for sm in rm.scope_metrics:
            scope = {
                "name": sm.scope.name or "",
                "version": sm.scope.version or "",
                "schema_url": sm.scope.schema_url or "",
                "attributes": _attrs(getattr(sm.scope, "attributes", None)),
            }
            for metric in sm.metrics:
                data = metric.data
                temporality = getattr(data, "aggregation_temporality", AggregationTemporality.CUMULATIVE)
                if isinstance(data, Histogram) and temporality == AggregationTemporality.CUMULATIVE:
                    kind = HISTOGRAM
                    points = [
                        [
                            _attrs(p.attributes),
                            {
                                "bounds": [_jsonable(b) for b in p.explicit_bounds],
                                "counts": [int(c) for c in p.bucket_counts],
                                "sum": p.sum,
                                "count": int(p.count),
                                **_exemplars_of(p),
                            },
                        ]
                        for p in data.data_points
                    ]
                elif isinstance(data, Sum) and temporality == AggregationTemporality.CUMULATIVE:
                    kind = COUNTER if data.is_monotonic else UPDOWN
                    points = [[_attrs(p.attributes), p.value] for p in data.data_points]
                elif isinstance(data, Gauge):
                    kind = GAUGE
                    points = [[_attrs(p.attributes), p.value] for p in data.data_points]
                else:
                    warn_once(
                        f"kind:{metric.name}",
                        "multiworker: %s (%s, %s) cannot be summed across workers; skipped",
                        metric.name,
                        type(data).__name__,
                        temporality,
                    )
                    continue
                if points:
                    out.append(
                        {
                            "name": metric.name,
                            "description": metric.description or "",
                            "unit": metric.unit or "",
                            "kind": kind,
                            "scope": scope,
                            "points": points,
                        }
                    )
    return out, resource


def _exemplars_of(point: Any) -> dict[str, Any]:
    """``{"exemplars": {bucket index: [trace id, span id, value, time ns]}}`` (the latest per bucket), or ``{}``."""
    out: dict[str, Any] = {}
    bounds = point.explicit_bounds
    for e in getattr(point, "exemplars", None) or ():
        if e.trace_id is None or e.span_id is None:
            continue
        i = str(bisect_left(bounds, e.value))
        have = out.get(i)
        if have is None or have[3] <= e.time_unix_nano:
            out[i] = [f"{e.trace_id:032x}", f"{e.span_id:016x}", e.value, e.time_unix_nano]
    return {"exemplars": out} if out else {}
