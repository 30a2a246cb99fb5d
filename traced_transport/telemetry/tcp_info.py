"""The kernel's view of a TCP connection: Linux ``getsockopt(TCP_INFO)``.

What asyncio sees (pauses, buffered bytes) explains half of a slow connection;
the kernel knows round-trip time, retransmissions, unsent bytes and
unacknowledged segments. Envoy's ``tcp_stats`` transport socket reads the same
struct at close; the names below map to its ``cx_*`` stats (docs/tcp-info.md).

``struct tcp_info`` (``linux/tcp.h``) only ever grows at its end, and the kernel
copies ``min(asked, sizeof)`` bytes: a field is read only when the bytes this
kernel returned reach past it, and left ``None`` otherwise. Anything but a
Linux TCP socket (macOS, Windows, Unix sockets, UDP, pipes, a socket already
closed) gives ``None``, never an exception.
"""

from __future__ import annotations

import os
import socket
import struct
import sys
from typing import TYPE_CHECKING, Any, Optional

ENV = "TRACED_TRANSPORT_TCP_INFO"

# Linux's struct only: FreeBSD has a TCP_INFO option too, with another layout.
_TCP_INFO: Optional[int] = getattr(socket, "TCP_INFO", None) if sys.platform.startswith("linux") else None
_IPPROTO_TCP = socket.IPPROTO_TCP
_SOCK_STREAM = socket.SOCK_STREAM
_AF_INET = socket.AF_INET
# More than any kernel's struct today; the kernel returns only what it has.
_ASK = 256

# (field, offset, struct format) from linux/tcp.h. Times are in microseconds,
# windows in segments, delivery_rate in bytes per second.
_FIELDS: tuple[tuple[str, int, str], ...] = (
    ("state", 0, "B"),
    ("retransmits", 2, "B"),
    ("rto", 8, "I"),
    ("snd_mss", 16, "I"),
    ("unacked", 24, "I"),
    ("lost", 32, "I"),
    ("retrans", 36, "I"),
    ("pmtu", 60, "I"),
    ("rtt", 68, "I"),
    ("rttvar", 72, "I"),
    ("snd_ssthresh", 76, "I"),
    ("snd_cwnd", 80, "I"),
    ("total_retrans", 100, "I"),
    ("bytes_acked", 120, "Q"),
    ("bytes_received", 128, "Q"),
    ("segs_out", 136, "I"),
    ("segs_in", 140, "I"),
    ("notsent_bytes", 144, "I"),
    ("min_rtt", 148, "I"),
    ("delivery_rate", 160, "Q"),
    ("bytes_sent", 200, "Q"),
    ("bytes_retrans", 208, "Q"),
)
_STRUCTS = {fmt: struct.Struct("=" + fmt) for fmt in "BIQ"}
# Every kernel since 4.6 returns at least the first 168 bytes (through
# delivery_rate): one unpack of the fields above from those (pad bytes for the
# rest, so no int objects for fields nobody reads), each field a property
# indexing the result.
_PREFIX_SIZE = 168


def _prefix_struct() -> tuple[struct.Struct, dict[str, int]]:
    index: dict[str, int]
    fmt, at, index = "<", 0, {}
    for name, offset, code in sorted(_FIELDS, key=lambda f: f[1]):
        size = _STRUCTS[code].size
        if offset + size > _PREFIX_SIZE:
            continue
        fmt += "x" * (offset - at) + code
        at = offset + size
        index[name] = len(index)
    fmt += "x" * (_PREFIX_SIZE - at)
    return struct.Struct(fmt), index


_PREFIX, _PREFIX_INDEX = _prefix_struct()
assert _PREFIX.size == _PREFIX_SIZE
_RTT, _SEGS_OUT, _TOTAL_RETRANS = (_PREFIX_INDEX[n] for n in ("rtt", "segs_out", "total_retrans"))


def _field(name: str, offset: int, fmt: str) -> property:
    size = _STRUCTS[fmt].size
    unpack_from = _STRUCTS[fmt].unpack_from
    i = _PREFIX_INDEX.get(name)
    if i is not None:

        def fget(self: TcpInfo) -> Optional[int]:
            values = self._values
            if values is not None:
                return values[i]
            return unpack_from(self._raw, offset)[0] if offset + size <= self.length else None

    else:

        def fget(self: TcpInfo) -> Optional[int]:
            return unpack_from(self._raw, offset)[0] if offset + size <= self.length else None

    return property(fget, doc=f"tcpi_{name} (linux/tcp.h), None if this kernel's struct stops before it")


class TcpInfo:
    """One ``TCP_INFO`` read; a field is ``None`` where this kernel's struct stops short of it."""

    __slots__ = ("length", "_raw", "_values")

    if TYPE_CHECKING:
        state: Optional[int]
        retransmits: Optional[int]
        rto: Optional[int]
        snd_mss: Optional[int]
        unacked: Optional[int]
        lost: Optional[int]
        retrans: Optional[int]
        pmtu: Optional[int]
        rtt: Optional[int]
        rttvar: Optional[int]
        snd_ssthresh: Optional[int]
        snd_cwnd: Optional[int]
        total_retrans: Optional[int]
        bytes_acked: Optional[int]
        bytes_received: Optional[int]
        segs_out: Optional[int]
        segs_in: Optional[int]
        notsent_bytes: Optional[int]
        min_rtt: Optional[int]
        delivery_rate: Optional[int]
        bytes_sent: Optional[int]
        bytes_retrans: Optional[int]

    def __init__(self, raw: bytes) -> None:
        self._raw = raw
        n = self.length = len(raw)
        # Short of the prefix (kernels before 4.6): each field on its own.
        self._values: Optional[tuple[int, ...]] = _PREFIX.unpack_from(raw) if n >= _PREFIX_SIZE else None

    def end_counts(self) -> tuple[Optional[int], Optional[int], Optional[int]]:
        """``(rtt, segs_out, total_retrans)``: what every connection's end records, without three property calls."""
        values = self._values
        if values is not None:
            return values[_RTT], values[_SEGS_OUT], values[_TOTAL_RETRANS]
        return self.rtt, self.segs_out, self.total_retrans

    def as_dict(self) -> dict[str, int]:
        """The fields this kernel returned."""
        out = {}
        for name, _, _ in _FIELDS:
            value = getattr(self, name)
            if value is not None:
                out[name] = value
        return out

    def __repr__(self) -> str:
        return f"<TcpInfo {self.as_dict()}>"


for _name, _offset, _fmt in _FIELDS:
    setattr(TcpInfo, _name, _field(_name, _offset, _fmt))


def parse(raw: bytes) -> TcpInfo:
    """``raw`` as returned by ``getsockopt(IPPROTO_TCP, TCP_INFO, n)``, of whatever length."""
    return TcpInfo(raw)


_socket_of_fd = socket.socket
_PseudoSocket: Optional[type[Any]] = None
try:
    from uvloop.loop import PseudoSocket as _PseudoSocket  # type: ignore[no-redef,attr-defined]  # not in uvloop's stubs
except Exception:  # noqa: BLE001 - no uvloop, or one without it: asyncio sockets only
    pass


def read_tcp_info(transport: Any) -> Optional[TcpInfo]:
    """The kernel's ``TCP_INFO`` for ``transport``'s socket, or None (not Linux, not TCP, closed). Never raises.

    Over TLS the socket is the TCP one under it, as ``get_extra_info("socket")`` gives it.
    """
    if _TCP_INFO is None or transport is None:
        return None
    try:
        sock = transport.get_extra_info("socket")
        if sock is None:
            return None
        if type(sock) is _PseudoSocket:
            # uvloop's pseudo-socket makes a socket object per getsockopt and asks
            # the kernel for its family, type and protocol first: giving them
            # skips three syscalls. The object only borrows the descriptor
            # (detached before it can close it), as uvloop's own does; a closed
            # uvloop transport's cached pseudo-socket says -1.
            fd = sock.fileno()
            if fd < 0:
                return None
            borrowed = _socket_of_fd(_AF_INET, _SOCK_STREAM, 0, fd)
            try:
                raw = borrowed.getsockopt(_IPPROTO_TCP, _TCP_INFO, _ASK)
            finally:
                borrowed.detach()
        else:
            # A closed asyncio socket has fileno -1: never another connection's
            # reused descriptor. UDP and Unix sockets refuse TCP_INFO (EOPNOTSUPP).
            raw = sock.getsockopt(_IPPROTO_TCP, _TCP_INFO, _ASK)
        return TcpInfo(raw)
    except Exception:  # noqa: BLE001 - closed under us, not TCP, not a real socket: nothing to say
        return None


def tcp_span_attributes(info: Optional[TcpInfo]) -> dict[str, Any]:
    """Span attributes (``transport.tcp.*``) of one read: seconds, segments, bytes, bytes per second."""
    if info is None:
        return {}
    attrs: dict[str, Any] = {}
    if info.rtt is not None:
        attrs["transport.tcp.rtt"] = info.rtt / 1e6
    if info.rttvar is not None:
        attrs["transport.tcp.rtt_variance"] = info.rttvar / 1e6
    if info.min_rtt is not None:
        attrs["transport.tcp.min_rtt"] = info.min_rtt / 1e6
    if info.retransmits is not None:
        attrs["transport.tcp.retransmits"] = info.retransmits
    if info.total_retrans is not None:
        attrs["transport.tcp.total_retrans"] = info.total_retrans
    if info.segs_out is not None:
        attrs["transport.tcp.segments.sent"] = info.segs_out
    if info.snd_cwnd is not None:
        attrs["transport.tcp.snd_cwnd"] = info.snd_cwnd
    if info.delivery_rate is not None:
        attrs["transport.tcp.delivery_rate"] = info.delivery_rate
    if info.pmtu is not None:
        attrs["transport.tcp.pmtu"] = info.pmtu
    return attrs


def tcp_info_row(transport: Any) -> dict[str, Any]:
    """For a live view, read on request: ``{"rtt_s", "retransmits", "total_retrans", "unacked", "notsent_bytes"}``.

    Empty for anything but a Linux TCP connection. Safe from any thread (one
    getsockopt; a socket closed meanwhile gives an empty dict).
    """
    info = read_tcp_info(transport)
    if info is None:
        return {}
    return {
        "rtt_s": None if info.rtt is None else info.rtt / 1e6,
        "retransmits": info.retransmits,
        "total_retrans": info.total_retrans,
        "unacked": info.unacked,
        "notsent_bytes": info.notsent_bytes,
    }


def retransmitted_share(info: TcpInfo) -> Optional[float]:
    """Retransmitted segments over segments sent (Envoy's cx_tx_percent_retransmitted_segments / 100)."""
    if info.segs_out and info.total_retrans is not None:
        return info.total_retrans / info.segs_out
    return None


def supported() -> bool:
    """Whether this platform has Linux's TCP_INFO."""
    return _TCP_INFO is not None


def enabled_by_env(environ: Any = os.environ) -> bool:
    return environ.get(ENV, "").strip().lower() in ("1", "true", "yes", "on")


__all__ = [
    "ENV",
    "TcpInfo",
    "enabled_by_env",
    "parse",
    "read_tcp_info",
    "retransmitted_share",
    "supported",
    "tcp_info_row",
    "tcp_span_attributes",
]
