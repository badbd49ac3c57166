"""Same-host shared memory, the reading side: a socket's maps of its peers' segments.

Layer: beside the wire protocol (stdlib and numpy), next to :mod:`nahual._shm`
(the segments a process writes). The nng transport gives each socket one
:class:`SocketMemory`: its own :class:`~nahual._shm.SegmentWriter` and a
:class:`SegmentCache` of the peers' segments it mapped, and each channel a
:class:`SegmentReader`. On a client, received arrays are views that keep
their segment busy for its sender until the last of them is released (a
finalizer on the numpy buffer they share), so nothing is copied out and no
reply is overwritten under a caller. A mapped segment pins its memory even
after its creator unlinked it, so maps are dropped when they can no longer be needed
(``docs/protocol.md``, *Clean-up*): when the peer that created them
disconnects, and, on a server, when they have not been used for
:data:`PEER_IDLE_S` seconds.
"""

from __future__ import annotations

import contextlib
import mmap
import os
import stat
import threading
import time
import weakref
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from . import _shm as shm
from ._shm import FREE, HEADER, MAGIC, NAME_RE, ONESHOT, STATE, STATE_OFFSET, SegmentWriter
from .errors import ProtocolError

__all__ = ["PEER_IDLE_S", "SegmentCache", "SegmentReader", "SocketMemory"]

#: Peer segments a socket keeps mapped (least recently used are dropped).
CACHE = 32
#: A server drops its maps of peer segments unused for this long (their memory goes with the map).
PEER_IDLE_S = 10.0
#: How often a server looks for idle maps.
TIDY_S = 2.0


@dataclass
class _Mapped:
    map: mmap.mmap
    fd: int
    used: float = field(default_factory=time.monotonic)


class SegmentCache:
    """A socket's maps of its peers' segments, by name; re-mapped when a segment grew.

    Parameters
    ----------
    lasting_views : bool
        True on a client: a received message's segments stay busy until the
        last array viewing them is released. False on a server: request arrays
        are valid until the reply is sent, which frees their segments.
    directory : str, optional
        Where segments live (default ``/dev/shm``).
    """

    def __init__(self, lasting_views: bool, directory: str | None = None) -> None:
        self.lasting_views = lasting_views
        self._directory = directory
        self._maps: dict[str, _Mapped] = {}
        self._lock = threading.Lock()
        self._closed = False

    def reader(self) -> SegmentReader:
        """A per-channel reader that remembers which segments to release."""
        return SegmentReader(self)

    def mapping(self, name: str) -> tuple[mmap.mmap, bool]:
        """Segment ``name``, mapped whole (again, if the file grew since), and whether it is one-shot."""
        if not isinstance(name, str) or NAME_RE.match(name) is None:
            raise ProtocolError(f"bad shared-memory segment name {name!r}")
        with self._lock:
            if self._closed:
                raise ProtocolError("the socket is closed")
            mapped = self._maps.pop(name, None)
            if mapped is None:
                mapped = self._open(name)
                if mapped.fd < 0:
                    return mapped.map, True
            elif os.fstat(mapped.fd).st_size > len(mapped.map):
                mapped = _Mapped(self._checked_map(mapped.fd, name), mapped.fd)  # it grew
            mapped.used = time.monotonic()
            self._maps[name] = mapped  # most recently used last
            while len(self._maps) > CACHE:
                self._drop(next(iter(self._maps)))
        return mapped.map, False

    def _open(self, name: str) -> _Mapped:
        path = os.path.join(self._directory or shm.SHM_DIR, name)
        try:
            fd = os.open(path, os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError as exc:
            raise ProtocolError(
                f"shared-memory segment {name} cannot be opened ({exc.strerror}): both ends of an ipc "
                "address must see the same /dev/shm, or set NAHUAL_SHM=0 on the client"
            ) from None
        try:
            mapped = _Mapped(self._checked_map(fd, name), fd)
        except BaseException:
            os.close(fd)
            raise
        if STATE.unpack_from(mapped.map, STATE_OFFSET)[0] == ONESHOT:
            with contextlib.suppress(OSError):
                os.unlink(path)  # ours now: the memory goes with the last view
            os.close(fd)
            return _Mapped(mapped.map, -1)
        return mapped

    @staticmethod
    def _checked_map(fd: int, name: str) -> mmap.mmap:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode) or info.st_uid != os.getuid() or info.st_size < HEADER:
            raise ProtocolError(f"{name} is not a shared-memory segment of this user")
        segment = mmap.mmap(fd, info.st_size)
        if segment[:4] != MAGIC:
            raise ProtocolError(f"{name} is not a nahual shared-memory segment")
        return segment

    def drop_peer(self, pid: int) -> int:
        """Drop the maps of segments created by process ``pid`` (it disconnected); returns how many.

        A channel still reading one keeps its own map until it releases it, and a
        segment needed again is simply mapped again.
        """
        prefix = f"{shm.PREFIX}{pid}-"
        with self._lock:
            names = [name for name in self._maps if name.startswith(prefix)]
            for name in names:
                self._drop(name)
        return len(names)

    def drop_idle(self, idle_s: float) -> int:
        """Drop the maps unused for ``idle_s`` seconds; returns how many."""
        now = time.monotonic()
        with self._lock:
            names = [name for name, mapped in self._maps.items() if now - mapped.used > idle_s]
            for name in names:
                self._drop(name)
        return len(names)

    def _drop(self, name: str) -> None:
        mapped = self._maps.pop(name)
        os.close(mapped.fd)

    def close(self) -> None:
        """Drop every map (idempotent); views handed out keep their own pages alive."""
        with self._lock:
            self._closed = True
            for name in list(self._maps):
                self._drop(name)


class SegmentReader:
    """What :func:`nahual._protocol.decode` resolves segment names with, for one channel.

    Each segment a received message uses gets one numpy buffer that the
    message's arrays view. :meth:`release` is called once the channel is done
    with that message: on a server it marks the segments FREE for their
    sender; on a client (``lasting_views``) the buffer's finalizer does, once
    the last array on it is gone.
    """

    def __init__(self, cache: SegmentCache) -> None:
        self.cache = cache
        #: The last message's buffer on each segment it used, by name.
        self._buffers: dict[str, np.ndarray] = {}
        #: The segments to mark FREE at :meth:`release` (a server's; never one-shot ones).
        self._used: list[mmap.mmap] = []

    def view(self, name: str, offset: int, nbytes: int) -> np.ndarray:
        """Bytes of a peer segment, as a uint8 view (raises :class:`ProtocolError` for bad names or bounds)."""
        if not isinstance(name, str) or NAME_RE.match(name) is None:
            raise ProtocolError(f"bad shared-memory segment name {name!r}")
        if type(offset) is not int or type(nbytes) is not int or offset < HEADER or offset % HEADER or nbytes < 0:
            raise ProtocolError(f"segment offset {offset!r} is not an aligned offset past the segment header")
        buffer = self._buffers.get(name)
        if buffer is None:
            buffer = self._buffers[name] = self._buffer(name)
        if offset + nbytes > len(buffer):
            raise ProtocolError(f"bytes [{offset}, {offset + nbytes}) lie outside segment {name} of {len(buffer)}")
        return buffer[offset : offset + nbytes]

    def _buffer(self, name: str) -> np.ndarray:
        segment, oneshot = self.cache.mapping(name)
        buffer = np.frombuffer(segment, np.uint8)
        if not oneshot:  # a one-shot segment is never written again: nothing to free
            if self.cache.lasting_views:
                weakref.finalize(buffer, _free, segment)
            else:
                self._used.append(segment)
        return buffer

    def probe(self, name: Any) -> bool:
        """True when the peer's segment ``name`` can be opened here (same host, same ``/dev/shm``)."""
        try:
            self.cache.mapping(name)
        except (ProtocolError, TypeError):
            return False
        return True

    def release(self) -> None:
        """Done with the last received message: free its segments now (server) or with its last view (client)."""
        used, self._used, self._buffers = self._used, [], {}
        for segment in used:
            _free(segment)


def _free(segment: mmap.mmap) -> None:
    """Mark a peer's segment FREE: its sender may write it again."""
    with contextlib.suppress(ValueError):  # a map closed meanwhile
        STATE.pack_into(segment, STATE_OFFSET, FREE)


class SocketMemory:
    """A socket's shared memory: its own segments, its maps of its peers', and who those peers are.

    Parameters
    ----------
    lasting_views : bool
        See :class:`SegmentCache` (True on the client side).
    tidy : bool
        From a background thread, drop maps unused for :data:`PEER_IDLE_S` and
        reclaim segments lent to processes that died (a server, which may sit
        idle for long after its clients left).
    """

    def __init__(self, lasting_views: bool, tidy: bool = False) -> None:
        #: The process id behind each connection (nng pipe id), where the transport tells it.
        self._peers: dict[int, int] = {}
        self._lock = threading.Lock()
        self.writer = SegmentWriter(peer_pid=self.peer_pid)
        self.cache = SegmentCache(lasting_views)
        self._closed = threading.Event()
        if tidy:
            threading.Thread(target=self._tidy, name="nahual-shm-tidy", daemon=True).start()

    def peer_connected(self, pipe: int, pid: int) -> None:
        """Remember that connection ``pipe`` comes from process ``pid``."""
        with self._lock:
            self._peers[pipe] = pid

    def peer_pid(self, pipe: int) -> int | None:
        """The process behind connection ``pipe``, if known."""
        with self._lock:
            return self._peers.get(pipe)

    def peer_gone(self, pipe: int) -> None:
        """Connection ``pipe`` closed: drop the maps of its process's segments unless it has another one."""
        with self._lock:
            pid = self._peers.pop(pipe, None)
            if pid is None or pid in self._peers.values():
                return
        self.cache.drop_peer(pid)

    def _tidy(self) -> None:
        while not self._closed.wait(TIDY_S):
            self.cache.drop_idle(PEER_IDLE_S)
            self.writer.reclaim()

    def close(self) -> None:
        """Unlink this socket's segments and drop its maps of the peers' (idempotent)."""
        self._closed.set()
        self.writer.close()
        self.cache.close()
