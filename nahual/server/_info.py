"""What a server says about itself in ``info``: versions, and which models can run here.

Layer: server. A model whose ``packages`` are not all installed in this
environment is listed as ``unavailable``, naming them (``docs/protocol.md``,
*info*), so that a client sees it before it tries to load it.
"""

from __future__ import annotations

import os
import platform
import sys
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from .. import _protocol as protocol
from ..errors import ConfigError
from ..registry import available_models, missing_packages, resolve_model
from ..weights import weights_dir

if TYPE_CHECKING:
    from ..model import Model

__all__ = ["describe_server", "package_versions"]

CORE_PACKAGES = ("nahual", "numpy", "pynng")


def package_versions(names: tuple[str, ...]) -> dict[str, str | None]:
    """Installed versions of the given distributions (None where missing)."""
    from importlib.metadata import PackageNotFoundError, version  # slow import: only when asked

    versions: dict[str, str | None] = {}
    for name in names:
        try:
            versions[name] = version(name)
        except PackageNotFoundError:
            versions[name] = None
    return versions


def describe_model(cls: type[Model]) -> dict[str, Any]:
    """A model's entry in ``info["models"]``: its contract, package versions and, if it cannot run here, why."""
    entry: dict[str, Any] = {"contract": cls.contract.to_dict(), "packages": package_versions(cls.packages)}
    missing = missing_packages(cls)
    if missing:
        entry["unavailable"] = f"missing packages: {', '.join(missing)}"
    return entry


def describe_server(extra: Mapping[str, type[Model]], instances: list[dict[str, Any]]) -> dict[str, Any]:
    """The reply to ``info``: the registry's models and the ``extra`` classes, with the instances given."""
    models: dict[str, Any] = {}
    packages = set(CORE_PACKAGES)
    classes: dict[str, type[Model] | ConfigError] = {}
    for name in available_models():
        try:
            classes[name] = resolve_model(name)
        except ConfigError as exc:
            classes[name] = exc
    classes.update(extra)
    for name, cls in classes.items():
        if isinstance(cls, ConfigError):
            models[name] = {"error": str(cls)}
            continue
        packages.update(cls.packages)
        models[name] = describe_model(cls)
    return {
        "protocol": protocol.VERSION,
        "nahual": package_versions(("nahual",))["nahual"],
        "python": platform.python_version(),
        "executable": sys.executable,
        "pid": os.getpid(),
        "weights": str(weights_dir()),  # the cache this server's models read (nahual serve --weights)
        "packages": package_versions(tuple(sorted(packages))),
        "models": models,
        "instances": instances,
    }
