"""The echo app of the reliability tests (imported as ``_echo``: tests/exporters has a ``_util`` already)."""

from __future__ import annotations

import asyncio
from typing import Any, Optional


class Echo(asyncio.Protocol):
    """Writes back what it receives. With ``pause_on``, every chunk containing it (``b""``: every chunk)
    also makes a read-pause transition: ``pause_reading()`` then ``resume_reading()``."""

    def __init__(self, pause_on: Optional[bytes] = None) -> None:
        self.pause_on = pause_on
        self.transport: Any = None

    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.transport.write(data)
        if self.pause_on is not None and self.pause_on in data:
            self.transport.pause_reading()
            self.transport.resume_reading()
