"""nng plumbing: the only module that touches pynng.

Layer: transport, below :mod:`nahual._nng_transport` (which speaks the
:class:`~nahual._transport.Transport` interface over it). It gives sockets
and per-request *channels* (nng contexts) with these guarantees:

- one copy per array on send: the nng message is allocated at its final
  size and the protocol writes into its body (``pynng.md``: the naive
  ``bytes`` path costs three copies);
- no copy on receive: the returned buffer is the nng message body itself,
  freed when the last numpy view on it is gone;
- Req0 resends are switched off, so a slow request never runs twice;
- over ``ipc://`` (same host) a socket's channels share a
  :class:`~nahual._shm.SegmentWriter` for large arrays, and each channel has a
  :class:`~nahual._shm_maps.SegmentReader` for its peer's, so they skip nng's byte
  stream (``docs/protocol.md``, *Out-of-band buffers*);
- ipc socket files are made 0600 before they accept connections, whatever
  the umask, and a request socket refuses a server of another user (the
  socket file's owner, then the peer's credentials on every connection);
- a reply socket drops messages over its size limit at the transport,
  before buffering them (``docs/security.md``).

pynng exceptions are translated here, once, into :mod:`nahual.errors`.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pynng
from pynng import _nng

from ._protocol import MessagePlan
from ._shm import shm_available, sweep
from ._shm_maps import SegmentReader, SocketMemory
from .errors import ConfigError, TimeoutError, TransportError

__all__ = ["Channel", "ReplySocket", "RequestSocket", "ipc_path", "translate_errors"]

_lib, _ffi = _nng.lib, _nng.ffi
#: nng's "forever" duration (NNG_DURATION_INFINITE).
_INFINITE_MS = -1


def _milliseconds(timeout: float | None) -> int:
    return _INFINITE_MS if timeout is None else max(1, int(timeout * 1000))


@contextlib.contextmanager
def translate_errors(address: str, timeout: float | None = None) -> Iterator[None]:
    """Map pynng's exceptions to nahual's, naming the address (and the limit for timeouts)."""
    try:
        yield
    except pynng.Timeout as exc:
        raise TimeoutError(f"no reply from {address} within {timeout} s") from exc
    except pynng.Closed as exc:
        raise TransportError(f"the connection to {address} is closed") from exc
    except pynng.NNGException as exc:
        raise TransportError(f"{address}: {exc}") from exc


def _check(code: int) -> None:
    if code:
        pynng.exceptions.check_err(code)


def ipc_path(address: str) -> str | None:
    """The socket file of an ``ipc://`` address, else None."""
    return address[len("ipc://") :] if address.startswith("ipc://") else None


#: Longest ipc socket path the kernel accepts (``sun_path`` is 108 bytes with its NUL).
IPC_PATH_MAX = 107


def check_address(address: str) -> None:
    """Raise :class:`ConfigError` unless nng can serve the address (a known scheme; an ipc path that fits)."""
    if not address.startswith(("ipc://", "tcp://", "tcp4://", "tcp6://", "inproc://", "ws://")):
        hint = f" (an ipc socket file is written ipc://{address})" if "://" not in address else ""
        raise ConfigError(f"address must start with ipc://, tcp:// or inproc://, got {address!r}{hint}")
    if (size := len((ipc_path(address) or "").encode())) > IPC_PATH_MAX:
        raise ConfigError(f"ipc socket path must be at most {IPC_PATH_MAX} bytes (the kernel's limit), found {size}")


class Channel:
    """One nng context: a request/reply conversation that can run beside others on one socket."""

    def __init__(self, socket: pynng.Socket, address: str, shared: SocketMemory | None = None) -> None:
        #: Where large outgoing arrays go, and how the peer's are read (None: in the message only).
        self.writer = shared.writer if shared is not None else None
        self.segments: SegmentReader | None = shared.cache.reader() if shared is not None else None
        # The raw nng context, not pynng's Context: its close() is not thread-safe, and the
        # server closes a worker's context from another thread to stop it.
        self._ctx = _ffi.new("nng_ctx *")
        self._address = address
        #: The connection (nng pipe id) the last message came on: request ids are unique per connection only.
        self.peer = 0
        self._closed = False
        self._close_lock = threading.Lock()
        #: The send or receive in progress, and whether the conversation was aborted (see :meth:`abort`).
        self._aio: Any = None
        self._aborted = False
        self._aio_lock = threading.Lock()
        with translate_errors(address):
            _check(_lib.nng_ctx_open(self._ctx, socket.socket))
            if isinstance(socket, pynng.Req0):
                _check(_lib.nng_ctx_set_ms(self._ctx[0], b"req:resend-time", _INFINITE_MS))

    def send(self, message: MessagePlan, timeout: float | None) -> None:
        """Send a planned message: the arrays are copied once, into the nng message or a segment.

        Writing the message is the last use of the received message's arrays (a
        reply may hold a request's own arrays), so the peer's segments are
        released right after it, before the peer can see the reply.
        """
        msg_p = _ffi.new("nng_msg **")
        with translate_errors(self._address, timeout):
            _check(_lib.nng_msg_alloc(msg_p, message.nbytes))
            msg = msg_p[0]
            try:
                message.write_into(_ffi.buffer(_lib.nng_msg_body(msg), message.nbytes))
            except BaseException:
                _lib.nng_msg_free(msg)
                raise
            finally:
                self.release()
            self._run_aio(timeout, lambda aio: self._start_send(aio, msg), on_fail=lambda: _lib.nng_msg_free(msg))

    def _start_send(self, aio: Any, msg: Any) -> int:
        _lib.nng_aio_set_msg(aio, msg)
        return _lib.nng_ctx_send(self._ctx[0], aio)

    def recv(self, timeout: float | None) -> Any:
        """Receive one message; returns its body as a buffer that owns the nng message."""
        with translate_errors(self._address, timeout):
            aio = self._run_aio(timeout, lambda aio: _lib.nng_ctx_recv(self._ctx[0], aio), keep=True)
            try:
                msg = _lib.nng_aio_get_msg(aio)
            finally:
                _lib.nng_aio_free(aio)
        size = _lib.nng_msg_len(msg)
        self.peer = _lib.nng_pipe_id(_lib.nng_msg_get_pipe(msg))
        body = _ffi.gc(_ffi.cast("char *", _lib.nng_msg_body(msg)), lambda _body, m=msg: _lib.nng_msg_free(m))
        return _ffi.buffer(body, size)

    def _run_aio(self, timeout: float | None, start: Any, keep: bool = False, on_fail: Any = None) -> Any:
        aio_p = _ffi.new("nng_aio **")
        _check(_lib.nng_aio_alloc(aio_p, _ffi.NULL, _ffi.NULL))
        aio = aio_p[0]
        try:
            _lib.nng_aio_set_timeout(aio, _milliseconds(timeout))
            with self._aio_lock:
                aborted = self._aborted
                self._aio = None if aborted else aio
            if aborted:
                code = _lib.NNG_ECONNRESET
            else:
                try:
                    start(aio)
                    _lib.nng_aio_wait(aio)
                finally:
                    with self._aio_lock:
                        self._aio = None
                code = _lib.nng_aio_result(aio)
            if code and on_fail is not None:
                on_fail()  # a failed send leaves the message with us
            _check(code)
        except BaseException:
            _lib.nng_aio_free(aio)
            raise
        if keep:
            return aio
        _lib.nng_aio_free(aio)
        return None

    def abort(self) -> None:
        """Fail this conversation as a reset connection (from any thread).

        Its send or receive in progress fails, and so does any it starts until
        :meth:`resume`; nng drops the request the context was waiting on.
        """
        with self._aio_lock:
            self._aborted = True
            if self._aio is not None:
                _lib.nng_aio_abort(self._aio, _lib.NNG_ECONNRESET)

    def resume(self) -> None:
        """Clear an :meth:`abort`: the context's next conversation is a new one."""
        with self._aio_lock:
            self._aborted = False

    def release(self) -> None:
        """Let the peer reuse the segments of the message received last (idempotent)."""
        if self.segments is not None:
            self.segments.release()

    def close(self) -> None:
        """Close the context (idempotent, thread-safe): its pending send or receive fails."""
        with self._close_lock:
            if self._closed:
                return
            self._closed = True
        _lib.nng_ctx_close(self._ctx[0])  # an error means nng closed it already, with its socket


class _Socket:
    """What both socket kinds share: channels over one nng socket and its shared memory."""

    address: str
    _socket: pynng.Socket
    _segments: SocketMemory | None

    def channel(self) -> Channel:
        """A new context: one request/reply conversation at a time, beside the others."""
        return Channel(self._socket, self.address, self._segments)

    def close(self) -> None:
        """Close the socket (blocked ``recv`` calls raise :class:`TransportError`) and its segments."""
        self._socket.close()
        self.close_shared_memory()

    def _watch_peers(self) -> None:
        """Tell the shared memory which process each connection comes from, and when it goes (before dialing)."""
        memory = self._segments
        if memory is not None:
            self._socket.add_post_pipe_connect_cb(lambda pipe: _note_peer(memory, pipe))
            self._socket.add_post_pipe_remove_cb(lambda pipe: memory.peer_gone(pipe.id))

    def close_shared_memory(self) -> None:
        """Unlink this socket's shared-memory segments (idempotent); the socket stays open."""
        if self._segments is not None:
            self._segments.close()
            self._segments = None


class ReplySocket(_Socket):
    """A listening Rep0 socket; each worker thread talks through its own :class:`Channel`.

    Parameters
    ----------
    address : str
        Where to listen.
    max_message_bytes : int or None
        Messages larger than this close their connection before they are
        buffered (None: no limit).
    """

    def __init__(self, address: str, max_message_bytes: int | None = None) -> None:
        check_address(address)
        self.address = address
        self._segments = _shared_memory(address, lasting_views=False)
        self._socket = pynng.Rep0()
        self._watch_peers()
        path = ipc_path(address)
        try:
            with translate_errors(address):
                if max_message_bytes is not None:
                    self._socket.recv_max_size = max_message_bytes
                try:
                    _listen(self._socket, address)
                except pynng.AddressInUse:
                    if path is None or not _is_stale_socket(path):
                        raise
                    os.unlink(path)  # left behind by a server that was killed
                    _listen(self._socket, address)
        except BaseException:
            self.close()
            raise


def _listen(socket: pynng.Socket, address: str) -> None:
    """Listen at ``address``; an ipc socket file gets mode 0600 whatever the umask.

    nng changes the file's mode between ``bind`` and ``listen``, so no other
    user can connect before it is private.
    """
    if ipc_path(address) is None:
        socket.listen(address)
        return
    listener = _ffi.new("nng_listener *")
    _check(_lib.nng_listener_create(listener, socket.socket, address.encode()))
    try:
        _check(_lib.nng_listener_set_int(listener[0], b"ipc:permissions", 0o600))
        _check(_lib.nng_listener_start(listener[0], 0))
    except BaseException:
        _lib.nng_listener_close(listener[0])
        raise


def _shared_memory(address: str, lasting_views: bool) -> SocketMemory | None:
    """Shared memory for ipc peers (same host) where ``/dev/shm`` is usable; sweeps leftovers first.

    A server's (``lasting_views`` False) drops unused maps of its clients' segments, reclaims those lent to the dead.
    """
    if ipc_path(address) is None or not shm_available():
        return None
    sweep()
    return SocketMemory(lasting_views, tidy=not lasting_views)


def _note_peer(memory: SocketMemory, pipe: pynng.Pipe) -> None:
    """Record the process behind a new ipc connection (an nng thread), if nng can tell."""
    pid = _ffi.new("uint64_t *")
    if _lib.nng_pipe_get_uint64(pipe.pipe, b"ipc:peer-pid", pid) == 0:
        memory.peer_connected(pipe.id, int(pid[0]))


def _is_stale_socket(path: str) -> bool:
    """True when nothing answers on the ipc socket file at ``path``."""
    with pynng.Req0() as probe:
        try:
            probe.dial(f"ipc://{path}", block=True)
        except pynng.NNGException:
            return True
    return False


class RequestSocket(_Socket):
    """A dialing Req0 socket; each concurrent request uses its own :class:`Channel`.

    Parameters
    ----------
    address : str
        The server's address.
    connect_timeout : float or None
        Seconds to wait for the first connection (None: forever).
    allow_foreign_socket : bool
        Talk to an ipc server of another user; by default its socket file and
        each connection's peer must belong to this user.
    """

    def __init__(self, address: str, connect_timeout: float | None, allow_foreign_socket: bool = False) -> None:
        check_address(address)
        self.address = address
        path = ipc_path(address)
        checked = path is not None and not allow_foreign_socket
        if checked:
            _check_owner(address, path)
        #: Why a connection was closed before use (a server of another user), for the error.
        self._refused: str | None = None
        # Reply arrays are views that keep the server's segment busy until they are released.
        self._segments = _shared_memory(address, lasting_views=True)
        self._socket = pynng.Req0()
        if checked:
            # A server that binds the path later (the dial retries in the background) is checked too.
            self._socket.add_pre_pipe_connect_cb(self._check_peer)
        _check(_lib.nng_socket_set_ms(self._socket.socket, b"req:resend-time", _INFINITE_MS))
        self._watch_peers()
        # A non-blocking dial keeps retrying in the background, so the client
        # reconnects by itself to a server that restarts on the same address.
        self._socket.dial(address, block=False)  # check_address refused what nng would not dial
        self._wait_connected(connect_timeout)

    def on_disconnect(self, callback: Callable[[], None]) -> None:
        """Call ``callback()`` each time the connection to the server closes (from an nng thread: keep it short)."""
        self._socket.add_post_pipe_remove_cb(lambda _pipe: callback())

    def _wait_connected(self, timeout: float | None) -> None:
        deadline = None if timeout is None else time.monotonic() + timeout
        delay = 0.001
        while not self._socket.pipes:
            if self._refused is not None:
                self.close()
                raise TransportError(self._refused)
            if deadline is not None and time.monotonic() > deadline:
                self.close()
                raise TimeoutError(f"could not connect to {self.address} within {timeout} s (is the server running?)")
            time.sleep(delay)
            delay = min(delay * 2, 0.05)

    def _check_peer(self, pipe: pynng.Pipe) -> None:
        """Close a new connection whose server runs as another user, before it is used (an nng thread)."""
        uid = _ffi.new("uint64_t *")
        if _lib.nng_pipe_get_uint64(pipe.pipe, b"ipc:peer-uid", uid) == 0 and uid[0] != os.geteuid():
            self._refused = (
                f"refusing ipc socket {self.address}: its peer runs as uid {uid[0]}, not as you "
                f"(uid {os.geteuid()}); {_FOREIGN_HINT}"
            )
            pipe.close()


_FOREIGN_HINT = "another user's server would see every request (pass allow_foreign_socket=True to trust it)"


def _check_owner(address: str, path: str) -> None:
    """Raise :class:`TransportError` when the socket file exists and belongs to another user."""
    try:
        owner = os.stat(path).st_uid
    except OSError:
        return  # not there yet: each connection's peer is checked instead
    if owner != os.geteuid():
        raise TransportError(
            f"refusing ipc socket {address}: it belongs to uid {owner}, not to you (uid {os.geteuid()}); "
            + _FOREIGN_HINT
        )
