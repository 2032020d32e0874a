"""`rsd` entry point: one argparse tree, each subcommand defined next to the code it drives."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from rsd_cli import core, export, serve, train


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="rsd", description="One-step diffusion x4 super-resolution")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    # Each module adds its subcommands; heavy imports happen inside the handlers.
    core.add_parsers(sub)
    train.add_parsers(sub)
    serve.add_parsers(sub)
    export.add_parsers(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.handler(args) or 0)
    except core.EXPECTED_ERRORS as exc:
        message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        print(f"rsd {args.command}: error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"rsd {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
