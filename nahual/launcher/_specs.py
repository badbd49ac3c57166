"""Environment launcher layer: parse environment spec strings into backends.

One string form is shared by the CLI (``--env``), the Python API
(``nahual.launch(env=...)``) and config files::

    current                 this interpreter
    venv:PATH               an existing virtual environment
    uv:PROJECT_DIR          a uv project, synced before the first start
    nix:FLAKE#SHELL         nix develop FLAKE#SHELL --command ...
    apptainer:IMAGE         apptainer exec IMAGE ...
    cmd:PREFIX              PREFIX python ...
"""

from __future__ import annotations

from ..errors import ConfigError
from ._backends import ApptainerEnv, Backend, CmdEnv, CurrentEnv, NixEnv, UvEnv, VenvEnv

__all__ = ["BACKENDS", "parse_env_spec"]

#: Backend class for each spec prefix, in the order ``nahual envs`` lists them.
BACKENDS: dict[str, type[Backend]] = {
    cls.kind: cls for cls in (CurrentEnv, VenvEnv, UvEnv, NixEnv, ApptainerEnv, CmdEnv)
}


def parse_env_spec(spec: str | Backend) -> Backend:
    """Turn an environment spec string into its backend.

    Parameters
    ----------
    spec : str or Backend
        ``current`` or ``KIND:VALUE`` (see the module docstring); a backend is returned as is.

    Returns
    -------
    Backend
        The backend; nothing is checked on disk yet (see :meth:`Backend.available`).

    Raises
    ------
    ConfigError
        If the string is not one of the forms above.
    """
    if isinstance(spec, Backend):
        return spec
    if not isinstance(spec, str):
        raise ConfigError(f"environment spec must be a string such as 'uv:envs/threshold', got {type(spec).__name__}")
    text = spec.strip()
    if text == "current":
        return CurrentEnv()
    kind, sep, value = text.partition(":")
    expected = "'current' or KIND:VALUE with KIND one of " + ", ".join(k for k in BACKENDS if k != "current")
    if not sep or kind not in BACKENDS or kind == "current":
        raise ConfigError(f"environment spec must be {expected}; got {spec!r}")
    if not value.strip():
        raise ConfigError(f"environment spec {spec!r} must give a value after '{kind}:'")
    backend = BACKENDS[kind](value.strip())
    if isinstance(backend, NixEnv) and backend.installable.endswith("#"):
        raise ConfigError(f"nix spec must be nix:FLAKE#SHELL, got {spec!r}")
    if isinstance(backend, UvEnv) and backend.value.endswith("?python="):
        raise ConfigError(f"uv spec must be uv:PROJECT_DIR or uv:PROJECT_DIR?python=INTERPRETER, got {spec!r}")
    if isinstance(backend, CmdEnv):
        backend.prefix  # noqa: B018 - raises ConfigError for a prefix that does not split
    return backend
