"""The import path ``traced_transport.hypercorn`` (e.g. in ``uvicorn --http``); the code lives in ``traced_transport.integrations.hypercorn``."""

from .integrations.hypercorn import serve

__all__ = ["serve"]
