"""traced-transport: observability middleware for asyncio transports.

``traced(protocol_factory, name=..., side=...)`` wraps a protocol factory; every
connection it serves gets a proxy transport and a wrapping protocol that count
bytes, flow-control transitions and lifecycle into a plain per-connection
record, kept in a thread-safe registry.
"""
from ._classify import ConnKey
from ._factory import TracedProtocolFactory, set_max_transport_names, traced, transport_names
from ._instrument import instrument, is_instrumented, tracing, uninstrument
from ._proxy import TracedTransport, is_proxy, unwrap
from ._record import ConnectionRecord, Group, Observer
from ._registry import Registry, Snapshot, Totals, default_registry
from ._streams import open_connection, open_unix_connection, start_server, start_unix_server
from ._telemetry import Telemetry, default_telemetry, set_default_telemetry

connection_span_context = Telemetry.span_context_of

# Hook the loop classes now, not on the first traced() call: in
# `await loop.create_connection(traced(f), ...)` Python looks up
# loop.create_connection before it evaluates traced(f), so a hook installed by
# that first traced() call came too late for its own call, which returned
# (real transport, our wrapper) instead of (proxy, app protocol). The hooks
# pass untraced calls straight through. (A uvloop imported after this module
# is hooked by the first traced() call, with the same first-call gap.)
from . import _hooks as _hooks_mod  # noqa: E402

_hooks_mod.ensure_known_loops()

__all__ = [
    "ConnKey",
    "ConnectionRecord",
    "Group",
    "Observer",
    "Registry",
    "Snapshot",
    "Telemetry",
    "Totals",
    "TracedProtocolFactory",
    "TracedTransport",
    "default_registry",
    "connection_span_context",
    "default_telemetry",
    "instrument",
    "is_instrumented",
    "is_proxy",
    "open_connection",
    "open_unix_connection",
    "set_default_telemetry",
    "set_max_transport_names",
    "start_server",
    "start_unix_server",
    "traced",
    "tracing",
    "transport_names",
    "uninstrument",
    "unwrap",
]

__version__ = "0.1.0"
