"""Per-run state next to the outputs: the run's identity, per-block completion records.

Zarr streaming layer. The state of output ``NAME`` of image ``IMAGE`` lives in
``IMAGE/.nahual/NAME/`` (a Zarr group, so that listing the image does not
warn, that no OME validator looks into):

- ``run.json``: what was run (model, params, kind, plan); a second run with a
  different identity is refused instead of mixing two results;
- ``raw``: the intermediate label array (block-local ids plus a fixed offset);
- ``blocks/NNNNNNNN.json``: the completion record of one block, written last,
  after the block's chunks and its ``.npz`` side data, each through a temporary
  file and ``os.replace`` so that a SIGKILL leaves a block either recorded or not;
- ``final.json``: written when the outputs are complete.

Only local filesystem stores are supported for the state.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from typing import Any

import numpy as np
import zarr

from ..errors import ConfigError

__all__ = ["RunState", "atomic_write"]


def atomic_write(path: str, data: bytes) -> None:
    """Write a file through a temporary file in the same folder and ``os.replace``."""
    folder = os.path.dirname(path)
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".tmp-")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _canonical(value: Any) -> Any:
    """JSON round trip, so that tuples and lists compare equal."""
    return json.loads(json.dumps(value, sort_keys=True))


class RunState:
    """The state folder of one output of one image.

    Parameters
    ----------
    image_path : str
        The image group the output belongs to.
    name : str
        The output's name.
    zarr_format : int
        Format of the image's store (the state group uses the same).
    """

    def __init__(self, image_path: str, name: str, zarr_format: int = 3) -> None:
        if not name or "/" in name or name.startswith("."):
            raise ConfigError(f"output names are plain names without '/' or a leading '.', got {name!r}")
        self.image_path = os.fspath(image_path)
        self.name = name
        self.zarr_format = zarr_format
        self.path = os.path.join(self.image_path, ".nahual", name)
        self.blocks_dir = os.path.join(self.path, "blocks")

    def _ensure_groups(self) -> None:
        for sub in (os.path.join(self.image_path, ".nahual"), self.path):
            zarr.open_group(sub, mode="a", zarr_format=self.zarr_format)

    def begin(self, identity: dict[str, Any], provenance: dict[str, Any] | None = None) -> None:
        """Record the run's identity (and provenance), or check it against the one recorded.

        Raises
        ------
        ConfigError
            When the output exists from a run with another model, params, kind or plan.
        """
        identity = _canonical(identity)
        recorded = self.identity()
        if recorded is None:
            self._ensure_groups()
            record = {"identity": identity, "provenance": _canonical(provenance or {})}
            atomic_write(os.path.join(self.path, "run.json"), json.dumps(record, sort_keys=True).encode())
            return
        if recorded != identity:
            diff = sorted(k for k in set(recorded) | set(identity) if recorded.get(k) != identity.get(k))
            raise ConfigError(
                f"output {self.name!r} of {self.image_path} was started by a different run ({', '.join(diff)} differ); "
                f"remove {self.path} and the output to start over"
            )

    def _run_record(self) -> dict[str, Any] | None:
        try:
            with open(os.path.join(self.path, "run.json"), "rb") as f:
                return json.load(f)
        except FileNotFoundError:
            return None

    def identity(self) -> dict[str, Any] | None:
        """The recorded identity, or None before the first run."""
        record = self._run_record()
        return None if record is None else record["identity"]

    def provenance(self) -> dict[str, Any]:
        """The provenance recorded by the first run."""
        record = self._run_record()
        return {} if record is None else record["provenance"]

    def final(self) -> dict[str, Any] | None:
        """The summary recorded when the outputs were completed, or None."""
        try:
            with open(os.path.join(self.path, "final.json"), "rb") as f:
                return json.load(f)
        except FileNotFoundError:
            return None

    def raw_path(self) -> str:
        """Path of the intermediate label array."""
        return os.path.join(self.path, "raw")

    def _block_file(self, index: int, ext: str) -> str:
        return os.path.join(self.blocks_dir, f"{index:08d}.{ext}")

    def finished(self) -> set[int]:
        """Indices of the blocks recorded as complete."""
        try:
            names = os.listdir(self.blocks_dir)
        except FileNotFoundError:
            return set()
        return {int(n[:-5]) for n in names if n.endswith(".json") and not n.startswith(".")}

    def record(self, index: int, info: dict[str, Any], arrays: dict[str, np.ndarray] | None = None) -> None:
        """Mark a block complete, with small JSON ``info`` and optional side arrays (written first)."""
        if arrays:
            from io import BytesIO

            buffer = BytesIO()
            np.savez_compressed(buffer, **arrays)
            atomic_write(self._block_file(index, "npz"), buffer.getvalue())
        atomic_write(self._block_file(index, "json"), json.dumps(info, sort_keys=True).encode())

    def info(self, index: int) -> dict[str, Any]:
        """The JSON record of a finished block."""
        with open(self._block_file(index, "json"), "rb") as f:
            return json.load(f)

    def arrays(self, index: int) -> dict[str, np.ndarray]:
        """The side arrays of a finished block (empty when it has none)."""
        try:
            with np.load(self._block_file(index, "npz"), allow_pickle=False) as data:
                return {key: data[key] for key in data.files}
        except FileNotFoundError:
            return {}

    def mark_final(self, info: dict[str, Any]) -> None:
        """Record that the outputs are complete, then drop the intermediate data."""
        atomic_write(os.path.join(self.path, "final.json"), json.dumps(info, sort_keys=True).encode())
        shutil.rmtree(self.raw_path(), ignore_errors=True)
        for name in os.listdir(self.blocks_dir) if os.path.isdir(self.blocks_dir) else ():
            if name.endswith(".npz"):
                os.unlink(os.path.join(self.blocks_dir, name))
