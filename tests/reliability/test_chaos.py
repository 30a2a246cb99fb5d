"""Chaos: randomized sessions (writes, writelines, pause storms, set_protocol, start_tls, write_eof, abort,
peer resets), several at once on one loop, every byte and every count checked (see ``_chaos``).

CI size: ``TT_CHAOS_EXAMPLES`` hypothesis examples per loop (default 300, each a batch of 1-8 concurrent
sessions, ~1,300 sessions); ``bench/chaos.py`` runs the same code for >= 100,000 sessions.
"""

from __future__ import annotations

import asyncio
import os

import pytest
from hypothesis import HealthCheck, given, settings

pytest.importorskip("opentelemetry.sdk")

import _chaos

EXAMPLES = int(os.environ.get("TT_CHAOS_EXAMPLES", "300"))


def new_loop(kind):
    if kind == "uvloop":
        import uvloop

        return uvloop.new_event_loop()
    return asyncio.new_event_loop()


def test_chaos_sessions(loop_kind, server_ctx, client_ctx):
    telemetry, registry, reader, processor = _chaos.telemetry_stack()
    harness = _chaos.Harness(observer=telemetry, server_ctx=server_ctx, client_ctx=client_ctx)
    loop = new_loop(loop_kind)
    done = []  # outcomes of the examples that passed
    try:
        loop.run_until_complete(harness.start())

        @settings(max_examples=EXAMPLES, deadline=None, database=None, suppress_health_check=list(HealthCheck))
        @given(batch=_chaos.batches)
        def one_batch(batch):
            outcomes = loop.run_until_complete(asyncio.wait_for(harness.run_batch(batch), 60))
            _chaos.check(outcomes, batch)
            done.extend(outcomes)

        try:
            one_batch()
        finally:
            loop.run_until_complete(harness.abort_all())
    finally:
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.close()

    assert len(done) == harness.sessions >= EXAMPLES
    print(f"{loop_kind}: {len(done)} sessions, {harness.bytes} bytes, {sum(o.tls for o in done)} with TLS")
    assert any(o.tls for o in done) and {o.end for o in done} >= {"close", "abort", "peer_reset"}
    # Totals: the registry, the exported metrics and the spans agree with the sum of every session.
    _chaos.verify_totals(done, registry, reader, processor)
