"""``traced-transport demo``'s summary: a live table in a real 100x30 terminal (tmux), plain lines in a pipe.

Both fit 100 columns and show the failure columns (TLS handshake failures, aborts, resets) that explain why
``tls-echo`` counts more connections than ``tls-client``.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest
from _helpers import require_binary
from _util import wait_for

pytest.importorskip("rich")
pytest.importorskip("aiohttp")
pytest.importorskip("trustme")

BIN = os.path.dirname(sys.executable)
DEMO = [os.path.join(BIN, "traced-transport"), "demo", "--metrics-port", "0", "--concurrency", "8", "--interval", "1"]
HEAD = ["listener", "opened", "open", "in", "out", "pauses r/w", "TLS fail", "aborted", "reset/err"]
NAMES = ["echo", "tls-echo", "http", "echo-client", "tls-client", "http-client"]
ROW = re.compile(r"^\s*(\S+)\s+(\d+)\s+(\d+)\s+(\S+B)\s+(\S+B)\s+(\d+)/(\d+)\s+(\d+)\s+(\d+)\s+(\d+)\s*$")


def table_rows(lines: list[str]) -> dict[str, tuple[int, ...]]:
    """{name: (opened, open, read pauses, write pauses, tls failed, aborted, reset/err)} of the rows that parse."""
    out = {}
    for line in lines:
        m = ROW.match(line)
        if m and m.group(1) in NAMES:
            out[m.group(1)] = tuple(int(m.group(i)) for i in (2, 3, 6, 7, 8, 9, 10))
    return out


def check_table(lines: list[str]) -> None:
    assert all(len(line) <= 100 for line in lines), [line for line in lines if len(line) > 100]
    assert not any("…" in line for line in lines), "a truncated cell"
    header = next(line for line in lines if "listener" in line)
    positions = [header.index(h) for h in HEAD]
    assert positions == sorted(positions), header
    rows = table_rows(lines)
    assert sorted(rows) == sorted(NAMES), lines  # every row whole: one line each, no wrapping
    tls_echo, tls_client = rows["tls-echo"], rows["tls-client"]
    assert tls_echo[4] > 0, "the demo's bad TLS clients fail their handshakes on the server"
    # The bad TLS clients are not traced: the server's extra connections are its failed handshakes.
    assert tls_echo[0] >= tls_client[0] + tls_echo[4] - 2  # a handshake may still be in flight at the end
    assert rows["echo-client"][5] > 0, "the load aborts some echo connections"
    assert rows["echo"][2] > 0 and rows["echo"][3] > 0, "the slow readers make the echo server pause"


def test_live_table_in_a_100_column_terminal(tmp_path):
    tmux = require_binary("tmux", "tmux")
    socket_name = f"tt-demo-{os.getpid()}"  # a tmux server of its own: other tests may run tmux too
    done = tmp_path / "done"
    command = " ".join([*DEMO, "--duration", "4"]) + f"; echo $? > {done}; sleep 600"
    subprocess.run(
        [tmux, "-L", socket_name, "new-session", "-d", "-s", "demo", "-x", "100", "-y", "30", command],
        check=True,
        env={**os.environ, "TERM": "xterm-256color"},
    )
    try:

        def screen() -> list[str]:
            out = subprocess.run(
                [tmux, "-L", socket_name, "capture-pane", "-p", "-t", "demo"], capture_output=True, text=True
            )
            return out.stdout.splitlines()

        def live_table():
            lines = screen()
            return any("demo, live" in line for line in lines) and len(table_rows(lines)) == len(NAMES), lines

        wait_for(live_table, 60, "the live table")
        lines = wait_for(lambda: (done.exists(), screen()), 60, "the demo to end")
        assert done.read_text().strip() == "0", "\n".join(lines)
        width = subprocess.run(
            [tmux, "-L", socket_name, "display", "-p", "-t", "demo", "#{pane_width}"], capture_output=True, text=True
        )
        assert width.stdout.strip() == "100"
        assert any("demo, final" in line for line in lines), "\n".join(lines)
        assert "Traceback" not in "\n".join(lines)
        check_table(lines)
    finally:
        subprocess.run([tmux, "-L", socket_name, "kill-server"], capture_output=True)


def test_plain_summary_when_not_a_terminal():
    proc = subprocess.run([*DEMO, "--duration", "4"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    final = lines.index(next(line for line in lines if line.startswith("final:")))
    assert "\x1b[" not in proc.stdout, "no terminal escapes in a pipe"
    check_table(lines[final:])
    assert all(len(line) < 100 for line in lines)


def test_a_load_client_goes_on_after_a_session_fails_unexpectedly(capsys):
    """A session raising something unexpected is counted and reported once; its client keeps going."""
    import asyncio

    from traced_transport.exporters.demo import Endpoints, Load

    load = Load("127.0.0.1", Endpoints(echo=0, tls=0, http=0, metrics_url=None), None, 1, 1)  # type: ignore[arg-type]
    sessions = []

    async def broken() -> None:
        sessions.append(1)
        if len(sessions) == 3:
            load.stop.set()
        raise LookupError("no such thing")

    asyncio.run(load._loop(broken))
    assert len(sessions) == 3 and load.errors == 3
    err = capsys.readouterr().err
    assert err.count("a broken session failed") == 1 and "LookupError: no such thing" in err
