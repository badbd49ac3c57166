"""The built-in catalog: which environment each model that ships with nahual runs in.

Layer: model zoo (stdlib only). ``nahual apply ... --model threshold`` with
neither ``--server`` nor ``--env`` asks :func:`default_env` for the spec and
launches it; a config file or ``--env`` overrides it.

The environments are the uv projects under ``envs/`` of the repository
(``envs/<model>/pyproject.toml`` + ``uv.lock``). They are found through
``$NAHUAL_ENVS_DIR`` if set, else in the ``envs/`` folder beside the ``nahual``
package (an editable install or a checkout).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

from .errors import ConfigError

__all__ = ["CATALOG", "ENVS_DIR_VARIABLE", "default_env", "envs_dir"]

#: Environment variable that points at the folder holding the model environments.
ENVS_DIR_VARIABLE = "NAHUAL_ENVS_DIR"

#: Model name -> default environment spec; ``{envs}`` stands for :func:`envs_dir`.
CATALOG: Mapping[str, str] = {
    "echo": "current",
    "threshold": "uv:{envs}/threshold",
    "laptrack": "uv:{envs}/laptrack",
    "regionprops": "uv:{envs}/regionprops",
    "cellpose": "uv:{envs}/cellpose",
    "cellpose-sam": "uv:{envs}/cellpose-sam",
    "trackastra": "uv:{envs}/trackastra",
    "dinov2": "uv:{envs}/dino",
    "dinov3": "uv:{envs}/dino",
    "baby": "uv:{envs}/baby",
    "bioimageio": "uv:{envs}/bioimageio-onnx",
    "bioimageio-torch": "uv:{envs}/bioimageio-torch",
    "bioimageio-tf": "uv:{envs}/bioimageio-tf",
}


def envs_dir() -> Path:
    """The folder holding the model environments.

    Returns
    -------
    Path
        ``$NAHUAL_ENVS_DIR`` when set, else ``envs/`` beside the ``nahual`` package.

    Raises
    ------
    ConfigError
        When the folder does not exist.
    """
    configured = os.environ.get(ENVS_DIR_VARIABLE)
    folder = Path(configured) if configured else Path(__file__).resolve().parent.parent / "envs"
    if not folder.is_dir():
        origin = f"${ENVS_DIR_VARIABLE}" if configured else "the envs/ folder beside the nahual package"
        raise ConfigError(
            f"model environments not found: {origin} is {folder}, which is not a folder; "
            f"set {ENVS_DIR_VARIABLE} to a checkout's envs/ or pass --env"
        )
    return folder.absolute()


def default_env(model: str, overrides: Mapping[str, str] | None = None) -> str:
    """The environment spec a model runs in when the user names none.

    Parameters
    ----------
    model : str
        A model name, e.g. ``"threshold"``.
    overrides : mapping, optional
        Model name -> spec from the user's config; wins over the catalog.

    Returns
    -------
    str
        An environment spec such as ``"uv:/path/to/envs/threshold"`` or ``"current"``.

    Raises
    ------
    ConfigError
        For a model neither in ``overrides`` nor in the catalog, or when its
        environment folder is missing.
    """
    if overrides and model in overrides:
        return overrides[model]
    if model not in CATALOG:
        raise ConfigError(
            f"no default environment for model {model!r}: the catalog has {sorted(CATALOG)}; pass --env or --server"
        )
    spec = CATALOG[model]
    if "{envs}" not in spec:
        return spec
    resolved = spec.format(envs=envs_dir())
    project = Path(resolved.split(":", 1)[1])
    if not (project / "pyproject.toml").is_file():
        raise ConfigError(f"environment of model {model!r} not found: expected {project / 'pyproject.toml'}")
    return resolved
