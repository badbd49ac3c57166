"""One weights cache for every model: where weights live, how they get there, the error when missing.

Layer: model zoo support (stdlib only, importable in every model environment).
The cache is ``$NAHUAL_WEIGHTS``, else ``$XDG_CACHE_HOME/nahual/weights``
(``~/.cache/nahual/weights``); each model has a folder in it holding one file
or folder per weight name, plus a small JSON manifest (``.manifest.json``) of
what was fetched or added there, with sizes and sha256 checksums.

A server never downloads: adapters resolve weights with :func:`weight_path`
only, which raises :class:`~nahual.errors.WeightsError` naming the command
that fills the cache. Downloading is :func:`fetch`, run by a person on a
machine with internet (on a cluster, the login node fills the cache that the
compute nodes read); :func:`add` copies a user's own weights in. Both write
under a ``NAME.partial-PID`` name, verify, then rename, so that an interrupted
or corrupt transfer leaves no file that looks complete.

Models declare the weights they know as a class attribute::

    class Cellpose(nahual.Model):
        weights = {"cyto3": WeightSource("https://.../cyto3", sha256="...", size=26_000_000)}
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from ._transfer import checksum, disk_size, download, format_size, install, remove, unpack
from .errors import WeightsError

__all__ = [
    "WeightSource",
    "WeightEntry",
    "weights_dir",
    "model_dir",
    "weight_path",
    "known_weights",
    "list_weights",
    "fetch",
    "add",
    "checksum",
    "parse_weight_name",
    "format_size",
]

#: File in each model folder recording what was fetched or added there.
MANIFEST = ".manifest.json"
_SCRATCH_MARKS = (".partial-", ".old-")


@dataclass(frozen=True)
class WeightSource:
    """Where a model's known weight comes from, and how to tell it arrived whole.

    Parameters
    ----------
    url : str
        The model's own download address (``https://``; ``file://`` works too).
    sha256 : str
        Hex digest of the downloaded bytes (of the archive, for an archive).
        Empty when the source publishes none: :func:`fetch` then records the
        digest of what it got and says so (trust on first use).
    size : int, optional
        Bytes expected; lets an interrupted transfer be told from a bad checksum
        when the server sends no length.
    filename : str, optional
        For an archive: the member (file or folder path inside it) to keep; None
        keeps the whole archive, unwrapping a single top-level folder.
    archive : bool
        The download is a zip archive, unpacked into a folder named after the weight.
    """

    url: str
    sha256: str
    size: int | None = None
    filename: str | None = None
    archive: bool = False


@dataclass(frozen=True)
class WeightEntry:
    """One row of :func:`list_weights`: a known or added weight, and whether it is present.

    Attributes
    ----------
    model, name : str
        The model and the weight name.
    present : bool
        Whether the cache holds it.
    size : int or None
        Bytes on disk when present, else the source's expected size.
    sha256 : str
        The recorded checksum when present (``?`` when put there by hand), else the source's.
    origin : str
        The source URL, ``added from PATH``, or ``unrecorded``.
    path : Path
        Where it is (or would be).
    """

    model: str
    name: str
    present: bool
    size: int | None
    sha256: str
    origin: str
    path: Path


def weights_dir() -> Path:
    """The root of the weights cache: ``$NAHUAL_WEIGHTS``, else ``$XDG_CACHE_HOME/nahual/weights``."""
    configured = os.environ.get("NAHUAL_WEIGHTS")
    if configured:
        return Path(configured).expanduser().absolute()
    cache = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(cache).expanduser().absolute() / "nahual" / "weights"


def parse_weight_name(name: str, what: str = "weight name") -> str:
    """``name`` when it is a plain file name fit for the cache.

    Raises
    ------
    WeightsError
        For an empty name, a path (``/``, ``..``), a hidden name or one of the cache's scratch names.
    """
    if (
        not isinstance(name, str)
        or not name
        or name in (".", "..")
        or name.startswith(".")
        or any(sep in name for sep in ("/", "\\", "\0"))
        or any(mark in name for mark in _SCRATCH_MARKS)
    ):
        raise WeightsError(f"a {what} must be a plain file name (no '/', not hidden), got {name!r}")
    return name


def model_dir(model: str) -> Path:
    """The cache folder of ``model`` (it may not exist yet)."""
    return weights_dir() / parse_weight_name(model, "model name")


def weight_path(model: str, name: str) -> Path:
    """The cached file or folder of weight ``name`` of ``model``; never downloads.

    Raises
    ------
    WeightsError
        One line naming the model, the weight, the path looked at and the
        commands that fill it.
    """
    path = model_dir(model) / parse_weight_name(name)
    if not path.exists():
        raise WeightsError(
            f"weights {name!r} of model {model!r} are not in the cache (looked at {path}); "
            f"run `nahual weights fetch {model} {name}` on a machine with internet, "
            f"or `nahual weights add {model} {name} PATH` for your own"
        )
    return path


def known_weights(model: str) -> dict[str, WeightSource]:
    """The weights the class of registered model ``model`` declares (``weights`` class attribute).

    Raises
    ------
    ConfigError
        When no model of that name is registered here.
    """
    from .registry import resolve_model  # imports the model module: only when asked

    return dict(getattr(resolve_model(model), "weights", {}) or {})


def list_weights(models: list[str] | None = None) -> list[WeightEntry]:
    """Every known weight of ``models`` (default: all registered models) and every one added to the cache.

    Models whose class cannot be imported here still show their cached weights.
    """
    from .errors import ConfigError
    from .registry import available_models

    cached = sorted(p.name for p in weights_dir().iterdir() if p.is_dir()) if weights_dir().is_dir() else []
    names = models if models is not None else sorted(set(available_models()) | set(cached))
    entries: list[WeightEntry] = []
    for model in names:
        try:
            sources = known_weights(model)
        except ConfigError:
            sources = {}
        records = _read_manifest(model)
        folder = model_dir(model)
        on_disk = sorted(p.name for p in folder.iterdir() if _is_weight(p.name)) if folder.is_dir() else []
        for name in [*sources, *(n for n in sorted({*records, *on_disk}) if n not in sources)]:
            entries.append(_entry(model, name, sources.get(name), records.get(name), folder / name))
    return entries


def _entry(model: str, name: str, source: WeightSource | None, record: dict | None, path: Path) -> WeightEntry:
    present = path.exists()
    if present:
        size = disk_size(path)
        digest = record.get("sha256", "?") if record else "?"
        origin = record.get("origin", "unrecorded") if record else "unrecorded"
    else:
        size = source.size if source else None
        digest = source.sha256 if source else (record or {}).get("sha256", "?")
        origin = source.url if source else (record or {}).get("origin", "unrecorded")
    return WeightEntry(model, name, present, size, digest, origin, path)


def _is_weight(name: str) -> bool:
    return not name.startswith(".") and not any(mark in name for mark in _SCRATCH_MARKS)


def fetch(
    model: str,
    name: str,
    source: WeightSource | None = None,
    *,
    force: bool = False,
    timeout: float = 60.0,
    stream: TextIO | None = None,
) -> Path:
    """Download weight ``name`` of ``model`` into the cache, verified by sha256; returns its path.

    Parameters
    ----------
    model, name : str
        The model and the weight name.
    source : WeightSource, optional
        Where from; by default the model class's declared ``weights[name]``.
    force : bool
        Download again even when a copy with the expected checksum is present.
    timeout : float
        Seconds the connection may stall.
    stream : file, optional
        Where progress goes (stderr by default): a bar on a terminal, plain lines otherwise.

    Raises
    ------
    WeightsError
        For an unknown weight, a failed connection, an interrupted transfer or a
        checksum mismatch; nothing is left in the cache then.
    """
    folder = model_dir(model)
    target = folder / parse_weight_name(name)
    if source is None:
        sources = known_weights(model)
        if name not in sources:
            known = ", ".join(sources) or "none"
            raise WeightsError(f"model {model!r} declares no weights {name!r} to fetch (known: {known})")
        source = sources[name]
    record = _read_manifest(model).get(name)
    if not force and target.exists() and record and record.get("sha256") == (source.sha256 or record.get("sha256")):
        return target
    folder.mkdir(parents=True, exist_ok=True)
    partial = folder / f"{name}.partial-{os.getpid()}"
    try:
        digest = download(source, partial, f"{model}/{name}", timeout, stream or sys.stderr)
        if source.archive:
            unpacked = folder / f"{name}.partial-{os.getpid()}-dir"
            unpack(partial, unpacked, source.filename)
            partial.unlink()
            partial = unpacked
        install(partial, target)
    finally:
        remove(partial)
        remove(folder / f"{name}.partial-{os.getpid()}")
    _record(model, name, {"sha256": digest, "size": disk_size(target), "origin": source.url})
    return target


def add(model: str, name: str, path: str | os.PathLike[str]) -> Path:
    """Copy a user's own weight file or folder into the cache as ``name`` of ``model``; returns its path.

    The copy is written under a scratch name and renamed when complete; its
    checksum is recorded in the model folder's manifest.

    Raises
    ------
    WeightsError
        When ``path`` does not exist.
    """
    source = Path(path).expanduser()
    if not source.exists():
        raise WeightsError(f"cannot add weights {name!r} of model {model!r}: {source} does not exist")
    folder = model_dir(model)
    target = folder / parse_weight_name(name)
    folder.mkdir(parents=True, exist_ok=True)
    partial = folder / f"{name}.partial-{os.getpid()}"
    try:
        if source.is_dir():
            shutil.copytree(source, partial)
        else:
            shutil.copyfile(source, partial)
        digest = checksum(partial)
        install(partial, target)
    finally:
        remove(partial)
    _record(model, name, {"sha256": digest, "size": disk_size(target), "origin": f"added from {source.absolute()}"})
    return target


def _read_manifest(model: str) -> dict[str, dict]:
    """Name -> record of the model folder's manifest; empty when there is none or it is unreadable."""
    try:
        data = json.loads((model_dir(model) / MANIFEST).read_text())
    except (OSError, ValueError):
        return {}
    weights = data.get("weights") if isinstance(data, dict) else None
    return {k: v for k, v in weights.items() if isinstance(v, dict)} if isinstance(weights, dict) else {}


def _record(model: str, name: str, record: dict) -> None:
    """Write ``record`` for ``name`` into the model's manifest (atomically, by rename)."""
    records = _read_manifest(model)
    records[name] = {**record, "recorded": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    manifest = model_dir(model) / MANIFEST
    scratch = manifest.with_name(f"{MANIFEST}.partial-{os.getpid()}")
    scratch.write_text(json.dumps({"version": 1, "weights": records}, indent=2, sort_keys=True) + "\n")
    os.replace(scratch, manifest)
