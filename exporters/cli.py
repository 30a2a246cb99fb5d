"""The ``traced-transport`` command.

traced-transport demo [options]          the main job: traced servers under load, scrape endpoint up
traced-transport run [options] -- CMD... run any Python server instrumented, scrape endpoint up
traced-transport top [URL]               watch an endpoint's live connections in the terminal
"""

from __future__ import annotations

import argparse
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

    from . import run

    run_parser = sub.add_parser(
        "run",
        help="run a Python command (e.g. uvicorn app:app --workers 4) with every transport traced",
        description=run.__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    run.add_arguments(run_parser)

    from . import top

    top_parser = sub.add_parser(
        "top",
        help="watch an endpoint's live connections (/connections) in the terminal",
        description=top.__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    top.add_arguments(top_parser)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
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
