"""The ASGI app of the multi-worker test, imported by every uvicorn worker process.

At import (uvicorn imports the app in each worker, before it creates its server)
it starts exporting to ``$TT_MW_DIR`` and traces every server transport as
``transport.name="http"``; with ``TT_MW_MODE=sitecustomize`` the
``_mw_site/sitecustomize.py`` of every process has done that already. It answers ``{pid} {body length}``.
"""
import os

import traced_transport
from exporters import multiworker

if os.environ.get("TT_MW_MODE") != "sitecustomize":  # else tests/exporters/_mw_site/sitecustomize.py did it
    worker = multiworker.start_worker(os.environ["TT_MW_DIR"],
                                      interval=float(os.environ.get("TT_MW_INTERVAL", "0.2")))
    traced_transport.instrument(observer=worker.telemetry, server_name="http")


async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    assert scope["type"] == "http"
    size = 0
    while True:
        message = await receive()
        size += len(message.get("body", b""))
        if not message.get("more_body"):
            break
    body = f"{os.getpid()} {size}".encode()
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"text/plain"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})
