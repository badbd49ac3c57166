"""The serving loop: sockets, worker threads, signals, the ready file and the parent watch.

Layer: server, above the transport. :class:`Server` binds a Rep0 socket and
hands it to a :class:`~nahual.server._dispatch.Dispatcher`, which answers
control requests at once and has ``workers`` threads answer model requests,
all through one :class:`~nahual.server.RequestHandler`. ``nahual serve`` runs
:meth:`Server.serve`. A server is started once: UNOPENED → OPEN → CLOSED, and
``start()`` after ``close()`` raises :class:`~nahual.errors.StateError`. A
server whose parent is gone exits within :data:`PARENT_GRACE` seconds, even
while a model call runs (that call is abandoned: its reply is never sent).
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import signal
import sys
import threading
from typing import TYPE_CHECKING, Any

from .._config import parse_seconds
from .._nng import ReplySocket, check_address, ipc_path
from .._state import State
from ..errors import ConfigError, StateError
from ._dispatch import Dispatcher
from ._handler import RequestHandler
from ._instances import MAX_INSTANCES
from ._legacy import LegacyResponder, WireSwitch, check_legacy_address

if TYPE_CHECKING:
    from types import FrameType

__all__ = ["Server"]

#: Seconds a reply may wait to be sent by default (then it is dropped and the worker moves on).
SEND_TIMEOUT = 10.0
#: Seconds between a ``shutdown`` request and the stop, so that its reply can leave.
SHUTDOWN_DELAY = 0.05
#: Seconds a stopping server waits for its model calls to end (after unloading) before closing the socket.
STOP_WAIT = 5.0
#: Seconds an orphaned server (its ``--parent`` gone) may take to close before it exits regardless.
PARENT_GRACE = 1.5
#: Largest message a server buffers by default (larger ones close their connection unread); large
#: arrays between processes of one host go through shared memory, not through messages.
MAX_MESSAGE_BYTES = 256 << 20
#: Transports that only this machine's users can reach and whose files are private: no token needed.
TOKENLESS = ("ipc://", "inproc://")


class Server:
    """A server for the models of this environment.

    Parameters
    ----------
    address : str
        ``ipc://PATH``, ``tcp://HOST:PORT`` or ``inproc://NAME``.
    token : str, optional
        Shared secret every request must carry; required on tcp, even on
        loopback (every user of the machine can reach it), not on ipc.
    workers : int
        Model requests (``load``, ``process``, ``unload``) handled at once;
        ``ping``, ``info`` and ``shutdown`` are answered beside them.
    send_timeout : float or None
        Seconds a reply may wait to be sent (a client that stopped reading) before
        it is dropped and its worker serves the next request; None: forever.
    allow_module_models : bool
        Let ``load`` requests name any ``module:Class`` (trusting whoever can
        send requests to run code as this process); see :class:`RequestHandler`.
    max_message_bytes : int or None
        Messages larger than this close their connection before they are
        buffered, authenticated or not (None: no limit).
    max_instances : int
        Model instances kept loaded at most (least recently used idle ones are
        unloaded to make room; see :class:`RequestHandler`).
    legacy_wire : bool
        Also answer the earlier nahual wire (0.0.x clients) on ``address``, told
        apart by its first bytes (:mod:`._legacy`); ipc, or tcp on loopback only.

    Attributes
    ----------
    handler : RequestHandler
        What answers the requests: load models here before serving (``--preload``).
    legacy : LegacyResponder or None
        What answers earlier-wire messages, with ``legacy_wire``.
    """

    def __init__(
        self,
        address: str,
        *,
        token: str | None = None,
        workers: int = 8,
        send_timeout: float | None = SEND_TIMEOUT,
        allow_module_models: bool = False,
        max_message_bytes: int | None = MAX_MESSAGE_BYTES,
        max_instances: int = MAX_INSTANCES,
        legacy_wire: bool = False,
    ) -> None:
        check_address(address)
        if legacy_wire:
            check_legacy_address(address)
        if not token and not address.startswith(TOKENLESS):
            raise ConfigError(
                f"listening on {address} requires a token (--token-file or NAHUAL_TOKEN): every user of this "
                "machine can reach tcp; ipc is the transport without one"
            )
        if workers < 1:
            raise ConfigError(f"workers must be at least 1, got {workers}")
        self.address = address
        self.send_timeout = parse_seconds(send_timeout, "send_timeout")
        self.max_message_bytes = parse_max_bytes(max_message_bytes)
        self.handler = RequestHandler(
            token=token,
            on_shutdown=self._stop_soon,
            allow_module_models=allow_module_models,
            max_instances=max_instances,
        )
        self.legacy = LegacyResponder(self.handler, address, token) if legacy_wire else None
        self._workers_wanted = workers
        self._state = State.UNOPENED
        self._stop = threading.Event()
        self._orphaned = threading.Event()
        self._dispatcher: Dispatcher | None = None
        self._socket: ReplySocket | None = None

    def __repr__(self) -> str:
        return f"Server({self.address!r}, {self._state.value})"

    @property
    def state(self) -> State:
        """UNOPENED, OPEN (after :meth:`start`) or CLOSED (after :meth:`close` or :meth:`abandon`)."""
        return self._state

    def load(self, model: str, params: dict[str, Any] | None = None, replica: int = 0) -> dict[str, Any]:
        """Load a model before serving (``--preload``); see :meth:`RequestHandler.load`.

        The first one is what earlier-wire clients use unless their setup names another.
        """
        loaded = self.handler.load(model, params, replica)
        if self.legacy is not None:
            self.legacy.preloaded(model, params or {})
        return loaded

    # -- lifecycle -----------------------------------------------------------------------
    def start(self) -> Server:
        """Bind the socket and start the worker threads.

        Raises
        ------
        StateError
            When the server was started already, or closed: a server starts once.
        """
        if self._state is not State.UNOPENED:
            raise StateError(f"server at {self.address} is {self._state.value}; a server starts once: create a new one")
        self._socket = ReplySocket(self.address, self.max_message_bytes)
        self._state = State.OPEN
        answering = self.handler if self.legacy is None else WireSwitch(self.handler, self.legacy)
        self._dispatcher = Dispatcher(self._socket, answering, self._workers_wanted, self.send_timeout)
        self._dispatcher.start()
        return self

    def stop(self) -> None:
        """Ask the server to stop; :meth:`wait` then returns."""
        self._stop.set()

    def _stop_soon(self) -> None:
        threading.Timer(SHUTDOWN_DELAY, self.stop).start()

    def wait(self, timeout: float | None = None) -> bool:
        """Block until :meth:`stop` is called; True if it was."""
        return self._stop.wait(timeout)

    def close(self) -> None:
        """Stop listening, unload every instance and remove the ipc socket file (idempotent)."""
        self._finish(leave_socket=False)

    def abandon(self) -> None:
        """Stop serving and unload every instance, but leave the socket (and its file) open.

        For a supervisor that removes the socket file itself and may look at it
        after stopping the server (Snakemake stats a service job's outputs). The
        process must then end with ``os._exit``: closing the socket, even by
        garbage collection at exit, removes its file.
        """
        self._finish(leave_socket=True)

    def _finish(self, leave_socket: bool) -> None:
        if self._state is State.CLOSED:
            return
        self._state = State.CLOSED
        self._stop.set()
        if self._dispatcher is not None:
            self._dispatcher.close()
        # Unloading turns away the requests still waiting for a model (their contexts are closed:
        # no reply goes out); the running ones are awaited before the socket closes, since nng
        # panics (use after free) when a context sends while its socket closes.
        self.handler.close()
        if self._dispatcher is not None:
            self._dispatcher.wait(STOP_WAIT)
        if self._socket is not None and leave_socket:
            self._socket.close_shared_memory()
        elif self._socket is not None:
            self._socket.close()
            self._socket = None
            path = ipc_path(self.address)
            if path:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(path)

    def __enter__(self) -> Server:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- serving as a process ------------------------------------------------------------
    def serve(
        self, ready_file: str | None = None, parent_pid: int | None = None, leave_files_on_sigterm: bool = False
    ) -> bool:
        """Serve until SIGTERM, SIGINT, a ``shutdown`` request or the parent's death.

        The ready file is written only once the socket is bound and preloads are
        done, and removed with the socket file when serving ends; except after a
        SIGTERM with ``leave_files_on_sigterm``, where both stay for the supervisor
        that sent it (see :meth:`abandon`).

        Returns
        -------
        bool
            True when the files were left: the caller must then end the process with ``os._exit``.

        Raises
        ------
        StateError
            When the server is not started (or closed already).
        """
        if self._state is not State.OPEN:
            raise StateError(f"server at {self.address} is {self._state.value}; start() it before serve()")
        terminated = threading.Event()

        def on_sigterm(_signum: int, _frame: FrameType | None) -> None:
            terminated.set()
            self.stop()

        signal.signal(signal.SIGTERM, on_sigterm)
        signal.signal(signal.SIGINT, lambda *_: self.stop())
        if parent_pid is not None:
            threading.Thread(target=self._watch_parent, args=(parent_pid,), daemon=True).start()
        try:
            if ready_file:
                _write_atomically(ready_file, json.dumps({"address": self.address, "pid": os.getpid()}))
            while not self.wait(0.5):
                pass
        finally:
            if self._orphaned.is_set():
                timer = threading.Timer(PARENT_GRACE, self._exit_orphaned, args=(ready_file,))
                timer.daemon = True
                timer.start()
            leave = leave_files_on_sigterm and terminated.is_set()
            if leave:
                self.abandon()
            else:
                if ready_file:
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(ready_file)
                self.close()
        return leave

    def _watch_parent(self, pid: int) -> None:
        try:
            fd = os.pidfd_open(pid)
        except (ProcessLookupError, OSError):
            self._orphaned.set()
            self.stop()
            return
        try:
            while not self._stop.is_set():
                if select.select([fd], [], [], 0.5)[0]:
                    self._orphaned.set()
                    self.stop()
        finally:
            os.close(fd)

    def _exit_orphaned(self, ready_file: str | None) -> None:
        """End the process: the parent is gone and closing did not finish (a model call still runs).

        The call is abandoned and its reply never sent; the files and shared
        memory go first, as a normal close would remove them.
        """
        print(
            f"nahual serve: the parent process is gone and closing took over {PARENT_GRACE:g} s; exiting, "
            "abandoning the model calls still running (their replies are never sent)",
            file=sys.stderr,
        )
        for path in (ready_file, ipc_path(self.address)):
            if path:
                with contextlib.suppress(OSError):
                    os.unlink(path)
        socket = self._socket
        if socket is not None:
            socket.close_shared_memory()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)


def _write_atomically(path: str, text: str) -> None:
    partial = f"{path}.partial-{os.getpid()}"
    with open(partial, "w") as handle:
        handle.write(text)
    os.replace(partial, path)


def parse_max_bytes(value: int | None) -> int | None:
    """A positive message size limit in bytes, or None (no limit).

    Raises
    ------
    ConfigError
        For zero, negative numbers, booleans and anything that is not an integer.
    """
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
        raise ConfigError(f"max_message_bytes must be a positive number of bytes or None, got {value!r}")
    return value
