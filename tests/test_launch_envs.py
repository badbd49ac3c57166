"""Proof of isolation: servers in uv environments and a Nix devShell, called from this process.

tests/envs/numpy1 and tests/envs/numpy2 pin conflicting numpy versions and
depend on this checkout's nahual (editable), so the servers run the code
under test. tests/flakes/python is a flake with no inputs, used through a
``path:`` copy so that it evaluates offline and git state does not matter.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import alive, wait_until

from nahual.errors import LaunchError
from nahual.launcher import NixEnv, UvEnv, launch, parse_env_spec

ROOT = Path(__file__).resolve().parent.parent
ENVS = ROOT / "tests" / "envs"
DEADLINE = 60.0

needs_uv = pytest.mark.skipif(not UvEnv.tool()[0], reason="uv is not installed (pip install uv)")
needs_nix = pytest.mark.skipif(not NixEnv.tool()[0], reason="nix is not installed (.ci/setup-nix.sh installs it)")


@pytest.fixture(autouse=True)
def runtime(short_dir: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = short_dir / "rt"
    monkeypatch.setenv("NAHUAL_RUNTIME_DIR", str(path))
    monkeypatch.setenv("UV_PYTHON_DOWNLOADS", "never")
    return path


def leftovers(runtime: Path) -> list[str]:
    return sorted(p.name for p in runtime.glob("*") if p.suffix in (".sock", ".ready"))


@needs_uv
@pytest.mark.parametrize("name", ["numpy1", "numpy2"])
def test_test_environment_locks_are_current(name: str) -> None:
    uv = UvEnv(str(ENVS / name))
    done = subprocess.run(
        [shutil.which("uv") or "uv", "lock", "--check", "--project", str(uv.project), "--python", uv.interpreter],
        capture_output=True,
        text=True,
        check=False,
    )
    fix = f"tests/envs/{name}/uv.lock is stale; run: uv lock --project tests/envs/{name}"
    assert done.returncode == 0, f"{fix}\n{done.stderr}"


@needs_uv
def test_two_uv_environments_with_conflicting_numpy_at_once(runtime: Path) -> None:
    image = np.arange(24, dtype=np.float32).reshape(4, 6)
    # one client session (this process) talks to both servers at once
    with (
        launch(f"uv:{ENVS / 'numpy1'}", timeout=60) as one,
        launch(f"uv:{ENVS / 'numpy2'}", timeout=60) as two,
        one.client() as c1,
        two.client() as c2,
    ):
        info1, info2 = c1.info(), c2.info()
        assert info1["packages"]["numpy"].startswith("1.26.")
        assert info2["packages"]["numpy"].split(".")[0] == "2"
        assert info1["executable"].startswith(str(ENVS / "numpy1" / ".venv"))
        assert info2["executable"].startswith(str(ENVS / "numpy2" / ".venv"))
        assert (info1["pid"], info2["pid"]) == (one.pid, two.pid)  # the venv's python itself, no `uv run`
        for client in (c1, c2):
            echo = client.load("echo")
            np.testing.assert_array_equal(echo({"image": image})["image"], image)
    assert not alive(one.pid) and not alive(two.pid)
    assert leftovers(runtime) == []


@needs_uv
def test_a_synced_environment_is_not_synced_again(monkeypatch: pytest.MonkeyPatch) -> None:
    env = UvEnv(str(ENVS / "numpy2"))
    env.prepare()
    assert env.is_synced()
    calls: list[list[str]] = []
    from nahual.launcher import _backends as backends

    monkeypatch.setattr(backends, "run_tool", lambda argv, what, env=None: calls.append(argv))
    env.prepare()
    assert calls == []
    env.prepare(force=True)
    assert calls and calls[0][1:3] == ["sync", "--project"] and "--locked" in calls[0]


@needs_uv
def test_uv_sync_failure_is_a_launch_error(tmp_path: Path) -> None:
    project = tmp_path / "broken"
    project.mkdir()
    (project / "pyproject.toml").write_text('[project]\nname = "broken"\nversion = "0"\nrequires-python = ">=3.99"\n')
    with pytest.raises(LaunchError, match=r"^uv sync of uv:.*broken failed \(exit \d+\): "):
        launch(f"uv:{project}")


@needs_uv
def test_serve_with_env_execs_into_the_environment(runtime: Path) -> None:
    """``nahual serve ADDRESS --env uv:DIR`` becomes the server: SIGTERM to its pid stops it."""
    runtime.mkdir(mode=0o700)
    address = f"ipc://{runtime}/exec.sock"
    ready = runtime / "exec.ready"
    env = f"uv:{ENVS / 'numpy1'}"
    argv = [sys.executable, "-m", "nahual", "serve", address, "--env", env, "--ready-file", str(ready)]
    with open(runtime / "exec.log", "wb") as log:
        process = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_until(lambda: ready.exists() or process.poll() is not None, DEADLINE, "the ready file")
        assert process.poll() is None, (runtime / "exec.log").read_text()
        assert json.loads(ready.read_text())["pid"] == process.pid  # exec'd, not a child
        from nahual import Client

        with Client(address, timeout=10) as client:
            assert client.info()["packages"]["numpy"].startswith("1.26.")
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=DEADLINE) == 0
        assert leftovers(runtime) == []
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


@pytest.fixture
def offline_nix(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A copy of the test flake, and a Nix configuration that never reaches for the network."""
    flake = tmp_path / "flake"
    shutil.copytree(ROOT / "tests" / "flakes" / "python", flake)
    registry = tmp_path / "registry.json"
    registry.write_text('{"flakes": [], "version": 2}')
    monkeypatch.setenv(
        "NIX_CONFIG",
        f"experimental-features = nix-command flakes\nsandbox = false\nsubstituters =\nflake-registry = {registry}\n",
    )
    monkeypatch.setenv("NAHUAL_TEST_PYTHON_BIN", str(Path(sys.executable).parent))
    return flake


@needs_nix
def test_nix_devshell_runs_the_server(runtime: Path, offline_nix: Path) -> None:
    spec = f"nix:path:{offline_nix}#default"
    assert parse_env_spec(spec).available()[0]
    with launch(spec, timeout=60) as server:
        with server.client() as client:
            info = client.info()
            assert info["pid"] == server.pid  # nix develop execs the command: SIGTERM reaches the server
            assert info["executable"].startswith(str(Path(sys.executable).parent))
            echo = client.load("echo")
            np.testing.assert_array_equal(echo({"image": np.ones(3)})["image"], np.ones(3))
        environ = Path(f"/proc/{server.pid}/environ").read_bytes().split(b"\0")
        assert b"NAHUAL_TEST_SHELL=python" in environ  # it really ran inside the devShell
    assert server.returncode == 0
    assert not alive(server.pid)
    assert leftovers(runtime) == []


@needs_nix
def test_a_broken_flake_is_a_launch_error(runtime: Path, offline_nix: Path) -> None:
    (offline_nix / "flake.nix").write_text("{ outputs = { self }: { devShells = 1; }; }")
    with pytest.raises(LaunchError, match=r"^building nix:path:.* failed \(exit 1\): "):
        launch(f"nix:path:{offline_nix}#default", timeout=60)
    assert leftovers(runtime) == []


@needs_uv
def test_envs_probes_what_it_can_without_side_effects(tmp_path: Path) -> None:
    project = tmp_path / "fresh"
    project.mkdir()
    (project / "pyproject.toml").write_text('[project]\nname = "fresh"\nversion = "0"\n')
    ok, why = parse_env_spec(f"uv:{project}").check()
    assert ok and why.endswith(f"not synced yet (the first start or `nahual env-prepare uv:{project}` runs uv sync)")
    assert not (project / ".venv").exists()  # checking did not sync
    UvEnv(str(ENVS / "numpy1")).prepare()  # a no-op once synced
    ok, why = parse_env_spec(f"uv:{ENVS / 'numpy1'}").check()
    assert ok and why.endswith(f"{ENVS / 'numpy1' / '.venv' / 'bin' / 'python'} imports nahual from {ROOT / 'nahual'}")
    expected = f"sh at {shutil.which('sh')} (the prefix is not run by this check)"
    assert parse_env_spec("cmd:sh -c 'exit 1'").check() == (True, expected)


@needs_nix
def test_env_prepare_shows_the_cause_of_a_nix_failure(
    runtime: Path, offline_nix: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from nahual.cli import main

    shutil.copyfile(ROOT / "tests" / "flakes" / "broken" / "flake.nix", offline_nix / "flake.nix")
    assert main(["env-prepare", f"nix:path:{offline_nix}#default"]) == 1
    first, command, *details = capsys.readouterr().err.splitlines()
    assert first.startswith("nahual env-prepare: error: building nix:path:")
    assert first.endswith("#default failed (exit 1): attribute 'pythonPath' missing")
    assert command.startswith("command: nix ") and "develop" in command
    assert details[0] == "error: attribute 'pythonPath' missing"
    assert any("flake.nix:" in line for line in details)  # where, from Nix itself
    assert not any("--show-trace" in line for line in details)


@needs_nix
def test_envs_checks_that_a_nix_shell_exists_evaluates_and_imports_nahual(
    runtime: Path, offline_nix: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    from nahual.cli import main

    broken = tmp_path / "broken"
    shutil.copytree(ROOT / "tests" / "flakes" / "broken", broken)
    good, missing, bad = f"nix:path:{offline_nix}#default", f"nix:path:{offline_nix}#nope", f"nix:path:{broken}"
    assert main(["envs", good]) == 0
    assert main(["envs", good, missing, bad]) == 1
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith(f"{good}  yes  nix at ")
    assert lines[0].endswith(f"imports nahual from {ROOT / 'nahual'}")
    assert lines[1] == lines[0] and lines[2].startswith(f"{missing}  no  ")
    assert "does not provide attribute 'devShells.x86_64-linux.nope'" in lines[2]
    assert lines[3].startswith(f"{bad}  no  ") and lines[3].endswith("attribute 'pythonPath' missing (exit 1)")
    # A shell whose Python has no nahual: isolated (-I -S) from this checkout and its site-packages.
    bare = tmp_path / "bare"
    bare.mkdir()
    (bare / "python").write_text(f'#!/bin/sh\nexec {sys.executable} -I -S "$@"\n')
    (bare / "python").chmod(0o755)
    monkeypatch.setenv("NAHUAL_TEST_PYTHON_BIN", str(bare))
    assert main(["envs", good]) == 1
    assert capsys.readouterr().out.strip().endswith("ModuleNotFoundError: No module named 'nahual' (exit 1)")


@needs_uv
def test_env_prepare_prints_the_interpreter(capsys: pytest.CaptureFixture[str]) -> None:
    from nahual.cli import main

    spec = f"uv:{ENVS / 'numpy2'}"
    assert main(["env-prepare", spec]) == 0
    assert capsys.readouterr().out.strip() == f"{spec} ready: {ENVS / 'numpy2' / '.venv' / 'bin' / 'python'}"
