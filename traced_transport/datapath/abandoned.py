"""Connections that end without ``connection_lost``: the record leaves when its transport is gone.

A loop closed with transports still open, a transport the app dropped
without closing it, a connection the app never got back from a failed call:
the loop never calls ``connection_lost``, and a record holding its transport
would keep it, its protocol and its proxy alive, and count as an active
connection forever.

So a record refers to its real transport weakly: a plain weak reference,
without a callback, made once per connection and dropped with the record.
Whoever reads the registry (a scrape, the live view, ``Registry.totals``)
first closes, with reason ``abandoned``, each live record whose transport is
gone. Only a reader can tell a record still in the live set from one closed
there, so finding them when one reads costs the connections themselves
nothing.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

ABANDONED = "abandoned"


def strong(transport: Any) -> Callable[[], Any]:
    """For a transport that cannot be weakly referenced: held for the record's life."""
    return lambda: transport


def close_gone(records: Iterable[Any]) -> None:
    """Close each of ``records`` (live ConnectionRecords) whose transport is gone, on the caller's thread.

    Such a record is no longer reachable from its connection (the transport, which held
    the wrapping protocol, is freed), so nothing else can be closing it meanwhile."""
    gone = [rec for rec in records if (ref := rec._transport_ref) is not None and ref() is None]
    for rec in gone:
        if rec.closed_at is None:
            rec.close(None, ABANDONED)
