"""Lineage graphs: the track node-id format, and graphs cut into CTC tracks.

Layer: beside the model API (numpy only), shared by trackers, the demo data
and the streaming layer, so that a tracker model numbers its nodes and
tracks exactly as ``nahual apply`` and ``nahual export ctc`` read them.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .errors import ContractError

__all__ = ["NODE_ID_STRIDE", "TRACK_COLUMNS", "tracking_result", "tracklets"]

#: A track node's id is ``t * NODE_ID_STRIDE + label``: unique in a series, and
#: the same in every window of it, so that windows can be stitched on their overlap.
NODE_ID_STRIDE = 2**32
#: The columns of a tracks table, one row per track (CTC's ``res_track.txt``).
TRACK_COLUMNS = ("track_id", "start", "end", "parent")


def tracklets(ids: np.ndarray, t: np.ndarray, edges: np.ndarray) -> tuple[np.ndarray, list[tuple[int, int, int, int]]]:
    """Track ids 1..K aligned with ``ids``, and one ``(id, first t, last t, parent track)`` row per track.

    A node continues its parent's track when it is the parent's only child,
    its only parent, and exactly one frame later; otherwise it starts a track
    whose parent is its parent's track (0 without one). Tracks are numbered in
    order of their first node by (t, id), so the result does not depend on the
    order the tracker listed its nodes in; they are continuous in time, as the
    Cell Tracking Challenge format wants.

    Raises
    ------
    ContractError
        When an edge names a node id that is not in ``ids``.
    """
    index = {int(n): i for i, n in enumerate(ids.tolist())}
    strays = sorted({int(n) for n in np.asarray(edges).ravel().tolist()} - index.keys())
    if strays:
        raise ContractError(f"every edge must join two of the nodes, got edges to unknown node ids {strays[:5]}")
    parents: dict[int, list[int]] = {}
    children: dict[int, list[int]] = {}
    for source, target in edges.tolist():
        children.setdefault(index[source], []).append(index[target])
        parents.setdefault(index[target], []).append(index[source])
    track = np.zeros(len(ids), np.int64)
    rows: dict[int, list[int]] = {}
    for i in np.lexsort((ids, t)).tolist():
        up = parents.get(i, [])
        if len(up) == 1 and len(children.get(up[0], [])) == 1 and t[i] == t[up[0]] + 1:
            track[i] = track[up[0]]
            rows[int(track[i])][2] = int(t[i])
        else:
            track[i] = len(rows) + 1
            parent = int(track[up[0]]) if len(up) == 1 else 0
            rows[int(track[i])] = [int(track[i]), int(t[i]), int(t[i]), parent]
    return track, [(r[0], r[1], r[2], r[3]) for r in rows.values()]


def tracking_result(nodes: dict[str, np.ndarray], edges: dict[str, np.ndarray]) -> dict[str, Any]:
    """A ``tracks`` result from a tracker's nodes and edges: the track of every node, and the tracks table.

    Every tracker cuts its graph into tracks here, so that served, local and
    earlier-wire trackers all number their tracks as :func:`tracklets` does.

    Parameters
    ----------
    nodes : dict of str to ndarray
        At least ``id`` and ``t``, one entry per node.
    edges : dict of str to ndarray
        ``source`` and ``target`` node ids, parent to child.

    Returns
    -------
    dict
        ``nodes`` and ``edges`` as given, ``track_id`` aligned with the nodes,
        and ``tracks``: :data:`TRACK_COLUMNS` -> 1-d int64 arrays.

    Raises
    ------
    ContractError
        When an edge names a node id that is not among the nodes.
    """
    pairs = np.stack([edges["source"], edges["target"]], axis=1).reshape(-1, 2)
    track_id, rows = tracklets(nodes["id"], nodes["t"], pairs)
    table = np.array(rows, np.int64).reshape(-1, len(TRACK_COLUMNS))
    tracks = {key: table[:, k] for k, key in enumerate(TRACK_COLUMNS)}
    return {"nodes": nodes, "edges": edges, "track_id": track_id, "tracks": tracks}
