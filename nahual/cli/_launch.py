"""CLI layer, launcher commands: ``nahual envs`` (which environments can run here), ``env-prepare`` and ``logs``."""

from __future__ import annotations

import argparse
import os
import shlex
import sys
import time
from typing import Any

__all__ = ["register"]


def register(subparsers: Any) -> None:
    """Add ``envs``, ``env-prepare`` and ``logs`` to the ``nahual`` parser."""
    envs = subparsers.add_parser(
        "envs",
        help="list environment backends and whether each works on this machine",
        description="Without SPEC: one line per backend kind (is its tool installed). With SPECs: whether a "
        "server can start in each environment: the spec is valid, its tool and files are there, and its Python "
        "imports nahual (nix: the shell evaluates and builds; uv: once synced; cmd: the prefix is not run). "
        "Exit status 1 if one cannot.",
    )
    envs.add_argument("specs", nargs="*", metavar="SPEC", help="environment specs to check, e.g. uv:envs/threshold")
    envs.set_defaults(run=run_envs)

    prepare = subparsers.add_parser(
        "env-prepare",
        help="make an environment ready before the first server starts (uv sync, nix build)",
        description="Prepare SPEC (uv: sync the project, --locked when uv.lock exists; nix: build the devShell), "
        "then print the command that runs Python in it. A failure prints the tool's own error.",
    )
    prepare.add_argument("spec", metavar="SPEC", help="environment spec, e.g. uv:envs/threshold")
    prepare.add_argument("--force", action="store_true", help="uv: sync even when the venv looks up to date")
    prepare.set_defaults(run=run_prepare)

    logs = subparsers.add_parser(
        "logs",
        help="list the logs of servers that nahual.launch started, or print one",
        description="Without SERVER: the servers whose logs are kept in the runtime directory, newest first "
        "(name, pid, start, status, environment, model). With SERVER (a name or pid from that list): its log. "
        "The newest 50 logs of the last 7 days are kept; servers of Snakemake rules log under logs/ instead.",
    )
    logs.add_argument("server", nargs="?", metavar="SERVER", help="a server's name or pid")
    logs.add_argument("--tail", type=int, metavar="N", help="only the last N lines of the log")
    logs.add_argument("--path", action="store_true", help="print the log's path (without SERVER: the directory)")
    logs.set_defaults(run=run_logs)


def run_envs(args: argparse.Namespace) -> int:
    """Print one line per backend kind, or per SPEC given."""
    from ..launcher import BACKENDS, parse_env_spec

    if not args.specs:
        for kind, cls in BACKENDS.items():
            ok, why = cls.tool()
            print(f"{kind:<10} {'yes' if ok else 'no ':<4} {cls.summary}: {why}")
        return 0
    status = 0
    for spec in args.specs:
        ok, why = parse_env_spec(spec).check()
        print(f"{spec}  {'yes' if ok else 'no'}  {why}")
        status = status if ok else 1
    return status


def run_prepare(args: argparse.Namespace) -> int:
    """Prepare one environment and print how Python runs in it."""
    from ..errors import LaunchError
    from ..launcher import UvEnv, parse_env_spec

    backend = parse_env_spec(args.spec)
    ok, why = backend.available()
    if not ok:
        raise LaunchError(f"environment {backend.spec} is not available here: {why}")
    try:
        if isinstance(backend, UvEnv):
            backend.prepare(force=args.force)
        else:
            backend.prepare()
    except LaunchError as exc:
        if os.environ.get("NAHUAL_DEBUG"):
            raise
        # As main() prints errors (one line with the cause), then the tool's command and error block.
        first, _, details = str(exc).partition("\n")
        print(f"nahual {args.command}: error: {first}", file=sys.stderr)
        if details:
            print(details, file=sys.stderr)
        return 1
    build = f" (torch {backend.torch})" if isinstance(backend, UvEnv) and backend.torch else ""
    print(f"{backend.spec} ready{build}: {shlex.join(backend.python())}")
    return 0


def run_logs(args: argparse.Namespace) -> int:
    """List the kept server logs, or print one (or its path, or its tail)."""
    from ..launcher import runtime_dir
    from ..launcher._logs import find_record, server_records

    directory = runtime_dir()
    if args.server is None:
        if args.path:
            print(directory)
            return 0
        records = server_records(directory)
        if not records:
            print(f"no server logs in {directory}")
            return 0
        print(f"{'NAME':<16} {'PID':>7}  {'STARTED':<19}  {'STATUS':<16} {'ENV':<24} MODEL")
        for record in records:
            started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(record.started))
            print(
                f"{record.name:<16} {record.pid:>7}  {started:<19}  {record.status:<16} "
                f"{record.env:<24} {record.model or '-'}"
            )
        return 0
    record = find_record(directory, args.server)
    if args.path:
        print(record.log)
        return 0
    text = record.log.read_text(errors="replace")
    if args.tail is not None:
        text = "".join(text.splitlines(keepends=True)[-args.tail :] if args.tail > 0 else [])
    print(text, end="" if text.endswith("\n") or not text else "\n")
    return 0
