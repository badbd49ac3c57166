"""Turn a block into the model's payload, and a label result back into the block's core.

Zarr streaming layer. Reads a block's read box from the source (and the label
input), drops the iterated axes, adds a singleton ``c`` when the model wants
one the store lacks, transposes to the model's axes order and casts to the
model's dtype. A chunk that does not decode, and NaN or infinite pixels, fail
the block with a message that names them: they are found as each block is
read, since scanning a whole store before the run would cost a second read.
Label results come back in the model's spatial order and are checked, cropped
to the core and transposed to the output's axes.

Reads go through a :class:`ChunkCache` per array: tiles smaller than the
store's chunks, and halos that reach into the neighbours' chunks, would
otherwise decode the same chunk once per block that touches it (16 times for
256x256 tiles of 1024x1024 chunks). The cache keeps the decoded chunks the
next blocks in plan order will need, a number fixed by the plan, never by the
size of the store.
"""

from __future__ import annotations

import math
import threading
from collections import OrderedDict
from collections.abc import Sequence
from concurrent.futures import Future
from typing import Any

import numpy as np
import zarr

from ..errors import ContractError
from ..model import Contract
from ._integrity import chunk_grid, read
from ._plan import Block, Plan

__all__ = ["CACHE_BYTES", "BlockReader", "ChunkCache", "build_payload", "read_box", "result_labels"]

#: Most bytes of decoded chunks the cache of one input array keeps.
CACHE_BYTES = 256 * 2**20
#: What to do about an input chunk that does not decode, ending the message.
INPUT_HINT = "the input is damaged: restore it from a copy"

Coords = tuple[int, ...]


class ChunkCache:
    """Decoded chunks of one Zarr array, each decoded once while the blocks that read it come by (thread-safe).

    Parameters
    ----------
    array : zarr.Array
        The array to read.
    keep : int
        Chunks kept, least recently used dropped first; a box touching more
        chunks than this is read directly, as without a cache (0: every box).
    """

    def __init__(self, array: zarr.Array, keep: int) -> None:
        self.array = array
        self.keep = int(keep)
        self._chunks: OrderedDict[Coords, np.ndarray] = OrderedDict()
        self._loading: dict[Coords, Future] = {}
        self._lock = threading.Lock()

    def read(self, box: tuple[slice, ...]) -> np.ndarray:
        """The pixels of ``box`` (a unit-step slice per axis), a fresh array.

        Raises
        ------
        ContractError
            When a chunk does not decode, naming it.
        """
        grid = list(chunk_grid(tuple(self.array.shape), tuple(self.array.chunks), box))
        if len(grid) > self.keep:
            return read(self.array, box, "the input", INPUT_HINT)
        found, waiting, mine = self._claim(grid)
        if mine:
            found.update(self._load(mine))
        for coords, future in waiting.items():
            found[coords] = future.result()
        out = np.empty(tuple(s.stop - s.start for s in box), dtype=self.array.dtype)
        for coords, chunk_box in grid:
            common = tuple(
                slice(max(b.start, c.start), min(b.stop, c.stop)) for b, c in zip(box, chunk_box, strict=True)
            )
            out[_within(common, box)] = found[coords][_within(common, chunk_box)]
        return out

    def _claim(
        self, grid: list[tuple[Coords, tuple[slice, ...]]]
    ) -> tuple[dict[Coords, np.ndarray], dict[Coords, Future], list[tuple[Coords, tuple[slice, ...]]]]:
        """Split a box's chunks into those kept, those another thread is decoding, and those to decode here."""
        found, waiting, mine = {}, {}, []
        with self._lock:
            for coords, chunk_box in grid:
                if coords in self._chunks:
                    self._chunks.move_to_end(coords)
                    found[coords] = self._chunks[coords]
                elif coords in self._loading:
                    waiting[coords] = self._loading[coords]
                else:
                    self._loading[coords] = Future()
                    mine.append((coords, chunk_box))
        return found, waiting, mine

    def _load(self, mine: list[tuple[Coords, tuple[slice, ...]]]) -> dict[Coords, np.ndarray]:
        """Decode the chunks claimed, in one read of the box around them, and keep them."""
        bounds = tuple(
            slice(min(b[axis].start for _, b in mine), max(b[axis].stop for _, b in mine))
            for axis in range(len(mine[0][1]))
        )
        try:
            data = read(self.array, bounds, "the input", INPUT_HINT)
        except BaseException as exc:
            with self._lock:
                for coords, _ in mine:
                    self._loading.pop(coords).set_exception(exc)
            raise
        if len(mine) == 1:
            chunks = {mine[0][0]: data}
        else:  # copies, so that a kept chunk does not keep the whole box alive
            chunks = {coords: data[_within(box, bounds)].copy() for coords, box in mine}
        with self._lock:
            for coords, chunk in chunks.items():
                self._chunks[coords] = chunk
                self._loading.pop(coords).set_result(chunk)
            while len(self._chunks) > self.keep:
                self._chunks.popitem(last=False)
        return chunks


def _within(inner: tuple[slice, ...], outer: tuple[slice, ...]) -> tuple[slice, ...]:
    """Where box ``inner`` lies within box ``outer``, as a selection of an array of ``outer``'s pixels."""
    return tuple(slice(i.start - o.start, i.stop - o.start) for i, o in zip(inner, outer, strict=True))


def _sharing_span(plan: Plan, array: zarr.Array, array_axes: str) -> int:
    """Blocks read, in plan order, between a block and the last later block that reads one of its chunks;
    0 when no two blocks read one chunk.

    Neighbours along a tiled axis share chunks through their halos or tiles that
    are not chunk multiples; along an iterated axis, through chunks longer than one.
    """
    counts, inner, span = plan.counts(), 1, 0
    for axis in reversed(plan.axes):
        if axis not in counts:
            continue
        chunk = array.chunks[array_axes.index(axis)] if axis in array_axes else 1
        tiled = axis in plan.tile and (plan.halo > 0 or plan.tile[axis] % chunk != 0)
        if tiled or (axis in plan.iterated and chunk > 1):
            span = inner
        inner *= counts[axis]
    return span


def chunks_to_keep(plan: Plan, blocks: Sequence[Block], array: zarr.Array, array_axes: str, ahead: int) -> int:
    """How many chunks of ``array`` a cache keeps: those read by a sharing span of blocks plus the reads ahead,
    at most :data:`CACHE_BYTES` of them; none when no two blocks read one chunk."""
    span = _sharing_span(plan, array, array_axes)
    if span == 0:
        return 0
    chunk_bytes = math.prod(array.chunks) * np.dtype(array.dtype).itemsize
    most = max(CACHE_BYTES // max(chunk_bytes, 1), 1)
    touched: set[Coords] = set()
    for block in blocks[: span + ahead + 1]:
        box = tuple(slice(*_read_range(plan, block, axis)) for axis in array_axes)
        touched.update(coords for coords, _ in chunk_grid(tuple(array.shape), tuple(array.chunks), box))
        if len(touched) >= most:
            return most
    return len(touched)


def _read_range(plan: Plan, block: Block, axis: str) -> tuple[int, int]:
    pos = plan.axes.index(axis)
    return block.read_start[pos], block.read_stop[pos]


class BlockReader:
    """Reads the payloads of a run's blocks through one :class:`ChunkCache` per input (from reader threads).

    Parameters
    ----------
    contract : Contract
        The model's contract.
    plan : Plan
        The run's plan.
    blocks : sequence of Block
        The blocks this run reads, in the order it reads them (sizes the caches).
    image, labels : zarr.Array or None
        The image and the label image the model takes.
    ahead : int
        Blocks read ahead of the one being sent.
    scale : dict, optional
        Pixel size per spatial axis of the store, sent as the payload's ``scale``
        to models whose contract ``reads_scale``.
    """

    def __init__(
        self,
        contract: Contract,
        plan: Plan,
        blocks: Sequence[Block],
        image: zarr.Array | None,
        labels: zarr.Array | None,
        ahead: int,
        scale: dict[str, float] | None = None,
    ) -> None:
        self.contract, self.plan = contract, plan
        self.scale = scale if contract.reads_scale and scale else None
        self.image = None if image is None else ChunkCache(image, chunks_to_keep(plan, blocks, image, plan.axes, ahead))
        self.labels = (
            None if labels is None else ChunkCache(labels, chunks_to_keep(plan, blocks, labels, plan.out_axes, ahead))
        )

    def __call__(self, block: Block) -> dict[str, Any]:
        """One block's payload."""
        payload = build_payload(self.contract, self.plan, block, self.image, self.labels)
        if self.scale is not None:
            payload["scale"] = self.scale
        return payload


def read_box(source: ChunkCache, array_axes: str, plan: Plan, block: Block, want: str) -> np.ndarray:
    """Read a block's read box from ``source`` and lay it out in ``want`` order.

    ``array_axes`` may lack axes of the plan (a label array has no ``c``); axes of
    ``want`` the array lacks are added as singletons.
    """
    box, index = [], []
    kept = ""
    for axis in array_axes:
        box.append(slice(*_read_range(plan, block, axis)))
        if axis in plan.iterated:
            index.append(0)
        else:
            index.append(slice(None))
            kept += axis
    data = source.read(tuple(box))[tuple(index)]
    for axis in want:
        if axis not in kept:
            data = data[np.newaxis]
            kept = axis + kept
    return np.transpose(data, [kept.index(a) for a in want])


def build_payload(
    contract: Contract,
    plan: Plan,
    block: Block,
    image: ChunkCache | None,
    labels: ChunkCache | None,
) -> dict[str, Any]:
    """The payload of one block: ``image`` and/or ``labels`` as the contract's inputs ask, plus ``axes``."""
    payload: dict[str, Any] = {"axes": plan.model_axes}
    if "image" in contract.inputs and image is not None:
        data = read_box(image, plan.axes, plan, block, plan.model_axes)
        data = data.astype(contract.dtype, copy=False) if contract.dtype else data
        if data.dtype.kind in "fc" and not np.isfinite(data).all():
            bad = int(data.size - np.count_nonzero(np.isfinite(data)))
            raise ContractError(
                f"the image has {bad} NaN or infinite pixels among the {data.size} this block reads; "
                "the model takes finite numbers: replace them in the input first"
            )
        payload["image"] = data
    if "labels" in contract.inputs and labels is not None:
        payload["labels"] = read_box(labels, plan.out_axes, plan, block, plan.model_axes.replace("c", "")).astype(
            np.uint32, copy=False
        )
        if "image" not in payload:
            payload["axes"] = plan.model_axes.replace("c", "")
    return payload


def result_labels(result: Any, plan: Plan, block: Block) -> tuple[tuple[slice, ...], np.ndarray, np.ndarray]:
    """Check a label result and lay it out on the output's axes.

    Returns
    -------
    core_selection : tuple of slice
        Where the core goes in the output array.
    core : numpy.ndarray
        The core's labels, with singleton iterated axes.
    window : numpy.ndarray
        The whole read box's labels in the same layout (the halo is needed for stitching).

    Raises
    ------
    ContractError
        When the result is not ``{"labels": integer array}`` of the tile's spatial shape.
    """
    if not isinstance(result, dict) or "labels" not in result:
        keys = sorted(result) if isinstance(result, dict) else type(result).__name__
        raise ContractError(f"a labels model must return {{'labels': array}}, got {keys}")
    data = np.asarray(result["labels"])
    result_axes = plan.model_axes.replace("c", "")
    expected = tuple(block.read_stop[plan.axes.index(a)] - block.read_start[plan.axes.index(a)] for a in result_axes)
    if data.shape != expected:
        raise ContractError(f"labels result has shape {data.shape}, expected {expected} (axes {result_axes!r})")
    if data.dtype.kind not in "iub":
        raise ContractError(f"labels result must be integers, got dtype {data.dtype}")
    if data.dtype.kind != "u":
        if data.size and data.min() < 0:
            raise ContractError(f"labels result must be >= 0, got a minimum of {data.min()}")
        data = data.astype(np.uint64 if data.dtype.itemsize == 8 else np.uint32)
    out_axes = plan.out_axes
    present = "".join(a for a in out_axes if a in result_axes)
    window = np.transpose(data, [result_axes.index(a) for a in present])
    window = window.reshape([window.shape[present.index(a)] if a in present else 1 for a in out_axes])
    core_sel, window_core = [], []
    for axis in out_axes:
        pos = plan.axes.index(axis)
        core_sel.append(slice(block.start[pos], block.stop[pos]))
        offset = block.start[pos] - block.read_start[pos] if axis in present else 0
        window_core.append(slice(offset, offset + block.stop[pos] - block.start[pos]))
    return tuple(core_sel), window[tuple(window_core)], window
