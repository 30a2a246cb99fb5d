"""The directory's format: file names, atomic JSON writes, the lock; emptying it, marking a worker dead.

Each worker owns ``{pid}-{token}.json`` and replaces it atomically (temporary file
+ ``os.replace``), so a reader never sees half a file. ``retired.json`` holds the
folded totals of dead workers; ``.lock`` (``flock``) serialises compaction and
:func:`mark_dead`.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import re
import threading
from collections.abc import Iterator
from typing import Any

from traced_transport.report import RateLimitedLog

logger = logging.getLogger("traced_transport.exporters.multiworker")
# Each site (a metric, a file, a directory) warns once: these conditions persist, and
# every scrape or write would repeat them.
warn_once = RateLimitedLog(logger, interval=math.inf)

FORMAT = 1
RETIRED = "retired.json"
LOCK = ".lock"
WORKER_FILE = re.compile(r"^(\d+)-([0-9a-f]+)\.json$")

COUNTER = "counter"  # monotonic cumulative sum
UPDOWN = "updowncounter"  # non-monotonic cumulative sum: a Prometheus gauge
GAUGE = "gauge"
HISTOGRAM = "histogram"
GAUGE_KINDS = (UPDOWN, GAUGE)


def write_json(path: str, doc: dict) -> None:
    directory, name = os.path.split(path)
    tmp = os.path.join(directory, f".{name}.{os.getpid()}.{threading.get_ident()}.tmp")
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(doc, f, separators=(",", ":"), allow_nan=True)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def read_json(path: str) -> dict:
    with open(path, "rb") as f:
        doc = json.loads(f.read())
    if not isinstance(doc, dict) or not isinstance(doc.get("metrics"), list):
        raise ValueError("not a multiworker file")
    return doc


def listing(directory: str) -> tuple[list[str], dict]:
    """``(worker file names not yet folded, retired.json's content)``."""
    try:
        names = os.listdir(directory)
    except FileNotFoundError:
        return [], {}
    retired: dict = {}
    if RETIRED in names:
        try:
            retired = read_json(os.path.join(directory, RETIRED))
        except FileNotFoundError:
            retired = {}
    merged_names = set(retired.get("merged", ()))
    workers = sorted(n for n in names if WORKER_FILE.match(n) and n not in merged_names)
    return workers, retired


@contextlib.contextmanager
def flock(directory: str, fcntl: Any) -> Iterator[None]:
    fd = os.open(os.path.join(directory, LOCK), os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def mark_dead(directory: str, pid: int) -> int:
    """A worker ``pid`` has ended (gunicorn's ``child_exit``): its gauges go to 0 now, its counters stay.

    Marks the files of ``pid`` final and zeroes their gauges; returns how many files.
    Call it only once the process is gone.
    """
    try:
        import fcntl
    except ImportError:  # pragma: no cover
        fcntl = None
    directory = os.path.abspath(directory)
    try:
        names = os.listdir(directory)
    except FileNotFoundError:
        return 0
    mine = [n for n in names if (m := WORKER_FILE.match(n)) and int(m.group(1)) == pid]
    if not mine:
        return 0
    done = 0
    with flock(directory, fcntl) if fcntl is not None else contextlib.nullcontext():
        for name in mine:
            path = os.path.join(directory, name)
            try:
                doc = read_json(path)
            except (OSError, ValueError):
                continue
            if doc.get("final"):
                continue
            doc["final"] = True
            for metric in doc["metrics"]:
                if metric.get("kind") in GAUGE_KINDS:
                    metric["points"] = [[attributes, 0] for attributes, _value in metric["points"]]
            write_json(path, doc)
            done += 1
    return done


def prepare_directory(directory: str) -> str:
    """Create ``directory`` or empty it of this module's files (call once, before the workers start)."""
    directory = os.path.abspath(directory)
    os.makedirs(directory, exist_ok=True)
    for name in os.listdir(directory):
        if WORKER_FILE.match(name) or name in (RETIRED, LOCK) or (name.startswith(".") and name.endswith(".tmp")):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(os.path.join(directory, name))
    return directory
