"""Environment launcher layer: run a model server in its own environment and manage its life.

``launch(env)`` starts ``python -m nahual serve`` inside an environment
named by a spec string (see :func:`parse_env_spec`), waits until it answers
``ping`` and returns a :class:`ServerProcess` handle; ``exec_server`` is the
same for ``nahual serve --env``, replacing the calling process. Only the
core is imported here: ``uv``, ``nix`` and ``apptainer`` are run as programs.
Launched servers leave their logs in the runtime directory, bounded and
listed by ``nahual logs``; a failure's first line is its cause (``_cause.py``).
Several instances of one model each see their own GPUs (``spread_devices``).
"""

from __future__ import annotations

from ._api import exec_server, launch
from ._backends import ApptainerEnv, Backend, CmdEnv, CurrentEnv, NixEnv, UvEnv, VenvEnv
from ._devices import spread_devices
from ._handle import ServerProcess, State
from ._runtime import private_ipc_address, runtime_dir
from ._specs import BACKENDS, parse_env_spec

__all__ = [
    "BACKENDS",
    "ApptainerEnv",
    "Backend",
    "CmdEnv",
    "CurrentEnv",
    "NixEnv",
    "ServerProcess",
    "State",
    "UvEnv",
    "VenvEnv",
    "exec_server",
    "launch",
    "parse_env_spec",
    "private_ipc_address",
    "runtime_dir",
    "spread_devices",
]
