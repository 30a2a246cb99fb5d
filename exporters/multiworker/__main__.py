"""``python -m traced_transport.exporters.multiworker DIR [PORT]``: serve the sum of the workers in DIR."""

from __future__ import annotations

import contextlib
import logging
import sys
import threading

from .serve import serve

if __name__ == "__main__":  # pragma: no cover
    logging.basicConfig(level=logging.INFO)
    agg = serve(sys.argv[1], port=int(sys.argv[2]) if len(sys.argv) > 2 else 9464)
    print(f"serving {agg.url}", flush=True)
    with contextlib.suppress(KeyboardInterrupt):
        threading.Event().wait()
