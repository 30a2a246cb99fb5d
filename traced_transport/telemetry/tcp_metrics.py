"""``transport.tcp.*`` metrics from TCP_INFO, for ``Telemetry(tcp_info=True)``.

One ``getsockopt`` per TCP connection when it ends (the record's close, while
the socket is still open); over TLS the socket is gone by the time the app's
``connection_lost`` runs (both loops schedule it after closing the TCP
socket), so a TLS connection is read when it starts to end instead: the app's
``close()``/``abort()`` or the peer's EOF. The gauges read the live connections
at collection, on the collecting thread, at most ``max_live_reads`` of them.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, Optional, Protocol

from opentelemetry.metrics import CallbackOptions, Observation

from ..datapath.classify import ConnKey
from ..datapath.record import monotonic
from ..report import report
from .histogram import HistogramAggregate
from .tcp_info import TcpInfo, read_tcp_info

if TYPE_CHECKING:
    from collections.abc import Callable

    from ..datapath.record import ConnectionRecord
    from ..datapath.registry import Registry

# Loopback is tens of microseconds, a continent a hundred milliseconds.
RTT_BUCKETS = (0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5)
RETRANSMITTED_BUCKETS = (0, 0.001, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1)
_ENDED = object()


class Telemetry(Protocol):
    """What these metrics need from ``telemetry.Telemetry`` (which makes them): no import back."""

    registry: Registry
    histograms: dict[str, HistogramAggregate]

    def _record(
        self,
        histogram: tuple[Any, HistogramAggregate],
        value: float,
        key: ConnKey,
        error_type: Optional[str] = None,
        cipher: Optional[str] = None,
        tls_version: Optional[str] = None,
    ) -> None: ...

    def attributes(self, key: ConnKey, error_type: Optional[str] = None) -> dict[str, Any]: ...


class TcpMetrics:
    """The instruments, and what connections that ended left for the counters."""

    def __init__(self, telemetry: Telemetry, meter: Any, live_counters: bool = False) -> None:
        self.telemetry = telemetry
        # Also move the segment counters at each collection by what open connections sent since the
        # last one (Envoy's update_period, with the collection interval as the period).
        self.live_counters = live_counters
        # Open connection -> (sent, retransmitted) already in self.segments; _ENDED once its end counted.
        self._counted: dict[ConnectionRecord, Any] = {}
        self._count_lock = threading.Lock()
        self.max_live_reads = 4096
        # ConnKey -> [segments sent, segments retransmitted] of connections that ended; written on the loop.
        self.segments: dict[ConnKey, list[int]] = {}
        # TLS connections read when they began to end, waiting for the record's close.
        self.early: dict[ConnectionRecord, TcpInfo] = {}
        self._lock = threading.Lock()
        self._cached: Optional[tuple[float, dict[ConnKey, list[int]]]] = None
        # Every attribute set the live gauges have reported (they keep reporting it, at 0 when idle).
        self._keys: set[ConnKey] = set()
        self.rtt = self._histogram(
            telemetry, meter, "transport.tcp.rtt", "s", "Smoothed round-trip time of each TCP connection at its end",
            RTT_BUCKETS,
        )  # fmt: skip
        self.retransmitted = self._histogram(
            telemetry,
            meter,
            "transport.tcp.retransmitted.ratio",
            "1",
            "Share of each TCP connection's segments that were retransmissions, at its end",
            RETRANSMITTED_BUCKETS,
        )
        # The gauges first: callbacks run in creation order, and with live counters the
        # gauges' pass over the live connections also moves the counters of this collection.
        meter.create_observable_gauge(
            "transport.tcp.unsent",
            [self._observe_live(0)],
            "By",
            "Bytes in the kernel's send queue not yet sent, summed over open TCP connections",
        )
        meter.create_observable_gauge(
            "transport.tcp.unacked",
            [self._observe_live(1)],
            "{segment}",
            "Segments sent and not yet acknowledged by the peer, summed over open TCP connections",
        )
        meter.create_observable_counter(
            "transport.tcp.segments.sent",
            [self._observe_segments(0)],
            "{segment}",
            "TCP segments sent (retransmissions included), counted when connections end",
        )
        meter.create_observable_counter(
            "transport.tcp.segments.retransmitted",
            [self._observe_segments(1)],
            "{segment}",
            "TCP segments retransmitted, counted when connections end",
        )

    @staticmethod
    def _histogram(
        telemetry: Telemetry, meter: Any, name: str, unit: str, description: str, bounds: tuple[float, ...]
    ) -> tuple[Any, HistogramAggregate]:
        aggregate = telemetry.histograms[name] = HistogramAggregate(name, unit, description, bounds)
        instrument = meter.create_histogram(name, unit, description, explicit_bucket_boundaries_advisory=bounds)
        return instrument, aggregate

    # -- on the loop ---------------------------------------------------------
    def closing(self, rec: ConnectionRecord, transport: Any, final: bool) -> Optional[TcpInfo]:
        """Read TCP_INFO as the connection ends; returns the read kept for the record's close."""
        if not final:
            # Only TLS needs an early read (see the module's docstring); once is enough.
            # (After start_tls the key still says plain TCP; the handshake time says TLS.)
            key = rec.key
            tls = key is not None and (key.tls_version is not None or rec.tls_handshake_s is not None)
            if tls and key.network_transport == "tcp":
                if rec not in self.early:
                    info = read_tcp_info(transport)
                    if info is not None:
                        self.early[rec] = info
            return None
        early = self.early.pop(rec, None) if self.early else None
        key = rec.key
        if key is None or key.network_transport != "tcp":
            return None
        info = read_tcp_info(transport)
        if info is None:
            info = early
        if info is not None:
            self._count(rec, info)
        return info

    def _count(self, rec: ConnectionRecord, info: TcpInfo) -> None:
        key = rec.key
        self._keys.add(key)
        telemetry = self.telemetry
        rtt, sent, retransmitted = info.end_counts()
        if rtt:
            telemetry._record(self.rtt, rtt / 1e6, key)
        if sent:
            retransmitted = retransmitted or 0
            telemetry._record(self.retransmitted, retransmitted / sent, key)
            if self.live_counters:
                with self._count_lock:
                    before = self._counted.get(rec)
                    self._counted[rec] = _ENDED
                    if before is not None and before is not _ENDED:
                        self._add(key, sent - before[0], retransmitted - before[1])
                    else:
                        self._add(key, sent, retransmitted)
            else:
                self._add(key, sent, retransmitted)

    def _add(self, key: ConnKey, sent: int, retransmitted: int) -> None:
        sums = self.segments.get(key)
        if sums is None:
            sums = self.segments[key] = [0, 0]
        # A TLS connection's end may be an earlier read than the last live one: never count down.
        if sent > 0:
            sums[0] += sent
        if retransmitted > 0:
            sums[1] += retransmitted

    def ended(self, rec: ConnectionRecord) -> None:
        """The record's close is over (closed_at set): forget it (live counters only)."""
        if self.live_counters:
            with self._count_lock:
                self._counted.pop(rec, None)

    def _count_live(self, rec: ConnectionRecord, info: TcpInfo) -> None:
        # On the collecting thread. A connection whose end is being counted on its loop is
        # marked _ENDED first, and one whose close is over has closed_at set: neither moves here.
        _, sent, retransmitted = info.end_counts()
        if sent is None:
            return
        retransmitted = retransmitted or 0
        with self._count_lock:
            before = self._counted.get(rec)
            if before is _ENDED or rec.closed_at is not None:
                return
            self._counted[rec] = (sent, retransmitted)
            if before is None:
                self._add(rec.key, sent, retransmitted)
            else:
                self._add(rec.key, sent - before[0], retransmitted - before[1])

    # -- collection (any thread) -----------------------------------------------
    def _observe_segments(self, i: int) -> Callable[[CallbackOptions], Iterable[Observation]]:
        def callback(options: CallbackOptions) -> Iterable[Observation]:
            try:
                attributes = self.telemetry.attributes
                return [Observation(sums[i], attributes(k)) for k, sums in list(self.segments.items())]
            except Exception as exc:  # noqa: BLE001
                report("metrics callback tcp segments", exc)
                return []

        return callback

    def _live_sums(self, fresh: bool) -> dict[ConnKey, list[int]]:
        # One pass over the live connections serves both gauges of a collection
        # (their callbacks run back to back, the unsent one first, which makes a
        # fresh pass): one getsockopt per connection.
        with self._lock:
            now = monotonic()
            cached = self._cached
            if not fresh and cached is not None and now - cached[0] < 0.05:
                return cached[1]
            sums: dict[ConnKey, list[int]] = {}
            budget = self.max_live_reads
            for rec in self.telemetry.registry.live():
                key = rec.key
                if key is None or key.network_transport != "tcp":
                    continue
                if budget <= 0:
                    break
                budget -= 1
                info = read_tcp_info(rec.transport)
                pair = sums.get(key)
                if pair is None:
                    pair = sums[key] = [0, 0]
                if info is not None:
                    pair[0] += info.notsent_bytes or 0
                    pair[1] += info.unacked or 0
                    if self.live_counters:
                        self._count_live(rec, info)
            # A series, once seen, stays (at 0 when none of its connections is open), as
            # transport.connection.active does: a gauge that vanishes reads as "no data".
            for key in list(self._keys):  # one C call: the loop may add keys meanwhile
                sums.setdefault(key, [0, 0])
            self._keys.update(sums)
            self._cached = (now, sums)
            return sums

    def _observe_live(self, i: int) -> Callable[[CallbackOptions], Iterable[Observation]]:
        def callback(options: CallbackOptions) -> Iterable[Observation]:
            try:
                attributes = self.telemetry.attributes
                return [Observation(pair[i], attributes(k)) for k, pair in self._live_sums(i == 0).items()]
            except Exception as exc:  # noqa: BLE001
                report("metrics callback tcp live", exc)
                return []

        return callback
