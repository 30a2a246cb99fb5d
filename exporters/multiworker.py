"""Multi-worker servers: one Prometheus scrape with the totals of every worker process.

OpenTelemetry's Prometheus reader lives in one process, and ``uvicorn --workers N`` or
gunicorn run N. Here each worker writes what its ``MeterProvider`` holds to a small
JSON file in a shared directory, and one process serves the sum:

    # in each worker (at import of the app, in a post-fork hook, or from sitecustomize)
    from traced_transport.exporters import multiworker
    worker = multiworker.start_worker("/run/tt-metrics")
    worker.instrument(server_name="http")   # = traced_transport.instrument(observer=worker.telemetry, ...)

    # in one process (the supervisor, a sidecar): http://127.0.0.1:9464/metrics
    multiworker.prepare_directory("/run/tt-metrics")   # once, before the workers start
    aggregator = multiworker.serve("/run/tt-metrics", port=9464)

**Worker side** (:class:`WorkerExporter`): a ``MeterProvider`` with a manual-collection,
cumulative reader and a :class:`traced_transport.Telemetry` bound to it. A daemon thread
collects every ``interval`` seconds and replaces ``{directory}/{pid}-{token}.json``
atomically (temporary file + ``os.replace``). The token is new for every process (and
after a fork), so a reused pid never overwrites a dead worker's totals. Nothing is written
before the first data point (helper processes that never serve leave no file). The last,
*final* write happens

- at interpreter exit (``atexit``: ``sys.exit``, end of the main module, ``SIGINT``'s
  ``KeyboardInterrupt``);
- when ``signal.raise_signal()`` re-raises a deadly signal whose handler is the default
  one, which is how uvicorn ends a worker after its graceful shutdown on ``SIGTERM``:
  the write happens after every connection closed, so the totals are exact;
- on ``SIGTERM`` when the handler that was installed before ``start_worker`` is the
  default one (the process would die without ``atexit``): the handler chains — it asks
  the writer thread for a final write (waiting at most ``signal_timeout``, never taking a
  lock in the handler) and then dies by the signal as before. A Python handler that was
  there is called after a (non-final) write request; ``SIG_IGN`` stays ignored;
- on :meth:`WorkerExporter.close` (e.g. from an ASGI lifespan shutdown).

A worker killed with ``SIGKILL`` (or that crashes) leaves its last periodic write: up to
``interval`` seconds of traffic are missing from the totals.

**Aggregator side** (:class:`AggregatingCollector`, a ``prometheus_client`` custom
collector): at each scrape it reads every worker file and sums per metric and label set.

- counters (monotonic sums) and histograms of dead workers are kept, so a worker restart
  never makes a counter go down;
- gauges (``transport.connection.active``, ``transport.reading.paused``,
  ``transport.writing.paused``, ``transport.write_buffer.size``: non-monotonic sums and
  gauges) are summed over live workers only ("livesum"); a dead worker's gauge series
  count 0 (they stay, at 0, as they do in one process once its connections closed). A
  worker is dead when its file is final (clean exit or :func:`mark_dead`), or its pid is
  gone, a zombie, or now belongs to a process that started at another time (``/proc``);
- histogram exemplars (trace and span ids of connections with a sampled span) are kept
  per bucket, the latest over all workers, and served in the OpenMetrics format;
- names, types, HELP text, units and labels are the ones the OpenTelemetry Prometheus
  exporter gives the same instruments (``transport_received_bytes_total``,
  ``transport_connection_active``, ``transport_connection_duration_seconds_bucket{le=...}``,
  ...); without ``otel_scope_*`` labels by default, as ``traced_transport.exporters.sdk.setup()`` serves them;
  ``target_info`` carries the resource attributes all workers share;
- the files of dead workers are folded into ``retired.json`` (under an ``flock``) once
  they are final, or ``retire_after`` seconds old: the directory does not grow with
  every worker restart.

Use a fresh directory per server start (:func:`prepare_directory` empties one), as for
prometheus_client's multiprocess mode: totals then start at zero, which Prometheus
handles as a counter reset. The directory is trusted: whoever can write to it can
change the metrics.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import logging
import os
import re
import secrets
import signal
import sys
import threading
import time
from bisect import bisect_left
from collections.abc import Callable, Iterable, Iterator, Mapping
from itertools import chain
from typing import Any, Optional

__all__ = [
    "AggregatingCollector",
    "Aggregator",
    "WorkerExporter",
    "mark_dead",
    "pid_alive",
    "prepare_directory",
    "serialize",
    "serve",
    "start_worker",
]

logger = logging.getLogger("traced_transport.exporters.multiworker")

FORMAT = 1
RETIRED = "retired.json"
LOCK = ".lock"
_WORKER_FILE = re.compile(r"^(\d+)-([0-9a-f]+)\.json$")

COUNTER = "counter"  # monotonic cumulative sum
UPDOWN = "updowncounter"  # non-monotonic cumulative sum: a Prometheus gauge
GAUGE = "gauge"
HISTOGRAM = "histogram"
_GAUGE_KINDS = (UPDOWN, GAUGE)
_DEADLY = tuple(getattr(signal, n) for n in ("SIGTERM", "SIGINT", "SIGHUP", "SIGQUIT") if hasattr(signal, n))

_warned: set = set()


def _warn_once(site: str, msg: str, *args: Any) -> None:
    if site not in _warned:
        _warned.add(site)
        logger.warning(msg, *args)


# -- processes ---------------------------------------------------------------------------
def _proc_stat(pid: int) -> Optional[tuple[str, int]]:
    """``(state, starttime)`` from ``/proc/{pid}/stat``; None without ``/proc`` or such a pid."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            raw = f.read()
    except OSError:
        return None
    try:
        fields = raw[raw.rindex(b")") + 2 :].split()
        return fields[0].decode("ascii"), int(fields[19])
    except (ValueError, IndexError):
        return None


def _own_start() -> Optional[int]:
    stat = _proc_stat(os.getpid())
    return stat[1] if stat else None


def pid_alive(pid: int, start: Optional[int] = None) -> bool:
    """Whether process ``pid`` runs (not a zombie) and, when ``start`` is known, is the one that started then."""
    if os.name == "nt":  # os.kill() would terminate it: without a safe probe, final files decide
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # exists, another user's
    except OSError:
        return False
    if not os.path.isdir("/proc/self"):
        return True  # no /proc: what kill() says
    stat = _proc_stat(pid)
    if stat is None:
        return False  # gone since kill()
    state, started = stat
    if state in ("Z", "X", "x"):
        return False
    return start is None or started == start


# -- serialisation (worker side) -----------------------------------------------------------------
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
                    _warn_once(
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


def _exemplars_of(point: Any) -> dict:
    """``{"exemplars": {bucket index: [trace id, span id, value, time ns]}}`` (the latest per bucket), or ``{}``."""
    out: dict = {}
    bounds = point.explicit_bounds
    for e in getattr(point, "exemplars", None) or ():
        if e.trace_id is None or e.span_id is None:
            continue
        i = str(bisect_left(bounds, e.value))
        have = out.get(i)
        if have is None or have[3] <= e.time_unix_nano:
            out[i] = [f"{e.trace_id:032x}", f"{e.span_id:016x}", e.value, e.time_unix_nano]
    return {"exemplars": out} if out else {}


def _merge_exemplars(into: dict, exemplars: Optional[Mapping]) -> None:
    """Keep the latest exemplar of each bucket across workers."""
    if not exemplars:
        return
    have = into.setdefault("exemplars", {})
    for i, e in exemplars.items():
        if i not in have or have[i][3] <= e[3]:
            have[i] = list(e)


def _write_json(path: str, doc: dict) -> None:
    directory, name = os.path.split(path)
    tmp = os.path.join(directory, f".{name}.{os.getpid()}.{threading.get_ident()}.tmp")
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(doc, f, separators=(",", ":"), allow_nan=True)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


# -- worker ------------------------------------------------------------------------------------
_orig_raise_signal = signal.raise_signal
_active: Optional[WorkerExporter] = None
_active_lock = threading.Lock()


def _raise_signal(signalnum: int) -> None:
    """``signal.raise_signal`` while a worker exports: a final write before a deadly default action."""
    worker = _active
    if worker is not None and worker.signals:
        try:
            if signalnum in _DEADLY and signal.getsignal(signalnum) == signal.SIG_DFL:
                worker.close(timeout=worker.signal_timeout)
        except Exception:
            logger.warning("multiworker: final write before signal %s failed", signalnum, exc_info=True)
    return _orig_raise_signal(signalnum)


_raise_signal.__doc__ = _orig_raise_signal.__doc__
_raise_signal.__wrapped__ = _orig_raise_signal  # type: ignore[attr-defined]


class WorkerExporter:
    """Writes one process's metrics to ``{directory}/{pid}-{token}.json``. Made by :func:`start_worker`."""

    def __init__(
        self,
        directory: str,
        *,
        reader: Any,
        meter_provider: Any,
        telemetry: Any = None,
        interval: float = 1.0,
        signals: bool = True,
        signal_timeout: float = 2.0,
    ) -> None:
        if interval <= 0:
            raise ValueError("interval must be positive")
        self.directory = os.path.abspath(directory)
        self.reader = reader
        self.meter_provider = meter_provider
        self.telemetry = telemetry
        self.interval = interval
        self.signals = signals
        self.signal_timeout = signal_timeout
        self._lock = threading.Lock()  # one collection + write at a time
        self._wake = threading.Event()
        self._written = threading.Condition()
        self._generation = 0  # completed writes (thread requests wait on it)
        self._requested_final = False
        self._final = False
        self._stopped = False
        self._has_file = False
        self._thread: Optional[threading.Thread] = None
        self._prev_sigterm: Any = None
        self._sigterm_installed = False
        self._identify()

    def _identify(self) -> None:
        self.pid = os.getpid()
        self.token = secrets.token_hex(6)
        self.start_time = _own_start()
        self.path = os.path.join(self.directory, f"{self.pid}-{self.token}.json")

    # -- life cycle -----------------------------------------------------------------------
    def start(self) -> WorkerExporter:
        os.makedirs(self.directory, exist_ok=True)
        self._start_thread()
        atexit.register(self._at_exit)
        if hasattr(os, "register_at_fork"):
            os.register_at_fork(
                before=self._before_fork, after_in_parent=self._after_fork_parent, after_in_child=self._after_fork_child
            )
        if self.signals:
            self._install_sigterm()
            signal.raise_signal = _raise_signal
        return self

    def _start_thread(self) -> None:
        thread = threading.Thread(target=self._run, name="traced-transport-multiworker", daemon=True)
        self._thread = thread
        thread.start()

    def instrument(self, **kwargs: Any) -> None:
        """``traced_transport.instrument(observer=self.telemetry, **kwargs)``: every transport, into these files."""
        import traced_transport

        traced_transport.instrument(observer=self.telemetry, **kwargs)

    def flush(self, timeout: Optional[float] = None) -> bool:
        """Collect and write now (False when it could not within ``timeout``, or after the final write)."""
        return self._write(final=False, timeout=timeout)

    def close(self, timeout: Optional[float] = 5.0) -> bool:
        """The final write; the file then stays as it is (the aggregator counts its gauges as 0). Idempotent."""
        done = self._write(final=True, timeout=timeout)
        self._stopped = True
        self._wake.set()
        return done

    # -- the writer ---------------------------------------------------------------------
    def _run(self) -> None:
        while not self._stopped:
            self._wake.wait(self.interval)
            self._wake.clear()
            if self._stopped:
                break
            final = self._requested_final
            try:
                self._write(final=final, timeout=None)
            finally:
                with self._written:
                    self._generation += 1
                    self._written.notify_all()
            if final:
                break

    def _write(self, *, final: bool, timeout: Optional[float]) -> bool:
        if not self._lock.acquire(timeout=-1 if timeout is None else timeout):
            return False
        try:
            if self._final or os.getpid() != self.pid:
                return False
            try:
                if self.telemetry is not None:
                    self.telemetry.flush()
                metrics, resource = serialize(self.reader.get_metrics_data())
            except Exception:
                logger.warning("multiworker: collection failed", exc_info=True)
                return False
            if not metrics and not self._has_file:
                if final:
                    self._final = True
                return True  # nothing to say yet
            doc = {
                "format": FORMAT,
                "pid": self.pid,
                "token": self.token,
                "start": self.start_time,
                "time": time.time(),
                "interval": self.interval,
                "final": final,
                "resource": resource,
                "metrics": metrics,
            }
            try:
                os.makedirs(self.directory, exist_ok=True)
                _write_json(self.path, doc)
            except Exception as exc:  # noqa: BLE001
                _warn_once(f"write:{self.directory}", "multiworker: cannot write %s: %r", self.path, exc)
                return False
            self._has_file = True
            if final:
                self._final = True
            return True
        finally:
            self._lock.release()

    def _request_from_signal(self, final: bool, wait: float) -> bool:
        """Have the writer thread write (a signal handler must not take the locks it may have interrupted)."""
        thread = self._thread
        if thread is None or not thread.is_alive():
            return False
        with self._written:  # held only here and in _run, briefly
            start = self._generation
        if final:
            self._requested_final = True
        self._wake.set()
        if wait <= 0:
            return False
        deadline = time.monotonic() + wait
        with self._written:
            while self._generation == start:
                left = deadline - time.monotonic()
                if left <= 0 or not self._written.wait(left):
                    return False
        return True

    # -- exit, signals, fork ---------------------------------------------------------------
    def _at_exit(self) -> None:
        self.close(timeout=self.signal_timeout + 3.0)

    def _install_sigterm(self) -> None:
        if threading.current_thread() is not threading.main_thread() or not hasattr(signal, "SIGTERM"):
            return
        try:
            prev = signal.getsignal(signal.SIGTERM)
            if prev is None:  # installed from outside Python: leave it alone
                return
            self._prev_sigterm = prev
            signal.signal(signal.SIGTERM, self._on_sigterm)
            self._sigterm_installed = True
        except (ValueError, OSError):
            pass

    def _on_sigterm(self, signum: int, frame: Any) -> None:
        prev = self._prev_sigterm
        if prev == signal.SIG_IGN:
            self._request_from_signal(False, 0)
            return
        if callable(prev):
            self._request_from_signal(False, 0)
            prev(signum, frame)
            return
        # SIG_DFL: the process ends now, without atexit.
        self._request_from_signal(True, self.signal_timeout)
        signal.signal(signum, signal.SIG_DFL)
        _orig_raise_signal(signum)

    def _before_fork(self) -> None:
        self._lock.acquire()

    def _after_fork_parent(self) -> None:
        self._lock.release()

    def _after_fork_child(self) -> None:
        # A new process: its own file, thread and locks. What the parent had counted before
        # the fork is in the child's totals too (a pre-fork master normally counted nothing).
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._written = threading.Condition()
        self._generation = 0
        self._has_file = False
        self._requested_final = False
        if self._final or self._stopped:
            return
        self._identify()
        self._start_thread()

    def __repr__(self) -> str:
        return f"<WorkerExporter {self.path} interval={self.interval}>"


def start_worker(
    directory: str,
    *,
    interval: float = 1.0,
    registry: Any = None,
    resource: Any = None,
    tracer_provider: Any = None,
    signals: bool = True,
    **telemetry_kwargs: Any,
) -> WorkerExporter:
    """Start exporting this process's traced_transport metrics to ``directory`` (idempotent per process).

    ``registry`` defaults to traced_transport's default registry, so connections traced
    with the defaults count too. ``resource`` defaults to ``Resource.create()`` (the
    ``OTEL_*`` variables). ``tracer_provider`` (default: the global one) gets the
    connection spans; other keyword arguments go to :class:`traced_transport.Telemetry`
    (``spans=False``, ``access_log=True``, ...). Pass ``worker.telemetry`` as
    ``observer=`` to ``traced()`` / ``instrument()``, or call ``worker.instrument(...)``.
    ``signals=False`` leaves signal handling alone (final write at ``atexit`` and
    :meth:`WorkerExporter.close` only).
    """
    global _active
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader
    from opentelemetry.sdk.resources import Resource

    import traced_transport

    with _active_lock:
        if _active is not None and _active.pid == os.getpid() and not _active._final:
            if _active.directory != os.path.abspath(directory):
                raise RuntimeError(f"this process already exports to {_active.directory}")
            return _active
        reader = InMemoryMetricReader()
        kwargs: dict[str, Any] = {"metric_readers": [reader], "resource": resource or Resource.create()}
        try:
            meter_provider = MeterProvider(shutdown_on_exit=False, **kwargs)
        except TypeError:  # pragma: no cover - older SDKs
            meter_provider = MeterProvider(**kwargs)
        telemetry = traced_transport.Telemetry(
            registry, meter_provider=meter_provider, tracer_provider=tracer_provider, **telemetry_kwargs
        )
        from .histograms import attach

        attach(reader, telemetry)
        worker = WorkerExporter(
            directory,
            reader=reader,
            meter_provider=meter_provider,
            telemetry=telemetry,
            interval=interval,
            signals=signals,
        )
        _active = worker
        worker.start()
        return worker


# -- aggregation ------------------------------------------------------------------------------
def _read_json(path: str) -> dict:
    with open(path, "rb") as f:
        doc = json.loads(f.read())
    if not isinstance(doc, dict) or not isinstance(doc.get("metrics"), list):
        raise ValueError("not a multiworker file")
    return doc


def _mkey(metric: Mapping) -> tuple:
    return (
        metric["name"],
        metric.get("description", ""),
        metric.get("unit", ""),
        metric["kind"],
        json.dumps(metric.get("scope") or {}, sort_keys=True),
    )


def _merge(into: dict, metrics: Iterable[Mapping], *, live: bool) -> None:
    """Add ``metrics`` (serialised) into ``into``: {metric key: {attribute json: [attributes, value]}}.

    Gauges of a worker that is not ``live`` count 0: their series stay (at 0, as in one
    process once its connections closed) without adding anything.
    """
    for metric in metrics:
        kind = metric["kind"]
        zero = kind in _GAUGE_KINDS and not live
        series = into.setdefault(_mkey(metric), {})
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
                _merge_exemplars(series[akey][1], value.get("exemplars"))
                continue
            h = have[1]
            if h["bounds"] != value["bounds"] or len(h["counts"]) != len(value["counts"]):
                _warn_once(
                    f"bounds:{metric['name']}",
                    "multiworker: %s has different bucket bounds in "
                    "different workers; the points of the later ones are left out",
                    metric["name"],
                )
                continue
            h["counts"] = [a + b for a, b in zip(h["counts"], value["counts"])]
            h["sum"] += value["sum"]
            h["count"] += value["count"]
            _merge_exemplars(h, value.get("exemplars"))


def _unmerge(merged: dict) -> list[dict]:
    """The inverse of _merge: serialised metrics."""
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


def _common(resources: Iterable[Mapping]) -> dict:
    common: Optional[dict] = None
    for r in resources:
        if common is None:
            common = dict(r)
        else:
            common = {k: v for k, v in common.items() if k in r and r[k] == v}
    return common or {}


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
            doc = _read_json(path)
        except FileNotFoundError:
            raise
        except (OSError, ValueError) as exc:
            if cached is not None:  # a file is replaced atomically: this is not a half-written one
                _warn_once(f"read:{name}", "multiworker: cannot read %s (%r); using its last reading", path, exc)
                return cached[1]
            raise
        with self._cache_lock:
            self._cache[name] = (key, doc)
        return doc

    def _listing(self) -> tuple[list[str], dict]:
        try:
            names = os.listdir(self.directory)
        except FileNotFoundError:
            return [], {}
        retired: dict = {}
        if RETIRED in names:
            try:
                retired = _read_json(os.path.join(self.directory, RETIRED))
            except FileNotFoundError:
                retired = {}
        merged_names = set(retired.get("merged", ()))
        workers = sorted(n for n in names if _WORKER_FILE.match(n) and n not in merged_names)
        return workers, retired

    def read(self) -> Aggregate:
        """Read the directory once (a file vanishing mid-read, folded into retired.json, means read again)."""
        aggregate = self._read()
        if self.compact_enabled and any(w["retirable"] for w in aggregate.workers):
            try:
                if self.compact():
                    aggregate = self._read()
            except Exception as exc:  # noqa: BLE001
                _warn_once("compact", "multiworker: compaction failed: %r", exc)
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
                        _warn_once(f"skip:{name}", "multiworker: skipping unreadable %s: %r", name, exc)
            except FileNotFoundError:
                continue
            break
        with self._cache_lock:
            for stale in set(self._cache) - set(names):
                del self._cache[stale]
        merged: dict = {}
        _merge(merged, retired.get("metrics", ()), live=False)
        resources = [retired["resource"]] if retired.get("resource") is not None else []
        workers = []
        for name, doc in docs:
            pid = int(doc.get("pid", 0))
            live = not doc.get("final") and self.alive(pid, doc.get("start"))
            _merge(merged, doc["metrics"], live=live)
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
        return Aggregate(merged, _common(resources), workers)

    # -- compaction ------------------------------------------------------------------------
    def compact(self) -> int:
        """Fold the files of dead workers into ``retired.json``; returns how many were folded."""
        try:
            import fcntl
        except ImportError:  # pragma: no cover - no flock: no compaction
            return 0
        if not os.path.isdir(self.directory):
            return 0
        now = time.time()
        with _flock(self.directory, fcntl):
            names, retired = self._listing()
            fold = []
            for name in names:
                try:
                    doc = _read_json(os.path.join(self.directory, name))
                except (OSError, ValueError):
                    continue
                if self.alive(int(doc.get("pid", 0)), doc.get("start")):
                    continue
                if doc.get("final") or now - float(doc.get("time") or 0) > self.retire_after:
                    fold.append((name, doc))
            if not fold:
                return 0
            merged: dict = {}
            _merge(merged, retired.get("metrics", ()), live=False)
            resources = [retired["resource"]] if retired.get("resource") is not None else []
            for _name, doc in fold:
                _merge(merged, doc["metrics"], live=False)
                resources.append(doc.get("resource") or {})
            present = set(os.listdir(self.directory))
            merged_names = {n for n in retired.get("merged", ()) if n in present} | {n for n, _ in fold}
            _write_json(
                os.path.join(self.directory, RETIRED),
                {
                    "format": FORMAT,
                    "time": now,
                    "resource": _common(resources),
                    "merged": sorted(merged_names),
                    "metrics": _unmerge(merged),
                },
            )
            for name, _doc in fold:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(os.path.join(self.directory, name))
            return len(fold)

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

        from .exemplars import openmetrics_exemplar

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


@contextlib.contextmanager
def _flock(directory: str, fcntl: Any) -> Iterator[None]:
    fd = os.open(os.path.join(directory, LOCK), os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def mark_dead(directory: str, pid: int) -> int:
    """A worker ``pid`` has ended (gunicorn's ``child_exit``): its gauges go to 0 now, its counters stay.

    Marks the files of ``pid`` final and zeroes their gauges; returns how many files.
    Call it only once the process is gone.
    """
    try:
        import fcntl
    except ImportError:  # pragma: no cover
        fcntl = None
    directory = os.path.abspath(directory)
    try:
        names = os.listdir(directory)
    except FileNotFoundError:
        return 0
    mine = [n for n in names if (m := _WORKER_FILE.match(n)) and int(m.group(1)) == pid]
    if not mine:
        return 0
    done = 0
    with _flock(directory, fcntl) if fcntl is not None else contextlib.nullcontext():
        for name in mine:
            path = os.path.join(directory, name)
            try:
                doc = _read_json(path)
            except (OSError, ValueError):
                continue
            if doc.get("final"):
                continue
            doc["final"] = True
            for metric in doc["metrics"]:
                if metric.get("kind") in _GAUGE_KINDS:
                    metric["points"] = [[attributes, 0] for attributes, _value in metric["points"]]
            _write_json(path, doc)
            done += 1
    return done


def prepare_directory(directory: str) -> str:
    """Create ``directory`` or empty it of this module's files (call once, before the workers start)."""
    directory = os.path.abspath(directory)
    os.makedirs(directory, exist_ok=True)
    for name in os.listdir(directory):
        if _WORKER_FILE.match(name) or name in (RETIRED, LOCK) or (name.startswith(".") and name.endswith(".tmp")):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(os.path.join(directory, name))
    return directory


# -- serving -----------------------------------------------------------------------------------
class Aggregator:
    """What :func:`serve` started: ``collector``, ``registry``, ``endpoint`` (``.url``, ``.port``); ``close()``."""

    def __init__(self, collector: AggregatingCollector, registry: Any, endpoint: Any) -> None:
        self.collector = collector
        self.registry = registry
        self.endpoint = endpoint

    @property
    def port(self) -> Optional[int]:
        return getattr(self.endpoint, "port", None)

    @property
    def url(self) -> Optional[str]:
        return getattr(self.endpoint, "url", None)

    def close(self) -> None:
        stop = getattr(self.endpoint, "stop", None) or getattr(self.endpoint, "close", None)
        if stop is not None:
            stop()
        with contextlib.suppress(KeyError):
            self.registry.unregister(self.collector)

    def __enter__(self) -> Aggregator:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def _start_endpoint(registry: Any, host: str, port: int, **endpoint_kwargs: Any) -> Any:
    """The scrape endpoint for ``registry``: ``traced_transport.exporters.prometheus.ScrapeEndpoint``."""
    from .prometheus import ScrapeEndpoint

    return ScrapeEndpoint(registry, host=host, port=port, **endpoint_kwargs).start()


def serve(
    directory: str,
    host: str = "127.0.0.1",
    port: int = 9464,
    *,
    scope_labels: bool = False,
    target_info: bool = True,
    compact: bool = True,
    **endpoint_kwargs: Any,
) -> Aggregator:
    """Serve the sum of the workers writing to ``directory`` on ``http://{host}:{port}/metrics``.

    A fresh ``CollectorRegistry`` holds only the :class:`AggregatingCollector`.
    ``endpoint_kwargs`` go to ``traced_transport.exporters.prometheus.ScrapeEndpoint`` (``path``,
    ``certfile``, ``basic_auth``, ...). ``port=0`` picks a free port (``.port``).
    """
    from prometheus_client import CollectorRegistry

    os.makedirs(directory, exist_ok=True)
    collector = AggregatingCollector(directory, scope_labels=scope_labels, target_info=target_info, compact=compact)
    registry = CollectorRegistry()
    registry.register(collector)
    endpoint = _start_endpoint(registry, host, port, **endpoint_kwargs)
    return Aggregator(collector, registry, endpoint)


if __name__ == "__main__":  # pragma: no cover - python -m traced_transport.exporters.multiworker DIR [PORT]
    logging.basicConfig(level=logging.INFO)
    agg = serve(sys.argv[1], port=int(sys.argv[2]) if len(sys.argv) > 2 else 9464)
    print(f"serving {agg.url}", flush=True)
    with contextlib.suppress(KeyboardInterrupt):
        threading.Event().wait()
