"""Everything that leaves the process: SDK set-up, the Prometheus scrape endpoint, OTLP, the CLI.

``sdk`` (set-up), ``prometheus`` (the built-in endpoint), ``exposition`` (the one
answer every endpoint gives), ``mount`` (that answer as a WSGI/ASGI app or an aiohttp
handler), ``options`` (the endpoint's options, once), ``otlp``, ``histograms``,
``multiworker`` (one scrape for many worker processes), ``cli``/``run``/``demo``.

This package may use opentelemetry-sdk and prometheus-client; ``traced_transport``
itself imports neither.
"""
