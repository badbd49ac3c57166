"""Coarser resolution levels, made by nearest-neighbour picking one chunk at a time.

Zarr streaming layer. A label image gets the levels of the image it belongs
to, so that a viewer (napari, any OME-Zarr viewer) shows it zoomed out without
reading the full resolution, and label and image levels line up. Picking every
f-th pixel keeps label ids as they are, where averaging would invent ids. Each
chunk of a new level is read from the level above it, so memory stays at a
few chunks whatever the size of the image.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import zarr

from ..errors import ContractError
from ._chunkfiles import chunk_grid

__all__ = ["add_levels", "image_level_steps", "pick_level"]

#: How far a ratio of pixel sizes may be from a whole number and still count as one.
_TOLERANCE = 1e-6


def pick_level(source: zarr.Array, factors: tuple[int, ...], dest: zarr.Array) -> None:
    """Fill ``dest`` with every ``factors``-th pixel of ``source``, one chunk of ``dest`` at a time.

    ``dest`` must have the shape ``ceil(source.shape / factors)``.

    Raises
    ------
    ContractError
        When ``dest`` has another shape.
    """
    expected = tuple(math.ceil(n / f) for n, f in zip(source.shape, factors, strict=True))
    if tuple(dest.shape) != expected:
        raise ContractError(
            f"a level picked by {factors} from shape {source.shape} has shape {expected}, not {dest.shape}"
        )
    for _, box in chunk_grid(tuple(dest.shape), tuple(dest.chunks)):
        read = tuple(
            slice(s.start * f, min(s.stop * f, n), f) for s, f, n in zip(box, factors, source.shape, strict=True)
        )
        dest[box] = np.asarray(source[read])


def _whole(ratio: float) -> int | None:
    """``ratio`` as a whole number >= 1, or None."""
    near = round(ratio)
    return near if near >= 1 and abs(ratio - near) <= _TOLERANCE * max(1.0, ratio) else None


def _restrict(transform: dict[str, Any], keep: list[int]) -> dict[str, Any]:
    """A scale or translation transform on the kept axes only."""
    key = transform["type"]
    return {"type": key, key: [float(transform[key][i]) for i in keep]}


def image_level_steps(
    image_meta: dict[str, Any], image: zarr.Group, keep: list[int], shape: tuple[int, ...], scale: tuple[float, ...]
) -> list[tuple[tuple[int, ...], list[dict[str, Any]]]]:
    """How to make, from an array of ``shape`` and ``scale``, the coarser levels of an image.

    Parameters
    ----------
    image_meta : dict
        The image's multiscales entry.
    image : zarr.Group
        The image group (for the shapes of its levels).
    keep : list of int
        The image axes the array has (all but ``c``, for labels).
    shape, scale : tuple
        Of the array's level 0, on the kept axes.

    Returns
    -------
    list
        Per coarser level: the whole-number factors that pick it from the level
        before, and its coordinate transformations on the kept axes. Empty when
        the array matches no level of the image; it stops at the first level
        that is no whole-number step from the one before.
    """
    levels = []
    for dataset in image_meta.get("datasets", []):
        transforms = [
            _restrict(t, keep)
            for t in dataset.get("coordinateTransformations", [])
            if t["type"] in ("scale", "translation")
        ]
        level_scale = next((tuple(t["scale"]) for t in transforms if t["type"] == "scale"), (1.0,) * len(keep))
        level_shape = tuple(image[dataset["path"]].shape[i] for i in keep)
        levels.append((level_shape, level_scale, transforms))
    matching = [i for i, (s, sc, _) in enumerate(levels) if s == shape and np.allclose(sc, scale, rtol=_TOLERANCE)]
    if not matching:
        return []
    steps, (prev_shape, prev_scale, _) = [], levels[matching[0]]
    for level_shape, level_scale, transforms in levels[matching[0] + 1 :]:
        factors = tuple(_whole(b / a) for a, b in zip(prev_scale, level_scale, strict=True))
        if None in factors:
            break
        if level_shape != tuple(math.ceil(n / f) for n, f in zip(prev_shape, factors, strict=True)):
            break
        steps.append((factors, transforms))
        prev_shape, prev_scale = level_shape, level_scale
    return steps


def add_levels(
    group: zarr.Group, steps: list[tuple[tuple[int, ...], list[dict[str, Any]]]], array_options: dict[str, Any]
) -> list[dict[str, Any]]:
    """Write levels ``1..`` of a multiscale group from its level ``0``; returns their datasets entries."""
    datasets = []
    source = group["0"]
    level0_chunks = source.chunks
    for number, (factors, transforms) in enumerate(steps, start=1):
        shape = tuple(math.ceil(n / f) for n, f in zip(source.shape, factors, strict=True))
        chunks = tuple(min(c, n) for c, n in zip(level0_chunks, shape, strict=True))
        dest = group.create_array(
            str(number), shape=shape, chunks=chunks, dtype=source.dtype, fill_value=0, overwrite=True, **array_options
        )
        pick_level(source, factors, dest)
        datasets.append({"path": str(number), "coordinateTransformations": transforms})
        source = dest
    return datasets
