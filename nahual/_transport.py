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
out-of-band buffers (:data:`PLAIN` adds none). While a request runs, the
transport may also offer a :class:`ReplyAllocator` (:func:`offering_reply_buffers`),
from which :func:`reply_array` gives a model arrays that the reply carries
without a copy.
"""

from __future__ import annotations

import contextlib
import threading
from abc import ABC, abstractmethod
from collections.abc import Iterator
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from . import _protocol as protocol
from ._state import State
from .errors import PayloadError, StateError

if TYPE_CHECKING:
    from numpy.typing import DTypeLike

    from ._protocol import Frame, MessagePlan

__all__ = ["PLAIN", "Codec", "Handler", "ReplyAllocator", "Transport", "offering_reply_buffers", "reply_array"]


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


class ReplyAllocator(Protocol):
    """Where :func:`reply_array` takes its arrays while a transport serves a request."""

    def array(self, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray | None:
        """A writable array the reply can send where it is, or None (then it is a plain one)."""


_REPLY_BUFFERS: ContextVar[ReplyAllocator | None] = ContextVar("nahual_reply_buffers", default=None)


@contextlib.contextmanager
def offering_reply_buffers(allocator: ReplyAllocator) -> Iterator[None]:
    """Let :func:`reply_array` take its arrays from ``allocator`` in this thread, for the ``with`` block."""
    token = _REPLY_BUFFERS.set(allocator)
    try:
        yield
    finally:
        _REPLY_BUFFERS.reset(token)


def reply_array(shape: int | tuple[int, ...], dtype: DTypeLike = float) -> np.ndarray:
    """A new, uninitialised array for a model's result, which the reply sends without copying it where it can.

    Called from ``Model.process`` on a server whose client maps shared memory
    (same host, ``ipc://``), a large array lives in the reply's own segment:
    the model writes its result once (``np.add(a, b, out=result)``,
    ``torch.from_numpy(result).copy_(t)``), and returning it, or a C-contiguous
    leading part of it (``result[:n]``), sends those bytes as they are.
    Anywhere else (tcp, in-process, small arrays, no ``/dev/shm``) it is
    ``np.empty(shape, dtype)``. Once returned, the array belongs to the reply:
    a model must not keep it or write it afterwards.

    Parameters
    ----------
    shape : int or tuple of int
        The array's shape.
    dtype : dtype-like
        Any dtype the protocol carries (not object or structured ones).

    Returns
    -------
    numpy.ndarray
        A writable C-contiguous array with undefined contents (as ``np.empty``).

    Raises
    ------
    PayloadError
        For a negative dimension or a dtype the protocol cannot carry.
    """
    dims = (shape,) if isinstance(shape, (int, np.integer)) else tuple(shape)
    if not all(isinstance(n, (int, np.integer)) and n >= 0 for n in dims):
        raise PayloadError(f"reply_array shape must be non-negative integers, got {shape!r}")
    try:
        kind = np.dtype(dtype)
    except TypeError as exc:
        raise PayloadError(f"reply_array dtype must be a numpy dtype, got {dtype!r}: {exc}") from None
    protocol.check_dtype(kind, "reply_array")
    allocator = _REPLY_BUFFERS.get()
    array = allocator.array(tuple(int(n) for n in dims), kind) if allocator is not None else None
    return array if array is not None else np.empty(dims, kind)
