"""Environment launcher layer: the CPU switch of uv projects whose lock holds torch.

A lock made on Linux holds PyPI's torch, which is the CUDA build there and
pulls several GB of ``nvidia-*`` and ``triton`` wheels. The switch
(``uv:DIR?torch=cpu``, or ``NAHUAL_TORCH=cpu`` as the default of every spec;
without either, ``cpu`` on a Linux machine with no NVIDIA driver, so that such
a machine never downloads a CUDA torch, and ``cuda`` otherwise)
syncs the lock without those packages and without torch itself, then installs
the CPU build of the very versions the lock holds (``torch==2.13.0+cpu``, and
``torchvision``/``torchaudio`` when locked) with ``uv pip install --no-deps``
from wherever the user's ``UV_FIND_LINKS`` or ``UV_INDEX`` point (a local
wheel folder, or https://download.pytorch.org/whl/cpu). Nothing here names a
machine path: the lock stays the one PyPI resolved.
"""

from __future__ import annotations

import os
import sys
import tomllib
from pathlib import Path

from ..errors import ConfigError
from ._tools import run_tool

__all__ = [
    "TORCH_BUILDS",
    "TORCH_FAMILY",
    "TORCH_VARIABLE",
    "cpu_requirements",
    "cuda_only_packages",
    "default_build",
    "install_cpu_torch",
    "torch_build",
]

#: The builds a spec may ask for: ``cuda`` installs the lock as it is (CUDA on Linux), ``cpu`` swaps torch.
TORCH_BUILDS = ("cpu", "cuda")
#: Environment variable giving the build for every uv spec that does not name one.
TORCH_VARIABLE = "NAHUAL_TORCH"
#: Packages the CPU switch replaces by their ``+cpu`` build of the locked version.
TORCH_FAMILY = ("torch", "torchvision", "torchaudio")
#: Name prefixes of the packages only a CUDA torch needs; the CPU switch leaves them out.
CUDA_ONLY_PREFIXES = ("nvidia-", "cuda-", "triton")


def default_build() -> str:
    """``cpu`` on Linux without an NVIDIA driver (no ``/dev/nvidiactl``), else ``cuda`` (the lock as it is)."""
    return "cpu" if sys.platform == "linux" and not Path("/dev/nvidiactl").exists() else "cuda"


def torch_build(option: str | None) -> str:
    """The torch build a spec asks for: its ``torch=`` option, else ``$NAHUAL_TORCH``, else :func:`default_build`.

    Raises
    ------
    ConfigError
        For a value other than ``cpu`` or ``cuda``.
    """
    value = option if option is not None else os.environ.get(TORCH_VARIABLE) or default_build()
    if value not in TORCH_BUILDS:
        origin = "torch= in the uv spec" if option is not None else f"${TORCH_VARIABLE}"
        raise ConfigError(f"{origin} must be one of {', '.join(TORCH_BUILDS)}, got {value!r}")
    return value


def _locked(project: Path) -> dict[str, set[str]]:
    """Package name -> the versions ``project/uv.lock`` holds (empty without a lock)."""
    lock = project / "uv.lock"
    if not lock.is_file():
        return {}
    try:
        packages = tomllib.loads(lock.read_text()).get("package", [])
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"{lock} is not a readable uv lock: {exc}") from exc
    versions: dict[str, set[str]] = {}
    for package in packages:
        versions.setdefault(package.get("name", ""), set()).add(str(package.get("version", "")))
    return versions


def cpu_requirements(project: Path) -> list[str]:
    """``NAME==VERSION+cpu`` for each torch-family package of the lock; empty when it holds no torch.

    Raises
    ------
    ConfigError
        When the lock holds two versions of one of them (the swap would be ambiguous).
    """
    locked = _locked(project)
    requirements = []
    for name in TORCH_FAMILY:
        versions = sorted(locked.get(name, ()))
        if len(versions) > 1:
            raise ConfigError(f"{project / 'uv.lock'} holds {name} {', '.join(versions)}; the CPU switch needs one")
        requirements += [f"{name}=={versions[0].split('+')[0]}+cpu"] if versions else []
    return requirements


def cuda_only_packages(project: Path) -> list[str]:
    """The packages of the lock that the CPU switch does not install: the torch family and the CUDA-only ones."""
    return sorted(name for name in _locked(project) if name in TORCH_FAMILY or name.startswith(CUDA_ONLY_PREFIXES))


def install_cpu_torch(uv: str, project: Path, python: str, spec: str, env: dict[str, str]) -> None:
    """Install the CPU build of the locked torch family into a venv synced without it.

    Parameters
    ----------
    uv : str
        The uv binary.
    project : Path
        The uv project whose lock gives the versions.
    python : str
        The venv's interpreter.
    spec : str
        The environment spec, for the message.
    env : dict
        The environment uv runs with; its ``UV_FIND_LINKS``/``UV_INDEX`` say where the wheels are.

    Raises
    ------
    LaunchError
        When uv finds no such build, naming the two ways to point it at one.
    """
    wanted = cpu_requirements(project)
    argv = [uv, "pip", "install", "--python", python, "--no-deps", "--compile-bytecode", *wanted]
    where = "a folder holding them (UV_FIND_LINKS) or https://download.pytorch.org/whl/cpu (UV_INDEX)"
    run_tool(argv, f"installing the CPU build {' '.join(wanted)} of {spec} (point uv at {where})", env=env)
