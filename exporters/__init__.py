"""Everything that leaves the process: SDK set-up, the Prometheus scrape endpoint, OTLP, the CLI.

This package may use opentelemetry-sdk and prometheus-client; ``traced_transport``
itself imports neither.
"""
