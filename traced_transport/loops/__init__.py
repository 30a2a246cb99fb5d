"""Where the package meets the event loop: ``traced()`` factories, the loop method
hooks (listed by ``traced_transport.patched()``), ``instrument()``/``tracing()``
and the asyncio streams helpers."""
