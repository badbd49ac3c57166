"""The in-process transport: a request handler in this process, reached with no socket.

Layer: transport, beside :mod:`nahual._nng_transport`; it needs only the
:class:`~nahual._transport.Handler` interface, not the server. Each request is
encoded into bytes exactly as for a socket, answered by ``handler.handle`` in
one of the transport's worker threads, and the reply decoded from bytes: the
model sees the same read-only arrays, and the caller the same errors, as
through a server (``nahual apply --local`` relies on it).
"""

from __future__ import annotations

from concurrent.futures import CancelledError, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from typing import TYPE_CHECKING

from . import _protocol as protocol
from ._transport import Transport
from .errors import ConfigError, StateError, TimeoutError, TransportError

if TYPE_CHECKING:
    from ._protocol import Frame
    from ._transport import Handler

__all__ = ["InProcessTransport"]


class InProcessTransport(Transport):
    """Requests answered by ``handler`` in this process (``Client(transport=InProcessTransport(handler))``).

    Parameters
    ----------
    handler : Handler
        Anything with ``handle(buffer) -> MessagePlan``, such as :class:`nahual.server.RequestHandler`.
    workers : int
        Requests answered at once (as a server's ``workers``).
    name : str
        The transport's :attr:`address`, for messages.

    Notes
    -----
    A request that times out keeps running in its worker thread, as it would
    on a server; closing the transport does not wait for it. The transport
    never closes the handler: its owner does.
    """

    def __init__(self, handler: Handler, *, workers: int = 8, name: str = "local") -> None:
        if workers < 1:
            raise ConfigError(f"workers must be at least 1, got {workers}")
        self.handler = handler
        self._name = name
        self._pool = ThreadPoolExecutor(workers, thread_name_prefix=f"nahual-{name}")
        super().__init__()

    @property
    def address(self) -> str:
        """The name given (``local`` by default)."""
        return self._name

    def handle_request(self, request: Frame, timeout: float | None) -> Frame:
        """Encode the request, let a worker thread answer it, decode the reply."""
        message = protocol.encode(request.kind, request.request_id, request.meta, request.payload)
        try:
            future = self._pool.submit(self._answer, message)
        except RuntimeError:  # closed meanwhile
            raise StateError(f"the transport to {self._name} is closed") from None
        try:
            reply = future.result(timeout)
        except FutureTimeout:
            raise TimeoutError(f"no reply from {self._name} within {timeout} s") from None
        except CancelledError:
            raise TransportError(f"the transport to {self._name} closed before the request ran") from None
        return protocol.decode(reply)

    def _answer(self, message: bytearray) -> bytearray:
        plan = self.handler.handle(message)
        reply = bytearray(plan.nbytes)
        plan.write_into(reply)
        return reply

    def release(self) -> None:
        """Stop the worker threads once their requests are done; requests not started are dropped."""
        self._pool.shutdown(wait=False, cancel_futures=True)
