"""Tracks as GEFF graphs at ``IMAGE/tracks/NAME``, linked to their label image.

Zarr streaming layer. Nodes carry ``t``, the position (``z``,) ``y``, ``x``,
``seg_id`` (the value of the object in the linked label image at frame ``t``)
and ``track_id``; edges go parent -> child, so a division is a node with two
children. The graph is written with ``geff.core_io.write_arrays`` in the Zarr
format of the image's store and validated by geff as it is written.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import numpy as np
import zarr

from ..errors import ContractError
from ._ome import image_group

__all__ = ["read_tracks", "write_tracks"]

_SPATIAL = ("z", "y", "x")


def _edge_arrays(edges: Mapping[str, Any] | np.ndarray) -> np.ndarray:
    """Edges as an (E, 2) int64 array of (source, target) node ids."""
    if isinstance(edges, Mapping):
        try:
            source, target = np.asarray(edges["source"]), np.asarray(edges["target"])
        except KeyError as exc:
            raise ContractError(f"edges need 'source' and 'target' arrays, got keys {sorted(edges)}") from exc
        if source.shape != target.shape or source.ndim != 1:
            raise ContractError(
                f"edge source and target must be 1-d of one length, got {source.shape} and {target.shape}"
            )
        pairs = np.stack([source, target], axis=1) if source.size else np.zeros((0, 2))
    else:
        pairs = np.asarray(edges).reshape(-1, 2)
    return pairs.astype(np.int64)


def _node_columns(nodes: Mapping[str, Any]) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Node ids and the property columns, checked for the keys and lengths GEFF needs."""
    missing = [k for k in ("id", "t", "y", "x") if k not in nodes]
    if missing:
        raise ContractError(f"nodes need 'id', 't', 'y', 'x' arrays, missing {missing}")
    ids = np.asarray(nodes["id"]).astype(np.int64)
    columns = {k: np.asarray(v) for k, v in nodes.items() if k != "id"}
    if "seg_id" not in columns and "label" in columns:
        columns["seg_id"] = columns.pop("label")
    for key, values in columns.items():
        if values.shape != ids.shape:
            raise ContractError(f"node property {key!r} has shape {values.shape}, ids have {ids.shape}")
    if len(np.unique(ids)) != ids.size:
        raise ContractError("node ids must be unique")
    return ids, columns


def write_tracks(
    image_path: str | os.PathLike,
    name: str,
    nodes: Mapping[str, Any],
    edges: Mapping[str, Any] | np.ndarray,
    labels_name: str | None = None,
    attrs: dict[str, Any] | None = None,
    edge_props: Mapping[str, Any] | None = None,
) -> str:
    """Write a tracking graph as GEFF at ``IMAGE/tracks/NAME``.

    Parameters
    ----------
    image_path : str or path-like
        The OME-Zarr image group.
    name : str
        Name of the graph.
    nodes : mapping of str to 1-d arrays
        ``id``, ``t``, ``y``, ``x`` (and ``z``) are required; ``seg_id`` (or
        ``label``) links each node to its object in ``labels_name``; any other
        columns (``track_id``...) become node properties.
    edges : mapping or array
        ``{"source": ids, "target": ids}`` (parent -> child) or an (E, 2) array.
    labels_name : str, optional
        The label image under ``IMAGE/labels/`` the ``seg_id`` values refer to
        (GEFF ``related_objects``).
    attrs : dict, optional
        Provenance, stored in the GEFF ``extra`` metadata under ``"nahual"``.
    edge_props : mapping of str to 1-d arrays, optional
        Edge properties aligned with ``edges`` (e.g. ``lineage``: ``budding`` or ``continuation``).

    Returns
    -------
    str
        The path of the graph.

    Raises
    ------
    ContractError
        When nodes or edges are malformed, or an edge names an unknown node.
    """
    from geff.core_io import write_arrays
    from geff_spec import Axis, GeffMetadata, RelatedObject

    ids, columns = _node_columns(nodes)
    pairs = _edge_arrays(edges)
    if pairs.size and not np.isin(pairs, ids).all():
        raise ContractError("an edge names a node id that is not among the nodes")
    edge_columns = {k: np.asarray(v) for k, v in (edge_props or {}).items()}
    if any(v.shape != (len(pairs),) for v in edge_columns.values()):
        raise ContractError(f"edge properties must be 1-d with one value per edge ({len(pairs)})")
    image = image_group(image_path)
    tracks = image.require_group("tracks")
    axes = [Axis(name="t", type="time")] + [Axis(name=a, type="space") for a in _SPATIAL if a in columns]
    related = None
    if labels_name is not None:
        if "seg_id" not in columns:
            raise ContractError("nodes need a 'seg_id' (or 'label') column to link them to a label image")
        related = [RelatedObject(type="labels", path=f"../../labels/{labels_name}", node_prop="seg_id")]
    metadata = GeffMetadata(
        directed=True,
        axes=axes,
        node_props_metadata={},
        edge_props_metadata={},
        track_node_props={"tracklet": "track_id"} if "track_id" in columns else None,
        related_objects=related,
        extra={"nahual": attrs or {}},
    )
    props = {k: {"values": v, "missing": None} for k, v in columns.items()}
    path = os.path.join(os.fspath(image_path), "tracks", name)
    if name in tracks:
        del tracks[name]
    edge_values = {k: {"values": v, "missing": None} for k, v in edge_columns.items()} or None
    zarr_format = int(image.metadata.zarr_format)
    write_arrays(path, ids, props, pairs, edge_values, metadata, zarr_format=zarr_format, overwrite=True)
    return path


def read_tracks(image_path: str | os.PathLike, name: str) -> tuple[dict[str, np.ndarray], np.ndarray, dict]:
    """Read a GEFF graph written by :func:`write_tracks`.

    Returns
    -------
    nodes : dict of str to 1-d arrays
        ``id`` and every node property.
    edges : numpy.ndarray
        (E, 2) source, target node ids.
    metadata : dict
        The ``geff`` attributes.
    """
    path = os.path.join(os.fspath(image_path), "tracks", name)
    try:
        group = zarr.open_group(path, mode="r")
    except (FileNotFoundError, zarr.errors.NodeNotFoundError) as exc:
        raise ContractError(f"no GEFF graph at {path}") from exc
    nodes = {"id": np.asarray(group["nodes/ids"][...])}
    for prop in group["nodes/props"].group_keys():
        nodes[prop] = np.asarray(group[f"nodes/props/{prop}/values"][...])
    edges = np.asarray(group["edges/ids"][...]).reshape(-1, 2)
    return nodes, edges, dict(group.attrs).get("geff", {})
