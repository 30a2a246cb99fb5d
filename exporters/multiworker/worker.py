"""Worker side: one process's metrics written to ``{directory}/{pid}-{token}.json``.

A daemon thread collects every ``interval`` seconds and replaces the file atomically;
the final write happens at exit, on a deadly signal (see :mod:`.signals`) or on
``close()``. Signal handlers never take a lock: they wake the writer thread and wait
for it, bounded. After ``fork()`` the child gets its own file, thread and locks.
``close()`` restores the ``SIGTERM`` handler and ``signal.raise_signal`` it replaced.
"""

from __future__ import annotations

import atexit
import os
import secrets
import signal
import threading
import time
from typing import Any, Optional

from . import signals
from ._files import FORMAT, logger, warn_once, write_json
from .procs import own_start
from .serialize import serialize

_active: Optional[WorkerExporter] = None
_active_lock = threading.Lock()


def _final_write_before_signal(signalnum: int) -> None:
    worker = _active
    if worker is not None and worker.signals:
        worker.close(timeout=worker.signal_timeout)


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
        connections: Any = None,
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
        # A connections.RegistryConnections when the live view is on: its rows go into the file too.
        self.connections = connections
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
        self.start_time = own_start()
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
            signals.patch_raise_signal(_final_write_before_signal)
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
        self._restore_signals()
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
            except Exception:  # noqa: BLE001 - a failed collection must not end the writer thread
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
            if self.connections is not None and not final:
                try:
                    from ..connections import WORKER_ROWS

                    doc["connections"] = self.connections.for_file(WORKER_ROWS)
                except Exception as exc:  # noqa: BLE001 - the metrics are written all the same
                    warn_once("connections", "multiworker: cannot list the live connections: %r", exc)
            try:
                os.makedirs(self.directory, exist_ok=True)
                write_json(self.path, doc)
            except Exception as exc:  # noqa: BLE001
                warn_once(f"write:{self.directory}", "multiworker: cannot write %s: %r", self.path, exc)
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

    def _restore_signals(self) -> None:
        """After the final write: the SIGTERM handler that was there before, and the original raise_signal."""
        if _active is self or _active is None:
            signals.unpatch_raise_signal()
        if not self._sigterm_installed or os.getpid() != self.pid:
            return
        try:
            if signal.getsignal(signal.SIGTERM) == self._on_sigterm:
                signal.signal(signal.SIGTERM, self._prev_sigterm)
            self._sigterm_installed = False
        except (ValueError, OSError):  # not the main thread: our handler stays, and chains as before
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
        signals.original_raise_signal(signum)

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
    connections: bool = False,
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
    :meth:`WorkerExporter.close` only). ``connections=True`` also writes the live
    connections' rows (bounded) for the aggregator's ``/connections`` view.
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
        from ..histograms import attach

        attach(reader, telemetry)
        worker = WorkerExporter(
            directory,
            reader=reader,
            meter_provider=meter_provider,
            telemetry=telemetry,
            interval=interval,
            signals=signals,
            connections=_connections_source(telemetry.registry) if connections else None,
        )
        _active = worker
        worker.start()
        return worker


def _connections_source(registry: Any) -> Any:
    from ..connections import RegistryConnections

    return RegistryConnections(registry, instance=f"pid {os.getpid()}")
