#!/usr/bin/env python3
"""Re-take docs/live-view.png: the /connections page of a running ``traced-transport demo``, in Debian's chromium.

    .venv/bin/python scripts/live_view_screenshot.py [--out docs/live-view.png]

Starts the demo (loopback, free ports), waits until its view lists echo, TLS and HTTP connections with a pause
among them, loads the page sorted by received bytes and saves a screenshot. Needs chromium and playwright
(the test extra); never downloads a browser.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ARGS = [
    "--no-sandbox",
    "--headless",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=os.path.join(ROOT, "docs", "live-view.png"))
    parser.add_argument("--chromium", default="/usr/bin/chromium")
    args = parser.parse_args()
    from playwright.sync_api import sync_playwright

    bindir = os.path.dirname(sys.executable)
    with tempfile.TemporaryFile("w+") as log:
        demo = subprocess.Popen(
            [
                os.path.join(bindir, "traced-transport"),
                "demo",
                "--metrics-port",
                "0",
                "--duration",
                "120",
                "--concurrency",
                "24",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            url = None
            deadline = time.monotonic() + 30
            while url is None and time.monotonic() < deadline:
                log.seek(0)
                m = re.search(r"live\s+(http://\S+/connections)", log.read())
                url = m.group(1) if m else None
                time.sleep(0.2)
            if url is None:
                print("the demo did not print its connections URL", file=sys.stderr)
                return 1
            while time.monotonic() < deadline + 30:
                req = urllib.request.Request(url + "?limit=1000", headers={"Accept": "application/json"})
                doc = json.loads(urllib.request.urlopen(req, timeout=5).read())
                names = {r["name"] for r in doc["connections"]}
                paused = doc["matched"]["reading_paused"] + doc["matched"]["writing_paused"]
                if {"echo", "tls-echo", "http"} <= names and paused and doc["total"] >= 10:
                    break
                time.sleep(0.3)
            with sync_playwright() as p:
                browser = p.chromium.launch(executable_path=args.chromium, args=ARGS)
                page = browser.new_page(viewport={"width": 1600, "height": 620})
                page.goto(url + "?sort=rx_bytes&order=desc&limit=14")
                page.wait_for_selector("#rows tr")
                page.screenshot(path=args.out)
                browser.close()
            print(f"wrote {args.out}")
        finally:
            demo.send_signal(signal.SIGINT)
            demo.wait(30)
    return 0


if __name__ == "__main__":
    sys.exit(main())
