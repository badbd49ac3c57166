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

from dataclasses import dataclass
from typing import Any

import numpy as np
import zarr

from ..errors import ConfigError, ContractError
from ..lineage import tracklets
from ._ome import Target, add_label_levels, create_label_array, image_group
from ._plan import Block, Plan
from ._resume import RunState
from ._stitch import lookup
from ._tracks import write_tracks

__all__ = ["TrackSink"]


def _nodes_and_edges(result: Any) -> tuple[dict[str, np.ndarray], np.ndarray]:
    if not isinstance(result, dict) or "nodes" not in result or "edges" not in result:
        raise ContractError("a tracks model must return {'nodes': {...}, 'edges': {'source', 'target'}}")
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


@dataclass
class TrackSink:
    """Writes a tracker's single result: relabelled masks and the GEFF graph.

    Parameters
    ----------
    target : Target
        Where ``labels/NAME`` and ``tracks/NAME`` go.
    plan : Plan
        The run's single block.
    state : RunState
        The output's state folder.
    labels : zarr.Array
        The segmentation the tracker's ``label`` values refer to.
    """

    target: Target
    plan: Plan
    state: RunState
    labels: zarr.Array | None

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
        """Nothing to create before the single block."""

    def _paint(self, nodes: dict[str, np.ndarray], track: np.ndarray, attrs: dict[str, Any]) -> None:
        plan = self.plan
        keep = [i for i, a in enumerate(plan.axes) if a != "c"]
        out = create_label_array(
            image_group(self.target.image_path),
            self.state.name,
            plan.out_axes,
            plan.out_shape,
            plan.out_chunks,
            np.uint32,
            tuple(self.target.scale[i] for i in keep),
            attrs,
        )
        axis = plan.out_axes.index("t")
        for frame in range(plan.out_shape[axis]):
            here = nodes["t"] == frame
            order = np.argsort(nodes["label"][here], kind="stable")
            values, ids = nodes["label"][here][order], track[here][order]
            sel = tuple(frame if i == axis else slice(None) for i in range(len(plan.out_axes)))
            masks = np.asarray(self.labels[sel])
            known = lookup(values, masks)
            out[sel] = np.where(known > 0, ids[np.maximum(known - 1, 0)], 0).astype(np.uint32)
        add_label_levels(self.target.image_path, self.state.name)

    def write(self, block: Block, result: Any, attrs: dict[str, Any] | None = None) -> None:
        """Write masks and graph, then record the block."""
        nodes, pairs = _nodes_and_edges(result)
        track, _ = tracklets(nodes["id"], nodes["t"], pairs)
        attrs = attrs or self.state.provenance()
        self._paint(nodes, track, attrs)
        columns = {k: v for k, v in nodes.items() if k != "label"}
        columns |= {"seg_id": track.astype(np.uint32), "track_id": track, "source_label": nodes["label"]}
        write_tracks(self.target.image_path, self.state.name, columns, pairs, labels_name=self.state.name, attrs=attrs)
        self.state.record(
            block.index, {"nodes": int(track.size), "edges": len(pairs), "tracks": int(track.max(initial=0))}
        )

    def finalize(self, attrs: dict[str, Any]) -> dict[str, Any]:
        """Nothing left to do: the single block wrote everything."""
        return self.state.info(0)
