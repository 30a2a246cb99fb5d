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
The thread yields the GIL every few thousand records, so the loop is never
held off for long.
"""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Iterable, Mapping
from typing import Any, Optional

from traced_transport.datapath.record import WALL_OFFSET, ConnectionRecord
from traced_transport.datapath.registry import Registry
from traced_transport.telemetry.attributes import iana_cipher

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
# Records handled between two GIL releases (time.sleep(0)) while a request walks the live list.
_YIELD_EVERY = 2000

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


class Conn:
    """One connection's row. Persistent per live record (the static fields are read once)."""

    __slots__ = (
        "rec",
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
        "tls_done",
        "lazy_done",
        "sample_t",
        "sample_rx",
        "sample_tx",
    )

    def __init__(self) -> None:
        self.rec: Optional[ConnectionRecord] = None
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
        self.tls_done = False
        self.lazy_done = False
        self.sample_t = 0.0
        self.sample_rx = self.sample_tx = 0

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
        return {f: self.value(f, now) for f in FIELDS}

    @classmethod
    def from_dict(cls, row: Mapping, instance: Optional[str]) -> Conn:
        """A row another process wrote (multi-worker): its epoch times stay valid here."""
        c = cls()
        for f in FIELDS:
            if f in ("age_s", "reading_paused", "writing_paused") or f.endswith("_for_s"):
                continue
            if f == "read_paused_total_s":
                c.read_paused_s = _num(row.get("read_paused_closed_s"), 0.0)
            elif f == "write_paused_total_s":
                c.write_paused_s = _num(row.get("write_paused_closed_s"), 0.0)
            elif f in row:
                setattr(c, f, row[f])
        c.instance = instance if instance is not None else row.get("instance")
        c.lazy_done = c.tls_done = True
        return c

    def for_file(self) -> dict:
        """The row as a worker writes it: epoch times only, so the reader recomputes ages."""
        out = {f: getattr(self, f) for f in FIELDS if f not in _DERIVED}
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


def _read_static(c: Conn, rec: ConnectionRecord) -> None:
    """Peer and local address, from the record's extra snapshot or (once) from the transport."""
    key = rec.key
    c.name = rec.group.name
    c.side = rec.group.side
    c.transport = getattr(key, "network_transport", None)
    c.opened_at = rec.opened_at + WALL_OFFSET
    extra = rec.extra
    transport = rec.transport
    if extra is not None:
        c.peer = _address(extra.get("peername"))
        c.local = _address(extra.get("sockname"))
    elif transport is not None:
        # A dict lookup on asyncio's transports (uvloop: one getpeername()); once per connection.
        c.peer = _address(_get(transport, "peername"))
        c.local = _address(_get(transport, "sockname"))
    _read_tls(c, rec)


def _read_tls(c: Conn, rec: ConnectionRecord) -> None:
    """TLS fields once the handshake is done; plain connections are settled at once."""
    key = rec.key
    transport = rec.transport
    if transport is None:
        c.tls_done = True
        return
    extra = rec.extra
    ssl_object = extra.get("ssl_object") if extra is not None and "ssl_object" in extra else None
    if ssl_object is None:
        ssl_object = _get(transport, "ssl_object")
    if ssl_object is None:
        # Plain, or a handshake still under way (start_tls, or the loop's ssl= before connection_made).
        # A plain TCP connection is settled once it is old enough that a start_tls is unlikely to come.
        c.tls_done = getattr(key, "network_transport", None) != "tcp" or time.monotonic() - rec.opened_at > 5.0
        return
    try:
        version = ssl_object.version()
        if not isinstance(version, str):
            return  # handshake not finished: try again next time
        c.tls_version = version[4:] if version.startswith(("TLSv", "SSLv")) else version
        # sslproto caches these two in its extra dict at the end of the handshake: no OpenSSL call.
        cipher = _get(transport, "cipher")
        if isinstance(cipher, tuple) and cipher and isinstance(cipher[0], str):
            c.tls_cipher = iana_cipher(cipher[0])
        alpn = ssl_object.selected_alpn_protocol()
        c.tls_alpn = alpn if isinstance(alpn, str) else None
        cert = _get(transport, "peercert")
        if c.side == "server":
            c.tls_client_subject = _subject(cert)
    except Exception:  # noqa: BLE001 - a transport closing under us
        pass
    c.tls_done = True


def _read_lazy(c: Conn) -> None:
    """The write-buffer size and the trace id: only for rows that are shown (or sorted/filtered by them)."""
    rec = c.rec
    if rec is None:
        return
    transport = rec.transport
    if transport is not None:
        try:
            size = transport.get_write_buffer_size()
            c.write_buffer_bytes = size if isinstance(size, int) else None
        except Exception:  # noqa: BLE001
            c.write_buffer_bytes = None
    if c.trace_id is None:
        # The telemetry keeps the connection's span on rec.state while it is open (when it makes one).
        span = getattr(rec.state, "span", None)
        if span is not None:
            try:
                ctx = span.get_span_context()
                if ctx.trace_id:
                    c.trace_id = format(ctx.trace_id, "032x")
            except Exception:  # noqa: BLE001
                pass
    c.lazy_done = True


# -- the local source --------------------------------------------------------------------------
class RegistryConnections:
    """The live connections of one registry (this process), with per-connection rates.

    ``bytes/s`` is measured between two samples at least ``min_interval``
    apart (the previous request's, whoever made it), and since the connection
    opened before its second sample.
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
        self._cache: dict[int, Conn] = {}
        self._lock = threading.Lock()

    def info(self) -> dict:
        return {"instances": [self.instance]}

    def conns(self) -> list[Conn]:
        """The rows of every live connection, their counts and pause states as of now."""
        live = self.registry.live()  # the registry lock: a list copy, as a scrape takes it
        with self._lock:
            return self._refresh(live)

    def _refresh(self, live: list[ConnectionRecord]) -> list[Conn]:
        old = self._cache
        new: dict[int, Conn] = {}
        out: list[Conn] = []
        now = time.monotonic()
        wall = now + WALL_OFFSET
        min_interval = self.min_interval
        instance = self.instance
        for i, rec in enumerate(live):
            if i % _YIELD_EVERY == _YIELD_EVERY - 1:
                time.sleep(0)  # let the loop thread have the GIL
            if rec.closed_at is not None:
                continue
            rid = id(rec)
            c = old.get(rid)
            if c is None or c.rec is not rec:
                c = Conn()
                c.rec = rec
                c.instance = instance
                c.id = format(rid, "x")
                try:
                    _read_static(c, rec)
                except Exception:  # noqa: BLE001 - never fail the request for one odd transport
                    c.tls_done = True
                c.sample_t = c.opened_at
            elif not c.tls_done:
                _read_tls(c, rec)
            new[rid] = c
            rx = rec.rx
            tx = rec.tx
            c.rx_bytes = rx
            c.tx_bytes = tx
            dt = wall - c.sample_t
            if dt >= min_interval or c.sample_t == c.opened_at:
                if dt > 0:
                    c.rx_bytes_per_s = (rx - c.sample_rx) / dt
                    c.tx_bytes_per_s = (tx - c.sample_tx) / dt
                if dt >= min_interval:
                    c.sample_t = wall
                    c.sample_rx = rx
                    c.sample_tx = tx
            rare = rec._rare
            if rare is not None:
                since = rare.read_paused_since
                c.reading_paused_since = None if since is None else since + WALL_OFFSET
                since = rare.write_paused_since
                c.writing_paused_since = None if since is None else since + WALL_OFFSET
                c.read_pauses = rare.read_pauses
                c.write_pauses = rare.write_pauses
                c.read_paused_s = rare.read_paused_s
                c.write_paused_s = rare.write_paused_s
            c.lazy_done = False
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
            _read_lazy(c)
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


def _totals() -> dict:
    return {"connections": 0, "rx_bytes": 0, "tx_bytes": 0, "reading_paused": 0, "writing_paused": 0}


def _add(t: dict, c: Conn) -> None:
    t["connections"] += 1
    t["rx_bytes"] += c.rx_bytes
    t["tx_bytes"] += c.tx_bytes
    if c.reading_paused_since is not None:
        t["reading_paused"] += 1
    if c.writing_paused_since is not None:
        t["writing_paused"] += 1


def query(
    conns: Iterable[Conn], q: dict, *, now: Optional[float] = None, extra: Optional[Mapping[str, Any]] = None
) -> dict:
    """Filter, sort and limit ``conns`` as ``q`` (from :func:`parse`) says: the JSON document."""
    now = time.time() if now is None else now
    names, sides, paused, peer, instance = q["name"], q["side"], q["paused"], q["peer"], q["instance"]
    kept: list[Conn] = []
    out_totals = _totals()
    total = 0
    for c in conns:
        total += 1
        if total % _YIELD_EVERY == 0:
            time.sleep(0)
        ok = (
            (names is None or c.name in names)
            and (sides is None or c.side in sides)
            and (peer is None or (c.peer is not None and c.peer.startswith(peer)))
            and (instance is None or c.instance == instance)
        )
        if ok and paused is not None:
            r = c.reading_paused_since is not None
            w = c.writing_paused_since is not None
            ok = (
                (r or w)
                if paused == "any"
                else r
                if paused == "reading"
                else w
                if paused == "writing"
                else not (r or w)
            )
        if ok:
            kept.append(c)
        else:
            _add(out_totals, c)
    sort, limit = q["sort"], q["limit"]
    if sort == "write_buffer_bytes":
        for c in kept:
            if not c.lazy_done:
                _read_lazy(c)
    reverse = q["order"] == "desc"
    numeric = sort in NUMERIC_FIELDS
    missing = float("-inf") if reverse else float("inf")

    def key(c: Conn) -> Any:
        v = c.value(sort, now)
        if numeric:
            return missing if v is None else v
        return (v is None) != reverse, v or ""

    kept.sort(key=key, reverse=reverse)
    shown = kept[:limit]
    matched = _totals()
    for c in kept:
        _add(matched, c)
    rows = []
    for c in shown:
        if not c.lazy_done:
            _read_lazy(c)
        rows.append(c.as_dict(now))
    doc = {
        "format": FORMAT,
        "time": now,
        "total": total,
        "matched": matched,
        "filtered_out": out_totals,
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
