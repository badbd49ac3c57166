"""``nahual serve/ping/info/stop/models``: JSON on stdout, one-line errors, clean stops."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import Served, free_tcp_port, subprocess_env

import nahual
from nahual.cli import build_parser, main
from nahual.cli._server import _serve_argv


def run_nahual(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    """``python -m nahual ARGS`` in a subprocess (for exit codes and stderr exactly as users see them)."""
    return subprocess.run(
        [sys.executable, "-m", "nahual", *args], capture_output=True, text=True, env=subprocess_env(), timeout=timeout
    )


def assert_one_line_error(result: subprocess.CompletedProcess, command: str, *fragments: str) -> None:
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"nahual {command}: error: ")
    for fragment in fragments:
        assert fragment in lines[0]


def test_ping_without_a_server_is_one_line(short_dir: Path) -> None:
    result = run_nahual("ping", f"ipc://{short_dir / 'nonexistent.sock'}", "--timeout", "0.2")
    assert_one_line_error(result, "ping", "could not connect", "nonexistent.sock")
    assert result.stdout == ""


@pytest.mark.parametrize("command", ["serve", "ping"])
def test_an_ipc_path_over_the_kernel_limit_is_one_line(tmp_path: Path, command: str) -> None:
    address = f"ipc://{tmp_path / ('a' * 110)}.sock"
    assert_one_line_error(run_nahual(command, address, timeout=20), command, "at most 107 bytes", "found")


def test_an_address_without_a_scheme_names_ipc(short_dir: Path) -> None:
    result = run_nahual("serve", "some.sock", timeout=20)
    assert_one_line_error(result, "serve", "must start with ipc://", "ipc://some.sock")
    assert not (short_dir / "some.sock").exists() and not Path("some.sock").exists()


@pytest.mark.parametrize(
    "args, command, fragment",
    [
        (["info", "http://example.org"], "info", "address must start"),
        (["serve", "tcp://127.0.0.1:{port}"], "serve", "requires a token (--token-file or NAHUAL_TOKEN)"),
        (["serve", "ipc://{dir}/s.sock", "--preload", "echo", "--params", "{{not json"], "serve", "not valid JSON"),
        (["serve", "ipc://{dir}/s.sock", "--preload", "nope"], "serve", "unknown model 'nope'"),
        (["serve", "ipc://{dir}/s.sock", "--preload", "echo", "--params", '{{"bad": 1}}'], "serve", "unknown param"),
        (["serve", "ipc://{dir}/s.sock", "--send-timeout", "0"], "serve", "send_timeout must be a positive number"),
    ],
    ids=["bad-address", "no-token", "bad-params", "unknown-model", "bad-load-param", "bad-send-timeout"],
)
def test_errors_are_one_line(short_dir: Path, args: list[str], command: str, fragment: str) -> None:
    args = [arg.format(port=free_tcp_port(), dir=short_dir) for arg in args]
    result = run_nahual(*args)
    assert_one_line_error(result, command, fragment)
    assert not (short_dir / "s.sock").exists()  # a failed serve leaves no socket behind


def test_ping_info_stop(echo_server: Served, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["ping", echo_server.address]) == 0
    assert "pong in" in capsys.readouterr().out
    assert main(["info", echo_server.address]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["pid"] == echo_server.process.pid and "echo" in info["models"]
    assert main(["stop", echo_server.address]) == 0
    assert "stopping" in capsys.readouterr().out
    assert echo_server.process.wait(timeout=15) == 0
    assert echo_server.socket_path is not None and not echo_server.socket_path.exists()
    assert not echo_server.ready_file.exists()


def test_info_prints_json_in_a_subprocess(echo_server: Served) -> None:
    result = run_nahual("info", echo_server.address, "--timeout", "10")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["protocol"] == 1


def test_ping_timeout_on_a_stopped_server_is_one_line(serve: Callable[..., Served]) -> None:
    served = serve()  # a busy server still answers ping (test_liveness.py): a stopped one cannot
    os.kill(served.process.pid, signal.SIGSTOP)
    try:
        result = run_nahual("ping", served.address, "--timeout", "0.3")
    finally:
        os.kill(served.process.pid, signal.SIGCONT)
    assert_one_line_error(result, "ping", "within 0.3 s")


def test_models_lists_echo(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["models"]) == 0
    table = capsys.readouterr().out
    assert any(line.startswith("echo ") for line in table.splitlines())
    assert "delay_s" in table
    assert main(["models", "--json"]) == 0
    listing = json.loads(capsys.readouterr().out)
    assert listing["echo"]["output"] == "array"


def test_serve_argv_for_another_environment_keeps_every_setting() -> None:
    args = build_parser().parse_args(["serve", "ipc://s.sock", "--env", "uv:env", "--send-timeout", "2.5"])
    assert _serve_argv(args) == ["ipc://s.sock", "--workers", "8", "--send-timeout", "2.5"]
    args = build_parser().parse_args(
        ["serve", "ipc://s.sock", "--env", "uv:env", "--allow-module-models", "--max-message-bytes", "1024"]
    )
    assert _serve_argv(args)[-3:] == ["--allow-module-models", "--max-message-bytes", "1024"]


def test_serve_with_preload_and_stop(serve: Callable[..., Served], capsys: pytest.CaptureFixture[str]) -> None:
    served = serve("--preload", "echo", "--params", '{"delay_s": 0}', "--workers", "2", "--send-timeout", "3")
    assert main(["info", served.address]) == 0
    (instance,) = json.loads(capsys.readouterr().out)["instances"]
    assert instance["model"] == "echo" and instance["params"] == {"delay_s": 0}
    assert main(["stop", served.address]) == 0
    assert served.process.wait(timeout=15) == 0
    assert "Traceback" not in served.output()


def test_serve_weights_names_the_cache_its_models_read(
    serve: Callable[..., Served], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    served = serve("--weights", "cache", cwd=tmp_path)  # relative to where serve starts
    assert main(["info", served.address]) == 0
    assert json.loads(capsys.readouterr().out)["weights"] == str(tmp_path / "cache")
    assert main(["stop", served.address]) == 0
    assert served.process.wait(timeout=15) == 0


# -- the token of serve: from a private file or the environment; on the command line with a warning ------------


def test_serve_reads_its_token_from_a_private_file(serve: Callable[..., Served], tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text("s3cret\n")
    token_file.chmod(0o600)
    served = serve("--token-file", str(token_file), address=f"tcp://127.0.0.1:{free_tcp_port()}")
    with nahual.Client(served.address, timeout=10, token="s3cret") as client:
        assert client.ping() > 0
    with nahual.Client(served.address, timeout=10, token="wrong") as client, pytest.raises(nahual.AuthError):
        client.ping()
    assert "warning" not in served.output()


@pytest.mark.parametrize(
    "text, mode, fragment",
    [("s3cret", 0o644, "must be private (mode 0600), found mode 0644"), ("\n", 0o600, "must hold a token")],
    ids=["readable-by-others", "empty"],
)
def test_a_token_file_must_be_private_and_hold_a_token(
    short_dir: Path, tmp_path: Path, text: str, mode: int, fragment: str
) -> None:
    token_file = tmp_path / "token"
    token_file.write_text(text)
    token_file.chmod(mode)
    result = run_nahual("serve", f"ipc://{short_dir / 's.sock'}", "--token-file", str(token_file))
    assert_one_line_error(result, "serve", f"--token-file {token_file} {fragment}")


def test_a_token_on_the_command_line_works_but_warns(serve: Callable[..., Served]) -> None:
    served = serve("--token", "s3cret")
    with nahual.Client(served.address, timeout=10, token="s3cret") as client:
        assert client.ping() > 0
    assert "warning: --token is visible to every user in `ps`" in served.output()
