"""The import path ``traced_transport.aiohttp`` (e.g. in ``uvicorn --http``); the code lives in ``traced_transport.integrations.aiohttp``."""

from .integrations.aiohttp import AppRunner, TCPConnector, run_app

__all__ = ["AppRunner", "run_app", "TCPConnector"]
