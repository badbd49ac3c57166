"""Reply buffers: arrays a model fills in the server's own segments, sent without a copy.

Layer: beside the wire protocol (stdlib and numpy), above :mod:`nahual._shm`.
The nng transport gives each request it serves through shared memory one
:class:`ReplyBuffers` and offers it to the model through
:func:`nahual.reply_array` while the request runs. Its arrays are *held*
segments (:meth:`~nahual._shm.SegmentWriter.allocate`); planning the reply
finds them there (:meth:`ReplyBuffers.locate`), so the array's bytes are
written once, by the model. A buffer's segment stays held until no array in
this process views it any more (a finalizer on its numpy buffer): only then
does it go back to the pool, at once if it was not sent, else once the client
frees it too. So a segment is never rewritten under an array of this process
(a batch whose parts go to several replies, a model that keeps its output).
"""

from __future__ import annotations

import math
import weakref
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from ._shm import HEADER

if TYPE_CHECKING:
    from ._protocol import MessagePlan
    from ._shm import Placement, SegmentWriter

__all__ = ["ReplyBuffers"]


@dataclass
class _Buffer:
    """One array handed to the model: its segment, where its bytes start, and whether it went out."""

    name: str
    address: int
    nbytes: int
    owner: weakref.ref
    sent: bool = False


class ReplyBuffers:
    """The reply buffers of one request, and the out-of-band writer its reply is planned with.

    Parameters
    ----------
    writer : SegmentWriter
        The serving socket's own segments.
    """

    def __init__(self, writer: SegmentWriter) -> None:
        self.writer = writer
        self.threshold = writer.threshold
        self._made: list[_Buffer] = []

    def array(self, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray | None:
        """A writable array of ``shape`` and ``dtype`` in a segment of its own; None below the threshold."""
        nbytes = math.prod(shape) * dtype.itemsize
        if nbytes < self.threshold:
            return None  # nng carries it as cheaply
        placement = self.writer.allocate(nbytes)
        if placement is None:
            return None
        owner = np.frombuffer(placement.buffer, np.uint8, nbytes, placement.offsets[0])
        made = _Buffer(placement.name, owner.ctypes.data, nbytes, weakref.ref(owner))
        weakref.finalize(owner, _dropped, self.writer, made)
        self._made.append(made)
        return owner.view(dtype).reshape(shape)

    def place(self, sizes: list[int]) -> Placement | None:
        """Room for the reply's other large arrays (see :meth:`nahual._shm.SegmentWriter.place`)."""
        return self.writer.place(sizes)

    def locate(self, array: np.ndarray) -> tuple[str, int] | None:
        """The segment and offset of an array that lies in one of these buffers, else None.

        Only a C-contiguous array that starts on the protocol's alignment can
        be sent where it is (``reply_array(...)`` itself, ``out[:n]``); any
        other view of a buffer is copied as usual.
        """
        if not array.flags.c_contiguous or not array.nbytes:
            return None
        start = array.__array_interface__["data"][0]
        for made in self._made:
            offset = HEADER + start - made.address
            inside = made.address <= start and start + array.nbytes <= made.address + made.nbytes
            if inside and offset % HEADER == 0 and made.owner() is not None:
                return made.name, offset
        return None

    def sent(self, message: MessagePlan, pipe: int) -> None:
        """``message`` went out on connection ``pipe``: its segments are the client's to free now."""
        for made in self._made:
            made.sent = made.sent or made.name in message.segment_names
        if message.segment_names:
            self.writer.lend(message.segment_names, pipe)


def _dropped(writer: SegmentWriter, made: _Buffer) -> None:
    """No array of this process views the buffer any more (the finalizer): its segment is unheld."""
    writer.unhold(made.name, made.sent)
