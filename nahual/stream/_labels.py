"""The labels output: per-block intermediate ids, then stitching into ``IMAGE/labels/NAME``.

Zarr streaming layer. While a run goes, each block's core, with ids
``offset + 1 ..`` (offsets from the plan, counted within the block's frame, so
a resumed or sharded run writes the same ids), and its view of its halo go
into the block's completion record, one append to the run's journal: no file
per block, whose creation cost more CPU than anything else this process did
for a block, and a record that holds its data or is not there. Finishing reads
those halos against the neighbours' cores, merges objects that overlap, and
writes the final label image block by block, each core checked against its
CRC. Finishing again gives the same image: it reads only the recorded data.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import zarr

from ._chunkfiles import chunk_grid, intersect, within
from ._omewrite import add_label_levels
from ._payload import result_labels
from ._plan import Block, Plan
from ._sink import Sink
from ._stitch import Relabel, UnionFind, compact_labels, lookup, overlap_pairs

__all__ = ["LabelSink", "block_frames", "block_offsets", "intermediate_dtype"]


def block_frames(plan: Plan, blocks: list[Block]) -> list[list[Block]]:
    """The blocks grouped by their index on the iterated axes (a frame), in plan order.

    Objects only merge across tiles of one frame, so each frame is stitched on
    its own, and its blocks' ids need only be unique within it.
    """
    positions = [plan.axes.index(a) for a in plan.iterated]
    frames: dict[tuple[int, ...], list[Block]] = {}
    for block in blocks:
        frames.setdefault(tuple(block.start[p] for p in positions), []).append(block)
    return list(frames.values())


def block_offsets(plan: Plan, frames: list[list[Block]]) -> list[int]:
    """Per block (by its index; ``frames`` from :func:`block_frames` of all the plan's blocks), the id
    before its first: the output pixels of the blocks before it in its frame."""
    offsets = [0] * sum(len(frame) for frame in frames)
    for frame in frames:
        total = 0
        for block in frame:
            offsets[block.index] = total
            total += plan.out_voxels(block)
    return offsets


def intermediate_dtype(plan: Plan, frames: list[list[Block]]) -> type:
    """The dtype of the ids the blocks record: uint32 unless one frame has 2**32 pixels or more.

    Counted per frame, not over the store, so that a long time-lapse keeps
    4-byte ids (half the memory, disk and encoding of 8-byte ones).
    """
    return _ids_dtype(max((sum(plan.out_voxels(b) for b in frame) for frame in frames), default=0))


def _ids_dtype(count: int) -> type:
    """The dtype that holds ids ``1 .. count``: uint32 below its largest value, else uint64."""
    return np.uint32 if count < np.iinfo(np.uint32).max else np.uint64


def _window_box(plan: Plan, block: Block) -> tuple[tuple[slice, ...], tuple[slice, ...]]:
    """The read box in output coordinates, and the core within it."""
    box, core = [], []
    for axis in plan.out_axes:
        pos = plan.axes.index(axis)
        box.append(slice(block.read_start[pos], block.read_stop[pos]))
        offset = block.start[pos] - block.read_start[pos]
        core.append(slice(offset, offset + block.stop[pos] - block.start[pos]))
    return tuple(box), tuple(core)


def _core_box(plan: Plan, block: Block) -> tuple[slice, ...]:
    """The block's core in output coordinates."""
    return tuple(slice(block.start[plan.axes.index(a)], block.stop[plan.axes.index(a)]) for a in plan.out_axes)


@dataclass
class LabelSink(Sink):
    """Writes label results of one run and stitches them at the end.

    Parameters
    ----------
    target, plan, state, labels
        As for :class:`Sink` (``labels`` is not used).
    min_overlap : float
        Passed to :func:`overlap_pairs`.
    """

    min_overlap: float = 0.5
    records: ClassVar[int] = 2  # 2: ids counted per frame (1: over the store)

    def __post_init__(self) -> None:
        self.blocks = self.plan.blocks()
        self.frames = block_frames(self.plan, self.blocks)  # grouped once: offsets, dtype and the stitch use them
        self.offsets = block_offsets(self.plan, self.frames)
        self.dtype = intermediate_dtype(self.plan, self.frames)

    def check(self) -> None:
        """Any plan will do: tiles are stitched, iterated axes written one index at a time."""

    def prepare(self) -> None:
        """Nothing to create: the blocks' ids go into their records."""

    def write(self, block: Block, result: Any) -> None:
        """Record one block: its core's ids and, when it has a halo, its view of it (the halo merges' input)."""
        core, window = result_labels(result, self.plan, block)
        offset = self.offsets[block.index]
        ids, values = compact_labels(core, offset, self.dtype)
        arrays = {"ids": ids}
        if self.plan.halo:  # without one, tiles read nothing of each other and nothing merges
            view = lookup(values, window, offset, self.dtype)
            _, core_in_window = _window_box(self.plan, block)
            view[core_in_window] = 0
            arrays["view"] = view
        self.state.record(block.index, {"offset": offset, "count": int(values.size)}, arrays)

    def _ids(self, block: Block) -> np.ndarray:
        """A finished block's core ids, checked against their CRC."""
        return self.side_arrays(block, "ids")["ids"]

    def _merges(self, blocks: list[Block]) -> dict[int, int]:
        union = UnionFind()
        tiles = _TileIndex(self.plan, blocks)
        ids = _RecentIds(
            self._ids, _neighbour_span(self.plan), self.plan.out_voxels(blocks[0]) * np.dtype(self.dtype).itemsize
        )
        for block in blocks:
            ids.merging(block)
            view = self.side_arrays(block, "view").get("view")
            if view is None or not view.any():
                continue
            box, _ = _window_box(self.plan, block)
            stored = np.zeros(view.shape, self.dtype)
            for other, other_box in tiles.meeting(box):
                if other is not block:
                    common = intersect(box, other_box)
                    stored[within(common, box)] = ids(other)[within(common, other_box)]
            for a, b in overlap_pairs(view, stored, self.min_overlap).tolist():
                union.union(a, b)
        return union.merged()

    def _relabel(self, blocks: list[Block], counts: list[int]) -> Relabel:
        """The map from one frame's intermediate ids to 1..N, N its objects after merging across tiles."""
        offsets = [self.offsets[b.index] for b in blocks]
        return Relabel(np.array(offsets), np.array(counts), self._merges(blocks))

    def finalize(self, provenance: dict[str, Any]) -> dict[str, Any]:
        """Stitch: merge across faces, write ``labels/NAME`` with ids 1..N, record the count.

        Raises
        ------
        BlockError
            Naming the first block whose recorded data is damaged (the output is then not complete).
        """
        counts = {b.index: self.state.info(b.index)["count"] for b in self.blocks}
        # the ids before merging bound the objects, which are known only once the last frame is stitched
        dtype = _ids_dtype(sum(counts.values()))
        final = self.create_label_image(dtype)
        objects = merged = 0
        for blocks in self.frames:  # the stitch tables hold one frame's objects at most
            relabel = self._relabel(blocks, [counts[b.index] for b in blocks])
            for block in blocks:
                box = _core_box(self.plan, block)
                ids = relabel(self._ids(block))
                ids[ids > 0] += objects
                final[box] = ids.astype(dtype)
            objects, merged = objects + relabel.count, merged + int(relabel.nonroot.size)
        levels = add_label_levels(self.target.image_path, self.name)
        summary = {"objects": objects, "merged": merged, "levels": levels}
        group = zarr.open_group(os.path.join(self.target.image_path, "labels", self.name), mode="r+")
        group.attrs.update({"nahual": {**provenance, **summary}})
        return summary


#: Bytes of decoded ids the halo merges of a frame keep for the next blocks (their neighbours' cores).
RECENT_BYTES = 64 * 2**20


def _neighbour_span(plan: Plan) -> int:
    """Blocks, in plan order, between a block and its farthest neighbour (a halo reaches one tile at most)."""
    return plan.blocks_apart(dict.fromkeys(plan.tile, 1))


class _RecentIds:
    """The ids of the blocks read for the halo merges, kept while later blocks of the frame may read them again.

    The merges go through a frame in plan order and read their neighbours,
    ``span`` blocks away at most; kept are the blocks read not more than
    ``span`` before the block being merged (and what ``RECENT_BYTES`` hold), so
    each block's ids are decoded once, not once per neighbour that overlaps it.
    """

    def __init__(self, read: Callable[[Block], np.ndarray], span: int, block_bytes: int) -> None:
        self.read, self.span, self.kept = read, span, {}
        self.most = max(1, RECENT_BYTES // max(block_bytes, 1))

    def merging(self, block: Block) -> None:
        """``block`` is merged next: forget the blocks no later block reads."""
        for index in [i for i in self.kept if i < block.index - self.span]:
            del self.kept[index]

    def __call__(self, block: Block) -> np.ndarray:
        ids = self.kept.get(block.index)
        if ids is None:
            if len(self.kept) >= self.most:
                del self.kept[min(self.kept)]
            ids = self.kept[block.index] = self.read(block)
        return ids


class _TileIndex:
    """The blocks of one frame on the grid of their cores: which blocks a box meets, and their cores."""

    def __init__(self, plan: Plan, blocks: list[Block]) -> None:
        self.shape = plan.out_shape
        self.grid = tuple(
            plan.tile.get(axis, 1 if axis in plan.iterated else size)
            for axis, size in zip(plan.out_axes, plan.out_shape, strict=True)
        )
        self.by_place = {
            tuple(s.start // g for s, g in zip(_core_box(plan, b), self.grid, strict=True)): b for b in blocks
        }

    def meeting(self, box: tuple[slice, ...]) -> list[tuple[Block, tuple[slice, ...]]]:
        """The blocks whose cores ``box`` overlaps, each with its core."""
        return [(self.by_place[p], core) for p, core in chunk_grid(self.shape, self.grid, box) if p in self.by_place]
