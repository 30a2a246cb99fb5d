"""The import path ``traced_transport.websockets`` (e.g. in ``uvicorn --http``); the code lives in ``traced_transport.integrations.websockets``."""

from .integrations.websockets import connect, serve, unix_serve

__all__ = ["serve", "unix_serve", "connect"]
