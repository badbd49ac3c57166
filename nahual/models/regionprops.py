"""The ``regionprops`` model: per-object measurements with scikit-image.

Layer: model zoo. Input: ``{"image": array, "labels": uint32 array, "axes": str}``
where ``axes`` names the image axes (``cyx``, ``czyx``, ``tcyx`` or ``tczyx``)
and ``labels`` has the same axes without ``c``. Output (the ``features`` kind)::

    {"table": {column: 1-d array}}     # one row per object (per frame with t)

Columns, in order: ``t`` (inputs with a t axis), ``label``, ``area``,
``centroid_<axis>``, ``bbox_<axis>_min`` / ``bbox_<axis>_max`` (half-open, as
slices), the shape descriptors (``shape=True``; 2-D: eccentricity, solidity,
extent, perimeter, orientation, axis lengths, equivalent diameter; 3-D: those
scikit-image defines in 3-D) and ``intensity_{mean,min,max,std}_<channel>`` for
every channel (``intensity=True``), where ``<channel>`` is ``c0``, ``c1``… or
the given ``channel_names``. Values are scikit-image's ``regionprops`` values,
in pixels unless ``spacing`` gives the pixel size.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..errors import ContractError
from ..model import Contract, Model, Param

__all__ = ["RegionProps"]

SHAPE_2D = (
    "eccentricity",
    "solidity",
    "extent",
    "perimeter",
    "orientation",
    "axis_major_length",
    "axis_minor_length",
    "equivalent_diameter_area",
)
SHAPE_3D = ("solidity", "extent", "axis_major_length", "axis_minor_length", "equivalent_diameter_area")
INTENSITY = ("intensity_mean", "intensity_min", "intensity_max", "intensity_std")


class RegionProps(Model):
    """Measure size, position, shape and per-channel intensity of every labelled object."""

    name = "regionprops"
    packages = ("scikit-image", "numpy")
    contract = Contract(
        axes=("cyx", "czyx", "tcyx", "tczyx"),
        inputs=("image", "labels"),
        dtype=None,
        channels=1,
        output="features",
        tiling=False,
        halo=0,
    )
    param_spec = (
        Param("shape", True, "add shape descriptors"),
        Param("intensity", True, "add mean/min/max/std intensity per channel"),
        Param("channel_names", None, "names used in intensity columns instead of c0, c1...", type=(list, tuple)),
        Param(
            "spacing",
            None,
            "pixel size per spatial axis, for areas and lengths in physical units",
            type=(list, tuple),
        ),
    )

    def process(self, payload: dict[str, Any], **params: Any) -> dict[str, Any]:
        """Measure one frame or a series; ``params`` override the load params for this call."""
        p = self.merge_params(params, self.params)
        arrays, axes = self.contract.read_payload(payload)
        image, labels = arrays["image"], arrays["labels"]
        if p["channel_names"] is not None and len(p["channel_names"]) != image.shape[axes.index("c")]:
            raise ContractError(
                f"regionprops: {len(p['channel_names'])} channel_names for an image with "
                f"{image.shape[axes.index('c')]} channels"
            )
        if "t" not in axes:
            return {"table": measure(image, labels, p)}
        if labels.shape[0] == 0:
            raise ContractError("regionprops: the t axis is empty, expected at least one frame")
        frames = [measure(image[t], labels[t], p) for t in range(labels.shape[0])]
        sizes = [len(frame["label"]) for frame in frames]
        table = {"t": np.repeat(np.arange(len(frames), dtype=np.int64), sizes)}
        table.update({key: np.concatenate([frame[key] for frame in frames]) for key in frames[0]})
        return {"table": table}


def measure(image: np.ndarray, labels: np.ndarray, p: dict[str, Any]) -> dict[str, np.ndarray]:
    """The table of one frame: ``image`` is (c, [z,] y, x), ``labels`` ([z,] y, x)."""
    from skimage.measure import regionprops_table

    spatial = ("z", "y", "x")[-labels.ndim :]
    properties = ["label", "area", "centroid", "bbox"]
    properties += list(SHAPE_2D if labels.ndim == 2 else SHAPE_3D) if p["shape"] else []
    properties += list(INTENSITY) if p["intensity"] else []
    raw = regionprops_table(
        labels.astype(np.int64, copy=False), np.moveaxis(image, 0, -1), properties=properties, spacing=p["spacing"]
    )
    names = p["channel_names"] or [f"c{k}" for k in range(image.shape[0])]
    return {_column(key, spatial, names): np.asarray(value) for key, value in raw.items()}


def _column(key: str, spatial: tuple[str, ...], channels: list[str]) -> str:
    """scikit-image's ``name-k`` column as ``name_<axis>`` or ``name_<channel>``."""
    name, _, index = key.partition("-")
    if not index:
        return name
    k = int(index)
    if name == "centroid":
        return f"centroid_{spatial[k]}"
    if name == "bbox":
        return f"bbox_{spatial[k % len(spatial)]}_{'min' if k < len(spatial) else 'max'}"
    return f"{name}_{channels[k]}"
