"""Stream Zarr image stores through model servers (the Zarr streaming layer).

Needs the ``zarr`` extra (zarr, geff, anndata); ``import nahual`` alone does not
import this package. See ``docs/streaming.md``.
"""

from __future__ import annotations

from ._ctc import export_ctc
from ._jobs import SINKS, STREAM_KINDS
from ._local import LocalModel
from ._ome import Source, open_source, output_group
from ._omewrite import write_image, write_labels
from ._options import DEFAULT_TILE, StreamOptions, parse_shard, parse_tile
from ._plan import Block, Plan, make_plan
from ._runner import Worker, apply, finish
from ._sink import Sink
from ._tables import write_table
from ._tracks import read_tracks, write_tracks
from ._verify import Damage, Verified, verify

__all__ = [
    "DEFAULT_TILE",
    "SINKS",
    "STREAM_KINDS",
    "Block",
    "Damage",
    "LocalModel",
    "Plan",
    "Sink",
    "Source",
    "StreamOptions",
    "Verified",
    "Worker",
    "apply",
    "export_ctc",
    "finish",
    "make_plan",
    "open_source",
    "output_group",
    "parse_shard",
    "parse_tile",
    "read_tracks",
    "write_image",
    "write_labels",
    "write_table",
    "verify",
    "write_tracks",
]
