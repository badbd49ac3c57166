"""Environment launcher layer: the records of launched servers, and the bound on the logs they leave.

Each server that :func:`nahual.launch` starts leaves two files in the runtime
directory: its log, ``NAME.log`` (stdout and stderr), and its record,
``NAME.json`` (pid, environment, model, address, start time and, once it has
stopped, its exit status). They stay after the server stops, for
post-mortems (``nahual logs`` lists and prints them), but not forever: every
launch first removes what lies beyond the newest :data:`KEEP_LOGS` or is
older than :data:`KEEP_DAYS` days, never the files of a server still running.
"""

from __future__ import annotations

import json
import os
import signal
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from ..errors import ConfigError
from ._procs import process_alive

__all__ = ["KEEP_DAYS", "KEEP_LOGS", "ServerRecord", "find_record", "prune_logs", "server_records"]

#: Most server logs kept in the runtime directory.
KEEP_LOGS = 50
#: Days a server log is kept.
KEEP_DAYS = 7.0


@dataclass
class ServerRecord:
    """What is known of one launched server, saved as JSON beside its log.

    Attributes
    ----------
    path : Path
        The record file, ``RUNTIME_DIR/NAME.json``.
    log : Path
        The server's log (in the runtime directory unless ``launch(log_path=...)`` chose another).
    pid : int
        The server's process id.
    env : str
        Its environment spec.
    model : str or None
        The model it preloaded.
    address : str
        Where it listened.
    started : float
        When it was started (seconds since the epoch).
    exit : int or None
        Its exit status once stopped (negative: killed by that signal); None while unknown.
    """

    path: Path
    log: Path
    pid: int
    env: str
    model: str | None
    address: str
    started: float
    exit: int | None = None

    @property
    def name(self) -> str:
        """The server's name in ``nahual logs`` (the stem of its files)."""
        return self.path.stem

    @property
    def running(self) -> bool:
        """True while no exit status is recorded and the server's pid is alive."""
        return self.exit is None and process_alive(self.pid)

    @property
    def status(self) -> str:
        """``exit N``, ``killed by SIGNAME``, ``running``, or ``gone`` (it stopped unseen)."""
        if self.exit is not None and self.exit >= 0:
            return f"exit {self.exit}"
        if self.exit is not None:
            try:
                return f"killed by {signal.Signals(-self.exit).name}"
            except ValueError:
                return f"killed by signal {-self.exit}"
        return "running" if self.running else "gone"

    def save(self) -> None:
        """Write the record, atomically (a reader never sees half a file)."""
        data = asdict(self)
        del data["path"]
        data["log"] = str(self.log)
        partial = self.path.with_name(f".{self.path.name}.{os.getpid()}")
        partial.write_text(json.dumps(data, indent=1) + "\n")
        os.replace(partial, self.path)

    @classmethod
    def read(cls, path: Path) -> ServerRecord | None:
        """The record saved at ``path``; None when it is gone or not a record (it is then only a file)."""
        try:
            data = json.loads(path.read_text())
            return cls(path=path, **{**data, "log": Path(data["log"])})
        except (OSError, ValueError, TypeError, KeyError):
            return None


def server_records(directory: Path) -> list[ServerRecord]:
    """The records of the servers launched with logs in ``directory``, newest first."""
    records = [record for path in directory.glob("*.json") if (record := ServerRecord.read(path))]
    return sorted(records, key=lambda record: record.started, reverse=True)


def find_record(directory: Path, key: str) -> ServerRecord:
    """The record named ``key``, or the newest one of pid ``key``.

    Raises
    ------
    ConfigError
        When no record in ``directory`` has that name or pid.
    """
    for record in server_records(directory):
        if record.name == key or (key.isdigit() and record.pid == int(key)):
            return record
    raise ConfigError(f"expected a server name or pid that `nahual logs` lists, got {key!r} (logs are in {directory})")


def prune_logs(
    directory: Path, keep: int = KEEP_LOGS, max_age: float = KEEP_DAYS * 86400.0, now: float | None = None
) -> list[str]:
    """Remove the logs and records of stopped servers beyond the newest ``keep`` or older than ``max_age``.

    A log without a record (written by something else, or an older nahual)
    is dated by its modification time; a log that ``launch(log_path=...)``
    put outside ``directory`` is left where it is, only its record goes.

    Parameters
    ----------
    directory : Path
        The runtime directory.
    keep : int
        Most servers whose files are kept (running ones count, and are never removed).
    max_age : float
        Seconds after its start that a stopped server's files are kept.
    now : float, optional
        The present (seconds since the epoch); default: the clock.

    Returns
    -------
    list of str
        The names of the servers whose files were removed.
    """
    now = time.time() if now is None else now
    entries: list[tuple[float, str, ServerRecord | None]] = [
        (record.started, record.name, record) for record in server_records(directory)
    ]
    recorded = {name for _, name, _ in entries}
    for log in directory.glob("*.log"):
        if log.stem not in recorded:
            try:
                entries.append((log.stat().st_mtime, log.stem, None))
            except FileNotFoundError:
                continue  # removed by a concurrent launch
    entries.sort(key=lambda entry: entry[0], reverse=True)
    removed = []
    for position, (started, name, record) in enumerate(entries):
        if (position < keep and now - started <= max_age) or (record is not None and record.running):
            continue
        paths = [directory / f"{name}.json", directory / f"{name}.log"]
        if record is not None and record.log.parent == directory:
            paths.append(record.log)
        for path in paths:
            path.unlink(missing_ok=True)
        removed.append(name)
    return removed
