"""TIFF inputs of ``nahual ingest``: a file or a folder of frames, read lazily, with what its metadata says.

Zarr streaming layer (reading side of :mod:`nahual.stream._ingest`). tifffile
does the reading: ``series[0].aszarr()`` gives a lazy array whose chunks are
the file's own strips or tiles, so a slab reads only the pages and strips it
covers. The metadata tifffile exposes (its ``series.axes`` letters, the
OME-XML ``Pixels`` element, ImageJ's description and resolution tags) is
turned into nahual's axis letters and physical pixel sizes here, once.

tifffile's letters map as follows: ``T`` -> t, ``C`` and ``S`` (samples, as in
RGB) -> c, ``Z`` -> z, ``Y`` -> y, ``X`` -> x. ``I`` (an image sequence) and
``Q`` (unknown) mean the file does not say what a dimension is, and any other
letter (``R`` tiles, ``E`` wavelengths...) has no OME-Zarr axis: such inputs
need the axes given (``--axes``). nahual does not guess between t and z.
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from ..errors import ConfigError

__all__ = ["LazyArray", "TiffInput", "normalise_axes", "open_tiff"]

#: tifffile's axis letters that have an OME-Zarr axis.
_LETTERS = {"T": "t", "C": "c", "S": "c", "Z": "z", "Y": "y", "X": "x"}
#: OME and ImageJ unit symbols to the UDUNITS-2 names NGFF asks for.
_UNITS = {
    "Å": "angstrom",
    "pm": "picometer",
    "nm": "nanometer",
    "µm": "micrometer",
    "μm": "micrometer",
    "um": "micrometer",
    "micron": "micrometer",
    "microns": "micrometer",
    "mm": "millimeter",
    "cm": "centimeter",
    "m": "meter",
    "ns": "nanosecond",
    "µs": "microsecond",
    "μs": "microsecond",
    "us": "microsecond",
    "ms": "millisecond",
    "s": "second",
    "sec": "second",
    "min": "minute",
    "h": "hour",
}
#: tifffile letter, OME ``Pixels`` attribute and the unit OME assumes when the file names none.
_OME_KEYS = (
    ("X", "PhysicalSizeX", "µm"),
    ("Y", "PhysicalSizeY", "µm"),
    ("Z", "PhysicalSizeZ", "µm"),
    ("T", "TimeIncrement", "s"),
)
_SUFFIXES = (".tif", ".tiff")


class LazyArray(Protocol):
    """What ingest reads from: an array that loads only the box it is indexed with."""

    shape: tuple[int, ...]
    dtype: np.dtype
    chunks: tuple[int, ...]

    def __getitem__(self, key: tuple[slice, ...]) -> Any: ...


@dataclass(frozen=True)
class TiffInput:
    """An opened TIFF input.

    Attributes
    ----------
    array : LazyArray
        The pixels, in the order the file stores them.
    raw_axes : str
        tifffile's letters for each dimension (a folder adds ``I`` in front).
    sizes : dict of int to (str, float, str or None)
        Per dimension that the metadata calibrates: the nahual axis it calibrates
        it as, the pixel size and its NGFF unit (None when unknown).
    series : int
        Series in the file; only the first is read.
    name : str
        The file or folder name, for messages and provenance.
    """

    array: LazyArray
    raw_axes: str
    sizes: dict[int, tuple[str, float, str | None]]
    series: int
    name: str


def normalise_axes(raw_axes: str) -> str | None:
    """nahual's letters for tifffile's ``raw_axes``, or None when the file does not tell them all."""
    axes = "".join(_LETTERS.get(letter, "?") for letter in raw_axes.upper())
    if "?" in axes or len(set(axes)) != len(axes) or not {"y", "x"} <= set(axes):
        return None
    return axes


def _unit(symbol: object) -> str | None:
    """The NGFF name of a unit symbol (ImageJ escapes µ as ``\\u00B5``); None for pixels or unknown units."""
    return _UNITS.get(str(symbol).replace("\\u00B5", "µ").replace("\\u00b5", "µ").strip())


def _ome_sizes(tif: Any) -> dict[str, tuple[float, str | None]]:
    """Pixel sizes by tifffile letter from the OME-XML of the first image."""
    import tifffile

    image = tifffile.xml2dict(tif.ome_metadata).get("OME", {}).get("Image", {})
    pixels = (image[0] if isinstance(image, list) else image).get("Pixels", {})
    sizes = {}
    for letter, key, default in _OME_KEYS:
        value = pixels.get(key)
        if isinstance(value, int | float) and value > 0:
            sizes[letter] = (float(value), _unit(pixels.get(f"{key}Unit", default)))
    return sizes


def _imagej_sizes(tif: Any) -> dict[str, tuple[float, str | None]]:
    """Pixel sizes by tifffile letter from ImageJ's description and resolution tags."""
    meta = tif.imagej_metadata or {}
    unit = _unit(meta.get("unit", ""))
    sizes: dict[str, tuple[float, str | None]] = {}
    if unit is not None:  # an uncalibrated ImageJ image has no unit and resolution 1
        xres, yres = tif.pages[0].get_resolution()
        sizes.update({letter: (1.0 / res, unit) for letter, res in (("X", xres), ("Y", yres)) if res > 0})
    if isinstance(meta.get("spacing"), int | float) and meta["spacing"] > 0:
        sizes["Z"] = (float(meta["spacing"]), unit)
    if isinstance(meta.get("finterval"), int | float) and meta["finterval"] > 0:
        sizes["T"] = (float(meta["finterval"]), _unit(meta.get("tunit", "s")) or "second")
    return sizes


def _metadata_sizes(tif: Any, raw_axes: str) -> dict[int, tuple[str, float, str | None]]:
    """Per dimension of the first series, the axis and pixel size its metadata gives (OME, else ImageJ)."""
    by_letter = _ome_sizes(tif) if tif.is_ome else _imagej_sizes(tif) if tif.is_imagej else {}
    return {i: (_LETTERS[letter], *by_letter[letter]) for i, letter in enumerate(raw_axes) if letter in by_letter}


@contextlib.contextmanager
def _open_file(path: Path) -> Iterator[tuple[Any, Any]]:
    """A TIFF file and the lazy zarr array of its first series; tifffile's errors become ConfigError."""
    import tifffile
    import zarr

    try:
        tif = tifffile.TiffFile(path)
    except (tifffile.TiffFileError, ValueError) as exc:
        raise ConfigError(f"{path.name} is not a TIFF file tifffile can read: {exc}") from exc
    with tif:
        if not tif.series:
            raise ConfigError(f"{path.name} holds no image series")
        with tif.series[0].aszarr(squeeze=True) as store:
            yield tif, zarr.open_array(store, mode="r")


def _natural_key(name: str) -> list[int | str]:
    """Sort key that puts ``frame2`` before ``frame10``."""
    return [int(part) if part.isdigit() else part.lower() for part in re.split(r"(\d+)", name)]


class _FrameStack:
    """A folder of same-shaped single-series TIFFs as one array, the folder being the first dimension."""

    def __init__(self, paths: list[Path], frame: Any) -> None:
        self.paths = paths
        self.shape = (len(paths), *frame.shape)
        self.dtype = frame.dtype
        self.chunks = (1, *frame.chunks)

    def __getitem__(self, key: tuple[slice, ...]) -> np.ndarray:
        """Read the box ``key``, opening only the frames its first slice selects."""
        frames = []
        for path in self.paths[key[0]]:
            with _open_file(path) as (_, frame):
                frames.append(np.asarray(frame[key[1:]]))
        return np.stack(frames)


def _frame_paths(folder: Path) -> list[Path]:
    paths = [p for p in folder.iterdir() if p.suffix.lower() in _SUFFIXES and not p.name.startswith(".")]
    if not paths:
        raise ConfigError(f"folder {folder.name} holds no .tif or .tiff files")
    return sorted(paths, key=lambda p: _natural_key(p.name))


def _check_frames(paths: list[Path], shape: tuple[int, ...], dtype: np.dtype) -> None:
    """Every frame must match the first; reads only the headers."""
    for path in paths[1:]:
        with _open_file(path) as (_, frame):
            if tuple(frame.shape) != shape or frame.dtype != dtype:
                raise ConfigError(
                    f"frame {path.name} has shape {tuple(frame.shape)} and dtype {frame.dtype}, but {paths[0].name} "
                    f"has shape {shape} and dtype {dtype}; all frames of a folder must match"
                )


@contextlib.contextmanager
def open_tiff(path: str | os.PathLike) -> Iterator[TiffInput]:
    """Open a TIFF, OME-TIFF or multi-page stack, or a folder of single-series TIFFs (sorted naturally).

    Parameters
    ----------
    path : str or path-like
        A file, or a folder whose ``.tif``/``.tiff`` files are the frames of a stack.

    Yields
    ------
    TiffInput
        Valid while the context is open (a file stays open for lazy reads).

    Raises
    ------
    ConfigError
        When the path is missing or not a TIFF, or the frames of a folder differ in shape or dtype.
    """
    path = Path(path)
    if path.is_dir():
        paths = _frame_paths(path)
        with _open_file(paths[0]) as (tif, frame):
            shape, dtype, raw = tuple(frame.shape), frame.dtype, tif.series[0].get_axes(True)
            sizes = {i + 1: size for i, size in _metadata_sizes(tif, raw).items()}
            stack = _FrameStack(paths, frame)
        _check_frames(paths, shape, dtype)
        yield TiffInput(stack, "I" + raw, sizes, 1, f"{path.name}/")
    elif path.is_file():
        with _open_file(path) as (tif, array):
            raw = tif.series[0].get_axes(True)
            yield TiffInput(array, raw, _metadata_sizes(tif, raw), len(tif.series), path.name)
    else:
        raise ConfigError(f"no TIFF file or folder at {path}")
