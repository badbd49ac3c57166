"""Environment specs, backends' commands and availability, the runtime directory, ``nahual envs``.

Nothing here starts a server; see test_launch_lifecycle.py and test_launch_envs.py.
"""

from __future__ import annotations

import os
import shutil
import stat
import sys
from pathlib import Path

import pytest

from nahual.cli import main
from nahual.errors import ConfigError, LaunchError
from nahual.launcher import (
    ApptainerEnv,
    CmdEnv,
    CurrentEnv,
    NixEnv,
    UvEnv,
    VenvEnv,
    launch,
    parse_env_spec,
    private_ipc_address,
    runtime_dir,
)
from nahual.launcher._api import serve_args


@pytest.fixture(autouse=True)
def private_runtime(short_dir: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = short_dir / "rt"
    monkeypatch.setenv("NAHUAL_RUNTIME_DIR", str(path))
    return path


@pytest.mark.parametrize(
    ("spec", "cls", "value"),
    [
        ("current", CurrentEnv, ""),
        ("venv:some/venv", VenvEnv, "some/venv"),
        ("uv:envs/threshold", UvEnv, "envs/threshold"),
        ("nix:.#threshold", NixEnv, ".#threshold"),
        ("nix:github:org/repo#seg", NixEnv, "github:org/repo#seg"),
        ("apptainer:images/seg.sif", ApptainerEnv, "images/seg.sif"),
        ("cmd:srun --ntasks 1", CmdEnv, "srun --ntasks 1"),
        (" uv:envs/x ", UvEnv, "envs/x"),
    ],
)
def test_specs_parse_to_their_backend(spec: str, cls: type, value: str) -> None:
    backend = parse_env_spec(spec)
    assert type(backend) is cls
    assert backend.value == value
    assert parse_env_spec(backend.spec) == backend
    assert parse_env_spec(backend) is backend


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("", "must be 'current' or KIND:VALUE"),
        ("conda:seg", "got 'conda:seg'"),
        ("uv", "got 'uv'"),
        ("current:x", "got 'current:x'"),
        ("uv:", "must give a value after 'uv:'"),
        ("nix:.#", "must be nix:FLAKE#SHELL"),
        ("uv:envs/x?python=", "uv:PROJECT_DIR?python=INTERPRETER"),
        ("cmd:'unbalanced", "shell-quoted command prefix"),
    ],
)
def test_bad_specs_name_what_was_expected_and_found(spec: str, message: str) -> None:
    with pytest.raises(ConfigError, match="^.*" + message.replace("?", r"\?").replace(".", r"\.")):
        parse_env_spec(spec)


def test_a_spec_must_be_a_string() -> None:
    with pytest.raises(ConfigError, match=r"must be a string .* got int"):
        parse_env_spec(3)  # type: ignore[arg-type]


def test_commands_run_python_inside_each_environment(tmp_path: Path) -> None:
    args = ["-m", "nahual", "serve", "ipc://x"]
    assert parse_env_spec("current").command(args) == [sys.executable, *args]
    assert parse_env_spec(f"venv:{tmp_path}/v").command(args) == [f"{tmp_path}/v/bin/python", *args]
    # uv: the venv's own interpreter, never `uv run` (SIGKILL to uv would orphan the server)
    assert parse_env_spec(f"uv:{tmp_path}/p").command(args) == [f"{tmp_path}/p/.venv/bin/python", *args]
    nix = parse_env_spec("nix:.#seg").command(args)
    assert nix[0] == "nix" and nix[-len(args) - 4 :] == ["develop", ".#seg", "--command", "python", *args]
    assert parse_env_spec("nix:./flakes").command(args)[-len(args) - 3] == "./flakes#default"
    assert parse_env_spec("cmd:env A='b c'").command(args) == ["env", "A=b c", "python", *args]


def test_relative_paths_are_taken_from_the_working_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert parse_env_spec("venv:v").python() == [str(tmp_path / "v" / "bin" / "python")]
    assert parse_env_spec("uv:p").python() == [str(tmp_path / "p" / ".venv" / "bin" / "python")]


def test_apptainer_binds_the_runtime_directory(tmp_path: Path, private_runtime: Path) -> None:
    command = parse_env_spec(f"apptainer:{tmp_path}/seg.sif").command(["-V"])
    assert command[1] == "exec"
    bind = command.index("--bind")
    assert command[bind + 1] == str(private_runtime)
    assert command[-3:] == [f"{tmp_path}/seg.sif", "python", "-V"]
    assert parse_env_spec("apptainer:docker://org/seg:1").command([])[-2] == "docker://org/seg:1"


def test_uv_uses_the_machines_python_unless_the_spec_names_one() -> None:
    assert parse_env_spec("uv:p").interpreter == (shutil.which("python3") or sys.executable)
    named = parse_env_spec("uv:p?python=/opt/py312/bin/python3")
    assert named.interpreter == "/opt/py312/bin/python3"
    assert named.project.name == "p"


def test_availability_says_why_not_in_one_line(tmp_path: Path) -> None:
    ok, why = parse_env_spec(f"venv:{tmp_path}/none").available()
    assert not ok and "bin/python does not exist" in why and "\n" not in why
    (tmp_path / "v" / "bin").mkdir(parents=True)
    os.symlink(sys.executable, tmp_path / "v" / "bin" / "python")
    assert parse_env_spec(f"venv:{tmp_path}/v").available()[0]
    ok, why = parse_env_spec("cmd:no-such-program-nahual --x").available()
    assert not ok and why == "no-such-program-nahual not found on PATH"
    ok, why = parse_env_spec(f"apptainer:{tmp_path}/none.sif").available()
    assert not ok and "\n" not in why
    if UvEnv.tool()[0]:
        ok, why = parse_env_spec(f"uv:{tmp_path}").available()
        assert not ok and why.endswith("pyproject.toml does not exist (expected a uv project)")


def test_launch_refuses_an_unavailable_environment(tmp_path: Path) -> None:
    with pytest.raises(LaunchError, match=r"environment venv:.* is not available here: .*bin/python does not exist"):
        launch(f"venv:{tmp_path}/none")


def test_params_without_a_model_are_refused() -> None:
    with pytest.raises(ConfigError, match="params need a model to preload"):
        serve_args("ipc://x", params={"sigma": 1})
    assert serve_args("ipc://x", None, "echo", {"delay_s": 0}, parent=7) == [
        "-P",
        "-m",
        "nahual",
        "serve",
        "ipc://x",
        "--preload",
        "echo",
        "--params",
        '{"delay_s": 0}',
        "--parent",
        "7",
    ]


def test_private_addresses_are_unique_and_in_a_private_directory(private_runtime: Path) -> None:
    addresses = {private_ipc_address() for _ in range(50)}
    assert len(addresses) == 50
    for address in addresses:
        path = Path(address.removeprefix("ipc://"))
        assert path.parent == private_runtime and len(str(path)) <= 107
    assert stat.S_IMODE(private_runtime.stat().st_mode) == 0o700


def test_an_open_runtime_directory_is_refused(private_runtime: Path) -> None:
    private_runtime.mkdir(mode=0o755)
    private_runtime.chmod(0o755)
    with pytest.raises(ConfigError, match=r"must be private \(mode 0700\), found mode 0755"):
        runtime_dir()


def test_a_socket_path_too_long_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NAHUAL_RUNTIME_DIR", str(tmp_path / ("d" * 100)))
    with pytest.raises(ConfigError, match="ipc socket path must be at most 107 bytes, found 1"):
        private_ipc_address()


def test_envs_lists_every_backend_in_one_line_each(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["envs"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in lines] == ["current", "venv", "uv", "nix", "apptainer", "cmd"]
    assert lines[0].split()[1] == "yes"
    assert all(line.split()[1] in ("yes", "no") for line in lines)


def test_envs_checks_given_specs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["envs", "current"]) == 0
    assert main(["envs", "current", f"venv:{tmp_path}/none"]) == 1
    out = capsys.readouterr().out.splitlines()
    assert out[-1].startswith(f"venv:{tmp_path}/none  no  ")
    assert main(["envs", "conda:x"]) == 1
    assert "environment spec must be" in capsys.readouterr().err


def test_env_prepare_of_an_unavailable_env_fails_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["env-prepare", f"venv:{tmp_path}/none"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "is not available here" in err


def test_the_launch_package_exports_what_it_declares() -> None:
    import nahual.launcher as package

    assert sorted(package.__all__) == sorted(set(package.__all__))
    for name in package.__all__:
        assert getattr(package, name) is not None
    assert {"launch", "exec_server", "parse_env_spec", "private_ipc_address", "ServerProcess"} <= set(package.__all__)
