"""The ``nahual`` command line: one module per command group, each with ``register(subparsers)``.

Errors that nahual raises print as one line on stderr with exit status 1;
usage errors exit 2 (argparse). Tracebacks appear only with ``NAHUAL_DEBUG=1``.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from ..errors import NahualError

__all__ = ["main"]

#: Command modules, in the order their commands appear in ``nahual --help``.
COMMAND_MODULES = ("_server", "_launch", "_stream", "_ingest", "_zoo", "_weights", "_report", "_new_model")


class _VersionAction(argparse.Action):
    """``--version``, looked up only when asked (importlib.metadata is slow to import)."""

    def __call__(self, parser: argparse.ArgumentParser, *args: object) -> None:
        from .. import __version__

        parser.exit(message=f"nahual {__version__}\n")


def build_parser() -> argparse.ArgumentParser:
    """The parser with every command module's subcommands."""
    parser = argparse.ArgumentParser(
        prog="nahual", description="Run models in their own environments; stream Zarr stores through them."
    )
    parser.add_argument("--version", action=_VersionAction, nargs=0, help="print nahual's version and exit")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(f".{name}", __name__).register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run one ``nahual`` command; returns the exit status."""
    args = build_parser().parse_args(argv)
    try:
        return args.run(args) or 0
    except (NahualError, OSError, ValueError, KeyError) as exc:
        if os.environ.get("NAHUAL_DEBUG"):
            raise
        message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        print(f"nahual {args.command}: error: {message}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
