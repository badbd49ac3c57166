"""Per-run state beside the store: the run's identity and per-block completion records with digests.

Zarr streaming layer. Zarr lists every entry of a group's folder and warns
about anything that is not an array or a group, so the state of output
``NAME`` of an image lives outside the Zarr hierarchy, in a folder beside the
store's root: ``STORE.nahual/NAME/`` for an image at the root of
``STORE``, ``STORE.nahual/PATH/NAME/`` for one at ``PATH`` inside it.

- ``run.json``: what was run (model, params, kind, plan; a second run with
  another identity is refused instead of mixing two results) and a stamp of
  the input arrays (size and mtime of their metadata), so that state left
  by an earlier input (a store written anew) is dropped, not resumed;
- ``blocks/*.journal``: the completion records of the blocks, one entry per
  block appended to a journal per writing process (:mod:`._journal`), with the
  CRC-32 of what the block wrote and its side arrays; written last, so that a
  SIGKILL leaves a block either recorded or not.

Once the output is complete its group (``labels/NAME`` or ``tables/NAME``)
carries the run's record in its ``nahual`` attributes, next to the
provenance, and the state folder is removed. Only local filesystem stores
are supported for the state.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Collection
from typing import Any

import numpy as np
import zarr

from ..errors import ConfigError
from ._integrity import digest
from ._journal import Entry, Journal

__all__ = ["STATE_SUFFIX", "RunState", "atomic_write", "input_stamp", "state_root"]

#: Appended to a store's root folder to name the folder of its run states.
STATE_SUFFIX = ".nahual"

#: The identity's keys that say how a run records its blocks, not what it computes, with the value of runs
#: recorded before the key existed: a run in progress must match them; a complete output, whose records are
#: gone, is the same output whatever they were.
RECORDING = {"records": 1}

#: Where outputs keep the run record once complete (``tracks`` record theirs on their masks, ``labels/NAME``).
RECORD_FOLDERS = ("labels", "tables", "predictions")


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


def _is_node(folder: str) -> bool:
    return any(os.path.isfile(os.path.join(folder, meta)) for meta in ("zarr.json", ".zgroup", ".zarray"))


def state_root(image_path: str | os.PathLike) -> tuple[str, str]:
    """The folder of the run states of the store that holds ``image_path``, and the image's path inside it.

    The store's root is the topmost folder above the image that is still a Zarr node.
    """
    image = os.path.abspath(os.fspath(image_path))
    root = image
    while os.path.dirname(root) != root and _is_node(os.path.dirname(root)):
        root = os.path.dirname(root)
    inside = os.path.relpath(image, root)
    return root + STATE_SUFFIX, "" if inside == "." else inside


def input_stamp(array: zarr.Array | None) -> list[int]:
    """``[size, mtime_ns]`` of an array's metadata file: it changes when the array is written anew.

    Empty for arrays outside a local store (no stamp, no check).
    """
    root = getattr(array.store, "root", None) if array is not None else None
    if root is None:
        return []
    meta = "zarr.json" if int(array.metadata.zarr_format) == 3 else ".zarray"
    try:
        stat = os.stat(os.path.join(os.fspath(root), array.path, meta))
    except FileNotFoundError:
        return []
    return [stat.st_size, stat.st_mtime_ns]


class RunState:
    """The state folder of one output of one image, and the record its output keeps when complete.

    Parameters
    ----------
    image_path : str
        The image group the output belongs to.
    name : str
        The output's name.
    zarr_format : int
        Format of the image's store (the intermediate array uses the same).
    folder : str, optional
        ``labels`` or ``tables``: the group of the output that keeps the run's record
        once complete; None looks in both.
    """

    def __init__(self, image_path: str, name: str, zarr_format: int = 3, folder: str | None = None) -> None:
        if not name or "/" in name or name.startswith("."):
            raise ConfigError(f"output names are plain names without '/' or a leading '.', got {name!r}")
        self.image_path = os.fspath(image_path)
        self.name = name
        self.zarr_format = zarr_format
        self.folders = (folder,) if folder else RECORD_FOLDERS
        self.root, inside = state_root(self.image_path)
        self.path = os.path.join(self.root, inside, name)
        self.blocks_dir = os.path.join(self.path, "blocks")
        self.journal = Journal(self.blocks_dir)
        self._expected: tuple[Any, Any] | None = None

    # ---------------------------------------------------------------- the run

    def begin(self, identity: dict[str, Any], provenance: dict[str, Any], inputs: list[list[int]]) -> None:
        """Record the run's identity, provenance and input stamps, or check them against what is recorded.

        An output completed by this run is left as it is (:meth:`final` then returns its summary); one
        completed from an earlier input is made again. State left by an earlier input is dropped.

        Raises
        ------
        ConfigError
            When the output or its state comes from a run with another model, params, kind or plan.
        """
        identity, inputs = _canonical(identity), _canonical(inputs)
        self._expected = (identity, inputs)
        done = self._output_record()
        output = _without_recording(identity)  # a complete output's records are gone
        if done is not None and (made := _without_recording(done["identity"])) != output:
            raise ConfigError(
                f"output {self.name!r} of {self.image_path} was made by a different run "
                f"({_differ(made, output)} differ); {self.reset_hint('make it again')}"
            )
        if done is not None and done["inputs"] == inputs:
            self._remove()  # what a kill between recording and removing left
            return
        record = self._run_record()
        if record is not None and record.get("inputs") != inputs:
            self._remove()
            record = None
        if record is None:
            record = {"identity": identity, "provenance": _canonical(provenance), "inputs": inputs}
            atomic_write(os.path.join(self.path, "run.json"), json.dumps(record, sort_keys=True).encode())
        elif (started := _with_recording(record["identity"])) != identity:
            raise ConfigError(
                f"output {self.name!r} of {self.image_path} was started by a different run "
                f"({_differ(started, identity)} differ); {self.reset_hint('start over')}"
            )

    def reset_hint(self, what: str) -> str:
        """What to run to drop this state, for messages: ``run nahual reset IMAGE NAME to WHAT``."""
        return f"run nahual reset {self.image_path} {self.name} to {what}"

    def _run_record(self) -> dict[str, Any] | None:
        try:
            with open(os.path.join(self.path, "run.json"), "rb") as f:
                return json.load(f)
        except FileNotFoundError:
            return None

    def identity(self) -> dict[str, Any] | None:
        """The recorded identity, or None before the first run."""
        record = self._run_record()
        return None if record is None else _with_recording(record["identity"])

    def provenance(self) -> dict[str, Any]:
        """The provenance recorded by the first run."""
        record = self._run_record()
        return {} if record is None else record["provenance"]

    # ---------------------------------------------------------------- completion

    def _output_record(self) -> dict[str, Any] | None:
        """The run record a complete output keeps, with the ``folder`` it was found in."""
        for folder in self.folders:
            path = os.path.join(self.image_path, folder, self.name)
            if not os.path.isdir(path):
                continue
            try:
                attrs = dict(zarr.open_group(path, mode="r").attrs)
            except (FileNotFoundError, zarr.errors.NodeNotFoundError, zarr.errors.ContainsArrayError):
                continue
            run = (attrs.get("nahual") or {}).get("run")
            if isinstance(run, dict) and {"identity", "inputs", "final"} <= set(run):
                return {**run, "folder": folder}
        return None

    def final(self) -> dict[str, Any] | None:
        """The summary of the output once complete (from this run's inputs), or None."""
        done = self._output_record()
        if done is None:
            return None
        expected = self._expected
        if expected is None:
            record = self._run_record()
            expected = None if record is None else (record["identity"], record.get("inputs"))
        if expected is None:
            return done["final"]
        identity, inputs = expected
        same = _without_recording(done["identity"]) == _without_recording(identity) and done["inputs"] == inputs
        return done["final"] if same else None

    def mark_final(self, summary: dict[str, Any]) -> None:
        """Record in the output's group (``labels/NAME``...) that it is complete, then remove the state folder."""
        record = self._run_record()
        if record is None:
            raise ConfigError(f"no run of {self.name!r} was started in {self.image_path}")
        group = zarr.open_group(os.path.join(self.image_path, self.folders[0], self.name), mode="r+")
        run = {"identity": record["identity"], "inputs": record.get("inputs", []), "final": _canonical(summary)}
        group.attrs["nahual"] = {**dict(group.attrs.get("nahual") or {}), "run": run}
        self._remove()

    def reset(self) -> None:
        """Forget this output's run, so that the next run starts it afresh (``nahual reset``; the workflow
        calls it when a step's params or inputs changed).

        The run record a complete output keeps and the state folder of an unfinished run are removed; the
        output itself stays until the next run replaces it.
        """
        done = self._output_record()
        if done is not None:
            group = zarr.open_group(os.path.join(self.image_path, done["folder"], self.name), mode="r+")
            group.attrs["nahual"] = {k: v for k, v in dict(group.attrs["nahual"]).items() if k != "run"}
        self._remove()

    def _remove(self) -> None:
        """Remove the state folder, and the folders above it up to the store's state folder once empty."""
        shutil.rmtree(self.path, ignore_errors=True)
        self.journal = Journal(self.blocks_dir)  # a run after this starts a journal afresh
        folder = os.path.dirname(self.path)
        while folder.startswith(self.root) and os.path.isdir(folder):
            try:
                os.rmdir(folder)
            except OSError:
                break
            folder = os.path.dirname(folder)

    # ---------------------------------------------------------------- blocks

    def finished(self) -> set[int]:
        """Indices of the blocks recorded as complete (read afresh: other shards may be recording)."""
        return set(self.journal.entries(refresh=True))

    def record(
        self,
        index: int,
        info: dict[str, Any],
        arrays: dict[str, np.ndarray] | None = None,
        data: np.ndarray | None = None,
    ) -> None:
        """Mark a block complete: small JSON ``info``, optional side ``arrays`` and the digest of ``data``,
        what the block wrote into the intermediate array."""
        info = dict(info)
        if data is not None:
            info["digest"] = digest(data)
        self.journal.record(index, info, arrays)

    def forget(self, index: int) -> None:
        """Drop a block's record, so that the run does it again."""
        self.journal.forget(index)

    def _entry(self, index: int) -> Entry:
        entry = self.journal.entries().get(index) or self.journal.entries(refresh=True).get(index)
        if entry is None:
            raise ConfigError(f"block {index} of {self.name!r} is not recorded in {self.blocks_dir}")
        return entry

    def info(self, index: int) -> dict[str, Any]:
        """The JSON record of a finished block."""
        return self._entry(index).info

    def side_damage(self, index: int) -> str | None:
        """What is wrong with a finished block's side data (missing, or not what was recorded), or None."""
        return self._entry(index).damage()

    def side_data(self, index: int) -> tuple[str, int, int]:
        """The journal holding a finished block's side data, and the data's start and stop in it."""
        entry = self._entry(index)
        return entry.path, entry.data_start, entry.data_start + entry.data_length

    def arrays(self, index: int, names: Collection[str] = ()) -> dict[str, np.ndarray]:
        """The side arrays of a finished block, those of ``names`` or all (empty when it has none).

        Raises
        ------
        DamagedRecord
            When its side data is missing or not what was recorded.
        """
        return self._entry(index).read(names)

    @staticmethod
    def outputs(image_path: str) -> list[str]:
        """Names of the outputs of an image that have run state (runs not complete)."""
        root, inside = state_root(image_path)
        folder = os.path.join(root, inside)
        try:
            names = sorted(os.listdir(folder))
        except FileNotFoundError:
            return []
        return [n for n in names if os.path.isfile(os.path.join(folder, n, "run.json"))]


def _with_recording(identity: dict[str, Any]) -> dict[str, Any]:
    """A recorded identity, with the :data:`RECORDING` keys it predates at the values its run had."""
    return {**RECORDING, **identity}


def _without_recording(identity: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in identity.items() if k not in RECORDING}


def _differ(recorded: dict[str, Any], identity: dict[str, Any]) -> str:
    """The keys two identities differ in, for messages."""
    return ", ".join(sorted(k for k in set(recorded) | set(identity) if recorded.get(k) != identity.get(k)))
