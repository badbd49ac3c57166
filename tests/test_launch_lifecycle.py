"""Launching and stopping real ``python -m nahual serve`` processes in the ``current`` environment.

Every test checks that no process of the server's group and no socket file
is left. ``cmd:`` prefixes (``sh -c '...; exec "$@"' sh``) put a shell in
front of the real server to make it slow, crash, or leave a straggler.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from conftest import alive, wait_until

from nahual.errors import LaunchError
from nahual.launcher import ServerProcess, State, launch
from nahual.launcher._handle import log_tail

DEADLINE = 15.0


def group_members(pgid: int) -> list[int]:
    """Live processes whose process group is ``pgid``."""
    members = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except (FileNotFoundError, ProcessLookupError):
                continue
            if fields[0] != "Z" and int(fields[2]) == pgid:
                members.append(int(entry.name))
    return members


def sockets(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.glob("*") if p.suffix in (".sock", ".ready"))


@pytest.fixture(autouse=True)
def runtime(short_dir: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A private runtime directory per test, so leftovers are attributable."""
    path = short_dir / "rt"
    monkeypatch.setenv("NAHUAL_RUNTIME_DIR", str(path))
    monkeypatch.delenv("NAHUAL_TOKEN", raising=False)
    return path


def assert_cleaned(server: ServerProcess, runtime: Path) -> None:
    assert server.state is State.STOPPED
    assert not alive(server.pid)
    assert group_members(server.pid) == []
    assert sockets(runtime) == []


def test_launch_ping_and_stop(runtime: Path) -> None:
    server = launch("current", timeout=30)
    try:
        assert server.state is State.RUNNING
        assert server.address.startswith(f"ipc://{runtime}/")
        with server.client() as client:
            info = client.info()
            assert info["pid"] == server.pid  # the handle's pid is the server itself
            echo = client.load("echo")
            image = np.arange(12, dtype=np.uint16).reshape(3, 4)
            np.testing.assert_array_equal(echo({"image": image})["image"], image)
    finally:
        code = server.stop()
    assert code == 0  # it obeyed the shutdown request
    assert_cleaned(server, runtime)
    assert server.log_path.exists()  # kept for post-mortems
    assert server.stop() == 0  # idempotent


def test_two_servers_get_distinct_private_addresses(runtime: Path) -> None:
    with launch("current", timeout=30) as one, launch("current", timeout=30) as two:
        assert one.address != two.address
        assert one.log_path != two.log_path
        for server in (one, two):
            with server.client() as client:
                assert client.info()["pid"] == server.pid
    assert_cleaned(one, runtime)
    assert_cleaned(two, runtime)


def test_preload_with_params_and_token(runtime: Path) -> None:
    with launch("current", preload="echo", params={"delay_s": 0}, token="s3cret", timeout=30) as server:
        assert "s3cret" not in server.argv  # travels in the environment, not on the command line
        with server.client() as client:
            assert client.info()["instances"]
    assert_cleaned(server, runtime)


def test_an_exception_in_the_with_block_stops_the_server(runtime: Path) -> None:
    with pytest.raises(RuntimeError, match="boom"), launch("current", timeout=30) as server:
        raise RuntimeError("boom")
    assert_cleaned(server, runtime)


def test_crash_on_start_reports_the_log_tail(runtime: Path) -> None:
    with pytest.raises(LaunchError) as caught:
        launch("current", preload="no-such-model-xyz", timeout=30)
    message = str(caught.value)
    first = message.splitlines()[0]
    assert re.match(r"server in environment current \(pid \d+\) exited with status 1 before it was ready", first)
    assert "no-such-model-xyz" in message  # the server's own error, from the log
    assert "command: " in message and "-m nahual serve" in message
    assert sockets(runtime) == []


def test_crash_of_the_environment_prefix(runtime: Path) -> None:
    spec = "cmd:sh -c 'echo prefix-broke-marker >&2; exit 3' sh"
    expected = r"(?s)environment cmd:.* exited with status 3 before it was ready: prefix-broke-marker.*command: sh -c"
    with pytest.raises(LaunchError, match=expected):
        launch(spec, timeout=30)
    assert sockets(runtime) == []


def test_readiness_timeout_stops_everything(runtime: Path) -> None:
    # a shell that starts a child in its group and never execs the server
    spec = "cmd:sh -c 'sleep 300; exec \"$@\"' sh"
    with pytest.raises(LaunchError, match=r"^server in environment cmd:.* did not answer ping within 1 s") as caught:
        launch(spec, timeout=1.0)
    pid = int(re.search(r"\(pid (\d+)\)", str(caught.value)).group(1))  # type: ignore[union-attr]
    assert not alive(pid)
    assert group_members(pid) == []  # the sleep went too
    assert sockets(runtime) == []


def test_stop_kills_processes_the_server_left_in_its_group(runtime: Path, tmp_path: Path) -> None:
    pid_file = tmp_path / "straggler"
    spec = f'cmd:sh -c \'(trap "" TERM; exec sleep 300) & echo $! > {pid_file}; exec "$@"\' sh'
    with launch(spec, timeout=30) as server:
        straggler = int(pid_file.read_text())
        assert alive(straggler)
    assert server.returncode == 0
    assert not alive(straggler)
    assert_cleaned(server, runtime)


def test_stop_escalates_to_sigterm_when_shutdown_is_not_answered(
    runtime: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    server = launch("current", timeout=30)
    monkeypatch.setattr(ServerProcess, "_request_shutdown", lambda self, timeout: False)
    assert server.stop(grace=5.0) == 0  # the server cleans up on SIGTERM and exits 0
    assert_cleaned(server, runtime)


def test_stop_escalates_to_sigkill_and_removes_the_socket(runtime: Path) -> None:
    server = launch("current", timeout=30)
    socket = Path(server.address.removeprefix("ipc://"))
    os.kill(server.pid, signal.SIGSTOP)  # deaf to shutdown; SIGTERM stays pending
    assert server.stop(grace=0.5) == -signal.SIGKILL
    assert not socket.exists()  # the server could not remove it; the launcher did
    assert_cleaned(server, runtime)


def test_a_server_that_died_after_start_is_reported_and_cleaned(runtime: Path) -> None:
    server = launch("current", timeout=30)
    assert server.returncode is None
    os.kill(server.pid, signal.SIGKILL)  # a crash: no cleanup by the server
    wait_until(lambda: server.returncode is not None, DEADLINE, "the crash to be seen")
    assert server.returncode == -signal.SIGKILL
    assert server.stop() == -signal.SIGKILL
    assert_cleaned(server, runtime)


PARENT = textwrap.dedent(
    """
    import gc, json, sys, time
    from nahual.launcher import launch
    mode = sys.argv[1]
    if mode == "with-exception":
        with launch("current", timeout=30) as server:
            print(json.dumps({"pid": server.pid, "address": server.address}), flush=True)
            raise RuntimeError("parent failed")
    if mode == "dropped":  # the handle is garbage; the atexit hook must still stop its server
        print(json.dumps({"pid": launch("current", timeout=30).pid}), flush=True)
        gc.collect()
        sys.exit(0)
    server = launch("current", timeout=30)
    print(json.dumps({"pid": server.pid, "address": server.address}), flush=True)
    if mode == "exception":
        raise RuntimeError("parent failed")  # no with, no stop(): the atexit hook must act
    time.sleep(600)  # until the test signals us
    """
)


@pytest.mark.parametrize(
    ("mode", "signum"),
    [
        ("with-exception", None),
        ("exception", None),
        ("dropped", None),
        ("wait", signal.SIGINT),
        ("wait", signal.SIGTERM),
        ("wait", signal.SIGKILL),
    ],
)
def test_no_orphan_whatever_happens_to_the_parent(
    runtime: Path, tmp_path: Path, mode: str, signum: signal.Signals | None
) -> None:
    script = tmp_path / "parent.py"
    script.write_text(PARENT)
    parent = subprocess.Popen(
        [sys.executable, str(script), mode], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        line = parent.stdout.readline()  # type: ignore[union-attr]
        assert line, f"parent died before launching: {parent.stderr.read()}"  # type: ignore[union-attr]
        started = json.loads(line)
        pid = started["pid"]
        if signum is not None:
            assert alive(pid)
            parent.send_signal(signum)
        parent.wait(timeout=DEADLINE)
        wait_until(lambda: not alive(pid), DEADLINE, f"server {pid} to exit after the parent ({mode}, {signum})")
        wait_until(lambda: sockets(runtime) == [], DEADLINE, "its socket file to be removed")
        assert group_members(pid) == []
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait()
        parent.stdout.close()  # type: ignore[union-attr]
        parent.stderr.close()  # type: ignore[union-attr]


def test_log_tail_of_missing_and_empty_logs(tmp_path: Path) -> None:
    assert log_tail(tmp_path / "none.log") == "(no log)"
    (tmp_path / "empty.log").write_text("")
    assert log_tail(tmp_path / "empty.log") == "(empty log)"
    (tmp_path / "long.log").write_text("".join(f"line {i}\n" for i in range(100)))
    assert log_tail(tmp_path / "long.log", 3) == "line 97\nline 98\nline 99"
