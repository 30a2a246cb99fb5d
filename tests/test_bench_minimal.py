"""bench/minimal.py, the floor the per-connection figures are compared with, records what it claims."""

from __future__ import annotations

import os
import sys

from _helpers import Collect, closed, tcp_pair

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "bench"))
import minimal


def _echo_once(run, factory_for, while_open):
    """One connection through ``factory_for(app_factory)``: 5 bytes echoed, the client's EOF, closed."""
    made = []

    def wrap(factory):
        made.append(factory_for(factory))
        return made[0]

    async def main():
        server, s_app, c_tr, c_app = await tcp_pair(lambda: Collect(echo=True), wrap_server=wrap)
        while_open(made[0])
        c_tr.write(b"hello")
        await c_app.wait_bytes(5)
        c_tr.write_eof()
        await s_app.lost
        c_tr.close()
        await closed(server)

    run(main)
    return made[0]


def test_minimal_counts_folds_and_lets_go(run):
    def while_open(factory):
        assert len(factory.group.live) == 1

    group = _echo_once(run, minimal.factory, while_open).group
    assert not group.live
    (totals,) = group.closed.values()
    assert (totals.closed, totals.rx, totals.tx, totals.reasons) == (1, 5, 5, {"eof": 1})


def test_minimal_record_counts_through_a_registry(run):
    recs = []

    def while_open(factory):
        recs.extend(factory.registry._live)
        assert len(recs) == 1 and recs[0].transport_ref() is not None

    totals = _echo_once(run, minimal.apart_factory, while_open).registry.totals()
    assert (totals.opened, totals.closed, totals.active, totals.rx, totals.tx) == (1, 1, 0, 5, 5)
    assert totals.close_reasons == {"eof": 1}
    assert recs[0].transport_ref is None  # let go at close; the record never held the transport
