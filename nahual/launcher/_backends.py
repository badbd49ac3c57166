"""Environment launcher layer: one small class per kind of environment a server can run in.

A backend knows three things: whether it can run on this machine (and why
not, in one line), how to make its environment ready (``prepare``: ``uv
sync``, building a Nix shell), and the command prefix that runs Python
inside it. Everything else (process groups, readiness, stopping) is the same
for all of them and lives in ``_handle.py``.
"""

from __future__ import annotations

import hashlib
import os
import shlex
import shutil
import sys
from abc import ABC, abstractmethod
from pathlib import Path
from typing import ClassVar

from ..errors import ConfigError, LaunchError
from ._tools import PROBE, probe, run_tool
from ._torch import cpu_requirements, cuda_only_packages, install_cpu_torch, torch_build

__all__ = [
    "ApptainerEnv",
    "Backend",
    "CmdEnv",
    "CurrentEnv",
    "NixEnv",
    "UvEnv",
    "VenvEnv",
    "find_uv",
]


class Backend(ABC):
    """One environment, named by a spec string such as ``uv:envs/threshold``.

    Parameters
    ----------
    value : str
        The spec after ``KIND:`` (empty for ``current``).
    """

    #: The spec prefix, e.g. ``"uv"``.
    kind: ClassVar[str] = ""
    #: One line for ``nahual envs``.
    summary: ClassVar[str] = ""

    def __init__(self, value: str = "") -> None:
        self.value = value

    @property
    def spec(self) -> str:
        """The spec string this backend was parsed from."""
        return f"{self.kind}:{self.value}" if self.value else self.kind

    @classmethod
    @abstractmethod
    def tool(cls) -> tuple[bool, str]:
        """Whether this kind of environment can run on this machine at all, and why (not)."""

    @abstractmethod
    def python(self) -> list[str]:
        """The command prefix that runs this environment's Python interpreter."""

    def available(self) -> tuple[bool, str]:
        """Whether this very environment can start here, and why (not), in one line."""
        return self.tool()

    def check(self) -> tuple[bool, str]:
        """Whether a server can start in this environment: :meth:`available`, then Python imports nahual in it.

        This is what ``nahual envs SPEC`` prints. The probe runs the same
        command a server would (for ``nix:`` it evaluates and builds the
        shell), so an attribute that does not exist, a shell that does not
        evaluate or an environment without nahual is a ``no`` with its cause.
        """
        ok, why = self.available()
        if not ok:
            return ok, why
        ok, answer = probe(self.command(["-c", PROBE]))
        return ok, f"{why}; {answer}" if ok else f"{why}, but `python -c 'import nahual'` in it failed: {answer}"

    def prepare(self) -> None:  # noqa: B027 - optional hook, most backends need nothing
        """Make the environment ready before the first start (default: nothing to do).

        Raises
        ------
        LaunchError
            If the environment cannot be made ready (the tool failed).
        """

    def command(self, args: list[str]) -> list[str]:
        """The full command that runs ``python ARGS...`` inside this environment."""
        return [*self.python(), *args]

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.value!r})"

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self) and other.value == self.value  # type: ignore[attr-defined]

    def __hash__(self) -> int:
        return hash((type(self), self.value))


class CurrentEnv(Backend):
    """This very interpreter: for tests and development."""

    kind = "current"
    summary = "this interpreter"

    @classmethod
    def tool(cls) -> tuple[bool, str]:
        return True, f"Python {sys.version.split()[0]} at {sys.executable}"

    def python(self) -> list[str]:
        return [sys.executable]


class VenvEnv(Backend):
    """An existing virtual environment, run through its own ``bin/python``."""

    kind = "venv"
    summary = "an existing virtual environment"

    @property
    def root(self) -> Path:
        """Absolute path of the environment (relative specs are taken from the working directory)."""
        return Path(self.value).expanduser().absolute()

    @classmethod
    def tool(cls) -> tuple[bool, str]:
        return True, "needs nothing beyond the environment itself"

    def available(self) -> tuple[bool, str]:
        interpreter = self.root / "bin" / "python"
        if not interpreter.exists():
            return False, f"{interpreter} does not exist (expected a virtual environment at {self.root})"
        return True, f"interpreter {interpreter}"

    def python(self) -> list[str]:
        return [str(self.root / "bin" / "python")]


def find_uv() -> str | None:
    """Path of the ``uv`` binary: on PATH, else the one shipped by the ``uv`` PyPI package."""
    found = shutil.which("uv")
    if found:
        return found
    try:
        from uv import find_uv_bin  # the PyPI package ships the binary; importing it is cheap
    except ImportError:
        return None
    try:
        return str(find_uv_bin())
    except FileNotFoundError:
        return None


class UvEnv(Backend):
    """A uv project directory; synced into ``DIR/.venv`` before the first start.

    The value is ``PROJECT_DIR``, optionally with ``?KEY=VALUE`` options joined
    by ``&``: ``python=INTERPRETER`` (uv never downloads one: default the machine's
    ``python3``) and, for a lock holding torch, ``torch=cpu|cuda`` (default
    ``$NAHUAL_TORCH``, else ``cpu`` on Linux without an NVIDIA GPU; see ``_torch.py``).
    """

    kind = "uv"
    summary = "a uv project (pyproject.toml + uv.lock), synced before the first start"

    #: File in the venv recording what it was last synced from.
    STAMP = ".nahual-sync"
    #: Options a spec may give after ``?``.
    OPTIONS: ClassVar[tuple[str, ...]] = ("python", "torch")

    @property
    def options(self) -> dict[str, str]:
        """The ``?KEY=VALUE&...`` options of the spec.

        Raises
        ------
        ConfigError
            For an option that is not ``KEY=VALUE`` with a known key and a value.
        """
        query = self.value.partition("?")[2]
        options: dict[str, str] = {}
        for item in filter(None, query.split("&")):
            key, _, value = item.partition("=")
            if key not in self.OPTIONS or not value:
                known = ", ".join(f"{name}=..." for name in self.OPTIONS)
                raise ConfigError(f"uv spec options are {known} joined by '&', got {item!r} in {self.spec!r}")
            options[key] = value
        return options

    @property
    def project(self) -> Path:
        """Absolute path of the project directory."""
        return Path(self.value.partition("?")[0]).expanduser().absolute()

    @property
    def interpreter(self) -> str:
        """The interpreter uv builds the venv from (never one it downloads)."""
        return self.options.get("python") or shutil.which("python3") or sys.executable

    @property
    def torch(self) -> str | None:
        """``cpu`` or ``cuda`` when the project's lock holds torch, else None (the switch does not apply)."""
        build = torch_build(self.options.get("torch"))
        return build if cpu_requirements(self.project) else None

    @property
    def venv(self) -> Path:
        """The project's virtual environment."""
        return self.project / ".venv"

    @classmethod
    def tool(cls) -> tuple[bool, str]:
        uv = find_uv()
        if uv is None:
            return False, "uv not found on PATH (install nahual[workflow] or the uv package)"
        return True, f"uv at {uv}"

    def available(self) -> tuple[bool, str]:
        ok, why = self.tool()
        if not ok:
            return ok, why
        if not (self.project / "pyproject.toml").is_file():
            return False, f"{self.project / 'pyproject.toml'} does not exist (expected a uv project)"
        build = {"cpu": "; torch cpu (the CPU build of the locked version)", "cuda": "; torch cuda (as locked)"}
        return True, f"{why}; project {self.project}{build.get(self.torch or '', '')}"

    def python(self) -> list[str]:
        return [str(self.venv / "bin" / "python")]

    def check(self) -> tuple[bool, str]:
        """As :meth:`Backend.check`; a project not synced yet is not probed (the first start syncs it)."""
        if (self.venv / "bin" / "python").exists():
            return super().check()
        ok, why = self.available()
        if not ok:
            return ok, why
        return ok, f"{why}; not synced yet (the first start or `nahual env-prepare {self.spec}` runs uv sync)"

    def _fingerprint(self) -> str:
        """What the venv depends on: project files, the base interpreter and the torch build."""
        build = f"\0torch={self.torch}" if self.torch else ""  # no torch in the lock: stamps as before
        digest = hashlib.sha256(f"{self.interpreter}\0--compile-bytecode{build}".encode())
        for name in ("pyproject.toml", "uv.lock"):
            path = self.project / name
            digest.update(name.encode() + (path.read_bytes() if path.exists() else b"-"))
        return digest.hexdigest()

    def is_synced(self) -> bool:
        """True when the venv was synced from the current pyproject.toml, uv.lock, interpreter and torch build."""
        stamp = self.venv / self.STAMP
        python = self.venv / "bin" / "python"
        return python.exists() and stamp.exists() and stamp.read_text().strip() == self._fingerprint()

    def prepare(self, force: bool = False) -> None:
        """``uv sync`` the project unless it is already synced (``--locked`` when a lock exists).

        With ``torch=cpu`` the sync leaves out torch and its CUDA-only packages, then ``uv pip
        install --no-deps`` puts in the CPU build of the locked versions (``UV_FIND_LINKS``/``UV_INDEX``).

        Parameters
        ----------
        force : bool
            Sync even when the stamp says the venv is up to date.
        """
        ok, why = self.available()
        if not ok:
            raise LaunchError(f"environment {self.spec} is not available: {why}")
        if not force and self.is_synced():
            return
        uv = find_uv()
        assert uv is not None  # checked by available()
        locked = ["--locked"] if (self.project / "uv.lock").exists() else []
        # Bytecode is compiled at sync time: servers may run with PYTHONDONTWRITEBYTECODE or a
        # read-only venv, and importing numpy from source costs seconds at every start.
        argv = [uv, "sync", "--project", str(self.project), "--python", self.interpreter, "--compile-bytecode", *locked]
        cpu = self.torch == "cpu"
        argv += [f"--no-install-package={name}" for name in cuda_only_packages(self.project)] if cpu else []
        env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "UV_PROJECT_ENVIRONMENT")}
        env["UV_PYTHON_DOWNLOADS"] = "never"
        run_tool(argv, f"uv sync of {self.spec}", env=env)
        if cpu:
            install_cpu_torch(uv, self.project, self.python()[0], self.spec, env)
        (self.venv / self.STAMP).write_text(self._fingerprint() + "\n")


class NixEnv(Backend):
    """A flake devShell: ``nix develop FLAKE#SHELL --command python ...``."""

    kind = "nix"
    summary = "a Nix flake devShell (nix develop FLAKE#SHELL)"

    #: Shells built by this process, so that each is built once.
    _prepared: ClassVar[set[str]] = set()

    @property
    def installable(self) -> str:
        """The flake reference with its shell (``#default`` when none is named)."""
        return self.value if "#" in self.value else f"{self.value}#default"

    @classmethod
    def tool(cls) -> tuple[bool, str]:
        nix = shutil.which("nix")
        if nix is None:
            return False, "nix not found on PATH (see docs/environments.md to install it)"
        return True, f"nix at {nix}"

    def _nix(self, args: list[str]) -> list[str]:
        return ["nix", "--extra-experimental-features", "nix-command flakes", *args]

    def python(self) -> list[str]:
        return self._nix(["develop", self.installable, "--command", "python"])

    def prepare(self) -> None:
        """Build the shell once per process, so that the startup deadline does not include the build."""
        ok, why = self.available()
        if not ok:
            raise LaunchError(f"environment {self.spec} is not available: {why}")
        if self.installable in self._prepared:
            return
        run_tool(self._nix(["develop", self.installable, "--command", "true"]), f"building {self.spec}")
        self._prepared.add(self.installable)


class ApptainerEnv(Backend):
    """A container image: ``apptainer exec IMAGE python ...`` (``--nv`` where NVIDIA devices exist)."""

    kind = "apptainer"
    summary = "a container image (apptainer exec IMAGE)"

    @staticmethod
    def binary() -> str | None:
        """``apptainer``, or its older name ``singularity``."""
        return shutil.which("apptainer") or shutil.which("singularity")

    @classmethod
    def tool(cls) -> tuple[bool, str]:
        found = cls.binary()
        if found is None:
            return False, "neither apptainer nor singularity is on PATH"
        return True, f"{Path(found).name} at {found}"

    def available(self) -> tuple[bool, str]:
        ok, why = self.tool()
        if ok and "://" not in self.value and not Path(self.value).expanduser().exists():
            return False, f"image {self.value} does not exist"
        return ok, why

    def python(self) -> list[str]:
        from ._runtime import runtime_dir

        gpu = ["--nv"] if Path("/dev/nvidiactl").exists() else []
        image = self.value if "://" in self.value else str(Path(self.value).expanduser().absolute())
        # The runtime directory holds the socket and ready file; it is not bound by default.
        return [self.binary() or "apptainer", "exec", *gpu, "--bind", str(runtime_dir()), image, "python"]


class CmdEnv(Backend):
    """Any command prefix, e.g. ``cmd:srun --pty`` or ``cmd:conda run -n seg``: an escape hatch."""

    kind = "cmd"
    summary = "any command prefix (PREFIX python -m nahual serve ...)"

    @classmethod
    def tool(cls) -> tuple[bool, str]:
        return True, "needs only the prefix's program"

    @property
    def prefix(self) -> list[str]:
        """The prefix, split like a shell would."""
        try:
            words = shlex.split(self.value)
        except ValueError as exc:
            raise ConfigError(f"cmd: spec must be a shell-quoted command prefix, got {self.value!r}: {exc}") from exc
        if not words:
            raise ConfigError("cmd: spec must name a command prefix, got an empty one")
        return words

    def available(self) -> tuple[bool, str]:
        program = self.prefix[0]
        found = shutil.which(program)
        if found is None:
            return False, f"{program} not found on PATH"
        return True, f"{program} at {found}"

    def check(self) -> tuple[bool, str]:
        """Only :meth:`available`: a prefix may submit a job (``srun``), so the check does not run it."""
        ok, why = self.available()
        return ok, f"{why} (the prefix is not run by this check)" if ok else why

    def python(self) -> list[str]:
        return [*self.prefix, "python"]
