"""BABY's per-frame output as nahual's ``cells`` kind: overlap layers, a lineage graph and a per-cell table.

Layer: model zoo support (numpy only, so that it is tested without TensorFlow).
BABY (:mod:`nahual.models.baby`) gives, per frame, one filled mask per cell
(they overlap: a bud sits on its mother), each cell's tracked label (the same
cell keeps its label through the series) and the mother it assigned to each
label. :func:`series_result` turns a series of such frames into::

    {"layers": uint32 (L, t, y, x),    # each cell whole in one layer; no two cells of a layer overlap
     "nodes": {"id", "t", "label", "y", "x", "mother"} -> 1-d arrays,
     "edges": {"source", "target", "lineage"} -> 1-d arrays (lineage: 0 continuation, 1 budding),
     "lineage": ["continuation", "budding"],    # what each lineage code means
     "table": {"t", "label", "mother", "volume_um3", "major_axis_um", "minor_axis_um", "bud_probability"}}

Labels are BABY's cell labels: the value of the cell in every layer, its
identity in the graph, the ``label`` of its table rows. A node id is
``t * NODE_ID_STRIDE + label`` (:mod:`nahual.lineage`). A cell's nodes are
joined in time order by ``continuation`` edges (across a frame BABY missed
it too); a bud's first node is joined to its mother's last node before it by
a ``budding`` edge, which is how a CTC-style division looks in a graph (the
mother's node has two children) but says that the mother goes on: readers
that know the attribute keep her identity, and ``nahual export ctc`` writes
what the Cell Tracking Challenge format can say, a division. ``mother`` is
the mother BABY assigned by the last frame (0: none); a bud already there in
the first frame has a ``mother`` but no ``budding`` edge (nothing earlier).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..lineage import NODE_ID_STRIDE

__all__ = ["LINEAGE", "Frame", "overlap_layers", "series_result"]

#: What each value of the edges' ``lineage`` attribute means (a code, so that any Zarr reader reads it).
LINEAGE = ("continuation", "budding")


@dataclass(frozen=True)
class Frame:
    """What BABY found in one frame, in input pixels.

    Attributes
    ----------
    labels : numpy.ndarray
        (n,) BABY's tracked label of each cell (1-based, unique in the frame).
    masks : numpy.ndarray
        (n, y, x) bool, one filled mask per cell; masks may overlap.
    volumes : numpy.ndarray
        (n,) cell volumes in cubic micrometres (NaN when not asked for).
    axes : numpy.ndarray
        (n, 2) major and minor axis of each cell's ellipse, in micrometres.
    bud_probability : numpy.ndarray
        (n,) the highest probability, in this frame, that the cell is a bud of another cell in it.
    mother_assign : numpy.ndarray
        BABY's mother of each label so far: entry ``k`` is the mother of label ``k + 1`` (0: none).
    """

    labels: np.ndarray
    masks: np.ndarray
    volumes: np.ndarray
    axes: np.ndarray
    bud_probability: np.ndarray
    mother_assign: np.ndarray


def overlap_layers(masks: np.ndarray, labels: np.ndarray) -> list[np.ndarray]:
    """Label images (uint32) of one frame such that no two cells of one overlap and each cell is whole in one.

    Cells go largest first into the first layer where they overlap nothing, so
    mothers fill layer 0 and a bud on its mother goes to layer 1.
    """
    layers: list[np.ndarray] = []
    areas = masks.reshape(len(masks), -1).sum(axis=1)
    for index in np.argsort(-areas, kind="stable").tolist():
        mask = masks[index]
        free = next((layer for layer in layers if not layer[mask].any()), None)
        if free is None:
            free = np.zeros(masks.shape[1:], np.uint32)
            layers.append(free)
        free[mask] = labels[index]
    return layers


def _mothers(frames: list[Frame], top: int) -> np.ndarray:
    """Mother of each label up to ``top`` (index = label) by the last frame: BABY's cumulative assignment."""
    last = np.asarray(frames[-1].mother_assign if frames else (), np.int64)
    mothers = np.zeros(max(top, len(last)) + 1, np.int64)
    mothers[1 : len(last) + 1] = last
    return mothers


def _edges(ids: np.ndarray, t: np.ndarray, labels: np.ndarray, mothers: np.ndarray) -> dict[str, np.ndarray]:
    """Continuation edges along each label in time, and a budding edge into each bud's first node."""
    order = np.lexsort((t, labels))
    sources, targets, kinds = [], [], []
    for a, b in zip(order[:-1].tolist(), order[1:].tolist()):
        if labels[a] == labels[b]:
            sources.append(ids[a])
            targets.append(ids[b])
            kinds.append(0)
    first = {int(labels[i]): i for i in order[::-1].tolist()}
    for bud, node in sorted(first.items()):
        mother = int(mothers[bud])
        before = np.flatnonzero((labels == mother) & (t < t[node])) if mother else np.zeros(0, np.int64)
        if before.size:
            sources.append(ids[before[np.argmax(t[before])]])
            targets.append(ids[node])
            kinds.append(1)
    return {
        "source": np.array(sources, np.int64),
        "target": np.array(targets, np.int64),
        "lineage": np.array(kinds, np.int8),
    }


def series_result(
    frames: list[Frame], t0: int, shape: tuple[int, int], earlier: tuple[np.ndarray, np.ndarray] | None = None
) -> dict[str, object]:
    """The ``cells`` result of consecutive frames whose first is frame ``t0`` of the series (see the module doc).

    ``earlier`` holds the ``t`` and ``label`` of the nodes of the series' earlier
    windows: the edges then cover the whole series so far (an edge may start at
    an earlier window's node), so that the last window's edges are the series' graph.
    """
    per_frame = [overlap_layers(f.masks, f.labels) for f in frames]
    depth = max((len(layers) for layers in per_frame), default=0) or 1
    stack = np.zeros((depth, len(frames), *shape), np.uint32)
    for index, layers in enumerate(per_frame):
        for level, layer in enumerate(layers):
            stack[level, index] = layer
    t = np.concatenate(
        [np.full(len(f.labels), t0 + k, np.int64) for k, f in enumerate(frames)] or [np.zeros(0, np.int64)]
    )
    labels = np.concatenate([f.labels for f in frames] or [np.zeros(0, np.int64)]).astype(np.int64)
    centres = [np.argwhere(mask).mean(axis=0) if mask.any() else np.zeros(2) for f in frames for mask in f.masks]
    centre = np.array(centres, np.float64).reshape(-1, 2)
    ids = t * NODE_ID_STRIDE + labels
    past_t, past_labels = earlier if earlier is not None else (np.zeros(0, np.int64), np.zeros(0, np.int64))
    mothers = _mothers(frames, int(max(labels.max(initial=0), past_labels.max(initial=0))))
    mother = mothers[labels] if labels.size else np.zeros(0, np.int64)
    nodes = {"id": ids, "t": t, "label": labels, "y": centre[:, 0], "x": centre[:, 1], "mother": mother}

    def column(name: str, width: int | None = None, index: int = 0) -> np.ndarray:
        parts = [getattr(f, name)[:, index] if width else getattr(f, name) for f in frames]
        return np.concatenate(parts or [np.zeros(0)]).astype(np.float64)

    table = {
        "t": t,
        "label": labels,
        "mother": mother,
        "volume_um3": column("volumes"),
        "major_axis_um": column("axes", 2, 0),
        "minor_axis_um": column("axes", 2, 1),
        "bud_probability": column("bud_probability"),
    }
    all_t, all_labels = np.concatenate([past_t, t]), np.concatenate([past_labels, labels])
    edges = _edges(all_t * NODE_ID_STRIDE + all_labels, all_t, all_labels, mothers)
    return {"layers": stack, "nodes": nodes, "edges": edges, "lineage": list(LINEAGE), "table": table}
