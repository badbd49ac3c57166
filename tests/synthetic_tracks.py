"""Labelled time-lapses with known lineage at any object size, and their CTC scores, for the tracker tests.

Layer: tests (numpy; traccuracy and networkx only in :func:`ctc_scores`, through :mod:`track_scores`).
:func:`make_series` draws a grid of discs ``diameter`` pixels across that
drift a fraction of their diameter per frame, with two divisions whose
daughters start up to 0.8 diameter from their mother's centre and one object
missing for one frame. Everything is a multiple of the diameter, so that the
same series at 10, 30 and 60 px asks the same of a tracker whose limits
follow the objects' scale. Masks follow the Cell Tracking Challenge: an
object's label is its track id, and the object found after the gap starts a
new track whose parent is the old one.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np
from track_scores import metric_results, tracking_graph

from nahual.lineage import NODE_ID_STRIDE
from nahual.models.laptrack import object_nodes

#: (grid index of the mother, division frame, daughters' distance from the mother's centre in diameters)
DIVISIONS = ((0, 3, 0.8), (4, 6, 0.5))
#: (grid index, frame) of the object missing for one frame
GAP = (8, 5)


@dataclass(frozen=True)
class Series:
    """A synthetic series and its truth.

    Attributes
    ----------
    labels : ndarray, uint32, (t, y, x)
        Masks; the value is the track id.
    tracks : dict of str to ndarray
        ``track_id``, ``start``, ``end``, ``parent`` (0 for none), CTC style.
    nodes, edges : dict of str to ndarray
        The lineage as a graph: node ids ``t * NODE_ID_STRIDE + label`` at mask
        centroids, edges along each track, from a mother's last node to each
        daughter's first and across the gap.
    divisions : list of (int, int, int)
        ``(mother, daughter, daughter)`` node ids of each division.
    """

    labels: np.ndarray
    tracks: dict[str, np.ndarray]
    nodes: dict[str, np.ndarray]
    edges: dict[str, np.ndarray]
    divisions: list[tuple[int, int, int]]


@dataclass(frozen=True)
class _Track:
    track_id: int
    parent: int
    radius: float
    at: dict[int, np.ndarray]  # frame -> (y, x) centre


def make_series(diameter: float, frames: int = 10, seed: int = 0) -> Series:
    """A 3 x 3 grid of drifting discs with the :data:`DIVISIONS` and the :data:`GAP`.

    Parameters
    ----------
    diameter : float
        Mean object diameter in pixels (each object within 10 % of it).
    frames : int
        Length of the series; long enough for the divisions and the gap.
    seed : int
        Seed of the jitter in sizes, positions and velocities.

    Returns
    -------
    Series
    """
    rng = np.random.default_rng(seed)
    d = float(diameter)
    drift = 0.2 * d * _unit(rng)
    tracks: list[_Track] = []
    for k in range(9):
        origin = np.array([k // 3, k % 3]) * 4.0 * d + rng.uniform(-0.3, 0.3, 2) * d
        velocity = drift + rng.normal(0, 0.03, 2) * d
        radius = d / 2 * rng.uniform(0.9, 1.1)
        path = {t: origin + velocity * t for t in range(frames)}
        division = next((row[1:] for row in DIVISIONS if row[0] == k), None)
        if division is not None:
            t_div, spread = division
            mother = _add(tracks, 0, radius, {t: path[t] for t in range(t_div)})
            u = _unit(rng)
            for sign in (1.0, -1.0):
                born = path[t_div - 1] + sign * spread * d * u
                moving = velocity + sign * 0.1 * d * u
                daughter = {t: born + moving * (t - t_div) for t in range(t_div, frames)}
                _add(tracks, mother, radius / np.sqrt(2), daughter)  # half the mother's area
        elif k == GAP[0]:
            before = _add(tracks, 0, radius, {t: path[t] for t in range(GAP[1])})
            _add(tracks, before, radius, {t: path[t] for t in range(GAP[1] + 1, frames)})
        else:
            _add(tracks, 0, radius, path)
    table = {
        "track_id": np.array([tr.track_id for tr in tracks], np.int64),
        "start": np.array([min(tr.at) for tr in tracks], np.int64),
        "end": np.array([max(tr.at) for tr in tracks], np.int64),
        "parent": np.array([tr.parent for tr in tracks], np.int64),
    }
    labels = _rasterize(tracks, frames, d)
    first = dict(zip(table["track_id"].tolist(), (table["start"] * NODE_ID_STRIDE + table["track_id"]).tolist()))
    last = dict(zip(table["track_id"].tolist(), (table["end"] * NODE_ID_STRIDE + table["track_id"]).tolist()))
    mothers = [tr.track_id for tr in tracks if sum(o.parent == tr.track_id for o in tracks) == 2]
    divisions = [(last[m], *(first[tr.track_id] for tr in tracks if tr.parent == m)) for m in mothers]
    return Series(labels, table, object_nodes(labels), _edges(table, first, last), divisions)


def _unit(rng: np.random.Generator) -> np.ndarray:
    """A random (y, x) unit vector."""
    angle = rng.uniform(0, 2 * np.pi)
    return np.array([np.sin(angle), np.cos(angle)])


def _add(tracks: list[_Track], parent: int, radius: float, at: dict[int, np.ndarray]) -> int:
    """Append a track numbered after the others; returns its id."""
    tracks.append(_Track(len(tracks) + 1, parent, radius, at))
    return len(tracks)


def _rasterize(tracks: list[_Track], frames: int, d: float) -> np.ndarray:
    """(t, y, x) masks of the discs, shifted so that every disc lies a diameter inside the field."""
    centres = np.concatenate([np.stack(list(tr.at.values())) for tr in tracks])
    low = centres.min(axis=0) - 1.5 * d
    shape = np.ceil(centres.max(axis=0) - low + 1.5 * d).astype(int)
    yy, xx = np.mgrid[0 : shape[0], 0 : shape[1]]
    labels = np.zeros((frames, *shape), np.uint32)
    for tr in tracks:
        reach = int(tr.radius) + 2
        for t, centre in tr.at.items():
            y, x = centre - low
            box = tuple(slice(max(int(c) - reach, 0), int(c) + reach + 1) for c in (y, x))
            inside = (yy[box] - y) ** 2 + (xx[box] - x) ** 2 <= tr.radius**2
            labels[t][box][inside] = tr.track_id
    return labels


def _edges(table: dict[str, np.ndarray], first: dict[int, int], last: dict[int, int]) -> dict[str, np.ndarray]:
    """Edges along each track and from a parent's last node to its child's first."""
    source: list[int] = []
    target: list[int] = []
    for track, start, end, parent in zip(*(table[k].tolist() for k in ("track_id", "start", "end", "parent"))):
        source += [t * NODE_ID_STRIDE + track for t in range(start, end)]
        target += [t * NODE_ID_STRIDE + track for t in range(start + 1, end + 1)]
        if parent:
            source.append(last[parent])
            target.append(first[track])
    order = np.lexsort((target, source))
    return {"source": np.array(source, np.int64)[order], "target": np.array(target, np.int64)[order]}


def ctc_scores(truth: Any, result: dict[str, Any], masks: np.ndarray) -> tuple[float, float]:
    """(TRA, division F1) of a tracker's result against a truth with ``nodes`` and ``edges``, by traccuracy."""
    from traccuracy.matchers import CTCMatcher
    from traccuracy.metrics import CTCMetrics, DivisionMetrics

    named = metric_results(
        lambda: tracking_graph(truth.nodes, _pairs(truth.edges), masks),
        lambda: tracking_graph(result["nodes"], _pairs(result["edges"]), masks),
        (CTCMatcher(), [CTCMetrics(), DivisionMetrics()]),
    )
    return named["CTCMetrics"]["TRA"], named["DivisionMetrics"]["Frame Buffer 0"]["Division F1"]


def _pairs(edges: dict[str, np.ndarray]) -> Iterable[tuple[int, int]]:
    return zip(edges["source"].tolist(), edges["target"].tolist())
