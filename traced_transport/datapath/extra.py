"""A snapshot of what ``transport.get_extra_info()`` knows about a connection.

Taken once, when a connection opens, and only when something will use it (a
recording span, an access log, ``traced(capture_extra=True)``): reading the
peer certificate is not free. Every read is guarded, because transports from
other libraries may raise, return None, or return odd types.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ..report import report

_SIMPLE = ("peername", "sockname")


def _get(transport: Any, name: str) -> Any:
    try:
        return transport.get_extra_info(name)
    except Exception as exc:  # noqa: BLE001
        report(f"get_extra_info({name!r})", exc)
        return None


def snapshot_extra(transport: Any) -> dict[str, Any]:
    """peername, sockname, cipher, tls_version, alpn, compression, peercert, peercert_der."""
    out: dict[str, Any] = {}
    for name in _SIMPLE:
        value = _get(transport, name)
        if value is not None:
            out[name] = value
    ssl_object = _get(transport, "ssl_object")
    if ssl_object is None:
        return out
    # From the SSL object directly when we have it: one place for every field,
    # and the DER certificate, which get_extra_info does not give.
    calls: tuple[tuple[str, Callable[[], Any]], ...] = (
        ("cipher", lambda: ssl_object.cipher()),
        ("tls_version", lambda: ssl_object.version()),
        ("alpn", lambda: ssl_object.selected_alpn_protocol()),
        ("compression", lambda: ssl_object.compression()),
        ("peercert", lambda: ssl_object.getpeercert()),
        ("peercert_der", lambda: ssl_object.getpeercert(binary_form=True)),
        ("session_reused", lambda: ssl_object.session_reused),
        ("server_side", lambda: ssl_object.server_side),
    )
    for key, call in calls:
        try:
            value = call()
        except Exception as exc:  # noqa: BLE001
            report(f"ssl_object.{key}", exc)
            continue
        if value is not None and value != {}:
            out[key] = value
    return out
