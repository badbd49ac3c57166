"""Server logs in the runtime directory: kept for post-mortems, bounded, and found with ``nahual logs``."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from nahual.cli import main
from nahual.errors import ConfigError, LaunchError
from nahual.launcher import launch
from nahual.launcher._logs import ServerRecord, find_record, prune_logs, server_records

DAY = 86400.0


@pytest.fixture(autouse=True)
def runtime(short_dir: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = short_dir / "rt"
    path.mkdir(mode=0o700)
    monkeypatch.setenv("NAHUAL_RUNTIME_DIR", str(path))
    monkeypatch.delenv("NAHUAL_TOKEN", raising=False)
    return path


def fake_server(directory: Path, name: str, started: float, exit: int | None = 0, pid: int = 999_999_999) -> Path:
    """A record and log as a launch leaves them (pid 999999999: no such process)."""
    log = directory / f"{name}.log"
    log.write_text(f"log of {name}\n")
    ServerRecord(directory / f"{name}.json", log, pid, "current", "echo", "ipc://x", started, exit).save()
    return log


def names(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


def test_prune_keeps_the_newest_and_the_young(runtime: Path) -> None:
    now = 1_000 * DAY
    for i in range(6):
        fake_server(runtime, f"s{i}", now - i * 60)
    fake_server(runtime, "old", now - 8 * DAY)
    assert sorted(prune_logs(runtime, keep=4, max_age=7 * DAY, now=now)) == ["old", "s4", "s5"]
    assert names(runtime) == [f"s{i}.{ext}" for i in range(4) for ext in ("json", "log")]
    assert [record.name for record in server_records(runtime)] == ["s0", "s1", "s2", "s3"]  # newest first


def test_prune_spares_running_servers_and_logs_kept_elsewhere(runtime: Path, tmp_path: Path) -> None:
    now = time.time()
    fake_server(runtime, "alive", now - 30 * DAY, exit=None, pid=os.getpid())  # still running: never removed
    fake_server(runtime, "gone", now - 30 * DAY, exit=None)  # stopped unseen
    elsewhere = tmp_path / "mine.log"
    elsewhere.write_text("the user's own log file\n")
    ServerRecord(runtime / "s9.json", elsewhere, 999_999_999, "current", None, "ipc://y", now - 30 * DAY, 1).save()
    orphan = runtime / "older-nahual.log"
    orphan.write_text("no record\n")
    os.utime(orphan, (now - 30 * DAY, now - 30 * DAY))
    assert sorted(prune_logs(runtime, now=now)) == ["gone", "older-nahual", "s9"]
    assert names(runtime) == ["alive.json", "alive.log"]
    assert elsewhere.exists()  # only its record went


def test_launch_records_the_server_and_prunes_before_starting(runtime: Path) -> None:
    fake_server(runtime, "ancient", time.time() - 30 * DAY)
    with pytest.raises(LaunchError):
        launch("current", preload="echo", params={"delay_s": -1}, timeout=30)
    assert not (runtime / "ancient.log").exists()
    (record,) = server_records(runtime)
    assert (record.env, record.model, record.exit, record.status) == ("current", "echo", 1, "exit 1")
    assert "param 'delay_s'" in record.log.read_text()
    with launch("current", timeout=30) as server:
        assert find_record(runtime, str(server.pid)).status == "running"
    assert find_record(runtime, str(server.pid)).status == "exit 0"


def test_nahual_logs_lists_and_prints(runtime: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["logs"]) == 0
    assert capsys.readouterr().out == f"no server logs in {runtime}\n"
    now = time.time()
    log = fake_server(runtime, "s1-aa", now - 60, exit=-9, pid=4242)
    log.write_text("".join(f"line {i}\n" for i in range(10)))
    fake_server(runtime, "s2-bb", now, exit=0, pid=4343)
    assert main(["logs"]) == 0
    header, newest, older = capsys.readouterr().out.splitlines()
    assert header.split() == ["NAME", "PID", "STARTED", "STATUS", "ENV", "MODEL"]
    assert newest.split()[:2] == ["s2-bb", "4343"] and newest.split()[-4:] == ["exit", "0", "current", "echo"]
    assert older.split()[:2] == ["s1-aa", "4242"] and "killed by SIGKILL" in older
    assert main(["logs", "4242", "--tail", "2"]) == 0
    assert capsys.readouterr().out == "line 8\nline 9\n"
    assert main(["logs", "s1-aa"]) == 0
    assert capsys.readouterr().out.count("\n") == 10
    assert main(["logs", "s2-bb", "--path"]) == 0
    assert capsys.readouterr().out == f"{runtime / 's2-bb.log'}\n"
    assert main(["logs", "--path"]) == 0
    assert capsys.readouterr().out == f"{runtime}\n"
    assert main(["logs", "nope"]) == 1
    assert "expected a server name or pid that `nahual logs` lists, got 'nope'" in capsys.readouterr().err
    with pytest.raises(ConfigError):
        find_record(runtime, "77")
