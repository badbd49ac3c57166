"""Features and embeddings outputs: AnnData tables at ``IMAGE/tables/NAME``.

Zarr streaming layer. Each block's rows are kept in its completion record; the
table is assembled once every block is finished, in block order, so that a run
killed midway and resumed, or sharded, writes the same table. A features table
has one row per object (``label`` and the block's iterated indices such as
``t`` in ``obs``, the measurements in ``X``); an embeddings table one row per
vector (the block's position and the model's own ``obs`` columns, boxes moved
to image coordinates, the vectors in ``X``, patch tokens in ``obsm``). Holding
all rows in memory at the end is fine: they are small.
"""

from __future__ import annotations

import json
import os
import re
import warnings
from abc import abstractmethod
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..errors import ContractError
from ._integrity import compressors
from ._ome import image_group
from ._plan import Block, Plan
from ._sink import Sink

__all__ = ["EmbeddingSink", "FeatureSink", "TableSink", "write_table"]

#: Feature columns that identify a row rather than measure it (they go to ``obs``).
_OBS_COLUMNS = ("label", "t", "z", "c")
#: Side arrays under this prefix describe their block, not its rows (names, ``uns``): never concatenated.
_META = "meta/"
#: A model's obs column holding a box edge along one axis, in the pixels of the block it was given.
_BOX_EDGE = re.compile(r"bbox_([tczyx])_(?:min|max)")
#: obs columns the embeddings sink writes itself, besides the block's position.
_OWN_OBS = ("block", "row", "region")
#: Where patch tokens go in an embeddings table.
_PATCHES = "patch_tokens"


def write_table(
    image_path: str | os.PathLike,
    name: str,
    obs: dict[str, Any],
    x: np.ndarray,
    var_names: list[str],
    attrs: dict[str, Any] | None = None,
    *,
    obsm: dict[str, np.ndarray] | None = None,
    uns: dict[str, Any] | None = None,
) -> str:
    """Write an AnnData table at ``IMAGE/tables/NAME`` in the image store's Zarr format.

    Parameters
    ----------
    image_path : str or path-like
        The image group.
    name : str
        The table's name.
    obs : dict of str to 1-d arrays
        Per-row annotations (``label``, ``t``...); a ``pandas.Categorical`` stays categorical.
    x : numpy.ndarray
        (rows, columns) values.
    var_names : list of str
        Names of the columns of ``x``.
    attrs : dict, optional
        Provenance, stored in ``uns["nahual"]``.
    obsm : dict of str to arrays, optional
        Per-row arrays of any shape after the first axis (patch tokens).
    uns : dict, optional
        More unstructured entries, beside ``uns["nahual"]``.

    Returns
    -------
    str
        The path of the table.
    """
    import anndata
    import pandas as pd

    rows = x.shape[0]
    frame = pd.DataFrame(dict(obs), index=[str(i) for i in range(rows)])
    table = anndata.AnnData(X=x, obs=frame, var=pd.DataFrame(index=list(var_names)), obsm=obsm or None)
    table.uns.update({**(uns or {}), "nahual": attrs or {}})
    image = image_group(image_path)
    tables = image.require_group("tables")
    if name in tables:
        del tables[name]
    previous = anndata.settings.zarr_write_format
    zarr_format = int(image.metadata.zarr_format)
    try:
        anndata.settings.zarr_write_format = zarr_format
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            anndata.io.write_elem(tables, name, table, dataset_kwargs={"compressors": compressors(zarr_format)})
    finally:
        anndata.settings.zarr_write_format = previous
    return os.path.join(os.fspath(image_path), "tables", name)


@dataclass(frozen=True)
class _Table:
    """What :func:`write_table` writes, assembled from every block's rows."""

    obs: dict[str, Any]
    x: np.ndarray
    var_names: list[str]
    obsm: dict[str, np.ndarray] = field(default_factory=dict)
    uns: dict[str, Any] = field(default_factory=dict)


def _block_position(plan: Plan, block: Block) -> dict[str, int]:
    """The block's index along each iterated axis and, for tiles, its origin."""
    position = {}
    for axis, start in zip(plan.axes, block.start, strict=True):
        if axis in plan.iterated or axis in plan.tile:
            position[axis if axis in plan.iterated else f"{axis}0"] = start
    return position


def _row_count(rows: dict[str, np.ndarray]) -> int:
    """How many rows a block's side arrays hold (its first per-row array's length)."""
    return int(next((v.shape[0] for k, v in rows.items() if not k.startswith(_META)), 0))


def _shown(keys: Any) -> list[str]:
    """Column names as a user gave them, without the side arrays' ``obs/`` or ``x/`` prefix."""
    return sorted(k.split("/", 1)[-1] for k in keys)


def _concatenate(plan: Plan, parts: list[tuple[Block, dict[str, np.ndarray]]]) -> dict[str, np.ndarray]:
    """Every block's per-row arrays, key by key in block order.

    Blocks without rows are left out (a frame without objects may name fewer
    columns) unless no block has rows: the first block's empty arrays are then the table's.

    Raises
    ------
    ContractError
        When two blocks with rows give different columns, or rows of different shapes under one key.
    """
    rows = [(b, {k: v for k, v in p.items() if not k.startswith(_META)}) for b, p in parts]
    full = [(b, p) for b, p in rows if _row_count(p)]
    if not full:
        return rows[0][1] if rows else {}
    first, where = full[0][1], plan.describe(full[0][0])
    for block, part in full[1:]:
        if part.keys() != first.keys():
            raise ContractError(
                f"{where} gives columns {_shown(first)} but {plan.describe(block)} gives {_shown(part)}"
            )
        for key, values in part.items():
            if values.shape[1:] != first[key].shape[1:]:
                raise ContractError(
                    f"{_shown([key])[0]!r} rows have shape {first[key].shape[1:]} in {where} "
                    f"but {values.shape[1:]} in {plan.describe(block)}"
                )
    return {k: np.concatenate([p[k] for _, p in full]) for k in sorted(first)}


def _checked_columns(columns: dict[str, Any], rows: int, what: str) -> dict[str, np.ndarray]:
    """A model's per-row columns as arrays, each 1-d of ``rows`` numbers or strings; ``label`` as int64.

    Raises
    ------
    ContractError
        Naming the first column that is not, with its shape or dtype.
    """
    checked = {}
    for name, value in columns.items():
        array = np.asarray(value)
        if array.shape != (rows,):
            raise ContractError(f"{what} column {name!r} must be 1-d of length {rows}, got shape {array.shape}")
        if array.dtype.kind not in "biufUS":
            raise ContractError(f"{what} column {name!r} must hold real numbers or strings, got dtype {array.dtype}")
        if name == "label" and array.size and array.dtype.kind not in "iu":
            raise ContractError(f"{what} column 'label' must hold integers (label ids), got dtype {array.dtype}")
        checked[name] = array.astype(np.int64) if name == "label" else array
    return checked


class TableSink(Sink):
    """Collects per-block rows and writes one AnnData table; a subclass says what a row is.

    Each block's rows are kept in its completion record as side arrays keyed
    ``obs/NAME`` (annotations) or however :meth:`table` reads them back; keys
    under ``meta/`` describe the block itself (column names, ``uns``).
    """

    folder = "tables"

    def check(self) -> None:
        """Any plan will do: each block's rows carry its position."""

    def prepare(self) -> None:
        """Nothing to create: rows wait in the blocks' records until :meth:`finalize`."""

    @abstractmethod
    def rows(self, block: Block, result: Any) -> dict[str, np.ndarray]:
        """One block's rows, as equal-length arrays keyed ``obs/NAME`` or by what :meth:`table` reads.

        Raises
        ------
        ContractError
            When the result is not what a model of this kind must return.
        """

    @abstractmethod
    def table(self, parts: list[tuple[Block, dict[str, np.ndarray]]]) -> _Table:
        """The table from every block's side arrays, in block order.

        Raises
        ------
        ContractError
            When the blocks' rows do not fit together (columns or widths that differ).
        """

    def write(self, block: Block, result: Any) -> None:
        """Keep one block's rows in its completion record."""
        rows = self.rows(block, result)
        self.state.record(block.index, {"rows": _row_count(rows)}, rows)

    def finalize(self, provenance: dict[str, Any]) -> dict[str, Any]:
        """Assemble every block's rows (in block order) and write the table, ``provenance`` in ``uns["nahual"]``."""
        t = self.table([(b, self.side_arrays(b)) for b in self.plan.blocks()])
        write_table(self.target.image_path, self.name, t.obs, t.x, t.var_names, provenance, obsm=t.obsm, uns=t.uns)
        return {"rows": int(t.x.shape[0])}


class FeatureSink(TableSink):
    """The features output: one row per object, its measurements in ``X`` (float64)."""

    def rows(self, block: Block, result: Any) -> dict[str, np.ndarray]:
        """The result's ``table`` columns, identifying ones to ``obs``, measurements to ``x/NAME``."""
        table = result.get("table") if isinstance(result, dict) else None
        if not isinstance(table, dict) or "label" not in table:
            raise ContractError("a features model must return {'table': {column: array}} with a 'label' column")
        label = np.asarray(table["label"])
        if label.ndim != 1:
            raise ContractError(f"feature column 'label' must be 1-d, got shape {label.shape}")
        rows = label.shape[0]
        columns = _checked_columns(table, rows, "feature")
        return {f"obs/{a}": np.full(rows, v) for a, v in _block_position(self.plan, block).items()} | {
            (f"obs/{k}" if k in _OBS_COLUMNS or v.dtype.kind in "US" else f"x/{k}"): v for k, v in columns.items()
        }

    def table(self, parts: list[tuple[Block, dict[str, np.ndarray]]]) -> _Table:
        """``obs`` as recorded, the ``x/NAME`` columns side by side in name order as ``X``."""
        merged = _concatenate(self.plan, parts)
        names = [k[2:] for k in sorted(merged) if k.startswith("x/")]
        columns = [merged[f"x/{n}"].astype(np.float64) for n in names]
        x = np.stack(columns, axis=1) if columns else np.zeros((_row_count(merged), 0))
        return _Table({k[4:]: v for k, v in merged.items() if k.startswith("obs/")}, x, names)


class EmbeddingSink(TableSink):
    """The embeddings output: one row per vector (float32), with its block's position and the model's ``obs``.

    A model returns ``{"embedding": (n, d)}`` and optionally ``obs`` (per-row
    columns: ``label``, ``bbox_<axis>_min``/``_max`` in the block's pixels...),
    ``columns`` (d names), ``patches`` ((n, ...) patch tokens) and ``uns`` (a
    JSON dict describing the model). The table is labels-linked as SpatialData
    tables are (``region`` column and ``uns["spatialdata_attrs"]``) when the run
    read a label image and every row is one of its objects (``label`` > 0).
    """

    def rows(self, block: Block, result: Any) -> dict[str, np.ndarray]:
        """The result's rows with the block's position, and what describes the block under ``meta/``."""
        embedding = result.get("embedding") if isinstance(result, dict) else None
        if embedding is None:
            raise ContractError("an embeddings model must return {'embedding': (n, d) array}")
        embedding = np.atleast_2d(np.asarray(embedding))
        if embedding.ndim != 2 or embedding.dtype.kind not in "biuf":
            raise ContractError(f"embedding must be (n, d) numbers, got {embedding.shape} {embedding.dtype}")
        count, width = embedding.shape
        position = {"block": block.index, **_block_position(self.plan, block)}
        own = {f"obs/{a}": np.full(count, v) for a, v in position.items()} | {"obs/row": np.arange(count)}
        model_obs = self._model_obs(block, result.get("obs"), count, set(position))
        arrays = own | {f"obs/{k}": v for k, v in model_obs.items()} | {"embedding": embedding.astype(np.float32)}
        if result.get("patches") is not None:
            patches = np.asarray(result["patches"])
            if patches.ndim < 2 or patches.shape[0] != count or patches.dtype.kind not in "biuf":
                raise ContractError(
                    f"patches must be (n, ...) numbers with n = {count}, one per embedding row; "
                    f"got shape {patches.shape} dtype {patches.dtype}"
                )
            arrays["patches"] = patches.astype(np.float32)
        return arrays | self._meta(result, width)

    def _model_obs(self, block: Block, obs: Any, count: int, position: set[str]) -> dict[str, np.ndarray]:
        """The model's obs columns, checked (else ContractError), box edges moved by the block's read origin
        to image pixels (the model was given the read box)."""
        if obs is None:
            return {}
        if not isinstance(obs, dict):
            raise ContractError(f"embeddings obs must be a dict of column name to (n,) array, got {type(obs).__name__}")
        columns = _checked_columns(obs, count, "obs")
        clash = sorted(set(columns) & (set(_OWN_OBS) | position))
        if clash:
            raise ContractError(f"obs columns {clash} are written by nahual (the block's position): rename them")
        axes = self.plan.axes
        for name, values in columns.items():
            edge = _BOX_EDGE.fullmatch(name)
            if edge is None:
                continue
            if edge.group(1) not in axes:
                raise ContractError(f"obs column {name!r} is along axis {edge.group(1)!r}; the input has axes {axes!r}")
            if values.dtype.kind not in "iuf":
                raise ContractError(f"obs column {name!r} must hold pixel numbers, got dtype {values.dtype}")
            columns[name] = values + block.read_start[axes.index(edge.group(1))]
        return columns

    def _meta(self, result: dict[str, Any], width: int) -> dict[str, np.ndarray]:
        """What describes the block, not its rows: column names, the model's ``uns`` (checked, else
        ContractError), the label image read."""
        meta = {}
        columns, uns, region = result.get("columns"), result.get("uns"), self._region()
        if columns is not None:
            names = list(columns) if isinstance(columns, (list, tuple, np.ndarray)) else None
            if names is None or len(set(names)) != width or not all(isinstance(n, str) for n in names):
                got = f"{len(names)} names" if names is not None else type(columns).__name__
                raise ContractError(f"embedding columns must be {width} distinct strings, one per column; got {got}")
            if names:
                meta["meta/columns"] = np.array(names, dtype=np.str_)
        if uns is not None:
            if not isinstance(uns, dict):
                raise ContractError(f"embeddings uns must be a JSON-able dict, got {type(uns).__name__}")
            try:
                meta["meta/uns"] = np.array(json.dumps(uns, sort_keys=True, allow_nan=False))
            except (TypeError, ValueError) as exc:
                raise ContractError(f"embeddings uns must be a JSON-able dict: {exc}") from exc
        if region is not None:
            meta["meta/region"] = np.array(region)
        return meta

    def _region(self) -> str | None:
        """``labels/NAME``, the label image the run reads (from its level array's path), or None without one."""
        root = getattr(self.labels.store, "root", None) if self.labels is not None else None
        where = os.path.relpath(os.path.join(root, self.labels.path), self.target.image_path) if root else ""
        parts = where.split(os.sep)
        return "/".join(parts[:2]) if len(parts) > 2 and parts[0] == "labels" else None

    def table(self, parts: list[tuple[Block, dict[str, np.ndarray]]]) -> _Table:
        """Vectors in ``X``, patch tokens in ``obsm``, the first block's ``uns``, linked to the label image read."""
        import pandas as pd

        width = self._width(parts)
        names, uns, region = (self._agreed(parts, key) for key in ("columns", "uns", "region"))
        merged = _concatenate(self.plan, parts)
        x = merged.pop("embedding")
        x = x if x.shape[0] else np.zeros((0, width), np.float32)
        obsm = {_PATCHES: merged.pop("patches")} if "patches" in merged else {}
        obs: dict[str, Any] = {k[4:]: v for k, v in merged.items()}
        extra = {} if uns is None else {"embedding": json.loads(uns.item())}
        if region is not None and "label" in obs and (obs["label"] > 0).all():
            name = str(region.item())
            obs["region"] = pd.Categorical([name] * x.shape[0], categories=[name])
            extra["spatialdata_attrs"] = {"region": name, "region_key": "region", "instance_key": "label"}
        var_names = [str(n) for n in names] if names is not None else [str(i) for i in range(width)]
        return _Table(obs, x, var_names, obsm, extra)

    def _width(self, parts: list[tuple[Block, dict[str, np.ndarray]]]) -> int:
        """d, the same in every block that knows it (has rows, or says d for none; else ContractError); 0 when none
        does."""
        known = [(b, p["embedding"].shape[1]) for b, p in parts if p["embedding"].shape != (0, 0)]
        for block, width in known[1:]:
            if width != known[0][1]:
                raise ContractError(
                    f"embedding widths differ: {self.plan.describe(known[0][0])} has d={known[0][1]}, "
                    f"{self.plan.describe(block)} has d={width}; a model must give every block vectors of one width"
                )
        return known[0][1] if known else 0

    def _agreed(self, parts: list[tuple[Block, dict[str, np.ndarray]]], key: str) -> np.ndarray | None:
        """``meta/KEY`` of the first block that has it (every other one that has it must agree, else
        ContractError); None when none has."""
        given = [(b, p[_META + key]) for b, p in parts if _META + key in p]
        for block, value in given[1:]:
            if not np.array_equal(value, given[0][1]):
                raise ContractError(
                    f"embedding {key} differ between {self.plan.describe(given[0][0])} and "
                    f"{self.plan.describe(block)}; a model must describe every block alike"
                )
        return given[0][1] if given else None
