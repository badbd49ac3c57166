"""The client: call a model server with numpy arrays and plain dicts.

Layer: above the transport, beside the server. One :class:`Client` owns one
Req0 socket; each request in flight uses its own nng context, so
:meth:`ModelHandle.map` and :meth:`ModelHandle.submit` pipeline requests
over that single socket. Every call is bounded by a timeout.
"""

from __future__ import annotations

import collections
import enum
import itertools
import os
import queue
import random
import threading
import time
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from .. import _protocol as protocol
from .._config import DEFAULT_TIMEOUT, Timeout, parse_timeout
from .._protocol import Kind
from .._transport import Channel, RequestSocket
from ..errors import AuthError, NahualError, ProtocolError, RemoteError
from ..model import Contract

__all__ = ["Client", "ModelHandle"]

#: Requests a client keeps in flight at most (threads waiting on replies).
MAX_INFLIGHT = 64


class _State(enum.Enum):
    UNOPENED = "unopened"
    OPEN = "open"
    CLOSED = "closed"


class Client:
    """A connection to one nahual server.

    Parameters
    ----------
    address : str
        The server's address (``ipc://…``, ``tcp://…``).
    timeout : Timeout, float or None
        A :class:`nahual.Timeout`, seconds for every limit, or None to wait forever.
    token : str, optional
        Shared secret for servers that require one (default: ``$NAHUAL_TOKEN``).

    Examples
    --------
    >>> with nahual.Client("ipc:///tmp/nahual/echo.sock") as client:   # doctest: +SKIP
    ...     echo = client.load("echo")
    ...     echo({"image": image})
    """

    def __init__(self, address: str, timeout: Timeout | float | None = DEFAULT_TIMEOUT, token: str | None = None):
        self.address = address
        self.timeout = parse_timeout(timeout)
        self._token = token if token is not None else os.environ.get("NAHUAL_TOKEN")
        self._state = _State.UNOPENED
        self._socket: RequestSocket | None = None
        self._channels: queue.SimpleQueue[Channel] = queue.SimpleQueue()
        self._channels_made: list[Channel] = []
        self._executor: ThreadPoolExecutor | None = None
        self._lock = threading.Lock()
        self._ids = itertools.count(random.getrandbits(40) << 20)
        #: Whether the server reads our shared-memory segments (None: not asked yet).
        self._shm: bool | None = None
        self.open()

    # -- lifecycle -------------------------------------------------------------------
    def open(self) -> Client:
        """Connect (done by the constructor; reopening a closed client raises)."""
        if self._state is _State.CLOSED:
            raise NahualError("this client is closed; create a new Client")
        if self._state is _State.UNOPENED:
            self._socket = RequestSocket(self.address, self.timeout.connect)
            self._state = _State.OPEN
        return self

    def close(self) -> None:
        """Close the socket and stop pending calls (idempotent)."""
        if self._state is _State.CLOSED:
            return
        self._state = _State.CLOSED
        # Contexts first (their pending calls fail), then the threads, then the socket:
        # nng can panic when a context is used while its socket closes.
        for channel in list(self._channels_made):
            channel.close()
        if self._executor is not None:
            self._executor.shutdown(wait=True, cancel_futures=True)
        if self._socket is not None:
            self._socket.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Client({self.address!r}, {self._state.value})"

    # -- requests --------------------------------------------------------------------
    def request(self, operation: str, payload: Any = None, timeout: float | None = ..., **meta: Any) -> Any:
        """Send one request and return the decoded reply payload.

        Raises
        ------
        RemoteError
            The server ran the request and it failed there.
        TimeoutError
            No reply within ``timeout`` (default: the client's request timeout).
        ProtocolError
            The reply is not a valid answer to this request.
        """
        if self._state is not _State.OPEN:
            raise NahualError(f"client for {self.address} is {self._state.value}")
        limit = self.timeout.request if timeout is ... else timeout
        request_id = next(self._ids) & 0xFFFF_FFFF_FFFF_FFFF
        meta = {"op": operation, **meta}
        if self._token:
            meta["token"] = self._token
        channel = self._take_channel()
        offer, writer = self._shm_offer(channel)
        if offer is not None:
            meta["shm"] = offer
        try:
            channel.send(protocol.plan(Kind.REQUEST, request_id, meta, payload, writer), limit)
            frame = self._receive(channel, limit)
        finally:
            self._channels.put(channel)
        if "shm" in frame.meta:
            self._shm = frame.meta["shm"] is True
        if frame.request_id != request_id:
            raise ProtocolError(f"reply to request {frame.request_id} arrived for request {request_id}")
        if frame.kind == Kind.ERROR:
            raise _remote_error(frame.meta)
        if frame.kind != Kind.REPLY:
            raise ProtocolError(f"expected a reply, got message kind {frame.kind}")
        return frame.payload

    def _shm_offer(self, channel: Channel) -> tuple[Any, Any]:
        """The request's ``meta.shm`` and the out-of-band writer to plan it with.

        Shared memory is used only once the server has opened one of our segments
        (it answers ``shm: true``): a server without ``/dev/shm``, or one that sees
        another ``/dev/shm`` than ours, keeps getting and sending plain messages.
        """
        if channel.writer is None or self._shm is False:
            return None, None
        if self._shm:
            return True, channel.writer
        return channel.writer.probe(), None  # a segment name for the server to try, arrays in band

    @staticmethod
    def _receive(channel: Channel, limit: float | None) -> protocol.Frame:
        """Receive and decode a reply; arrays from the server's shared memory are copied out
        (it reuses that memory for its next reply), so the segments are released at once."""
        try:
            return protocol.decode(channel.recv(limit), channel.segments)
        finally:
            channel.release()

    def submit(self, operation: str, payload: Any = None, **meta: Any) -> Future:
        """Like :meth:`request`, in a background thread; returns a Future."""
        with self._lock:
            if self._executor is None:
                self._executor = ThreadPoolExecutor(MAX_INFLIGHT, thread_name_prefix="nahual-client")
        return self._executor.submit(self.request, operation, payload, **meta)

    def _take_channel(self) -> Channel:
        try:
            return self._channels.get_nowait()
        except queue.Empty:
            assert self._socket is not None
            channel = self._socket.channel()
            self._channels_made.append(channel)
            return channel

    # -- operations ------------------------------------------------------------------
    def ping(self, timeout: float | None = ...) -> float:
        """Round-trip a ping; returns the seconds it took."""
        start = time.perf_counter()
        self.request("ping", timeout=timeout)
        return time.perf_counter() - start

    def info(self) -> dict[str, Any]:
        """Versions, models available (with contracts) and instances loaded on the server."""
        return self.request("info")

    def load(self, model: str, /, *, replica: int = 0, **params: Any) -> ModelHandle:
        """Load ``model`` with ``params`` (the same model and params give the same instance).

        ``replica`` > 0 asks for a separate copy, to process in parallel.
        """
        reply = self.request("load", params, model=model, replica=replica)
        return ModelHandle(self, reply)

    def shutdown(self) -> None:
        """Ask the server to exit."""
        self.request("shutdown")


class ModelHandle:
    """One model instance on a server; call it with a payload.

    Attributes
    ----------
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

    def __call__(self, payload: Any, **params: Any) -> Any:
        """Process one payload; ``params`` override the model's per-call parameters."""
        return self.client.request("process", {"data": payload, "params": params}, instance=self.instance_id)

    def submit(self, payload: Any, **params: Any) -> Future:
        """Process one payload in the background; returns a Future of the result."""
        return self.client.submit("process", {"data": payload, "params": params}, instance=self.instance_id)

    def map(self, payloads: Iterable[Any], inflight: int = 4, **params: Any) -> Iterator[Any]:
        """Process payloads with up to ``inflight`` requests pipelined; yields results in order."""
        if not 1 <= inflight <= MAX_INFLIGHT:
            raise ValueError(f"inflight must be between 1 and {MAX_INFLIGHT}, got {inflight}")
        window: collections.deque[Future] = collections.deque()
        try:
            for payload in payloads:
                window.append(self.submit(payload, **params))
                if len(window) >= inflight:
                    yield window.popleft().result()
            while window:
                yield window.popleft().result()
        finally:
            for future in window:
                future.cancel()

    def unload(self) -> None:
        """Remove this instance from the server."""
        self.client.request("unload", instance=self.instance_id)


def _remote_error(meta: dict[str, Any]) -> RemoteError:
    cls = AuthError if meta.get("type") == "AuthError" else RemoteError
    return cls(
        str(meta.get("type", "Error")),
        str(meta.get("message", "")),
        str(meta.get("traceback", "")),
        str(meta.get("op", "")),
        int(meta.get("request_id", 0) or 0),
    )
