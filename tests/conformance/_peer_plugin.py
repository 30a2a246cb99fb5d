"""Loaded into a peer project's pytest run by peers.py (``-p _peer_plugin``).

PEERS_LOOP=uvloop: make uvloop the default loop (for suites that take the
policy's loop, as unittest's IsolatedAsyncioTestCase does).
PEERS_WRAPPED=1: ``traced_transport.instrument(pipes=True)`` for the whole run,
as an app would call it; at the end the default registry's counts go to
PEERS_REPORT (JSON), the proof that the run was traced. In plain mode
traced_transport is not even imported (importing it installs the loop hooks).
"""

from __future__ import annotations

import asyncio
import gc
import json
import os
from typing import Any


def pytest_configure(config: Any) -> None:
    if os.environ.get("PEERS_LOOP") == "uvloop":
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    if os.environ.get("PEERS_WRAPPED") == "1":
        import traced_transport

        traced_transport.instrument(pipes=True)


def pytest_unconfigure(config: Any) -> None:
    path = os.environ.get("PEERS_REPORT")
    if not path or os.environ.get("PEERS_WRAPPED") != "1":
        return
    from traced_transport.datapath.registry import default_registry

    gc.collect()
    totals = default_registry.totals()
    live = default_registry.live()
    with open(path, "w") as f:
        json.dump(
            {
                "opened": totals.opened,
                "closed": totals.closed,
                "live": len(live),
                "rx": totals.rx,
                "tx": totals.tx,
                "close_reasons": totals.close_reasons,
                "live_records": [repr(r) for r in live[:20]],
            },
            f,
        )
