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

import zlib
from typing import Any

import numpy as np

from ..errors import ContractError
from ._chunkfiles import chunk_grid, location, read_chunks

__all__ = ["compressors", "damaged_chunks", "digest", "read"]

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

    Read from the chunk files where :func:`~._chunkfiles.read_chunks` can, through Zarr otherwise.

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
        data = read_chunks(array, selection)
        return np.asarray(array[selection]) if data is None else data
    except Exception as exc:
        bad = damaged_chunks(array, selection)
        if not bad:
            raise
        key, reason = bad[0]
        more = f" (and {len(bad) - 1} more chunks)" if len(bad) > 1 else ""
        raise ContractError(
            f"chunk {key} of {what} {location(array)} cannot be decoded{more} ({reason}): {hint}"
        ) from exc
