"""The tracks output: a tracker's graph as GEFF plus the masks relabelled by track id.

Zarr streaming layer. A tracker sees the whole series in one block. Its nodes
name the object (``label``) they stand for in the input label image at frame
``t``; nahual splits the graph into tracklets (a track ends where a node has
other than one child, before a gap in time, or where a node has other than
one parent), writes
``IMAGE/labels/NAME`` with each object painted with its track id, and
``IMAGE/tracks/NAME`` whose nodes' ``seg_id`` is that track id.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..errors import ConfigError, ContractError
from ..lineage import tracklets
from ._integrity import read
from ._omewrite import add_label_levels
from ._plan import Block
from ._sink import Sink
from ._stitch import recolour
from ._tracks import write_tracks

__all__ = ["TrackSink"]


def _nodes_and_edges(result: Any) -> tuple[dict[str, np.ndarray], np.ndarray]:
    shape = "{'nodes': {column: array}, 'edges': {'source': array, 'target': array}}"
    if not isinstance(result, dict) or not all(isinstance(result.get(k), dict) for k in ("nodes", "edges")):
        raise ContractError(f"a tracks model must return {shape}, got {type(result).__name__}")
    if not {"source", "target"} <= set(result["edges"]):
        raise ContractError(f"a tracks model must return {shape}, got edges {sorted(result['edges'])}")
    nodes = {k: np.asarray(v) for k, v in result["nodes"].items()}
    missing = [k for k in ("id", "t", "label", "y", "x") if k not in nodes]
    if missing:
        raise ContractError(f"tracker nodes need 'id', 't', 'label', 'y', 'x', missing {missing}")
    edges = result["edges"]
    source, target = np.asarray(edges["source"]), np.asarray(edges["target"])
    pairs = np.stack([source, target], axis=1).astype(np.int64) if source.size else np.zeros((0, 2), np.int64)
    if pairs.size and not np.isin(pairs, nodes["id"]).all():
        raise ContractError("a tracker edge names a node id that is not among its nodes")
    return nodes, pairs


class TrackSink(Sink):
    """Writes a tracker's single result: relabelled masks and the GEFF graph.

    Parameters
    ----------
    target, plan, state
        As for :class:`Sink`; the plan is one block over the whole series.
    labels : zarr.Array
        The segmentation the tracker's ``label`` values refer to (required).
    """

    def check(self) -> None:
        """Check the plan is one block over the whole series and the masks are known."""
        if len(self.plan.blocks()) != 1 or "t" not in self.plan.model_axes:
            raise ConfigError(
                f"tracks need the whole series in one block; the model takes axes {self.plan.model_axes!r}"
            )
        if self.labels is None:
            raise ConfigError(
                "tracks need the segmentation: give a label image IMAGE/labels/NAME as input or --labels NAME"
            )

    def prepare(self) -> None:
        """Nothing to create: the single block writes masks and graph at once."""

    def _paint(self, nodes: dict[str, np.ndarray], track: np.ndarray, attrs: dict[str, Any]) -> None:
        plan = self.plan
        out = self.create_label_image(np.uint32, attrs)
        axis = plan.out_axes.index("t")
        for frame in range(plan.out_shape[axis]):
            here = nodes["t"] == frame
            sel = tuple(frame if i == axis else slice(None) for i in range(len(plan.out_axes)))
            masks = read(self.labels, sel, "the segmentation")  # check() refused a run without labels
            out[sel] = recolour(masks, nodes["label"][here], track[here]).astype(np.uint32)
        add_label_levels(self.target.image_path, self.name)

    def write(self, block: Block, result: Any) -> None:
        """Write masks and graph (with the run's provenance), then record the block."""
        nodes, pairs = _nodes_and_edges(result)
        track, _ = tracklets(nodes["id"], nodes["t"], pairs)
        attrs = self.state.provenance()
        self._paint(nodes, track, attrs)
        columns = {k: v for k, v in nodes.items() if k != "label"}
        columns |= {"seg_id": track.astype(np.uint32), "track_id": track, "source_label": nodes["label"]}
        write_tracks(self.target.image_path, self.name, columns, pairs, labels_name=self.name, attrs=attrs)
        self.state.record(
            block.index, {"nodes": int(track.size), "edges": len(pairs), "tracks": int(track.max(initial=0))}
        )

    def finalize(self, provenance: dict[str, Any]) -> dict[str, Any]:
        """Nothing left to do: the single block wrote everything."""
        return self.state.info(0)
