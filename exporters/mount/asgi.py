"""The scrape as an ASGI app (Starlette, FastAPI, Quart, uvicorn, hypercorn...): ``make_asgi_app(source)``."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Awaitable, Callable
from typing import Any, Optional

from ..exposition import BasicAuth, Request, registry_of, scrape, wire_headers

Receive = Callable[[], Awaitable[dict]]
Send = Callable[[dict], Awaitable[None]]


def make_asgi_app(
    source: Any, *, basic_auth: Optional[tuple[str, str]] = None
) -> Callable[[dict, Receive, Send], Awaitable[None]]:
    registry = registry_of(source)
    auth = BasicAuth.of(basic_auth)

    async def metrics_app(scope: dict, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":  # served alone, the app has nothing to start or stop
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        if scope["type"] != "http":
            raise ValueError(f"the metrics app serves HTTP, not {scope['type']!r}")
        headers: dict[str, str] = {}
        for name, value in scope.get("headers", ()):
            key = name.decode("latin-1").lower()
            text = value.decode("latin-1")
            headers[key] = f"{headers[key]}, {text}" if key in headers else text

        def header(name: str) -> Optional[str]:
            return headers.get(name.lower())

        method = scope.get("method", "GET")
        request = Request(method, scope.get("path", "/"), scope.get("query_string", b"").decode("latin-1"), header)
        response = await asyncio.get_running_loop().run_in_executor(
            None, functools.partial(scrape, registry, request, auth)
        )
        await send(
            {
                "type": "http.response.start",
                "status": response.status,
                "headers": [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in wire_headers(response)],
            }
        )
        await send({"type": "http.response.body", "body": b"" if method == "HEAD" else response.body})

    return metrics_app
