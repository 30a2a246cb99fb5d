"""The live-connections view: one JSON row per live connection, filtered, sorted and limited.

What metrics cannot say (which connections, from where, since when, how much
buffered) without a label per peer. Served at ``/connections`` on the scrape
endpoint when it is enabled (``ScrapeEndpoint(connections=True)``,
``setup(connections=True)``, ``traced-transport run --connections``); never
turned into a metric label.

Cost model: a request runs on the endpoint's thread, never on the event loop.
It copies the registry's live list under the registry lock (the same short
hold a scrape takes), then reads each record's integer fields without any
lock. What never changes during a connection (peer, local address, TLS) is
read once per connection and cached here; the write-buffer size and the trace
id are read only for the rows returned, unless a filter or sort needs them.
The thread hands the GIL over after every millisecond of work, so the loop
is never held off for long (docs/live-view.md has the measurements).

Why one module of this size: a row's fields, the filters and sorts over them,
and the two sources (one process's registry, the workers' files) share one row
schema; split, each part would repeat it. The HTTP side is ``connections_page``,
the terminal side ``top``.
"""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Callable, Mapping
from operator import attrgetter
from typing import Any, Optional

from traced_transport.datapath.record import WALL_OFFSET, ConnectionRecord
from traced_transport.datapath.registry import Registry
from traced_transport.telemetry.attributes import iana_cipher
from traced_transport.telemetry.tcp_info import tcp_info_row

__all__ = [
    "Conn",
    "DEFAULT_LIMIT",
    "MAX_LIMIT",
    "NUMERIC_FIELDS",
    "QueryError",
    "RegistryConnections",
    "query",
]

FORMAT = 1
DEFAULT_LIMIT = 100
MAX_LIMIT = 1000
# Work between two GIL releases while a request walks the live list (the loop thread waits at most this).
_SLICE_S = 0.001
_HANDOFF_S = 0.0001

# Every field of a row, in table order.
FIELDS = (
    "instance",
    "id",
    "name",
    "side",
    "transport",
    "peer",
    "local",
    "opened_at",
    "age_s",
    "rx_bytes",
    "tx_bytes",
    "rx_bytes_per_s",
    "tx_bytes_per_s",
    "reading_paused",
    "reading_paused_since",
    "reading_paused_for_s",
    "read_pauses",
    "read_paused_total_s",
    "writing_paused",
    "writing_paused_since",
    "writing_paused_for_s",
    "write_pauses",
    "write_paused_total_s",
    "write_buffer_bytes",
    "tls_version",
    "tls_cipher",
    "tls_alpn",
    "tls_client_subject",
    "trace_id",
    "tcp_rtt_s",
    "tcp_total_retrans",
)
NUMERIC_FIELDS = frozenset(
    {
        "opened_at",
        "age_s",
        "rx_bytes",
        "tx_bytes",
        "rx_bytes_per_s",
        "tx_bytes_per_s",
        "reading_paused_for_s",
        "read_pauses",
        "read_paused_total_s",
        "writing_paused_for_s",
        "write_pauses",
        "write_paused_total_s",
        "write_buffer_bytes",
    }
)
TEXT_FIELDS = frozenset({"instance", "name", "side", "transport", "peer", "local", "tls_version", "tls_cipher"})
SORT_FIELDS = NUMERIC_FIELDS | TEXT_FIELDS
_PAUSED = ("any", "reading", "writing", "none")


class QueryError(ValueError):
    """A query parameter that cannot be honoured (answered with 400)."""


class _Yield:
    """Hands the GIL to other threads (the event loop's) after every ``slice_s`` of work.

    A request runs on the endpoint's thread; without this, the interpreter's
    switch interval alone decides when the loop thread gets the GIL back.
    ``sleep(0)`` is not enough: this thread usually takes the GIL straight
    back before the waiting one is scheduled; a short real sleep lets it run.
    """

    __slots__ = ("slice_s", "next")

    def __init__(self, slice_s: float) -> None:
        self.slice_s = slice_s
        self.next = time.perf_counter() + slice_s

    def __call__(self) -> None:
        now = time.perf_counter()
        if now >= self.next:
            time.sleep(_HANDOFF_S)
            self.next = time.perf_counter() + self.slice_s


class Conn:
    """One connection's row, from plain values (a worker's file); :class:`LiveConn` reads a live record."""

    __slots__ = (
        "instance",
        "id",
        "name",
        "side",
        "transport",
        "peer",
        "local",
        "opened_at",
        "rx_bytes",
        "tx_bytes",
        "rx_bytes_per_s",
        "tx_bytes_per_s",
        "reading_paused_since",
        "read_pauses",
        "read_paused_s",
        "writing_paused_since",
        "write_pauses",
        "write_paused_s",
        "write_buffer_bytes",
        "tls_version",
        "tls_cipher",
        "tls_alpn",
        "tls_client_subject",
        "trace_id",
        "tcp_rtt_s",
        "tcp_total_retrans",
    )

    def __init__(self) -> None:
        self.instance: Optional[str] = None
        self.id = ""
        self.name = self.side = ""
        self.transport: Optional[str] = None
        self.peer: Optional[str] = None
        self.local: Optional[str] = None
        self.opened_at = 0.0
        self.rx_bytes = self.tx_bytes = 0
        self.rx_bytes_per_s = self.tx_bytes_per_s = 0.0
        self.reading_paused_since: Optional[float] = None
        self.writing_paused_since: Optional[float] = None
        self.read_pauses = self.write_pauses = 0
        self.read_paused_s = self.write_paused_s = 0.0
        self.write_buffer_bytes: Optional[int] = None
        self.tls_version: Optional[str] = None
        self.tls_cipher: Optional[str] = None
        self.tls_alpn: Optional[str] = None
        self.tls_client_subject: Optional[str] = None
        self.trace_id: Optional[str] = None
        # The kernel's view (Linux TCP): read for shown rows only, at request time.
        self.tcp_rtt_s: Optional[float] = None
        self.tcp_total_retrans: Optional[int] = None

    static_done = True  # a row from a file has every field already

    def prepare(self, static: bool = True) -> None:
        """Read what is read only for rows that are shown (or filtered/sorted by): nothing here."""

    # -- derived fields ----------------------------------------------------------------
    def value(self, field: str, now: float) -> Any:
        if field == "age_s":
            return now - self.opened_at
        if field == "reading_paused_for_s":
            since = self.reading_paused_since
            return None if since is None else now - since
        if field == "writing_paused_for_s":
            since = self.writing_paused_since
            return None if since is None else now - since
        if field == "read_paused_total_s":
            since = self.reading_paused_since
            return self.read_paused_s + (0.0 if since is None else now - since)
        if field == "write_paused_total_s":
            since = self.writing_paused_since
            return self.write_paused_s + (0.0 if since is None else now - since)
        if field == "reading_paused":
            return self.reading_paused_since is not None
        if field == "writing_paused":
            return self.writing_paused_since is not None
        return getattr(self, field)

    def as_dict(self, now: float) -> dict:
        rs = self.reading_paused_since
        ws = self.writing_paused_since
        read_for = None if rs is None else now - rs
        write_for = None if ws is None else now - ws
        return {
            "instance": self.instance,
            "id": self.id,
            "name": self.name,
            "side": self.side,
            "transport": self.transport,
            "peer": self.peer,
            "local": self.local,
            "opened_at": self.opened_at,
            "age_s": now - self.opened_at,
            "rx_bytes": self.rx_bytes,
            "tx_bytes": self.tx_bytes,
            "rx_bytes_per_s": self.rx_bytes_per_s,
            "tx_bytes_per_s": self.tx_bytes_per_s,
            "reading_paused": rs is not None,
            "reading_paused_since": rs,
            "reading_paused_for_s": read_for,
            "read_pauses": self.read_pauses,
            "read_paused_total_s": self.read_paused_s + (read_for or 0.0),
            "writing_paused": ws is not None,
            "writing_paused_since": ws,
            "writing_paused_for_s": write_for,
            "write_pauses": self.write_pauses,
            "write_paused_total_s": self.write_paused_s + (write_for or 0.0),
            "write_buffer_bytes": self.write_buffer_bytes,
            "tls_version": self.tls_version,
            "tls_cipher": self.tls_cipher,
            "tls_alpn": self.tls_alpn,
            "tls_client_subject": self.tls_client_subject,
            "trace_id": self.trace_id,
            "tcp_rtt_s": self.tcp_rtt_s,
            "tcp_total_retrans": self.tcp_total_retrans,
        }

    @classmethod
    def from_dict(cls, row: Mapping, instance: Optional[str]) -> Conn:
        """A row another process wrote (multi-worker): its epoch times stay valid here."""
        c = cls()
        for f in _STORED:
            if f in row:
                setattr(c, f, row[f])
        c.read_paused_s = _num(row.get("read_paused_closed_s"), 0.0)
        c.write_paused_s = _num(row.get("write_paused_closed_s"), 0.0)
        c.instance = instance if instance is not None else row.get("instance")
        return c

    def for_file(self) -> dict:
        """The row as a worker writes it: epoch times only, so the reader recomputes ages."""
        out = {f: getattr(self, f) for f in _STORED}
        out["read_paused_closed_s"] = self.read_paused_s
        out["write_paused_closed_s"] = self.write_paused_s
        return out


_DERIVED = frozenset(
    {
        "age_s",
        "reading_paused",
        "writing_paused",
        "reading_paused_for_s",
        "writing_paused_for_s",
        "read_paused_total_s",
        "write_paused_total_s",
    }
)
_STORED = tuple(f for f in FIELDS if f not in _DERIVED)


def _num(v: Any, default: float) -> float:
    return v if isinstance(v, (int, float)) and not isinstance(v, bool) else default


# -- reading a record ----------------------------------------------------------------------
def _address(value: Any) -> Optional[str]:
    if isinstance(value, tuple) and len(value) >= 2:
        host = value[0]
        return f"[{host}]:{value[1]}" if ":" in str(host) else f"{host}:{value[1]}"
    if isinstance(value, (str, bytes)) and value:
        return value.decode("utf-8", "replace") if isinstance(value, bytes) else value
    return None


def _get(transport: Any, name: str) -> Any:
    try:
        return transport.get_extra_info(name)
    except Exception:  # noqa: BLE001 - closing under us, or a foreign transport
        return None


def _subject(cert: Any) -> Optional[str]:
    if not isinstance(cert, dict):
        return None
    try:
        parts = [f"{k}={v}" for rdn in cert.get("subject", ()) for k, v in rdn]
    except (TypeError, ValueError):
        return None
    return ",".join(parts) or None


class LiveConn(Conn):
    """A live record's row: counts and pause states read from the record when asked for.

    Made once per connection and kept between requests (the rate samples live
    here); the peer, local address and TLS fields are read from the transport
    the first time a request needs them.
    """

    __slots__ = ("rec", "static_done", "tls_done", "prev_t", "prev_rx", "prev_tx", "cur_t", "cur_rx", "cur_tx")

    def __init__(self, rec: ConnectionRecord, instance: str, wall: float) -> None:
        # Only what every request needs; Conn.__init__'s defaults are set in prepare().
        self.rec = rec
        self.instance = instance
        self.id = format(id(rec), "x")
        self.opened_at = rec.opened_at + WALL_OFFSET
        self.static_done = self.tls_done = False
        self.prev_t, self.prev_rx, self.prev_tx = self.opened_at, 0, 0
        self.cur_t, self.cur_rx, self.cur_tx = wall, rec.rx, rec.tx

    # Read from the record at the time of the request.
    @property
    def name(self) -> str:  # type: ignore[override]
        return self.rec.group.name

    @property
    def side(self) -> str:  # type: ignore[override]
        return self.rec.group.side

    @property
    def transport(self) -> Optional[str]:  # type: ignore[override]
        return getattr(self.rec.key, "network_transport", None)

    @property
    def rx_bytes(self) -> int:  # type: ignore[override]
        return self.rec.rx

    @property
    def tx_bytes(self) -> int:  # type: ignore[override]
        return self.rec.tx

    @property
    def rx_bytes_per_s(self) -> float:  # type: ignore[override]
        dt = self.cur_t - self.prev_t
        return (self.cur_rx - self.prev_rx) / dt if dt > 0 else 0.0

    @property
    def tx_bytes_per_s(self) -> float:  # type: ignore[override]
        dt = self.cur_t - self.prev_t
        return (self.cur_tx - self.prev_tx) / dt if dt > 0 else 0.0

    @property
    def reading_paused_since(self) -> Optional[float]:  # type: ignore[override]
        rare = self.rec._rare
        since = None if rare is None else rare.read_paused_since
        return None if since is None else since + WALL_OFFSET

    @property
    def writing_paused_since(self) -> Optional[float]:  # type: ignore[override]
        rare = self.rec._rare
        since = None if rare is None else rare.write_paused_since
        return None if since is None else since + WALL_OFFSET

    @property
    def read_pauses(self) -> int:  # type: ignore[override]
        return self.rec.read_pauses

    @property
    def write_pauses(self) -> int:  # type: ignore[override]
        return self.rec.write_pauses

    @property
    def read_paused_s(self) -> float:  # type: ignore[override]
        return self.rec.read_paused_s

    @property
    def write_paused_s(self) -> float:  # type: ignore[override]
        return self.rec.write_paused_s

    def prepare(self, static: bool = True) -> None:
        """Peer and local address (once); with ``static=False`` also TLS, write buffer, trace id (shown rows)."""
        rec = self.rec
        if not self.static_done:
            self.static_done = True
            self.peer = self.local = None
            self.tls_version = self.tls_cipher = self.tls_alpn = self.tls_client_subject = None
            self.trace_id = None
            self.write_buffer_bytes = None
            extra = rec.extra
            transport = rec.transport
            try:
                if extra is not None:
                    self.peer = _address(extra.get("peername"))
                    self.local = _address(extra.get("sockname"))
                elif transport is not None:
                    # A dict lookup on asyncio's transports (uvloop: one getpeername()); once per connection.
                    self.peer = _address(_get(transport, "peername"))
                    self.local = _address(_get(transport, "sockname"))
            except Exception:  # noqa: BLE001 - never fail a request for one odd transport
                pass
        if static:
            return
        if not self.tls_done:
            self._read_tls()
        transport = rec.transport
        if transport is not None:
            try:
                size = transport.get_write_buffer_size()
                self.write_buffer_bytes = size if isinstance(size, int) else None
            except Exception:  # noqa: BLE001
                self.write_buffer_bytes = None
            # TCP_INFO: one getsockopt per shown row (empty off Linux TCP; never raises).
            tcp = tcp_info_row(transport)
            self.tcp_rtt_s = tcp.get("rtt_s")
            self.tcp_total_retrans = tcp.get("total_retrans")
        if self.trace_id is None:
            # The telemetry keeps the connection's span on rec.state while it is open (when it makes one).
            span = getattr(rec.state, "span", None)
            if span is not None:
                try:
                    ctx = span.get_span_context()
                    if ctx.trace_id:
                        self.trace_id = format(ctx.trace_id, "032x")
                except Exception:  # noqa: BLE001
                    pass

    def _read_tls(self) -> None:
        """TLS fields once the handshake is done; a plain connection is settled after a while."""
        rec = self.rec
        transport = rec.transport
        if transport is None:
            self.tls_done = True
            return
        ssl_object = _get(transport, "ssl_object")
        if ssl_object is None:
            # Plain, or a handshake still under way (start_tls): settled once a start_tls is unlikely to come.
            self.tls_done = self.transport != "tcp" or time.monotonic() - rec.opened_at > 5.0
            return
        try:
            version = ssl_object.version()
            if not isinstance(version, str):
                return  # handshake not finished: again next time
            self.tls_version = version[4:] if version.startswith(("TLSv", "SSLv")) else version
            # sslproto keeps these two in its extra dict from the end of the handshake: no OpenSSL call.
            cipher = _get(transport, "cipher")
            if isinstance(cipher, tuple) and cipher and isinstance(cipher[0], str):
                self.tls_cipher = iana_cipher(cipher[0])
            alpn = ssl_object.selected_alpn_protocol()
            self.tls_alpn = alpn if isinstance(alpn, str) else None
            if rec.group.side == "server":
                self.tls_client_subject = _subject(_get(transport, "peercert"))
        except Exception:  # noqa: BLE001 - a transport closing under us
            pass
        self.tls_done = True


# -- the local source --------------------------------------------------------------------------
class RegistryConnections:
    """The live connections of one registry (this process), with per-connection rates.

    ``bytes/s`` is measured between the two latest samples, taken at most
    every ``min_interval`` seconds when a request comes (or since the
    connection opened, before its second sample).
    """

    def __init__(
        self, registry: Optional[Registry] = None, *, instance: Optional[str] = None, min_interval: float = 0.5
    ) -> None:
        if registry is None:
            from traced_transport.datapath.registry import default_registry

            registry = default_registry
        self.registry = registry
        self.instance = instance if instance is not None else f"{socket.gethostname()}:{os.getpid()}"
        self.min_interval = min_interval
        self._cache: dict[int, LiveConn] = {}
        self._sample_t = 0.0
        self._lock = threading.Lock()

    def info(self) -> dict:
        return {"instances": [self.instance]}

    def conns(self) -> list[Conn]:
        """The rows of every live connection; counts and pause states are read when asked for."""
        live = self.registry.live()  # the registry lock: a list copy, as a scrape takes it
        with self._lock:
            return self._refresh(live)

    def _refresh(self, live: list[ConnectionRecord]) -> list[Conn]:
        old = self._cache
        get = old.get
        new: dict[int, LiveConn] = {}
        out: list[Conn] = []
        wall = time.time()
        sample = wall - self._sample_t >= self.min_interval
        if sample:
            self._sample_t = wall
        instance = self.instance
        pause = _Yield(_SLICE_S)
        for i, rec in enumerate(live):
            if not i & 1023:
                pause()
            if rec.closed_at is not None:
                continue
            rid = id(rec)
            c = get(rid)
            if c is None or c.rec is not rec:
                c = LiveConn(rec, instance, wall)
            elif sample:
                c.prev_t = c.cur_t
                c.prev_rx = c.cur_rx
                c.prev_tx = c.cur_tx
                c.cur_t = wall
                c.cur_rx = rec.rx
                c.cur_tx = rec.tx
            new[rid] = c
            out.append(c)
        self._cache = new
        return out

    def for_file(self, limit: int) -> dict:
        """What a worker writes into its file: the most telling ``limit`` rows (paused first, then busiest)."""
        conns = self.conns()
        now = time.time()
        conns.sort(
            key=lambda c: (
                c.reading_paused_since is not None or c.writing_paused_since is not None,
                c.rx_bytes_per_s + c.tx_bytes_per_s,
                -c.opened_at,
            ),
            reverse=True,
        )
        shown = conns[:limit]
        for c in shown:
            c.prepare(static=False)
        return {"time": now, "total": len(conns), "rows": [c.for_file() for c in shown]}


# -- the query ------------------------------------------------------------------------------------
def _one(params: Mapping[str, list[str]], name: str) -> Optional[str]:
    values = params.get(name)
    if not values:
        return None
    value = values[-1].strip()
    return value or None


def parse(params: Mapping[str, list[str]]) -> dict:
    """Validate the query parameters (``urllib.parse.parse_qs`` output); raises :class:`QueryError`."""
    names = _one(params, "name")
    sides = _one(params, "side")
    paused = _one(params, "paused")
    if paused is not None and paused not in _PAUSED:
        raise QueryError(f"paused must be one of {', '.join(_PAUSED)}")
    sort = _one(params, "sort") or "age_s"
    order = _one(params, "order")
    if sort.startswith("-"):
        sort, order = sort[1:], order or "desc"
    if sort not in SORT_FIELDS:
        raise QueryError(f"cannot sort by {sort!r}; sortable: {', '.join(sorted(SORT_FIELDS))}")
    if order is None:
        order = "desc" if sort in NUMERIC_FIELDS else "asc"
    if order not in ("asc", "desc"):
        raise QueryError("order must be asc or desc")
    limit_text = _one(params, "limit")
    try:
        limit = DEFAULT_LIMIT if limit_text is None else int(limit_text)
    except ValueError:
        raise QueryError("limit must be an integer") from None
    if limit < 0:
        raise QueryError("limit must not be negative")
    return {
        "name": set(names.split(",")) if names else None,
        "side": set(sides.split(",")) if sides else None,
        "paused": paused,
        "peer": _one(params, "peer"),
        "instance": _one(params, "instance"),
        "sort": sort,
        "order": order,
        "limit": min(limit, MAX_LIMIT),
    }


def _totals(conns: list[Conn], pause: _Yield) -> dict:
    rx = tx = rp = wp = 0
    for i, c in enumerate(conns):
        if not i & 1023:
            pause()
        rx += c.rx_bytes
        tx += c.tx_bytes
        if c.reading_paused_since is not None:
            rp += 1
        if c.writing_paused_since is not None:
            wp += 1
    return {"connections": len(conns), "rx_bytes": rx, "tx_bytes": tx, "reading_paused": rp, "writing_paused": wp}


def _minus(a: dict, b: dict) -> dict:
    return {k: a[k] - b[k] for k in a}


def _matches(c: Conn, q: dict) -> bool:
    names, sides, peer, instance, paused = q["name"], q["side"], q["peer"], q["instance"], q["paused"]
    if names is not None and c.name not in names:
        return False
    if sides is not None and c.side not in sides:
        return False
    if instance is not None and c.instance != instance:
        return False
    if peer is not None:
        if not c.static_done:
            c.prepare()
        if c.peer is None or not c.peer.startswith(peer):
            return False
    if paused is not None:
        r = c.reading_paused_since is not None
        w = c.writing_paused_since is not None
        if paused == "any":
            return r or w
        if paused == "reading":
            return r
        if paused == "writing":
            return w
        return not (r or w)
    return True


def _sort_key(sort: str, reverse: bool, now: float) -> Any:
    """A key for ``list.sort``; missing values (None) always last."""
    missing = float("-inf") if reverse else float("inf")
    if sort in ("age_s", "opened_at"):
        # age is now - opened_at: sorting by the opening time the other way round needs no arithmetic
        return (lambda c: -c.opened_at) if sort == "age_s" else (lambda c: c.opened_at)
    if sort in ("rx_bytes", "tx_bytes", "read_pauses", "write_pauses", "rx_bytes_per_s", "tx_bytes_per_s"):
        return attrgetter(sort)
    if sort in NUMERIC_FIELDS:

        def numeric(c: Conn) -> Any:
            v = c.value(sort, now)
            return missing if v is None else v

        return numeric

    def text(c: Conn) -> Any:
        v = c.value(sort, now)
        return (v is None) != reverse, v or ""

    return text


def query(
    conns: list[Conn],
    q: dict,
    *,
    now: Optional[float] = None,
    extra: Optional[Mapping[str, Any]] = None,
    encode_row: Optional[Callable[[dict], Any]] = None,
) -> dict:
    """Filter, sort and limit ``conns`` as ``q`` (from :func:`parse`) says: the JSON document.

    ``encode_row`` turns each row dict into what the document holds (its JSON
    text, for the endpoint) as soon as it is made: the dicts then die young
    instead of piling up for the garbage collector's older generations.
    """
    now = time.time() if now is None else now
    pause = _Yield(_SLICE_S)
    filtering = any(q[k] is not None for k in ("name", "side", "peer", "instance", "paused"))
    if filtering:
        kept = []
        for i, c in enumerate(conns):
            if not i & 1023:
                pause()
            if _matches(c, q):
                kept.append(c)
    else:
        kept = list(conns)
    sort, limit = q["sort"], q["limit"]
    reverse = q["order"] == "desc"
    if sort in ("peer", "local", "write_buffer_bytes", "tls_version", "tls_cipher"):
        for i, c in enumerate(kept):
            if not i & 1023:
                pause()
            c.prepare(static=sort in ("peer", "local"))
    pause()
    kept.sort(key=_sort_key(sort, reverse, now), reverse=reverse)
    pause()
    shown = kept[:limit]
    matched = _totals(kept, pause)
    # Whichever side is smaller is summed; the other is the difference.
    if not filtering:
        filtered_out = _minus(matched, matched)
    elif len(kept) * 2 <= len(conns):
        filtered_out = _minus(_totals(conns, pause), matched)
    else:
        kept_ids = {id(c) for c in kept}
        filtered_out = _totals([c for c in conns if id(c) not in kept_ids], pause)
    rows = []
    for i, c in enumerate(shown):
        if not i & 63:
            pause()
        c.prepare(static=False)
        row = c.as_dict(now)
        rows.append(row if encode_row is None else encode_row(row))
    doc = {
        "format": FORMAT,
        "time": now,
        "total": len(conns),
        "matched": matched,
        "filtered_out": filtered_out,
        "shown": len(rows),
        "sort": sort,
        "order": q["order"],
        "limit": limit,
        "max_limit": MAX_LIMIT,
        "connections": rows,
    }
    if extra:
        doc.update(extra)
    return doc
    return doc


# -- multi-worker: the rows every worker writes into its file -----------------------------------
# Rows per worker file: a worker with more live connections writes its most telling ones (paused
# first, then the busiest) and the count of the others, shown as "unreported".
WORKER_ROWS = 1000


class WorkerFilesConnections:
    """The connections of every live worker of a ``traced-transport run``, from their files.

    Each worker writes its rows on its write cycle (``interval``), next to its
    metrics; this reads them through the aggregator's collector (same
    directory, same cache, same notion of a live worker). Rows carry epoch
    times, so ages and pause lengths are computed at request time.
    """

    def __init__(self, collector: Any) -> None:
        self.collector = collector
        self._unreported = 0
        self._instances: list[str] = []

    def info(self) -> dict:
        return {"instances": self._instances, "unreported": self._unreported}

    def conns(self) -> list[Conn]:
        collector = self.collector
        names, _retired = collector._listing()
        out: list[Conn] = []
        unreported = 0
        instances = []
        for name in names:
            try:
                doc = collector._load(name)
            except (OSError, ValueError):
                continue  # gone (folded into retired.json) or unreadable: no live rows there
            section = doc.get("connections")
            if not isinstance(section, dict) or doc.get("final"):
                continue
            pid = int(doc.get("pid", 0))
            if not collector.alive(pid, doc.get("start")):
                continue
            instance = f"pid {pid}"
            instances.append(instance)
            rows = section.get("rows") or []
            for row in rows:
                if isinstance(row, dict):
                    out.append(Conn.from_dict(row, instance))
            total = section.get("total")
            if isinstance(total, int):
                unreported += max(0, total - len(rows))
        self._unreported = unreported
        self._instances = instances
        return out
