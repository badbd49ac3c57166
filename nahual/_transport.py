"""The transport seam: how a :class:`~nahual.Client` gets one request answered.

Layer: transport interface, above the wire protocol; it imports no
implementation (no pynng, no shared memory). A :class:`Transport` takes one
request :class:`~nahual._protocol.Frame` and returns the reply frame, within a
timeout. Two implementations exist:

- :class:`nahual._nng_transport.NngTransport`, over an nng Req0 socket (and
  same-host shared memory, which it negotiates without the client knowing);
- :class:`nahual._inprocess.InProcessTransport`, which hands the encoded
  request to a request handler in this process, with no socket.

Both carry the same encoded bytes, so a request behaves alike through either.
On the serving side a handler turns one received message into one reply
through a :class:`Codec`, which is where a transport may add its own
out-of-band buffers (:data:`PLAIN` adds none).
"""

from __future__ import annotations

import threading
from abc import ABC, abstractmethod
from typing import TYPE_CHECKING, Any, Protocol

from . import _protocol as protocol
from ._state import State
from .errors import StateError

if TYPE_CHECKING:
    from ._protocol import Frame, MessagePlan

__all__ = ["PLAIN", "Codec", "Handler", "Transport"]


class Transport(ABC):
    """One way to reach a server: requests in, replies out (thread-safe).

    Subclasses implement :attr:`address`, :meth:`handle_request` and
    :meth:`release`, and call ``super().__init__()`` once they are open; the
    base class keeps the state, so that :meth:`close` is idempotent and a
    request after it raises :class:`StateError` whatever the transport.
    """

    def __init__(self) -> None:
        self._state = State.OPEN
        self._state_lock = threading.Lock()

    @property
    @abstractmethod
    def address(self) -> str:
        """Where the requests go, for messages (``ipc://…``, ``local``)."""

    @abstractmethod
    def handle_request(self, request: Frame, timeout: float | None) -> Frame:
        """Send one request and return the decoded reply (called only while open).

        Raises
        ------
        TimeoutError
            No reply within ``timeout`` seconds (``None``: no limit).
        TransportError
            The connection failed.
        ProtocolError
            The reply is not a protocol v1 message.
        """

    @abstractmethod
    def release(self) -> None:
        """Free what the transport holds (called once, by :meth:`close`)."""

    @property
    def state(self) -> State:
        """OPEN until :meth:`close`, then CLOSED."""
        return self._state

    def request(self, request: Frame, timeout: float | None) -> Frame:
        """Send one request and return its reply; see :meth:`handle_request`.

        Raises
        ------
        StateError
            When the transport is closed.
        """
        if self._state is not State.OPEN:
            raise StateError(f"the transport to {self.address} is {self._state.value}; create a new one")
        return self.handle_request(request, timeout)

    def close(self) -> None:
        """Release the transport (idempotent); requests after it raise :class:`StateError`."""
        with self._state_lock:
            if self._state is State.CLOSED:
                return
            self._state = State.CLOSED
        self.release()

    def __enter__(self) -> Transport:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.address!r}, {self._state.value})"


class Codec(Protocol):
    """How a request handler reads one received message and lays out its reply."""

    def decode(self, buffer: Any) -> Frame:
        """The received message (raises :class:`~nahual.errors.ProtocolError`)."""

    def plan(self, kind: int, request_id: int, meta: dict[str, Any], payload: Any) -> MessagePlan:
        """The reply to the message decoded last (raises ``TypeError`` for unsendable payloads)."""


class _PlainCodec:
    """Messages carry every array themselves: no out-of-band buffers."""

    def decode(self, buffer: Any) -> Frame:
        """Decode with no segment resolver (messages naming segments are refused)."""
        return protocol.decode(buffer)

    def plan(self, kind: int, request_id: int, meta: dict[str, Any], payload: Any) -> MessagePlan:
        """Plan with every array in the message."""
        return protocol.plan(kind, request_id, meta, payload)


#: The codec of messages that carry all their arrays (in-process, tcp, inproc).
PLAIN: Codec = _PlainCodec()


class Handler(Protocol):
    """What answers requests on the serving side (:class:`nahual.server.RequestHandler`)."""

    def handle(self, buffer: Any, codec: Codec = PLAIN, peer: int = 0) -> MessagePlan:
        """Answer one received message from connection ``peer`` with exactly one reply (never raises)."""

    def refuse(self, buffer: Any, codec: Codec, error: Exception) -> MessagePlan:
        """Answer one received message with ``error``, without running it (a server at its limit)."""
