"""Connections that end without ``connection_lost``: the record leaves when its transport is gone.

A loop closed with transports still open, a transport the app dropped
without closing it, a connection the app never got back from a failed call:
the loop never calls ``connection_lost``, and a record holding its transport
would keep it, its protocol and its proxy alive, and count as an active
connection forever.

So a record refers to its real transport weakly. When the transport is freed,
the weak reference's callback queues the record; the queue is drained (the
record closed with reason ``abandoned``) at the next connection opened or
registry read. The callback only queues: it may run inside any allocation,
on any thread, possibly while the registry's lock is held.
"""

from __future__ import annotations

import collections
import weakref
from collections.abc import Callable
from typing import Any

ABANDONED = "abandoned"

# Records (ConnectionRecord; not imported: record imports this module).
_pending: collections.deque[Any] = collections.deque()


class TransportRef(weakref.ref[Any]):
    __slots__ = ("rec",)
    rec: Any


def gone(ref: TransportRef) -> None:
    # Only reached while the record still holds ``ref``, i.e. before its close()
    # (which drops the reference, and with it this callback).
    _pending.append(ref.rec)


def strong(transport: Any) -> Callable[[], Any]:
    """For a transport that cannot be weakly referenced: held for the record's life."""
    return lambda: transport


def drain() -> None:
    """Close every queued record (on the caller's thread, outside any registry lock)."""
    while _pending:
        try:
            rec = _pending.popleft()
        except IndexError:  # another thread took the last one
            return
        if rec.closed_at is None:
            rec.close(None, ABANDONED)
