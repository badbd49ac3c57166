"""The labels output: per-block intermediate ids, then stitching into ``IMAGE/labels/NAME``.

Zarr streaming layer. While a run goes, each block's core is written to the
intermediate array ``raw`` of the run's state with ids ``offset + 1 ..``
(offsets from the plan, so a resumed or sharded run writes the same ids), and
the block's view of its halo goes into its completion record, with the digest
of the core it wrote. Finishing reads those halos against what the neighbours
wrote, merges objects that overlap, and writes the final label image block by
block, checking each core against its digest. Finishing again gives the same
image: it reads only the intermediate data.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import numpy as np
import zarr

from ..errors import BlockError, ContractError
from ._chunkfiles import write_chunks
from ._integrity import compressors, digest, read
from ._omewrite import add_label_levels
from ._payload import result_labels
from ._plan import Block, Plan
from ._sink import FINISHER, REDO, Sink
from ._stitch import Relabel, UnionFind, compact_labels, lookup, overlap_pairs

__all__ = ["LabelSink", "block_offsets"]


def block_offsets(plan: Plan, blocks: list[Block]) -> list[int]:
    """Per block, the id before its first: the output pixels of all blocks before it."""
    offsets, total = [], 0
    for block in blocks:
        offsets.append(total)
        total += plan.out_voxels(block)
    return offsets


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

    def __post_init__(self) -> None:
        self.blocks = self.plan.blocks()
        self.offsets = block_offsets(self.plan, self.blocks)
        total = sum(self.plan.out_voxels(b) for b in self.blocks)
        self.dtype = np.uint32 if total < np.iinfo(np.uint32).max else np.uint64
        self._raw: zarr.Array | None = None

    def check(self) -> None:
        """Any plan will do: tiles are stitched, iterated axes written one index at a time."""

    def prepare(self) -> None:
        """Create the intermediate array (or open it, when resuming or sharing with other shards)."""
        path = self.state.raw_path()
        try:
            self._raw = zarr.create_array(
                store=path,
                shape=self.plan.out_shape,
                chunks=self.plan.out_chunks,
                dtype=self.dtype,
                fill_value=0,
                zarr_format=self.target.zarr_format,
                compressors=compressors(self.target.zarr_format),
            )
        except zarr.errors.ContainsArrayError:
            self._raw = zarr.open_array(path, mode="r+")

    def write(self, block: Block, result: Any) -> None:
        """Write one block's core ids, then record it with its halo view."""
        core_sel, core, window = result_labels(result, self.plan, block)
        offset = self.offsets[block.index]
        ids, values = compact_labels(core, offset, self.dtype)
        if not write_chunks(self._raw, core_sel, ids):
            self._raw[core_sel] = ids
        arrays = None
        if self.plan.tile:
            view = lookup(values, window, offset, self.dtype)
            _, core_in_window = _window_box(self.plan, block)
            view[core_in_window] = 0
            arrays = {"view": view}
        self.state.record(block.index, {"offset": offset, "count": int(values.size)}, arrays, data=ids)

    def _intermediate(self) -> zarr.Array:
        if self._raw is None:
            self._raw = zarr.open_array(self.state.raw_path(), mode="r")
        return self._raw

    def _core_damage(self, block: Block, core: np.ndarray) -> str | None:
        want, got = self.state.info(block.index).get("digest"), digest(core)
        return None if want in (None, got) else f"its intermediate labels have {got}, recorded {want}"

    def damage(self, block: Block) -> str | None:
        """Side data as in :meth:`Sink.damage`, and the block's core in the intermediate array against its digest."""
        side = super().damage(block)
        if side is not None:
            return side
        try:
            core = read(self._intermediate(), _core_box(self.plan, block), "the intermediate labels", REDO)
        except (FileNotFoundError, zarr.errors.NodeNotFoundError):
            return f"the intermediate labels {self.state.raw_path()} are missing"
        except ContractError as exc:  # a chunk that does not decode
            return str(exc)
        return self._core_damage(block, core)

    def _frames(self) -> list[list[Block]]:
        """The blocks grouped by their index on the iterated axes (a frame), in plan order.

        Objects only merge across tiles of one frame, so each frame is stitched on its own and the
        stitch tables never hold more than one frame's objects, however long the time-lapse.
        """
        positions = [self.plan.axes.index(a) for a in self.plan.iterated]
        frames: dict[tuple[int, ...], list[Block]] = {}
        for block in self.blocks:
            frames.setdefault(tuple(block.start[p] for p in positions), []).append(block)
        return list(frames.values())

    def _merges(self, raw: zarr.Array, blocks: list[Block]) -> dict[int, int]:
        union = UnionFind()
        for block in blocks:
            view = self.side_arrays(block).get("view")
            if view is None or not view.any():
                continue
            box, core = _window_box(self.plan, block)
            stored = read(raw, box, "the intermediate labels", REDO)
            stored[core] = 0
            for a, b in overlap_pairs(view, stored, self.min_overlap).tolist():
                union.union(a, b)
        return union.merged()

    def _relabel(self, raw: zarr.Array, blocks: list[Block], counts: list[int]) -> Relabel:
        """The map from one frame's intermediate ids to 1..N, N its objects after merging across tiles."""
        offsets = [self.offsets[b.index] for b in blocks]
        return Relabel(np.array(offsets), np.array(counts), self._merges(raw, blocks))

    def finalize(self, provenance: dict[str, Any]) -> dict[str, Any]:
        """Stitch: merge across faces, write ``labels/NAME`` with ids 1..N, record the count.

        Raises
        ------
        BlockError
            Naming the first block whose recorded data is damaged (the output is then not complete).
        """
        raw = self._intermediate()
        counts = {b.index: self.state.info(b.index)["count"] for b in self.blocks}
        # the ids before merging bound the objects, which are known only once the last frame is stitched
        dtype = np.uint32 if sum(counts.values()) < np.iinfo(np.uint32).max else np.uint64
        final = self.create_label_image(dtype)
        objects = merged = 0
        for blocks in self._frames():
            relabel = self._relabel(raw, blocks, [counts[b.index] for b in blocks])
            for block in blocks:
                box = _core_box(self.plan, block)
                core = read(raw, box, "the intermediate labels", REDO)
                damage = self._core_damage(block, core)
                if damage is not None:
                    raise BlockError(self.plan.describe(block), FINISHER, f"{damage}; {REDO}")
                ids = relabel(core)
                ids[ids > 0] += objects
                final[box] = ids.astype(dtype)
            objects, merged = objects + relabel.count, merged + int(relabel.nonroot.size)
        levels = add_label_levels(self.target.image_path, self.name)
        summary = {"objects": objects, "merged": merged, "levels": levels}
        group = zarr.open_group(os.path.join(self.target.image_path, "labels", self.name), mode="r+")
        group.attrs.update({"nahual": {**provenance, **summary}})
        return summary
