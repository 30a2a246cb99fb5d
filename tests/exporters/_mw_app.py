"""The ASGI app of the multi-worker test, imported by every uvicorn worker process.

At import (uvicorn imports the app in each worker, before it creates its server)
it starts exporting to ``$TT_MW_DIR`` and traces every server transport as
``transport.name="http"``; with ``TT_MW_MODE=sitecustomize`` the
``_mw_site/sitecustomize.py`` of every process has done that already. It answers ``{pid} {body length}``.
"""

import os

from _plain_app import make_app
from traced_transport.exporters import multiworker

import traced_transport

if os.environ.get("TT_MW_MODE") != "sitecustomize":  # else tests/exporters/_mw_site/sitecustomize.py did it
    worker = multiworker.start_worker(os.environ["TT_MW_DIR"], interval=float(os.environ.get("TT_MW_INTERVAL", "0.2")))
    traced_transport.instrument(observer=worker.telemetry, server_name="http")


app = make_app(lambda scope, size: f"{os.getpid()} {size}".encode())
