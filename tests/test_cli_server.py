"""``nahual serve/ping/info/stop/models``: JSON on stdout, one-line errors, clean stops."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import Served, free_tcp_port, subprocess_env, wait_until

from nahual.cli import main


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


@pytest.mark.parametrize(
    "args, command, fragment",
    [
        (["info", "http://example.org"], "info", "address must start"),
        (["serve", "tcp://0.0.0.0:{port}"], "serve", "requires --token"),
        (["serve", "ipc://{dir}/s.sock", "--preload", "echo", "--params", "{{not json"], "serve", "not valid JSON"),
        (["serve", "ipc://{dir}/s.sock", "--preload", "nope"], "serve", "unknown model 'nope'"),
        (["serve", "ipc://{dir}/s.sock", "--preload", "echo", "--params", '{{"bad": 1}}'], "serve", "unexpected"),
    ],
    ids=["bad-address", "no-token", "bad-params", "unknown-model", "bad-load-param"],
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


def test_ping_timeout_on_a_busy_server_is_one_line(serve: Callable[..., Served], tmp_path: Path) -> None:
    served = serve("--workers", "1")
    log = tmp_path / "calls"
    busy = subprocess.Popen(  # keeps the only worker busy for 2 s
        [sys.executable, "-c",
         "import nahual, sys; c = nahual.Client(sys.argv[1], timeout=30); "
         "c.load('models_for_tests:Counter', log=sys.argv[2])({}, delay_s=2)",
         served.address, str(log)],
        env=subprocess_env(),
    )  # fmt: skip
    try:
        wait_until(log.exists, timeout=30, what="the busy request to start")
        result = run_nahual("ping", served.address, "--timeout", "0.3")
    finally:
        busy.kill()
        busy.wait()
    assert_one_line_error(result, "ping", "within 0.3 s")


def test_models_lists_echo(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["models"]) == 0
    table = capsys.readouterr().out
    assert any(line.startswith("echo ") for line in table.splitlines())
    assert "delay_s" in table
    assert main(["models", "--json"]) == 0
    listing = json.loads(capsys.readouterr().out)
    assert listing["echo"]["output"] == "array"


def test_serve_with_preload_and_stop(serve: Callable[..., Served], capsys: pytest.CaptureFixture[str]) -> None:
    served = serve("--preload", "echo", "--params", '{"delay_s": 0}', "--workers", "2")
    assert main(["info", served.address]) == 0
    (instance,) = json.loads(capsys.readouterr().out)["instances"]
    assert instance["model"] == "echo" and instance["params"] == {"delay_s": 0}
    assert main(["stop", served.address]) == 0
    assert served.process.wait(timeout=15) == 0
    assert "Traceback" not in served.output()
