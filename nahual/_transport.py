"""Transport: the only module that touches pynng.

Layer: above the wire protocol. It gives the server and the client sockets
and per-request *channels* (nng contexts) with three guarantees:

- one copy per array on send: the nng message is allocated at its final
  size and the protocol writes into its body (``pynng.md``: the naive
  ``bytes`` path costs three copies);
- no copy on receive: the returned buffer is the nng message body itself,
  freed when the last numpy view on it is gone;
- Req0 resends are switched off, so a slow request never runs twice;
- over ``ipc://`` (same host) a socket's channels share a
  :class:`~nahual._shm.SegmentWriter` for large arrays, and each channel has a
  :class:`~nahual._shm.SegmentReader` for its peer's, so they skip nng's byte
  stream (``docs/protocol.md``, *Out-of-band buffers*).

pynng exceptions are translated here, once, into :mod:`nahual.errors`.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlparse

import pynng
from pynng import _nng

from ._protocol import MessagePlan
from ._shm import SegmentCache, SegmentReader, SegmentWriter, shm_available, sweep
from .errors import ConfigError, TimeoutError, TransportError

__all__ = ["Channel", "ReplySocket", "RequestSocket", "ipc_path", "is_loopback", "translate_errors"]

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


def is_loopback(address: str) -> bool:
    """True for ipc/inproc addresses and tcp on 127.0.0.0/8, ::1 or localhost."""
    if not address.startswith(("tcp://", "tcp4://", "tcp6://", "ws://")):
        return address.startswith(("ipc://", "inproc://"))
    host = urlparse(address).hostname or ""
    return host == "localhost" or host == "::1" or host.startswith("127.")


def check_address(address: str) -> None:
    """Raise :class:`ConfigError` unless the address has a scheme nng serves."""
    if not address.startswith(("ipc://", "tcp://", "tcp4://", "tcp6://", "inproc://", "ws://")):
        raise ConfigError(f"address must start with ipc://, tcp:// or inproc://, got {address!r}")


class Channel:
    """One nng context: a request/reply conversation that can run beside others on one socket."""

    def __init__(self, socket: pynng.Socket, address: str, shared: _Shared | None = None) -> None:
        #: Where large outgoing arrays go, and how the peer's are read (None: in the message only).
        self.writer = shared.writer if shared is not None else None
        self.segments: SegmentReader | None = shared.cache.reader() if shared is not None else None
        # The raw nng context, not pynng's Context: its close() is not thread-safe, and the
        # server closes a worker's context from another thread to stop it.
        self._ctx = _ffi.new("nng_ctx *")
        self._address = address
        self._closed = False
        self._close_lock = threading.Lock()
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
        body = _ffi.gc(_ffi.cast("char *", _lib.nng_msg_body(msg)), lambda _body, m=msg: _lib.nng_msg_free(m))
        return _ffi.buffer(body, size)

    @staticmethod
    def _run_aio(timeout: float | None, start: Any, keep: bool = False, on_fail: Any = None) -> Any:
        aio_p = _ffi.new("nng_aio **")
        _check(_lib.nng_aio_alloc(aio_p, _ffi.NULL, _ffi.NULL))
        aio = aio_p[0]
        try:
            _lib.nng_aio_set_timeout(aio, _milliseconds(timeout))
            start(aio)
            _lib.nng_aio_wait(aio)
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
    _segments: _Shared | None

    def channel(self) -> Channel:
        """A new context: one request/reply conversation at a time, beside the others."""
        return Channel(self._socket, self.address, self._segments)

    def close(self) -> None:
        """Close the socket (blocked ``recv`` calls raise :class:`TransportError`) and its segments."""
        self._socket.close()
        self.close_shared_memory()

    def close_shared_memory(self) -> None:
        """Unlink this socket's shared-memory segments (idempotent); the socket stays open."""
        if self._segments is not None:
            self._segments.close()
            self._segments = None


class ReplySocket(_Socket):
    """A listening Rep0 socket; each worker thread talks through its own :class:`Channel`."""

    def __init__(self, address: str) -> None:
        check_address(address)
        self.address = address
        self._segments = _Shared.for_address(address, copy_out=False)
        self._socket = pynng.Rep0()
        path = ipc_path(address)
        try:
            with translate_errors(address):
                try:
                    self._socket.listen(address)
                except pynng.AddressInUse:
                    if path is None or not _is_stale_socket(path):
                        raise
                    os.unlink(path)  # left behind by a server that was killed
                    self._socket.listen(address)
        except BaseException:
            self.close()
            raise


@dataclass
class _Shared:
    """A socket's shared memory: its own segments (shared by its channels) and its maps of the peer's."""

    writer: SegmentWriter
    cache: SegmentCache

    @classmethod
    def for_address(cls, address: str, copy_out: bool) -> _Shared | None:
        """Shared memory for ipc peers (same host) where ``/dev/shm`` is usable; sweeps leftovers first."""
        if ipc_path(address) is None or not shm_available():
            return None
        sweep()
        return cls(SegmentWriter(), SegmentCache(copy_out))

    def close(self) -> None:
        """Unlink this socket's segments and drop its maps of the peer's."""
        self.writer.close()
        self.cache.close()


def _is_stale_socket(path: str) -> bool:
    """True when nothing answers on the ipc socket file at ``path``."""
    with pynng.Req0() as probe:
        try:
            probe.dial(f"ipc://{path}", block=True)
        except pynng.NNGException:
            return True
    return False


class RequestSocket(_Socket):
    """A dialing Req0 socket; each concurrent request uses its own :class:`Channel`."""

    def __init__(self, address: str, connect_timeout: float | None) -> None:
        check_address(address)
        self.address = address
        # Replies are copied out of the server's segments: it reuses them for its next reply.
        self._segments = _Shared.for_address(address, copy_out=True)
        self._socket = pynng.Req0()
        _check(_lib.nng_socket_set_ms(self._socket.socket, b"req:resend-time", _INFINITE_MS))
        # A non-blocking dial keeps retrying in the background, so the client
        # reconnects by itself to a server that restarts on the same address.
        self._socket.dial(address, block=False)
        self._wait_connected(connect_timeout)

    def _wait_connected(self, timeout: float | None) -> None:
        deadline = None if timeout is None else time.monotonic() + timeout
        delay = 0.001
        while not self._socket.pipes:
            if deadline is not None and time.monotonic() > deadline:
                self.close()
                raise TimeoutError(f"could not connect to {self.address} within {timeout} s (is the server running?)")
            time.sleep(delay)
            delay = min(delay * 2, 0.05)
