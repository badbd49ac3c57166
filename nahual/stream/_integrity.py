"""Integrity of what a run reads and writes: checksummed chunks, block digests, damaged chunks named.

Zarr streaming layer, below the readers and writers. Every array nahual
writes is compressed with zstd and its frame checksum (:func:`compressors`),
so that a flipped bit in a chunk file makes its decoding fail instead of
giving other pixels. A finished block's record carries the CRC-32 of what it
wrote (:func:`digest`), which a resumed run checks before it skips the block:
that also catches a chunk file that was deleted (it would read as zeros) or
replaced. A read that fails is probed chunk by chunk (:func:`read`), so that
the error names the array and the chunk rather than the whole selection.
"""

from __future__ import annotations

import itertools
import math
import os
import zlib
from collections.abc import Iterator
from typing import Any

import numpy as np

from ..errors import ContractError

__all__ = ["chunk_box", "chunk_grid", "compressors", "damaged_chunks", "digest", "location", "read", "write_chunk"]

#: zstd level 0 (the library default, 3) is zarr's own default; only the checksum is added.
_ZSTD_LEVEL = 0


def compressors(zarr_format: int, level: int = _ZSTD_LEVEL) -> tuple[Any, ...]:
    """The ``compressors`` of every array nahual writes: zstd at ``level`` with its checksum, in the store's format."""
    if zarr_format == 2:
        import numcodecs

        return (numcodecs.Zstd(level=level, checksum=True),)
    from zarr.codecs import ZstdCodec

    return (ZstdCodec(level=level, checksum=True),)


def digest(data: np.ndarray) -> str:
    """CRC-32 of an array's bytes in C order, as ``crc32:XXXXXXXX`` (cheap: it runs at memory speed)."""
    return f"crc32:{zlib.crc32(np.ascontiguousarray(data).data) & 0xFFFFFFFF:08x}"


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


def _stored_chunks(array: Any) -> tuple[int, ...]:
    """The grid of stored objects: shards when the array is sharded, chunks otherwise."""
    return tuple(getattr(array, "shards", None) or array.chunks)


def damaged_chunks(array: Any, selection: tuple[Any, ...] | None = None) -> list[tuple[str, str]]:
    """Decode every stored chunk that ``selection`` touches; ``(key, reason)`` of each that fails."""
    bad = []
    for coords, box in chunk_grid(tuple(array.shape), _stored_chunks(array), selection):
        try:
            np.asarray(array[box])
        except Exception as exc:  # any codec's failure: zstd checksum, truncated frame, blosc header...
            bad.append((array.metadata.encode_chunk_key(coords), f"{type(exc).__name__}: {exc}"))
    return bad


def read(
    array: Any, selection: tuple[Any, ...], what: str = "the input", hint: str = "the file is damaged"
) -> np.ndarray:
    """``array[selection]`` as numpy; a chunk that cannot be decoded is named in the error.

    Parameters
    ----------
    array : zarr.Array
        The array to read.
    selection : tuple
        Ints and unit-step slices, one per axis.
    what : str
        What the array is, for the message (``the input``, ``the intermediate labels``).
    hint : str
        What to do about it, ending the message.

    Raises
    ------
    ContractError
        When a chunk fails to decode: names the array, the chunk's key and the codec's reason.
    """
    try:
        return np.asarray(array[selection])
    except Exception as exc:
        bad = damaged_chunks(array, selection)
        if not bad:
            raise
        key, reason = bad[0]
        more = f" (and {len(bad) - 1} more chunks)" if len(bad) > 1 else ""
        raise ContractError(
            f"chunk {key} of {what} {location(array)} cannot be decoded{more} ({reason}): {hint}"
        ) from exc


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


def write_chunk(array: Any, box: tuple[slice, ...], data: np.ndarray) -> bool:
    """Store ``data`` as the one chunk ``box`` is, encoded here and written to its file, skipping Zarr's machinery.

    Zarr 3 spends 1-3 ms of Python on each chunk it writes, more than zstd takes
    to compress a 256x256 tile; a run writes one intermediate chunk per block.
    Only for arrays of a local store compressed by :func:`compressors` alone; a
    chunk at the array's edge is padded with the fill value, as Zarr stores it.
    Not atomic, like Zarr's own writes: a block's record, written after, is what
    says the chunk is whole.

    Returns
    -------
    bool
        False, with nothing written, where ``box`` is not exactly one chunk or the array is not such an array
        (the caller then writes through Zarr).
    """
    import numcodecs

    root, codec = getattr(array.store, "root", None), _zstd_alone(array)
    shape, chunks = tuple(array.shape), tuple(array.chunks)
    box = tuple(slice(*s.indices(n)[:2]) for s, n in zip(box, shape, strict=True))
    if root is None or codec is None or any(s.start % c for s, c in zip(box, chunks, strict=True)):
        return False
    coords = tuple(s.start // c for s, c in zip(box, chunks, strict=True))
    if box != chunk_box(shape, chunks, coords):
        return False
    little = array.dtype.newbyteorder("<")
    if data.shape == chunks:
        whole = np.ascontiguousarray(data, dtype=little)
    else:  # an edge chunk
        whole = np.full(chunks, array.metadata.fill_value, dtype=little)
        whole[tuple(slice(0, s.stop - s.start) for s in box)] = data
    encoded = numcodecs.Zstd(level=codec.level, checksum=codec.checksum).encode(whole)
    path = os.path.join(location(array), array.metadata.encode_chunk_key(coords))
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(encoded)
    return True
