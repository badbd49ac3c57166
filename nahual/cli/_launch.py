"""CLI layer: ``nahual envs`` (which environment backends work here) and ``nahual env-prepare``."""

from __future__ import annotations

import argparse
import shlex
from typing import Any

__all__ = ["register"]


def register(subparsers: Any) -> None:
    """Add ``envs`` and ``env-prepare`` to the ``nahual`` parser."""
    envs = subparsers.add_parser(
        "envs",
        help="list environment backends and whether each works on this machine",
        description="Without SPEC: one line per backend kind. With SPECs: whether each environment "
        "can start here (exit status 1 if one cannot).",
    )
    envs.add_argument("specs", nargs="*", metavar="SPEC", help="environment specs to check, e.g. uv:envs/threshold")
    envs.set_defaults(run=run_envs)

    prepare = subparsers.add_parser(
        "env-prepare",
        help="make an environment ready before the first server starts (uv sync, nix build)",
        description="Prepare SPEC (uv: sync the project, --locked when uv.lock exists; nix: build the devShell), "
        "then print the command that runs Python in it.",
    )
    prepare.add_argument("spec", metavar="SPEC", help="environment spec, e.g. uv:envs/threshold")
    prepare.add_argument("--force", action="store_true", help="uv: sync even when the venv looks up to date")
    prepare.set_defaults(run=run_prepare)


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
        ok, why = parse_env_spec(spec).available()
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
    if isinstance(backend, UvEnv):
        backend.prepare(force=args.force)
    else:
        backend.prepare()
    print(f"{backend.spec} ready: {shlex.join(backend.python())}")
    return 0
