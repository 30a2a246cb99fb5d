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

**Layout** (one concern per module): :mod:`.procs` (is a pid still the worker:
``/proc``), :mod:`.serialize` (SDK data to JSON), :mod:`._files` (file names, atomic
writes, the lock, :func:`prepare_directory`, :func:`mark_dead`), :mod:`.worker` (the
writer thread, exit, fork), :mod:`.signals` (the ``signal.raise_signal`` patch),
:mod:`.merge` (summing), :mod:`.compact` (folding dead workers), :mod:`.collector`
(the Prometheus collector), :mod:`.serve` (the endpoint).

**The one patch.** While a worker exports with ``signals=True``, ``signal.raise_signal``
is replaced (see :mod:`.signals`) and a ``SIGTERM`` handler chains to the one before;
``WorkerExporter.close()`` restores both. :func:`raise_signal_patched` says whether the
patch is on; :func:`unpatch_raise_signal` removes it by hand.
"""

from __future__ import annotations

from ._files import mark_dead, prepare_directory
from .collector import AggregatingCollector
from .merge import Aggregate
from .procs import own_start as _own_start  # noqa: F401 - kept for tests and tools
from .procs import pid_alive
from .serialize import serialize
from .serve import Aggregator, serve
from .signals import raise_signal_patched, unpatch_raise_signal
from .worker import WorkerExporter, start_worker

__all__ = [
    "Aggregate",
    "AggregatingCollector",
    "Aggregator",
    "WorkerExporter",
    "mark_dead",
    "pid_alive",
    "prepare_directory",
    "raise_signal_patched",
    "serialize",
    "serve",
    "start_worker",
    "unpatch_raise_signal",
]
