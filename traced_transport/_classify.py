"""Low-cardinality attributes of a connection, computed once when it opens.

Only values that are safe as metric labels come out of here: never a peer
address or port (those belong on spans).
"""
from __future__ import annotations

import socket
from typing import Any, NamedTuple, Optional


class ConnKey(NamedTuple):
    name: str
    side: str
    network_transport: Optional[str]  # tcp | udp | unix | pipe
    network_type: Optional[str]  # ipv4 | ipv6
    server_port: Optional[int]  # server side only
    tls_version: Optional[str]  # "1.2", "1.3", ...


# Interning keeps one tuple per attribute set, however many connections share it.
_interned: dict[ConnKey, ConnKey] = {}


def _intern(key: ConnKey) -> ConnKey:
    return _interned.setdefault(key, key)


def tls_version_of(transport: Any) -> Optional[str]:
    ssl_object = transport.get_extra_info("ssl_object")
    if ssl_object is None:
        return None
    version = ssl_object.version()  # "TLSv1.3"; None before the handshake
    if not isinstance(version, str):
        return None
    for prefix in ("TLSv", "SSLv"):
        if version.startswith(prefix):
            return version[len(prefix):]
    return version


def conn_key(group: Any, transport: Any) -> ConnKey:
    net_transport = net_type = port = tls = None
    if transport is not None:
        # Pipes first: uvloop gives pipe transports a pseudo-socket that says AF_UNIX.
        sock = None if transport.get_extra_info("pipe") is not None else transport.get_extra_info("socket")
        family = getattr(sock, "family", None)
        if family is None:
            net_transport = "pipe"
        else:
            if family == socket.AF_UNIX:
                net_transport = "unix"
            else:
                net_transport = "udp" if getattr(sock, "type", None) == socket.SOCK_DGRAM else "tcp"
                net_type = "ipv6" if family == socket.AF_INET6 else "ipv4"
                if group.side == "server":
                    sockname = transport.get_extra_info("sockname")
                    if isinstance(sockname, tuple) and len(sockname) >= 2 and isinstance(sockname[1], int):
                        port = sockname[1]
            tls = tls_version_of(transport)
    return _intern(ConnKey(group.name, group.side, net_transport, net_type, port, tls))
