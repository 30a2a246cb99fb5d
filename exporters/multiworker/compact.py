"""Compaction: the files of dead workers folded into ``retired.json``, so the directory does not grow.

A file is folded once its worker is dead and the file is final (clean exit,
``mark_dead``) or older than ``retire_after`` seconds. Under the directory's
``flock``; ``retired.json`` lists the names it has folded, so a reader that lists
the directory between the write and the unlinks never counts a worker twice.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable
from typing import Optional

from ._files import FORMAT, RETIRED, flock, listing, read_json, write_json
from .merge import common, merge, unmerge


def compact(directory: str, *, alive: Callable[[int, Optional[int]], bool], retire_after: float) -> int:
    """Fold the files of dead workers into ``retired.json``; returns how many were folded."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - no flock: no compaction
        return 0
    if not os.path.isdir(directory):
        return 0
    now = time.time()
    with flock(directory, fcntl):
        names, retired = listing(directory)
        fold = []
        for name in names:
            try:
                doc = read_json(os.path.join(directory, name))
            except (OSError, ValueError):
                continue
            if alive(int(doc.get("pid", 0)), doc.get("start")):
                continue
            if doc.get("final") or now - float(doc.get("time") or 0) > retire_after:
                fold.append((name, doc))
        if not fold:
            return 0
        merged: dict = {}
        merge(merged, retired.get("metrics", ()), live=False)
        resources = [retired["resource"]] if retired.get("resource") is not None else []
        for _name, doc in fold:
            merge(merged, doc["metrics"], live=False)
            resources.append(doc.get("resource") or {})
        present = set(os.listdir(directory))
        merged_names = {n for n in retired.get("merged", ()) if n in present} | {n for n, _ in fold}
        write_json(
            os.path.join(directory, RETIRED),
            {
                "format": FORMAT,
                "time": now,
                "resource": common(resources),
                "merged": sorted(merged_names),
                "metrics": unmerge(merged),
            },
        )
        for name, _doc in fold:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(os.path.join(directory, name))
        return len(fold)
