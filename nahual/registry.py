"""Find the models an environment provides: the ``nahual.models`` entry points, or ``module:Class``.

A ``module:Class`` reference imports its module before it can be checked to
name a :class:`nahual.Model` subclass: resolving one runs that module's code.
A server resolves them for ``load`` requests only when started with
``--allow-module-models`` (``docs/security.md``).
"""

from __future__ import annotations

import importlib

from .errors import ConfigError
from .model import Model

__all__ = ["available_models", "is_module_reference", "missing_packages", "resolve_model"]

ENTRY_POINT_GROUP = "nahual.models"


def available_models() -> dict[str, str]:
    """Model names registered in this environment, mapped to their ``module:Class`` reference.

    Entry points are listed without importing them, so a model whose
    packages are missing here still shows (and fails clearly on load).
    """
    from importlib.metadata import entry_points  # slow to import: only when a model is looked up

    return {ep.name: ep.value for ep in entry_points(group=ENTRY_POINT_GROUP)}


def is_module_reference(reference: str) -> bool:
    """True for a ``module:Class`` reference, False for a model name registered here."""
    return ":" in reference and reference not in available_models()


def resolve_model(reference: str) -> type[Model]:
    """Import a model class from a registered name or a ``module:Class`` reference.

    Raises
    ------
    ConfigError
        When the name is unknown (the message lists the models available) or
        the reference does not name a :class:`nahual.Model` subclass.
    """
    target = available_models().get(reference, reference)
    if ":" not in target:
        known = ", ".join(sorted(available_models())) or "none"
        raise ConfigError(f"unknown model {reference!r}; available here: {known} (or give module:Class)")
    module_name, _, class_name = target.partition(":")
    try:
        cls = getattr(importlib.import_module(module_name), class_name)
    except ImportError as exc:
        raise ConfigError(f"model {reference!r} cannot be imported from {target}: {exc}") from exc
    except AttributeError:
        raise ConfigError(f"module {module_name!r} has no class {class_name!r}") from None
    if not (isinstance(cls, type) and issubclass(cls, Model)):
        raise ConfigError(f"{target} is not a subclass of nahual.Model")
    return cls


def missing_packages(cls: type[Model]) -> list[str]:
    """The distributions of ``cls.packages`` that are not installed in this environment.

    A server lists a model whose packages are missing as unavailable (naming them)
    instead of failing on its first request.
    """
    from importlib.metadata import PackageNotFoundError, distribution

    missing = []
    for name in cls.packages:
        try:
            distribution(name)
        except PackageNotFoundError:
            missing.append(name)
    return missing
