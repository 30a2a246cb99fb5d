"""Opt-in: run the app's protocol callbacks inside the connection span's context.

Then work the app starts in a callback (a task created in ``data_received``,
an HTTP request span in uvicorn) has the connection span as its parent. Only
groups that opted in get these wrapper classes, so nobody else pays for the
attach/detach on the data path.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

from opentelemetry import context as otel_context

from .proxy import make_proxy

_APP_CALLBACKS = (
    "_made",
    "connection_lost",
    "data_received",
    "eof_received",
    "get_buffer",
    "buffer_updated",
    "pause_writing",
    "resume_writing",
    "datagram_received",
    "error_received",
    "pipe_data_received",
    "pipe_connection_lost",
    "process_exited",
)

_variants: dict[type, type] = {}


def _in_span_context(method: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(method)
    def run(self: Any, *args: Any) -> Any:
        ctx = getattr(self._rec.state, "context", None)
        if ctx is None:
            return method(self, *args)
        token = otel_context.attach(ctx)
        try:
            return method(self, *args)
        finally:
            otel_context.detach(token)

    return run


def _connection_made(self: Any, transport: Any) -> None:
    # The base class's, with the app's callback through _made (run in the span's context).
    rec = self._rec
    proxy = self._proxy = make_proxy(transport, rec)
    rec.open(transport)
    self._made(proxy)


def context_variant(cls: type) -> type:
    variant = _variants.get(cls)
    if variant is None:
        ns: dict[str, Any] = {"__slots__": (), "connection_made": _connection_made}
        for name in _APP_CALLBACKS:
            method = getattr(cls, name, None)
            if method is not None and name in dir(cls):
                ns[name] = _in_span_context(method)
        variant = _variants[cls] = type(f"InSpanContext{cls.__name__}", (cls,), ns)
    return variant
