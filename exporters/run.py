"""``traced-transport run [options] -- COMMAND...``: run any Python server with every transport traced.

Like ``opentelemetry-instrument``: the command and every Python process it
starts (uvicorn or gunicorn workers included) are instrumented through a
``sitecustomize`` on PYTHONPATH. Each process writes its counts to a private
directory; this process serves them, summed exactly over all workers, on the
Prometheus scrape endpoint. Spans go wherever the OTEL_* variables say (OTLP).

Example:
    traced-transport run --metrics-port 9464 -- uvicorn app:app --workers 4
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from typing import Any

from . import options

_SITE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_site")
_ENV_DIR = "TRACED_TRANSPORT_RUN_DIR"
_ENV_OPTIONS = "TRACED_TRANSPORT_RUN_OPTIONS"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    options.add_arguments(parser)
    parser.add_argument(
        "--server-name", default="server", help="transport.name of server connections (default: %(default)s)"
    )
    parser.add_argument(
        "--client-name", default="client", help="transport.name of client connections (default: %(default)s)"
    )
    parser.add_argument("--pipes", action="store_true", help="also trace pipes and subprocesses")
    parser.add_argument(
        "--interval",
        type=float,
        default=1.0,
        help="seconds between each process's writes of its counts (default: %(default)s)",
    )
    parser.add_argument(
        "--connections",
        action="store_true",
        help="also serve /connections, every worker's live connections (off loopback: needs --basic-auth or "
        "--client-cafile)",
    )
    parser.add_argument("command", nargs=argparse.REMAINDER, help="the command to run, after --")


def main(args: argparse.Namespace) -> int:
    from . import multiworker

    command = list(args.command)
    if command and command[0] == "--":
        command = command[1:]
    if not command:
        print("traced-transport run: give a command after --", file=sys.stderr)
        return 2
    directory = multiworker.prepare_directory(tempfile.mkdtemp(prefix="traced-transport-"))
    connections = bool(getattr(args, "connections", False))
    try:
        aggregator = multiworker.serve(
            directory, connections=connections, options=options.EndpointOptions.from_args(args)
        )
    except ValueError as exc:  # the connections view off loopback without authentication
        print(f"traced-transport run: {exc}", file=sys.stderr)
        shutil.rmtree(directory, ignore_errors=True)
        return 2
    except OSError as exc:
        print(
            f"traced-transport run: cannot serve metrics on {args.metrics_host}:{args.metrics_port}: {exc}",
            file=sys.stderr,
        )
        shutil.rmtree(directory, ignore_errors=True)
        return 1
    print(f"traced-transport: metrics at {aggregator.url}", file=sys.stderr, flush=True)
    if connections:
        from .connections_page import url_of

        print(f"traced-transport: connections at {url_of(aggregator.url)}", file=sys.stderr, flush=True)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (_SITE, env.get("PYTHONPATH")) if p)
    env[_ENV_DIR] = directory
    env[_ENV_OPTIONS] = "|".join(
        [args.server_name, args.client_name, "1" if args.pipes else "", str(args.interval), "1" if connections else ""]
    )
    try:
        child = subprocess.Popen(command, env=env)
    except OSError as exc:
        print(f"traced-transport run: cannot start {command[0]}: {exc}", file=sys.stderr)
        aggregator.close()
        shutil.rmtree(directory, ignore_errors=True)
        return 127

    def forward(signum: int, frame: Any) -> None:
        if child.poll() is None:
            child.send_signal(signum)

    previous = {s: signal.signal(s, forward) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    try:
        code = child.wait()
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        aggregator.close()
        shutil.rmtree(directory, ignore_errors=True)
    return code if code >= 0 else 128 - code


def start_in_child(directory: str) -> None:
    """Called by the sitecustomize in every process of the command."""
    import traced_transport

    from . import multiworker

    server_name, client_name, pipes, interval, connections = (os.environ.get(_ENV_OPTIONS, "") + "||||").split("|")[:5]
    tracer_provider = _tracer_provider_from_env()
    worker = multiworker.start_worker(
        directory, interval=float(interval or 1.0), tracer_provider=tracer_provider, connections=bool(connections)
    )
    # traced() with the defaults (the framework helpers, e.g. --http traced_transport.uvicorn:h11) too
    traced_transport.set_default_telemetry(worker.telemetry)
    worker.instrument(server_name=server_name or "server", client_name=client_name or "client", pipes=bool(pipes))


def _tracer_provider_from_env() -> Any:
    """Spans over OTLP when the OTEL_* variables ask for it; None otherwise.

    Metrics go through the worker files to the parent's endpoint, so only the
    span side of OTLP is built here.
    """
    from opentelemetry.sdk.trace import TracerProvider

    from . import sdk

    resource = sdk.make_resource()
    _, processors, enabled = sdk._otlp_parts(None, resource, metrics=False)
    if not enabled:
        return None
    provider = TracerProvider(resource=resource)
    for processor in processors:
        provider.add_span_processor(processor)
    return provider
