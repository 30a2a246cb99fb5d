"""OpenTelemetry metrics and one span per connection, through opentelemetry-api only.

The data path never calls into OpenTelemetry. Counts are exported by
observable instruments whose callbacks read the registry (closed totals plus
live records), so a scrape costs the same however much traffic there was.
Histograms are aggregated on the loop at transitions (a connection's end, a
pause's end, a TLS handshake), never per byte.

Connection spans are decided when the connection ends (see ``policy``): the
record keeps what a span needs (open time, event times) and only a connection
the span policy keeps calls the SDK, with the connection's real times. With
``parent_context=True`` the span starts when the connection opens, as app
callbacks need its context while it is open.

Why one module of this size: ``Telemetry`` is one observer whose hooks (open,
event, TLS, close) share per-connection state (the eager or deferred span, the
pending histogram values, the attribute caches), and a span built at close must
equal the eager one field for field; keeping both builders beside the hooks that
feed them is what makes that checkable by reading. The pieces without that state
live beside it: ``policy``, ``histogram``, ``attributes``, ``tcp_info``,
``tcp_metrics``.
"""

from __future__ import annotations

import collections
import logging
import math
import threading
import time
import weakref
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, Optional

from opentelemetry import context as otel_context
from opentelemetry import metrics, trace
from opentelemetry.metrics import CallbackOptions, Observation
from opentelemetry.trace import Status, StatusCode

from ..datapath.classify import ConnKey, tls_version_of
from ..datapath.extra import snapshot_extra
from ..datapath.record import TLS_FAILED, WALL_OFFSET, ConnectionRecord, Group, monotonic
from ..datapath.registry import Registry, default_registry
from ..report import report
from ..version import __version__ as _VERSION
from .attributes import (
    SPAN_STATICS,
    metric_attributes,
    safe_cipher_name,
    span_attributes,
    span_statics,
    tls_attributes,
)
from .histogram import MAX_PENDING, HistogramAggregate
from .policy import SpanPolicy, span_policy
from .tcp_info import TcpInfo, enabled_by_env, tcp_span_attributes
from .tcp_info import supported as tcp_info_supported
from .tcp_metrics import TcpMetrics

if TYPE_CHECKING:
    from collections.abc import Callable

    from ..datapath.registry import Totals

    # (ConnKey, error.type, cipher, TLS version): one metric attribute set, the key of its cached attributes.
    _CacheKey = tuple[ConnKey, Optional[str], Optional[str], Optional[str]]
    # (name, monotonic time, pause seconds or None)
    _Event = tuple[str, float, Optional[float]]
    # The API instrument and the loop-side aggregate of one histogram.
    _Histogram = tuple[Any, HistogramAggregate]

_PROXY_PROVIDER = trace.ProxyTracerProvider
SCOPE = "traced_transport"
# Semantic-convention advice (as for kestrel.connection.duration and
# kestrel.tls_handshake.duration): seconds, not the SDK's millisecond defaults.
DURATION_BUCKETS = (0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5, 10, 30, 60, 120, 300)
HANDSHAKE_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1, 2.5, 5, 7.5, 10)
PAUSE_BUCKETS = (0.0001, 0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 10, 60)

access_logger = logging.getLogger("traced_transport.access")

# Matches no record's key (a record's key being None must not reach the placeholder list).
_NO_KEY = object()

# The settings on_close's fast path depends on (see Telemetry._set_fast_close).
_FAST_CLOSE_INPUTS = frozenset(("access_log", "spans", "parent_context", "_tcp", "span_policy", "_histogram_readers"))


class _SpanState:
    __slots__ = ("span", "events", "dropped", "context", "exemplar_ids")

    def __init__(self, span: Any, parent_context: bool) -> None:
        self.span = span
        self.events = 0
        self.dropped = 0
        # Read by the span-context wrappers (traced_transport.datapath.context).
        self.context = trace.set_span_in_context(span) if parent_context else None
        self.exemplar_ids = exemplar_ids(span)


def exemplar_ids(span: Any) -> Optional[tuple[int, int]]:
    """``(trace_id, span_id)`` of a sampled span, the ids its connection's histogram values point at; else None.

    A span that records but is not sampled is never exported: an exemplar
    pointing at it would lead nowhere.
    """
    ctx = span.get_span_context()
    return (ctx.trace_id, ctx.span_id) if ctx.trace_flags.sampled else None


def _sampled_ids(span_context: Any) -> Optional[tuple[int, int]]:
    """``(trace_id, span_id)`` of a kept span's context if it was sampled, else None."""
    if span_context is None or not span_context.trace_flags.sampled:
        return None
    return span_context.trace_id, span_context.span_id


class _InContext:
    """An API histogram that records in a span's context, so the app's SDK can take the value as an exemplar."""

    __slots__ = ("instrument", "context")

    def __init__(self, instrument: Any, context: Any) -> None:
        self.instrument = instrument
        self.context = context

    def record(self, value: float, attributes: dict[str, Any]) -> None:
        self.instrument.record(value, attributes, context=self.context)


class _Deferred:
    """What a span decided at close needs beyond the record: flow-control events, the parent."""

    __slots__ = ("events", "dropped", "longest_pause", "parent", "tls_extra", "handshake")

    def __init__(self, parent: Any = None) -> None:
        self.events: list[_Event] = []
        self.dropped = 0
        self.longest_pause = 0.0
        self.parent = parent
        self.tls_extra: Optional[dict[str, Any]] = None
        self.handshake: Optional[tuple[Optional[str], Optional[str], int]] = None  # cipher, version, time (ns)


def _ns(monotonic_s: float) -> int:
    return int((monotonic_s + WALL_OFFSET) * 1e9)


def _at(event: _Event) -> float:
    return event[1]


def _event_time(rec: ConnectionRecord, name: str) -> float:
    """When the record saw the transition ``name`` (one clock for eager and deferred spans)."""
    if name == "eof":
        if rec.eof_at is not None:
            return rec.eof_at
    else:
        rare = rec._rare
        if rare is not None and rare.event_at:
            return rare.event_at
    return monotonic()


class Telemetry:
    """Turns records into OpenTelemetry metrics and spans. Pass it to ``traced(observer=...)``.

    Without arguments it uses the global meter and tracer providers, so the
    app's own SDK setup (or none) decides where things go.
    """

    scope_name = SCOPE
    scope_version = _VERSION

    def __init__(
        self,
        registry: Optional[Registry] = None,
        *,
        meter_provider: Any = None,
        tracer_provider: Any = None,
        certificate_subjects: bool = True,
        max_span_events: int = 32,
        access_log: bool = False,
        spans: bool = True,
        parent_context: bool = False,
        span_policy: Any = None,
        tcp_info: Optional[bool] = None,
        tcp_info_live_counters: bool = False,
    ) -> None:
        """``span_policy``: which ended connections get a span (a string such as
        ``"errors,slower_than=5"`` or a :class:`SpanPolicy`); None reads
        ``TRACED_TRANSPORT_SPAN_POLICY``, else the default (see
        ``traced_transport.telemetry.policy``). ``traced(span_policy=...)``
        overrides it for one listener. ``parent_context=True`` starts every
        connection's span when it opens, whatever the policy."""
        self.span_policy: SpanPolicy = _policy(span_policy)
        self.registry = registry if registry is not None else default_registry
        self.certificate_subjects = certificate_subjects
        self.max_span_events = max_span_events
        self.access_log = access_log
        self.spans = spans
        self.parent_context = parent_context
        # Records time the peer's EOF only when a span may be built from them,
        # and only eager spans take it as an event when it happens.
        self.wants_event_times = bool(spans)
        self.wants_eof_event = bool(spans and parent_context)
        # Linux TCP_INFO at each TCP connection's end (telemetry/tcp_info.py); None: the environment
        # decides. Elsewhere nothing: not even the instruments.
        self.tcp_info = (enabled_by_env() if tcp_info is None else bool(tcp_info)) and tcp_info_supported()
        self.tcp_info_live_counters = tcp_info_live_counters
        self._tcp: Optional[TcpMetrics] = None
        self._tcp_infos: dict[ConnectionRecord, TcpInfo] = {}
        if self.tcp_info:
            # A TLS connection's socket is closed before connection_lost: the peer's EOF is when it is read.
            self.wants_eof_event = True
        self._attrs: dict[_CacheKey, dict[str, Any]] = {}
        # Histogram values recorded on the loop wait here and reach the SDK at the
        # next collection (or when this many pile up), so the event loop pays a
        # deque append per connection or pause, not an SDK call.
        self._pending: collections.deque[tuple[Any, float, dict[str, Any]]] = collections.deque()
        self.max_pending = 8192
        self._cache_lock = threading.Lock()
        self._cached: Optional[tuple[float, dict[ConnKey, Totals]]] = None
        # The app's SDK must not be able to break traced() at set-up either: a
        # provider whose get_tracer/get_meter or instrument creation raises gets
        # the API's no-op tracer or meter instead (reported once).
        try:
            self.tracer = trace.get_tracer(SCOPE, _VERSION, tracer_provider=tracer_provider)
        except Exception as exc:  # noqa: BLE001
            report("get_tracer", exc)
            self.tracer = trace.NoOpTracer()
            tracer_provider = self.tracer  # not the global one: never swapped for it
        # With the global providers and no SDK set up (yet), every span would be
        # a no-op: skip start_span altogether until the app installs a provider.
        self._global_tracer = tracer_provider is None
        try:
            self._create_instruments(metrics.get_meter(SCOPE, _VERSION, meter_provider=meter_provider))
        except Exception as exc:  # noqa: BLE001
            report("creating instruments", exc)
            self._create_instruments(metrics.NoOpMeter(SCOPE, _VERSION))
        # Readers taking self.histograms directly; while there is none, values also go to the API instruments.
        self._histogram_readers = 0
        # Per ConnKey, the duration aggregate's pending list for its connections without error
        # (error.type, cipher and TLS version all None): on_close's fast path appends there.
        self._clean_durations: dict[ConnKey, list[float]] = {}
        # The last of them used, with its key: most listeners have one attribute set, and an identity
        # test costs less than hashing a ConnKey.
        self._last_clean: tuple[object, list[float]] = (_NO_KEY, [])
        # Groups whose records take the fast path without calling on_close (Group.quiet_close), told
        # to stop when a setting changes, and their registries, which fold the durations with their
        # ended queues. Under the lock: a setting may change on another thread while on_close hands a
        # group its copy; the generation tells on_close that its copy is stale already.
        self._quiet_lock = threading.Lock()
        self._fast_close_generation = 0
        self._quiet_groups: weakref.WeakSet[Group] = weakref.WeakSet()
        self._fold_registries: weakref.WeakSet[Any] = weakref.WeakSet()
        self._set_fast_close()

    def __setattr__(self, name: str, value: Any) -> None:
        object.__setattr__(self, name, value)
        # hasattr, not self.__dict__: reading __dict__ turns CPython's inline attribute values into a dict.
        if name in _FAST_CLOSE_INPUTS and hasattr(self, "_fast_close_up_to"):
            self._set_fast_close()

    def _set_fast_close(self) -> None:
        # Worked out when a setting changes, not per connection: how long a connection without error or
        # pause may last and still take on_close's fast path, for groups without a policy of their own.
        self._fast_close_up_to = self._fast_close_limit(self.span_policy)
        # The groups' own copies of the fast path's answer: gone, until on_close works them out again.
        with self._quiet_lock:
            self._fast_close_generation += 1
            for group in list(self._quiet_groups):
                group.quiet_close = None

    def _fast_close_limit(self, policy: SpanPolicy) -> float:
        if self._tcp is not None or self.access_log or not self._histogram_readers:
            # TCP_INFO and the access log need the general path, and so does a value the API
            # histogram must get (no reader collects the aggregates).
            return -math.inf
        if not self.spans or self.parent_context:
            return math.inf  # no span is decided at close
        return policy.drops_up_to

    def _create_instruments(self, meter: Any) -> None:
        self.meter = m = meter
        m.create_observable_counter(
            "transport.connection.opened", [self._observe("opened", fresh=True)], "{connection}", "Connections made"
        )
        m.create_observable_up_down_counter(
            "transport.connection.active", [self._observe("active")], "{connection}", "Connections open now"
        )
        m.create_observable_counter(
            "transport.received",
            [self._observe("rx")],
            "By",
            "Bytes received, as the application's protocol sees them (plaintext over TLS)",
        )
        m.create_observable_counter(
            "transport.sent",
            [self._observe("tx")],
            "By",
            "Bytes sent, as the application's protocol wrote them (sendfile included)",
        )
        m.create_observable_up_down_counter(
            "transport.reading.paused",
            [self._observe("read_paused_now")],
            "{connection}",
            "Connections whose reading is paused now",
        )
        m.create_observable_up_down_counter(
            "transport.writing.paused",
            [self._observe("write_paused_now")],
            "{connection}",
            "Connections whose writing is paused now (write backpressure)",
        )
        m.create_observable_gauge(
            "transport.write_buffer.size",
            [self._observe_write_buffer],
            "By",
            "Bytes buffered for sending, summed over open connections",
        )
        # Histograms are aggregated here, on the loop (see _histogram); the API
        # instruments receive the values too until a reader takes the
        # aggregates directly (traced_transport.exporters.histograms.attach).
        self.histograms: dict[str, HistogramAggregate] = {}
        self._duration = self._histogram(
            m, "transport.connection.duration", "Connection duration, recorded at close", DURATION_BUCKETS
        )
        self._read_pause = self._histogram(
            m, "transport.reading.pause.duration", "Length of each completed reading pause", PAUSE_BUCKETS
        )
        self._write_pause = self._histogram(
            m, "transport.writing.pause.duration", "Length of each completed writing pause", PAUSE_BUCKETS
        )
        self._handshake = self._histogram(
            m,
            "transport.tls.handshake.duration",
            "TLS handshake duration, where the library sees it",
            HANDSHAKE_BUCKETS,
        )
        if self.tcp_info:
            self._tcp = TcpMetrics(self, m, self.tcp_info_live_counters)

    def _histogram(self, meter: Any, name: str, description: str, bounds: tuple[float, ...]) -> _Histogram:
        aggregate = self.histograms[name] = HistogramAggregate(name, "s", description, bounds)
        instrument = meter.create_histogram(name, "s", description, explicit_bucket_boundaries_advisory=bounds)
        return instrument, aggregate

    def histogram_reader(self, attached: bool) -> None:
        """A reader that collects ``self.histograms`` itself was attached (or detached).

        Called by ``traced_transport.exporters.histograms``. While at least one is attached, a
        connection's end costs a list append instead of an SDK ``record()``. Values
        still pending are dropped then: the aggregates hold them already.
        """
        with self._cache_lock:
            self._histogram_readers += 1 if attached else -1
            if self._histogram_readers:
                self._pending.clear()

    # -- attributes ----------------------------------------------------------
    def attributes(
        self,
        key: ConnKey,
        error_type: Optional[str] = None,
        cipher: Optional[str] = None,
        tls_version: Optional[str] = None,
    ) -> dict[str, Any]:
        return self._attributes_for((key, error_type, cipher, tls_version))

    def _attributes_for(self, cache_key: _CacheKey) -> dict[str, Any]:
        attrs = self._attrs.get(cache_key)
        if attrs is None:
            attrs = self._attrs[cache_key] = metric_attributes(*cache_key)
        return attrs

    # -- observable callbacks (scrape thread) -----------------------------------
    def _totals(self, fresh: bool = False) -> dict[ConnKey, Totals]:
        # One registry pass per collection: the SDK runs the callbacks of one
        # collection back to back, in creation order, so the first one
        # (transport.connection.opened) makes a fresh pass and the others reuse it
        # while it is younger than 50 ms. Two collections never share a pass.
        with self._cache_lock:
            cached = self._cached
            now = monotonic()
            if not fresh and cached is not None and now - cached[0] < 0.05:
                return cached[1]
            totals = self.registry.snapshot().totals()
            self._cached = (now, totals)
            return totals

    def _record(
        self,
        histogram: _Histogram,
        value: float,
        key: ConnKey,
        error_type: Optional[str] = None,
        cipher: Optional[str] = None,
        tls_version: Optional[str] = None,
    ) -> None:
        cache_key = (key, error_type, cipher, tls_version)
        attributes = self._attributes_for(cache_key)
        instrument, aggregate = histogram
        aggregate.record(value, cache_key, attributes)
        if not self._histogram_readers:
            self._pend(instrument, value, attributes)

    def _pend(self, instrument: Any, value: float, attributes: dict[str, Any]) -> None:
        """No reader collects our aggregates: the value waits for the API histogram (see ``flush``)."""
        pending = self._pending
        pending.append((instrument, value, attributes))
        if len(pending) > self.max_pending:
            self.flush()

    def _record_exemplar(
        self,
        ids: Optional[tuple[int, int]],
        span: Any,
        time_ns: int,
        histogram: _Histogram,
        value: float,
        key: ConnKey,
        error_type: Optional[str] = None,
        cipher: Optional[str] = None,
        tls_version: Optional[str] = None,
    ) -> None:
        """``_record`` for a connection with a span: the value becomes its bucket's exemplar when the span is sampled.

        Only connections with a span come here, so the others pay nothing for exemplars.
        """
        if ids is None:
            self._record(histogram, value, key, error_type, cipher, tls_version)
            return
        cache_key = (key, error_type, cipher, tls_version)
        attributes = self._attributes_for(cache_key)
        instrument, aggregate = histogram
        aggregate.record_with_exemplar(value, cache_key, attributes, ids[0], ids[1], time_ns)
        if not self._histogram_readers:
            self._pend(_InContext(instrument, trace.set_span_in_context(span)), value, attributes)

    def _exemplar_for_earlier(
        self,
        ids: tuple[int, int],
        time_ns: int,
        histogram: _Histogram,
        value: float,
        key: ConnKey,
        error_type: Optional[str] = None,
        cipher: Optional[str] = None,
        tls_version: Optional[str] = None,
    ) -> None:
        """A span kept when its connection ends: a value ``_record`` counted earlier (a pause, the handshake),
        under the same attributes, becomes its bucket's exemplar unless a newer one is there.

        Costs nothing for connections whose span is not kept: only the close path of a kept span calls it.
        """
        histogram[1].add_exemplar(value, (key, error_type, cipher, tls_version), ids[0], ids[1], time_ns)

    def flush(self) -> None:
        """Hand pending histogram values to the SDK (thread-safe; collections call it)."""
        pending = self._pending
        while True:
            try:
                histogram, value, attributes = pending.popleft()
            except IndexError:
                return
            try:
                histogram.record(value, attributes)
            except Exception as exc:  # noqa: BLE001
                report("histogram.record", exc)

    def _observe(self, field: str, fresh: bool = False) -> Callable[[CallbackOptions], Iterable[Observation]]:
        def callback(options: CallbackOptions) -> Iterable[Observation]:
            self.flush()
            try:
                return [Observation(getattr(t, field), self.attributes(k)) for k, t in self._totals(fresh).items()]
            except Exception as exc:  # noqa: BLE001
                report(f"metrics callback {field}", exc)
                return []

        return callback

    def _observe_write_buffer(self, options: CallbackOptions) -> Iterable[Observation]:
        try:
            sums: dict[ConnKey, int] = {k: 0 for k in self._totals()}
            for rec in self.registry.live():
                transport = rec.transport
                if transport is None:
                    continue
                try:
                    size = transport.get_write_buffer_size()
                except Exception:  # noqa: BLE001 - closing under us, or no such method
                    continue
                if isinstance(size, int):
                    sums[rec.key] = sums.get(rec.key, 0) + size
            return [Observation(v, self.attributes(k)) for k, v in sums.items()]
        except Exception as exc:  # noqa: BLE001
            report("metrics callback write_buffer", exc)
            return []

    def _global_tracer_set(self) -> bool:
        """Whether the app has installed a global tracer provider (then: forever)."""
        if type(trace.get_tracer_provider()) is _PROXY_PROVIDER:
            return False
        # The API sets the global provider once, so ask no more; and take the real
        # tracer instead of the proxy, one call layer less per span.
        self._global_tracer = False
        self.tracer = trace.get_tracer(SCOPE, _VERSION)
        return True

    # -- Observer (event loop) ---------------------------------------------
    def _tracing(self) -> bool:
        """Whether spans can go anywhere: an explicit provider, or a global one set by now.

        Without one, spans would be no-ops: then the tracer is not called."""
        return not self._global_tracer or self._global_tracer_set()

    def wants_open(self, group: Any) -> bool:
        """Whether ``group``'s connections need on_open: eager spans, access logs, a client's parent.

        A server's deferred span needs nothing when the connection opens (a TLS
        one's details are taken by on_tls), so its connections skip the call."""
        return bool(self.parent_context or self.access_log or (self.spans and group.side == "client"))

    def on_open(self, rec: ConnectionRecord, transport: Any) -> None:
        if self.spans:
            if self.parent_context:
                self._start_eager(rec, transport)
            elif rec.key.tls_version is not None:
                # A TLS transport may drop its SSL object before the connection
                # ends: keep what a span would say about it now (TLS costs far more).
                if rec.extra is None and self._may_keep(rec):
                    rec.extra = snapshot_extra(transport)
            elif rec.key.side == "client":
                # A client connection opened inside a request: its span's parent.
                parent = otel_context.get_current()
                if parent:
                    rec.state = _Deferred(parent)
        if self.access_log and rec.extra is None:
            rec.extra = snapshot_extra(transport)

    def _may_keep(self, rec: ConnectionRecord) -> bool:
        policy = rec.group.span_policy or self.span_policy
        return not policy.keeps_nothing

    def _start_eager(self, rec: ConnectionRecord, transport: Any) -> None:
        if not self._tracing():
            return
        key = rec.key
        try:
            name, kind, _, _, _ = SPAN_STATICS[key]
        except KeyError:
            name, kind, _, _, _ = span_statics(key)
        # No attributes at start: the SDK validates every attribute it is
        # given, and the sampler has the span name (which carries
        # transport.name) and kind to decide on.
        span = self.tracer.start_span(name, kind=kind, start_time=int((rec.opened_at + WALL_OFFSET) * 1e9))
        if span.is_recording():
            # Only now is the peer, TLS and certificate looked up: an
            # unsampled connection costs nothing more.
            extra = rec.extra
            if extra is None:
                extra = snapshot_extra(transport, key.tls_version is not None)
            span.set_attributes(span_attributes(key, extra, certificate_subjects=self.certificate_subjects))
            rec.state = _SpanState(span, self.parent_context)

    def on_event(self, rec: ConnectionRecord, name: str, seconds: Optional[float]) -> None:
        if name == "eof" and self._tcp is not None:
            self._tcp.closing(rec, rec.transport, False)
        state = rec.state
        if seconds is not None:
            pause = self._read_pause if name.startswith("reading") else self._write_pause
            if isinstance(state, _SpanState):
                # Exemplars: a pause of a connection with a live (eager) span.
                self._record_exemplar(state.exemplar_ids, state.span, time.time_ns(), pause, seconds, rec.key)
            else:
                self._record(pause, seconds, rec.key)
        if not self.spans:
            return
        if isinstance(state, _SpanState):
            if state.events < self.max_span_events:
                state.events += 1
                attrs = {"transport.pause.duration": seconds} if seconds is not None else None
                state.span.add_event(f"transport.{name}", attrs, timestamp=_ns(_event_time(rec, name)))
            else:
                state.dropped += 1
        elif name != "eof" and not self.parent_context:
            # The EOF's time is on the record already; pauses are kept here.
            if state is None:
                state = rec.state = _Deferred()
            if len(state.events) < self.max_span_events:
                state.events.append((name, _event_time(rec, name), seconds))
            else:
                state.dropped += 1
            if seconds is not None and seconds > state.longest_pause:
                state.longest_pause = seconds

    def on_closing(self, rec: ConnectionRecord, transport: Any, final: bool) -> None:
        """The connection ends (``final``: its record closes now); read TCP_INFO while the socket is open."""
        tcp = self._tcp
        if tcp is not None:
            info = tcp.closing(rec, transport, final)
            if info is not None:
                self._tcp_infos[rec] = info

    def tcp_info_of(self, rec: ConnectionRecord) -> Optional[TcpInfo]:
        """The TCP_INFO read at ``rec``'s end, once (for the span built at close); None without one."""
        return self._tcp_infos.pop(rec, None) if self._tcp_infos else None

    def on_tls(self, rec: ConnectionRecord, transport: Any) -> None:
        state = rec.state
        if isinstance(state, _SpanState):
            if rec.tls_handshake_s is not None:
                # Exemplars: the handshake of a connection with a live (eager) span.
                cipher, version = self._handshake_attributes(rec, transport)
                self._record_exemplar(
                    state.exemplar_ids,
                    state.span,
                    time.time_ns(),
                    self._handshake,
                    rec.tls_handshake_s,
                    rec.key,
                    None,
                    cipher,
                    version,
                )
            extra = rec.extra if rec.extra is not None else snapshot_extra(transport)
            state.span.set_attributes(tls_attributes(extra, certificate_subjects=self.certificate_subjects))
            return
        handshake = None
        if rec.tls_handshake_s is not None:
            cipher, version = self._handshake_attributes(rec, transport)
            self._record(self._handshake, rec.tls_handshake_s, rec.key, None, cipher, version)
            handshake = (cipher, version, time.time_ns())
        if self.spans and not self.parent_context and self._may_keep(rec):
            if state is None:
                state = rec.state = _Deferred()
            if isinstance(state, _Deferred):
                state.tls_extra = rec.extra if rec.extra is not None else snapshot_extra(transport)
                # Becomes an exemplar if the span is kept at close.
                state.handshake = handshake

    def _handshake_attributes(self, rec: ConnectionRecord, transport: Any) -> tuple[Optional[str], Optional[str]]:
        # The negotiated cipher (and, after start_tls, the version the connection
        # opened without) goes on the handshake histogram only: its count is "TLS
        # connections by version and cipher", without multiplying every other series.
        key = rec.key
        cipher = version = None
        try:
            info = transport.get_extra_info("cipher")
            if type(info) is tuple and info and type(info[0]) is str:
                cipher = safe_cipher_name(info[0])
            if key.tls_version is None:
                version = tls_version_of(transport)
        except Exception as exc:  # noqa: BLE001
            report("handshake attributes", exc)
        return cipher, version

    def on_close(self, rec: ConnectionRecord, exc: Optional[BaseException]) -> None:
        # Most connections end without error, pause, span, TCP_INFO or access log, under a policy that
        # drops them by duration alone: the general path would only count the duration, and here that
        # is a list append (the aggregate folds it in when read). Early returns to the general path
        # keep this one's jumps short.
        if rec.state is not None or rec.error_type is not None:
            return self._on_close(rec, exc)
        duration = rec.closed_at - rec.opened_at  # type: ignore[operator]  # set before on_close
        group = rec.group
        generation = self._fast_close_generation  # read before the settings it stands for
        up_to = self._fast_close_up_to if group.span_policy is None else self._fast_close_limit(group.span_policy)
        if not duration <= up_to:  # so that a NaN takes the general path
            return self._on_close(rec, exc)
        key, values = self._last_clean
        if key is not rec.key:
            values = self._clean_duration_values(rec.key)
        values.append(duration)
        if len(values) > MAX_PENDING:
            self._duration[1].fold()
        # The group's next connections of this attribute set append their durations themselves (the
        # wrapping protocol's connection_lost), with no call here, until a setting or the attribute set
        # changes.
        if group.quiet_close is None or group.quiet_close[0] is not rec.key:
            self._quiet(group, rec.key, values, up_to, generation)
        return None

    def _quiet(self, group: Group, key: ConnKey, values: list[float], up_to: float, generation: int) -> None:
        with self._quiet_lock:
            if generation != self._fast_close_generation:
                return  # a setting changed meanwhile: the next close works it out again
            # They append without the length test above: the values are folded whenever the
            # registry folds its ended queue (which they join too).
            registry = group.registry
            if registry not in self._fold_registries:
                registry.add_fold_listener(self._fold_durations)
                self._fold_registries.add(registry)
            self._quiet_groups.add(group)
            group.quiet_close = (key, values, up_to)

    def _fold_durations(self) -> None:
        """A registry folded its ended connections: the durations its groups appended follow."""
        self._duration[1].fold()

    def _clean_duration_values(self, key: ConnKey) -> list[float]:
        """The duration aggregate's pending list for ``key``'s connections without error (made on first use)."""
        values = self._clean_durations.get(key)
        if values is None:
            cache_key = (key, None, None, None)
            values = self._duration[1].pending(cache_key, self._attributes_for(cache_key))
            self._clean_durations[key] = values
        # One tuple, so that another thread never reads one connection's key with another's list.
        self._last_clean = (key, values)
        return values

    def _on_close(self, rec: ConnectionRecord, exc: Optional[BaseException]) -> None:
        """on_close's general path: any connection (the fast path is a shortcut to the same outcome)."""
        duration = rec.closed_at - rec.opened_at  # type: ignore[operator]  # set before on_close
        span_context: Any = None
        tcp_info = None
        if self._tcp is not None:
            tcp_info = self.tcp_info_of(rec)
            self._tcp.ended(rec)
        state = rec.state
        deferred: Optional[_Deferred] = None
        try:
            if state is None and rec.error_type is None and self.spans and not self.parent_context:
                # Most connections: clean, never paused. The policy's quick answer, without a call.
                policy = rec.group.span_policy or self.span_policy
                if (policy.all or duration > policy.slow or policy.ratio) and policy.keep(rec) and self._tracing():
                    span_context = self._build_span(rec, exc, None, tcp_info)
            elif isinstance(state, _SpanState):
                rec.state = None
                span_context = self._end_eager(rec, exc, state, tcp_info)
            elif self.spans and not self.parent_context:
                deferred = state if isinstance(state, _Deferred) else None
                policy = rec.group.span_policy or self.span_policy
                if policy.keep(rec, deferred.longest_pause if deferred is not None else 0.0) and self._tracing():
                    rec.state = None
                    span_context = self._build_span(rec, exc, deferred, tcp_info)
        except Exception as exc2:  # noqa: BLE001 - the SDK's failure must not cost the metrics below
            report("observer.on_close.span", exc2)
        # After the span: its SpanContext is known here (for an exemplar).
        self._record_duration(rec, duration, span_context)
        # A dropped connection (no span) pays a comparison here, not a call.
        ids = None if span_context is None else _sampled_ids(span_context)
        if rec.close_reason == TLS_FAILED and rec.tls_handshake_s is not None:
            if ids is None:
                self._record(self._handshake, rec.tls_handshake_s, rec.key, TLS_FAILED)
            else:
                self._record_exemplar(
                    ids,
                    trace.NonRecordingSpan(span_context),
                    _ns(rec.closed_at),  # type: ignore[arg-type]  # set before on_close
                    self._handshake,
                    rec.tls_handshake_s,
                    rec.key,
                    TLS_FAILED,
                )
        if ids is not None and deferred is not None:
            self._exemplars_for_deferred(rec, ids, deferred)
        if self.access_log:
            self._log_access(rec, duration)

    def _record_duration(self, rec: ConnectionRecord, duration: float, span_context: Any) -> None:
        """The connection's duration into its histogram; ``span_context`` is the kept span's
        SpanContext (None when no span was kept or sampled), for an exemplar."""
        ids = None if span_context is None else _sampled_ids(span_context)
        if ids is not None:
            span = trace.NonRecordingSpan(span_context)
            self._record_exemplar(
                ids,
                span,
                _ns(rec.closed_at),  # type: ignore[arg-type]  # set before on_close
                self._duration,
                duration,
                rec.key,
                rec.error_type,
            )
            return
        cache_key = (rec.key, rec.error_type, None, None)
        attributes = self._attrs.get(cache_key) or self._attributes_for(cache_key)
        instrument, aggregate = self._duration
        aggregate.record(duration, cache_key, attributes)
        if not self._histogram_readers:
            self._pend(instrument, duration, attributes)

    def _exemplars_for_deferred(self, rec: ConnectionRecord, ids: tuple[int, int], deferred: _Deferred) -> None:
        """A span kept at close: the pauses and the handshake counted earlier point at it now."""
        for name, at, seconds in deferred.events:
            if seconds is not None:
                pause = self._read_pause if name.startswith("reading") else self._write_pause
                self._exemplar_for_earlier(ids, _ns(at), pause, seconds, rec.key)
        handshake = deferred.handshake
        if handshake is not None and rec.tls_handshake_s is not None:
            cipher, version, at_ns = handshake
            self._exemplar_for_earlier(ids, at_ns, self._handshake, rec.tls_handshake_s, rec.key, None, cipher, version)

    def _end_attributes(self, rec: ConnectionRecord, dropped: int, tcp_info: Optional[TcpInfo]) -> dict[str, Any]:
        # The pause counts straight from the record's rare part: its properties cost a frame each.
        rare = rec._rare
        end_attrs: dict[str, Any] = {
            "transport.received": rec.rx,
            "transport.sent": rec.tx,
            "transport.reading.pauses": 0 if rare is None else rare.read_pauses,
            "transport.writing.pauses": 0 if rare is None else rare.write_pauses,
            "transport.close_reason": rec.close_reason,
        }
        if rec.error_type:
            end_attrs["error.type"] = rec.error_type
        if dropped:
            end_attrs["transport.events.dropped"] = dropped
        if tcp_info is not None:
            end_attrs.update(tcp_span_attributes(tcp_info))
        return end_attrs

    def _finish(self, span: Any, rec: ConnectionRecord, exc: Optional[BaseException]) -> Any:
        end_time = int((rec.closed_at + WALL_OFFSET) * 1e9)  # type: ignore[operator]  # set before on_close
        if exc is not None:
            span.record_exception(exc, timestamp=end_time)
            span.set_status(Status(StatusCode.ERROR, f"{type(exc).__name__}: {exc}"))
        elif rec.close_reason == TLS_FAILED:
            span.set_status(Status(StatusCode.ERROR, TLS_FAILED))
        span.end(end_time=end_time)
        return span.get_span_context()

    def _end_eager(
        self, rec: ConnectionRecord, exc: Optional[BaseException], state: _SpanState, tcp_info: Optional[TcpInfo]
    ) -> Any:
        span = state.span
        span.set_attributes(self._end_attributes(rec, state.dropped, tcp_info))
        return self._finish(span, rec, exc)

    def _capped_events(self, events: list[_Event], dropped: int, eof_at: Optional[float]) -> tuple[list[_Event], int]:
        """The events of a span built at close, and how many the cap dropped."""
        if eof_at is not None:
            # The EOF goes where its time puts it among the pauses, under the same cap.
            eof = ("eof", eof_at, None)
            events = [*events, eof] if not events or events[-1][1] <= eof_at else sorted([*events, eof], key=_at)
            if len(events) > self.max_span_events:
                dropped += len(events) - self.max_span_events
                events = events[: self.max_span_events]
        return events, dropped

    def _build_span(
        self,
        rec: ConnectionRecord,
        exc: Optional[BaseException],
        deferred: Optional[_Deferred],
        tcp_info: Optional[TcpInfo] = None,
    ) -> Any:
        """The span an eager one would have been, made now with the connection's own times.

        Every span of a kept connection comes through here, so the common one (no
        TLS, no pause, inet addresses) is built without calls of ours: its
        attributes are a copy of its ConnKey's template (``SPAN_STATICS``) with the
        per-connection values put in. Anything else takes ``span_attributes``, as
        the eager span does.
        """
        key = rec.key
        try:
            name, kind, _, _, template = SPAN_STATICS[key]
        except KeyError:
            name, kind, _, _, template = span_statics(key)
        eof_at = rec.eof_at
        events: Optional[list[_Event]]
        if deferred is None:
            # No pauses: at most the EOF, as the only event.
            parent = tls_extra = events = None
            dropped = 0
            if eof_at is not None and self.max_span_events < 1:
                events, dropped = self._capped_events([], 0, eof_at)
        else:
            parent = deferred.parent
            tls_extra = deferred.tls_extra
            events, dropped = self._capped_events(deferred.events, deferred.dropped, eof_at)
        # As the eager span did: the sampler gets the name, kind and parent,
        # and only a sampled span has its attributes computed.
        span = self.tracer.start_span(
            name, context=parent, kind=kind, start_time=int((rec.opened_at + WALL_OFFSET) * 1e9)
        )
        if not span.is_recording():
            return None
        rare = rec._rare  # not rec.extra: a property, a frame
        extra = None if rare is None else rare.extra
        attributes: Optional[dict[str, Any]] = None
        if extra is None and tls_extra is None and key.tls_version is None:
            # No TLS to describe (the key has no version): the addresses are all the transport is asked.
            ref = rec._transport_ref
            transport = None if ref is None else ref()
            if transport is None:
                extra = {}
            else:
                try:
                    get = transport.get_extra_info
                    peer = get("peername")
                    local = get("sockname")
                except Exception:  # noqa: BLE001 - asked again one by one, so each failure is reported
                    extra = snapshot_extra(transport, False)
                else:
                    if (
                        type(peer) is tuple
                        and len(peer) > 1
                        and type(peer[1]) is int
                        and type(local) is tuple
                        and len(local) > 1
                        and type(local[1]) is int
                    ):
                        # span_attributes' and _end_attributes' keys, in their order (the template's).
                        attributes = template.copy()
                        attributes["network.peer.address"] = str(peer[0])
                        attributes["network.peer.port"] = peer[1]
                        attributes["network.local.address"] = str(local[0])
                        attributes["network.local.port"] = local[1]
                        attributes["transport.received"] = rec.rx
                        attributes["transport.sent"] = rec.tx
                        if rare is None:
                            attributes["transport.reading.pauses"] = attributes["transport.writing.pauses"] = 0
                        else:
                            attributes["transport.reading.pauses"] = rare.read_pauses
                            attributes["transport.writing.pauses"] = rare.write_pauses
                        attributes["transport.close_reason"] = rec.close_reason
                        if rec.error_type:
                            attributes["error.type"] = rec.error_type
                        if dropped:
                            attributes["transport.events.dropped"] = dropped
                        if tcp_info is not None:
                            attributes.update(tcp_span_attributes(tcp_info))
                    else:
                        extra = {}
                        if peer is not None:
                            extra["peername"] = peer
                        if local is not None:
                            extra["sockname"] = local
        if attributes is None:
            if extra is None:
                ref = rec._transport_ref
                transport = None if ref is None else ref()
                extra = {} if transport is None else snapshot_extra(transport)
            attributes = span_attributes(key, extra, certificate_subjects=self.certificate_subjects)
            if tls_extra is not None:
                attributes.update(tls_attributes(tls_extra, certificate_subjects=self.certificate_subjects))
            attributes.update(self._end_attributes(rec, dropped, tcp_info))
        span.set_attributes(attributes)
        if events is None:
            if eof_at is not None:
                span.add_event("transport.eof", None, timestamp=int((eof_at + WALL_OFFSET) * 1e9))
        else:
            for event, at, seconds in events:
                span.add_event(
                    f"transport.{event}",
                    {"transport.pause.duration": seconds} if seconds is not None else None,
                    timestamp=int((at + WALL_OFFSET) * 1e9),
                )
        if exc is None and rec.close_reason != TLS_FAILED:
            span.end(end_time=int((rec.closed_at + WALL_OFFSET) * 1e9))  # type: ignore[operator]  # set before on_close
            return span.get_span_context()
        return self._finish(span, rec, exc)

    @staticmethod
    def span_context_of(transport: Any) -> Any:
        """The connection span's SpanContext (for a Link from the app's own spans), or None."""
        rec = getattr(transport, "traced_record", None)
        state = getattr(rec, "state", None)
        if isinstance(state, _SpanState):
            return state.span.get_span_context()
        return None

    def _log_access(self, rec: ConnectionRecord, duration: float) -> None:
        extra = rec.extra or {}
        cipher = extra.get("cipher")
        fields = {
            "start": _ns(rec.opened_at) / 1e9,
            "duration_s": round(duration, 6),
            "name": rec.key.name,
            "side": rec.key.side,
            "peer": extra.get("peername"),
            "local": extra.get("sockname"),
            "bytes_received": rec.rx,
            "bytes_sent": rec.tx,
            "tls_version": extra.get("tls_version"),
            "tls_cipher": cipher[0] if isinstance(cipher, tuple) and cipher else None,
            "close_reason": rec.close_reason,
            "error_type": rec.error_type,
            "read_pauses": rec.read_pauses,
            "write_pauses": rec.write_pauses,
        }
        access_logger.info(
            "%s %s peer=%s local=%s duration=%.6fs rx=%d tx=%d tls=%s/%s end=%s",
            fields["name"],
            fields["side"],
            fields["peer"],
            fields["local"],
            duration,
            rec.rx,
            rec.tx,
            fields["tls_version"],
            fields["tls_cipher"],
            rec.close_reason,
            extra={"transport": fields},
        )


def _policy(value: Any) -> SpanPolicy:
    return span_policy(value)


_default: Optional[Telemetry] = None
_default_lock = threading.Lock()


def set_default_telemetry(telemetry: Optional[Telemetry]) -> None:
    """Make ``telemetry`` what ``traced()`` uses when given neither registry nor observer (None: back to the default)."""
    global _default
    with _default_lock:
        _default = telemetry


def default_telemetry() -> Telemetry:
    """The process-wide Telemetry over the default registry and the global providers."""
    global _default
    if _default is None:
        with _default_lock:
            if _default is None:
                _default = Telemetry()
    return _default
