"""Find the models an environment provides: the ``nahual.models`` entry points, or ``module:Class``."""

from __future__ import annotations

import importlib

from .errors import ConfigError
from .model import Model

__all__ = ["available_models", "resolve_model"]

ENTRY_POINT_GROUP = "nahual.models"


def available_models() -> dict[str, str]:
    """Model names registered in this environment, mapped to their ``module:Class`` reference.

    Entry points are listed without importing them, so a model whose
    packages are missing here still shows (and fails clearly on load).
    """
    from importlib.metadata import entry_points  # slow to import: only when a model is looked up

    return {ep.name: ep.value for ep in entry_points(group=ENTRY_POINT_GROUP)}


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
