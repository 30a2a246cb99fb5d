"""What ``traced-transport demo`` shows while it runs: a live table on a terminal, plain lines otherwise.

One row per listener or client name, read from the traced_transport registry:
connections opened and open now, bytes in and out, flow-control pauses, and how
connections ended badly: TLS handshakes that failed, connections aborted, resets
and errors. The failures are what make ``tls-echo`` count more connections than
``tls-client``: the demo's bad TLS clients (plain text to the TLS port, a client
that does not trust the certificate) are not traced, so only the server side sees
them, and it sees them fail.

Both views fit a 100-column terminal.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Optional

ABORTED = "aborted"
TLS_FAILED = "tls_handshake_failed"
RESET = "reset"
ERROR = "error"

NOTE = (
    "tls-echo opens more than tls-client: the demo's bad TLS clients are not traced, "
    "so their connections count on the server only, as TLS failures."
)


@dataclass(frozen=True)
class Row:
    name: str
    side: str
    opened: int
    active: int
    rx: int
    tx: int
    read_pauses: int
    write_pauses: int
    tls_failed: int
    aborted: int
    reset_or_error: int


def rows(registry: Any, names: Iterable[str]) -> list[Row]:
    """One :class:`Row` per name, from ``registry.totals(name)``."""
    out = []
    for name in names:
        t = registry.totals(name)
        reasons = t.close_reasons
        out.append(
            Row(
                name=name,
                side="client" if name.endswith("-client") else "server",
                opened=t.opened,
                active=t.active,
                rx=t.rx,
                tx=t.tx,
                read_pauses=t.read_pauses,
                write_pauses=t.write_pauses,
                tls_failed=reasons.get(TLS_FAILED, 0),
                aborted=reasons.get(ABORTED, 0),
                reset_or_error=reasons.get(RESET, 0) + reasons.get(ERROR, 0),
            )
        )
    return out


def si(n: float) -> str:
    """``12.3M``: three significant figures at most, so the columns stay narrow."""
    for unit in ("", "k", "M", "G", "T"):
        if abs(n) < 1000:
            return f"{n:.0f}{unit}" if unit == "" else f"{n:.1f}{unit}"
        n /= 1000
    return f"{n:.1f}P"


# Names ending in -client are the load's client side; the others are the listeners.
_HEAD = ("listener", "opened", "open", "in", "out", "pauses r/w", "TLS fail", "aborted", "reset/err")
_FAILURES = (6, 7, 8)


def _cells(r: Row) -> tuple[str, ...]:
    return (
        r.name,
        str(r.opened),
        str(r.active),
        si(r.rx) + "B",
        si(r.tx) + "B",
        f"{r.read_pauses}/{r.write_pauses}",
        str(r.tls_failed),
        str(r.aborted),
        str(r.reset_or_error),
    )


def plain(table_rows: list[Row], elapsed: float, *, final: bool = False) -> list[str]:
    """The summary as aligned plain-text lines (each well under 100 columns)."""
    widths = [max(len(h), *(len(_cells(r)[i]) for r in table_rows)) for i, h in enumerate(_HEAD)]

    def line(cells: tuple[str, ...]) -> str:
        parts = [c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths))]
        return " ".join(parts).rstrip()

    title = f"{'final' if final else 'now'}: {elapsed:.0f}s"
    return [title, "  " + line(_HEAD), *("  " + line(_cells(r)) for r in table_rows)]


def rich_table(table_rows: list[Row], elapsed: float, metrics_url: Optional[str] = None, *, final: bool = False) -> Any:
    """The summary as a ``rich`` table (failure columns in red when not zero)."""
    from rich import box
    from rich.table import Table

    title = f"traced-transport demo, {'final' if final else 'live'}, {elapsed:.0f}s"
    if metrics_url:
        title += f"  {metrics_url}"
    table = Table(
        title=title, caption=NOTE, box=box.SIMPLE_HEAD, pad_edge=False, title_justify="left", caption_justify="left"
    )
    for i, head in enumerate(_HEAD):
        table.add_column(head, justify="left" if i == 0 else "right", no_wrap=True)
    for r in table_rows:
        cells = list(_cells(r))
        for i in _FAILURES:
            if cells[i] != "0":
                cells[i] = f"[red]{cells[i]}[/red]"
        table.add_row(*cells)
    return table
