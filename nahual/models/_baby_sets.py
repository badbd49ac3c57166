"""BABY model sets in nahual's weights cache: find one, resolve every file it names, refuse what could run code.

Layer: model zoo support (stdlib only: it runs before TensorFlow is imported).
A BABY model set is a folder holding ``modelset.json``
(``{"name", "meta", "brain_params"}``) and the files its ``brain_params``
name: a Keras HDF5 network, a flattener and segmentation parameters (JSON),
and scikit-learn trackers. A file not in the folder is looked for in
``shared/`` beside it, as BABY does: in the weights cache that is
``$NAHUAL_WEIGHTS/baby/shared`` (``nahual weights fetch baby shared``), the
folder BABY's released sets keep their trackers in.

Every file is resolved here and passed to ``BabyBrain`` by its path, so BABY
never falls back to its default set (which it would download). Two of BABY's
loaders can run code, so they only get files checked first:

- BABY's JSON files are read by BABY with a hook that imports whatever
  module a ``_python_NamedTuple`` entry names and calls it: only BABY's own
  three named tuples (:data:`SAFE_TUPLES`) are let through;
- trackers pickled as ``.pkl`` would be unpickled: nahual passes BABY's
  pickle-free ``.npz`` form instead (``baby.utils.save_sklearn_model``), the
  file of the same name beside the pickle, and refuses a set without it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import WeightsError
from ..weights import weight_path

__all__ = ["BRAIN_OPTIONS", "FILE_KEYS", "SAFE_TUPLES", "ModelSet", "read_modelset"]

#: The file BABY reads a model set from.
MODELSET_FILE = "modelset.json"
#: ``brain_params`` keys naming a file, in BabyBrain's order; the last three are trackers.
FILE_KEYS = (
    "morph_model_file",
    "flattener_file",
    "params",
    "celltrack_model_file",
    "celltrack_backup_model_file",
    "budassign_model_file",
)
#: Other ``brain_params`` keys passed on to BabyBrain (the rest of its keywords are nahual's own params).
BRAIN_OPTIONS = ("pixel_size", "default_image_size", "nstepsback", "min_bud_tps", "isbud_thresh", "input_norm_dw")
#: The only (module, class) pairs a BABY JSON file may name in a ``_python_NamedTuple`` entry.
SAFE_TUPLES = frozenset(
    {
        ("baby.morph_thresh_seg", "SegmentationParameters"),
        ("baby.preprocessing", "CellGroup"),
        ("baby.preprocessing", "PredTarget"),
    }
)


@dataclass(frozen=True)
class ModelSet:
    """A BABY model set, checked and resolved.

    Attributes
    ----------
    folder : Path
        The model set's folder.
    name : str
        Its ``name`` in ``modelset.json`` (the folder name when it gives none).
    files : dict of str to Path
        Each :data:`FILE_KEYS` entry BabyBrain gets, resolved (``params`` may instead be in ``options``).
    options : dict
        The other BabyBrain keywords the set gives (:data:`BRAIN_OPTIONS`, an inline ``params``).
    """

    folder: Path
    name: str
    files: dict[str, Path]
    options: dict[str, Any]

    @property
    def pixel_size(self) -> float:
        """The pixel size (micrometres) the set's network was trained at (BABY's default 0.263)."""
        return float(self.options.get("pixel_size", 0.263))


def modelset_folder(model: str) -> Path:
    """The folder the ``model`` param names: a path (with ``/`` or ``~``), else a weight name in the cache.

    Raises
    ------
    WeightsError
        When the weight is not in the cache or the folder holds no ``modelset.json``.
    """
    if "/" in model or model.startswith("~"):
        folder = Path(model).expanduser().absolute()
        if not folder.is_dir():
            raise WeightsError(f"BABY model set folder {folder} does not exist (param model={model!r})")
    else:
        folder = weight_path("baby", model)
    if not (folder / MODELSET_FILE).is_file():
        raise WeightsError(f"BABY model set {folder} has no {MODELSET_FILE}; expected a folder as BABY's sets are")
    return folder


def _decode(value: Any, where: Path) -> Any:
    """BABY's JSON markers decoded: tuples, sets, a named tuple to its fields once checked against SAFE_TUPLES."""
    if isinstance(value, list):
        return [_decode(item, where) for item in value]
    if not isinstance(value, dict):
        return value
    if "_python_NamedTuple" in value:
        named = (value.get("__module__"), value.get("__class__"))
        if named not in SAFE_TUPLES:
            found = ".".join(str(part) for part in named)
            raise WeightsError(f"{where} names {found}; a BABY file may only name BABY's own parameter tuples")
        return _decode(value["_python_NamedTuple"], where)  # its fields (a checked class is BABY's own)
    if "_python_tuple" in value:
        return tuple(_decode(item, where) for item in value["_python_tuple"])
    if "_python_set" in value:
        return set(_decode(item, where) for item in value["_python_set"])
    return {key: _decode(item, where) for key, item in value.items()}


def read_json(path: Path) -> Any:
    """A BABY JSON file, decoded and checked by :func:`_decode` (the check runs on files BABY then reads itself).

    Raises
    ------
    WeightsError
        For a file that is not JSON or names a class other than BABY's parameter tuples.
    """
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise WeightsError(f"{path} is not a readable JSON file: {exc}") from exc
    return _decode(data, path)


def _resolve(folder: Path, name: Any, key: str) -> Path:
    """The file ``name`` of ``key``: in the set's folder, else in ``shared/`` beside it; ``.npz`` for a pickle."""
    if not isinstance(name, str) or not name or Path(name).name != name:
        raise WeightsError(f"{folder / MODELSET_FILE}: {key} must be a file name, got {name!r}")
    found = next((d / name for d in (folder, folder.parent / "shared") if (d / name).is_file()), None)
    if found is None:
        shared = "; `nahual weights fetch baby shared` fetches BABY's shared trackers" if key in FILE_KEYS[3:] else ""
        raise WeightsError(f"BABY model set {folder.name}: {key} {name} is in neither {folder} nor ../shared{shared}")
    if found.suffix == ".pkl":
        converted = found.with_suffix(".npz")
        if not converted.is_file():
            raise WeightsError(
                f"{found} is a pickle, which nahual never loads (unpickling runs code): put BABY's pickle-free "
                f"form of it, {converted.name}, beside it (see docs/baby.md, 'Model sets')"
            )
        return converted
    return found


def read_modelset(model: str) -> ModelSet:
    """The model set ``model`` names, every file resolved and the JSON files checked.

    A set without a backup tracker gets its main tracker as the backup (BABY
    would fetch its default set's); one with ``mmtracking`` needs no tracker.

    Raises
    ------
    WeightsError
        One line: the set or a file is missing, a file could run code, ``modelset.json`` is malformed.
    """
    folder = modelset_folder(model)
    spec = read_json(folder / MODELSET_FILE)
    params = spec.get("brain_params") if isinstance(spec, dict) else None
    if not isinstance(params, dict):
        raise WeightsError(f"{folder / MODELSET_FILE} has no brain_params object (BABY's model set format)")
    if params.get("mmtracking"):
        raise WeightsError(f"{folder.name}: mother-machine sets (mmtracking) are not supported by nahual's baby model")
    params = dict(params)
    params.setdefault("celltrack_backup_model_file", params.get("celltrack_model_file"))
    options = {key: params[key] for key in BRAIN_OPTIONS if key in params}
    files: dict[str, Path] = {}
    for key in FILE_KEYS:
        if key == "params" and isinstance(params.get(key), dict):
            options["params"] = params[key]
            continue
        if key not in params:
            raise WeightsError(f"{folder / MODELSET_FILE}: brain_params lacks {key} (it needs {', '.join(FILE_KEYS)})")
        files[key] = _resolve(folder, params[key], key)
    for key in ("flattener_file", "params"):
        if key in files:
            read_json(files[key])
    name = spec.get("name") if isinstance(spec.get("name"), str) else folder.name
    return ModelSet(folder, name, files, options)
