"""Instructions of ours per kept span: ``Telemetry._build_span`` against the same SDK calls made directly.

    python bench/span_callgrind.py

Each mode builds SMALL, then LARGE spans of a clean, plain TCP connection (one
EOF event, the end counters) under ``valgrind --tool=callgrind``; (LARGE - SMALL)
/ (LARGE - SMALL spans) is the cost of one span, start-up excluded:

  sdk    the SDK's own work: ``start_span``, ``set_attributes`` with the span's
         attributes, ``add_event``, ``end``, through a span processor that does nothing
  ours   ``Telemetry._build_span`` for a record with the same content

``ours - sdk`` is what building a span at close adds to the SDK's cost (the
target: at most +10,000). The records and their stand-in transports are made
before counting starts, so only the span is measured.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
from typing import Any

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMALL, LARGE = 300, 1300
TARGET = 10_000


def child(mode: str, n: int) -> None:
    sys.path.insert(0, ROOT)
    import gc
    import weakref

    from opentelemetry.sdk.trace import SpanProcessor, TracerProvider
    from opentelemetry.trace import SpanKind

    import traced_transport as tt
    from traced_transport.datapath.classify import ConnKey
    from traced_transport.datapath.record import WALL_OFFSET, ConnectionRecord, monotonic

    class Nothing(SpanProcessor):
        """No thread, no export: the SDK's per-span work alone, the same on every run."""

    provider = TracerProvider()
    provider.add_span_processor(Nothing())
    telemetry = tt.Telemetry(tt.Registry(), tracer_provider=provider, span_policy="all")
    group = tt.Group("churn", "server", tt.Registry())
    key = ConnKey("churn", "server", "tcp", "ipv4", 8080, None)

    class Transport:
        __slots__ = ("get_extra_info", "__weakref__")

    made: list[tuple[ConnectionRecord, Any]] = []
    for i in range(n):
        transport = Transport()
        transport.get_extra_info = {"peername": ("127.0.0.1", 40000 + i), "sockname": ("127.0.0.1", 8080)}.get
        rec = ConnectionRecord(group)
        rec.key = key
        rec.opened_at = monotonic()
        rec.eof_at = rec.opened_at + 0.001
        rec.closed_at = rec.opened_at + 0.002
        rec.close_reason = "eof"
        rec.rx = rec.tx = 64
        rec._transport_ref = weakref.ref(transport)
        made.append((rec, transport))
    tracer = telemetry.tracer
    gc.collect()
    gc.freeze()
    if mode == "sdk":
        # Made once: the baseline is the SDK's work alone, not building the attributes.
        attributes = {
            "transport.name": "churn",
            "transport.side": "server",
            "network.transport": "tcp",
            "network.type": "ipv4",
            "network.peer.address": "127.0.0.1",
            "network.peer.port": 40000,
            "network.local.address": "127.0.0.1",
            "network.local.port": 8080,
            "server.port": 8080,
            "transport.received": 64,
            "transport.sent": 64,
            "transport.reading.pauses": 0,
            "transport.writing.pauses": 0,
            "transport.close_reason": "eof",
        }
        for rec, _ in made:
            span = tracer.start_span(
                "churn connection", kind=SpanKind.SERVER, start_time=int((rec.opened_at + WALL_OFFSET) * 1e9)
            )
            if span.is_recording():
                span.set_attributes(attributes)
                span.add_event("transport.eof", None, timestamp=int((rec.eof_at + WALL_OFFSET) * 1e9))
                span.end(end_time=int((rec.closed_at + WALL_OFFSET) * 1e9))
                span.get_span_context()
    else:
        build = telemetry._build_span
        for rec, _ in made:
            build(rec, None, None, None)
    provider.shutdown()


def instructions(mode: str, n: int) -> int:
    with tempfile.TemporaryDirectory() as tmp:
        proc = subprocess.run(
            ["valgrind", "--tool=callgrind", f"--callgrind-out-file={tmp}/out", "--dump-line=no"]
            + [sys.executable, __file__, "--child", mode, str(n)],
            capture_output=True,
            text=True,
            env=dict(os.environ, PYTHONHASHSEED="0"),
            timeout=900,
        )
    found = re.search(r"Collected : (\d+)", proc.stderr)
    if proc.returncode or not found:
        raise SystemExit(proc.stderr[-3000:])
    return int(found.group(1))


def main() -> None:
    if sys.argv[1:2] == ["--child"]:
        child(sys.argv[2], int(sys.argv[3]))
        return
    per_span = {m: (instructions(m, LARGE) - instructions(m, SMALL)) / (LARGE - SMALL) for m in ("sdk", "ours")}
    ours = per_span["ours"] - per_span["sdk"]
    verdict = "met" if ours <= TARGET else "missed"
    print(f"the SDK's calls: {per_span['sdk']:,.0f} instructions per span")
    print(f"Telemetry._build_span: {per_span['ours']:,.0f}")
    print(f"ours: +{ours:,.0f} (target <= +{TARGET:,}: {verdict})")


if __name__ == "__main__":
    main()
