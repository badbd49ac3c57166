"""OME-Zarr (NGFF 0.4 and 0.5) metadata and inputs: open an image, a label image or a plain array.

Zarr streaming layer, reading side (``_omewrite`` writes). NGFF 0.5 lives in
Zarr v3 stores under the ``ome`` attribute; 0.4 lives in Zarr v2 stores at the
top level of the attributes. :class:`Source` is an input to stream,
:class:`Target` the image group its outputs go into, in the store's own Zarr
format, so that one store never mixes formats.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import zarr

from ..errors import ConfigError

__all__ = [
    "AXIS_TYPES",
    "Source",
    "Target",
    "axis_names",
    "dataset_scale",
    "image_group",
    "ngff_version",
    "ome_attrs",
    "open_multiscale",
    "open_source",
    "output_group",
    "parse_axes",
]

#: The axis names nahual knows, with their NGFF axis type.
AXIS_TYPES = {"t": "time", "c": "channel", "z": "space", "y": "space", "x": "space"}


@dataclass(frozen=True)
class Source:
    """An array to stream, with what nahual needs to know about it.

    Attributes
    ----------
    array : zarr.Array
        The level being read.
    axes : str
        One letter per dimension, e.g. ``"tczyx"``.
    scale : tuple of float
        Physical size of one pixel along each axis (1.0 when unknown).
    image_path : str
        The image group that outputs go into (``labels/``, ``tracks/``, ``tables/``).
    label_name : str or None
        Set when the input is a label image ``IMAGE/labels/NAME``.
    path : str
        The input path as given.
    """

    array: zarr.Array
    axes: str
    scale: tuple[float, ...]
    image_path: str
    label_name: str | None
    path: str

    @property
    def shape(self) -> tuple[int, ...]:
        """Shape of the array being read."""
        return tuple(self.array.shape)

    @property
    def zarr_format(self) -> int:
        """2 or 3, the format of the store the outputs go into."""
        return int(self.array.metadata.zarr_format)

    def target(self) -> Target:
        """Where this input's outputs go."""
        return Target(self.image_path, self.zarr_format, self.scale)


@dataclass(frozen=True)
class Target:
    """Where outputs go: an image group, its Zarr format and the pixel size of the axes written.

    Attributes
    ----------
    image_path : str
        The image group.
    zarr_format : int
        2 (NGFF 0.4) or 3 (NGFF 0.5).
    scale : tuple of float
        Pixel size along each axis of the source.
    """

    image_path: str
    zarr_format: int
    scale: tuple[float, ...]


def parse_axes(axes: str, ndim: int | None = None) -> str:
    """Check an axes string (``"tczyx"`` letters, each once, with y and x).

    Raises
    ------
    ConfigError
        With what was expected and what was given.
    """
    axes = axes.strip().lower()
    bad = sorted(set(axes) - set(AXIS_TYPES))
    if bad or len(set(axes)) != len(axes) or not {"y", "x"} <= set(axes):
        raise ConfigError(f"axes must be distinct letters from 'tczyx' including y and x, got {axes!r}")
    if ndim is not None and len(axes) != ndim:
        raise ConfigError(f"axes {axes!r} name {len(axes)} dimensions but the array has {ndim}")
    return axes


def ngff_version(zarr_format: int) -> str:
    """The NGFF version nahual writes into a store of this Zarr format."""
    return "0.5" if zarr_format == 3 else "0.4"


def ome_attrs(attrs: dict[str, Any]) -> dict[str, Any]:
    """The OME metadata of a group, whichever version wrote it."""
    ome = attrs.get("ome")
    return dict(ome) if isinstance(ome, dict) else dict(attrs)


def dataset_scale(dataset: dict[str, Any], ndim: int) -> tuple[float, ...]:
    """The pixel size of one multiscales dataset (level), 1.0 per axis when it declares none."""
    for transform in dataset.get("coordinateTransformations", []):
        if transform.get("type") == "scale":
            return tuple(float(s) for s in transform["scale"])
    return (1.0,) * ndim


def axis_names(multiscale: dict[str, Any]) -> str:
    """The axes of a multiscales entry as letters (NGFF 0.3 lists plain names)."""
    return "".join(a["name"] if isinstance(a, dict) else str(a) for a in multiscale.get("axes", []))


def open_multiscale(group: zarr.Group, path: str, axes: str | None, level: int) -> tuple[zarr.Array, str, tuple]:
    """One level of a multiscales group: the array, its axes and its pixel size.

    Raises
    ------
    ConfigError
        When the metadata is missing or malformed, the axes disagree, or the level does not exist.
    """
    ome = ome_attrs(dict(group.attrs))
    multiscales = ome.get("multiscales")
    if not multiscales:
        raise ConfigError(
            f"{path} is a Zarr group without OME-Zarr multiscales metadata; give the path of an array and --axes"
        )
    meta = multiscales[0]
    names = axis_names(meta)
    if not names:
        if axes is None:
            raise ConfigError(f"{path} has no axes in its multiscales metadata; give them with --axes, e.g. tczyx")
        names = axes
    elif axes is not None and parse_axes(axes) != names:
        raise ConfigError(f"--axes {axes!r} disagrees with the axes {names!r} in the metadata of {path}")
    datasets = meta.get("datasets") or []
    if not 0 <= level < len(datasets):
        raise ConfigError(f"level {level} does not exist in {path}: it has levels 0..{len(datasets) - 1}")
    try:
        array = group[datasets[level]["path"]]
    except KeyError as exc:
        raise ConfigError(f"level {level} of {path} names no array of the group ({datasets[level]!r})") from exc
    names = parse_axes(names, array.ndim)
    return array, names, dataset_scale(datasets[level], array.ndim)


def open_source(path: str | os.PathLike, axes: str | None = None, level: int = 0) -> Source:
    """Open an OME-Zarr image, an OME-Zarr label image or a plain Zarr array.

    The outputs of a plain array go into the group that holds it, so
    ``ARRAY/labels/NAME`` names the label image ``NAME`` made from ``ARRAY``
    (in that group's ``labels/``), as it does for an image.

    Parameters
    ----------
    path : str or path-like
        ``IMAGE`` (a multiscales group), ``IMAGE/labels/NAME``, the path of an array, or ``ARRAY/labels/NAME``.
    axes : str, optional
        Axes of a plain array (its ``dimension_names`` are used otherwise); for
        OME-Zarr, only checked against the metadata (a label image has its image's axes without ``c``).
    level : int
        Resolution level of a multiscales group.

    Raises
    ------
    ConfigError
        When the path holds nothing Zarr, no axes are known, or the level is missing.
    """
    path = _labels_of_array(os.fspath(path).rstrip("/"))
    try:
        node = zarr.open(store=path, mode="r")
    except (FileNotFoundError, zarr.errors.NodeNotFoundError) as exc:
        raise ConfigError(f"no Zarr array or group at {path}") from exc
    if isinstance(node, zarr.Group):
        ome = ome_attrs(dict(node.attrs))
        if "image-label" in ome and axes is not None:
            names = axis_names((ome.get("multiscales") or [{}])[0])
            axes = None if parse_axes(axes).replace("c", "") == names else axes
        array, names, scale = open_multiscale(node, path, axes, level)
        if "image-label" in ome:
            labels_dir = os.path.dirname(path)
            if os.path.basename(labels_dir) != "labels":
                raise ConfigError(f"label image {path} is not inside an image's labels/ group")
            return Source(array, names, scale, os.path.dirname(labels_dir), os.path.basename(path), path)
        return Source(array, names, scale, path, None, path)
    if axes is None:
        dims = getattr(node.metadata, "dimension_names", None)
        if not dims or any(d is None for d in dims):
            raise ConfigError(
                f"{path} is a plain Zarr array without axes metadata; give its axes with --axes, e.g. tyx"
            )
        axes = "".join(dims)
    names = parse_axes(axes, node.ndim)
    parent = os.path.dirname(path)
    if not parent or not _is_group(parent):
        raise ConfigError(
            f"{path} is an array at the root of its store; outputs need a group: write it with write_image"
        )
    return Source(node, names, (1.0,) * node.ndim, parent, None, path)


def _node(path: str) -> zarr.Array | zarr.Group | None:
    try:
        return zarr.open(store=path, mode="r")
    except (FileNotFoundError, zarr.errors.NodeNotFoundError):
        return None


def _is_group(path: str) -> bool:
    return isinstance(_node(path), zarr.Group)


def _labels_of_array(path: str) -> str:
    """``ARRAY/labels/NAME`` of a plain array as the path of that label image (in the array's group)."""
    head, name = os.path.split(path)
    array, folder = os.path.split(head)
    if folder != "labels" or os.path.exists(path) or not isinstance(_node(array), zarr.Array):
        return path
    return os.path.join(os.path.dirname(array), "labels", name)


def output_group(path: str | os.PathLike) -> str:
    """The image group the outputs of an input go into: the group itself, or the group holding a plain array.

    Raises
    ------
    ConfigError
        When the path holds nothing Zarr.
    """
    path = os.fspath(path).rstrip("/")
    node = _node(path)
    if node is None:
        raise ConfigError(f"no Zarr array or group at {path}")
    return os.path.dirname(path) if isinstance(node, zarr.Array) else path


def image_group(image_path: str | os.PathLike, mode: str = "a") -> zarr.Group:
    """Open the image group that outputs go into."""
    try:
        return zarr.open_group(os.fspath(image_path), mode=mode)
    except (FileNotFoundError, zarr.errors.NodeNotFoundError, zarr.errors.ContainsArrayError) as exc:
        raise ConfigError(f"no Zarr group at {image_path}") from exc
