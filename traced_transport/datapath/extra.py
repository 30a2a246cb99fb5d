"""A snapshot of what ``transport.get_extra_info()`` knows about a connection.

Taken once, when a connection opens, and only when something will use it (a
recording span, an access log, ``traced(capture_extra=True)``): reading the
peer certificate is not free. Every read is guarded, because transports from
other libraries may raise, return None, or return odd types.
"""

from __future__ import annotations

from operator import attrgetter, methodcaller
from typing import Any

from ..report import report

# What the SSL object is asked, by snapshot key. C-level callables: no Python
# frame per field, and nothing made per connection.
_SSL_FIELDS: tuple[tuple[str, Any], ...] = (
    ("cipher", methodcaller("cipher")),
    ("tls_version", methodcaller("version")),
    ("alpn", methodcaller("selected_alpn_protocol")),
    ("compression", methodcaller("compression")),
    ("peercert", methodcaller("getpeercert")),
    ("peercert_der", methodcaller("getpeercert", binary_form=True)),
    ("session_reused", attrgetter("session_reused")),
    ("server_side", attrgetter("server_side")),
)


def _get(transport: Any, name: str) -> Any:
    try:
        return transport.get_extra_info(name)
    except Exception as exc:  # noqa: BLE001
        report(f"get_extra_info({name!r})", exc)
        return None


def snapshot_extra(transport: Any, tls: bool = True) -> dict[str, Any]:
    """peername, sockname, cipher, tls_version, alpn, compression, peercert, peercert_der.

    ``tls=False``: the caller knows the connection has no TLS (its ConnKey has
    no version), so the SSL object is not asked for.
    """
    try:
        get = transport.get_extra_info
        peername = get("peername")
        sockname = get("sockname")
    except Exception:  # noqa: BLE001 - asked again one by one, so each failure is reported
        peername = _get(transport, "peername")
        sockname = _get(transport, "sockname")
    out: dict[str, Any] = {}
    if peername is not None:
        out["peername"] = peername
    if sockname is not None:
        out["sockname"] = sockname
    if not tls:
        return out
    ssl_object = _get(transport, "ssl_object")
    if ssl_object is None:
        return out
    # From the SSL object directly when we have it: one place for every field,
    # and the DER certificate, which get_extra_info does not give.
    for key, call in _SSL_FIELDS:
        try:
            value = call(ssl_object)
        except Exception as exc:  # noqa: BLE001
            report(f"ssl_object.{key}", exc)
            continue
        if value is not None and value != {}:
            out[key] = value
    return out
