"""Commands that run or talk to one server: ``serve``, ``ping``, ``info``, ``stop``, ``models``."""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

from ._args import parse_json_object

__all__ = ["register"]


def register(subparsers: Any) -> None:
    """Add the server commands."""
    serve = subparsers.add_parser("serve", help="serve the models of an environment at ADDRESS")
    serve.add_argument("address", help="ipc://PATH or tcp://HOST:PORT")
    serve.add_argument("--env", default="current", help="environment spec to run in (default: current)")
    serve.add_argument("--ready-file", help="created once the server is bound and preloads are done")
    serve.add_argument("--preload", action="append", default=[], metavar="MODEL", help="load MODEL before ready")
    serve.add_argument("--params", action="append", default=[], metavar="JSON", help="load params of each --preload")
    serve.add_argument("--token", default=os.environ.get("NAHUAL_TOKEN"), help="shared secret (default $NAHUAL_TOKEN)")
    serve.add_argument("--workers", type=int, default=8, help="requests handled at once (default 8)")
    serve.add_argument("--parent", type=int, metavar="PID", help="exit when process PID is gone")
    serve.add_argument(
        "--leave-files-on-sigterm",
        dest="leave_files",
        action="store_true",
        help="on SIGTERM, leave the socket and ready files to the supervisor that removes them "
        "(Snakemake service jobs: Snakemake looks at them after stopping the server)",
    )
    serve.set_defaults(run=run_serve)

    for name, helptext, function in (
        ("ping", "check that a server answers", run_ping),
        ("info", "print a server's info as JSON", run_info),
        ("stop", "ask a server to shut down", run_stop),
    ):
        command = subparsers.add_parser(name, help=helptext)
        command.add_argument("address")
        command.add_argument("--timeout", type=float, default=10.0, help="seconds (default 10)")
        command.set_defaults(run=function)

    models = subparsers.add_parser("models", help="list the models of this environment with their contracts")
    models.add_argument("--json", action="store_true", help="print JSON instead of a table")
    models.set_defaults(run=run_models)


def _parse_preloads(models: list[str], params: list[str]) -> list[tuple[str, dict[str, Any]]]:
    from ..errors import ConfigError

    if len(params) > len(models):
        raise ConfigError(f"{len(params)} --params given for {len(models)} --preload")
    texts = params + ["{}"] * (len(models) - len(params))
    return [(model, parse_json_object(text, f"--params for {model}")) for model, text in zip(models, texts)]


def run_serve(args: argparse.Namespace) -> int:
    """Serve until SIGTERM/SIGINT/shutdown; with ``--env`` re-execute inside that environment."""
    preloads = _parse_preloads(args.preload, args.params)
    if args.env != "current":
        from ..launcher import exec_server

        if args.token:
            os.environ["NAHUAL_TOKEN"] = args.token  # not on the command line, where ps shows it
        exec_server(args.env, _serve_argv(args))
    from .._server import Server
    from ..errors import LaunchError, NahualError

    server = Server(args.address, token=args.token, workers=args.workers)
    server.start()
    try:
        for model, params in preloads:
            try:
                server.load(model, params)
            except NahualError:
                raise
            except Exception as exc:  # the model's own load failed: one line, not a traceback
                raise LaunchError(f"--preload {model} failed: {type(exc).__name__}: {exc}") from exc
    except BaseException:
        server.close()
        raise
    if server.serve(ready_file=args.ready_file, parent_pid=args.parent, leave_files_on_sigterm=args.leave_files):
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)  # an orderly exit would close the socket, which removes its file
    return 0


def _serve_argv(args: argparse.Namespace) -> list[str]:
    """The ``serve`` arguments to run again inside another environment (without ``--env``)."""
    argv = [args.address, "--workers", str(args.workers)]
    if args.ready_file:
        argv += ["--ready-file", os.path.abspath(args.ready_file)]
    for model in args.preload:
        argv += ["--preload", model]
    for params in args.params:
        argv += ["--params", params]
    if args.parent is not None:
        argv += ["--parent", str(args.parent)]
    if args.leave_files:
        argv.append("--leave-files-on-sigterm")
    return argv


def _client(args: argparse.Namespace) -> Any:
    from ..client import Client

    return Client(args.address, timeout=args.timeout)


def run_ping(args: argparse.Namespace) -> int:
    """Print the round-trip time of one ping."""
    with _client(args) as client:
        print(f"{args.address}: pong in {client.ping() * 1000:.2f} ms")
    return 0


def run_info(args: argparse.Namespace) -> int:
    """Print the server's info as JSON."""
    with _client(args) as client:
        print(json.dumps(client.info(), indent=2))
    return 0


def run_stop(args: argparse.Namespace) -> int:
    """Ask the server to shut down."""
    with _client(args) as client:
        client.shutdown()
    print(f"{args.address}: stopping")
    return 0


def run_models(args: argparse.Namespace) -> int:
    """List the models registered here with their contracts (a model that fails to import says why)."""
    from ..errors import ConfigError
    from ..registry import available_models, resolve_model

    listing: dict[str, Any] = {}
    for name, reference in sorted(available_models().items()):
        try:
            listing[name] = resolve_model(name).contract.to_dict()
        except ConfigError as exc:
            listing[name] = {"error": str(exc), "reference": reference}
    if args.json:
        print(json.dumps(listing, indent=2))
        return 0
    for name, contract in listing.items():
        if "error" in contract:
            print(f"{name:12} unavailable here: {contract['error']}")
            continue
        axes = "/".join(contract["axes"]) or "any"
        tiling = f"tiles, halo {contract['halo']}" if contract["tiling"] else "whole frames"
        print(f"{name:12} {'+'.join(contract['inputs'])} [{axes}] -> {contract['output']} ({tiling})")
        for param, text in contract["params"].items():
            print(f"{'':14}{param}: {text}")
    return 0
