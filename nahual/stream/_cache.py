"""Decoded input chunks kept while the coming blocks read them: :class:`ChunkCache`.

Zarr streaming layer, below the payload readers. Tiles smaller than the
store's chunks, and halos that reach into the neighbours' chunks, would
otherwise decode the same chunk once per block that touches it (16 times for
256x256 tiles of 1024x1024 chunks). The cache keeps of each decoded chunk what
the coming blocks will read: whole chunks for the next blocks, as many as
:data:`CACHE_BYTES` hold, and beyond them only the halo strips the next row of
blocks reads. What it holds is set by the plan and that budget, never by the
width or the size of the store.
"""

from __future__ import annotations

import math
import threading
from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import Future

import numpy as np
import zarr

from ._chunkfiles import chunk_box, chunk_grid, intersect, within
from ._integrity import read
from ._plan import Block, Plan

__all__ = ["CACHE_BYTES", "INPUT_HINT", "ChunkCache", "make_cache", "read_range"]

Coords = tuple[int, ...]
Box = tuple[slice, ...]

#: Bytes of whole decoded chunks the cache of one input array plans to keep (beyond them it keeps halo strips).
CACHE_BYTES = 64 * 2**20
#: What to do about an input chunk that does not decode, ending the message.
INPUT_HINT = "the input is damaged: restore it from a copy"


class ChunkCache:
    """Decoded chunks of one Zarr array, kept as long, and as much of each, as the coming blocks read (thread-safe).

    The cache knows the read boxes of the blocks in the order they are read,
    and after each read keeps of a chunk only what is still to be read: the
    box around what the next ``near`` blocks read of it, and the box around
    everything later blocks read of it when that is at most half the chunk (a
    strip the next row of blocks reads as its halo). A chunk needed again
    only later and by more than that is dropped and decoded again when that
    block comes. So a run over an image of any width keeps the chunks of
    ``near`` blocks plus halo strips, not rows of whole chunks.

    Parameters
    ----------
    array : zarr.Array
        The array to read.
    boxes : sequence of boxes
        Each block's read box (a unit-step slice per axis of ``array``), in the order the blocks are read.
    near : int
        Blocks ahead whose reads are kept whole (0: the cache keeps nothing: every read decodes).
    lookahead : int
        Blocks ahead whose reads are known to the cache (those beyond are not kept for).
    """

    def __init__(self, array: zarr.Array, boxes: Sequence[Box], near: int, lookahead: int) -> None:
        self.array, self.boxes = array, boxes
        self.near, self.lookahead = int(near), max(int(lookahead), int(near))
        self._kept: dict[Coords, tuple[Box, np.ndarray]] = {}
        self._uses: dict[Coords, deque[tuple[int, Box]]] = {}
        self._known = 0
        self._loading: dict[Coords, Future] = {}
        self._lock = threading.Lock()

    def read(self, box: Box, position: int | None = None) -> np.ndarray:
        """The pixels of ``box``, a fresh array; ``position``: the block's place in ``boxes`` (None: not kept for).

        Raises
        ------
        ContractError
            When a chunk does not decode, naming it.
        """
        if position is None or self.near == 0:
            return read(self.array, box, "the input", INPUT_HINT)
        grid = [(coords, intersect(box, chunk)) for coords, chunk in self._grid(box)]
        found, waiting, mine = self._claim(grid, position)
        if mine:
            found.update(self._load(mine))
        for coords, future in waiting.items():
            found[coords] = future.result()
        out = np.empty(tuple(s.stop - s.start for s in box), dtype=self.array.dtype)
        for coords, common in grid:
            region, data = found[coords]
            out[within(common, box)] = data[within(common, region)]
        with self._lock:
            for coords, _ in grid:
                self._trim(coords, position)
        return out

    def kept_bytes(self) -> int:
        """Bytes of decoded pixels the cache holds now."""
        with self._lock:
            return sum(data.nbytes for _, data in self._kept.values())

    def _grid(self, box: Box) -> Iterator[tuple[Coords, Box]]:
        return chunk_grid(tuple(self.array.shape), tuple(self.array.chunks), box)

    def _learn(self, until: int) -> None:
        """Note, per chunk, which of the blocks up to ``until`` read what of it (under the lock)."""
        for position in range(self._known, min(until, len(self.boxes))):
            box = self.boxes[position]
            for coords, chunk in self._grid(box):
                self._uses.setdefault(coords, deque()).append((position, intersect(box, chunk)))
        self._known = max(self._known, min(until, len(self.boxes)))

    def _claim(
        self, grid: list[tuple[Coords, Box]], position: int
    ) -> tuple[dict[Coords, tuple[Box, np.ndarray]], dict[Coords, Future], list[Coords]]:
        """Split a box's chunks into those kept, those another thread is decoding, and those to decode here."""
        found, waiting, mine = {}, {}, []
        with self._lock:
            self._learn(position + self.lookahead + 1)
            for coords, common in grid:
                kept = self._kept.get(coords)
                if kept is not None and _contains(kept[0], common):
                    found[coords] = kept
                elif coords in self._loading:
                    waiting[coords] = self._loading[coords]
                else:
                    self._loading[coords] = Future()
                    mine.append(coords)
        return found, waiting, mine

    def _load(self, mine: list[Coords]) -> dict[Coords, tuple[Box, np.ndarray]]:
        """Decode the chunks claimed, in one read of the box around them, and keep them whole for now."""
        boxes = {coords: chunk_box(tuple(self.array.shape), tuple(self.array.chunks), coords) for coords in mine}
        bounds = _bounds(list(boxes.values()))
        try:
            data = read(self.array, bounds, "the input", INPUT_HINT)
        except BaseException as exc:
            with self._lock:
                for coords in mine:
                    self._loading.pop(coords).set_exception(exc)
            raise
        if len(mine) == 1:
            chunks = {mine[0]: (bounds, data)}
        else:  # copies, so that a kept chunk does not keep the whole box alive
            chunks = {coords: (box, data[within(box, bounds)].copy()) for coords, box in boxes.items()}
        with self._lock:
            for coords, chunk in chunks.items():
                self._kept[coords] = chunk
                self._loading.pop(coords).set_result(chunk)
        return chunks

    def _trim(self, coords: Coords, position: int) -> None:
        """After the block at ``position`` read a chunk: keep of it only what later blocks read (under the lock)."""
        uses = self._uses.get(coords)
        while uses and uses[0][0] <= position:
            uses.popleft()
        kept = self._kept.get(coords)
        if not uses:
            self._uses.pop(coords, None)
            self._kept.pop(coords, None)
            return
        if kept is None:
            return
        soon = [box for at, box in uses if at <= position + self.near]
        later = [box for at, box in uses if at > position + self.near]
        whole = chunk_box(tuple(self.array.shape), tuple(self.array.chunks), coords)
        if later and _size(strip := _bounds(later)) * 2 <= _size(whole):
            soon.append(strip)
        if not soon:
            del self._kept[coords]
            return
        region, data = kept
        wanted = intersect(_bounds(soon), region)  # a read the kept part lacks decodes the chunk again
        if any(s.start >= s.stop for s in wanted):
            del self._kept[coords]
        elif wanted != region:
            self._kept[coords] = (wanted, data[within(wanted, region)].copy())


def _bounds(boxes: list[Box]) -> Box:
    """The smallest box around ``boxes``."""
    return tuple(slice(min(b[i].start for b in boxes), max(b[i].stop for b in boxes)) for i in range(len(boxes[0])))


def _contains(outer: Box, inner: Box) -> bool:
    return all(o.start <= i.start and i.stop <= o.stop for o, i in zip(outer, inner, strict=True))


def _size(box: Box) -> int:
    return math.prod(s.stop - s.start for s in box)


def _sharing_span(plan: Plan, array: zarr.Array, array_axes: str) -> int:
    """Blocks read, in plan order, between a block and the last later block that reads one of its chunks;
    0 when no two blocks read one chunk.

    Along a tiled axis, the tiles one chunk (widened by the halo) meets share
    it: 4 in a row for 256-pixel tiles of 1024-pixel chunks, which are 15
    blocks apart in a 4x4 frame; along an iterated axis, the indices of one chunk.
    """
    steps = {}
    for axis in plan.counts():
        size = plan.shape[plan.axes.index(axis)]
        chunk = array.chunks[array_axes.index(axis)] if axis in array_axes else 1
        if axis in plan.tile:
            steps[axis] = _tiles_apart(size, chunk, plan.tile[axis], plan.halo)
        elif axis in plan.iterated:
            steps[axis] = min(chunk, size) - 1
    return plan.blocks_apart(steps)


def _tiles_apart(size: int, chunk: int, tile: int, halo: int) -> int:
    """The most tiles between the first and the last tile whose read (tile plus halo) meets one chunk."""
    steps = 0
    for start in range(0, size, chunk):
        first = max(start - halo, 0) // tile
        last = (min(start + chunk + halo, size) - 1) // tile
        steps = max(steps, last - first)
    return steps


def make_cache(plan: Plan, blocks: Sequence[Block], array: zarr.Array, array_axes: str, ahead: int) -> ChunkCache:
    """The cache of one input: whole chunks for as many blocks ahead as :data:`CACHE_BYTES` of them hold
    (at least the reads ahead), halo strips beyond; a cache that keeps nothing when no two blocks read one chunk."""
    boxes = _Boxes(plan, blocks, array_axes)
    span = _sharing_span(plan, array, array_axes)
    if span == 0:
        return ChunkCache(array, boxes, 0, 0)
    chunk_bytes = math.prod(array.chunks) * np.dtype(array.dtype).itemsize
    most, touched, near = max(CACHE_BYTES // max(chunk_bytes, 1), 1), set(), 0
    for position in range(min(span + ahead + 1, len(boxes))):
        touched.update(coords for coords, _ in chunk_grid(tuple(array.shape), tuple(array.chunks), boxes[position]))
        if len(touched) > most:
            break
        near = position + 1
    near = max(near, ahead + 1)
    return ChunkCache(array, boxes, near, 2 * span + near + 1)


class _Boxes(Sequence):
    """The read boxes of ``blocks`` on the axes of an array, computed when asked (a long run has millions)."""

    def __init__(self, plan: Plan, blocks: Sequence[Block], array_axes: str) -> None:
        self.plan, self.blocks, self.array_axes = plan, blocks, array_axes

    def __len__(self) -> int:
        return len(self.blocks)

    def __getitem__(self, position: int) -> Box:  # type: ignore[override]
        block = self.blocks[position]
        return tuple(slice(*read_range(self.plan, block, axis)) for axis in self.array_axes)


def read_range(plan: Plan, block: Block, axis: str) -> tuple[int, int]:
    pos = plan.axes.index(axis)
    return block.read_start[pos], block.read_stop[pos]
