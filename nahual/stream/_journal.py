"""An append-only journal of block records: one file per writing process, one entry per finished block.

Zarr streaming layer, under :class:`~nahual.stream._resume.RunState`. A block's
record (its small JSON info and its side arrays, such as a label block's view
of its halo) used to be two files of its own. Creating a file cost 0.6-1 ms of
CPU on ext4 here, a third of what this process spent on a 256x256 block, and
far more on the parallel filesystems of clusters, where a time-lapse of a
million blocks would also spend millions of inodes. An append costs
microseconds.

Each process that records blocks appends to a journal of its own
(``blocks/TIME-PID-TOKEN.journal``), so shards running at once on one state
folder never share a file. An entry is written by one ``write`` call::

    b"NHJ1" | u32 meta length | u64 data length | u32 CRC-32 of meta | u32 CRC-32 of data | meta | data

``meta`` is JSON: ``{"index", "info", "arrays": [[name, dtype, shape, bytes], ...]}``
for a record, whose ``data`` is its arrays, each compressed by Zstd;
``{"forget", "entries"}`` for a block's records dropped (each named by its
journal and offset). A process killed mid-append leaves a torn last entry; a scan stops at
the first entry of a file that is incomplete or whose meta fails its CRC, so
that block is simply not recorded. Side data is checked against its CRC when
it is read, where a damaged block is redone.
"""

from __future__ import annotations

import json
import os
import secrets
import struct
import threading
import time
import zlib
from collections.abc import Collection
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["DamagedRecord", "Entry", "Journal"]

MAGIC = b"NHJ1"
HEADER = struct.Struct("<4sIQII")
SUFFIX = ".journal"
#: Zstd level of side arrays: a halo view is mostly zeros, and level 1 is 5x faster than npz's deflate at level 1.
LEVEL = 1


class DamagedRecord(Exception):
    """A record's side data is missing or not what was recorded; the message says which."""


@dataclass(frozen=True, slots=True)
class Entry:
    """One block's record in a journal: its info, and where its side arrays are."""

    index: int
    path: str
    offset: int
    info: dict[str, Any]
    arrays: list[list[Any]]
    data_start: int
    data_length: int
    data_crc: int

    @property
    def key(self) -> tuple[str, int]:
        """What names this entry in a ``forget`` entry: its journal's name and its offset there."""
        return os.path.basename(self.path), self.offset

    def where(self) -> str:
        """Where the side data is, for messages."""
        return f"{self.path} (bytes {self.data_start}-{self.data_start + self.data_length})"

    def damage(self) -> str | None:
        """What is wrong with the side data (missing or not what was recorded), or None."""
        try:
            self._checked_data()
        except DamagedRecord as exc:
            return str(exc)
        return None

    def read(self, names: Collection[str] = ()) -> dict[str, np.ndarray]:
        """The side arrays, those of ``names`` or all, from one read of the side data checked against its CRC.

        Raises
        ------
        DamagedRecord
            When the side data is missing or not what was recorded.
        """
        import numcodecs

        codec, data, start, out = numcodecs.Zstd(), self._checked_data(), 0, {}
        for name, dtype, shape, length in self.arrays:
            if not names or name in names:
                raw = codec.decode(data[start : start + length]) if length else b""
                out[name] = np.frombuffer(raw, dtype=np.dtype(dtype)).reshape(shape).copy()
            start += length
        return out

    def _checked_data(self) -> bytes:
        if not self.data_length:
            return b""
        try:
            with open(self.path, "rb") as f:
                f.seek(self.data_start)
                data = f.read(self.data_length)
        except FileNotFoundError:
            raise DamagedRecord(f"its side data in {self.path} is missing") from None
        got = zlib.crc32(data)
        if len(data) != self.data_length or got != self.data_crc:
            raise DamagedRecord(
                f"its side data in {self.where()} has crc32:{got:08x}, recorded crc32:{self.data_crc:08x}"
            )
        return data


def _entry(meta: dict[str, Any], data: bytes, data_crc: int) -> bytes:
    encoded = json.dumps(meta, sort_keys=True).encode()
    return HEADER.pack(MAGIC, len(encoded), len(data), zlib.crc32(encoded), data_crc) + encoded + data


def _pack(arrays: dict[str, np.ndarray]) -> tuple[list[list[Any]], bytes]:
    """The arrays' layout (name, dtype, shape, compressed bytes) and their compressed bytes, one after the other."""
    import numcodecs

    codec, layout, parts = numcodecs.Zstd(level=LEVEL), [], []
    for name, value in arrays.items():
        value = np.asarray(value, order="C")  # ascontiguousarray would make a 0-d array 1-d
        if value.dtype.hasobject:
            raise TypeError(f"side array {name!r} holds Python objects ({value.dtype}); record numbers or strings")
        part = bytes(codec.encode(value)) if value.size else b""  # Zstd cannot decode what it makes of nothing
        layout.append([name, value.dtype.str, list(value.shape), len(part)])
        parts.append(part)
    return layout, b"".join(parts)


def _scan(path: str) -> tuple[list[Entry], set[tuple[str, int]]]:
    """The records, and the keys of the entries forgotten, of one journal, up to its first torn entry."""
    records, forgotten = [], set()
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        offset = 0
        while offset + HEADER.size <= size:
            magic, meta_length, data_length, meta_crc, data_crc = HEADER.unpack(f.read(HEADER.size))
            data_start = offset + HEADER.size + meta_length
            if magic != MAGIC or data_start + data_length > size:
                break
            encoded = f.read(meta_length)
            if zlib.crc32(encoded) != meta_crc:
                break
            meta = json.loads(encoded)
            if "forget" in meta:
                forgotten.update((name, at) for name, at in meta["entries"])
            else:
                index, info, layout = meta["index"], meta["info"], meta["arrays"]
                records.append(Entry(index, path, offset, info, layout, data_start, data_length, data_crc))
            offset = data_start + data_length
            f.seek(offset)
    return records, forgotten


class Journal:
    """The block records of one run's state folder: this process's journal to append to, everyone's to read.

    Parameters
    ----------
    folder : str
        The state's ``blocks`` folder (created at the first append).
    """

    def __init__(self, folder: str) -> None:
        self.folder = folder
        self._path: str | None = None
        self._lock = threading.Lock()
        self._entries: dict[int, Entry] | None = None

    def _append(self, meta: dict[str, Any], data: bytes = b"", data_crc: int = 0) -> tuple[str, int, int]:
        """Write one entry at the end of this process's journal: its journal, offset and data offset."""
        entry = _entry(meta, data, data_crc)
        if self._path is None:
            os.makedirs(self.folder, exist_ok=True)
            name = f"{time.time_ns():020d}-{os.getpid()}-{secrets.token_hex(4)}{SUFFIX}"
            self._path = os.path.join(self.folder, name)
        with open(self._path, "ab") as f:
            offset = f.tell()
            f.write(entry)
        return self._path, offset, offset + len(entry) - len(data)

    def record(self, index: int, info: dict[str, Any], arrays: dict[str, np.ndarray] | None = None) -> None:
        """Append a block's record: its ``info`` and its side ``arrays``, compressed."""
        layout, data = _pack(arrays or {})
        crc = zlib.crc32(data)
        with self._lock:
            path, offset, start = self._append({"index": index, "info": info, "arrays": layout}, data, crc)
            if self._entries is not None:
                self._entries[index] = Entry(index, path, offset, info, layout, start, len(data), crc)

    def forget(self, index: int) -> None:
        """Drop a block's records (all of them, should two runs have recorded it), so that the run does it again."""
        with self._lock:
            keys = [list(entry.key) for entry in self._live() if entry.index == index]
            if keys:
                self._append({"forget": index, "entries": keys})
            if self._entries is not None:
                self._entries.pop(index, None)

    def entries(self, refresh: bool = False) -> dict[int, Entry]:
        """The record of each recorded block, from every journal of the folder (read once, unless ``refresh``).

        A block recorded twice (two runs over one block) keeps its latest record, journals taken in
        the order they were started.
        """
        with self._lock:
            if self._entries is None or refresh:
                self._entries = {entry.index: entry for entry in self._live()}
            return self._entries

    def _live(self) -> list[Entry]:
        """Every record not forgotten, journal by journal in the order they were started."""
        try:
            names = sorted(n for n in os.listdir(self.folder) if n.endswith(SUFFIX))
        except FileNotFoundError:
            return []
        records, forgotten = [], set()
        for name in names:
            found, dropped = _scan(os.path.join(self.folder, name))
            records += found
            forgotten |= dropped
        return [entry for entry in records if entry.key not in forgotten]
