"""Tests of nahual.catalog: every shipped model has a default environment that exists."""

from __future__ import annotations

import os
import shutil
import subprocess
import tomllib
from pathlib import Path

import pytest

from nahual.catalog import CATALOG, ENVS_DIR_VARIABLE, default_env, envs_dir
from nahual.errors import ConfigError

REPO = Path(__file__).resolve().parent.parent


def entry_point_models() -> set[str]:
    """Model names the repository's pyproject.toml registers."""
    with open(REPO / "pyproject.toml", "rb") as handle:
        return set(tomllib.load(handle)["project"]["entry-points"]["nahual.models"])


def test_every_registered_model_is_in_the_catalog():
    assert entry_point_models() == set(CATALOG)


@pytest.mark.parametrize("model", ["threshold", "laptrack", "regionprops"])
def test_zoo_models_default_to_their_locked_uv_project_in_the_checkout(model, monkeypatch):
    monkeypatch.delenv(ENVS_DIR_VARIABLE, raising=False)
    spec = default_env(model)
    assert spec == f"uv:{REPO / 'envs' / model}"
    project = Path(spec.split(":", 1)[1])
    assert (project / "pyproject.toml").is_file() and (project / "uv.lock").is_file()
    with open(project / "pyproject.toml", "rb") as handle:
        dependencies = tomllib.load(handle)["project"]["dependencies"]
    assert "nahual" in dependencies


def test_echo_runs_in_the_current_environment():
    assert default_env("echo") == "current"


def test_the_envs_folder_can_be_moved_with_an_environment_variable(tmp_path, monkeypatch):
    (tmp_path / "threshold").mkdir()
    (tmp_path / "threshold" / "pyproject.toml").write_text("[project]\nname = 'x'\n")
    monkeypatch.setenv(ENVS_DIR_VARIABLE, str(tmp_path))
    assert envs_dir() == tmp_path
    assert default_env("threshold") == f"uv:{tmp_path / 'threshold'}"
    with pytest.raises(ConfigError, match="environment of model 'laptrack' not found"):
        default_env("laptrack")


def test_a_missing_envs_folder_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv(ENVS_DIR_VARIABLE, str(tmp_path / "nowhere"))
    with pytest.raises(ConfigError, match=f"\\${ENVS_DIR_VARIABLE} is .*nowhere, which is not a folder"):
        default_env("threshold")


def test_config_overrides_win_and_unknown_models_name_the_catalog():
    assert default_env("threshold", {"threshold": "venv:/opt/seg"}) == "venv:/opt/seg"
    assert default_env("cellpose", {"cellpose": "uv:envs/cellpose"}) == "uv:envs/cellpose"
    with pytest.raises(ConfigError, match=r"no default environment for model 'stardist'.*'threshold'"):
        default_env("stardist")


@pytest.mark.parametrize("model", ["threshold", "laptrack", "regionprops", "trackastra", "cellpose", "cellpose-sam"])
def test_each_environment_lock_matches_its_pyproject_and_nahuals(model):
    """The locks record nahual's own requirements: re-lock after editing the top-level pyproject.toml."""
    uv = shutil.which("uv")
    assert uv is not None, "uv is not on PATH (it comes with nahual[workflow])"
    env = {**os.environ, "UV_PYTHON_DOWNLOADS": "never"}
    check = subprocess.run(
        [uv, "lock", "--check", "--offline", "--project", str(REPO / "envs" / model), "--python", "python3"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert check.returncode == 0, (
        f"envs/{model}/uv.lock is out of date; run `UV_PYTHON_DOWNLOADS=never uv lock --python python3` "
        f"in envs/{model}: {check.stderr.strip()[-300:]}"
    )
