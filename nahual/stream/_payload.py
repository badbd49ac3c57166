"""Turn a block into the model's payload, and a label result back into the block's core.

Zarr streaming layer. Reads a block's read box from the source (and the label
input), drops the iterated axes, adds a singleton ``c`` when the model wants
one the store lacks, transposes to the model's axes order and casts to the
model's dtype. A chunk that does not decode, and NaN or infinite pixels (or
integers the model's float cannot hold), fail the block with a message that
names them: they are found as each block is read, since scanning a whole
store before the run would cost a second read.
Label results come back in the model's spatial order and are checked, cropped
to the core and transposed to the output's axes.

Reads go through a :class:`~nahual.stream._cache.ChunkCache` per input array, so that
a chunk that several blocks read is decoded once.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import zarr

from ..errors import ContractError
from ..model import Contract
from ._cache import ChunkCache, make_cache, read_range
from ._plan import Block, Plan

__all__ = ["BlockReader", "build_payload", "may_be_nonfinite", "read_box", "result_labels"]


class BlockReader:
    """Reads the payloads of a run's blocks through one :class:`ChunkCache` per input (from the lanes, at once).

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
        self.image = None if image is None else make_cache(plan, blocks, image, plan.axes, ahead)
        self.labels = None if labels is None else make_cache(plan, blocks, labels, plan.out_axes, ahead)
        self.positions = {block.index: position for position, block in enumerate(blocks)}

    def __call__(self, block: Block) -> dict[str, Any]:
        """One block's payload."""
        position = self.positions.get(block.index)
        payload = build_payload(self.contract, self.plan, block, self.image, self.labels, position)
        if self.scale is not None:
            payload["scale"] = self.scale
        return payload


def read_box(
    source: ChunkCache, array_axes: str, plan: Plan, block: Block, want: str, position: int | None = None
) -> np.ndarray:
    """Read a block's read box from ``source`` (``position``: its place in the cache's order) in ``want`` order.

    ``array_axes`` may lack axes of the plan (a label array has no ``c``); axes of
    ``want`` the array lacks are added as singletons.
    """
    box, index = [], []
    kept = ""
    for axis in array_axes:
        box.append(slice(*read_range(plan, block, axis)))
        if axis in plan.iterated:
            index.append(0)
        else:
            index.append(slice(None))
            kept += axis
    data = source.read(tuple(box), position)[tuple(index)]
    for axis in want:
        if axis not in kept:
            data = data[np.newaxis]
            kept = axis + kept
    return np.transpose(data, [kept.index(a) for a in want])


def may_be_nonfinite(stored: np.dtype, cast: np.dtype) -> bool:
    """Whether pixels stored as ``stored`` and cast to ``cast`` can be NaN or infinite.

    Only floats can, and integers cast to a float too narrow for them (65535
    as float16 is infinite): a uint16 or uint8 image, the common case, is not
    scanned, which saves a pass over every block's pixels.
    """
    if cast.kind not in "fc":
        return False
    if stored.kind == "b":
        return False
    if stored.kind in "iu":
        return float(np.iinfo(stored).max) > float(np.finfo(cast).max)
    return True


def finite_pixels(data: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """``data`` cast to the model's ``dtype``, refused when a pixel is (or becomes) NaN or infinite."""
    with np.errstate(over="ignore"):  # an overflow is named below, not warned about
        cast = data.astype(dtype, copy=False)
    if not may_be_nonfinite(data.dtype, dtype) or np.isfinite(cast).all():
        return cast
    bad = int(cast.size - np.count_nonzero(np.isfinite(cast)))
    if data.dtype.kind in "iu":
        raise ContractError(
            f"{bad} of the {cast.size} image pixels this block reads are above {np.finfo(dtype).max:g}, "
            f"too large for the model's {dtype}: rescale the input first"
        )
    raise ContractError(
        f"the image has {bad} NaN or infinite pixels among the {cast.size} this block reads; "
        "the model takes finite numbers: replace them in the input first"
    )


def build_payload(
    contract: Contract,
    plan: Plan,
    block: Block,
    image: ChunkCache | None,
    labels: ChunkCache | None,
    position: int | None = None,
) -> dict[str, Any]:
    """The payload of one block: ``image`` and/or ``labels`` as the contract's inputs ask, plus ``axes``.

    ``position`` is the block's place in the caches' order (None: read without keeping anything).
    """
    payload: dict[str, Any] = {"axes": plan.model_axes}
    if "image" in contract.inputs and image is not None:
        data = read_box(image, plan.axes, plan, block, plan.model_axes, position)
        payload["image"] = finite_pixels(data, np.dtype(contract.dtype or data.dtype))
    if "labels" in contract.inputs and labels is not None:
        spatial = plan.model_axes.replace("c", "")
        ids = read_box(labels, plan.out_axes, plan, block, spatial, position)
        payload["labels"] = ids.astype(np.uint32, copy=False)
        if "image" not in payload:
            payload["axes"] = spatial
    return payload


def result_labels(result: Any, plan: Plan, block: Block) -> tuple[np.ndarray, np.ndarray]:
    """Check a label result and lay it out on the output's axes.

    Returns
    -------
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
    window_core = []
    for axis in out_axes:
        pos = plan.axes.index(axis)
        offset = block.start[pos] - block.read_start[pos] if axis in present else 0
        window_core.append(slice(offset, offset + block.stop[pos] - block.start[pos]))
    return window[tuple(window_core)], window
