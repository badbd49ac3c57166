"""A job: one output of one model on one input, with its plan, state and writer.

Zarr streaming layer. :func:`make_job` resolves the inputs (an image, a label
image, or both), checks them against the model's contract and plans the
blocks, all before the first request, so that a mismatch the user can fix is
reported at once. :func:`open_job` rebuilds a job from its recorded state,
for ``nahual stitch``.
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass
from typing import Any

import zarr

from ..errors import ConfigError, ContractError
from ..model import OUTPUT_KINDS, Contract
from ._labels import LabelSink
from ._ome import Source, Target, open_source
from ._payload import build_payload
from ._plan import Block, Plan, make_plan, parse_shard, parse_tile
from ._resume import RunState
from ._tables import TableSink
from ._tracksink import TrackSink

__all__ = ["STREAM_KINDS", "Job", "make_job", "open_job"]

#: Output kinds the streaming layer can write.
STREAM_KINDS = ("labels", "tracks", "features", "embeddings")


@dataclass
class Job:
    """Everything a run of one output needs."""

    contract: Contract
    plan: Plan
    blocks: list[Block]
    mine: list[Block]
    shard: tuple[int, int]
    state: RunState
    target: Target
    sink: Any
    image: zarr.Array | None = None
    labels: zarr.Array | None = None

    def payload(self, block: Block) -> dict[str, Any]:
        """Read one block's payload (called from reader threads)."""
        return build_payload(self.contract, self.plan, block, self.image, self.labels)


def _version() -> str:
    try:
        from .. import __version__

        return str(__version__)
    except ImportError:
        from importlib.metadata import PackageNotFoundError, version

        try:
            return version("nahual")
        except PackageNotFoundError:
            return "unknown"


def _sink(kind: str, target: Target, plan: Plan, state: RunState, labels: zarr.Array | None) -> Any:
    if kind == "labels":
        return LabelSink(target, plan, state)
    if kind == "tracks":
        return TrackSink(target, plan, state, labels)
    return TableSink(target, plan, state, kind)


def _inputs(
    contract: Contract, source: Source, labels: str | None, level: int
) -> tuple[Source, zarr.Array | None, zarr.Array | None]:
    """The primary source (planned on), the image array and the label array to send."""
    wants_image, wants_labels = "image" in contract.inputs, "labels" in contract.inputs
    if source.label_name is not None:
        if not wants_image:
            return source, None, source.array
        image = open_source(source.image_path, level=level)
        return image, image.array, source.array
    label_array = None
    if wants_labels:
        if labels is None:
            raise ConfigError("the model takes labels: give a label image IMAGE/labels/NAME as input or --labels NAME")
        label_array = open_source(os.path.join(source.image_path, "labels", labels), level=level).array
    if not wants_image and label_array is None:
        raise ContractError(f"the model takes {list(contract.inputs)}, which this input cannot give")
    return source, source.array if wants_image else None, label_array


def make_job(
    handle: Any,
    input: str | os.PathLike,
    output: str,
    *,
    kind: str | None,
    axes: str | None,
    level: int,
    labels: str | None,
    tile: str | dict[str, int] | None,
    halo: int | None,
    channel: int | None,
    shard: str | tuple[int, int] | None,
    info: dict[str, Any] | None,
) -> Job:
    """Open the input, check it against the model, plan it, and record (or check) the run."""
    contract: Contract = handle.contract
    kind = kind or contract.output
    if kind not in STREAM_KINDS:
        choice = f"one of {STREAM_KINDS}" if kind in OUTPUT_KINDS else f"one of {STREAM_KINDS}, got {kind!r}"
        raise ConfigError(f"--kind must be {choice} (the model declares {contract.output!r})")
    source = open_source(input, axes=axes, level=level)
    primary, image, label_array = _inputs(contract, source, labels, level)
    if image is not None and label_array is not None:
        want = tuple(n for a, n in zip(primary.axes, primary.shape, strict=True) if a != "c")
        if tuple(label_array.shape) != want:
            raise ContractError(f"labels have shape {tuple(label_array.shape)} but the image needs {want}")
    chunks = tuple(primary.array.chunks)
    plan = make_plan(contract, kind, primary.axes, primary.shape, chunks, parse_tile(tile), halo, channel)
    target = primary.target()
    state = RunState(target.image_path, output, target.zarr_format)
    identity = {
        "model": handle.model,
        "params": dict(handle.params),
        "kind": kind,
        "plan": plan.to_dict(),
        "level": level,
        "input": source.label_name or "",
        "labels": labels or "",
        "scale": list(target.scale),
        "zarr_format": target.zarr_format,
    }
    provenance = {
        "model": handle.model,
        "params": dict(handle.params),
        "kind": kind,
        "server": info or {},
        "nahual_version": _version(),
        "input": os.fspath(input),
        "input_shape": list(primary.shape),
        "axes": primary.axes,
        "model_axes": plan.model_axes,
        "tile": plan.tile,
        "halo": plan.halo,
        "level": level,
        "channel": channel,
        "started": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
    }
    sink = _sink(kind, target, plan, state, label_array)
    sink.check()  # before anything is written
    state.begin(identity, provenance)
    sink.prepare()
    blocks = plan.blocks()
    index, count = parse_shard(shard)
    mine = [b for b in blocks if b.index % count == index]
    return Job(contract, plan, blocks, mine, (index, count), state, target, sink, image, label_array)


def open_job(image_path: str, name: str) -> Job:
    """Rebuild a job from the state recorded by :func:`make_job` (to finish it)."""
    probe = RunState(image_path, name)
    identity = probe.identity()
    if identity is None:
        raise ConfigError(f"no run of {name!r} was started in {image_path}")
    state = RunState(image_path, name, identity["zarr_format"])
    p = identity["plan"]
    plan = Plan(
        p["axes"],
        tuple(p["shape"]),
        p["model_axes"],
        p["iterated"],
        p["tile"],
        p["halo"],
        p["channel"],
        tuple(p["chunks"]),
    )
    target = Target(image_path, identity["zarr_format"], tuple(identity["scale"]))
    blocks = plan.blocks()
    return Job(
        Contract(), plan, blocks, blocks, (0, 1), state, target, _sink(identity["kind"], target, plan, state, None)
    )
