"""The ``laptrack`` model: tracking of a labelled time-lapse with the laptrack package.

Layer: model zoo. Objects are the labels of each frame, placed at their
centroids; laptrack links them by linear assignment on squared distances,
with gap closing (an object missed for up to ``gap_frames`` frames) and
division detection (one object linked to two in the next frame).

The distance limits default to the scale of the objects, not to pixel
constants: left at null, each is a multiple of the median equivalent
diameter of the objects of the series sent (:func:`median_diameter`,
measured from the areas already counted for the centroids), so that 10 px
nuclei and 60 px cells are tracked with the same defaults. A value given in
pixels wins. Windows of a long series each measure their own diameter: give
pixel limits when windows must agree exactly.

Input: ``{"labels": uint32 (t, y, x) or (t, z, y, x), "axes": "tyx" | "tzyx"}``,
the whole series or one window of it; ``t0`` (a param) is the time index of
the window's first frame, so that the output of overlapping windows shares
node ids and can be stitched.

Output (the ``tracks`` kind)::

    {"nodes": {"id", "t", "label", "y", "x"[, "z"]} -> 1-d arrays,   # one row per object
     "edges": {"source", "target"} -> 1-d int64 arrays (node ids, parent -> child),
     "track_id": 1-d int64 array aligned with nodes["id"],
     "tracks": {"track_id", "start", "end", "parent"} -> 1-d int64 arrays}

A node id is ``t * NODE_ID_STRIDE + label`` (:mod:`nahual.lineage`, 2**32): unique in a series and the same in every
window. A track is a chain without branches: it ends where its object divides
(each daughter starts a track whose ``parent`` is the mother's track) or
before a gap (the object found after the gap starts a new track with the old
one as parent, as the Cell Tracking Challenge ``res_track.txt`` wants).
Relabelling the masks by ``track_id`` and writing ``tracks`` gives CTC output.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..errors import ContractError
from ..lineage import NODE_ID_STRIDE, tracking_result
from ..model import Contract, Model, Param

__all__ = ["LapTrack", "median_diameter", "object_nodes"]

#: Each distance limit left at null is this many median object diameters: a
#: daughter may start up to ~0.8 diameter from its mother's centre, and an
#: object moves a fraction of its diameter per frame (factors from 0.9 to 1.6
#: all find every division of the 10 to 60 px test series; 0.8 misses some).
DIAMETERS = {"max_distance": 1.0, "gap_max_distance": 1.0, "division_max_distance": 1.0}


def _limit(name: str, meaning: str) -> Param:
    """A distance limit in pixels whose null default is :data:`DIAMETERS` ``[name]`` median object diameters."""
    return Param(
        name, None, f"{meaning}, in pixels; null: {DIAMETERS[name]} x the median object diameter", type=float, min=0
    )


class LapTrack(Model):
    """Link labelled objects over time by linear assignment, with gaps and divisions."""

    name = "laptrack"
    packages = ("laptrack", "numpy", "scipy", "networkx")
    contract = Contract(
        axes=("tyx", "tzyx"),
        inputs=("labels",),
        dtype=None,
        output="tracks",
        tiling=False,
        halo=0,
    )
    param_spec = (
        _limit("max_distance", "largest displacement between consecutive frames"),
        Param("gap_frames", 1, "frames an object may be missing and still be linked; 0 disables gap closing", min=0),
        _limit("gap_max_distance", "largest displacement across a gap"),
        _limit("division_max_distance", "largest mother-daughter distance (0 disables divisions)"),
        Param("t0", 0, "time index of the first frame sent, for windows of a long series", min=0),
    )

    def process(self, payload: dict[str, Any], **params: Any) -> dict[str, Any]:
        """Track one series (or window); ``params`` override the load params for this call."""
        p = self.merge_params(params, self.params)
        labels = _labels(payload, self.contract)
        nodes, sizes = _objects(labels, int(p["t0"]))
        p = _scaled(p, _median_diameter(sizes, labels.ndim - 1))
        graph = _link(nodes, labels.ndim - 1, p)
        return tracking_result(nodes, _drop_long_links(_edges(graph, nodes["id"]), nodes, p))


def _labels(payload: dict[str, Any], contract: Contract) -> np.ndarray:
    """The integer label series from the payload, checked against the contract."""
    labels = contract.read_payload(payload)[0]["labels"]
    if labels.dtype.kind not in "iu":
        raise ContractError(f"laptrack needs an integer label array, got {labels.dtype}")
    return labels


def object_nodes(labels: np.ndarray, t0: int = 0) -> dict[str, np.ndarray]:
    """One node per (frame, label) at the label's centroid, sorted by t then label.

    Parameters
    ----------
    labels : ndarray, (t, y, x) or (t, z, y, x)
        Integer label series; 0 is background.
    t0 : int
        Time index of the first frame, which the node ids and ``t`` count from.

    Returns
    -------
    dict of str to ndarray
        ``id``, ``t``, ``label`` and the centroid ``y``, ``x`` (``z`` too in 3-D).
    """
    return _objects(labels, t0)[0]


def median_diameter(labels: np.ndarray) -> float:
    """The median equivalent diameter of the objects of a label series, in pixels.

    The unit of the distance limits left at null: a disc (2-D) or ball (3-D)
    of each object's area or volume, every object of every frame counted once.

    Parameters
    ----------
    labels : ndarray, (t, y, x) or (t, z, y, x)
        Integer label series; 0 is background.

    Returns
    -------
    float
        The median diameter, 0.0 for a series without objects.
    """
    return _median_diameter(_objects(labels)[1], labels.ndim - 1)


def _objects(labels: np.ndarray, t0: int = 0) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """The nodes of :func:`object_nodes` and, aligned with them, each object's size in pixels."""
    spatial = ("z", "y", "x")[-(labels.ndim - 1) :]
    columns: dict[str, list[np.ndarray]] = {key: [] for key in ("t", "label", "size", *spatial)}
    for t, frame in enumerate(labels):
        coords = np.nonzero(frame)
        values = frame[coords].astype(np.int64)
        ids, inverse, counts = np.unique(values, return_inverse=True, return_counts=True)
        columns["t"].append(np.full(ids.size, t0 + t, np.int64))
        columns["label"].append(ids)
        columns["size"].append(counts)
        for axis, c in zip(spatial, coords):
            columns[axis].append(np.bincount(inverse, weights=c, minlength=ids.size) / np.maximum(counts, 1))
    nodes = {key: np.concatenate(parts) if parts else np.zeros(0) for key, parts in columns.items()}
    nodes["t"], nodes["label"] = nodes["t"].astype(np.int64), nodes["label"].astype(np.int64)
    sizes = nodes.pop("size")
    return {"id": nodes["t"] * NODE_ID_STRIDE + nodes["label"], **nodes}, sizes


def _median_diameter(sizes: np.ndarray, ndim: int) -> float:
    """Median diameter of the discs (``ndim`` 2) or balls (3) of the given pixel counts; 0.0 for none."""
    if not sizes.size:
        return 0.0
    diameters = 2.0 * np.sqrt(sizes / np.pi) if ndim == 2 else np.cbrt(6.0 * sizes / np.pi)
    return float(np.median(diameters))


def _scaled(p: dict[str, Any], diameter: float) -> dict[str, Any]:
    """``p`` with each distance limit left at None set to its multiple of ``diameter``."""
    return {**p, **{key: factor * diameter for key, factor in DIAMETERS.items() if p[key] is None}}


def _link(nodes: dict[str, np.ndarray], ndim: int, p: dict[str, Any]) -> Any:
    """Run laptrack on the node positions; returns its graph of (frame, index) tuples."""
    from laptrack import LapTrack as Tracker

    spatial = ("z", "y", "x")[-ndim:]
    points = np.stack([nodes[axis] for axis in spatial], axis=1) if nodes["t"].size else np.zeros((0, ndim))
    frames = nodes["t"] - (nodes["t"].min() if nodes["t"].size else 0)
    count = int(frames.max()) + 1 if frames.size else 0
    coords = [points[frames == f] for f in range(count)]
    gap = float(p["gap_max_distance"]) ** 2 if p["gap_frames"] else False
    split = float(p["division_max_distance"]) ** 2 if p["division_max_distance"] else False
    # Starting or ending a segment must cost as much as the longest allowed link, so that
    # every gap closing or division within the limits beats leaving the segment alone
    # (laptrack's percentile-based default missed about one division in five on demo data).
    alternative = max(gap or 0.0, split or 0.0) or None
    tracker = Tracker(
        cutoff=float(p["max_distance"]) ** 2,
        gap_closing_cutoff=gap,
        gap_closing_max_frame_count=int(p["gap_frames"]) + 1,
        splitting_cutoff=split,
        segment_start_cost=alternative,
        segment_end_cost=alternative,
        no_splitting_cost=alternative,
    )
    return tracker.predict(coords) if count else None


def _edges(graph: Any, node_id: np.ndarray) -> dict[str, np.ndarray]:
    """laptrack's (frame, index) edges as node ids, oriented forward in time and sorted."""
    if graph is None or graph.number_of_edges() == 0:
        return {"source": np.zeros(0, np.int64), "target": np.zeros(0, np.int64)}
    pairs = np.array([sorted(edge) for edge in graph.edges()], dtype=np.int64).reshape(-1, 4)
    offsets = np.concatenate([[0], np.cumsum(np.bincount(_frame_of(node_id)))])
    source = node_id[offsets[pairs[:, 0]] + pairs[:, 1]]
    target = node_id[offsets[pairs[:, 2]] + pairs[:, 3]]
    order = np.lexsort((target, source))
    return {"source": source[order], "target": target[order]}


def _drop_long_links(
    edges: dict[str, np.ndarray], nodes: dict[str, np.ndarray], p: dict[str, Any]
) -> dict[str, np.ndarray]:
    """Remove one-child links longer than ``max_distance`` (or ``gap_max_distance`` across a gap).

    laptrack's splitting step may attach a track start to the *end* of another
    track within the division cutoff; without a second daughter that is a
    plain link, and the link limits must hold for it.
    """
    if not edges["source"].size:
        return edges
    row = {int(n): i for i, n in enumerate(nodes["id"])}
    src = np.array([row[int(n)] for n in edges["source"]], np.int64)
    dst = np.array([row[int(n)] for n in edges["target"]], np.int64)
    spatial = [axis for axis in ("z", "y", "x") if axis in nodes]
    distance = np.sqrt(sum((nodes[axis][dst] - nodes[axis][src]) ** 2 for axis in spatial))
    step = nodes["t"][dst] - nodes["t"][src]
    limit = np.where(step == 1, float(p["max_distance"]), float(p["gap_max_distance"]))
    children = np.bincount(src, minlength=len(nodes["id"]))[src]
    keep = (children > 1) | ((distance <= limit) & (step <= int(p["gap_frames"]) + 1))
    return {"source": edges["source"][keep], "target": edges["target"][keep]}


def _frame_of(node_id: np.ndarray) -> np.ndarray:
    """Frame index (from 0 in the series sent) of each node id."""
    t = node_id // NODE_ID_STRIDE
    return t - (t.min() if t.size else 0)
