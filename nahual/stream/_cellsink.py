"""The cells output: a segmenting tracker's cells as label images, a GEFF lineage graph and a per-cell table.

Zarr streaming layer. A model of the ``cells`` kind (BABY, see
``nahual/models/_baby_cells.py`` for the result) segments and tracks a whole
series in one block; its cells may overlap (a bud sits on its mother), so it
sends them as layers, label images in which no two cells overlap and each
cell is whole in one. From one result the sink writes, for output ``NAME``:

- ``labels/NAME``: every cell, by its label; where cells overlap the cell of
  the later layer (the bud) is painted over the earlier (its mother), so no
  bud is lost. This is the label image the graph links to, ``nahual export
  ctc`` reads and measurement steps measure;
- ``labels/NAME-layer0`` ... ``NAME-layerK``: the layers, each cell whole in
  one of them (viewers show each as a label layer): nothing is lost under another;
- ``tracks/NAME``: the GEFF graph, its nodes' ``seg_id`` and ``track_id`` the
  cell's label, its edges' ``lineage`` property a code whose meaning the
  result's ``lineage`` list gives (BABY: 0 continuation, 1 budding), kept in
  the graph's ``extra.nahual.lineage``;
- ``tables/NAME``: one AnnData row per cell and frame.

The model's cells are 2-D (a z-stack is one input image to it); for an image
with a z axis every z-plane of a cell's mask is the same, so that the label
images keep the image's shape, as OME-Zarr labels and the measurement steps
want.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..errors import ConfigError, ContractError
from ._ome import image_group, ngff_version, ome_attrs
from ._omewrite import _set_ome, add_label_levels, create_label_array
from ._plan import Block
from ._sink import Sink
from ._tables import write_table
from ._tracks import write_tracks

__all__ = ["CellSink", "layer_name"]

#: Table columns that identify a row (``obs``); the others are measurements (``X``).
_OBS = ("t", "label", "mother")


def layer_name(name: str, level: int) -> str:
    """The label image of one overlap layer of output ``name``."""
    return f"{name}-layer{level}"


def _parts(result: Any) -> tuple[np.ndarray, dict[str, np.ndarray], dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Layers, nodes, edges and table of a ``cells`` result, checked for the keys and shapes the writers need."""
    shape = "{'layers': (L, t, y, x) labels, 'nodes': {...}, 'edges': {...}, 'table': {...}}"
    if not isinstance(result, dict) or not all(isinstance(result.get(k), dict) for k in ("nodes", "edges", "table")):
        raise ContractError(f"a cells model must return {shape}, got {type(result).__name__}")
    layers = np.asarray(result.get("layers"))
    if layers.ndim != 4 or layers.dtype.kind not in "iu":
        raise ContractError(f"cells 'layers' must be integer labels (L, t, y, x), got {layers.dtype} {layers.shape}")
    nodes = {k: np.asarray(v) for k, v in result["nodes"].items()}
    missing = [k for k in ("id", "t", "label", "y", "x") if k not in nodes]
    if missing:
        raise ContractError(f"cells nodes need 'id', 't', 'label', 'y', 'x', missing {missing}")
    edges = {k: np.asarray(v) for k, v in result["edges"].items()}
    if not {"source", "target"} <= set(edges):
        raise ContractError(f"cells edges need 'source' and 'target', got {sorted(edges)}")
    table = {k: np.asarray(v) for k, v in result["table"].items()}
    if not {"t", "label"} <= set(table) or len({v.shape for v in table.values()}) != 1:
        raise ContractError("cells table needs 't' and 'label' columns, all 1-d of one length")
    return layers, nodes, edges, table


class CellSink(Sink):
    """Writes a cells model's single result: composite and layer label images, the lineage graph and the table."""

    def check(self) -> None:
        """Check the plan is one block over the whole series, which must have y and x (and t)."""
        plan = self.plan
        if len(plan.blocks()) != 1 or "t" not in plan.model_axes:
            raise ConfigError(f"cells need the whole series in one block; the model takes axes {plan.model_axes!r}")
        frame = plan.out_axes.replace("t", "")
        if frame not in ("yx", "zyx"):
            raise ConfigError(f"cells are written on t, (z,) y, x axes; the image has {plan.out_axes!r}")

    def prepare(self) -> None:
        """Nothing to create: the single block writes everything at once."""

    def _frames(self, layers: np.ndarray) -> np.ndarray:
        """Check the layers against the series: (L, t, y, x) with the image's t, y and x."""
        sizes = dict(zip(self.plan.out_axes, self.plan.out_shape, strict=True))
        want = (sizes["t"], sizes["y"], sizes["x"])
        if layers.shape[1:] != want:
            raise ContractError(f"cells layers have frames {layers.shape[1:]}, the series is (t, y, x) {want}")
        return layers

    def _write_labels(self, name: str, frames: np.ndarray, attrs: dict[str, Any]) -> None:
        """One label image (t, y, x) as ``labels/NAME`` on the image's axes (each z-plane the same)."""
        plan = self.plan
        scale = tuple(s for a, s in zip(plan.axes, self.target.scale, strict=True) if a != "c")
        group = image_group(self.target.image_path)
        dtype = np.uint32 if frames.max(initial=0) <= np.iinfo(np.uint32).max else np.uint64
        out = create_label_array(group, name, plan.out_axes, plan.out_shape, plan.out_chunks, dtype, scale, attrs)
        axis = plan.out_axes.index("t")
        for t in range(frames.shape[0]):
            sel = tuple(t if i == axis else slice(None) for i in range(len(plan.out_axes)))
            out[sel] = np.broadcast_to(frames[t], out.shape[:axis] + out.shape[axis + 1 :]).astype(dtype)
        add_label_levels(self.target.image_path, name)

    def _drop_stale_layers(self, count: int) -> None:
        """Remove the layer images an earlier run wrote beyond the ``count`` this one wrote."""
        labels = image_group(self.target.image_path).require_group("labels")
        prefix = layer_name(self.name, 0)[:-1]
        stale = [k for k in labels.group_keys() if k.startswith(prefix) and k[len(prefix) :].isdigit()]
        stale = [k for k in stale if int(k[len(prefix) :]) >= count]
        for name in stale:
            del labels[name]
        if stale:
            known = [n for n in ome_attrs(dict(labels.attrs)).get("labels", []) if n not in stale]
            _set_ome(labels, ngff_version(int(self.target.zarr_format)), {"labels": known})

    def write(self, block: Block, result: Any) -> None:
        """Write labels, layers, graph and table (with the run's provenance), then record the block."""
        layers, nodes, edges, table = _parts(result)
        layers = self._frames(layers)
        attrs = self.state.provenance()
        composite = layers[0].copy()
        for layer in layers[1:]:
            composite = np.where(layer > 0, layer, composite)
        self._write_labels(self.name, composite, attrs)
        for level, layer in enumerate(layers):
            self._write_labels(layer_name(self.name, level), layer, attrs)
        self._drop_stale_layers(len(layers))
        columns = {k: v for k, v in nodes.items() if k != "label"}
        columns |= {"seg_id": nodes["label"].astype(np.uint32), "track_id": nodes["label"]}
        pairs = {"source": edges["source"], "target": edges["target"]}
        props = {k: v for k, v in edges.items() if k not in pairs}
        meaning = {"lineage": [str(v) for v in result.get("lineage") or []]} if "lineage" in props else {}
        write_tracks(self.target.image_path, self.name, columns, pairs, self.name, attrs | meaning, props)
        obs = {k: table[k] for k in _OBS if k in table}
        names = [k for k in table if k not in obs]
        x = np.stack([table[k].astype(np.float64) for k in names], axis=1) if names else np.zeros((len(table["t"]), 0))
        write_table(self.target.image_path, self.name, obs, x, names, attrs)
        summary = {"cells": int(np.unique(nodes["label"]).size), "nodes": int(nodes["id"].size)}
        summary |= {"edges": int(edges["source"].size), "layers": len(layers)}
        self.state.record(block.index, summary)

    def finalize(self, provenance: dict[str, Any]) -> dict[str, Any]:
        """Nothing left to do: the single block wrote everything."""
        return self.state.info(0)
