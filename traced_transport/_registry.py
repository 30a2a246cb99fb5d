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

from ._classify import ConnKey
from ._record import ConnectionRecord, monotonic


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

    def copy(self) -> "Totals":
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
            t.rx += rec.rx
            t.tx += rec.tx
            t.read_pauses += rec.read_pauses
            t.write_pauses += rec.write_pauses
            t.read_paused_s += rec.read_paused_s
            t.write_paused_s += rec.write_paused_s
            t.active += 1
            if rec.read_paused_since is not None:
                t.read_paused_now += 1
            if rec.write_paused_since is not None:
                t.write_paused_now += 1
        return out


class Registry:
    """Where records live while open, and where their counts go when they close."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._live: set[ConnectionRecord] = set()
        self._closed: dict[ConnKey, Totals] = {}

    # Called on the loop, once per connection.
    def _opened(self, rec: ConnectionRecord) -> None:
        with self._lock:
            self._live.add(rec)
            t = self._closed.get(rec.key)
            if t is None:
                t = self._closed[rec.key] = Totals()
            t.opened += 1

    def _closed_record(self, rec: ConnectionRecord) -> None:
        with self._lock:
            if rec not in self._live:
                return
            self._live.discard(rec)
            t = self._closed[rec.key]
            t.closed += 1
            t.rx += rec.rx
            t.tx += rec.tx
            t.read_pauses += rec.read_pauses
            t.write_pauses += rec.write_pauses
            t.read_paused_s += rec.read_paused_s
            t.write_paused_s += rec.write_paused_s
            reason = rec.close_reason
            t.close_reasons[reason] = t.close_reasons.get(reason, 0) + 1


    def snapshot(self) -> Snapshot:
        with self._lock:
            live = list(self._live)
            closed = {k: t.copy() for k, t in self._closed.items()}
        return Snapshot(closed, live, monotonic())

    def live(self) -> list[ConnectionRecord]:
        with self._lock:
            return list(self._live)

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
            self._live.clear()
            self._closed.clear()



default_registry = Registry()
