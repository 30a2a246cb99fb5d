"""Low-cardinality attributes of a connection, computed once when it opens.

Only values that are safe as metric labels come out of here: never a peer
address or port (those belong on spans).
"""

from __future__ import annotations

import socket
from typing import Any, NamedTuple, Optional

from ..report import report


class ConnKey(NamedTuple):
    name: str
    side: str
    network_transport: Optional[str]  # tcp | udp | unix | pipe
    network_type: Optional[str]  # ipv4 | ipv6
    server_port: Optional[int]  # server side only
    tls_version: Optional[str]  # "1.2", "1.3", ...


# Interning keeps one tuple per attribute set, however many connections share it.
# Looked up with a plain tuple (equal to the ConnKey), so a connection with an
# already-seen attribute set allocates nothing here.
_interned: dict[tuple[Any, ...], ConnKey] = {}

_AF_UNIX = socket.AF_UNIX
_AF_INET6 = socket.AF_INET6
_SOCK_DGRAM = socket.SOCK_DGRAM


def _intern(raw: tuple[Any, ...]) -> ConnKey:
    key = _interned.get(raw)
    if key is None:
        key = _interned[raw] = ConnKey(*raw)
    return key


def tls_version_of(transport: Any) -> Optional[str]:
    ssl_object = transport.get_extra_info("ssl_object")
    if ssl_object is None:
        return None
    version = ssl_object.version()  # "TLSv1.3"; None before the handshake
    if not isinstance(version, str):
        return None
    for prefix in ("TLSv", "SSLv"):
        if version.startswith(prefix):
            return version[len(prefix) :]
    return version


# Transport class -> "tcp" | "udp", learned from the first connection of that class
# whose socket said so. A class is stream or datagram for good, and the family
# shows in the sockname's shape, so later connections skip get_extra_info("socket")
# (uvloop makes a new pseudo-socket object per call) and the enum conversion of
# its family, which were most of what classifying a connection cost.
_inet_kind: dict[type, str] = {}


def conn_key(group: Any, transport: Any) -> ConnKey:
    """Runs once per connection: kept to a few get_extra_info calls."""
    if transport is None:
        return _intern((group.name, group.side, None, None, None, None))
    get = transport.get_extra_info
    kind = _inet_kind.get(type(transport))
    if kind is not None:
        sockname = get("sockname")
        if type(sockname) is tuple and (len(sockname) == 2 or len(sockname) == 4):
            port = sockname[1] if group.side == "server" and type(sockname[1]) is int else None
            tls = tls_version_of(transport) if kind == "tcp" else None
            return _intern((group.name, group.side, kind, "ipv6" if len(sockname) == 4 else "ipv4", port, tls))
    return _conn_key_from_socket(group, transport, get)


def _conn_key_from_socket(group: Any, transport: Any, get: Any) -> ConnKey:
    sock = get("socket")
    family = getattr(sock, "family", None)
    net_type = port = None
    if family is None:
        net_transport = "pipe"
    elif family == _AF_UNIX:
        # uvloop gives pipe transports a pseudo-socket that says AF_UNIX.
        net_transport = "pipe" if get("pipe") is not None else "unix"
    else:
        net_transport = "udp" if getattr(sock, "type", None) == _SOCK_DGRAM else "tcp"
        net_type = "ipv6" if family == _AF_INET6 else "ipv4"
        sockname = get("sockname")
        if type(sockname) is tuple and len(sockname) == (4 if family == _AF_INET6 else 2):
            if type(sockname[1]) is int:
                if group.side == "server":
                    port = sockname[1]
                _inet_kind.setdefault(type(transport), net_transport)
    tls = tls_version_of(transport) if net_transport != "pipe" else None
    return _intern((group.name, group.side, net_transport, net_type, port, tls))


# Transport classes seen carrying TLS (the version is part of the key) or an
# unusual sockname: their connections are classified one by one.
_uncached: set[type] = set()


def key_for(group: Any, transport: Any) -> ConnKey:
    """``conn_key``, cached per group on what can differ between its connections.

    A group's connections on one transport class share every attribute but the
    address family and, on the server side, the listening port: both show in
    the sockname, so one get_extra_info call and a dict lookup classify a
    connection whose kind was seen before.
    """
    cls = type(transport)
    if cls in _inet_kind and cls not in _uncached:
        sockname = transport.get_extra_info("sockname")
        if type(sockname) is tuple and sockname:
            cache_key = (cls, len(sockname), sockname[1] if group.side == "server" else None)
            key: Optional[ConnKey] = group.keys.get(cache_key)
            if key is None:
                key = conn_key(group, transport)
                if key.tls_version is None and key.network_type is not None:
                    group.keys[cache_key] = key
                else:
                    _uncached.add(cls)
            return key
    key = conn_key(group, transport)
    if key.tls_version is not None:
        _uncached.add(cls)
    return key


_FAMILY_OF_TYPE = {"ipv4": int(socket.AF_INET), "ipv6": int(_AF_INET6)}


def classify(group: Any, transport: Any) -> ConnKey:
    """A new connection's ConnKey, when its group has none fixed for its transport class.

    While every connection of the group comes from one listening socket (the
    loop hooks tell the group, see ``Group.listening_on``), they all share one
    attribute set per transport class: the first one's is kept in
    ``group.fixed_keys`` and the others skip classification altogether. Never
    raises: a transport that fails to answer gets the attributes of an unknown one.
    """
    try:
        key = key_for(group, transport)
    except Exception as exc:  # noqa: BLE001
        report("classify", exc)
        return conn_key(group, None)
    listeners = group.listeners
    if listeners is not None and len(listeners) == 1 and key.tls_version is None and type(transport) not in _uncached:
        ((family, port),) = listeners
        if key.network_transport == "unix" and family == _AF_UNIX:
            group.fixed_keys[type(transport)] = key
        elif (
            key.network_transport == "tcp"
            and _FAMILY_OF_TYPE.get(key.network_type or "") == family
            and key.server_port == (port if key.side == "server" else None)
        ):
            group.fixed_keys[type(transport)] = key
    return key
