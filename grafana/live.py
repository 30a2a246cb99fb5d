"""A real Prometheus scraping ``traced-transport demo``, and the dashboards' queries with variables filled in.

Used by the real-Prometheus test (tests/grafana/test_dashboards.py) and by render_preview.py. Standard library
only; needs Debian's ``prometheus`` binary.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Optional

HERE = Path(__file__).resolve().parent
RULES = HERE / "prometheus" / "rules.yml"
DASHBOARDS = HERE / "dashboards"
JOB = "traced-transport-demo"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def poll(
    check: Callable[[], object],
    timeout: float,
    what: str,
    interval: float = 0.2,
    alive: Callable[[], Optional[str]] = lambda: None,
):
    """check() until it returns something truthy; TimeoutError after ``timeout`` (state in another process)."""
    deadline = time.monotonic() + timeout
    last: object = None
    while True:
        problem = alive()
        if problem:
            raise RuntimeError(f"{what}: {problem}")
        try:
            result = check()
            if result:
                return result
            last = result
        except (OSError, ValueError, KeyError) as exc:
            last = exc
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what}; last: {last!r}")
        time.sleep(interval)


class Demo:
    """``traced-transport demo`` as a subprocess, scrape endpoint on a free port."""

    def __init__(self, workdir: Path, concurrency: int = 8, seed: int = 1) -> None:
        exe = Path(sys.executable).parent / "traced-transport"
        cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "traced_transport.exporters.cli"]
        self.log_path = workdir / "demo.log"
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(
            cmd
            + [
                "demo",
                "--metrics-port",
                "0",
                "--concurrency",
                str(concurrency),
                "--seed",
                str(seed),
                "--interval",
                "5",
            ],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=dict(os.environ, PYTHONUNBUFFERED="1"),
            cwd=HERE.parent,
        )
        self.metrics_url = poll(self._url, 30, "the demo's metrics URL", alive=self.problem)
        self.target = urllib.parse.urlsplit(self.metrics_url).netloc

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-3000:]

    def problem(self) -> Optional[str]:
        if self.proc.poll() is not None:
            return f"demo exited with {self.proc.returncode}:\n{self.log()}"
        return None

    def _url(self) -> Optional[str]:
        m = re.search(r"metrics\s+(http://\S+/metrics)", self.log_path.read_text(errors="replace"))
        return m.group(1) if m else None

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()  # SIGTERM: the demo stops its load and servers cleanly
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self._log.close()


class Prometheus:
    """Prometheus scraping ``targets`` every second as ``job``, with ``rules`` (None: none) evaluated every second.

    ``flags`` go on its command line as they are (e.g. ``--enable-feature=exemplar-storage``).
    """

    def __init__(
        self,
        workdir: Path,
        targets: list[str],
        binary: Optional[str] = None,
        rules: Optional[Path] = RULES,
        job: str = JOB,
        flags: tuple[str, ...] = (),
    ) -> None:
        binary = binary or shutil.which("prometheus")
        if binary is None:
            raise FileNotFoundError("prometheus is not installed (Debian: apt-get install -y prometheus)")
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        config = workdir / "prometheus.yml"
        config.write_text(
            "global:\n"
            "  scrape_interval: 1s\n"
            "  scrape_timeout: 1s\n"
            "  evaluation_interval: 1s\n"
            + (f"rule_files: ['{rules}']\n" if rules is not None else "")
            + "scrape_configs:\n"
            f"  - job_name: {job}\n"
            "    static_configs:\n"
            f"      - targets: {json.dumps(targets)}\n"
        )
        self.log_path = workdir / "prometheus.log"
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(
            [
                binary,
                f"--config.file={config}",
                f"--storage.tsdb.path={workdir / 'prom-data'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
                "--log.level=warn",
                *flags,
            ],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            cwd=workdir,
        )
        poll(self.ready, 30, "prometheus ready", alive=self.problem)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-3000:]

    def problem(self) -> Optional[str]:
        if self.proc.poll() is not None:
            return f"prometheus exited with {self.proc.returncode}:\n{self.log()}"
        return None

    def ready(self) -> bool:
        with urllib.request.urlopen(f"{self.base}/-/ready", timeout=2) as resp:
            return resp.status == 200

    def api(self, path: str, **params) -> dict:
        """GET /api/v1/...; the decoded body, also for 4xx answers (status "error" with errorType/error)."""
        url = f"{self.base}/api/v1/{path}?" + urllib.parse.urlencode(params, doseq=True)
        try:
            with urllib.request.urlopen(url, timeout=10) as resp:
                return json.loads(resp.read())
        except urllib.error.HTTPError as exc:
            return json.loads(exc.read())

    def query(self, expr: str) -> dict:
        return self.api("query", query=expr)

    def query_range(self, expr: str, start: float, end: float, step: float) -> dict:
        return self.api("query_range", query=expr, start=f"{start:.3f}", end=f"{end:.3f}", step=f"{step}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self._log.close()


# --- dashboards ---------------------------------------------------------------------------------------------


def load_dashboards() -> dict[str, dict]:
    return {p.name: json.loads(p.read_text()) for p in sorted(DASHBOARDS.glob("*.json"))}


def panels(dashboard: dict) -> Iterator[dict]:
    """Every panel that is not a row, including those inside collapsed rows."""
    for p in dashboard["panels"]:
        if p["type"] == "row":
            yield from p.get("panels", [])
        else:
            yield p


def variables(dashboard: dict) -> dict[str, dict]:
    return {v["name"]: v for v in dashboard["templating"]["list"]}


# What Grafana puts for its built-in variables when the dashboard shows a few minutes at a 1 s scrape interval:
# $__rate_interval = max($__interval + scrape interval, 4 x scrape interval).
BUILTINS = {"$__rate_interval": "10s", "$__interval": "2s", "$__range": "1m"}


def substitute(expr: str, values: dict[str, str]) -> str:
    """Grafana's interpolation for Prometheus: a multi-value/All variable becomes a regex (``.*`` for All)."""
    out = expr
    for name, value in sorted(
        {**BUILTINS, **{f"${k}": v for k, v in values.items()}}.items(), key=lambda kv: -len(kv[0])
    ):  # $__rate_interval before $__range
        out = out.replace(name.replace("$", "${", 1) + "}", value).replace(name, value)
    return out


def multi_value(values: list[str]) -> str:
    """A multi-value selection as Grafana's Prometheus data source interpolates it into ``=~"..."``: each
    regex metacharacter escaped for the regex and again for the PromQL string (a dot becomes two backslashes
    and a dot), several values joined as ``(a|b)``."""
    escaped = [
        re.sub(r"[$^*{}\[\]'+?.()|]", lambda m: "\\\\" + m.group(0), v.replace("\\", "\\\\\\\\")) for v in values
    ]
    return escaped[0] if len(escaped) == 1 else "(" + "|".join(escaped) + ")"


def finite_series(result: dict) -> int:
    """How many series of an instant-query result have a finite value."""
    n = 0
    for r in result.get("data", {}).get("result", []):
        value = r.get("value", [0, "NaN"])[1]
        if math.isfinite(float(value)):
            n += 1
    return n
