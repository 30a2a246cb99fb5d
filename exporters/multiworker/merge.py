"""Summing worker files: per metric and label set; gauges of dead workers count 0."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from typing import Any, Optional

from ._files import GAUGE_KINDS, HISTOGRAM, warn_once


def mkey(metric: Mapping) -> tuple:
    return (
        metric["name"],
        metric.get("description", ""),
        metric.get("unit", ""),
        metric["kind"],
        json.dumps(metric.get("scope") or {}, sort_keys=True),
    )


def merge(into: dict, metrics: Iterable[Mapping], *, live: bool) -> None:
    """Add ``metrics`` (serialised) into ``into``: {metric key: {attribute json: [attributes, value]}}.

    Gauges of a worker that is not ``live`` count 0: their series stay (at 0, as in one
    process once its connections closed) without adding anything.
    """
    for metric in metrics:
        kind = metric["kind"]
        zero = kind in GAUGE_KINDS and not live
        series = into.setdefault(mkey(metric), {})
        for attributes, value in metric["points"]:
            if zero:
                value = 0
            akey = json.dumps(attributes, sort_keys=True)
            have = series.get(akey)
            if kind != HISTOGRAM:
                if have is None:
                    series[akey] = [attributes, value]
                else:
                    have[1] += value
                continue
            if have is None:
                series[akey] = [
                    attributes,
                    {
                        "bounds": list(value["bounds"]),
                        "counts": list(value["counts"]),
                        "sum": value["sum"],
                        "count": value["count"],
                    },
                ]
                merge_exemplars(series[akey][1], value.get("exemplars"))
                continue
            h = have[1]
            if h["bounds"] != value["bounds"] or len(h["counts"]) != len(value["counts"]):
                warn_once(
                    f"bounds:{metric['name']}",
                    "multiworker: %s has different bucket bounds in "
                    "different workers; the points of the later ones are left out",
                    metric["name"],
                )
                continue
            h["counts"] = [a + b for a, b in zip(h["counts"], value["counts"])]
            h["sum"] += value["sum"]
            h["count"] += value["count"]
            merge_exemplars(h, value.get("exemplars"))


def merge_exemplars(into: dict[str, Any], exemplars: Optional[Mapping[str, Any]]) -> None:
    """Keep the latest exemplar of each bucket across workers."""
    if not exemplars:
        return
    have = into.setdefault("exemplars", {})
    for i, e in exemplars.items():
        if i not in have or have[i][3] <= e[3]:
            have[i] = list(e)


def unmerge(merged: dict) -> list[dict]:
    """The inverse of merge: serialised metrics."""
    out = []
    for (name, description, unit, kind, scope), series in merged.items():
        out.append(
            {
                "name": name,
                "description": description,
                "unit": unit,
                "kind": kind,
                "scope": json.loads(scope),
                "points": [list(v) for v in series.values()],
            }
        )
    return out


def common(resources: Iterable[Mapping]) -> dict:
    common: Optional[dict] = None
    for r in resources:
        if common is None:
            common = dict(r)
        else:
            common = {k: v for k, v in common.items() if k in r and r[k] == v}
    return common or {}


class Aggregate:
    """One reading of the directory: summed series, and what each worker file said."""

    def __init__(self, merged: dict, resource: dict, workers: list[dict]) -> None:
        self.merged = merged
        self.resource = resource
        self.workers = workers  # {"file", "pid", "alive", "final", "time"}

    def value(self, name: str, **attributes: Any) -> Any:
        """The sum of instrument ``name``'s points whose attributes include ``attributes`` (tests, tools)."""
        total: Any = 0
        hist: Optional[dict] = None
        for key, series in self.merged.items():
            if key[0] != name:
                continue
            for attrs, value in series.values():
                if any(attrs.get(k) != v for k, v in attributes.items()):
                    continue
                if isinstance(value, dict):
                    hist = hist or {"count": 0, "sum": 0.0}
                    hist["count"] += value["count"]
                    hist["sum"] += value["sum"]
                else:
                    total += value
        return hist if hist is not None else total
