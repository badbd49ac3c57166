"""``verify``: decode every chunk of nahual's outputs in a store, and check the blocks of unfinished runs.

Zarr streaming layer, read only (``nahual verify STORE``). Outputs are the
arrays under an image's ``labels/``, ``tables/``, ``tracks/`` and ``predictions/``; each of
their chunks is read, so that a zstd checksum (nahual writes one into every
chunk) or any other codec fails on a damaged chunk file. The blocks an
unfinished run has recorded are checked against their digests, as a resumed
run checks them. A chunk file that was deleted reads as the fill value (zero)
and cannot be told from an empty chunk, which Zarr does not write; tables
and tracks written by older nahual versions, and GEFF graphs (written by
geff), have no checksum, so only damage that breaks their decoding is found.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass

import zarr

from ._arraysink import PREDICTIONS
from ._chunkfiles import location
from ._integrity import damaged_chunks
from ._jobs import open_job
from ._ome import image_group
from ._resume import RunState

__all__ = ["Damage", "Verified", "verify"]

#: The groups of an image that hold nahual's outputs.
OUTPUT_FOLDERS = ("labels", "tables", "tracks", PREDICTIONS)


@dataclass(frozen=True)
class Damage:
    """One damaged part of a store.

    Attributes
    ----------
    where : str
        The array's folder, or the run state's.
    part : str
        The chunk's key (``c/0/1/1``), or the block (``block 3 (t=1 y=0:64)``).
    reason : str
        What failed: the codec's error, or the digests that differ.
    """

    where: str
    part: str
    reason: str

    def __str__(self) -> str:
        return f"{self.where} {self.part}: {self.reason}"


@dataclass(frozen=True)
class Verified:
    """What :func:`verify` checked and what it found damaged."""

    arrays: int
    chunks: int
    blocks: int
    damage: tuple[Damage, ...]


def _arrays(group: zarr.Group, everything: bool) -> Iterator[zarr.Array]:
    """The arrays to check: under an output folder, or all of them."""
    for path, node in group.members(max_depth=None):
        if isinstance(node, zarr.Array) and (everything or set(path.split("/")[:-1]) & set(OUTPUT_FOLDERS)):
            yield node


def _groups(group: zarr.Group) -> Iterator[str]:
    """The folders of a group and of every group below it (where run states may belong)."""
    root = os.fspath(group.store.root)
    yield os.path.join(root, group.path)
    for _, node in group.members(max_depth=None):
        if isinstance(node, zarr.Group):
            yield os.path.join(root, node.path)


def _run_damage(image_path: str) -> Iterator[tuple[int, Damage | None]]:
    """Per finished block of each unfinished run of an image: None, or its damage."""
    for name in RunState.outputs(image_path):
        job = open_job(image_path, name)
        done = job.state.finished()
        for block in job.blocks:
            if block.index in done:
                reason = job.sink.damage(block)
                yield 1, None if reason is None else Damage(job.state.path, job.plan.describe(block), reason)


def verify(store: str | os.PathLike, everything: bool = False) -> Verified:
    """Check a store: every chunk of nahual's outputs, and the recorded blocks of unfinished runs.

    Parameters
    ----------
    store : str or path-like
        A Zarr group in a local store (the root of a store, or an image in it).
    everything : bool
        Check every array of the store (the images too), not only outputs.

    Returns
    -------
    Verified
        Counts of what was checked and every damaged chunk and block found.

    Raises
    ------
    ConfigError
        When ``store`` is not a Zarr group.
    """
    group = image_group(store, mode="r")
    damage: list[Damage] = []
    arrays = chunks = blocks = 0
    for array in _arrays(group, everything):
        arrays += 1
        chunks += array.nchunks
        damage += [Damage(location(array), f"chunk {key}", reason) for key, reason in damaged_chunks(array)]
    for folder in _groups(group):
        for count, found in _run_damage(folder):
            blocks += count
            damage += [found] if found is not None else []
    return Verified(arrays, chunks, blocks, tuple(damage))
