"""nahual: run each model in its own environment as a server; call it with numpy arrays.

The public API, layer by layer: errors and timeouts; the model author API
(:class:`Model`, :class:`Contract`); the server and :class:`Client`; the
environment launcher (:func:`launch`). Zarr streaming lives in
:mod:`nahual.stream` (extra ``zarr``), imported on its own.
"""

from importlib.metadata import PackageNotFoundError, version

from ._config import Timeout
from ._server import Server
from .client import Client, ModelHandle
from .errors import (
    AuthError,
    ConfigError,
    ContractError,
    LaunchError,
    NahualError,
    ProtocolError,
    RemoteError,
    TimeoutError,
    TransportError,
)
from .launcher import ServerProcess, launch
from .model import Contract, Model

try:
    __version__ = version("nahual")
except PackageNotFoundError:  # a source tree that was never installed
    __version__ = "0+unknown"


__all__ = [
    "AuthError",
    "Client",
    "ConfigError",
    "Contract",
    "ContractError",
    "LaunchError",
    "Model",
    "ModelHandle",
    "NahualError",
    "ProtocolError",
    "RemoteError",
    "Server",
    "ServerProcess",
    "Timeout",
    "TimeoutError",
    "TransportError",
    "__version__",
    "launch",
]
