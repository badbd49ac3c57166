"""Commands that run or talk to one server: ``serve``, ``ping``, ``info``, ``stop``, ``models``.

CLI layer. ``serve`` takes its token from ``--token-file`` (private to the
user) or ``$NAHUAL_TOKEN``; ``--token`` still works but every user sees it in
``ps``, so it warns (``docs/security.md``).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import stat
import sys
from typing import Any, NoReturn

from ._args import parse_json_object

__all__ = ["register"]


def register(subparsers: Any) -> None:
    """Add the server commands."""
    serve = subparsers.add_parser("serve", help="serve the models of an environment at ADDRESS")
    serve.add_argument("address", help="ipc://PATH or tcp://HOST:PORT")
    serve.add_argument("--env", default="current", help="environment spec to run in (default: current)")
    serve.add_argument("--ready-file", help="created once the server is bound and preloads are done")
    serve.add_argument(
        "--error-in-ready-file",
        dest="error_ready",
        action="store_true",
        help='when a preload fails, write the ready file holding {"error": WHY} and stay bound until stopped '
        "(for supervisors such as Snakemake that wait for the files: consumers learn at once, `nahual apply --ready`)",
    )
    serve.add_argument("--preload", action="append", default=[], metavar="MODEL", help="load MODEL before ready")
    serve.add_argument("--params", action="append", default=[], metavar="JSON", help="load params of each --preload")
    token = serve.add_mutually_exclusive_group()
    token.add_argument(
        "--token-file", metavar="PATH", help="file holding the shared secret (mode 0600; default: $NAHUAL_TOKEN)"
    )
    token.add_argument("--token", help="shared secret on the command line, where `ps` shows it (prefer --token-file)")
    serve.add_argument(
        "--allow-module-models",
        action="store_true",
        help="let clients load any module:Class (they can then run code as you; registered models always load)",
    )
    serve.add_argument(
        "--legacy-wire",
        action="store_true",
        help="also answer clients of the earlier nahual (0.0.x, aliby) on ADDRESS: ipc, or tcp on loopback only "
        "(that wire has no token); their setups use the first --preload (docs/coming-from-nahual-0.md)",
    )
    serve.add_argument(
        "--max-message-bytes",
        type=int,
        metavar="N",
        help="messages over N bytes close their connection unread (default 268435456 = 256 MiB; 0: no limit)",
    )
    serve.add_argument("--workers", type=int, default=8, help="model requests handled at once (default 8)")
    serve.add_argument(
        "--max-instances",
        type=int,
        metavar="N",
        help="model instances kept loaded at most; the least recently used idle one makes room (default 16)",
    )
    serve.add_argument(
        "--send-timeout",
        type=float,
        default=10.0,
        metavar="S",
        help="seconds a reply may wait to be sent before it is dropped (default 10)",
    )
    serve.add_argument(
        "--weights",
        metavar="DIR",
        help="the weights cache the models read (sets $NAHUAL_WEIGHTS; default: it, else the per-user cache)",
    )
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
    token = _read_token(args)
    if args.weights:  # inherited through exec into the environment, read by the models' weight lookups
        os.environ["NAHUAL_WEIGHTS"] = os.path.abspath(os.path.expanduser(args.weights))
    if args.env != "current":
        from ..launcher import exec_server

        if token:
            os.environ["NAHUAL_TOKEN"] = token  # not on the command line, where ps shows it
        exec_server(args.env, _serve_argv(args))
    from .._malloc import SERVER, tune_malloc
    from ..errors import LaunchError, NahualError
    from ..server import Server

    tune_malloc(SERVER)  # before the server's threads: they allocate the models' temporaries

    limit = {} if args.max_message_bytes is None else {"max_message_bytes": args.max_message_bytes or None}
    if args.max_instances is not None:
        limit["max_instances"] = args.max_instances
    server = Server(
        args.address,
        token=token,
        workers=args.workers,
        send_timeout=args.send_timeout,
        allow_module_models=args.allow_module_models,
        legacy_wire=args.legacy_wire,
        **limit,
    )
    server.start()
    try:
        for model, params in preloads:
            try:
                server.load(model, params)
            except NahualError:
                raise
            except Exception as exc:  # the model's own load failed: one line, not a traceback
                raise LaunchError(f"--preload {model} failed: {type(exc).__name__}: {exc}") from exc
    except BaseException as exc:
        if args.error_ready and args.ready_file and isinstance(exc, NahualError):
            _fail_in_ready_file(server, args, exc)
        server.close()
        raise
    if server.serve(ready_file=args.ready_file, parent_pid=args.parent, leave_files_on_sigterm=args.leave_files):
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)  # an orderly exit would close the socket, which removes its file
    return 0


def _fail_in_ready_file(server: Any, args: argparse.Namespace, exc: BaseException) -> NoReturn:
    """A failed start with ``--error-in-ready-file``: say why, write it in the ready file, stay bound until stopped.

    A supervisor such as Snakemake starts a service's consumers once all its
    files exist (the ready file and the socket), so the server keeps its socket
    until SIGTERM, SIGINT or its parent's death; its consumers read the error
    from the ready file (``nahual apply --ready``) and fail at once. Exits with status 1.
    """
    why = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    print(f"nahual serve: error: {why}", file=sys.stderr, flush=True)
    partial = f"{args.ready_file}.partial-{os.getpid()}"
    with open(partial, "w") as handle:
        json.dump({"error": why, "pid": os.getpid()}, handle)
    os.replace(partial, args.ready_file)
    if not server.serve(parent_pid=args.parent, leave_files_on_sigterm=args.leave_files):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(args.ready_file)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(1)


def _serve_argv(args: argparse.Namespace) -> list[str]:
    """The ``serve`` arguments to run again inside another environment (without ``--env``)."""
    argv = [args.address, "--workers", str(args.workers), "--send-timeout", repr(args.send_timeout)]
    if args.max_instances is not None:
        argv += ["--max-instances", str(args.max_instances)]
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
    if args.error_ready:
        argv.append("--error-in-ready-file")
    if args.allow_module_models:
        argv.append("--allow-module-models")
    if args.legacy_wire:
        argv.append("--legacy-wire")
    if args.max_message_bytes is not None:
        argv += ["--max-message-bytes", str(args.max_message_bytes)]
    return argv


def _read_token(args: argparse.Namespace) -> str | None:
    """The token of ``serve``: from ``--token-file``, ``--token`` (with a warning) or ``$NAHUAL_TOKEN``."""
    if args.token is not None:
        print(
            "nahual serve: warning: --token is visible to every user in `ps`; use --token-file PATH or NAHUAL_TOKEN",
            file=sys.stderr,
        )
        return args.token
    if args.token_file is None:
        return os.environ.get("NAHUAL_TOKEN")
    from ..errors import ConfigError

    path = args.token_file
    try:
        with open(path, "rb") as handle:
            info = os.fstat(handle.fileno())  # of the file read, not of whatever the path names later
            mode = stat.S_IMODE(info.st_mode)
            if info.st_uid != os.geteuid():
                raise ConfigError(
                    f"--token-file {path} must belong to you (uid {os.geteuid()}), found uid {info.st_uid}"
                )
            if mode & 0o077:
                raise ConfigError(f"--token-file {path} must be private (mode 0600), found mode {mode:04o}")
            text = handle.read().decode("utf-8", "surrogateescape").strip()
    except OSError as exc:
        raise ConfigError(f"--token-file {path} cannot be read: {exc.strerror or exc}") from exc
    if not text:
        raise ConfigError(f"--token-file {path} must hold a token, found an empty file")
    return text


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
