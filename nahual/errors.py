"""The exception tree of nahual (every layer raises only these).

::

    NahualError
    ├── ProtocolError          a message that does not follow wire protocol v1
    │   └── PayloadError       a payload protocol v1 cannot carry (also a TypeError)
    ├── TransportError         the socket failed (closed, refused, address in use)
    │   └── TimeoutError       no reply within the timeout (also a builtin TimeoutError)
    ├── RemoteError            the server ran the request and it failed there
    │   └── AuthError          the server refused the request's token
    ├── LaunchError            a server could not be started in its environment
    ├── ConfigError            a bad environment spec, CLI option or config value (also a ValueError)
    │   ├── ParamError         a model parameter unknown, of the wrong type or out of range (also a TypeError)
    │   └── WeightsError       model weights missing from the cache, or a fetch/add that failed
    ├── ContractError          the data does not fit what the model declares (also a ValueError)
    ├── InstanceError          no model instance of that id is loaded (also a LookupError)
    ├── StateError             a client or server used after close, or opened twice (also a RuntimeError)
    └── BlockError             one block of a streamed run failed (names the block and the worker)

Foreign errors (pynng, subprocess) are translated once, where they arise,
and chained with ``raise ... from exc``.
"""

from __future__ import annotations

import builtins

__all__ = [
    "AuthError",
    "BlockError",
    "ConfigError",
    "ContractError",
    "InstanceError",
    "LaunchError",
    "NahualError",
    "ParamError",
    "PayloadError",
    "ProtocolError",
    "RemoteError",
    "StateError",
    "TimeoutError",
    "TransportError",
    "WeightsError",
]


class NahualError(Exception):
    """Root of every error nahual raises."""


class ProtocolError(NahualError):
    """A message broke wire protocol v1 (bad magic, version, lengths, header)."""


class PayloadError(ProtocolError, TypeError):
    """A payload protocol v1 cannot carry: object dtypes, non-str keys, nesting too deep, huge ints."""


class TransportError(NahualError):
    """The nng socket failed: closed, connection refused, address in use."""


class TimeoutError(TransportError, builtins.TimeoutError):
    """No reply arrived within the timeout."""


class RemoteError(NahualError):
    """The server received the request and it failed there.

    Attributes
    ----------
    remote_type : str
        Qualified name of the exception raised on the server.
    remote_message : str
        Its message.
    remote_traceback : str
        The server-side traceback, as text.
    operation : str
        The operation that failed (``load``, ``process``...).
    request_id : int
        The id of the failed request.
    """

    def __init__(
        self,
        remote_type: str,
        remote_message: str,
        remote_traceback: str = "",
        operation: str = "",
        request_id: int = 0,
    ) -> None:
        self.remote_type = remote_type
        self.remote_message = remote_message
        self.remote_traceback = remote_traceback
        self.operation = operation
        self.request_id = request_id
        where = f" in {operation!r}" if operation else ""
        super().__init__(f"{remote_type}{where}: {remote_message}")


class AuthError(RemoteError):
    """The server refused the request: missing or wrong token."""


class LaunchError(NahualError):
    """A server could not be started or did not become ready."""


class ConfigError(NahualError, ValueError):
    """A bad environment spec, CLI option or config value."""


class ContractError(NahualError, ValueError):
    """The input does not match the model's declared contract."""


class ParamError(ConfigError, TypeError):
    """A model parameter is unknown, of the wrong type or out of its range."""


class WeightsError(ConfigError):
    """Model weights are not in the cache, or fetching or adding them failed (names the command that fixes it)."""


class InstanceError(NahualError, LookupError):
    """No model instance of the requested id is loaded on the server."""


class StateError(NahualError, RuntimeError):
    """A client, transport or server was used in the wrong lifecycle state (closed, reopened)."""


class BlockError(NahualError):
    """One block of a streamed run failed; raised ``from`` the original error.

    Attributes
    ----------
    block : str
        Where the block is (``block 3 (t=1 y=0:128)``).
    worker : str
        The server address the block ran on, ``local``, or the reading thread.
    """

    def __init__(self, block: str, worker: str, message: str) -> None:
        self.block = block
        self.worker = worker
        super().__init__(f"{block} failed on {worker}: {message}")
