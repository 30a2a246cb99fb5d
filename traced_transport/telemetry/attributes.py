"""OpenTelemetry semantic-convention attributes, from a connection's key and extra snapshot.

Metric attributes come from the low-cardinality ConnKey only. Span attributes
may carry peer addresses, ports and certificate details.
"""

from __future__ import annotations

import hashlib
from datetime import datetime, timezone
from typing import Any, Optional

from opentelemetry.trace import SpanKind

from ..datapath.classify import ConnKey

# Python's ssl module reports OpenSSL cipher names; semantic conventions want
# IANA names. TLS 1.3 names are the same in both; TLS 1.2 suites differ, so the
# ones OpenSSL enables by default are mapped here. Anything else keeps its
# OpenSSL name rather than guess.
_OPENSSL_TO_IANA = {
    "ECDHE-ECDSA-AES128-GCM-SHA256": "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256",
    "ECDHE-ECDSA-AES256-GCM-SHA384": "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384",
    "ECDHE-RSA-AES128-GCM-SHA256": "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256",
    "ECDHE-RSA-AES256-GCM-SHA384": "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384",
    "ECDHE-ECDSA-CHACHA20-POLY1305": "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256",
    "ECDHE-RSA-CHACHA20-POLY1305": "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256",
    "DHE-RSA-AES128-GCM-SHA256": "TLS_DHE_RSA_WITH_AES_128_GCM_SHA256",
    "DHE-RSA-AES256-GCM-SHA384": "TLS_DHE_RSA_WITH_AES_256_GCM_SHA384",
    "DHE-RSA-CHACHA20-POLY1305": "TLS_DHE_RSA_WITH_CHACHA20_POLY1305_SHA256",
    "ECDHE-ECDSA-AES128-SHA256": "TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA256",
    "ECDHE-RSA-AES128-SHA256": "TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA256",
    "ECDHE-ECDSA-AES256-SHA384": "TLS_ECDHE_ECDSA_WITH_AES_256_CBC_SHA384",
    "ECDHE-RSA-AES256-SHA384": "TLS_ECDHE_RSA_WITH_AES_256_CBC_SHA384",
    "AES128-GCM-SHA256": "TLS_RSA_WITH_AES_128_GCM_SHA256",
    "AES256-GCM-SHA384": "TLS_RSA_WITH_AES_256_GCM_SHA384",
}


def iana_cipher(openssl_name: str) -> str:
    return _OPENSSL_TO_IANA.get(openssl_name, openssl_name)


_CIPHER_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-")


def safe_cipher_name(openssl_name: str) -> str:
    """The IANA name, fit for a metric label: OpenSSL's suite names are a fixed, small
    set, but anything that does not look like one becomes ``other``."""
    name = iana_cipher(openssl_name)
    if 0 < len(name) <= 64 and _CIPHER_CHARS.issuperset(name):
        return name
    return "other"


def metric_attributes(
    key: ConnKey, error_type: Optional[str] = None, cipher: Optional[str] = None, tls_version: Optional[str] = None
) -> dict[str, Any]:
    """``cipher`` and ``tls_version`` (when the key has none) are for the handshake histogram only."""
    attrs: dict[str, Any] = {"transport.name": key.name, "transport.side": key.side}
    if key.network_transport:
        attrs["network.transport"] = key.network_transport
    if key.network_type:
        attrs["network.type"] = key.network_type
    if key.server_port is not None:
        attrs["server.port"] = key.server_port
    if key.tls_version or tls_version:
        attrs["tls.protocol.version"] = key.tls_version or tls_version
    if cipher:
        attrs["tls.cipher"] = cipher
    if error_type:
        attrs["error.type"] = error_type
    return attrs


def _address(value: Any, address: str, port: str, out: dict[str, Any]) -> None:
    if isinstance(value, tuple) and len(value) >= 2:
        out[address] = str(value[0])
        if isinstance(value[1], int):
            out[port] = value[1]
    elif isinstance(value, (str, bytes)) and value:
        out[address] = value if isinstance(value, str) else value.decode("utf-8", "replace")


def _dn(rdns: Any) -> Optional[str]:
    # getpeercert()'s ((('commonName', 'x'),), ...) -> "CN=x,O=y" (RFC 4514 order: most specific first)
    short = {
        "commonName": "CN",
        "organizationName": "O",
        "organizationalUnitName": "OU",
        "countryName": "C",
        "stateOrProvinceName": "ST",
        "localityName": "L",
        "emailAddress": "emailAddress",
        "domainComponent": "DC",
    }
    try:
        parts = []
        for rdn in reversed(rdns):
            parts.append("+".join(f"{short.get(k, k)}={v}" for k, v in rdn))
        return ",".join(parts) or None
    except (TypeError, ValueError):
        return None


def _not_after(text: Any) -> Optional[str]:
    try:
        ts = datetime.fromtimestamp(__import__("ssl").cert_time_to_seconds(text), tz=timezone.utc)
        return ts.strftime("%Y-%m-%dT%H:%M:%SZ")
    except Exception:  # noqa: BLE001
        return None


# A span's name and kind, its attributes before and after the per-connection
# addresses (in span_attributes' order), and a template: every attribute of a
# plain inet connection's span in order, the per-connection ones None. The same
# for every connection of one key. Copying the template and replacing values
# reuses its keys and size, where building the dict inserts (and resizes) anew.
SpanStatics = tuple[str, SpanKind, dict[str, Any], dict[str, Any], dict[str, Any]]

# The attributes every span gets at its connection's end, in this order (Telemetry._end_attributes).
END_KEYS = (
    "transport.received",
    "transport.sent",
    "transport.reading.pauses",
    "transport.writing.pauses",
    "transport.close_reason",
)

# By ConnKey: keys are interned and few (see classify), so this stays as small as
# the set of attribute sets. Its dicts are only ever copied from, never handed out.
SPAN_STATICS: dict[ConnKey, SpanStatics] = {}


def span_statics(key: ConnKey) -> SpanStatics:
    """``key``'s entry of ``SPAN_STATICS``, made (readers try the dict first: a hit costs no call)."""
    head: dict[str, Any] = {"transport.name": key.name, "transport.side": key.side}
    if key.network_transport:
        head["network.transport"] = key.network_transport
    if key.network_type:
        head["network.type"] = key.network_type
    tail: dict[str, Any] = {} if key.server_port is None else {"server.port": key.server_port}
    kind = SpanKind.SERVER if key.side == "server" else SpanKind.CLIENT
    template = {
        **head,
        "network.peer.address": None,
        "network.peer.port": None,
        "network.local.address": None,
        "network.local.port": None,
        **tail,
        **dict.fromkeys(END_KEYS),
    }
    statics = SPAN_STATICS[key] = (f"{key.name} connection", kind, head, tail, template)
    return statics


def span_attributes(key: ConnKey, extra: dict[str, Any], *, certificate_subjects: bool = True) -> dict[str, Any]:
    try:
        _, _, head, tail, _ = SPAN_STATICS[key]
    except KeyError:
        _, _, head, tail, _ = span_statics(key)
    attrs = head.copy()
    _address(extra.get("peername"), "network.peer.address", "network.peer.port", attrs)
    _address(extra.get("sockname"), "network.local.address", "network.local.port", attrs)
    if tail:
        attrs.update(tail)
    if "tls_version" in extra:
        attrs.update(tls_attributes(extra, certificate_subjects=certificate_subjects))
    return attrs


def tls_attributes(extra: dict[str, Any], *, certificate_subjects: bool = True) -> dict[str, Any]:
    attrs: dict[str, Any] = {}
    version = extra.get("tls_version")
    if not isinstance(version, str):
        return attrs
    name, _, number = version.partition("v")
    attrs["tls.protocol.name"] = name.lower() if number else "tls"
    attrs["tls.protocol.version"] = number or version
    attrs["tls.established"] = True
    cipher = extra.get("cipher")
    if isinstance(cipher, tuple) and cipher and isinstance(cipher[0], str):
        attrs["tls.cipher"] = iana_cipher(cipher[0])
    alpn = extra.get("alpn")
    if isinstance(alpn, str):
        attrs["tls.next_protocol"] = alpn.lower()
    if isinstance(extra.get("session_reused"), bool):
        attrs["tls.resumed"] = extra["session_reused"]
    # The peer's certificate: the client's on the server side, the server's on the client side.
    peer = "tls.client" if extra.get("server_side") else "tls.server"
    cert = extra.get("peercert")
    if isinstance(cert, dict) and cert:
        if certificate_subjects:
            subject = _dn(cert.get("subject", ()))
            if subject:
                attrs[f"{peer}.subject"] = subject
        issuer = _dn(cert.get("issuer", ()))
        if issuer:
            attrs[f"{peer}.issuer"] = issuer
        for field, attr in (("notAfter", "not_after"), ("notBefore", "not_before")):
            when = _not_after(cert.get(field))
            if when:
                attrs[f"{peer}.{attr}"] = when
    der = extra.get("peercert_der")
    if isinstance(der, (bytes, bytearray)) and der:
        attrs[f"{peer}.hash.sha256"] = hashlib.sha256(der).hexdigest().upper()
    return attrs
