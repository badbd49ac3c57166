"""Shared fixtures: short private ipc directories, deadline polling and real server processes.

``serve(*args, address=None, env=None, allow_module_models=True, cwd=None)`` starts
``python -m nahual serve ADDRESS --ready-file FILE --parent PYTEST_PID --allow-module-models *args``
(the tests load their models as ``module:Class``) in its own process group, waits
(with a deadline) for the ready file and returns a :class:`Served`;
``address, process = served`` works. ``--parent`` makes servers exit even when
the test run is killed before its teardown. At teardown every server still running gets SIGTERM, then SIGKILL, by
pid; a server that was meant to stop cleanly must have exited 0 and removed
its socket and ready files.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest

TESTS = Path(__file__).resolve().parent
ROOT = TESTS.parent
#: Seconds a server may take to write its ready file (generous for a loaded 2-core CI box).
READY_TIMEOUT = 30.0


def alive(pid: int) -> bool:
    """True while ``pid`` runs (a zombie nobody reaped counts as gone)."""
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def object_f1(truth: np.ndarray, predicted: np.ndarray, iou: float = 0.5) -> float:
    """F1 of object matching at IoU > ``iou`` (a match above 0.5 is unique by construction)."""
    t, p = truth.ravel().astype(np.int64), predicted.ravel().astype(np.int64)
    nt, np_ = int(t.max()) + 1, int(p.max()) + 1
    overlap = np.bincount(t * np_ + p, minlength=nt * np_).reshape(nt, np_)
    union = overlap.sum(1)[:, None] + overlap.sum(0)[None, :] - overlap
    matches = int((overlap / np.maximum(union, 1))[1:, 1:].__gt__(iou).sum())
    n_truth, n_pred = len(np.unique(t)) - 1, len(np.unique(p)) - 1
    return 2 * matches / max(n_truth + n_pred, 1)


def wait_until(predicate: Callable[[], Any], timeout: float = 10.0, what: str = "condition") -> Any:
    """Poll ``predicate`` until it returns something truthy; fail the test at the deadline."""
    deadline = time.monotonic() + timeout
    delay = 0.002
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout} s waiting for {what}")
        time.sleep(delay)
        delay = min(delay * 2, 0.05)


def subprocess_env(extra: dict[str, str | None] | None = None) -> dict[str, str]:
    """This environment with tests/ on PYTHONPATH (for ``models_for_tests``), no token, plus ``extra``.

    A value of None in ``extra`` removes that variable.
    """
    env = dict(os.environ)
    env.pop("NAHUAL_TOKEN", None)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(TESTS), str(ROOT), env.get("PYTHONPATH")) if p)
    for key, value in (extra or {}).items():
        if value is None:
            env.pop(key, None)
        else:
            env[key] = value
    return env


def free_tcp_port() -> int:
    """A loopback port nothing listens on right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@dataclass
class Served:
    """A server process started by the ``serve`` fixture.

    Attributes
    ----------
    address, process : str, subprocess.Popen
        What ``address, process = served`` unpacks.
    ready_file, log : Path
        The ready file passed to ``--ready-file`` and the file holding the server's stdout and stderr.
    check_clean : bool
        Set False in a test that kills the server on purpose: teardown then skips its checks.
    """

    address: str
    process: subprocess.Popen
    ready_file: Path
    log: Path
    check_clean: bool = True

    def __iter__(self) -> Iterator[Any]:
        return iter((self.address, self.process))

    @property
    def socket_path(self) -> Path | None:
        """The ipc socket file, or None for tcp."""
        return Path(self.address[len("ipc://") :]) if self.address.startswith("ipc://") else None

    def output(self) -> str:
        """What the server printed so far."""
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def stop(self, timeout: float = 15.0) -> int:
        """SIGTERM by pid, SIGKILL at the deadline; returns the exit status."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode


@dataclass
class _ServerFactory:
    directory: Path
    started: list[Served] = field(default_factory=list)

    def __call__(
        self,
        *args: str,
        address: str | None = None,
        env: dict[str, str | None] | None = None,
        ready_timeout: float = READY_TIMEOUT,
        allow_module_models: bool = True,
        cwd: Path | None = None,
    ) -> Served:
        name = f"s{len(self.started)}"
        address = address or f"ipc://{self.directory / name}.sock"
        ready_file = self.directory / f"{name}.ready"
        log = self.directory / f"{name}.log"
        # --parent: a server outlives no test run, even one killed before its teardown
        # (later args win, so a test may pass its own --parent).
        command = [
            sys.executable, "-m", "nahual", "serve", address, "--ready-file", str(ready_file),
            "--parent", str(os.getpid()), *(["--allow-module-models"] if allow_module_models else []), *args,
        ]  # fmt: skip
        with open(log, "wb") as out:
            process = subprocess.Popen(
                command, stdout=out, stderr=subprocess.STDOUT, env=subprocess_env(env), start_new_session=True, cwd=cwd
            )
        served = Served(address, process, ready_file, log)
        self.started.append(served)
        deadline = time.monotonic() + ready_timeout
        delay = 0.005
        while not ready_file.exists():
            if process.poll() is not None:
                pytest.fail(f"server exited with {process.returncode} before ready:\n{served.output()}")
            if time.monotonic() > deadline:
                pytest.fail(f"server not ready after {ready_timeout} s:\n{served.output()}")
            time.sleep(delay)
            delay = min(delay * 2, 0.05)
        return served

    def stop_all(self) -> None:
        problems = []
        for served in self.started:
            running = served.process.poll() is None
            code = served.stop()
            if not served.check_clean:
                continue
            if running and code != 0:
                problems.append(f"{served.address} exited {code} on SIGTERM:\n{served.output()}")
            if served.socket_path is not None and served.socket_path.exists():
                problems.append(f"{served.address} left its socket file behind")
            if served.ready_file.exists():
                problems.append(f"{served.address} left its ready file behind")
        assert not problems, "\n".join(problems)


@pytest.fixture
def short_dir() -> Iterator[Path]:
    """A private directory with a short path (unix socket paths are limited to 107 bytes)."""
    path = Path(tempfile.mkdtemp(prefix="nh"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def ipc_address(short_dir: Path) -> Callable[[str], str]:
    """``ipc_address(name)`` -> an ipc address in a private short directory."""
    return lambda name="s": f"ipc://{short_dir / name}.sock"


@pytest.fixture
def serve(short_dir: Path) -> Iterator[_ServerFactory]:
    """Start real ``nahual serve`` processes; see :class:`_ServerFactory` and :class:`Served`."""
    factory = _ServerFactory(short_dir)
    try:
        yield factory
    finally:
        factory.stop_all()


@pytest.fixture
def echo_server(serve: _ServerFactory) -> Served:
    """One server process with the ``echo`` model available."""
    return serve()
