"""The least a recording wrapper can do per connection, in Python: the floor of ``core``'s design space.

``churn.py``'s ``minimal`` mode. What ``core`` must do for a clean connection, and nothing else:
one object per connection that is both the record and the wrapping protocol (the counts live on
it), a proxy made per connection that adds the bytes written to it, the open and close times, a
live set a reader could sum, an attribute set found per transport class, the close reason from
the flags, the counts folded into per-attribute-set totals at close, and a weak reference to the
transport with a callback, made at open and dropped at close: the price of noticing a transport
freed without ``connection_lost`` (here only its price: with the live set holding the wrapper,
which reaches the transport through the app and its proxy, the callback could never run; ``core``
keeps the record apart from the wrapper for that reason). Not done: observers, TLS, pauses, other
loops' threads (no lock), the proxy's transparency (only the methods the echo uses).
``minimal_count`` stops before the attribute set, the fold and the weak reference.
``minimal_record`` (``apart_factory``) does what ``minimal`` does in the core's shape: the record
apart from the wrapper, closed into the project's thread-safe ``Registry``.

Whatever this costs over ``plain`` is below anything ``core`` can reach while it runs in Python.
"""

from __future__ import annotations

import asyncio
import time
import weakref
from collections.abc import Callable
from typing import Any, Optional

monotonic = time.monotonic
_REASON_BY_FLAGS = ("closed", "eof", "closed", "closed", "aborted", "aborted", "aborted", "aborted")


class _Totals:
    def __init__(self) -> None:
        self.closed = 0
        self.rx = 0
        self.tx = 0
        self.reasons: dict[str, int] = {}


class _Group:
    def __init__(self) -> None:
        self.live: set[Any] = set()
        self.keys: dict[type, str] = {}
        self.closed: dict[str, _Totals] = {}


class _Closed:
    """Where a proxy's late writes go once its connection ended: no proxy/wrapper cycle is left."""

    __slots__ = ("tx", "flags")

    def __init__(self) -> None:
        self.tx = 0
        self.flags = 0


_CLOSED = _Closed()


class MinimalTransport(asyncio.Transport):
    __slots__ = ("_t", "_w")
    __init__ = object.__init__  # made without arguments: object's own, no frame

    def write(self, data: Any) -> None:
        self._t.write(data)
        self._w.tx += len(data)

    def close(self) -> None:
        self._t.close()
        self._w.flags |= 2

    def is_closing(self) -> bool:
        return bool(self._t.is_closing())

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self._t.get_extra_info(name, default)


class MinimalCount(asyncio.Protocol):
    __slots__ = ("_app", "_p", "group", "rx", "tx", "flags", "opened_at", "closed_at")
    __init__ = object.__init__

    def connection_made(self, transport: Any) -> None:
        self.opened_at = monotonic()
        p = self._p = MinimalTransport()
        p._t = transport
        p._w = self
        self.group.live.add(self)
        self._app.connection_made(p)

    def data_received(self, data: bytes) -> None:
        self.rx += len(data)
        self._app.data_received(data)

    def eof_received(self) -> Optional[bool]:
        self.flags |= 1
        return self._app.eof_received()  # type: ignore[no-any-return]

    def connection_lost(self, exc: Optional[BaseException]) -> None:
        self.closed_at = monotonic()
        self._p._w = _CLOSED
        self.group.live.discard(self)
        self._app.connection_lost(exc)


def _gone(ref: Any) -> None:
    pass


class MinimalRecord(MinimalCount):
    # connection_made/connection_lost repeat MinimalCount's lines rather than call them: a super()
    # call is a frame per connection, which would raise the floor this measures.
    __slots__ = ("key", "close_reason", "transport_ref")

    def connection_made(self, transport: Any) -> None:
        self.opened_at = monotonic()
        p = self._p = MinimalTransport()
        p._t = transport
        p._w = self
        group = self.group
        key = group.keys.get(type(transport))
        if key is None:
            key = group.keys[type(transport)] = type(transport).__name__
            group.closed[key] = _Totals()
        self.key = key
        self.transport_ref = weakref.ref(transport, _gone)
        group.live.add(self)
        self._app.connection_made(p)

    def connection_lost(self, exc: Optional[BaseException]) -> None:
        self.closed_at = monotonic()
        self._p._w = _CLOSED
        reason = self.close_reason = _REASON_BY_FLAGS[self.flags] if exc is None else type(exc).__name__
        group = self.group
        t = group.closed[self.key]
        t.closed += 1
        t.rx += self.rx
        t.tx += self.tx
        reasons = t.reasons
        reasons[reason] = reasons.get(reason, 0) + 1
        group.live.discard(self)
        self.transport_ref = None
        self._app.connection_lost(exc)


def factory(protocol: Callable[[], Any], count_only: bool = False) -> Callable[[], Any]:
    """A protocol factory recording into its own group (``factory(...).group``: live set and totals)."""
    cls = MinimalCount if count_only else MinimalRecord
    group = _Group()

    def make() -> Any:
        w = cls()
        w._app = protocol()
        w.group = group
        w.rx = w.tx = w.flags = 0
        w.closed_at = None
        return w

    make.group = group  # type: ignore[attr-defined]
    return make


# -- minimal_record: the same, in the core's shape -----------------------------------------
# The record an object apart from the wrapping protocol, so that the live set, which holds it,
# never reaches the transport (an abandoned transport is freed, and its record keeps its counts);
# a weak reference to the transport, made at open; closed into the project's own Registry (the
# ended queue a reader or the loop folds in batches, readable from any thread). Still left out:
# observers, TLS, pauses, the proxy's transparency, close reasons beyond the flags.
from traced_transport.datapath.registry import Registry  # noqa: E402


class ApartRecord:
    # What the Registry's fold reads (key, rx, tx, close_reason, _rare), and the times.
    __slots__ = (
        "group",
        "key",
        "rx",
        "tx",
        "opened_at",
        "closed_at",
        "close_reason",
        "flags",
        "transport_ref",
        "_rare",
    )
    __init__ = object.__init__


class ApartWrapper(asyncio.Protocol):
    __slots__ = ("_app", "_rec", "_p")
    __init__ = object.__init__

    def connection_made(self, transport: Any) -> None:
        rec = self._rec
        # minimal's proxy, adding to the record (its fields have the names minimal's wrapper gives them).
        p = self._p = MinimalTransport()
        p._t = transport
        p._w = rec
        group = rec.group
        rec.opened_at = monotonic()
        rec.transport_ref = weakref.ref(transport)
        key = group.keys.get(type(transport))
        if key is None:
            key = group.keys[type(transport)] = type(transport).__name__
        rec.key = key
        group.live.add(rec)
        self._app.connection_made(p)

    def data_received(self, data: bytes) -> None:
        self._rec.rx += len(data)
        self._app.data_received(data)

    def eof_received(self) -> Optional[bool]:
        self._rec.flags |= 1
        return self._app.eof_received()  # type: ignore[no-any-return]

    def connection_lost(self, exc: Optional[BaseException]) -> None:
        rec = self._rec
        group = rec.group
        rec.closed_at = monotonic()
        rec.close_reason = _REASON_BY_FLAGS[rec.flags] if exc is None else type(exc).__name__
        # Into the ended queue, then out of the live set (Registry's order); folded in batches.
        ended = group.ended
        ended.append(rec)
        group.live.discard(rec)
        if len(ended) > 1024:
            group.registry._fold_now()
        rec.transport_ref = None
        self._app.connection_lost(exc)


class _ApartGroup:
    def __init__(self) -> None:
        self.registry = Registry()
        self.live = self.registry._live
        self.ended = self.registry._ended
        self.keys: dict[type, str] = {}


def apart_factory(protocol: Callable[[], Any]) -> Callable[[], Any]:
    """``minimal_record``: a factory recording into its own ``Registry`` (``apart_factory(...).registry``)."""
    group = _ApartGroup()

    def make() -> Any:
        rec = ApartRecord()
        rec.group = group
        rec.rx = rec.tx = rec.flags = 0
        rec.closed_at = rec.close_reason = rec._rare = None
        w = ApartWrapper()
        w._app = protocol()
        w._rec = rec
        return w

    make.registry = group.registry  # type: ignore[attr-defined]
    return make
