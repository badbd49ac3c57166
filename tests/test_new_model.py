"""``nahual new-model NAME``: the folder it writes is a working model in its own environment.

What a user does next is tested: the model passes its own ModelTests, a
server loads it as ``module:Class`` and answers, and once the folder is
installed (editable, into a fresh venv) the server finds it by name through
its ``nahual.models`` entry point.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import numpy as np
import pytest
from conftest import ROOT, subprocess_env

from nahual import Client
from nahual.cli import main
from nahual.errors import ConfigError
from nahual.launcher import UvEnv, launch
from nahual.launcher._backends import find_uv

BLOBS = np.zeros((24, 24), np.float32)
BLOBS[2:6, 2:6] = BLOBS[10:20, 12:15] = 1.0


@pytest.fixture
def made(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> Path:
    """``nahual new-model my-cells`` run in an empty folder outside the checkout."""
    monkeypatch.chdir(tmp_path)
    assert main(["new-model", "my-cells"]) == 0
    return tmp_path / "envs" / "my-cells"


def check_labels(client: Client, model: str) -> None:
    handle = client.load(model, level=0.5)
    labels = handle({"image": BLOBS, "axes": "yx"})["labels"]
    assert labels.dtype == np.uint32 and labels.max() == 2
    assert (labels > 0).sum() == 16 + 30


def test_it_writes_a_uv_project_with_a_relative_nahual_and_an_entry_point(
    made: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out, err = capsys.readouterr()
    assert sorted(p.name for p in made.iterdir()) == [
        "README.md",
        "my_cells_model.py",
        "pyproject.toml",
        "test_my_cells_model.py",
    ]
    project = tomllib.loads((made / "pyproject.toml").read_text())
    assert project["project"]["entry-points"]["nahual.models"] == {"my-cells": "my_cells_model:MyCells"}
    assert "nahual" in project["project"]["dependencies"]
    source = project["tool"]["uv"]["sources"]["nahual"]
    assert source["editable"] is True and not os.path.isabs(source["path"])
    assert (made / source["path"]).resolve() == ROOT
    for path in made.iterdir():
        assert str(made.parent.parent) not in path.read_text()  # no absolute machine paths in what it writes
    assert "next: edit envs/my-cells/my_cells_model.py" in out
    assert "nahual serve ipc:///tmp/my-cells.sock --env uv:envs/my-cells --preload my-cells" in out
    assert "is outside the nahual checkout" in err  # and it says where the relative path points


def test_inside_a_checkout_the_path_is_the_checkouts_root(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    checkout = tmp_path / "lab-nahual"
    (checkout / "nahual").mkdir(parents=True)
    (checkout / "pyproject.toml").write_text('[project]\nname = "nahual"\n')
    assert main(["new-model", "cells", "--dir", str(checkout / "envs"), "--nahual", str(checkout)]) == 0
    pyproject = (checkout / "envs" / "cells" / "pyproject.toml").read_text()
    assert 'nahual = { path = "../..", editable = true }' in pyproject
    assert "outside the nahual checkout" not in capsys.readouterr().err


def test_it_refuses_bad_names_existing_folders_and_non_checkouts(made: Path, tmp_path: Path) -> None:
    from nahual.cli._new_model import write_model_env

    with pytest.raises(ConfigError, match=r"lower-case letters.*got 'My Cells'"):
        write_model_env("My Cells", tmp_path, ROOT)
    with pytest.raises(ConfigError, match=r"found envs/my-cells already there"):
        write_model_env("my-cells", Path("envs"), ROOT)
    with pytest.raises(ConfigError, match=r"--nahual must be a nahual checkout"):
        write_model_env("other", tmp_path, tmp_path)
    assert write_model_env("model", tmp_path, ROOT)[1].read_text().count("class ModelModel(Model):") == 1


def test_the_model_passes_its_own_tests(made: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(made)],
        cwd=made,
        env=subprocess_env({"PYTHONPATH": None}),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert " passed" in done.stdout


def test_a_server_loads_it_as_module_class(made: Path, serve) -> None:  # type: ignore[no-untyped-def]
    served = serve("--preload", "my_cells_model:MyCells", env={"PYTHONPATH": f"{made}{os.pathsep}{ROOT}"})
    with Client(served.address, timeout=10) as client:
        check_labels(client, "my_cells_model:MyCells")


@pytest.mark.skipif(not UvEnv.tool()[0], reason="uv is not installed")
def test_installed_it_is_served_by_name(made: Path, tmp_path: Path, short_dir: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    uv = find_uv()
    assert uv is not None
    venv = tmp_path / "venv"
    base = shutil.which("python3") or sys.executable
    environ = {**os.environ, "UV_PYTHON_DOWNLOADS": "never", "VIRTUAL_ENV": str(venv)}
    subprocess.run([uv, "venv", "-q", "--system-site-packages", "--python", base, str(venv)], env=environ, check=True)
    install = [uv, "pip", "install", "-q", "--no-deps", "--python", str(venv / "bin" / "python"), "-e", str(made)]
    # The build backend (hatchling) comes from uv's cache when it is there, else from the index.
    if subprocess.run([*install, "--offline"], env=environ, capture_output=True, check=False).returncode != 0:
        subprocess.run(install, env=environ, check=True, timeout=120)
    monkeypatch.setenv("NAHUAL_RUNTIME_DIR", str(short_dir / "rt"))
    with launch(f"venv:{venv}", preload="my-cells", params={"level": 0.5}, timeout=60) as server:
        with server.client() as client:
            assert client.info()["executable"] == str(venv / "bin" / "python")
            check_labels(client, "my-cells")
