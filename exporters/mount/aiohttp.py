"""The scrape as an aiohttp handler: ``app.router.add_get("/metrics", make_aiohttp_handler(source))``."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Awaitable, Callable
from typing import Any, Optional

from ..exposition import BasicAuth, Request, registry_of, scrape, wire_headers


def make_aiohttp_handler(
    source: Any, *, basic_auth: Optional[tuple[str, str]] = None
) -> Callable[[Any], Awaitable[Any]]:
    from aiohttp import web

    registry = registry_of(source)
    auth = BasicAuth.of(basic_auth)

    async def metrics_handler(http_request: web.Request) -> web.Response:
        request = Request(http_request.method, http_request.path, http_request.query_string, http_request.headers.get)
        response = await asyncio.get_running_loop().run_in_executor(
            None, functools.partial(scrape, registry, request, auth)
        )
        # Content-Length is aiohttp's to set (and to leave out of a HEAD's empty body).
        headers = [(k, v) for k, v in wire_headers(response) if k != "Content-Length"]
        return web.Response(status=response.status, headers=headers, body=response.body)

    return metrics_handler
