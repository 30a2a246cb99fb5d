"""Live connections plus running totals of closed ones, readable from any thread.

The event loop takes the lock only when a connection opens or closes; a reader
(a scrape on another thread) takes it only to copy the live set and the
totals, then sums outside it. A record is always in exactly one of the two
places, so sums never go backwards and never count a connection twice.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field, fields
from typing import Optional

from . import abandoned as _abandoned
from .classify import ConnKey
from .record import ConnectionRecord, monotonic


@dataclass
class Totals:
    """Counts for one attribute set. Counters only grow; the *_now fields are gauges."""

    opened: int = 0
    closed: int = 0
    rx: int = 0
    tx: int = 0
    read_pauses: int = 0
    write_pauses: int = 0
    read_paused_s: float = 0.0
    write_paused_s: float = 0.0
    active: int = 0
    read_paused_now: int = 0
    write_paused_now: int = 0
    close_reasons: dict = field(default_factory=dict)

    def add_counts(self, rec: ConnectionRecord) -> None:
        """Add one record's byte and pause counts (closing it, or summing it while live)."""
        self.rx += rec.rx
        self.tx += rec.tx
        rare = rec._rare  # None: no pause ever (most connections)
        if rare is not None:
            self.read_pauses += rare.read_pauses
            self.write_pauses += rare.write_pauses
            self.read_paused_s += rare.read_paused_s
            self.write_paused_s += rare.write_paused_s

    def copy(self) -> Totals:
        t = Totals(**{f.name: getattr(self, f.name) for f in fields(self)})
        t.close_reasons = dict(self.close_reasons)
        return t


class Snapshot:
    """A consistent view: closed totals and the live records as they were."""

    __slots__ = ("closed", "live", "taken_at")

    def __init__(self, closed: dict, live: list, taken_at: float):
        self.closed: dict[ConnKey, Totals] = closed
        self.live: list[ConnectionRecord] = live
        self.taken_at = taken_at

    def totals(self) -> dict[ConnKey, Totals]:
        """Closed totals plus the live records' current counts, per attribute set."""
        out = {k: t.copy() for k, t in self.closed.items()}
        for rec in self.live:
            t = out.get(rec.key)
            if t is None:
                t = out[rec.key] = Totals()
            t.add_counts(rec)
            t.active += 1
            rare = rec._rare
            if rare is not None:
                if rare.read_paused_since is not None:
                    t.read_paused_now += 1
                if rare.write_paused_since is not None:
                    t.write_paused_now += 1
        return out


class _Head:
    """The list's sentinel."""

    __slots__ = ("_prev", "_next")


class Registry:
    """Where records live while open, and where their counts go when they close."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        # Live records form a doubly linked list through their _prev/_next
        # slots: 16 bytes per connection, where a set took 27 to 107
        # depending on how full its table was.
        self._head = _Head()
        self._head._prev = self._head._next = self._head
        self._closed: dict[ConnKey, Totals] = {}

    # Called on the loop, once per connection.
    def _opened(self, rec: ConnectionRecord) -> None:
        if _abandoned._pending:
            _abandoned.drain()
        with self._lock:
            head = self._head
            last = head._prev
            rec._prev = last
            rec._next = head
            last._next = rec
            head._prev = rec
            t = self._closed.get(rec.key)
            if t is None:
                t = self._closed[rec.key] = Totals()
            t.opened += 1

    def _closed_record(self, rec: ConnectionRecord) -> None:
        with self._lock:
            if rec._next is None:  # not live (any more)
                return
            before, after = rec._prev, rec._next
            before._next = after
            after._prev = before
            rec._prev = rec._next = None
            t = self._closed[rec.key]
            t.closed += 1
            t.add_counts(rec)
            reason = rec.close_reason
            t.close_reasons[reason] = t.close_reasons.get(reason, 0) + 1

    def snapshot(self) -> Snapshot:
        if _abandoned._pending:
            _abandoned.drain()
        with self._lock:
            live = self._live_list()
            closed = {k: t.copy() for k, t in self._closed.items()}
        return Snapshot(closed, live, monotonic())

    def _live_list(self) -> list:
        # Under the lock.
        out = []
        head = self._head
        rec = head._next
        while rec is not head:
            out.append(rec)
            rec = rec._next
        return out

    def live(self) -> list[ConnectionRecord]:
        if _abandoned._pending:
            _abandoned.drain()
        with self._lock:
            return self._live_list()

    def totals(self, name: Optional[str] = None) -> Totals:
        """Everything summed (optionally for one ``transport.name``): handy in apps and tests."""
        out = Totals()
        for key, t in self.snapshot().totals().items():
            if name is not None and key.name != name:
                continue
            for f in fields(Totals):
                if f.name == "close_reasons":
                    for r, n in t.close_reasons.items():
                        out.close_reasons[r] = out.close_reasons.get(r, 0) + n
                else:
                    setattr(out, f.name, getattr(out, f.name) + getattr(t, f.name))
        return out

    def clear(self) -> None:
        """Forget everything (tests)."""
        with self._lock:
            for rec in self._live_list():
                rec._prev = rec._next = None
            self._head._prev = self._head._next = self._head
            self._closed.clear()


default_registry = Registry()
