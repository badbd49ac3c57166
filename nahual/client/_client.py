"""The client: call a model server with numpy arrays and plain dicts.

Layer: client, above the transport interface and beside the server. One
:class:`Client` owns one :class:`~nahual._transport.Transport`: an nng socket
to ``address`` unless another transport is injected (``transport=``, e.g. an
:class:`~nahual._inprocess.InProcessTransport`). Requests in flight run side
by side, so :meth:`ModelHandle.map` and :meth:`ModelHandle.submit` pipeline
over that one transport. Every call is bounded by a timeout: ``timeout=``
seconds, ``None`` for no limit, or the client's default.

Reply arrays are read-only views on what carried them (the nng message, or
over ``ipc://`` the server's shared memory, which the server does not reuse
while a view exists); ``copy=True`` on a call returns private, writable
copies instead (``docs/protocol.md``, *Copies*).
"""

from __future__ import annotations

import collections
import itertools
import os
import secrets
import threading
import time
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import numpy as np

from .._config import DEFAULT_TIMEOUT, USE_CLIENT_DEFAULT, Timeout, UseClientDefault, parse_seconds, parse_timeout
from .._nng_transport import NngTransport
from .._protocol import Frame, Kind
from .._state import State
from .._transport import Transport
from ..errors import AuthError, ConfigError, ProtocolError, RemoteError, StateError
from ..model import Contract
from ._legacy import LegacyTransport, is_legacy_address

__all__ = ["Client", "ModelHandle"]

#: Requests a client keeps in flight at most (threads waiting on replies).
MAX_INFLIGHT = 64

#: A call's time limit: seconds, None (no limit) or USE_CLIENT_DEFAULT.
Limit = float | None | UseClientDefault


class Client:
    """A connection to one nahual server.

    Parameters
    ----------
    address : str, optional
        The server's address (``ipc://…``, ``tcp://…``); not with ``transport``.
    timeout : Timeout, float or None
        A :class:`nahual.Timeout`, seconds for every limit, or None to wait forever.
        ``timeout.request`` is the default of every call's ``timeout=``.
    token : str, optional
        Shared secret for servers that require one (default: ``$NAHUAL_TOKEN``).
    transport : Transport, optional
        The transport to use instead of an nng socket to ``address``; the client
        owns it from then on and closes it with itself.
    allow_foreign_socket : bool
        Connect to an ipc socket that belongs to another user (whose server
        would see every request and could answer anything); refused by default.

    Raises
    ------
    ConfigError
        When neither or both of ``address`` and ``transport`` are given.
    TimeoutError
        When nothing answers at ``address`` within ``timeout.connect``.
    TransportError
        When the ipc socket at ``address`` belongs to another user (see ``allow_foreign_socket``).

    Examples
    --------
    >>> with nahual.Client("ipc:///run/user/1000/nahual/echo.sock") as client:   # doctest: +SKIP
    ...     echo = client.load("echo")
    ...     echo({"image": image}, timeout=5)
    """

    def __init__(
        self,
        address: str | None = None,
        timeout: Timeout | float | None = DEFAULT_TIMEOUT,
        token: str | None = None,
        *,
        transport: Transport | None = None,
        allow_foreign_socket: bool = False,
    ) -> None:
        if (address is None) == (transport is None):
            given = "both" if transport is not None else "neither"
            raise ConfigError(f"a Client needs an address or a transport, got {given}")
        self.timeout = parse_timeout(timeout)
        self._token = token if token is not None else os.environ.get("NAHUAL_TOKEN")
        self._state = State.UNOPENED
        self._transport = transport
        self.address: str = transport.address if transport is not None else str(address)
        self._executor: ThreadPoolExecutor | None = None
        self._lock = threading.Lock()
        self._allow_foreign_socket = allow_foreign_socket
        # Request ids start at a random prefix of this client's own (never the global `random`, which
        # callers seed): the server tells connections apart, and ids keep replies to their requests.
        self._ids = itertools.count(secrets.randbits(40) << 20)
        self.open()

    # -- lifecycle -----------------------------------------------------------------------
    def open(self) -> Client:
        """Connect (done by the constructor; reopening a closed client raises :class:`StateError`)."""
        if self._state is State.CLOSED:
            raise StateError(f"this client of {self.address} is closed; create a new Client")
        if self._state is State.UNOPENED:
            if self._transport is None:
                opener = LegacyTransport if is_legacy_address(self.address) else NngTransport  # nahual0+ipc://...
                self._transport = opener(
                    self.address, self.timeout.connect, allow_foreign_socket=self._allow_foreign_socket
                )
            self._state = State.OPEN
        return self

    def close(self) -> None:
        """Close the transport (pending calls fail) and stop the background threads (idempotent)."""
        with self._lock:
            if self._state is State.CLOSED:
                return
            self._state = State.CLOSED
        if self._transport is not None:
            self._transport.close()
        if self._executor is not None:
            self._executor.shutdown(wait=True, cancel_futures=True)

    @property
    def transport(self) -> Transport | None:
        """The transport this client owns (None before it opened)."""
        return self._transport

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Client({self.address!r}, {self._state.value})"

    # -- requests ------------------------------------------------------------------------
    def request(
        self,
        operation: str,
        payload: Any = None,
        timeout: Limit = USE_CLIENT_DEFAULT,
        *,
        copy: bool = False,
        **meta: Any,
    ) -> Any:
        """Send one request and return the decoded reply payload.

        Parameters
        ----------
        operation : str
            The protocol operation (``ping``, ``load``, ``process``…).
        payload : Any
            Dicts, lists, JSON scalars and numpy arrays.
        timeout : float, None or USE_CLIENT_DEFAULT
            Seconds to wait for the reply; None waits forever; by default the client's ``timeout.request``.
        copy : bool
            Return private, writable copies of the reply's arrays (one memcpy each), so
            that none keeps the server's shared memory busy; by default they are
            read-only views that do, until they are released.
        **meta
            Protocol fields of the request (``instance``, ``model``…).

        Raises
        ------
        RemoteError
            The server ran the request and it failed there.
        TimeoutError
            No reply within ``timeout``.
        ProtocolError
            The reply is not a valid answer to this request.
        StateError
            The client is closed.
        TypeError
            The payload holds something the protocol cannot carry (nothing was sent).
        """
        if self._state is not State.OPEN or self._transport is None:
            raise StateError(f"client of {self.address} is {self._state.value}")
        limit = self._limit(timeout)
        request_id = next(self._ids) & 0xFFFF_FFFF_FFFF_FFFF
        meta = {"op": operation, **meta}
        if operation == "process" and limit is not None:  # the server drops it unrun once nobody waits for it
            meta.setdefault("deadline_s", limit)
        if self._token:
            meta["token"] = self._token
        frame = self._transport.request(Frame(Kind.REQUEST, request_id, meta, payload), limit)
        if frame.request_id != request_id:
            raise ProtocolError(f"reply to request {frame.request_id} arrived for request {request_id}")
        if frame.kind == Kind.ERROR:
            raise _remote_error(frame.meta)
        if frame.kind != Kind.REPLY:
            raise ProtocolError(f"expected a reply, got message kind {frame.kind}")
        return _copied(frame.payload) if copy else frame.payload

    def _limit(self, timeout: Limit) -> float | None:
        if isinstance(timeout, UseClientDefault):
            return self.timeout.request
        return parse_seconds(timeout)

    def submit(
        self,
        operation: str,
        payload: Any = None,
        timeout: Limit = USE_CLIENT_DEFAULT,
        *,
        copy: bool = False,
        **meta: Any,
    ) -> Future:
        """Like :meth:`request`, in a background thread; returns a Future of the reply payload."""
        self._limit(timeout)  # a bad limit fails here, not in the future
        with self._lock:
            if self._state is not State.OPEN:
                raise StateError(f"client of {self.address} is {self._state.value}")
            if self._executor is None:
                self._executor = ThreadPoolExecutor(MAX_INFLIGHT, thread_name_prefix="nahual-client")
            return self._executor.submit(self.request, operation, payload, timeout, copy=copy, **meta)

    # -- operations ----------------------------------------------------------------------
    def ping(self, timeout: Limit = USE_CLIENT_DEFAULT) -> float:
        """Round-trip a ping; returns the seconds it took."""
        start = time.perf_counter()
        self.request("ping", timeout=timeout)
        return time.perf_counter() - start

    def info(self, timeout: Limit = USE_CLIENT_DEFAULT) -> dict[str, Any]:
        """Versions, models (with contracts, and why any cannot run there) and instances loaded on the server."""
        return self.request("info", timeout=timeout)

    def load(
        self, model: str, /, *, replica: int = 0, timeout: Limit = USE_CLIENT_DEFAULT, **params: Any
    ) -> ModelHandle:
        """Load ``model`` with ``params`` (the same model and params give the same instance).

        ``replica`` > 0 asks for a separate copy, to process in parallel.
        ``replica`` and ``timeout`` are reserved: they are never model params.
        """
        reply = self.request("load", params, timeout, model=model, replica=replica)
        return ModelHandle(self, reply)

    def shutdown(self, timeout: Limit = USE_CLIENT_DEFAULT) -> None:
        """Ask the server to exit."""
        self.request("shutdown", timeout=timeout)


class ModelHandle:
    """One model instance on a server; call it with a payload.

    ``timeout`` and ``copy`` are reserved keywords of :meth:`__call__`,
    :meth:`submit` and :meth:`map`: ``timeout`` bounds the request and
    ``copy=True`` returns private, writable arrays instead of read-only views
    (see :meth:`Client.request`); neither is passed to the model as a param.

    Attributes
    ----------
    client : Client
    instance_id : str
    model : str
    params : dict
    contract : Contract
    """

    def __init__(self, client: Client, reply: dict[str, Any]) -> None:
        self.client = client
        self.instance_id: str = reply["instance"]
        self.model: str = reply["model"]
        self.params: dict[str, Any] = reply["params"]
        self.contract = Contract.from_dict(reply["contract"])

    def __repr__(self) -> str:
        return f"ModelHandle({self.model!r}, instance={self.instance_id!r}, {self.client.address})"

    def __call__(self, payload: Any, *, timeout: Limit = USE_CLIENT_DEFAULT, copy: bool = False, **params: Any) -> Any:
        """Process one payload; ``params`` override the model's per-call parameters."""
        body = {"data": payload, "params": params}
        return self.client.request("process", body, timeout, copy=copy, instance=self.instance_id)

    def submit(self, payload: Any, *, timeout: Limit = USE_CLIENT_DEFAULT, copy: bool = False, **params: Any) -> Future:
        """Process one payload in the background; returns a Future of the result."""
        body = {"data": payload, "params": params}
        return self.client.submit("process", body, timeout, copy=copy, instance=self.instance_id)

    def map(
        self,
        payloads: Iterable[Any],
        inflight: int = 4,
        *,
        timeout: Limit = USE_CLIENT_DEFAULT,
        copy: bool = False,
        **params: Any,
    ) -> Iterator[Any]:
        """Process payloads with up to ``inflight`` requests pipelined; yields results in order.

        Raises
        ------
        ConfigError
            When ``inflight`` is not between 1 and 64.
        """
        if not 1 <= inflight <= MAX_INFLIGHT:
            raise ConfigError(f"inflight must be between 1 and {MAX_INFLIGHT}, got {inflight}")
        window: collections.deque[Future] = collections.deque()
        try:
            for payload in payloads:
                window.append(self.submit(payload, timeout=timeout, copy=copy, **params))
                if len(window) >= inflight:
                    yield window.popleft().result()
            while window:
                yield window.popleft().result()
        finally:
            for future in window:
                future.cancel()

    def unload(self, timeout: Limit = USE_CLIENT_DEFAULT) -> None:
        """Remove this instance from the server."""
        self.client.request("unload", timeout=timeout, instance=self.instance_id)


def _copied(tree: Any) -> Any:
    """The payload with each array replaced by a private, writable copy (nested dicts and lists walked)."""
    if isinstance(tree, np.ndarray):
        return np.array(tree)
    if isinstance(tree, dict):
        return {key: _copied(value) for key, value in tree.items()}
    if isinstance(tree, list):
        return [_copied(value) for value in tree]
    return tree


def _remote_error(meta: dict[str, Any]) -> RemoteError:
    cls = AuthError if meta.get("type") == "AuthError" else RemoteError
    return cls(
        str(meta.get("type", "Error")),
        str(meta.get("message", "")),
        str(meta.get("traceback", "")),
        str(meta.get("op", "")),
        int(meta.get("request_id", 0) or 0),
    )
