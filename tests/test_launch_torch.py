"""The CPU switch of uv environments whose lock holds torch: options, the default, and the commands it runs.

A stand-in ``uv`` on PATH records its arguments, so that no torch is installed
here; ``tests/test_models_cellpose.py`` runs the real thing on the prepared
``envs/cellpose``.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

from nahual.errors import ConfigError, LaunchError
from nahual.launcher import parse_env_spec
from nahual.launcher._torch import cpu_requirements, cuda_only_packages, default_build, torch_build

LOCK = """
version = 1
[[package]]
name = "torch"
version = "2.13.0"
[[package]]
name = "torchvision"
version = "0.28.0"
[[package]]
name = "nvidia-cudnn-cu13"
version = "9.0"
[[package]]
name = "cuda-toolkit"
version = "13.0"
[[package]]
name = "triton"
version = "3.7.1"
[[package]]
name = "numpy"
version = "2.0.2"
"""

FAKE_UV = """#!{python}
import json, os, sys
from pathlib import Path
with open(os.environ["FAKE_UV_LOG"], "a") as log:
    log.write(json.dumps(sys.argv[1:]) + "\\n")
if sys.argv[1] == "sync":
    venv = Path(sys.argv[sys.argv.index("--project") + 1]) / ".venv" / "bin"
    venv.mkdir(parents=True, exist_ok=True)
    (venv / "python").touch()
sys.exit(int(os.environ.get("FAKE_UV_PIP_EXIT", "0")) if sys.argv[1] == "pip" else 0)
"""


@pytest.fixture
def project(tmp_path: Path) -> Path:
    folder = tmp_path / "env"
    folder.mkdir()
    (folder / "pyproject.toml").write_text('[project]\nname = "env"\nversion = "0"\n')
    (folder / "uv.lock").write_text(LOCK)
    return folder


@pytest.fixture
def fake_uv(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A ``uv`` first on PATH that logs each call as a JSON line; returns the log."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    uv = bin_dir / "uv"
    uv.write_text(FAKE_UV.format(python=sys.executable))
    uv.chmod(0o755)
    log = tmp_path / "uv.log"
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_UV_LOG", str(log))
    return log


def calls(log: Path) -> list[list[str]]:
    return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []


def test_the_lock_gives_the_cpu_builds_and_the_packages_left_out(project: Path) -> None:
    assert cpu_requirements(project) == ["torch==2.13.0+cpu", "torchvision==0.28.0+cpu"]
    assert cuda_only_packages(project) == ["cuda-toolkit", "nvidia-cudnn-cu13", "torch", "torchvision", "triton"]
    (project / "uv.lock").write_text('version = 1\n[[package]]\nname = "numpy"\nversion = "2.0.2"\n')
    assert cpu_requirements(project) == [] and parse_env_spec(f"uv:{project}").torch is None


def test_the_build_comes_from_the_spec_then_nahual_torch_then_the_machine(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NAHUAL_TORCH", "cuda")
    assert torch_build("cpu") == "cpu" and torch_build(None) == "cuda"
    monkeypatch.delenv("NAHUAL_TORCH")
    assert torch_build(None) == default_build()
    expected = "cpu" if sys.platform == "linux" and not Path("/dev/nvidiactl").exists() else "cuda"
    assert default_build() == expected
    with pytest.raises(ConfigError, match=r"torch= in the uv spec must be one of cpu, cuda, got 'gpu'"):
        torch_build("gpu")
    monkeypatch.setenv("NAHUAL_TORCH", "rocm")
    with pytest.raises(ConfigError, match=r"\$NAHUAL_TORCH must be one of cpu, cuda, got 'rocm'"):
        torch_build(None)


def test_spec_options_join_with_ampersands(project: Path) -> None:
    backend = parse_env_spec(f"uv:{project}?python=python3&torch=cpu")
    assert backend.project == project and backend.interpreter == "python3" and backend.torch == "cpu"
    assert "torch cpu" in backend.available()[1]
    assert "torch cuda (as locked)" in parse_env_spec(f"uv:{project}?torch=cuda").available()[1]
    with pytest.raises(ConfigError, match="uv spec options are python=..., torch=... joined by '&', got 'gpu=1'"):
        parse_env_spec(f"uv:{project}?gpu=1").options  # noqa: B018


def test_cpu_prepare_leaves_cuda_out_then_installs_the_cpu_builds(project: Path, fake_uv: Path) -> None:
    backend = parse_env_spec(f"uv:{project}?torch=cpu")
    backend.prepare()
    sync, install = calls(fake_uv)
    assert sync[0] == "sync" and "--locked" in sync
    skipped = sorted(arg.split("=", 1)[1] for arg in sync if arg.startswith("--no-install-package="))
    assert skipped == cuda_only_packages(project)
    assert install == [
        "pip",
        "install",
        "--python",
        str(project / ".venv" / "bin" / "python"),
        "--no-deps",
        "--compile-bytecode",
        "torch==2.13.0+cpu",
        "torchvision==0.28.0+cpu",
    ]
    assert backend.is_synced()
    backend.prepare()
    assert len(calls(fake_uv)) == 2  # synced: nothing runs again


def test_the_stamp_knows_the_build(project: Path, fake_uv: Path) -> None:
    parse_env_spec(f"uv:{project}?torch=cpu").prepare()
    cuda = parse_env_spec(f"uv:{project}?torch=cuda")
    assert not cuda.is_synced()
    cuda.prepare()
    assert [call[0] for call in calls(fake_uv)] == ["sync", "pip", "sync"]
    assert not any(arg.startswith("--no-install-package") for arg in calls(fake_uv)[-1])


def test_no_cpu_build_found_says_where_to_point_uv(
    project: Path, fake_uv: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FAKE_UV_PIP_EXIT", "1")
    with pytest.raises(LaunchError, match=r"installing the CPU build torch==2.13.0\+cpu torchvision==0.28.0\+cpu"):
        parse_env_spec(f"uv:{project}?torch=cpu").prepare()
    with pytest.raises(LaunchError, match="UV_FIND_LINKS.*download.pytorch.org/whl/cpu.*UV_INDEX"):
        parse_env_spec(f"uv:{project}?torch=cpu").prepare()
