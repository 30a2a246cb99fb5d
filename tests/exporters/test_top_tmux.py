"""traced-transport top in a real terminal: a detached tmux session (120x40), keys sent, the pane read back."""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
import uuid

import pytest
from _helpers import require_binary, require_module
from _live import LiveServer
from _util import wait_for

BIN = os.path.dirname(sys.executable)


@pytest.fixture
def tmux():
    binary = require_binary("tmux", "tmux")
    require_module("textual", "textual")
    session = f"tt-top-{uuid.uuid4().hex[:8]}"

    def run(*args: str) -> str:
        return subprocess.run([binary, *args], capture_output=True, text=True, timeout=10, check=True).stdout

    yield session, run
    subprocess.run([binary, "kill-session", "-t", session], capture_output=True, timeout=10)


def _names_in_order(pane: str, names: tuple[str, ...]) -> list[str]:
    out = []
    for line in pane.splitlines():
        for word in line.split():
            if word in names:
                out.append(word)
                break
    return out


def test_top_refreshes_sorts_and_filters(tmux):
    session, run = tmux
    names = ("alpha", "bravo", "charlie")
    with LiveServer("asyncio") as s:
        s.open("alpha", 300)
        bravo = s.open("bravo", 20000)
        s.open("charlie", 5000)
        cmd = f"{shlex.quote(os.path.join(BIN, 'traced-transport'))} top {shlex.quote(s.url)} --interval 0.3"
        run("new-session", "-d", "-s", session, "-x", "120", "-y", "40", "env", "TERM=xterm-256color", "sh", "-c", cmd)

        def pane() -> str:
            return run("capture-pane", "-p", "-t", session)

        def shows(pred, what):
            return wait_for(lambda: (lambda p: (pred(p), p))(pane()), 20, what)

        # default sort: age, oldest first
        shows(lambda p: _names_in_order(p, names) == ["alpha", "bravo", "charlie"], "the three clients by age")
        assert "live 6" in pane()
        # "s" moves the sort to the next columns: age -> rx -> tx -> rx/s; "S" back to tx, then rx
        for key in ("s", "s", "s", "S", "S"):
            run("send-keys", "-t", session, key)
        shows(lambda p: "sort: rx_bytes desc" in p, "the sort by rx")
        shows(lambda p: _names_in_order(p, names) == ["bravo", "charlie", "alpha"], "the rows by rx, largest first")
        run("send-keys", "-t", session, "r")
        shows(lambda p: _names_in_order(p, names) == ["alpha", "charlie", "bravo"], "the rows by rx, smallest first")
        # a filter typed after "/"
        run("send-keys", "-t", session, "/")
        shows(lambda p: "(Enter applies)" in p, "the filter box")
        run("send-keys", "-t", session, "name=charlie", "Enter")
        shows(lambda p: _names_in_order(p, names) == ["charlie"] and "match 1" in p, "the filtered view")
        # "p": paused connections only (after an empty filter); the server stops reading bravo's connection
        run("send-keys", "-t", session, "/")
        shows(lambda p: p.count("name=charlie") >= 2, "the filter box, holding the current filter")
        run("send-keys", "-t", session, "C-u", "Enter")
        shows(lambda p: "match 6" in p, "the filter cleared")
        s.pause(bravo)
        run("send-keys", "-t", session, "p")
        shows(lambda p: "paused=any" in p and "match 1" in p and "echo" in p, "the paused connection only")
        run("send-keys", "-t", session, "q")
