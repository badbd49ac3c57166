"""Environment launcher layer: ``launch`` (start a server and wait for it) and ``exec_server``.

``launch`` is for Python callers that own the server's lifetime;
``exec_server`` is for ``nahual serve --env SPEC``, which must *become* the
server so that a SIGTERM sent to it (by Snakemake) reaches the server itself.
Both run ``python -P``: the server's working directory is never on its import path.
"""

from __future__ import annotations

import json
import os
import secrets
import shlex
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any, NoReturn

from .._config import DEFAULT_TIMEOUT, Timeout, parse_timeout
from ..errors import ConfigError, LaunchError
from ._backends import Backend
from ._handle import ServerProcess
from ._logs import ServerRecord, prune_logs
from ._runtime import RuntimeFiles, ipc_path
from ._specs import parse_env_spec

__all__ = ["exec_server", "launch", "serve_args"]

#: ``python`` arguments that run ``nahual serve``; ``-P`` keeps the working directory off ``sys.path``.
SERVE = ["-P", "-m", "nahual", "serve"]


def serve_args(
    address: str,
    ready_file: Path | None = None,
    preload: str | None = None,
    params: Mapping[str, Any] | None = None,
    parent: int | None = None,
    allow_module_models: bool = False,
) -> list[str]:
    """Arguments of ``python ARGS...`` that run ``nahual serve`` with these options.

    A token is not among them: it travels in ``$NAHUAL_TOKEN``, where ``ps`` cannot show it.
    """
    args = [*SERVE, address]
    if ready_file is not None:
        args += ["--ready-file", str(ready_file)]
    if preload is not None:
        args += ["--preload", preload]
        if params:
            args += ["--params", json.dumps(dict(params))]
    elif params:
        raise ConfigError(f"params need a model to preload, got params {dict(params)!r} and no preload")
    if parent is not None:
        args += ["--parent", str(parent)]
    if allow_module_models:
        args.append("--allow-module-models")
    return args


def launch(
    env: str | Backend = "current",
    address: str | None = None,
    preload: str | None = None,
    params: Mapping[str, Any] | None = None,
    timeout: Timeout | float | None = DEFAULT_TIMEOUT,
    *,
    token: str | None = None,
    log_path: str | os.PathLike[str] | None = None,
    allow_module_models: bool = False,
    devices: str | None = None,
) -> ServerProcess:
    """Start a model server in an environment and wait until it answers ``ping``.

    Parameters
    ----------
    env : str or Backend
        Environment spec (``current``, ``venv:PATH``, ``uv:DIR``, ``nix:FLAKE#SHELL``,
        ``apptainer:IMAGE``, ``cmd:PREFIX``); it is prepared first (e.g. ``uv sync``).
    address : str, optional
        Where the server listens; default: a fresh ipc address in the private runtime directory.
    preload : str, optional
        Model to load before the server reports ready.
    params : mapping, optional
        Load parameters of ``preload`` (JSON values).
    timeout : Timeout, float or None
        ``startup`` bounds the wait for readiness (not the preparation); the
        handle's clients use the rest.
    token : str, optional
        Shared secret the server requires on every request; for a tcp address
        without one, a fresh token is made. The handle's clients carry it.
    log_path : path, optional
        Where the server's output goes; default: next to its socket in the runtime directory,
        where ``nahual logs`` finds it (the newest 50 logs of the last 7 days are kept).
    allow_module_models : bool
        Let clients load any ``module:Class`` (``nahual serve --allow-module-models``):
        whoever can reach the server may then run code as you. ``preload`` needs no permission.
    devices : str, optional
        The server's ``CUDA_VISIBLE_DEVICES`` (``"1"``, ``"2,3"``); default: this process's own.
        :func:`spread_devices` gives each of several instances its share.

    Returns
    -------
    ServerProcess
        A running server; use it as a context manager or call ``stop()``.

    Raises
    ------
    ConfigError
        For a malformed spec or options.
    LaunchError
        If the environment is unavailable or fails to prepare, or the server
        dies or misses the startup deadline (the message shows the log's tail).
    """
    backend = parse_env_spec(env)
    limits = parse_timeout(timeout)
    ok, why = backend.available()
    if not ok:
        raise LaunchError(f"environment {backend.spec} is not available here: {why}")
    backend.prepare()
    files = RuntimeFiles.create()
    prune_logs(files.stem.parent)
    log = Path(log_path) if log_path is not None else files.log_file
    address = address or files.address
    if token is None and ipc_path(address) is None:
        token = secrets.token_urlsafe(32)  # tcp: every local user can connect (docs/security.md)
    args = serve_args(address, files.ready_file, preload, params, os.getpid(), allow_module_models)
    server = ServerProcess(backend, backend.command(args), address, log, files.ready_file, limits, token, devices)
    server.record = ServerRecord(files.record_file, log, server.pid, backend.spec, preload, address, time.time())
    try:
        server.record.save()
        server.wait_ready()
    except BaseException:
        server.stop()
        raise
    return server


def exec_server(spec: str | Backend, serve_argv: list[str]) -> NoReturn:
    """Prepare an environment, then replace this process with ``nahual serve`` inside it.

    Parameters
    ----------
    spec : str or Backend
        Environment spec.
    serve_argv : list of str
        Arguments of ``nahual serve`` without ``--env`` (``[ADDRESS, "--ready-file", PATH, ...]``).

    Raises
    ------
    LaunchError
        If the environment is unavailable, fails to prepare, or its command cannot be executed.
    """
    backend = parse_env_spec(spec)
    ok, why = backend.available()
    if not ok:
        raise LaunchError(f"environment {backend.spec} is not available here: {why}")
    backend.prepare()
    argv = backend.command([*SERVE, *serve_argv])
    try:
        os.execvp(argv[0], argv)
    except OSError as exc:
        raise LaunchError(f"cannot run the server of {backend.spec}: {exc} (command: {shlex.join(argv)})") from exc
