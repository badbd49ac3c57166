"""``nahual ingest``: a TIFF input written as an OME-Zarr 0.5 image ready for streaming, atomically.

Zarr streaming layer (writing side; :mod:`nahual.stream._tiff` reads). The
store has the layout :func:`nahual.stream.write_image` gives the demo (plus
axis units), so that ``nahual apply`` reads both alike: one multiscales group,
level ``0`` at full resolution and each further level halving y and x, arrays
chunked one plane along t, c and z and in tiles along y and x,
zstd-compressed with its checksum. Unlike ``write_image`` it never holds the image whole: level 0 is
copied slab by slab (each slab a run of whole output chunks at least as long
as the file's own strips or tiles), and each coarser level is the 2 x 2 mean
of the level above it, read back from the store slab by slab. Everything is
written into ``OUT.partial-<pid>`` beside ``OUT`` and renamed at the end, so
``OUT`` either is complete or does not exist.
"""

from __future__ import annotations

import itertools
import math
import os
import shutil
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import ConfigError
from ._integrity import compressors
from ._tiff import LazyArray, TiffInput, normalise_axes, open_tiff

__all__ = ["DEFAULT_CHUNK", "DEFAULT_LEVELS", "Ingested", "ingest", "parse_pairs"]

#: Resolution levels when none are asked for (as many as the demo's examples use).
DEFAULT_LEVELS = 2
#: Chunk size along y and x: small enough to read a tile cheaply, large enough to compress well.
DEFAULT_CHUNK = 512
#: Pixels per slab read at once; the peak memory of an ingest is a small multiple of this.
_SLAB_PIXELS = 2**22
_ORDER = "tczyx"
_AXIS_TYPES = {"t": "time", "c": "channel", "z": "space", "y": "space", "x": "space"}
#: The unit of a ``--scale`` value, by axis type.
_DEFAULT_UNITS = {"time": "second", "space": "micrometer"}


@dataclass(frozen=True)
class Ingested:
    """What :func:`ingest` wrote.

    Attributes
    ----------
    path : str
        The OME-Zarr image.
    axes : str
        Its axes, in t, c, z, y, x order.
    shape : tuple of int
        Shape of level 0.
    dtype : str
        The pixel type, as in the input.
    scale : tuple of float
        Pixel size of level 0 per axis.
    units : tuple of str or None
        NGFF unit per axis (None where unknown).
    levels : int
        Resolution levels written.
    source_axes : str
        tifffile's letters for the input's dimensions.
    series : int
        Series in the input file (only the first is ingested).
    """

    path: str
    axes: str
    shape: tuple[int, ...]
    dtype: str
    scale: tuple[float, ...]
    units: tuple[str | None, ...]
    levels: int
    source_axes: str
    series: int


def parse_pairs(
    value: str | Mapping[str, Any] | None, option: str, allowed: str, convert: Callable[[str], float | int]
) -> dict[str, Any]:
    """``"z=2,y=0.5"`` (or a mapping) into ``{"z": 2.0, "y": 0.5}``: positive values of ``allowed`` axes.

    Parameters
    ----------
    value : str, mapping or None
        What the user gave; None or ``""`` is no pair.
    option : str
        Its name, for messages (``--scale``).
    allowed : str
        The axis letters it may name.
    convert : callable
        ``float`` or ``int``, applied to each value.

    Raises
    ------
    ConfigError
        For a malformed pair, an axis outside ``allowed``, or a value that is not positive.
    """
    if value is None or (isinstance(value, str) and not value.strip()):
        return {}
    items = value.items() if isinstance(value, Mapping) else [part.partition("=")[::2] for part in value.split(",")]
    pairs = {}
    for axis, text in items:
        axis = str(axis).strip().lower()
        if axis not in allowed or len(axis) != 1:
            raise ConfigError(f"{option} takes AXIS=VALUE pairs for axes of {allowed!r}, got {value!r}")
        try:
            number = convert(str(text).strip())
        except ValueError:
            number = 0
        if not (number > 0 and math.isfinite(number)):
            kind = "integers" if convert is int else "numbers"
            raise ConfigError(f"{option} values must be positive {kind}, got {axis}={text!r}")
        pairs[axis] = number
    return pairs


def ingest(
    source: str | os.PathLike,
    out: str | os.PathLike,
    *,
    axes: str | None = None,
    scale: str | Mapping[str, float] | None = None,
    levels: int = DEFAULT_LEVELS,
    chunks: str | Mapping[str, int] | None = None,
    overwrite: bool = False,
) -> Ingested:
    """Write a TIFF, OME-TIFF, multi-page stack or folder of frames as an OME-Zarr 0.5 image.

    Parameters
    ----------
    source : str or path-like
        A TIFF file, or a folder of same-shaped TIFFs (sorted naturally, the folder
        being the first dimension).
    out : str or path-like
        The image to create (``.zarr``).
    axes : str, optional
        One letter of ``tczyx`` per dimension of ``source``, in the file's order;
        replaces what the metadata says. Needed when the metadata does not say.
    scale : str or mapping, optional
        Pixel sizes (``"z=2,y=0.5,x=0.5"``), in micrometers for z, y, x and seconds
        for t; they replace the metadata's for the axes given.
    levels : int
        Resolution levels, each halving y and x by a 2 x 2 mean.
    chunks : str or mapping, optional
        Chunk size along y and x (``"y=512,x=512"``, the default).
    overwrite : bool
        Replace ``out`` when it is a Zarr store already.

    Returns
    -------
    Ingested

    Raises
    ------
    ConfigError
        For a bad option, an input that cannot be read or whose axes are unknown, or
        an ``out`` that exists (without ``overwrite``); nothing is left behind.
    """
    if isinstance(levels, bool) or not isinstance(levels, int) or levels < 1:
        raise ConfigError(f"--levels must be a positive integer, got {levels!r}")
    sizes = parse_pairs(scale, "--scale", "tzyx", float)
    tile = {"y": DEFAULT_CHUNK, "x": DEFAULT_CHUNK, **parse_pairs(chunks, "--chunks", "yx", int)}
    out = os.fspath(out).rstrip("/")
    _check_target(out, overwrite)
    with open_tiff(source) as tiff:
        file_axes = _file_axes(tiff, axes)
        order = sorted(range(len(file_axes)), key=lambda d: _ORDER.index(file_axes[d]))
        out_axes = "".join(file_axes[d] for d in order)
        unknown = sorted(set(sizes) - set(out_axes))
        if unknown:
            raise ConfigError(f"--scale names axis {unknown[0]!r} but {tiff.name} has axes {out_axes!r}")
        calibration = [_pixel_size(tiff, d, file_axes[d], sizes) for d in order]
        partial = f"{out}.partial-{os.getpid()}"
        try:
            shape, dtype = _write(partial, tiff, order, out_axes, tile, calibration, levels, os.path.basename(out))
            _publish(partial, out, overwrite)
        except BaseException:
            shutil.rmtree(partial, ignore_errors=True)
            raise
    return Ingested(
        path=out,
        axes=out_axes,
        shape=shape,
        dtype=dtype,
        scale=tuple(size for size, _ in calibration),
        units=tuple(unit for _, unit in calibration),
        levels=levels,
        source_axes=tiff.raw_axes,
        series=tiff.series,
    )


def _file_axes(tiff: TiffInput, axes: str | None) -> str:
    """nahual's letter for each dimension of the input: ``axes`` if given, else the metadata's."""
    shape = tuple(tiff.array.shape)
    if axes is None:
        known = normalise_axes(tiff.raw_axes)
        if known is None:
            raise ConfigError(
                f"{tiff.name} has {len(shape)} dimensions {shape} that its metadata does not name (tifffile reads "
                f"{tiff.raw_axes!r}); give one letter per dimension, in the file's order, with --axes "
                f"(t time, c channel, z depth, y, x), e.g. --axes {_ORDER[-len(shape) :]}"
            )
        return known
    axes = axes.strip().lower()
    if (
        len(axes) != len(shape)
        or len(set(axes)) != len(axes)
        or not set(axes) <= set(_ORDER)
        or not {"y", "x"} <= set(axes)
    ):
        raise ConfigError(
            f"--axes needs {len(shape)} distinct letters of 'tczyx' with y and x for the dimensions {shape} "
            f"of {tiff.name}, got {axes!r}"
        )
    return axes


def _pixel_size(tiff: TiffInput, dim: int, axis: str, sizes: dict[str, float]) -> tuple[float, str | None]:
    """Pixel size and unit of one dimension: ``--scale`` first, then the metadata if it meant the same axis."""
    if axis in sizes:
        return sizes[axis], _DEFAULT_UNITS[_AXIS_TYPES[axis]]
    meant, size, unit = tiff.sizes.get(dim, (None, 1.0, None))
    return (size, unit) if meant == axis else (1.0, None)


def _check_target(out: str, overwrite: bool) -> None:
    """Refuse an ``out`` that exists (unless overwriting a Zarr store) or whose folder does not."""
    if os.path.lexists(out):
        if not overwrite:
            raise ConfigError(f"{out} exists already; pass --overwrite to replace it")
        markers = ("zarr.json", ".zgroup", ".zarray")
        if not os.path.isdir(out) or not any(os.path.exists(os.path.join(out, m)) for m in markers):
            raise ConfigError(f"{out} exists and is not a Zarr store; --overwrite replaces only Zarr stores")
    parent = os.path.dirname(out) or "."
    if not os.path.isdir(parent):
        raise ConfigError(f"the folder of {out} does not exist")


def _publish(partial: str, out: str, overwrite: bool) -> None:
    """Rename the finished ``partial`` to ``out``; an old ``out`` is removed only once the new one is in place."""
    if not os.path.lexists(out):
        try:
            os.rename(partial, out)
        except OSError as exc:
            raise ConfigError(f"{out} appeared while ingesting; pass --overwrite to replace it") from exc
        return
    _check_target(out, overwrite)
    old = f"{out}.old-{os.getpid()}"
    os.rename(out, old)
    try:
        os.rename(partial, out)
    except BaseException:
        os.rename(old, out)
        raise
    shutil.rmtree(old)


def _slabs(
    shape: tuple[int, ...], chunks: tuple[int, ...], covers: tuple[int, ...], pixels: int
) -> Iterator[tuple[slice, ...]]:
    """Boxes of whole ``chunks``, in order, to read and write at once.

    Each box is at least as long as ``covers`` (the input's own chunks: strips,
    tiles, pages) on every axis, so an input chunk is decoded at most twice
    rather than once per output chunk, and it is widened along x (the last
    axis) while it holds fewer than ``pixels`` pixels.
    """
    steps = [min(c * math.ceil(m / c), n) for c, m, n in zip(chunks, covers, shape)]
    steps[-1] *= max(1, pixels // math.prod(steps))
    for corner in itertools.product(*(range(0, n, s) for n, s in zip(shape, steps))):
        yield tuple(slice(c, min(c + s, n)) for c, s, n in zip(corner, steps, shape))


def _create(group: Any, name: str, shape: tuple[int, ...], chunks: tuple[int, ...], dtype: Any, axes: str) -> Any:
    """One level's array: ``chunks`` capped at its shape, zstd with its checksum like every array nahual writes."""
    return group.create_array(
        name,
        shape=shape,
        chunks=tuple(min(c, n) for c, n in zip(chunks, shape)),
        dtype=dtype,
        fill_value=0,
        compressors=compressors(3),
        dimension_names=list(axes),
    )


def _copy_level0(source: LazyArray, order: list[int], dest: Any, name: str) -> None:
    """Copy the input into level 0, transposed into t, c, z, y, x order, one slab at a time."""
    covers = tuple(source.chunks[d] for d in order)
    for box in _slabs(tuple(dest.shape), tuple(dest.chunks), covers, _SLAB_PIXELS):
        key: list[slice] = [slice(None)] * len(order)
        for i, d in enumerate(order):
            key[d] = box[i]
        try:
            block = np.asarray(source[tuple(key)])
        except Exception as exc:  # the reader's own errors (tifffile, imagecodecs), translated once here
            raise ConfigError(f"reading {name} failed: {type(exc).__name__}: {exc}") from exc
        dest[box] = block.transpose(order)


def _mean_halves(block: np.ndarray, axes: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
    """The 2 x 2 mean of ``block`` along ``axes`` (a last odd row or column averages what it has)."""
    total = block.astype(np.result_type(block.dtype, np.float64))
    count = np.ones((1,) * block.ndim)
    for axis in axes:
        n = block.shape[axis]
        starts = np.arange(0, n, 2)
        total = np.add.reduceat(total, starts, axis=axis)
        count = count * np.minimum(2, n - starts).reshape([-1 if a == axis else 1 for a in range(block.ndim)])
    mean = total / count
    if dtype.kind in "iu":
        return np.rint(mean).astype(dtype)
    return mean >= 0.5 if dtype.kind == "b" else mean.astype(dtype)


def _downsample(source: Any, dest: Any, axes: tuple[int, ...]) -> None:
    """Fill ``dest`` with the 2 x 2 mean of ``source`` along ``axes``, slab by slab of ``dest``."""
    for box in _slabs(tuple(dest.shape), tuple(dest.chunks), tuple(dest.chunks), _SLAB_PIXELS // 4):
        read = tuple(
            slice(2 * s.start, min(2 * s.stop, n)) if i in axes else s
            for i, (s, n) in enumerate(zip(box, source.shape))
        )
        dest[box] = _mean_halves(np.asarray(source[read]), axes, dest.dtype)


def _write(
    path: str,
    tiff: TiffInput,
    order: list[int],
    axes: str,
    tile: dict[str, int],
    calibration: list[tuple[float, str | None]],
    levels: int,
    name: str,
) -> tuple[tuple[int, ...], str]:
    """Write the whole image group at ``path``; returns the shape and dtype of level 0."""
    import zarr

    group = zarr.open_group(path, mode="w-", zarr_format=3)
    shape = tuple(int(tiff.array.shape[d]) for d in order)
    chunks = tuple(tile.get(a, 1) for a in axes)
    dtype = np.dtype(tiff.array.dtype).newbyteorder("=")
    level = _create(group, "0", shape, chunks, dtype, axes)
    _copy_level0(tiff.array, order, level, tiff.name)
    spatial = (axes.index("y"), axes.index("x"))
    scale = [size for size, _ in calibration]
    datasets = [{"path": "0", "coordinateTransformations": [{"type": "scale", "scale": list(scale)}]}]
    for number in range(1, levels):
        halved = tuple(math.ceil(n / 2) if i in spatial else n for i, n in enumerate(level.shape))
        coarser = _create(group, str(number), halved, chunks, dtype, axes)
        _downsample(level, coarser, spatial)
        level, scale = coarser, [s * 2 if i in spatial else s for i, s in enumerate(scale)]
        datasets.append({"path": str(number), "coordinateTransformations": [{"type": "scale", "scale": scale}]})
    axis_meta = [
        {"name": a, "type": _AXIS_TYPES[a], **({"unit": unit} if unit else {})}
        for a, (_, unit) in zip(axes, calibration)
    ]
    group.attrs.update(
        {
            "ome": {"version": "0.5", "multiscales": [{"axes": axis_meta, "datasets": datasets, "name": name}]},
            "nahual": {"ingest": {"source": tiff.name, "tiff_axes": tiff.raw_axes}},
        }
    )
    return shape, str(dtype)
