"""nahual: run each model in its own environment as a server; call it with numpy arrays.

The public API, layer by layer: errors and timeouts; the model author API
(:class:`Model`, :class:`Contract`, :class:`Param`); the server and :class:`Client`; the
environment launcher (:func:`launch`). Zarr streaming lives in
:mod:`nahual.stream` (extra ``zarr``), imported on its own.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from ._config import Timeout
from .errors import (
    AuthError,
    BlockError,
    ConfigError,
    ContractError,
    InstanceError,
    LaunchError,
    NahualError,
    ParamError,
    PayloadError,
    ProtocolError,
    RemoteError,
    StateError,
    TimeoutError,
    TransportError,
    WeightsError,
)
from .model import Contract, Model, Param

if TYPE_CHECKING:
    from ._transport import reply_array
    from .client import Client, ModelHandle
    from .launcher import ServerProcess, launch
    from .server import Server

#: Names imported on first use, so that ``nahual serve`` starts without the
#: client, the launcher or importlib.metadata (start-up time is a goal).
_LAZY = {
    "Server": ".server",
    "Client": ".client",
    "ModelHandle": ".client",
    "launch": ".launcher",
    "ServerProcess": ".launcher",
    "reply_array": "._transport",
}


def __getattr__(name: str) -> Any:
    if name == "__version__":
        from importlib.metadata import PackageNotFoundError, version

        try:
            return version("nahual")
        except PackageNotFoundError:  # a source tree that was never installed
            return "0+unknown"
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name], __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'nahual' has no attribute {name!r}")


__all__ = [
    "AuthError",
    "BlockError",
    "Client",
    "ConfigError",
    "Contract",
    "ContractError",
    "InstanceError",
    "LaunchError",
    "Model",
    "ModelHandle",
    "NahualError",
    "Param",
    "ParamError",
    "PayloadError",
    "ProtocolError",
    "RemoteError",
    "Server",
    "ServerProcess",
    "StateError",
    "Timeout",
    "TimeoutError",
    "TransportError",
    "WeightsError",
    "__version__",
    "launch",
    "reply_array",
]
