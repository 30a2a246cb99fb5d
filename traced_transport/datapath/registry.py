"""Live connections plus running totals of closed ones, readable from any thread.

The event loop takes no lock: opening a connection adds its record to a set,
closing one appends it to a queue of ended records and then takes it out of
the set (each a single operation under the GIL). A reader (a scrape on another
thread) copies the live set, then folds the queue into the closed totals, and
counts a live record only if it did not fold it: a record is counted exactly
once, so sums never go backwards and never count a connection twice. The
loop folds the queue itself, without waiting, when nobody reads it for long.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from types import MethodType
from typing import Any, Optional
from weakref import WeakMethod

from ..report import report
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
    close_reasons: dict[Optional[str], int] = field(default_factory=dict)

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

    def __init__(self, closed: dict[ConnKey, Totals], live: list[ConnectionRecord], taken_at: float):
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
            t.opened += 1
            t.active += 1
            rare = rec._rare
            if rare is not None:
                if rare.read_paused_since is not None:
                    t.read_paused_now += 1
                if rare.write_paused_since is not None:
                    t.write_paused_now += 1
        return out


def _fold_batch(closed: dict[ConnKey, Totals], batch: list[ConnectionRecord]) -> None:
    """Add ``batch`` (ended records) to ``closed``, one run of records of one attribute set at a time.

    Once per connection: a Python loop reading the slots directly costs less per record than a
    C-level pass per field (``sum(map(attrgetter(...)))``), since each attrgetter call is a
    generic attribute lookup. The sums stay in locals until the run ends."""
    key = batch[0].key
    start = rx = tx = 0
    reasons: dict[Optional[str], int] = {}
    rares: list[Any] = []
    for i, rec in enumerate(batch):
        if rec.key is not key:
            _add_run(closed, key, i - start, rx, tx, reasons, rares)
            key, start, rx, tx, reasons, rares = rec.key, i, 0, 0, {}, []
        rx += rec.rx
        tx += rec.tx
        reason = rec.close_reason
        reasons[reason] = reasons.get(reason, 0) + 1
        if rec._rare is not None:  # the few that ever paused
            rares.append(rec._rare)
    _add_run(closed, key, len(batch) - start, rx, tx, reasons, rares)


def _add_run(
    closed: dict[ConnKey, Totals],
    key: ConnKey,
    count: int,
    rx: int,
    tx: int,
    reasons: dict[Optional[str], int],
    rares: list[Any],
) -> None:
    t = closed.get(key)
    if t is None:
        t = closed[key] = Totals()
    t.opened += count
    t.closed += count
    t.rx += rx
    t.tx += tx
    close_reasons = t.close_reasons
    for reason, k in reasons.items():
        close_reasons[reason] = close_reasons.get(reason, 0) + k
    for rare in rares:
        t.read_pauses += rare.read_pauses
        t.write_pauses += rare.write_pauses
        t.read_paused_s += rare.read_paused_s
        t.write_paused_s += rare.write_paused_s


class Registry:
    """Where records live while open, and where their counts go when they close."""

    def __init__(self) -> None:
        # Taken by whoever folds ended records into the totals: a reader, or
        # the loop when the queue is long (without waiting for it).
        self._lock = threading.Lock()
        self._live: set[ConnectionRecord] = set()
        self._ended: list[ConnectionRecord] = []
        self._closed: dict[ConnKey, Totals] = {}
        # Run after every fold, outside the lock, on the folding thread: what an observer
        # appends per ended connection is folded as often as the ended queue (see add_fold_listener).
        self._fold_listeners: list[Callable[[], Any]] = []

    def add_fold_listener(self, listener: Callable[[], None]) -> None:
        """Call ``listener()`` after each fold of this registry's ended queue (by a reader or the loop).

        Held weakly when it is a bound method: the registry does not keep its object alive.
        Failures are reported, never raised."""
        if isinstance(listener, MethodType):
            self._fold_listeners.append(WeakMethod(listener))
        else:
            self._fold_listeners.append(lambda: listener)

    def _folded(self) -> None:
        for ref in list(self._fold_listeners):
            listener = ref()
            if listener is None:
                try:
                    self._fold_listeners.remove(ref)
                except ValueError:  # another thread took it out
                    pass
                continue
            try:
                listener()
            except Exception as exc:  # noqa: BLE001
                report("registry fold listener", exc)

    def _fold(self, folded: Optional[set[int]] = None) -> None:
        """Under the lock: ended records into the closed totals (their ids into ``folded``).

        The loop appending meanwhile only adds past the batch taken."""
        ended = self._ended
        n = len(ended)
        if not n:
            return
        batch = ended[:n]
        del ended[:n]
        if folded is not None:
            folded.update(map(id, batch))
        _fold_batch(self._closed, batch)

    def _fold_now(self) -> None:
        """On the loop, when the queue is long: fold it unless a reader is at it."""
        if self._lock.acquire(blocking=False):
            try:
                self._fold()
            finally:
                self._lock.release()
            self._folded()

    def snapshot(self) -> Snapshot:
        # Records whose transports were freed without connection_lost end first (see abandoned.py).
        _abandoned.close_gone(list(self._live))
        with self._lock:
            live = list(self._live)  # one C call: atomic under the GIL
            folded: set[int] = set()
            self._fold(folded)
            if folded:
                # Ended after the copy above: counted in the totals now.
                live = [rec for rec in live if id(rec) not in folded]
            closed = {k: t.copy() for k, t in self._closed.items()}
        self._folded()
        return Snapshot(closed, live, monotonic())

    def live(self) -> list[ConnectionRecord]:
        live = list(self._live)  # one copy: the records close_gone ends are closed in it too
        _abandoned.close_gone(live)
        return [rec for rec in live if rec.closed_at is None]

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
            self._ended.clear()
            self._closed.clear()


default_registry = Registry()
