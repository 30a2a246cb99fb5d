"""bench/minimal.py, the floor the per-connection figures are compared with, records what it claims."""

from __future__ import annotations

import os
import sys

from _helpers import Collect, closed, tcp_pair

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "bench"))
import minimal


def test_minimal_counts_folds_and_lets_go(run):
    made = []

    def wrap(factory):
        made.append(minimal.factory(factory))
        return made[0]

    async def main():
        server, s_app, c_tr, c_app = await tcp_pair(lambda: Collect(echo=True), wrap_server=wrap)
        assert len(made[0].group.live) == 1
        c_tr.write(b"hello")
        await c_app.wait_bytes(5)
        c_tr.write_eof()
        await s_app.lost
        c_tr.close()
        await closed(server)

    run(main)
    group = made[0].group
    assert not group.live
    (totals,) = group.closed.values()
    assert (totals.closed, totals.rx, totals.tx, totals.reasons) == (1, 5, 5, {"eof": 1})


def test_minimal_record_counts_through_a_registry(run):
    made = []

    def wrap(factory):
        made.append(minimal.apart_factory(factory))
        return made[0]

    recs = []

    async def main():
        server, s_app, c_tr, c_app = await tcp_pair(lambda: Collect(echo=True), wrap_server=wrap)
        recs.extend(made[0].registry._live)
        assert len(recs) == 1 and recs[0].transport_ref() is not None
        c_tr.write(b"hello")
        await c_app.wait_bytes(5)
        c_tr.write_eof()
        await s_app.lost
        c_tr.close()
        await closed(server)

    run(main)
    totals = made[0].registry.totals()
    assert (totals.opened, totals.closed, totals.active, totals.rx, totals.tx) == (1, 1, 0, 5, 5)
    assert totals.close_reasons == {"eof": 1}
    assert recs[0].transport_ref is None  # let go at close; the record never held the transport
