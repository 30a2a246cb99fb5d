"""Wrap every protocol factory handed to an asyncio loop with ``traced()``.

Imported by the conformance child in wrapped mode only. CPython's tests build
loops directly (``asyncio.SelectorEventLoop()``, subclasses of
``BaseEventLoop``), so a policy would not reach them: the factory-taking loop
methods are patched on the class in the MRO that defines them, which covers
every subclass. Then ``traced_transport.loops.hooks.ensure()`` runs for the same
classes, so its own hooks (pair mapping, start_tls, sendfile) sit on top of
ours, as they would on a real loop class.
"""

from __future__ import annotations

import asyncio
import functools
from asyncio import base_events, events

import traced_transport
from traced_transport import TracedProtocolFactory
from traced_transport.loops import patches as _hooks

NAME = "conformance"

METHODS = (
    "create_connection",
    "create_server",
    "create_unix_connection",
    "create_unix_server",
    "connect_accepted_socket",
    "create_datagram_endpoint",
    "subprocess_exec",
    "subprocess_shell",
    "connect_read_pipe",
    "connect_write_pipe",
)
SERVER_SIDE = frozenset({"create_server", "create_unix_server", "connect_accepted_socket"})

_MARK = "__conformance_original__"

# traced() is called as an app would, with no registry or observer: records go
# to the default registry and the default (OpenTelemetry, global providers)
# observer runs too. Counts below are read back from the default registry.
registry = traced_transport.default_registry
stats = {"hook_calls": 0, "wrapped_factories": 0}
patched: list[tuple[str, str]] = []


def _wrap(factory, side: str):
    # Leave alone what traced() would reject up front (None, a non-callable):
    # the tests check asyncio's own error for those, and traced()'s argument
    # checking is not what this harness is measuring.
    if not callable(factory) or isinstance(factory, TracedProtocolFactory):
        return factory
    stats["wrapped_factories"] += 1
    return traced_transport.traced(factory, name=NAME, side=side)


def _hook(name: str, original):
    side = "server" if name in SERVER_SIDE else "client"

    @functools.wraps(original)
    async def method(self, *args, **kwargs):
        stats["hook_calls"] += 1
        if args:
            args = (_wrap(args[0], side),) + args[1:]
        elif "protocol_factory" in kwargs:
            kwargs["protocol_factory"] = _wrap(kwargs["protocol_factory"], side)
        return await original(self, *args, **kwargs)

    return method


def install() -> None:
    owners: list[type] = []
    for cls in (base_events.BaseEventLoop, asyncio.SelectorEventLoop):
        for name in METHODS:
            owner = _hooks.definer(cls, name)
            if owner is None or owner is events.AbstractEventLoop:
                continue
            original = vars(owner)[name]
            if hasattr(original, _MARK):
                continue
            hooked = _hook(name, original)
            setattr(hooked, _MARK, original)
            setattr(owner, name, hooked)
            patched.append((owner.__qualname__, name))
            if owner not in owners:
                owners.append(owner)
    for owner in owners:
        _hooks.ensure(owner)
    _hooks.ensure(asyncio.SelectorEventLoop)


def install_instrument() -> None:
    """The alternative: the library's own zero-code hooks, pipes and subprocesses included."""
    traced_transport.instrument(pipes=True, server_name=NAME, client_name=NAME)


def install_otel_sdk() -> str:
    """Real SDK providers, so that spans record and span attributes are computed.

    Returns what was done (the SDK is an optional dependency)."""
    try:
        from opentelemetry import metrics, trace
        from opentelemetry.sdk.metrics import MeterProvider
        from opentelemetry.sdk.metrics.export import InMemoryMetricReader
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import SimpleSpanProcessor
        from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
    except ImportError as exc:
        return f"no SDK ({exc})"
    global span_exporter, metric_reader
    span_exporter = InMemorySpanExporter()
    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(SimpleSpanProcessor(span_exporter))
    trace.set_tracer_provider(tracer_provider)
    metric_reader = InMemoryMetricReader()
    metrics.set_meter_provider(MeterProvider(metric_readers=[metric_reader]))
    return "sdk"


span_exporter = metric_reader = None


def otel_summary() -> dict:
    out = {}
    if span_exporter is not None:
        out["spans"] = len(span_exporter.get_finished_spans())
    if metric_reader is not None:
        data = metric_reader.get_metrics_data()  # runs the observable callbacks
        out["metrics"] = (
            sorted({m.name for rm in data.resource_metrics for sm in rm.scope_metrics for m in sm.metrics})
            if data
            else []
        )
    return out


def connections_opened() -> int:
    """Connections whose app protocol got a proxy in connection_made."""
    return registry.totals(NAME).opened


def connections_closed() -> int:
    return registry.totals(NAME).closed
