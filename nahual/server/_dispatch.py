"""The serving loop's dispatch: control requests answered at once, model requests by worker threads.

Layer: server, above the transport. An nng Rep0 context holds its request
until the reply is sent, so a server whose every context waits for a model
cannot even receive a ``ping``: a liveness check would then take a busy
server for a dead one. :class:`Dispatcher` therefore never lets a model hold
up receiving (``docs/architecture.md``, *Serving loop*):

- :data:`RECEIVERS` threads each wait on a context of their own;
- a control request (``ping``, ``info``, ``shutdown``, and anything that is
  not a model operation, e.g. a message that cannot be decoded) is answered
  right there, by the receiver;
- a model request (``load``, ``process``, ``unload``) is queued, with its
  context, for one of ``workers`` worker threads, and the receiver goes on
  with a fresh context;
- at most :data:`MAX_HELD` model requests are held (running or queued); past
  that a model request is refused at once with a ``StateError`` reply, and
  control requests are still answered.
"""

from __future__ import annotations

import queue
import threading
import time
from typing import TYPE_CHECKING

from .._nng_transport import Replier
from ..errors import StateError, TransportError

if TYPE_CHECKING:
    from .._nng import ReplySocket
    from .._nng_transport import Received
    from ._handler import RequestHandler

__all__ = ["MAX_HELD", "MODEL_OPERATIONS", "Dispatcher"]

#: Operations that may wait for a model (``legacy``: a message of the earlier nahual wire, a setup or
#: an array); every other request is answered by the receiving thread.
MODEL_OPERATIONS = frozenset({"load", "process", "unload", "legacy"})
#: Threads receiving requests (more than one: a control reply to a client that stops reading waits).
RECEIVERS = 2
#: Model requests held at most (running or queued), each with its own nng context.
MAX_HELD = 256


class Dispatcher:
    """Receives requests on a Rep0 socket and has each answered once, control requests first.

    Parameters
    ----------
    socket : ReplySocket
        The bound socket.
    handler : RequestHandler
        What answers the requests.
    workers : int
        Model requests answered at once.
    send_timeout : float or None
        Seconds a reply may wait to be sent before it is dropped (None: forever).
    """

    def __init__(self, socket: ReplySocket, handler: RequestHandler, workers: int, send_timeout: float | None) -> None:
        self._socket = socket
        self._handler = handler
        self._send_timeout = send_timeout
        self._lock = threading.Condition()
        self._free: list[Replier] = []
        self._made: list[Replier] = []
        self._queue: queue.SimpleQueue[tuple[Replier, Received] | None] = queue.SimpleQueue()
        self._running = 0
        self._stopping = False
        self._workers_wanted = workers
        self._receivers: list[threading.Thread] = []
        self._workers: list[threading.Thread] = []

    def start(self) -> None:
        """Open the receivers' contexts and start every thread.

        All are daemon threads: a model call that never returns must not keep the process alive.
        """
        for index in range(RECEIVERS):
            thread = threading.Thread(
                target=self._receive, args=(self._spare(),), name=f"nahual-receiver-{index}", daemon=True
            )
            self._receivers.append(thread)
        for index in range(self._workers_wanted):
            self._workers.append(threading.Thread(target=self._work, name=f"nahual-worker-{index}", daemon=True))
        for thread in (*self._receivers, *self._workers):
            thread.start()

    def close(self) -> None:
        """Stop receiving and drop the queued model requests (idempotent, does not block).

        Every context is closed at once, so a request still running is
        abandoned: its reply is never sent.
        """
        with self._lock:
            if self._stopping:
                return
            self._stopping = True
            repliers = list(self._made)
        for replier in repliers:
            replier.close()  # receivers wake up; running requests' replies will not be sent
        for _ in self._workers:
            self._queue.put(None)

    def wait(self, timeout: float) -> int:
        """After :meth:`close`, wait up to ``timeout`` s for the threads; returns how many requests still run."""
        deadline = time.monotonic() + timeout
        for thread in self._receivers:
            thread.join(max(0.0, deadline - time.monotonic()))
        with self._lock:
            while self._running and (left := deadline - time.monotonic()) > 0:
                self._lock.wait(left)
            return self._running

    def _spare(self) -> Replier | None:
        """A free context, or a new one while fewer than MAX_HELD are held; None at the limit or when stopping."""
        with self._lock:
            if self._stopping:
                return None
            if self._free:
                return self._free.pop()
            if len(self._made) >= MAX_HELD + RECEIVERS:
                return None
            try:
                replier = Replier(self._socket.channel(), self._send_timeout)
            except TransportError:
                return None  # the socket closed under us: stopping
            self._made.append(replier)
            return replier

    def _receive(self, replier: Replier | None) -> None:
        while replier is not None:
            received = replier.receive()
            if received is None:
                return  # closed: the server is stopping
            if received.operation not in MODEL_OPERATIONS:
                received.answer(self._handler)
            elif (spare := self._spare()) is None:
                received.refuse(self._handler, StateError(_full()))
            else:
                self._queue.put((replier, received))
                replier = spare
            del received  # a request kept here would pin its buffers until the next one arrives

    def _work(self) -> None:
        while (item := self._queue.get()) is not None:
            replier, received = item
            del item
            with self._lock:
                stopping = self._stopping
                if not stopping:
                    self._running += 1
            if stopping:
                replier.close()  # dropped: the server is stopping
                continue
            try:
                received.answer(self._handler)
            finally:
                del received
                with self._lock:
                    self._running -= 1
                    if self._stopping:
                        replier.close()
                    else:
                        self._free.append(replier)
                    self._lock.notify_all()


def _full() -> str:
    return f"the server holds {MAX_HELD} model requests already (running or queued); retry once some are answered"
