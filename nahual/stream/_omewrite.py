"""OME-Zarr (NGFF 0.4 and 0.5) writing: images, label images and their resolution levels.

Zarr streaming layer, writing side (``_ome`` reads). Outputs are written in the
NGFF version of the store they go into (0.5 in Zarr v3, 0.4 in Zarr v2), with
zstd and its checksum, so that a damaged chunk fails to decode. The
metadata is written by hand rather than with ``ome-zarr`` (whose
``write_labels`` leaves ``ome.version`` out of the labels group); the tests
validate it with ``ome-zarr-models``.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import zarr

from ..errors import ConfigError, ContractError
from ._integrity import compressors
from ._ome import (
    AXIS_TYPES,
    axis_names,
    dataset_scale,
    image_group,
    ngff_version,
    ome_attrs,
    open_multiscale,
    parse_axes,
)
from ._pyramid import add_levels, image_level_steps

__all__ = ["add_label_levels", "create_label_array", "write_image", "write_labels"]


def _multiscale(axes: str, scale: tuple[float, ...], name: str, version: str) -> dict[str, Any]:
    meta: dict[str, Any] = {
        "axes": [{"name": a, "type": AXIS_TYPES[a]} for a in axes],
        "datasets": [{"path": "0", "coordinateTransformations": [{"type": "scale", "scale": list(scale)}]}],
        "name": name,
    }
    if version == "0.4":
        meta = {"version": "0.4", **meta}
    return meta


def _set_ome(group: zarr.Group, version: str, ome: dict[str, Any], extra: dict[str, Any] | None = None) -> None:
    """Write OME metadata in the layout of ``version``, plus nahual's own keys."""
    attrs = {"ome": {"version": version, **ome}} if version == "0.5" else dict(ome)
    if extra:
        attrs.update(extra)
    group.attrs.update(attrs)


def _default_chunks(axes: str, shape: tuple[int, ...]) -> tuple[int, ...]:
    return tuple(min(n, 1024) if a in "yx" else 1 for a, n in zip(axes, shape, strict=True))


def write_image(
    path: str | os.PathLike,
    data: np.ndarray,
    axes: str,
    scale: tuple[float, ...] | list[float] | None = None,
    chunks: tuple[int, ...] | None = None,
    overwrite: bool = False,
    levels: int = 1,
) -> str:
    """Write an array as an OME-Zarr 0.5 image (Zarr v3).

    Parameters
    ----------
    path : str or path-like
        The new image group.
    data : numpy.ndarray
        Pixels, with one dimension per letter of ``axes``.
    axes : str
        NGFF order, e.g. ``"tczyx"`` or ``"tyx"``.
    scale : sequence of float, optional
        Pixel size per axis (1.0 each by default).
    chunks : tuple of int, optional
        Chunk shape; by default 1 along t, c and z and up to 1024 along y and x.
    overwrite : bool
        Replace an existing store instead of refusing.
    levels : int
        Resolution levels: each one after the first takes every second pixel
        along y and x of the one before (nearest neighbour, like label levels).

    Returns
    -------
    str
        ``path``, for chaining.
    """
    if levels < 1:
        raise ConfigError(f"an image needs at least 1 level, got levels={levels}")
    data = np.asarray(data)
    axes = parse_axes(axes, data.ndim)
    if list(axes) != sorted(axes, key="tczyx".index):
        raise ConfigError(f"OME-Zarr axes must be in t, c, z, y, x order, got {axes!r}")
    scale = tuple(float(s) for s in scale) if scale is not None else (1.0,) * data.ndim
    if len(scale) != data.ndim:
        raise ConfigError(f"scale has {len(scale)} values for {data.ndim} axes {axes!r}")
    path = os.fspath(path)
    try:
        group = zarr.open_group(path, mode="w" if overwrite else "w-", zarr_format=3)
    except (zarr.errors.ContainsGroupError, zarr.errors.ContainsArrayError, FileExistsError) as exc:
        raise ConfigError(f"{path} exists already; pass overwrite=True to replace it") from exc
    _set_ome(group, "0.5", {"multiscales": [_multiscale(axes, scale, os.path.basename(path), "0.5")]})
    array = group.create_array(
        "0",
        shape=data.shape,
        dtype=data.dtype,
        chunks=chunks or _default_chunks(axes, data.shape),
        **_array_options("0.5", axes),
    )
    array[...] = data
    factors = tuple(2 if a in "yx" else 1 for a in axes)
    steps, level_scale = [], scale
    for _ in range(levels - 1):
        level_scale = tuple(s * f for s, f in zip(level_scale, factors, strict=True))
        steps.append((factors, [{"type": "scale", "scale": list(level_scale)}]))
    _append_datasets(group, "0.5", add_levels(group, steps, _array_options("0.5", axes)))
    return path


def _array_options(version: str, axes: str) -> dict[str, Any]:
    """Options of ``create_array`` that NGFF ``version`` asks for, and zstd with its checksum."""
    if version == "0.5":
        return {"dimension_names": list(axes), "compressors": compressors(3)}
    return {"chunk_key_encoding": {"name": "v2", "separator": "/"}, "compressors": compressors(2)}


def _append_datasets(group: zarr.Group, version: str, datasets: list[dict[str, Any]]) -> None:
    """List further levels in a group's multiscales metadata."""
    if not datasets:
        return
    ome = ome_attrs(dict(group.attrs))
    meta = dict(ome["multiscales"][0])
    meta["datasets"] = [*meta["datasets"], *datasets]
    _set_ome(group, version, {**ome, "multiscales": [meta]})


def add_label_levels(image_path: str | os.PathLike, name: str) -> int:
    """Give ``labels/NAME`` the coarser levels of its image, picked from its level 0.

    Viewers then show labels and image at the same zoom levels. Levels are
    added while the image's levels are whole-number steps apart (every 2nd
    pixel, say); a label image that matches no level of its image keeps one.

    Returns
    -------
    int
        The number of levels the label image has now.
    """
    image = image_group(image_path)
    image_meta = (ome_attrs(dict(image.attrs)).get("multiscales") or [{}])[0]
    image_axes = axis_names(image_meta)
    group = image[f"labels/{name}"]
    level0 = group["0"]
    if not image_axes or len(image_axes) - ("c" in image_axes) != level0.ndim:
        return 1
    keep = [i for i, a in enumerate(image_axes) if a != "c"]
    ome = ome_attrs(dict(group.attrs))
    scale = dataset_scale(ome["multiscales"][0]["datasets"][0], level0.ndim)
    steps = image_level_steps(image_meta, image, keep, tuple(level0.shape), scale)
    version = ngff_version(int(image.metadata.zarr_format))
    _append_datasets(group, version, add_levels(group, steps, _array_options(version, image_axes.replace("c", ""))))
    return 1 + len(steps)


def create_label_array(
    image: zarr.Group,
    name: str,
    axes: str,
    shape: tuple[int, ...],
    chunks: tuple[int, ...],
    dtype: str | np.dtype,
    scale: tuple[float, ...],
    attrs: dict[str, Any] | None = None,
) -> zarr.Array:
    """Create (or replace) ``labels/NAME`` in an image group with image-label metadata.

    The label list of ``labels/`` gains ``name``. ``attrs`` go into the label
    group's attributes under ``"nahual"`` (provenance).
    """
    version = ngff_version(int(image.metadata.zarr_format))
    labels = image.require_group("labels")
    group = labels.create_group(name, overwrite=True)
    _set_ome(
        group,
        version,
        {
            "multiscales": [_multiscale(axes, scale, name, version)],
            "image-label": {"source": {"image": "../../"}, **({"version": "0.4"} if version == "0.4" else {})},
        },
        {"nahual": attrs} if attrs else None,
    )
    array = group.create_array(
        "0", shape=shape, dtype=dtype, chunks=chunks, fill_value=0, **_array_options(version, axes)
    )
    known = list(ome_attrs(dict(labels.attrs)).get("labels", []))
    _set_ome(labels, version, {"labels": known + ([name] if name not in known else [])})
    return array


def _image_layout(image: zarr.Group) -> tuple[str, tuple[int, ...], tuple[int, ...], tuple[float, ...]]:
    """Axes, shape, chunks and scale of an image group's level 0."""
    array, axes, scale = open_multiscale(image, str(image.store_path), None, 0)
    return axes, tuple(array.shape), tuple(array.chunks), scale


def write_labels(
    image_path: str | os.PathLike,
    name: str,
    data: np.ndarray,
    axes: str,
    attrs: dict[str, Any] | None = None,
) -> str:
    """Write an in-memory label image to ``IMAGE/labels/NAME`` (uint32, image-label metadata).

    Parameters
    ----------
    image_path : str or path-like
        An OME-Zarr image group.
    name : str
        Name of the label image.
    data : numpy.ndarray
        Non-negative integer labels, 0 for background, with the image's shape minus ``c``.
    axes : str
        Axes of ``data``: the image's axes without ``c``.
    attrs : dict, optional
        Provenance, stored under ``"nahual"``.

    Returns
    -------
    str
        The path of the label image (with the image's coarser levels, see :func:`add_label_levels`).

    Raises
    ------
    ContractError
        When the axes or shape do not match the image, or the values are not labels.
    """
    data = np.asarray(data)
    image = image_group(image_path)
    img_axes, img_shape, img_chunks, img_scale = _image_layout(image)
    want = img_axes.replace("c", "")
    if parse_axes(axes, data.ndim) != want:
        raise ContractError(f"labels of this image need axes {want!r}, got {axes!r}")
    keep = [i for i, a in enumerate(img_axes) if a != "c"]
    shape = tuple(img_shape[i] for i in keep)
    if data.shape != shape:
        raise ContractError(f"labels of this image need shape {shape}, got {data.shape}")
    if data.dtype.kind not in "iu" or (data.size and data.min() < 0):
        raise ContractError(f"labels must be non-negative integers, got dtype {data.dtype}")
    dtype = np.uint32 if data.size == 0 or data.max() <= np.iinfo(np.uint32).max else np.uint64
    array = create_label_array(
        image, name, want, shape, tuple(img_chunks[i] for i in keep), dtype, tuple(img_scale[i] for i in keep), attrs
    )
    array[...] = data.astype(dtype, copy=False)
    add_label_levels(image_path, name)
    return os.path.join(os.fspath(image_path), "labels", name)
