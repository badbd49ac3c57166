"""Same-host shared memory: out-of-band array buffers for ``ipc://`` peers.

Layer: beside the wire protocol (stdlib, numpy-free). Large arrays go into a
file in ``/dev/shm`` that both processes map, so they skip nng's ipc byte
stream. This module is the writing side: the segments a process creates
(:class:`SegmentWriter`, one per socket) and the sweep of those that killed
processes left; the reading side, a socket's maps of its peers' segments, is
:mod:`nahual._shm_maps`.
Layout and lifetime rules are in ``docs/protocol.md``: a segment starts with
magic ``b"NHSM"`` and a *state* word; the sender sets ``BUSY`` (or
``ONESHOT``) before sending, the receiver sets ``FREE`` once done with the
bytes (a client: once the last array viewing them is released), and only
then is the segment written again (a worker's next reply may go to another
client, and a client that timed out reuses its channel while the server
still runs the request). A segment may also be *held* by this process, filled
by a model before the reply is planned (:meth:`SegmentWriter.allocate`).
"""

from __future__ import annotations

import contextlib
import mmap
import os
import re
import secrets
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

__all__ = ["SegmentWriter", "shm_available", "sweep"]

#: Where segments live (a tmpfs: its pages count as RAM, see docs/protocol.md).
SHM_DIR = "/dev/shm"
PREFIX = "nahual-"
NAME_RE = re.compile(r"^nahual-([0-9]{1,10})-[0-9a-f]{16}$")
MAGIC = b"NHSM"
#: Bytes before the first buffer: magic and state, padded to the protocol's alignment.
HEADER = 64
STATE = struct.Struct("<I")
STATE_OFFSET = 4
FREE, BUSY, ONESHOT = 0, 1, 2
#: Arrays of at least this many bytes go out of band (below it nng's fixed cost dominates).
THRESHOLD = 256 * 1024
#: Messages needing more than this get a one-shot segment the receiver unlinks, so
#: nothing keeps huge segments mapped between messages.
MAX_REUSED = 256 * 1024 * 1024
#: Segments one socket keeps at most: about one per request in flight (more go to one-shot segments).
POOL = 8
#: Free segments unused for this long are closed when the next message is placed (one stays).
IDLE_S = 30.0
#: A segment still busy after this long is abandoned (unlinked, never written again):
#: its reader timed out or died, and must not pin the pool forever.
STALE_S = 120.0


def _align(offset: int) -> int:
    return -(-offset // HEADER) * HEADER


def shm_available(directory: str | None = None) -> bool:
    """True when segments can be created (Linux with a writable ``/dev/shm``) and ``NAHUAL_SHM`` is not 0."""
    directory = directory or SHM_DIR
    if os.environ.get("NAHUAL_SHM", "1") == "0":
        return False
    return os.path.isdir(directory) and os.access(directory, os.W_OK | os.X_OK)


def sweep(directory: str | None = None) -> list[str]:
    """Remove segments of this user whose creator process is gone (left by SIGKILL); returns their names."""
    directory = directory or SHM_DIR
    removed = []
    with contextlib.suppress(OSError):
        for entry in os.scandir(directory):
            match = NAME_RE.match(entry.name)
            if match is None or _alive(int(match.group(1))):
                continue
            with contextlib.suppress(OSError):
                if entry.stat(follow_symlinks=False).st_uid == os.getuid():
                    os.unlink(entry.path)
                    removed.append(entry.name)
    return removed


def _alive(pid: int) -> bool:
    """Whether process ``pid`` runs; a zombie (killed, not yet reaped by its parent) does not."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True  # exists, owned by someone else
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            stat = handle.read()
    except OSError:
        return True  # no procfs: trust kill()
    return stat[stat.rfind(b")") + 2 : stat.rfind(b")") + 3] != b"Z"


class Segment:
    """One segment this process created: an ``O_EXCL`` file in ``/dev/shm``, mapped read-write."""

    def __init__(self, size: int, state: int, directory: str | None = None) -> None:
        self.name = f"{PREFIX}{os.getpid()}-{secrets.token_hex(8)}"
        self.path = os.path.join(directory or SHM_DIR, self.name)
        self.busy_since = 0.0
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        try:
            self._fd = fd
            self.map: mmap.mmap | None = None
            self._resize(size)
            self.map[:4] = MAGIC
            self.state = state
        except BaseException:
            os.close(fd)
            with contextlib.suppress(OSError):
                os.unlink(self.path)
            raise

    def _resize(self, size: int) -> None:
        # posix_fallocate reserves the pages now: a full tmpfs raises ENOSPC here
        # (and the sender falls back to nng) instead of SIGBUS on a later write.
        os.posix_fallocate(self._fd, 0, size)
        self.map = mmap.mmap(self._fd, size)  # the old map, if any, goes with its last view

    @property
    def size(self) -> int:
        """Bytes mapped."""
        return len(self.map) if self.map is not None else 0

    @property
    def state(self) -> int:
        """FREE, BUSY or ONESHOT, as the peer last left it."""
        return STATE.unpack_from(self.map, STATE_OFFSET)[0]

    @state.setter
    def state(self, value: int) -> None:
        STATE.pack_into(self.map, STATE_OFFSET, value)

    def ensure(self, size: int) -> None:
        """Grow to hold ``size`` bytes (the file only ever grows, so peers' maps stay valid)."""
        if size > self.size:
            self._resize(max(size, min(2 * self.size, MAX_REUSED)))

    def close(self, unlink: bool = True, keep_map: bool = False) -> None:
        """Unlink the file and drop the map; memory goes once no view and no peer maps it."""
        if unlink:
            with contextlib.suppress(OSError):
                os.unlink(self.path)
        with contextlib.suppress(OSError):
            os.close(self._fd)
        if not keep_map:
            self.map = None


@dataclass
class Placement:
    """Where one message's out-of-band arrays go."""

    name: str
    offsets: list[int]
    buffer: Any


class SegmentWriter:
    """A socket's own segments, shared by its channels (thread-safe): a segment is reused
    once the peer marked it FREE, and grown when a message needs more.

    Parameters
    ----------
    threshold : int
        Arrays of at least this many bytes are placed out of band.
    directory : str, optional
        Where to create segments (default ``/dev/shm``).
    peer_pid : callable, optional
        The process behind a connection (nng pipe id), or None when unknown:
        segments lent to a process that died are reclaimed (:meth:`reclaim`).
    """

    def __init__(
        self,
        threshold: int = THRESHOLD,
        directory: str | None = None,
        peer_pid: Callable[[int], int | None] | None = None,
    ) -> None:
        self.threshold = threshold
        self._directory = directory
        self._peer_pid = peer_pid
        self._segments: list[Segment] = []
        #: One-shot segments the receiver has not unlinked yet, by name: when they were made or sent.
        self._oneshots: dict[str, float] = {}
        #: Segments an array of this process still views (:meth:`allocate`), by name: never reused nor abandoned.
        self._held: set[str] = set()
        #: Segments sent to another process, by name: that process's pid.
        self._lent: dict[str, int] = {}
        self._lock = threading.Lock()
        self._closed = False

    def place(self, sizes: list[int]) -> Placement | None:
        """Reserve room for arrays of ``sizes`` bytes in one segment; None means "send in band"."""
        offsets, end = [], HEADER
        for size in sizes:
            offsets.append(end)
            end = _align(end + size)
        return self._reserve(end, offsets, held=False)

    def allocate(self, nbytes: int) -> Placement | None:
        """A segment for one buffer of ``nbytes`` that the caller fills itself (a model's reply array).

        The segment is *held*, never reused nor abandoned, until :meth:`unhold`
        (the caller let go of every view on it); None when no segment can be made.
        """
        return self._reserve(HEADER + nbytes, [HEADER], held=True)

    def _reserve(self, size: int, offsets: list[int], held: bool) -> Placement | None:
        with self._lock:
            if self._closed:
                return None
            self._reap()
            try:
                segment = self._take(size)
            except OSError:
                return None  # no room in /dev/shm, or none at all: nng carries the arrays
            segment.busy_since = time.monotonic()
            if held:
                self._held.add(segment.name)
            self._lent.pop(segment.name, None)
            return Placement(segment.name, offsets, segment.map)

    def probe(self) -> str | None:
        """The name of one of these segments, for a peer to show it can open them."""
        with self._lock:
            if not self._segments and not self._closed:
                try:
                    self._segments.append(Segment(HEADER, FREE, self._directory))
                except OSError:
                    return None
            return self._segments[0].name if self._segments else None

    def lend(self, names: list[str], pipe: int) -> None:
        """The segments ``names`` were sent on connection ``pipe``: busy until its process frees them or dies."""
        pid = self._peer_pid(pipe) if self._peer_pid is not None else None
        now = time.monotonic()
        with self._lock:
            for segment in self._segments:
                if segment.name in names:
                    segment.busy_since = now  # STALE_S counts from here
            for name in names:
                if name in self._oneshots:
                    self._oneshots[name] = now
            if pid is not None:
                self._lent.update(dict.fromkeys(names, pid))

    def unhold(self, name: str, sent: bool) -> None:
        """The caller let go of a held segment: reusable once its reader frees it (``sent``), else at once."""
        with self._lock:
            self._held.discard(name)
            if not sent:
                self._free(name)

    def reclaim(self) -> list[str]:
        """Free the segments lent to processes that died (killed holding replies); returns their names."""
        with self._lock:
            dead = [name for name, pid in self._lent.items() if not _alive(pid)]
            for name in dead:
                del self._lent[name]
                self._free(name)
        return dead

    def _free(self, name: str) -> None:
        """What no reader will free: a pooled segment is marked FREE, a one-shot one unlinked."""
        for segment in self._segments:
            if segment.name == name:
                if segment.map is not None:
                    segment.state = FREE
                return
        if self._oneshots.pop(name, None) is not None:
            self._unlink(name)

    def _unlink(self, name: str) -> None:
        with contextlib.suppress(OSError):
            os.unlink(os.path.join(self._directory or SHM_DIR, name))

    def _take(self, size: int) -> Segment:
        """A pooled segment when one fits the rules, else a one-shot one (above MAX_REUSED, or a full pool)."""
        segment = self._reusable(size) if size <= MAX_REUSED else None
        return segment if segment is not None else self._oneshot(size)

    def _reusable(self, size: int) -> Segment | None:
        """The smallest free segment that fits, else the largest free one grown, else a new one."""
        free = sorted((s for s in self._segments if s.state == FREE and s.name not in self._held), key=lambda s: s.size)
        segment = next((s for s in free if s.size >= size), free[-1] if free else None)
        if segment is None:
            if len(self._segments) >= POOL:
                return None
            segment = Segment(size, FREE, self._directory)
            self._segments.append(segment)
        segment.ensure(size)
        segment.state = BUSY
        return segment

    def _oneshot(self, size: int) -> Segment:
        segment = Segment(size, ONESHOT, self._directory)
        self._oneshots[segment.name] = time.monotonic()
        segment.close(unlink=False, keep_map=True)  # the receiver unlinks it
        return segment

    def _reap(self) -> None:
        """Abandon segments whose reader never released them (unless held); close those idle for long."""
        now = time.monotonic()
        stale = [s for i, s in enumerate(self._segments) if s.name not in self._held and _expired(s, now, keep=i == 0)]
        for segment in stale:
            segment.close()
        self._segments = [s for s in self._segments if s not in stale]
        directory = self._directory or SHM_DIR
        for name, made in list(self._oneshots.items()):
            if name in self._held:
                continue
            if now - made > STALE_S:
                self._unlink(name)
            if now - made > STALE_S or not os.path.exists(os.path.join(directory, name)):
                del self._oneshots[name]  # abandoned, or unlinked by its receiver
        names = {s.name for s in self._segments} | set(self._oneshots)
        self._lent = {name: pid for name, pid in self._lent.items() if name in names}

    def close(self) -> None:
        """Unlink every segment of this socket (idempotent)."""
        with self._lock:
            self._closed = True
            for segment in self._segments:
                segment.close()
            for name in self._oneshots:
                self._unlink(name)
            self._segments, self._oneshots, self._held, self._lent = [], {}, set(), {}


def _expired(segment: Segment, now: float, keep: bool) -> bool:
    """Busy past STALE_S (its reader is gone), or free and idle past IDLE_S (unless ``keep``)."""
    idle = now - segment.busy_since
    if segment.state != FREE:
        return idle > STALE_S
    return not keep and idle > IDLE_S
