"""traccuracy scores of tracks, for the tracker and workflow tests: one way to build the graphs and read the metrics.

Layer: tests (traccuracy and networkx; zarr and nahual.stream only in
:func:`store_graph`). A tracker's tables (:func:`tracking_graph`) and a
store's GEFF tracks (:func:`store_graph`) become the same kind of graph, so
that every test scores tracks the same way (:func:`metric_results`).
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np


def tracking_graph(
    nodes: dict[str, np.ndarray], pairs: Iterable[tuple[int, int]], masks: np.ndarray, segmentation: str = "label"
) -> Any:
    """A traccuracy graph of nodes, their (source, target) edges and the masks their ``segmentation`` ids label."""
    import networkx as nx
    from traccuracy import TrackingGraph

    graph = nx.DiGraph()
    for i, node in enumerate(nodes["id"].tolist()):
        graph.add_node(
            node,
            t=int(nodes["t"][i]),
            segmentation_id=int(nodes[segmentation][i]),
            y=float(nodes["y"][i]),
            x=float(nodes["x"][i]),
        )
    graph.add_edges_from(pairs)
    return TrackingGraph(graph, segmentation=masks, location_keys=("y", "x"))


def store_graph(store: Path, name: str) -> Any:
    """A traccuracy graph of the GEFF tracks ``name`` in ``store``, with the label image they link to."""
    import zarr

    from nahual.stream import read_tracks

    nodes, edges, meta = read_tracks(store, name)
    labels_path = os.path.normpath(os.path.join(store, "tracks", name, meta["related_objects"][0]["path"]))
    masks = zarr.open_group(labels_path, mode="r")["0"][...]
    return tracking_graph(nodes, map(tuple, edges.tolist()), masks, segmentation="seg_id")


def metric_results(truth: Callable[[], Any], found: Callable[[], Any], *runs: tuple[Any, list[Any]]) -> dict[str, Any]:
    """traccuracy's results by metric name, for each ``(matcher, metrics)`` run (its warnings silenced).

    ``truth()`` and ``found()`` make the graphs anew for each run, as a matcher
    annotates the graphs it matches.
    """
    from traccuracy import run_metrics

    named: dict[str, Any] = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for matcher, metrics in runs:
            results, _ = run_metrics(truth(), found(), matcher, metrics)
            named.update({r["metric"]["name"]: r["results"] for r in results})
    return named
