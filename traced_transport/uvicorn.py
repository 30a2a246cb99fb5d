"""The import path ``traced_transport.uvicorn`` (e.g. in ``uvicorn --http``); the code lives in ``traced_transport.integrations.uvicorn``."""

from .integrations.uvicorn import TracedHTTP, auto, h11, http, httptools

__all__ = ["TracedHTTP", "http", "auto", "h11", "httptools"]
