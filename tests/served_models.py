"""Zoo models tested in their own environments: the CPU build to serve them from, and the contract tests.

Layer: tests. The zoo tests of a torch model serve it from the CPU build of
its environment (:func:`cpu_environment`, a skip that says how to prepare it
where it is not), and hold it on a server (the module's ``client`` fixture);
:class:`ServedModelTests` runs the shared contract tests on it through
:class:`ServedModel`.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Any

import pytest
from conftest import ROOT

import nahual
import nahual.errors
from nahual.catalog import envs_dir
from nahual.launcher import UvEnv, parse_env_spec
from nahual.testing import ModelTests

if TYPE_CHECKING:
    from nahual.model import Model


def cpu_spec(env: str) -> str:
    """The environment spec of the CPU build of ``envs/ENV`` (the lock's torch swapped for torch==2.13.0+cpu)."""
    return f"uv:{envs_dir() / env}?torch=cpu"


def cpu_environment(env: str) -> UvEnv:
    """The prepared CPU build of ``envs/ENV``, or a skip that says how to prepare it."""
    spec = cpu_spec(env)
    backend = parse_env_spec(spec)
    assert isinstance(backend, UvEnv)
    if not backend.is_synced():
        pytest.skip(
            f"the {env} environment is not prepared: run `nahual env-prepare '{spec}'` with UV_FIND_LINKS "
            "pointing at a folder holding the torch 2.13.0 CPU wheel (.ci/install does this in CI)"
        )
    return backend


def cuda_environment_lock(env: str) -> str:
    """The lock of ``envs/ENV``, checked: a CUDA environment of torch 2.13.0 that names no path of this machine."""
    project = (ROOT / "envs" / env / "pyproject.toml").read_text()
    assert "[tool.nahual]\ncuda = true" in project and '"torch==2.13.0"' in project
    lock = (ROOT / "envs" / env / "uv.lock").read_text()
    assert str(ROOT) not in lock and sys.prefix not in lock
    return lock


class ServedModel:
    """A model loaded on a server, with the two members :class:`ModelTests` uses of a loaded model.

    Errors come back as :class:`nahual.RemoteError`; ``process`` raises them
    again as the nahual error class the server raised, so that the contract
    tests check the served model's error types and messages as they check a
    local model's.
    """

    def __init__(self, handle: nahual.ModelHandle, model_class: type[Model]) -> None:
        self.handle = handle
        self.params = {**model_class.defaults, **handle.params}

    def process(self, payload: Any, **params: Any) -> Any:
        try:
            return self.handle(payload, **params)
        except nahual.RemoteError as exc:
            kind = getattr(nahual.errors, exc.remote_type, None)
            if isinstance(kind, type) and issubclass(kind, nahual.errors.NahualError):
                raise kind(exc.remote_message) from exc
            raise


class ServedModelTests(ModelTests):
    """:class:`ModelTests` of :attr:`model_class` loaded with :attr:`load_params` by the module's ``client``."""

    @pytest.fixture(scope="class")
    def model(self, client: nahual.Client) -> ServedModel:  # type: ignore[override]
        return ServedModel(client.load(self.model_class.name, **self.load_params), self.model_class)
