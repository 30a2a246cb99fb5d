"""The per-connection shortcuts: same objects as the plain constructors, registry counts exact without a lock."""

from __future__ import annotations

import asyncio

from _helpers import Collect, closed, tcp_pair

import traced_transport as tt
from traced_transport.datapath.protocols import PlainWrapper
from traced_transport.datapath.record import ConnectionRecord, Group


def _fields(obj) -> dict:
    slots = [s for cls in type(obj).__mro__ for s in getattr(cls, "__slots__", ()) if s != "__weakref__"]
    return {s: getattr(obj, s) for s in slots}


def test_the_factory_makes_the_wrapper_and_record_the_constructors_make(run):
    registry = tt.Registry()
    factory = tt.traced(asyncio.Protocol, name="g", registry=registry)

    async def main():
        return factory(), factory()  # the first learns the classes, the second takes the short path

    for fast in run(main):
        slow = PlainWrapper(fast._app, ConnectionRecord(factory.group))
        assert type(fast) is type(slow) and type(fast._app) is asyncio.Protocol and fast._proxy is None
        assert _fields(fast._rec) == _fields(slow._rec)


def _ended_record(registry: tt.Registry) -> ConnectionRecord:
    group = Group("g", "server", registry)
    rec = ConnectionRecord(group)
    rec.open(None)
    rec.rx = 10
    return rec


def test_a_record_between_ended_queue_and_live_set_counts_once():
    registry = tt.Registry()
    rec = _ended_record(registry)
    # What close() does first; a reader arriving before the live set lets go.
    rec.closed_at = rec.opened_at
    rec.close_reason = "closed"
    registry._ended.append(rec)
    totals = registry.totals()
    assert (totals.opened, totals.closed, totals.active, totals.rx) == (1, 1, 0, 10)
    registry._live.discard(rec)
    totals = registry.totals()
    assert (totals.opened, totals.closed, totals.active, totals.rx) == (1, 1, 0, 10)


def test_the_loop_folds_a_long_ended_queue(run):
    registry = tt.Registry()

    async def main():
        for _ in range(3):
            server, s_app, c_tr, c_app = await tcp_pair(wrap_server=lambda f: tt.traced(f, name="s", registry=registry))
            c_tr.close()
            await s_app.lost
            await closed(server)

    import traced_transport.datapath.record as record

    old, record.MAX_ENDED = record.MAX_ENDED, 1
    try:
        run(main)
    finally:
        record.MAX_ENDED = old
    # Folded on the loop (the queue never held more than two), nothing lost.
    assert len(registry._ended) <= 2
    totals = registry.totals()
    assert (totals.opened, totals.closed, totals.active) == (3, 3, 0)
    assert sum(totals.close_reasons.values()) == 3


def test_factory_follows_a_change_of_app_class(run):
    registry = tt.Registry()

    class _Buffered(asyncio.BufferedProtocol):
        pass

    made = []

    def factory():
        app = Collect() if not made else _Buffered()
        made.append(app)
        return app

    traced = tt.traced(factory, name="s", registry=registry)

    async def main():
        first = traced()
        second = traced()
        return type(first).__name__, type(second).__name__

    assert run(main) == ("PlainWrapper", "BufferedWrapper")
