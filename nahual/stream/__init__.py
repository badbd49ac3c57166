"""Stream Zarr image stores through model servers (the Zarr streaming layer).

Needs the ``zarr`` extra (zarr, geff, anndata); ``import nahual`` alone does not
import this package. See ``docs/streaming.md``.
"""

from __future__ import annotations

from ._ctc import export_ctc
from ._jobs import STREAM_KINDS
from ._local import LocalModel
from ._ome import Source, open_source, write_image, write_labels
from ._plan import Block, Plan, make_plan, parse_shard, parse_tile
from ._runner import Worker, apply, finish
from ._tables import write_table
from ._tracks import read_tracks, write_tracks

__all__ = [
    "STREAM_KINDS",
    "Block",
    "LocalModel",
    "Plan",
    "Source",
    "Worker",
    "apply",
    "export_ctc",
    "finish",
    "make_plan",
    "open_source",
    "parse_shard",
    "parse_tile",
    "read_tracks",
    "write_image",
    "write_labels",
    "write_table",
    "write_tracks",
]
