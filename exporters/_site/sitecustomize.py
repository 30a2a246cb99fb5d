"""Loaded by every Python process that ``traced-transport run`` starts (via PYTHONPATH).

It instruments the process (every transport traced, counts written for the
parent's scrape endpoint), then hands over to any other ``sitecustomize`` that
was on the path, so the app's own start-up hook still runs.
"""

import importlib
import os
import sys


def _start() -> None:
    directory = os.environ.get("TRACED_TRANSPORT_RUN_DIR")
    if not directory:
        return
    try:
        from traced_transport.exporters import run

        run.start_in_child(directory)
    except Exception:
        import logging

        logging.getLogger("traced_transport").warning("traced-transport run: instrumentation failed", exc_info=True)


def _chain() -> None:
    here = os.path.dirname(os.path.abspath(__file__))
    saved = sys.path[:]
    sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != here]
    mine = sys.modules.pop("sitecustomize", None)
    try:
        importlib.import_module("sitecustomize")
    except ImportError:
        pass
    finally:
        sys.path[:] = saved
        if mine is not None:
            sys.modules["sitecustomize"] = mine


_start()
_chain()
