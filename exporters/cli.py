"""The ``traced-transport`` command.

traced-transport demo [options]          the main job: traced servers under load, scrape endpoint up
traced-transport run [options] -- CMD... run any Python server instrumented, scrape endpoint up
traced-transport top [URL]               watch an endpoint's live connections in the terminal
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
from collections.abc import Sequence
from typing import Optional


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="traced-transport",
        description="Observability for asyncio transports: bytes, flow control and lifecycle per connection.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    from . import demo

    demo_parser = sub.add_parser(
        "demo",
        help="run traced echo, TLS and HTTP servers under a built-in load, with the scrape endpoint up",
        description=demo.__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    demo.add_arguments(demo_parser)
    demo_parser.set_defaults(subcommand="demo")  # run's arguments reuse the name "command"

    from . import run

    run_parser = sub.add_parser(
        "run",
        help="run a Python command (e.g. uvicorn app:app --workers 4) with every transport traced",
        description=run.__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    run.add_arguments(run_parser)
    run_parser.set_defaults(subcommand="run")

    from . import top

    top_parser = sub.add_parser(
        "top",
        help="watch an endpoint's live connections (/connections) in the terminal",
        description=top.__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    top.add_arguments(top_parser)
    top_parser.set_defaults(subcommand="top")
    return parser


# What each command imports beyond traced_transport, and the extra that installs it.
_NEEDS = {
    "run": ("exporters", ("opentelemetry.sdk", "opentelemetry.exporter.prometheus", "prometheus_client")),
    "demo": (
        "demo",
        ("opentelemetry.sdk", "opentelemetry.exporter.prometheus", "prometheus_client", "aiohttp", "trustme"),
    ),
    "top": ("top", ("textual",)),
}


def missing(command: str) -> list[str]:
    """The modules ``command`` needs that are not installed."""
    return [m for m in _NEEDS[command][1] if not _installed(m)]


def _installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except ImportError:  # a parent package is missing
        return False


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    absent = missing(args.subcommand)
    if absent:
        extra = _NEEDS[args.subcommand][0]
        print(
            f"traced-transport {args.subcommand} needs {', '.join(absent)} (not installed): "
            f"pip install 'traced-transport[{extra}]'",
            file=sys.stderr,
        )
        return 2
    if args.command == "demo":
        from . import demo

        return demo.main(args)
    if args.command == "top":
        from . import top

        return top.main(args)
    from . import run

    return run.main(args)


if __name__ == "__main__":
    sys.exit(main())
