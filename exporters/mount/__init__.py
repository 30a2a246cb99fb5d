"""The scrape endpoint as a part of the app you already run: WSGI, ASGI, aiohttp.

    from traced_transport.exporters import sdk
    from traced_transport.exporters.mount import make_asgi_app

    setup = sdk.setup(endpoint=False)                  # no server of our own
    metrics_app = make_asgi_app(setup, basic_auth=("prom", "secret"))
    # Starlette: app.mount("/metrics", metrics_app); FastAPI the same

Each adapter is a small module over :func:`traced_transport.exporters.exposition.scrape`,
the function the built-in endpoint answers with: the same bytes for the same
registry, the same basic auth, OpenMetrics on ``Accept``, gzip on ``Accept-Encoding``.
``source`` is a ``prometheus_client`` ``CollectorRegistry``, or what holds one: the
``Setup`` of ``sdk.setup()`` or the ``Aggregator`` of ``multiworker.serve()``. The app
answers every path it is given (the framework's routing decides where it is mounted).

The collection runs on a worker thread in the async adapters, never on the event
loop: it takes a lock that another scrape may hold.
"""

from __future__ import annotations

from typing import Any

__all__ = ["make_aiohttp_handler", "make_asgi_app", "make_wsgi_app"]


def make_wsgi_app(source: Any, *, basic_auth: Any = None) -> Any:
    from .wsgi import make_wsgi_app as make

    return make(source, basic_auth=basic_auth)


def make_asgi_app(source: Any, *, basic_auth: Any = None) -> Any:
    from .asgi import make_asgi_app as make

    return make(source, basic_auth=basic_auth)


def make_aiohttp_handler(source: Any, *, basic_auth: Any = None) -> Any:
    from .aiohttp import make_aiohttp_handler as make

    return make(source, basic_auth=basic_auth)


make_wsgi_app.__doc__ = "A WSGI app serving the scrape of ``source`` (see :mod:`.wsgi`)."
make_asgi_app.__doc__ = "An ASGI app serving the scrape of ``source`` (see :mod:`.asgi`)."
make_aiohttp_handler.__doc__ = "An aiohttp handler serving the scrape of ``source`` (see :mod:`.aiohttp`)."
