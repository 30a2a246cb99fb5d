"""A wrapper class per shape of app protocol: the wrapper answers probes as the app would.

Loops look some callbacks up before calling them: uvloop's stream transports
call ``eof_received`` only if the protocol has it (a missing one closes the
transport), both loops pick the buffered read path from ``get_buffer`` and the
protocol's asyncio base classes, and duck-typed protocols that subclass
nothing are legal. A wrapper that always had every callback would make the
loop take another path than it takes for the app (uvloop's write pipe to a
``BaseProtocol`` then ends in "Fatal error" or never gets ``connection_lost``).

So a wrapper class has:

* the asyncio protocol base classes the app's class has, in the same order
  (every ``isinstance`` against them answers the same), and
* a forwarding method for each optional callback the app has, and none for
  one it lacks (every ``hasattr`` answers the same).

``connection_made`` and ``connection_lost`` are always there: no loop probes
them, and they are where the record opens and closes.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable, Mapping
from typing import Any

# The callbacks a loop may call on a protocol, beyond connection_made/lost.
OPTIONAL_CALLBACKS = (
    "data_received",
    "eof_received",
    "get_buffer",
    "buffer_updated",
    "pause_writing",
    "resume_writing",
    "datagram_received",
    "error_received",
    "pipe_data_received",
    "pipe_connection_lost",
    "process_exited",
)

PROTOCOL_BASES = (
    asyncio.BufferedProtocol,
    asyncio.Protocol,
    asyncio.DatagramProtocol,
    asyncio.SubprocessProtocol,
    asyncio.BaseProtocol,
)

Shape = tuple[tuple[type, ...], frozenset[str]]


def shape_of(app: Any) -> Shape:
    """The asyncio bases (most derived only, in MRO order) and the optional callbacks ``app`` has."""
    mro = type(app).__mro__
    found = [c for c in mro if c in PROTOCOL_BASES]
    # Keep the most derived ones: asyncio.Protocol already brings BaseProtocol.
    bases = tuple(c for c in found if not any(o is not c and issubclass(o, c) for o in found))
    names = frozenset(n for n in OPTIONAL_CALLBACKS if hasattr(app, n))
    return bases, names


def class_shape(cls: type) -> Shape:
    """The shape of an instance of ``cls`` whose callbacks are all class attributes."""
    found = [c for c in cls.__mro__ if c in PROTOCOL_BASES]
    bases = tuple(c for c in found if not any(o is not c and issubclass(o, c) for o in found))
    return bases, frozenset(n for n in OPTIONAL_CALLBACKS if hasattr(cls, n))


_by_shape: dict[Shape, type] = {}


def build(
    shape: Shape,
    base: type,
    methods: Mapping[str, Callable[..., Any]],
    slots: tuple[str, ...],
    known: Iterable[type] = (),
) -> type:
    """The wrapper class for ``shape``: ``base`` (the shared behaviour) + the app's protocol bases + its callbacks.

    ``known`` are ready-made classes, used when one has exactly this shape (so
    the common cases keep their plain names).
    """
    cls = _by_shape.get(shape)
    if cls is not None:
        return cls
    for candidate in known:
        if class_shape(candidate) == shape:
            cls = candidate
            break
    else:
        bases, names = shape
        ns: dict[str, Any] = {"__slots__": slots, "__module__": base.__module__}
        for name in names:
            ns[name] = methods[name]
        bases_label = ",".join(b.__name__ for b in bases) or "duck-typed"
        cls = type(f"Wrapper[{bases_label}: {' '.join(sorted(names))}]", (base, *bases), ns)
        # A callback the app lacks must not come from a base class either.
        missing = [n for n in OPTIONAL_CALLBACKS if n not in names and hasattr(cls, n)]
        if missing:  # pragma: no cover - the bases are the app's own
            raise TypeError(f"wrapper for {shape} would have {missing}")
    _by_shape[shape] = cls
    return cls
