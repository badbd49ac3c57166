"""The root flake.nix, offline: it parses, it evaluates against a nixpkgs stub, and its shell runs a server.

nixpkgs cannot be fetched here, so a copy of flake.nix has its nixpkgs input
pointed at tests/flakes/stub-nixpkgs (plain paths and a bare-derivation
mkShell). Everything else is the real flake: the shell list built from
envs/, the CUDA switch, and the shellHook that syncs the uv environment and
activates it before ``python -m nahual serve`` runs.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from nahual.launcher import NixEnv, UvEnv, launch

ROOT = Path(__file__).resolve().parent.parent
NIXPKGS = "github:NixOS/nixpkgs/nixos-unstable"

needs_nix = pytest.mark.skipif(not NixEnv.tool()[0], reason="nix is missing (.ci/setup-nix.sh installs it)")


@pytest.fixture
def offline(tmp_path: Path, short_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Nix settings that never reach for the network, and a private runtime directory."""
    registry = tmp_path / "registry.json"
    registry.write_text('{"flakes": [], "version": 2}')
    monkeypatch.setenv(
        "NIX_CONFIG",
        f"experimental-features = nix-command flakes\nsandbox = false\nsubstituters =\nflake-registry = {registry}\n",
    )
    monkeypatch.setenv("NAHUAL_RUNTIME_DIR", str(short_dir / "rt"))
    monkeypatch.setenv("UV_PYTHON_DOWNLOADS", "never")


def stubbed_flake(tmp_path: Path, envs: dict[str, str]) -> Path:
    """A copy of the root flake.nix on the nixpkgs stub, with ``envs`` as envs/NAME/pyproject.toml texts."""
    stub = tmp_path / "stub"
    shutil.copytree(ROOT / "tests" / "flakes" / "stub-nixpkgs", stub)
    (stub / "python-prefix").write_text(sys.base_prefix)
    flake = tmp_path / "flake"
    flake.mkdir()
    text = (ROOT / "flake.nix").read_text()
    assert NIXPKGS in text, "the root flake's nixpkgs input changed: update NIXPKGS in this test"
    (flake / "flake.nix").write_text(text.replace(NIXPKGS, f"path:{stub}"))
    for name, pyproject in envs.items():
        (flake / "envs" / name).mkdir(parents=True)
        (flake / "envs" / name / "pyproject.toml").write_text(pyproject)
    return flake


def nix_eval(flake: Path, apply: str) -> object:
    done = subprocess.run(
        ["nix", "eval", "--json", f"path:{flake}#devShells.x86_64-linux", "--apply", apply],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


@pytest.mark.skipif(shutil.which("nix-instantiate") is None, reason="nix is missing (.ci/setup-nix.sh installs it)")
def test_root_flake_parses() -> None:
    done = subprocess.run(
        ["nix-instantiate", "--parse", str(ROOT / "flake.nix")], capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stderr
    assert "devShells" in done.stdout


@needs_nix
def test_every_env_folder_is_a_shell_and_cuda_is_opt_in(tmp_path: Path, offline: None) -> None:
    shipped = {p.parent.name: p.read_text() for p in (ROOT / "envs").glob("*/pyproject.toml")}
    gpu = '[project]\nname = "gpu"\nversion = "0"\n\n[tool.nahual]\ncuda = true\n'
    flake = stubbed_flake(tmp_path, {**shipped, "gpu": gpu})
    shells = nix_eval(flake, "builtins.mapAttrs (name: shell: { inherit (shell) NAHUAL_SHELL shellHook; })")
    assert isinstance(shells, dict)
    assert sorted(shells) == sorted([*shipped, "gpu", "default"])
    assert shells["default"]["NAHUAL_SHELL"] == "orchestrator"
    assert "--extra workflow" in shells["default"]["shellHook"]
    for name in shipped:
        hook = shells[name]["shellHook"]
        assert f'nahual_project="$nahual_root/envs/{name}"' in hook and "uv sync" in hook
        # the torch environments (cellpose, trackastra) declare cuda = true
        cuda = tomllib.loads(shipped[name]).get("tool", {}).get("nahual", {}).get("cuda", False)
        assert ("/run/opengl-driver/lib" in hook) == cuda, name
    assert "/run/opengl-driver/lib" in shells["gpu"]["shellHook"]


@needs_nix
@pytest.mark.skipif(not UvEnv.tool()[0], reason="uv is not installed")
def test_a_root_flake_shell_runs_the_server_in_its_uv_env(
    tmp_path: Path, offline: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The shell named numpy2 syncs <NAHUAL_ROOT>/envs/numpy2, here the test environment tests/envs/numpy2.
    env = ROOT / "tests" / "envs" / "numpy2"
    flake = stubbed_flake(tmp_path, {"numpy2": (env / "pyproject.toml").read_text()})
    checkout = tmp_path / "checkout"
    (checkout / "envs").mkdir(parents=True)
    (checkout / "envs" / "numpy2").symlink_to(env)
    monkeypatch.setenv("NAHUAL_ROOT", str(checkout))
    with launch(f"nix:path:{flake}#numpy2", timeout=60) as server, server.client() as client:
        info = client.info()
        assert info["packages"]["numpy"].split(".")[0] == "2"
        assert info["executable"] == str(checkout / "envs" / "numpy2" / ".venv" / "bin" / "python")
        assert info["pid"] == server.pid
        environ = Path(f"/proc/{server.pid}/environ").read_bytes().split(b"\0")
        assert b"NAHUAL_SHELL=numpy2" in environ
    assert server.returncode == 0
