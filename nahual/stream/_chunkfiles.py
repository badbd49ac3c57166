"""Chunk files: the chunk grid of an array, and chunks read and written past Zarr's machinery.

Zarr streaming layer, below :mod:`._integrity`. Zarr 3 spends 1-3 ms of
Python on every chunk it reads or writes, on its event loop and its decoding
threads: reading a 1024x1024 frame of four 512x512 Zstd chunks cost this
process 17 ms of CPU, against 4 ms to decode them, and a run writes one
intermediate chunk per block. For arrays of a local store whose only codec is
Zstd (every array nahual writes, and the demo's and ``write_image``'s), chunks
are read and written here as Zarr stores them: the chunk's file, the Zstd
frame of its bytes in C order (padded with the fill value at the array's
edge). Anything else (other codecs, sharding, remote stores) goes through Zarr.
"""

from __future__ import annotations

import itertools
import math
import os
from collections.abc import Iterator
from typing import Any

import numpy as np

__all__ = ["chunk_box", "chunk_grid", "intersect", "location", "read_chunks", "within", "write_chunks"]


def location(array: Any) -> str:
    """Where an array lives, for messages: its folder in a local store, else the store path."""
    root = getattr(array.store, "root", None)
    return os.path.join(os.fspath(root), array.path) if root is not None else str(array.store_path)


def _ranges(selection: tuple[Any, ...] | None, shape: tuple[int, ...]) -> list[tuple[int, int]]:
    """(start, stop) per axis of a selection of ints and unit-step slices (None: everything)."""
    if selection is None:
        return [(0, n) for n in shape]
    out = []
    for item, n in zip(selection, shape, strict=False):
        if isinstance(item, slice):
            start, stop, _ = item.indices(n)
            out.append((start, stop))
        else:
            out.append((int(item), int(item) + 1))
    return out + [(0, n) for n in shape[len(out) :]]


def chunk_grid(
    shape: tuple[int, ...], chunks: tuple[int, ...], selection: tuple[Any, ...] | None = None
) -> Iterator[tuple[tuple[int, ...], tuple[slice, ...]]]:
    """The chunks that ``selection`` touches (all by default): grid coordinates and box, in C order."""
    spans = [
        range(start // c, math.ceil(stop / c)) if stop > start else range(0)
        for (start, stop), c in zip(_ranges(selection, shape), chunks, strict=True)
    ]
    for coords in itertools.product(*spans):
        yield coords, chunk_box(shape, chunks, coords)


def chunk_box(shape: tuple[int, ...], chunks: tuple[int, ...], coords: tuple[int, ...]) -> tuple[slice, ...]:
    """The pixels of the chunk at grid coordinates ``coords`` (cut at the array's edge)."""
    return tuple(slice(i * c, min((i + 1) * c, n)) for i, c, n in zip(coords, chunks, shape, strict=True))


def intersect(a: tuple[slice, ...], b: tuple[slice, ...]) -> tuple[slice, ...]:
    """The intersection of two boxes (empty along an axis where they do not overlap)."""
    return tuple(slice(max(x.start, y.start), min(x.stop, y.stop)) for x, y in zip(a, b, strict=True))


def within(inner: tuple[slice, ...], outer: tuple[slice, ...]) -> tuple[slice, ...]:
    """Where box ``inner`` lies within box ``outer``, as a selection of an array of ``outer``'s pixels."""
    return tuple(slice(i.start - o.start, i.stop - o.start) for i, o in zip(inner, outer, strict=True))


def _zstd_alone(array: Any) -> Any | None:
    """The array's zstd codec when it is its only codec besides little-endian bytes in C order, else None."""
    if array.filters or len(array.compressors) != 1 or getattr(array, "shards", None):
        return None
    if array.metadata.zarr_format == 2:
        codec = array.compressors[0]
        return codec if getattr(codec, "codec_id", None) == "zstd" and array.metadata.order == "C" else None
    from zarr.codecs import BytesCodec, ZstdCodec

    serializer, codec = array.serializer, array.compressors[0]
    little = isinstance(serializer, BytesCodec) and (serializer.endian is None or serializer.endian.value == "little")
    return codec if little and isinstance(codec, ZstdCodec) else None


def _stored_dtype(array: Any) -> np.dtype:
    """The dtype of a chunk's bytes: the array's own in Zarr 2, little-endian in Zarr 3 (:func:`_zstd_alone`)."""
    return array.dtype if array.metadata.zarr_format == 2 else array.dtype.newbyteorder("<")


def _direct(array: Any) -> tuple[str, Any] | None:
    """The array's folder and Zstd codec where its chunks can be read and written here, else None."""
    root, codec = getattr(array.store, "root", None), _zstd_alone(array)
    return None if root is None or codec is None else (location(array), codec)


def read_chunks(array: Any, selection: tuple[Any, ...]) -> np.ndarray | None:
    """``array[selection]`` decoded here from the chunk files, or None where Zarr must read it.

    ``selection`` holds ints and unit-step slices. A missing chunk file reads as the fill value, as in Zarr.

    Raises
    ------
    Exception
        Whatever Zstd raises on a chunk that does not decode (the caller names the chunk).
    """
    import numcodecs

    direct = _direct(array)
    fill = array.metadata.fill_value
    if direct is None or fill is None:
        return None
    folder, codec = direct
    shape, chunks, stored = tuple(array.shape), tuple(array.chunks), _stored_dtype(array)
    ranges = _ranges(selection, shape)
    box = tuple(slice(start, stop) for start, stop in ranges)
    out = np.empty([stop - start for start, stop in ranges], dtype=array.dtype)
    decoder = numcodecs.Zstd(level=codec.level)
    for coords, chunk in chunk_grid(shape, chunks, box):
        common = intersect(box, chunk)
        into = within(common, box)
        try:
            with open(os.path.join(folder, array.metadata.encode_chunk_key(coords)), "rb") as f:
                encoded = f.read()
        except FileNotFoundError:
            out[into] = fill
            continue
        data = np.frombuffer(decoder.decode(encoded), dtype=stored).reshape(chunks)
        out[into] = data[
            tuple(slice(c.start - i * n, c.stop - i * n) for c, i, n in zip(common, coords, chunks, strict=True))
        ]
    keep = tuple(0 if not isinstance(item, slice) else slice(None) for item in selection)
    return out[(*keep, ...)]  # a 0-d array, not a scalar, when every axis is an int


def write_chunks(array: Any, box: tuple[slice, ...], data: np.ndarray) -> bool:
    """Store ``data`` as the whole chunks ``box`` covers, each encoded here and written to its file.

    Only for arrays of a local store compressed by Zstd alone, and boxes on the
    chunk grid (a block's core, when the plan's chunks are the array's); a
    chunk at the array's edge is padded with the fill value, as Zarr stores it.
    Not atomic, like Zarr's own writes: a block's record, written after, is what
    says the chunks are whole.

    Returns
    -------
    bool
        False, with nothing written, where ``box`` cuts a chunk or the array is not such an array
        (the caller then writes through Zarr).
    """
    import numcodecs

    direct = _direct(array)
    shape, chunks = tuple(array.shape), tuple(array.chunks)
    box = tuple(slice(*s.indices(n)[:2]) for s, n in zip(box, shape, strict=True))
    on_grid = all(
        s.start % c == 0 and (s.stop % c == 0 or s.stop == n) for s, c, n in zip(box, chunks, shape, strict=True)
    )
    if direct is None or not on_grid:
        return False
    folder, codec = direct
    encoder, stored = numcodecs.Zstd(level=codec.level, checksum=codec.checksum), _stored_dtype(array)
    for coords, chunk in chunk_grid(shape, chunks, box):
        part = data[within(chunk, box)]
        if part.shape == chunks:
            whole = np.ascontiguousarray(part, dtype=stored)
        else:  # an edge chunk
            whole = np.full(chunks, array.metadata.fill_value, dtype=stored)
            whole[tuple(slice(0, s.stop - s.start) for s in chunk)] = part
        _write_file(os.path.join(folder, array.metadata.encode_chunk_key(coords)), encoder.encode(whole))
    return True


def _write_file(path: str, data: bytes) -> None:
    """Write a chunk file, making its folder only when it is missing (one ``mkdir`` a chunk costs as much as zstd)."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o666)  # less the umask, as open() does
    except FileNotFoundError:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o666)  # less the umask, as open() does
    with os.fdopen(fd, "wb") as f:
        f.write(data)
