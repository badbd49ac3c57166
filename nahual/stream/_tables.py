"""Features and embeddings outputs: AnnData tables at ``IMAGE/tables/NAME``.

Zarr streaming layer. Each block's rows are kept in its completion record; the
table is assembled once every block is finished (one row per object with
``label`` and the block's iterated indices such as ``t`` in ``obs`` and the
features in ``X``, or one row per embedding vector with the block's position
in ``obs``). Holding all rows in memory at the end is fine: they are small.
"""

from __future__ import annotations

import os
import warnings
from abc import abstractmethod
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


def write_table(
    image_path: str | os.PathLike,
    name: str,
    obs: dict[str, np.ndarray],
    x: np.ndarray,
    var_names: list[str],
    attrs: dict[str, Any] | None = None,
) -> str:
    """Write an AnnData table at ``IMAGE/tables/NAME`` in the image store's Zarr format.

    Parameters
    ----------
    image_path : str or path-like
        The image group.
    name : str
        The table's name.
    obs : dict of str to 1-d arrays
        Per-row annotations (``label``, ``t``...).
    x : numpy.ndarray
        (rows, columns) values.
    var_names : list of str
        Names of the columns of ``x``.
    attrs : dict, optional
        Provenance, stored in ``uns["nahual"]``.

    Returns
    -------
    str
        The path of the table.
    """
    import anndata
    import pandas as pd

    rows = x.shape[0]
    frame = pd.DataFrame({k: np.asarray(v) for k, v in obs.items()}, index=[str(i) for i in range(rows)])
    table = anndata.AnnData(X=x, obs=frame, var=pd.DataFrame(index=list(var_names)))
    table.uns["nahual"] = attrs or {}
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


def _block_position(plan: Plan, block: Block) -> dict[str, int]:
    """The block's index along each iterated axis and, for tiles, its origin."""
    position = {}
    for axis, start in zip(plan.axes, block.start, strict=True):
        if axis in plan.iterated or axis in plan.tile:
            position[axis if axis in plan.iterated else f"{axis}0"] = start
    return position


class TableSink(Sink):
    """Collects per-block rows and writes one AnnData table; a subclass says what a row is.

    Each block's rows are kept in its completion record under keys ``obs/NAME``
    (annotations) and whatever :meth:`matrix` reads back for ``X``.
    """

    folder = "tables"

    def check(self) -> None:
        """Any plan will do: each block's rows carry its position."""

    def prepare(self) -> None:
        """Nothing to create: rows wait in the blocks' records until :meth:`finalize`."""

    @abstractmethod
    def rows(self, block: Block, result: Any) -> dict[str, np.ndarray]:
        """One block's rows, as equal-length arrays keyed ``obs/NAME`` or by what :meth:`matrix` reads.

        Raises
        ------
        ContractError
            When the result is not what a model of this kind must return.
        """

    @abstractmethod
    def matrix(self, merged: dict[str, np.ndarray]) -> tuple[np.ndarray, list[str]]:
        """``X`` and its column names from every block's rows, concatenated key by key."""

    def write(self, block: Block, result: Any) -> None:
        """Keep one block's rows in its completion record."""
        rows = self.rows(block, result)
        self.state.record(block.index, {"rows": int(next(iter(rows.values())).shape[0])}, rows)

    def finalize(self, provenance: dict[str, Any]) -> dict[str, Any]:
        """Concatenate every block's rows (in block order) and write the table."""
        parts = [self.side_arrays(b) for b in self.plan.blocks()]
        parts = [p for p in parts if p and next(iter(p.values())).shape[0]]
        keys = sorted({k for p in parts for k in p})
        merged = {k: np.concatenate([p[k] for p in parts if k in p]) for k in keys}
        obs = {k[4:]: v for k, v in merged.items() if k.startswith("obs/")}
        x, names = self.matrix(merged)
        write_table(self.target.image_path, self.name, obs, x, names, provenance)
        return {"rows": int(x.shape[0])}


class FeatureSink(TableSink):
    """The features output: one row per object, its measurements in ``X`` (float64)."""

    def rows(self, block: Block, result: Any) -> dict[str, np.ndarray]:
        """The result's ``table`` columns, identifying ones to ``obs``, measurements to ``x/NAME``."""
        table = result.get("table") if isinstance(result, dict) else None
        if not isinstance(table, dict) or "label" not in table:
            raise ContractError("a features model must return {'table': {column: array}} with a 'label' column")
        columns = {k: np.asarray(v) for k, v in table.items()}
        rows = columns["label"].shape[0] if columns["label"].ndim == 1 else -1
        if any(v.shape != (rows,) for v in columns.values()):
            raise ContractError(f"feature columns must be 1-d of one length, got {[v.shape for v in columns.values()]}")
        odd = sorted(k for k, v in columns.items() if v.dtype.kind not in "biufUS")
        if odd:
            raise ContractError(f"feature columns must hold numbers or strings; {odd} do not")
        return {f"obs/{a}": np.full(rows, v) for a, v in _block_position(self.plan, block).items()} | {
            (f"obs/{k}" if k in _OBS_COLUMNS or v.dtype.kind in "US" else f"x/{k}"): v for k, v in columns.items()
        }

    def matrix(self, merged: dict[str, np.ndarray]) -> tuple[np.ndarray, list[str]]:
        """The ``x/NAME`` columns side by side, in name order."""
        names = [k[2:] for k in sorted(merged) if k.startswith("x/")]
        x = np.stack([merged[f"x/{n}"].astype(np.float64) for n in names], axis=1) if names else np.zeros((0, 0))
        return x, names


class EmbeddingSink(TableSink):
    """The embeddings output: one row per vector, with its block and tile origin in ``obs`` (float32)."""

    def rows(self, block: Block, result: Any) -> dict[str, np.ndarray]:
        """The result's ``embedding`` rows, each with its block, position and row number."""
        embedding = result.get("embedding") if isinstance(result, dict) else None
        if embedding is None:
            raise ContractError("an embeddings model must return {'embedding': (n, d) array}")
        embedding = np.atleast_2d(np.asarray(embedding, dtype=np.float32))
        if embedding.ndim != 2:
            raise ContractError(f"embedding must be (n, d), got shape {embedding.shape}")
        rows = embedding.shape[0]
        position = {"block": block.index, **_block_position(self.plan, block)}
        return {f"obs/{a}": np.full(rows, v) for a, v in position.items()} | {
            "obs/row": np.arange(rows),
            "embedding": embedding,
        }

    def matrix(self, merged: dict[str, np.ndarray]) -> tuple[np.ndarray, list[str]]:
        """The vectors, one per row; columns named by their index."""
        x = merged.get("embedding", np.zeros((0, 0), np.float32))
        return x, [str(i) for i in range(x.shape[1])]
