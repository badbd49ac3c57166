"""The server processes a benchmark script starts: waiting until one is up, and stopping them all.

Layer: benchmarks (stdlib). The scripts run as ``python benchmarks/NAME.py``,
which puts this folder on ``sys.path``; each starts its servers in a
temporary directory of its own and leaves neither a process nor that
directory behind, however its run ends.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Iterable
from pathlib import Path

__all__ = ["stop_all", "wait_ready"]


def wait_ready(path: Path, process: subprocess.Popen, timeout: float = 30.0) -> None:
    """Wait until ``process`` has made ``path`` (its ready file or socket); exit if it died or took too long."""
    deadline = time.monotonic() + timeout
    while not path.exists():
        if process.poll() is not None or time.monotonic() > deadline:
            raise SystemExit(f"{process.args} did not start")
        time.sleep(0.01)


def stop_all(processes: Iterable[subprocess.Popen], directory: Path) -> None:
    """SIGTERM each process still running (SIGKILL if it has not exited 15 s later), then remove ``directory``."""
    for process in processes:
        if process.poll() is None:
            process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
    shutil.rmtree(directory, ignore_errors=True)
