"""The nng transport: both ends of a Req0/Rep0 conversation, shared memory included.

Layer: transport, over the plumbing of :mod:`nahual._nng`. The client side is
:class:`NngTransport` (a :class:`~nahual._transport.Transport`); its
server-side twin is :class:`Replier`, one per serving context. Between them
they negotiate same-host shared memory (``docs/protocol.md``, *Who may use
it*), so that neither the client nor the request handler sees a segment:

- the client offers ``meta.shm``: the name of one of its segments until the
  server has confirmed it can open them, then ``true``;
- the server answers ``meta.shm`` ``true`` (it opened the segment) or
  ``false`` (it cannot), and puts reply arrays into its own segments only
  for requests that carry ``meta.shm``;
- only after ``true`` does the client send arrays out of band.

Reply arrays reach the caller as read-only views on the server's segment,
which stays busy until the last of them is released
(:mod:`nahual._shm_maps`); while a request runs, the model may take its
result arrays from the reply's own segments (:func:`nahual.reply_array`,
:mod:`nahual._shm_replies`).

When the connection drops (the server died or closed it), every request in
flight fails at once with :class:`~nahual.errors.TransportError` instead of
waiting out its timeout; whoever started the server can say why
(``describe_loss``: :meth:`nahual.launcher.ServerProcess.client` adds the exit
signal and the log).
"""

from __future__ import annotations

import contextlib
import queue
import threading
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from . import _protocol as protocol
from ._legacy_wire import message_kind
from ._nng import Channel, RequestSocket
from ._protocol import Kind
from ._shm_replies import ReplyBuffers
from ._state import State
from ._transport import Transport, offering_reply_buffers
from .errors import StateError, TimeoutError, TransportError

if TYPE_CHECKING:
    from ._protocol import Frame, MessagePlan
    from ._shm_maps import SegmentReader
    from ._transport import Handler

__all__ = ["NngTransport", "Received", "Replier"]

#: Seconds :meth:`NngTransport.close` waits for requests in flight to fail before closing the socket.
DRAIN_S = 5.0


class NngTransport(Transport):
    """Requests over one nng Req0 socket; each request in flight uses its own context.

    Parameters
    ----------
    address : str
        ``ipc://PATH``, ``tcp://HOST:PORT`` or ``inproc://NAME``.
    connect_timeout : float or None
        Seconds to wait for the dial (None: forever).
    allow_foreign_socket : bool
        Talk to an ipc server that runs as another user (refused by default).
    describe_loss : callable, optional
        Called when a request fails because the connection dropped; its text
        (why the server went away) is added to the error.

    Raises
    ------
    TimeoutError
        When nothing answers the dial in time.
    TransportError
        When the ipc server runs as another user (and that is not allowed).
    ConfigError
        For an address nng cannot serve.
    """

    def __init__(
        self,
        address: str,
        connect_timeout: float | None = 5.0,
        allow_foreign_socket: bool = False,
        *,
        describe_loss: Callable[[], str] | None = None,
    ) -> None:
        self._address = address
        self._describe_loss = describe_loss
        self._socket = RequestSocket(self._dial_target(address), connect_timeout, allow_foreign_socket)
        self._channels: queue.SimpleQueue[Channel] = queue.SimpleQueue()
        self._made: list[Channel] = []
        self._busy: set[Channel] = set()
        self._inflight = 0
        self._idle = threading.Condition()
        #: Whether the server reads our shared-memory segments (None: not asked yet).
        self._shm: bool | None = None
        super().__init__()
        self._socket.on_disconnect(self._disconnected)

    @property
    def address(self) -> str:
        """The server's address, as given."""
        return self._address

    def _dial_target(self, address: str) -> str:
        """The nng address to dial for ``address``: itself here; a subclass may read options off its own."""
        return address

    def handle_request(self, request: Frame, timeout: float | None) -> Frame:
        """Send the request through a free context and wait for its reply (at most ``timeout`` s)."""
        with self._channel_in_use() as channel:
            offer, writer = self._offer(channel)
            meta = request.meta if offer is None else {**request.meta, "shm": offer}
            message = protocol.plan(Kind.REQUEST, request.request_id, meta, request.payload, writer)
            channel.send(message, timeout)
            try:
                # Reply arrays are views on the server's segments: each stays busy until
                # the last array on it is released, however many requests follow.
                frame = protocol.decode(channel.recv(timeout), channel.segments)
            finally:
                channel.release()
        confirmed = frame.meta.pop("shm", None)
        if confirmed is not None:
            self._shm = confirmed is True
        return frame

    def _offer(self, channel: Channel) -> tuple[Any, Any]:
        """The request's ``meta.shm`` and the out-of-band writer to plan it with.

        Shared memory is used only once the server has opened one of our segments:
        a server without ``/dev/shm``, or one that sees another ``/dev/shm`` than
        ours, keeps getting and sending plain messages.
        """
        if channel.writer is None or self._shm is False:
            return None, None
        if self._shm:
            return True, channel.writer
        return channel.writer.probe(), None  # a segment name for the server to try, arrays in band

    @contextlib.contextmanager
    def _channel_in_use(self) -> Iterator[Channel]:
        """A free context for one exchange, given back after it; a dropped connection raises the loss error."""
        channel = self._take_channel()
        try:
            yield channel
        except TimeoutError:
            raise
        except TransportError as exc:
            if self.state is not State.OPEN:
                raise  # closed by us
            raise self._lost(exc) from exc
        finally:
            self._give_back(channel)

    def _take_channel(self) -> Channel:
        with self._idle:
            if self.state is State.CLOSED:
                raise StateError(f"the transport to {self._address} is closed")
            self._inflight += 1
            try:
                channel = self._channels.get_nowait()
            except queue.Empty:
                try:
                    channel = self._socket.channel()
                except BaseException:
                    self._inflight -= 1
                    raise
                self._made.append(channel)
            self._busy.add(channel)
            return channel

    def _give_back(self, channel: Channel) -> None:
        channel.resume()
        with self._idle:
            self._busy.discard(channel)
            self._channels.put(channel)
            self._inflight -= 1
            self._idle.notify_all()

    def _disconnected(self) -> None:
        """The connection closed (an nng thread): fail what is in flight, from a thread of ours."""
        if self.state is State.OPEN:
            threading.Thread(target=self._fail_inflight, name="nahual-lost", daemon=True).start()

    def _fail_inflight(self) -> None:
        """Abort every request in flight: its server is gone, so no reply will come."""
        with self._idle:
            busy = list(self._busy)
        for channel in busy:
            channel.abort()

    def _lost(self, exc: TransportError) -> TransportError:
        """The error of a request whose connection failed, saying why when the server's owner knows."""
        why = "the server closed the connection or died"
        if self._describe_loss is not None:
            why = self._describe_loss()
        return TransportError(f"{exc}: {why}")

    def release(self) -> None:
        """Close the contexts (their pending requests fail), wait for those requests, close the socket.

        nng can panic when a context is used while its socket closes, hence the order.
        """
        with self._idle:
            channels = list(self._made)
        for channel in channels:
            channel.close()
        deadline = time.monotonic() + DRAIN_S
        with self._idle:
            while self._inflight and (left := deadline - time.monotonic()) > 0:
                self._idle.wait(left)
        self._socket.close()


class Replier:
    """One context of a Rep0 socket, on the serving side: receive a request, then answer it once.

    A context holds its request until the reply is sent, so the serving loop
    may receive on one thread and answer on another (:class:`Received`).

    Parameters
    ----------
    channel : Channel
        The context (and its shared memory).
    send_timeout : float or None
        Seconds a reply may wait to be sent before it is dropped (None: forever).
    """

    def __init__(self, channel: Channel, send_timeout: float | None) -> None:
        self.channel = channel
        self.send_timeout = send_timeout

    def receive(self) -> Received | None:
        """Wait for one request and decode it; None once the channel is closed (the server is stopping)."""
        try:
            buffer = self.channel.recv(timeout=None)
        except TransportError:
            return None
        return Received(self, buffer)

    def close(self) -> None:
        """Close the context (idempotent, from any thread): a pending receive or send fails."""
        self.channel.close()


class Received:
    """A request a :class:`Replier` received, decoded; answer it exactly once, from any thread.

    In the handler, request arrays may be views on the client's shared memory:
    valid until the reply is sent (which releases them), so a model that keeps
    its inputs after ``process`` returns must copy them.

    Attributes
    ----------
    operation : str
        The request's ``meta.op`` (empty when it cannot be decoded), for the
        serving loop to tell control requests from model requests.
    """

    def __init__(self, replier: Replier, buffer: Any) -> None:
        self._replier = replier
        self._buffer = buffer
        self._peer = replier.channel.peer
        self._codec = _SharedMemoryCodec(replier.channel)
        self.operation = self._codec.operation(buffer)

    def answer(self, handler: Handler) -> None:
        """Answer with ``handler.handle(buffer, codec, peer)`` and send the reply.

        While the handler runs, :func:`nahual.reply_array` takes its arrays from
        this server's segments when the reply will go through them.
        """
        with offering_reply_buffers(self._codec):
            reply = handler.handle(self._buffer, self._codec, peer=self._peer)
        self._send(reply)

    def refuse(self, handler: Handler, error: Exception) -> None:
        """Answer with ``error`` without running the request (``handler.refuse``) and send that reply."""
        self._send(handler.refuse(self._buffer, self._codec, error))

    def _send(self, reply: MessagePlan) -> None:
        self._buffer = None
        # A reply not sent in time is dropped: the client waits out its own timeout. Writing it
        # released the request's segments already; one in this server's segments goes stale.
        with contextlib.suppress(TransportError):
            self._replier.channel.send(reply, self._replier.send_timeout)
            self._codec.sent(reply, self._peer)


class _SharedMemoryCodec:
    """Decodes one request with the channel's segments and plans its reply as negotiated."""

    def __init__(self, channel: Channel) -> None:
        self._channel = channel
        #: Whether the reply goes through shared memory; None when the client did not ask.
        self._shares: bool | None = None
        #: The reply's out-of-band writer, with the arrays the model filled in its segments.
        self._buffers = ReplyBuffers(channel.writer) if channel.writer is not None else None
        #: The request decoded, or why it cannot be: it is decoded once, when received.
        self._decoded: Frame | Exception | None = None

    def operation(self, buffer: Any) -> str:
        """Decode the request (once) and return its ``meta.op``; empty when it cannot be decoded.

        A message of the earlier nahual wire (no v1 magic) is ``legacy``: model work, as ``process`` is.
        """
        try:
            operation = self.decode(buffer).meta.get("op")
        except Exception:
            return "" if message_kind(buffer) == "v1" else "legacy"
        return operation if isinstance(operation, str) else ""

    def decode(self, buffer: Any) -> Frame:
        """The request, with out-of-band arrays resolved (views on the client's segments)."""
        if self._decoded is None:
            try:
                frame = protocol.decode(buffer, self._channel.segments)
                self._shares = _shares_memory(frame.meta.pop("shm", None), self._channel.segments)
                self._decoded = frame
            except Exception as exc:
                self._decoded = exc
        if isinstance(self._decoded, Exception):
            raise self._decoded
        return self._decoded

    def plan(self, kind: int, request_id: int, meta: dict[str, Any], payload: Any) -> MessagePlan:
        """The reply, with ``meta.shm`` for a client that asked and large arrays in our segments if it maps them."""
        if self._shares is not None:
            meta = {**meta, "shm": self._shares}
        return protocol.plan(kind, request_id, meta, payload, self._buffers if self._shares else None)

    def array(self, shape: tuple[int, ...], dtype: Any) -> Any:
        """A reply array in one of our segments (:func:`nahual.reply_array`); None unless the reply goes there."""
        return self._buffers.array(shape, dtype) if self._shares and self._buffers is not None else None

    def sent(self, reply: MessagePlan, peer: int) -> None:
        """The reply went out to connection ``peer``: the segments it names are the client's to free."""
        if self._buffers is not None:
            self._buffers.sent(reply, peer)


def _shares_memory(offer: Any, segments: SegmentReader | None) -> bool | None:
    """Whether to answer through shared memory; None when the client did not ask.

    Replies go through shared memory only to clients that map it (same host,
    same ``/dev/shm``): they offer a segment name, which the server must open.
    """
    if offer is None or offer is False:
        return None
    if segments is None:
        return False
    if offer is True:
        return True
    return segments.probe(offer)
