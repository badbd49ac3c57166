"""The array output: a model's per-pixel arrays (probability maps) as an OME-Zarr image ``IMAGE/predictions/NAME``.

Zarr streaming layer. A model of the ``array`` kind returns ``{"array": A}``:
its output channels first (one, for a single map), then the block's read box
on the model's other axes, in their order. Each block's core goes into an
intermediate array in the run's state, created by the first block written
(which says how many channels and which dtype there are; a resumed or sharded
run opens it and must agree), and the block is recorded with the digest of
what it wrote. Finishing checks every block's core against its digest, then
copies the intermediate array's stored chunks into ``predictions/NAME``
as they are (level 0 has the same chunks and codecs, so nothing is encoded
twice), and gives the image the resolution levels of the image it was made
from, picking every n-th pixel as label levels do, so that its values stay
the model's own. Memory stays at a block and a few chunks whatever the size
of the image. The image has the source's axes, with ``c`` (added where the
source had none) holding the model's channels. Finishing again gives the
same image: it reads only the intermediate data.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np
import zarr
from zarr.core.buffer import default_buffer_prototype
from zarr.core.sync import sync

from ..errors import BlockError, ContractError
from ._chunkfiles import chunk_grid, location, write_chunks
from ._integrity import compressors, digest, read
from ._ome import axis_names, image_group, ngff_version, ome_attrs
from ._omewrite import _append_datasets, _array_options, _multiscale, _set_ome
from ._plan import Block
from ._pyramid import add_levels, image_level_steps
from ._sink import FINISHER, REDO, Sink

__all__ = ["PREDICTIONS", "ArraySink", "output_axes"]

#: The group under the image that holds array outputs.
PREDICTIONS = "predictions"
#: The intermediate array of the run's state (beside ``raw``, which label runs use).
INTERMEDIATE = "array"
#: zstd level of the arrays this sink writes: float maps compress as well at 1 as at zstd's default 3
#: (about 1.17x for a probability map), and a quarter faster.
ZSTD_LEVEL = 1
#: Threads that decode and check the blocks' cores when finishing (each holds a block, encoded and decoded).
CHECKERS = 2


def output_axes(axes: str) -> str:
    """The axes of an array output of an image with ``axes``: those axes, with ``c`` before z, y, x if absent."""
    if "c" in axes:
        return axes
    first = min((axes.index(a) for a in "zyx" if a in axes), default=len(axes))
    return axes[:first] + "c" + axes[first:]


@dataclass
class ArraySink(Sink):
    """Writes the array results of one run and assembles ``predictions/NAME`` at the end."""

    folder = PREDICTIONS

    def __post_init__(self) -> None:
        self.axes = output_axes(self.plan.axes)
        self._array: zarr.Array | None = None
        self._lock = threading.Lock()

    def check(self) -> None:
        """Any plan will do: tiles own whole chunks, iterated axes are written one index at a time."""

    def prepare(self) -> None:
        """Nothing yet: the first block's result says how many channels the intermediate array has."""

    def _layout(self, channels: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
        """Shape and chunks of the output: the plan's output shape and chunks, ``c`` whole."""
        plan = self.plan
        shapes = dict(zip(plan.out_axes, plan.out_shape, strict=True))
        chunks = dict(zip(plan.out_axes, plan.out_chunks, strict=True))
        return (
            tuple(channels if a == "c" else shapes[a] for a in self.axes),
            tuple(channels if a == "c" else chunks[a] for a in self.axes),
        )

    def _intermediate(self, channels: int | None = None, dtype: np.dtype | None = None) -> zarr.Array:
        """The intermediate array: opened, or created for ``channels`` of ``dtype`` by the first block."""
        with self._lock:
            if self._array is None:
                path = os.path.join(self.state.path, INTERMEDIATE)
                try:
                    self._array = zarr.open_array(path, mode="r+")
                except (FileNotFoundError, zarr.errors.NodeNotFoundError):
                    if channels is None:
                        raise
                    self._array = self._create(path, channels, dtype)
            return self._array

    def _create(self, path: str, channels: int, dtype: np.dtype | None) -> zarr.Array:
        """Create the intermediate array at ``path``, or open the one another shard created there first.

        Shards start at once, and each creates the array at its first block: it is
        made in a folder of its own, then renamed into place, so that a shard
        never finds a half-made one, and the shard that comes second opens the
        first one's.
        """
        shape, chunks = self._layout(channels)
        scratch = tempfile.mkdtemp(dir=os.path.dirname(path), prefix=f".{os.path.basename(path)}-")
        try:
            zarr.create_array(
                store=scratch,
                shape=shape,
                chunks=chunks,
                dtype=dtype,
                fill_value=0,
                zarr_format=self.target.zarr_format,
                compressors=compressors(self.target.zarr_format, ZSTD_LEVEL),
            )
            try:
                os.rename(scratch, path)
            except OSError:
                if not os.path.isdir(path):
                    raise
                # another shard's is there: a folder is never renamed over one that is not empty
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
        return zarr.open_array(path, mode="r+")

    def _core(self, block: Block, result: Any) -> np.ndarray:
        """A result's core laid out on the output's axes (iterated axes as singletons).

        Raises
        ------
        ContractError
            When the result is not ``{"array": numbers}`` of the block's read box with channels first.
        """
        plan = self.plan
        data = result.get("array") if isinstance(result, dict) else None
        if data is None:
            keys = sorted(result) if isinstance(result, dict) else type(result).__name__
            raise ContractError(f"an array model must return {{'array': (c, ...) array}}, got {keys}")
        data = np.asarray(data)
        spatial = plan.model_axes.replace("c", "")
        box = tuple(block.read_stop[plan.axes.index(a)] - block.read_start[plan.axes.index(a)] for a in spatial)
        if data.shape[1:] != box or data.dtype.kind not in "biuf":
            raise ContractError(
                f"array result must be numbers of shape (channels, {', '.join(map(str, box))}) "
                f"(c first, then axes {spatial!r}), got {data.dtype} {data.shape}"
            )
        position = {a: plan.axes.index(a) for a in spatial}
        core = tuple(
            slice(block.start[i] - block.read_start[i], block.stop[i] - block.read_start[i]) for i in position.values()
        )
        kept = "c" + spatial
        present = "".join(a for a in self.axes if a in kept)
        data = np.transpose(data[(slice(None), *core)], [kept.index(a) for a in present])
        return data.reshape([data.shape[present.index(a)] if a in present else 1 for a in self.axes])

    def _box(self, block: Block) -> tuple[slice, ...]:
        """The block's core in the output's coordinates (all channels)."""
        plan = self.plan
        return tuple(
            slice(None) if a == "c" else slice(block.start[plan.axes.index(a)], block.stop[plan.axes.index(a)])
            for a in self.axes
        )

    def write(self, block: Block, result: Any) -> None:
        """Write one block's core into the intermediate array, then record it with its digest."""
        core = self._core(block, result)
        dtype = np.dtype(np.uint8) if core.dtype.kind == "b" else core.dtype
        array = self._intermediate(core.shape[self.axes.index("c")], dtype)
        channels = array.shape[self.axes.index("c")]
        if core.shape[self.axes.index("c")] != channels:
            raise ContractError(
                f"{self.plan.describe(block)} gives {core.shape[self.axes.index('c')]} channels, "
                f"earlier blocks {channels}: a model must give every block the same channels"
            )
        data = np.ascontiguousarray(core, dtype=array.dtype)  # the one copy: zarr and the digest take it as it is
        if not write_chunks(array, self._box(block), data):
            array[self._box(block)] = data
        self.state.record(block.index, {"channels": channels}, data=data)

    def _core_damage(self, block: Block, core: np.ndarray) -> str | None:
        want, got = self.state.info(block.index).get("digest"), digest(core)
        return None if want in (None, got) else f"its intermediate array has {got}, recorded {want}"

    def _stored_damage(self, block: Block) -> str | None:
        """The block's core in the intermediate array against its digest; raises for a chunk that does not decode."""
        return self._core_damage(block, read(self._intermediate(), self._box(block), "the intermediate array", REDO))

    def damage(self, block: Block) -> str | None:
        """Side data as in :meth:`Sink.damage`, and the block's core in the intermediate array against its digest."""
        side = super().damage(block)
        if side is not None:
            return side
        try:
            return self._stored_damage(block)
        except (FileNotFoundError, zarr.errors.NodeNotFoundError):
            return f"the intermediate array {os.path.join(self.state.path, INTERMEDIATE)} is missing"
        except ContractError as exc:  # a chunk that does not decode
            return str(exc)

    def _create_image(self, like: zarr.Array, provenance: dict[str, Any]) -> zarr.Group:
        """``predictions/NAME`` (replaced if there): an OME-Zarr image of the output's axes, the source's pixel size.

        Its level 0 has the chunks and codecs of ``like``, so that ``like``'s stored chunks are its own.
        """
        version = ngff_version(self.target.zarr_format)
        scales = dict(zip(self.plan.axes, self.target.scale, strict=True))
        scale = tuple(scales.get(a, 1.0) if a != "c" else 1.0 for a in self.axes)
        group = image_group(self.target.image_path).require_group(PREDICTIONS).create_group(self.name, overwrite=True)
        _set_ome(group, version, {"multiscales": [_multiscale(self.axes, scale, self.name, version)]})
        group.create_array(
            "0",
            shape=like.shape,
            chunks=like.chunks,
            dtype=like.dtype,
            fill_value=0,
            **{**_array_options(version, self.axes), **_codecs(like)},
        )
        group.attrs["nahual"] = provenance
        return group

    def _add_levels(self, group: zarr.Group) -> int:
        """The coarser levels of the source image, picked from level 0 (``c`` kept whole); returns the levels."""
        image = image_group(self.target.image_path)
        meta = (ome_attrs(dict(image.attrs)).get("multiscales") or [{}])[0]
        image_axes = axis_names(meta)
        if image_axes.replace("c", "") != self.axes.replace("c", ""):
            return 1
        keep = [i for i, a in enumerate(image_axes) if a != "c"]
        level0 = group["0"]
        at = self.axes.index("c")
        spatial = tuple(n for i, n in enumerate(level0.shape) if i != at)
        scale = tuple(s for a, s in zip(self.plan.axes, self.target.scale, strict=True) if a != "c")
        steps = []
        for factors, transforms in image_level_steps(meta, image, keep, spatial, scale):
            widened = []
            for t in transforms:
                values = list(t[t["type"]])
                values.insert(at, 1.0 if t["type"] == "scale" else 0.0)
                widened.append({"type": t["type"], t["type"]: values})
            steps.append(((*factors[:at], 1, *factors[at:]), widened))
        version = ngff_version(self.target.zarr_format)
        options = {
            **_array_options(version, self.axes),
            "compressors": compressors(self.target.zarr_format, ZSTD_LEVEL),
        }
        _append_datasets(group, version, add_levels(group, steps, options))
        return 1 + len(steps)

    def finalize(self, provenance: dict[str, Any]) -> dict[str, Any]:
        """Check every block's core, copy the stored chunks into ``predictions/NAME``, add levels, store the provenance.

        Raises
        ------
        BlockError
            Naming the first block whose recorded data is damaged (the output is then not complete).
        """
        array = self._intermediate()
        blocks = self.plan.blocks()
        with ThreadPoolExecutor(CHECKERS, thread_name_prefix="nahual-check") as pool:
            for block, damage in zip(blocks, pool.map(self._stored_damage, blocks), strict=True):
                if damage is not None:
                    raise BlockError(self.plan.describe(block), FINISHER, f"{damage}; {REDO}")
        group = self._create_image(array, provenance)
        copy_chunks(array, group["0"])
        summary = {"channels": int(array.shape[self.axes.index("c")]), "dtype": str(array.dtype)}
        summary["levels"] = self._add_levels(group)
        group.attrs["nahual"] = {**provenance, **summary}
        return summary


def _codecs(array: zarr.Array) -> dict[str, Any]:
    """The ``create_array`` options that give another array the codecs of ``array`` (so its stored chunks)."""
    codecs = {"compressors": array.compressors, "filters": array.filters}
    return {**codecs, "serializer": array.serializer} if array.metadata.zarr_format == 3 else codecs


def copy_chunks(source: zarr.Array, dest: zarr.Array) -> None:
    """Copy the stored chunks of ``source`` into ``dest`` (same shape, chunks and codecs) undecoded, one at a time.

    Between two folders on one file system each chunk file is hard-linked, so
    nothing is read or written (the intermediate array is removed once the
    output is marked complete; a run that rewrites it before then is finished
    again, which makes ``dest`` afresh); otherwise its bytes go through the
    stores. A chunk that ``source`` has not stored (all fill value) stays
    unstored in ``dest``.
    """
    prototype = default_buffer_prototype()
    for coords, _ in chunk_grid(tuple(source.shape), tuple(source.chunks)):
        keys = source.metadata.encode_chunk_key(coords), dest.metadata.encode_chunk_key(coords)
        if not _link_chunk(source, dest, *keys):
            stored = sync((source.store_path / keys[0]).get(prototype=prototype))
            if stored is not None:
                sync((dest.store_path / keys[1]).set(stored))


def _link_chunk(source: zarr.Array, dest: zarr.Array, source_key: str, dest_key: str) -> bool:
    """Hard-link a chunk file of ``source`` as ``dest``'s (nothing where there is none); False where it cannot."""
    if getattr(source.store, "root", None) is None or getattr(dest.store, "root", None) is None:
        return False
    path, link = os.path.join(location(source), source_key), os.path.join(location(dest), dest_key)
    if not os.path.isfile(path):
        return True
    try:
        os.makedirs(os.path.dirname(link), exist_ok=True)
        os.link(path, link)
    except OSError:  # another file system, or one without hard links
        return False
    return True
