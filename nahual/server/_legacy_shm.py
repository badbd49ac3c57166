"""The shared-memory request of newer 0.0.x clients, served: the array is read from the client's own segment.

Layer: server, beside :mod:`._legacy`. The client writes its array at offset
0 of a segment it created in ``/dev/shm`` and sends ``\\x00NHSM\\x01`` + JSON
naming it (:func:`nahual._legacy_wire.parse_shm_request`). The segment is
opened with the checks our own shared memory makes (``docs/protocol.md``,
*Who may use it*): over ``ipc://`` only (same host), a plain name (a file
directly in ``/dev/shm``, no link followed), a regular file of this user, of
exactly the size the request says. The model reads the array there, without
a copy; with ``output_mode`` ``reuse`` a result that fits goes back into the
same segment (``\\x00NHSR\\x01`` + JSON), any other result as an array
message, and with ``serialized`` the segment is only read.
"""

from __future__ import annotations

import contextlib
import mmap
import os
import stat
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

from .. import _legacy_wire as wire
from .._shm import SHM_DIR
from ..errors import ProtocolError

__all__ = ["serve_shm"]


def serve_shm(buffer: Any, ipc: bool, process: Callable[[np.ndarray], Any]) -> wire.LegacyMessage:
    """Answer one shared-memory request: ``process`` gets the array as a read-only view on the segment.

    Raises
    ------
    ProtocolError
        When the server is not on ipc, or the request or its segment fails a check.
    """
    request = wire.parse_shm_request(buffer)
    if not ipc:
        raise ProtocolError("shared-memory requests are served on ipc:// addresses only (the same host)")
    with _client_segment(request.name, request.capacity, writable=request.output_mode == "reuse") as memory:
        return _answer(memory, request, process)  # its views on the segment are gone once it returns


def _answer(memory: mmap.mmap, request: wire.ShmRequest, process: Callable[[np.ndarray], Any]) -> wire.LegacyMessage:
    data = np.frombuffer(memory, request.dtype, int(np.prod(request.shape)), 0).reshape(request.shape)
    data.flags.writeable = False
    result = process(data)
    if isinstance(result, dict):
        return wire.encode_dict(result)
    result = np.asarray(result)
    if request.output_mode == "reuse" and _fits(result, request.capacity):
        if result is not data:
            if np.shares_memory(result, data):
                result = result.copy()  # it would be written over the input it views
            target = np.frombuffer(memory, result.dtype, result.size, 0).reshape(result.shape)
            np.copyto(target, result)
        return wire.encode_shm_reply(result, request.token)
    return wire.encode_array(result, "the reply")


def _fits(result: np.ndarray, capacity: int) -> bool:
    """Whether a result can go back into the request's segment (a native numeric array that fits)."""
    dtype = result.dtype
    return (
        dtype.kind in wire.NUMERIC_KINDS
        and dtype.isnative
        and dtype.fields is None
        and result.ndim <= wire.SHM_MAX_NDIM
        and result.nbytes <= capacity
    )


@contextlib.contextmanager
def _client_segment(name: str, capacity: int, writable: bool) -> Iterator[mmap.mmap]:
    """The client's segment ``name``, mapped, once it passed every check; unmapped afterwards."""
    flags = (os.O_RDWR if writable else os.O_RDONLY) | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        fd = os.open(os.path.join(SHM_DIR, name), flags)
    except OSError as exc:
        raise ProtocolError(
            f"shared-memory segment {name} cannot be opened ({exc.strerror}): the client must be on this host"
        ) from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode) or info.st_uid != os.geteuid():
            raise ProtocolError(
                f"shared-memory segment {name} must be a regular file of this user (uid {os.geteuid()})"
            )
        if info.st_size != max(1, capacity):
            raise ProtocolError(f"shared-memory segment {name} holds {info.st_size} bytes, the request says {capacity}")
        memory = mmap.mmap(fd, info.st_size, access=mmap.ACCESS_WRITE if writable else mmap.ACCESS_READ)
    finally:
        os.close(fd)
    try:
        yield memory
    finally:
        with contextlib.suppress(BufferError):  # a model kept a view: the map goes with its last one
            memory.close()
