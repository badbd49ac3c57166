"""A job: one output of one model on one input, with its plan, state and writer.

Zarr streaming layer. :func:`make_job` resolves the inputs (an image, a label
image, or both), checks them against the model's contract and plans the
blocks, all before the first request, so that a mismatch the user can fix is
reported at once: a zero-size input, or complex or boolean pixels for a model
that declares a real dtype, are refused there. :func:`open_job` rebuilds a
job from its recorded state, for ``nahual stitch`` and ``nahual verify``.
The writer of each output kind is the :class:`Sink` subclass that
:data:`SINKS` maps it to.
"""

from __future__ import annotations

import datetime
import functools
import os
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from typing import Any, Protocol

import numpy as np
import zarr

from ..errors import ConfigError, ContractError
from ..model import OUTPUT_KINDS, Contract
from ._arraysink import ArraySink
from ._cellsink import CellSink
from ._labels import LabelSink
from ._ome import Source, Target, open_source
from ._options import StreamOptions
from ._plan import Block, Plan, make_plan
from ._resume import RunState, input_stamp
from ._sink import Sink
from ._tables import EmbeddingSink, FeatureSink
from ._tracksink import TrackSink

__all__ = ["SINKS", "STREAM_KINDS", "Handle", "Job", "make_job", "open_job"]

#: The writer of each output kind the streaming layer can write.
SINKS: dict[str, type[Sink]] = {
    "labels": LabelSink,
    "tracks": TrackSink,
    "features": FeatureSink,
    "embeddings": EmbeddingSink,
    "cells": CellSink,
    "array": ArraySink,
}

#: Output kinds the streaming layer can write.
STREAM_KINDS = tuple(SINKS)


class Handle(Protocol):
    """What a run needs of a model handle (``Client.load``'s, or an in-process one)."""

    contract: Contract
    model: str
    params: dict[str, Any]

    def __call__(self, payload: Any) -> Any:
        """Process one payload; returns the result or raises the error."""
        ...


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
    sink: Sink
    image: zarr.Array | None = None
    labels: zarr.Array | None = None


@functools.cache
def _version() -> str:
    """nahual's installed version, for provenance (looked up once: the lookup reads package metadata)."""
    try:
        return version("nahual")
    except PackageNotFoundError:
        return "unknown"


def _server_provenance(info: dict[str, Any] | None, model: str) -> dict[str, Any]:
    """The server's ``info`` with, of the models it could load, only the one that ran (kept small for tables)."""
    if not info:
        return {}
    kept = {key: value for key, value in info.items() if key != "models"}
    entry = (info.get("models") or {}).get(model)
    if entry is not None:
        kept["models"] = {model: entry}
    return kept


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


def _check_pixels(contract: Contract, source: Source, image: zarr.Array | None) -> None:
    """Refuse, before any state, an input with nothing in it, or pixels the model's dtype would silently change.

    Raises
    ------
    ContractError
        Naming the input, its shape or dtype, and what the model takes.
    """
    if 0 in source.shape:
        raise ContractError(
            f"{source.path} has a zero-size dimension (shape {source.shape}, axes {source.axes!r}): nothing to process"
        )
    if image is None or not contract.dtype:
        return
    have, want = np.dtype(image.dtype), np.dtype(contract.dtype)
    if have.kind == "c" and want.kind != "c":
        raise ContractError(
            f"{source.path} is complex ({have}) but the model takes {want}: the imaginary part would be dropped; "
            "write the part you mean (real, imaginary or magnitude) as an image first"
        )
    if have.kind == "b" and want.kind != "b":
        raise ContractError(
            f"{source.path} is boolean but the model takes {want}: a mask is not an image; "
            "write it as uint8 first if it is what the model should see"
        )


def make_job(
    handle: Handle,
    input: str | os.PathLike,
    output: str,
    options: StreamOptions,
    *,
    kind: str | None,
    axes: str | None,
    labels: str | None,
    info: dict[str, Any] | None,
) -> Job:
    """Open the input, check it against the model, plan it, and record (or check) the run.

    ``options`` gives the level read, the plan's tile, halo and channel, and the shard.
    """
    contract: Contract = handle.contract
    kind = kind or contract.output
    if kind not in STREAM_KINDS:
        choice = f"one of {STREAM_KINDS}" if kind in OUTPUT_KINDS else f"one of {STREAM_KINDS}, got {kind!r}"
        raise ConfigError(f"kind must be {choice} (the model declares {contract.output!r})")
    level = options.level
    source = open_source(input, axes=axes, level=level)
    primary, image, label_array = _inputs(contract, source, labels, level)
    _check_pixels(contract, primary, image)
    if image is not None and label_array is not None:
        want = tuple(n for a, n in zip(primary.axes, primary.shape, strict=True) if a != "c")
        if tuple(label_array.shape) != want:
            raise ContractError(f"labels have shape {tuple(label_array.shape)} but the image needs {want}")
    chunks = tuple(primary.array.chunks)
    plan = make_plan(contract, kind, primary.axes, primary.shape, chunks, options)
    target = primary.target()
    sink_class = SINKS[kind]
    state = RunState(target.image_path, output, target.zarr_format, sink_class.folder)
    identity = {
        "model": handle.model,
        "params": dict(handle.params),
        "kind": kind,
        "plan": plan.to_dict(),
        "level": level,
        "input": os.path.relpath(source.path, source.image_path),
        "labels": labels or "",
        "scale": list(target.scale),
        "zarr_format": target.zarr_format,
        "records": sink_class.records,
    }
    provenance = {
        "model": handle.model,
        "params": dict(handle.params),
        "kind": kind,
        "server": _server_provenance(info, handle.model),
        "nahual_version": _version(),
        "input": os.fspath(input),
        "input_shape": list(primary.shape),
        "axes": primary.axes,
        "model_axes": plan.model_axes,
        "tile": plan.tile,
        "halo": plan.halo,
        "level": level,
        "channel": plan.channel,
        **({"about": dict(contract.about)} if contract.about else {}),
        "started": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
    }
    sink = sink_class(target, plan, state, label_array)
    sink.check()  # before anything is written
    state.begin(identity, provenance, [input_stamp(a) for a in (image, label_array) if a is not None])
    if state.final() is None:
        sink.prepare()
    blocks = plan.blocks()
    index, count = options.shard
    mine = [b for b in blocks if b.index % count == index]
    return Job(contract, plan, blocks, mine, (index, count), state, target, sink, image, label_array)


def open_job(image_path: str, name: str) -> Job:
    """Rebuild a job from the state recorded by :func:`make_job` (to finish it, or to verify its blocks).

    Raises
    ------
    ConfigError
        When no run of ``name`` has state (never started, or complete).
    """
    probe = RunState(image_path, name)
    identity = probe.identity()
    if identity is None:
        raise ConfigError(f"no run of {name!r} was started in {image_path} (no run state in {probe.path})")
    sink_class = SINKS[identity["kind"]]
    if identity["records"] != sink_class.records:
        raise ConfigError(
            f"the run of {name!r} was recorded by another nahual (block records of layout "
            f"{identity['records']}, this one reads {sink_class.records}); {probe.reset_hint('start it over')}"
        )
    state = RunState(image_path, name, identity["zarr_format"], sink_class.folder)
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
    sink = sink_class(target, plan, state)
    return Job(Contract(), plan, blocks, blocks, (0, 1), state, target, sink)
