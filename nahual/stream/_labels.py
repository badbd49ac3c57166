"""The labels output: per-block intermediate ids, then stitching into ``IMAGE/labels/NAME``.

Zarr streaming layer. While a run goes, each block's core is written to the
intermediate array ``IMAGE/.nahual/NAME/raw`` with ids ``offset + 1 ..``
(offsets from the plan, so a resumed or sharded run writes the same ids), and
the block's view of its halo goes into its completion record. Finishing reads
those halos against what the neighbours wrote, merges objects that overlap,
and writes the final label image block by block. Finishing again gives the
same image: it reads only the intermediate data.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import numpy as np
import zarr

from ._ome import Target, add_label_levels, create_label_array, image_group
from ._payload import result_labels
from ._plan import Block, Plan
from ._resume import RunState
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


@dataclass
class LabelSink:
    """Writes label results of one run and stitches them at the end.

    Parameters
    ----------
    target : Target
        Where ``labels/NAME`` goes.
    plan : Plan
        The run's blocks.
    state : RunState
        The output's state folder.
    min_overlap : float
        Passed to :func:`overlap_pairs`.
    """

    target: Target
    plan: Plan
    state: RunState
    min_overlap: float = 0.5

    def __post_init__(self) -> None:
        self.blocks = self.plan.blocks()
        self.offsets = block_offsets(self.plan, self.blocks)
        total = sum(self.plan.out_voxels(b) for b in self.blocks)
        self.dtype = np.uint32 if total < np.iinfo(np.uint32).max else np.uint64
        self._raw: zarr.Array | None = None

    def check(self) -> None:
        """Nothing to check beyond the plan."""

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
            )
        except zarr.errors.ContainsArrayError:
            self._raw = zarr.open_array(path, mode="r+")

    def write(self, block: Block, result: Any) -> None:
        """Write one block's core ids, then record it with its halo view."""
        core_sel, core, window = result_labels(result, self.plan, block)
        local, values = compact_labels(core)
        offset = self.offsets[block.index]
        ids = np.where(local > 0, local + offset, 0).astype(self.dtype)
        self._raw[core_sel] = ids
        arrays = None
        if self.plan.tile:
            known = lookup(values, window)
            view = np.where(known > 0, known + offset, 0)
            _, core_in_window = _window_box(self.plan, block)
            view[core_in_window] = 0
            arrays = {"view": view.astype(self.dtype)}
        self.state.record(block.index, {"offset": offset, "count": int(values.size)}, arrays)

    def _merges(self, raw: zarr.Array) -> dict[int, int]:
        union = UnionFind()
        for block in self.blocks:
            view = self.state.arrays(block.index).get("view")
            if view is None or not view.any():
                continue
            box, core = _window_box(self.plan, block)
            stored = np.asarray(raw[box])
            stored[core] = 0
            for a, b in overlap_pairs(view, stored, self.min_overlap).tolist():
                union.union(a, b)
        return union.merged()

    def finalize(self, attrs: dict[str, Any]) -> dict[str, Any]:
        """Stitch: merge across faces, write ``labels/NAME`` with ids 1..N, record the count."""
        raw = zarr.open_array(self.state.raw_path(), mode="r")
        counts = [self.state.info(b.index)["count"] for b in self.blocks]
        relabel = Relabel(np.array(self.offsets), np.array(counts), self._merges(raw))
        dtype = np.uint32 if relabel.count < np.iinfo(np.uint32).max else np.uint64
        keep = [i for i, a in enumerate(self.plan.axes) if a != "c"]
        final = create_label_array(
            image_group(self.target.image_path),
            self.state.name,
            self.plan.out_axes,
            self.plan.out_shape,
            self.plan.out_chunks,
            dtype,
            tuple(self.target.scale[i] for i in keep),
        )
        for block in self.blocks:
            box = tuple(
                slice(block.start[self.plan.axes.index(a)], block.stop[self.plan.axes.index(a)])
                for a in self.plan.out_axes
            )
            final[box] = relabel(np.asarray(raw[box])).astype(dtype)
        levels = add_label_levels(self.target.image_path, self.state.name)
        summary = {"objects": relabel.count, "merged": int(relabel.nonroot.size), "levels": levels}
        group = zarr.open_group(os.path.join(self.target.image_path, "labels", self.state.name), mode="r+")
        group.attrs.update({"nahual": {**attrs, **summary}})
        return summary
