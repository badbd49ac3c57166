"""Stitching arithmetic: merge objects across block faces, then number them 1..N.

Zarr streaming layer, pure numpy. Each block's labels get ids ``offset + 1 ..
offset + count`` (offsets fixed by the plan). Where a block's halo overlaps a
neighbour's core, the two views of one object overlap; those pairs are merged
with a union-find whose roots are the smallest id of each set, and a
:class:`Relabel` maps every intermediate id to its final id with a few
``searchsorted`` calls, so its memory grows with the number of blocks and of
merged ids, never with the size of the store.
"""

from __future__ import annotations

import numpy as np

__all__ = ["Relabel", "UnionFind", "compact_labels", "lookup", "overlap_pairs", "recolour"]


class UnionFind:
    """Disjoint sets of integer ids; only ids ever merged are stored."""

    def __init__(self) -> None:
        self._parent: dict[int, int] = {}

    def find(self, item: int) -> int:
        """The smallest id of ``item``'s set."""
        root = item
        while self._parent.get(root, root) != root:
            root = self._parent[root]
        while item != root:
            item, self._parent[item] = self._parent[item], root
        return root

    def union(self, a: int, b: int) -> None:
        """Merge the sets of ``a`` and ``b``."""
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            low, high = min(ra, rb), max(ra, rb)
            self._parent[high] = low
            self._parent.setdefault(low, low)

    def merged(self) -> dict[int, int]:
        """Every id that is not the root of its set, mapped to its root."""
        out = {}
        for item in self._parent:
            root = self.find(item)
            if root != item:
                out[item] = root
        return out


def compact_labels(
    core: np.ndarray, offset: int = 0, dtype: np.dtype | type = np.int64
) -> tuple[np.ndarray, np.ndarray]:
    """Renumber a block's labels to ``offset + 1 .. offset + k`` in increasing order of their values.

    Returns
    -------
    local : numpy.ndarray
        The labels renumbered (0 stays 0), of ``dtype``.
    values : numpy.ndarray
        The original values, sorted; ``local == offset + i + 1`` where ``core == values[i]``.
    """
    top = int(core.max()) if core.size else 0
    if _dense(top, core.size):
        present = np.bincount(core.ravel(), minlength=top + 1)
        present[0] = 0
        values = np.flatnonzero(present).astype(core.dtype)
    else:
        values = np.unique(core)
        values = values[values != 0]
    return lookup(values, core, offset, dtype), values


def _dense(top: int, size: int) -> bool:
    """Whether a lookup table indexed by value (``top + 1`` entries) is cheap next to ``size`` elements."""
    return top < max(4 * size, 1 << 16)


def lookup(values: np.ndarray, data: np.ndarray, offset: int = 0, dtype: np.dtype | type = np.int64) -> np.ndarray:
    """``offset`` + position + 1 of each element of ``data`` in the sorted non-zero ``values``, 0 where absent.

    The result is made in ``dtype`` in one pass (a table indexed by value where that is cheap).
    """
    if values.size == 0 or data.size == 0:
        return np.zeros(data.shape, dtype)
    top = max(int(data.max()), int(values[-1]))
    if _dense(top, data.size) and data.dtype.kind in "ub":
        table = np.zeros(top + 1, dtype)
        table[values] = np.arange(offset + 1, offset + values.size + 1)
        return np.take(table, data)  # twice as fast as table[data] on a 1024x1024 block
    idx = np.minimum(np.searchsorted(values, data), values.size - 1)
    return np.where(values[idx] == data, idx + 1 + offset, 0).astype(dtype)


def recolour(masks: np.ndarray, values: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """``masks`` with each object ``values[i]`` painted ``ids[i]``, everything else 0 (int64).

    ``values`` need not be sorted. No values (a frame without objects) gives an all-zero frame.
    """
    values, ids = np.asarray(values), np.asarray(ids)
    if values.size == 0:
        return np.zeros(np.shape(masks), np.int64)
    order = np.argsort(values, kind="stable")
    known = lookup(values[order], masks)
    return np.where(known > 0, ids[order][np.maximum(known - 1, 0)], 0).astype(np.int64)


def overlap_pairs(view: np.ndarray, stored: np.ndarray, min_overlap: float = 0.5) -> np.ndarray:
    """Pairs of ids that are one object seen from two blocks.

    Parameters
    ----------
    view : numpy.ndarray
        One block's ids over its halo (0 elsewhere and for objects without core pixels).
    stored : numpy.ndarray
        The ids the neighbouring blocks wrote over the same pixels.
    min_overlap : float
        Least fraction of the smaller of the two (within the halo) that must overlap,
        so that two objects that merely touch after a one-pixel disagreement stay apart.

    Returns
    -------
    numpy.ndarray
        (k, 2) int64 pairs to merge.
    """
    both = (view > 0) & (stored > 0)
    if not both.any():
        return np.zeros((0, 2), np.int64)
    ids_a, size_a = np.unique(view[view > 0], return_counts=True)
    ids_b, size_b = np.unique(stored[stored > 0], return_counts=True)
    # Pairs as one integer key over the positions of the two ids: a 1-d unique is ~50x np.unique(axis=0).
    pos_a, pos_b = np.searchsorted(ids_a, view[both]), np.searchsorted(ids_b, stored[both])
    keys, counts = np.unique(pos_a.astype(np.int64) * ids_b.size + pos_b, return_counts=True)
    pos_a, pos_b = np.divmod(keys, ids_b.size)
    pairs = np.stack([ids_a[pos_a], ids_b[pos_b]], axis=1).astype(np.int64)
    return pairs[counts >= min_overlap * np.minimum(size_a[pos_a], size_b[pos_b])]


class Relabel:
    """Map intermediate ids to final ids 1..N.

    Parameters
    ----------
    offsets : numpy.ndarray
        Per block, the id before its first (strictly increasing).
    counts : numpy.ndarray
        Per block, how many ids it used.
    merged : dict of int to int
        Non-root ids to their root (from :meth:`UnionFind.merged`).
    """

    def __init__(self, offsets: np.ndarray, counts: np.ndarray, merged: dict[int, int]) -> None:
        self.offsets = np.asarray(offsets, dtype=np.int64)
        counts = np.asarray(counts, dtype=np.int64)
        self.bases = np.cumsum(counts) - counts
        keys = np.array(sorted(merged), dtype=np.int64)
        self.nonroot = keys
        self.roots = np.array([merged[k] for k in keys.tolist()], dtype=np.int64)
        self.count = int(counts.sum()) - keys.size

    def __call__(self, ids: np.ndarray) -> np.ndarray:
        """Final ids of an array of intermediate ids (0 stays 0).

        The ids of one block span a short range: they are mapped once each, through a table, instead of a
        search per pixel.
        """
        ids = np.asarray(ids)
        top = int(ids.max()) if ids.size else 0
        if top == 0:
            return np.zeros(ids.shape, np.int64)
        low = int(np.min(ids, where=ids > 0, initial=top))
        if top - low >= ids.size:
            out = np.zeros(ids.size, np.int64)
            present = ids.ravel() != 0
            out[present] = self._final(ids.ravel()[present].astype(np.int64))
            return out.reshape(ids.shape)
        table = np.zeros(top - low + 2, np.int64)
        table[1:] = self._final(np.arange(low, top + 1, dtype=np.int64))
        return table[np.where(ids > 0, ids.astype(np.int64) - (low - 1), 0)]

    def _final(self, values: np.ndarray) -> np.ndarray:
        """Final ids of non-zero intermediate ids (1-d int64)."""
        if self.nonroot.size:
            idx = np.minimum(np.searchsorted(self.nonroot, values), self.nonroot.size - 1)
            values = np.where(self.nonroot[idx] == values, self.roots[idx], values)
        block = np.searchsorted(self.offsets, values, side="left") - 1
        return self.bases[block] + (values - self.offsets[block]) - np.searchsorted(self.nonroot, values)
