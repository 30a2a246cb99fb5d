"""traced-transport: observability middleware for asyncio transports.

``traced(protocol_factory, name=..., side=...)`` wraps a protocol factory; every
connection it serves gets a proxy transport and a wrapping protocol that count
bytes, flow-control transitions and lifecycle into a plain per-connection
record, kept in a thread-safe registry.
"""

from .datapath.classify import ConnKey
from .datapath.proxy import TracedTransport, is_proxy, unwrap
from .datapath.record import ConnectionRecord, Group, Observer
from .datapath.registry import Registry, Snapshot, Totals, default_registry
from .loops.factory import TracedProtocolFactory, set_max_transport_names, traced, transport_names
from .loops.instrument import instrument, is_instrumented, tracing, uninstrument
from .loops.patches import patched, unpatch
from .loops.streams import open_connection, open_unix_connection, start_server, start_unix_server
from .telemetry.telemetry import Telemetry, default_telemetry, set_default_telemetry
from .version import __version__

connection_span_context = Telemetry.span_context_of

# Hook the loop classes now, not on the first traced() call: in
# `await loop.create_connection(traced(f), ...)` Python looks up
# loop.create_connection before it evaluates traced(f), so a hook installed by
# that first traced() call came too late for its own call, which returned
# (real transport, our wrapper) instead of (proxy, app protocol). The hooks
# pass untraced calls straight through. (A uvloop imported after this module
# is hooked by the first traced() call, with the same first-call gap.)
# traced_transport.patched() lists what is replaced; traced_transport.unpatch()
# puts it back.
from .loops import hooks as _hooks  # noqa: E402,F401  (registers the hook table)
from .loops import patches as _patches  # noqa: E402

_patches.ensure_known_loops()

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
    "patched",
    "set_default_telemetry",
    "set_max_transport_names",
    "start_server",
    "start_unix_server",
    "traced",
    "tracing",
    "transport_names",
    "uninstrument",
    "unpatch",
    "unwrap",
    "__version__",
]
