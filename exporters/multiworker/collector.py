"""Aggregator side: a ``prometheus_client`` collector serving the sum of every worker file.

Names, types, HELP text, units and labels are the ones the OpenTelemetry Prometheus
exporter gives the same instruments (its own mapping functions when installed).
"""

from __future__ import annotations

import json
import os
import re
import threading
import time
from collections.abc import Callable, Iterator
from itertools import chain
from typing import Any, Optional

from ._files import COUNTER, HISTOGRAM, listing, read_json, warn_once
from .compact import compact
from .merge import Aggregate, common, merge
from .procs import pid_alive


class _Mapping:
    """The OpenTelemetry Prometheus exporter's name, unit and label rules."""

    def __init__(self) -> None:
        try:
            from opentelemetry.exporter.prometheus._mapping import map_unit, sanitize_attribute, sanitize_full_name
        except ImportError:  # pragma: no cover - the exporter moved them; same rules
            map_unit = sanitize_attribute = sanitize_full_name = None  # type: ignore[assignment]
        self.map_unit = map_unit or _map_unit
        self.sanitize_attribute = sanitize_attribute or (lambda k: _sanitize(k, r"[^a-zA-Z0-9]+"))
        self.sanitize_full_name = sanitize_full_name or (lambda n: _sanitize(n, r"[^a-zA-Z0-9:]+"))

    @staticmethod
    def value(v: Any) -> str:
        return v if isinstance(v, str) else json.dumps(v, default=str)


def _sanitize(name: str, pattern: str) -> str:  # pragma: no cover - fallback
    if name and name[0].isdigit():
        name = "_" + name[1:]
    return re.sub(pattern, "_", name)


def _map_unit(unit: str) -> str:  # pragma: no cover - fallback for the units traced_transport uses
    unit = re.sub(r"{.*}", "", unit)
    return {"s": "seconds", "ms": "milliseconds", "By": "bytes", "1": ""}.get(
        unit, re.sub(r"[^a-zA-Z0-9:]+", "_", unit).strip("_")
    )


class AggregatingCollector:
    """A ``prometheus_client`` collector: the sum of every worker file in ``directory``.

    ``scope_labels=True`` adds the ``otel_scope_*`` labels (off by default, as in
    ``traced_transport.exporters.sdk.setup()``); ``target_info=False`` leaves ``target_info`` out.
    ``compact`` folds the files of dead workers into ``retired.json`` once they are
    final or older than ``retire_after`` seconds. ``alive(pid, start)`` decides
    whether a worker still runs (default :func:`pid_alive`; pass your own when the
    workers live in another pid namespace).
    """

    def __init__(
        self,
        directory: str,
        *,
        scope_labels: bool = False,
        target_info: bool = True,
        compact: bool = True,
        retire_after: float = 3600.0,
        alive: Callable[[int, Optional[int]], bool] = pid_alive,
    ) -> None:
        self.directory = os.path.abspath(directory)
        self.scope_labels = scope_labels
        self.target_info = target_info
        self.compact_enabled = compact
        self.retire_after = retire_after
        self.alive = alive
        self._cache: dict[str, tuple[tuple, dict]] = {}
        self._cache_lock = threading.Lock()
        self._mapping = _Mapping()

    def describe(self) -> list:
        return []  # no collection at registration; the names are not known before the workers write

    # -- reading -----------------------------------------------------------------------
    def _load(self, name: str) -> dict:
        path = os.path.join(self.directory, name)
        st = os.stat(path)
        key = (st.st_mtime_ns, st.st_size, st.st_ino)
        with self._cache_lock:
            cached = self._cache.get(name)
        if cached is not None and cached[0] == key:
            return cached[1]
        try:
            doc = read_json(path)
        except FileNotFoundError:
            raise
        except (OSError, ValueError) as exc:
            if cached is not None:  # a file is replaced atomically: this is not a half-written one
                warn_once(f"read:{name}", "multiworker: cannot read %s (%r); using its last reading", path, exc)
                return cached[1]
            raise
        with self._cache_lock:
            self._cache[name] = (key, doc)
        return doc

    def _listing(self) -> tuple[list[str], dict]:
        return listing(self.directory)

    def read(self) -> Aggregate:
        """Read the directory once (a file vanishing mid-read, folded into retired.json, means read again)."""
        aggregate = self._read()
        if self.compact_enabled and any(w["retirable"] for w in aggregate.workers):
            try:
                if self.compact():
                    aggregate = self._read()
            except Exception as exc:  # noqa: BLE001
                warn_once("compact", "multiworker: compaction failed: %r", exc)
        return aggregate

    def _read(self) -> Aggregate:
        now = time.time()
        names: list = []
        retired: dict = {}
        docs: list = []
        for _attempt in range(10):
            names, retired = self._listing()
            docs = []
            try:
                for name in names:
                    try:
                        docs.append((name, self._load(name)))
                    except (OSError, ValueError) as exc:
                        if isinstance(exc, FileNotFoundError):
                            raise
                        warn_once(f"skip:{name}", "multiworker: skipping unreadable %s: %r", name, exc)
            except FileNotFoundError:
                continue
            break
        with self._cache_lock:
            for stale in set(self._cache) - set(names):
                del self._cache[stale]
        merged: dict = {}
        merge(merged, retired.get("metrics", ()), live=False)
        resources = [retired["resource"]] if retired.get("resource") is not None else []
        workers = []
        for name, doc in docs:
            pid = int(doc.get("pid", 0))
            live = not doc.get("final") and self.alive(pid, doc.get("start"))
            merge(merged, doc["metrics"], live=live)
            resources.append(doc.get("resource") or {})
            final = bool(doc.get("final"))
            retirable = not live and (final or now - float(doc.get("time") or 0) > self.retire_after)
            workers.append(
                {
                    "file": name,
                    "pid": pid,
                    "alive": live,
                    "final": final,
                    "time": doc.get("time"),
                    "retirable": retirable,
                }
            )
        return Aggregate(merged, common(resources), workers)

    # -- compaction ------------------------------------------------------------------------
    def compact(self) -> int:
        """Fold the files of dead workers into ``retired.json``; returns how many were folded."""
        return compact(self.directory, alive=self.alive, retire_after=self.retire_after)

    # -- exposition ---------------------------------------------------------------------------
    def collect(self) -> Iterator[Any]:
        yield from self.families(self.read())

    def families(self, aggregate: Aggregate) -> list:
        from prometheus_client.core import (
            CounterMetricFamily,
            GaugeMetricFamily,
            HistogramMetricFamily,
            InfoMetricFamily,
        )

        from ..exemplars import openmetrics_exemplar

        mp = self._mapping
        out: list = []
        if self.target_info and aggregate.merged:
            attrs = {mp.sanitize_attribute(k): mp.value(v) for k, v in aggregate.resource.items()}
            info = InfoMetricFamily("target", "Target metadata", labels=attrs)
            info.add_metric(labels=list(attrs), value=attrs)
            out.append(info)
        # family id -> (factory, name, description, unit, rows[(labels, value)])
        families: dict[str, list] = {}
        for (name, description, unit, kind, scope_json), series in aggregate.merged.items():
            if not series:
                continue
            metric_name = mp.sanitize_full_name(name)
            prom_unit = mp.map_unit(unit)
            factory = (
                CounterMetricFamily
                if kind == COUNTER
                else HistogramMetricFamily
                if kind == HISTOGRAM
                else GaugeMetricFamily
            )
            fid = "|".join((metric_name, description, prom_unit, factory.__name__))
            entry = families.setdefault(fid, [factory, metric_name, description, prom_unit, []])
            scope_attrs: dict = {}
            if self.scope_labels:
                scope = json.loads(scope_json)
                for k, v in (scope.get("attributes") or {}).items():
                    scope_attrs["otel_scope_" + k] = v
                scope_attrs.update(
                    {
                        "otel_scope_name": scope.get("name", ""),
                        "otel_scope_version": scope.get("version", ""),
                        "otel_scope_schema_url": scope.get("schema_url", ""),
                    }
                )
            for attributes, value in series.values():
                labels = {
                    mp.sanitize_attribute(k): mp.value(v) for k, v in chain(scope_attrs.items(), attributes.items())
                }
                entry[4].append((labels, value))
        for factory, metric_name, description, prom_unit, rows in families.values():
            keys = sorted({k for labels, _ in rows for k in labels})
            family = factory(metric_name, description, labels=keys, unit=prom_unit)
            for labels, value in rows:
                values = [labels.get(k, "") for k in keys]
                if factory is HistogramMetricFamily:
                    buckets, total = [], 0
                    exemplars = value.get("exemplars") or {}
                    for i, (bound, count) in enumerate(zip(chain(value["bounds"], ["+Inf"]), value["counts"])):
                        total += count
                        e = exemplars.get(str(i))
                        if e is None:
                            buckets.append((f"{bound}", total))
                        else:  # the OpenMetrics format renders it; the text format leaves it out
                            ex = openmetrics_exemplar(int(e[0], 16), int(e[1], 16), e[2], e[3])
                            buckets.append((f"{bound}", total, ex))
                    family.add_metric(values, buckets=buckets, sum_value=value["sum"])
                else:
                    family.add_metric(values, value)
            out.append(family)
        return out
