"""Environment launcher layer: questions about processes that the launcher asks the kernel.

A launched server leads its own process group, so "is it (or anything it
started) still running" is a question about the group. Zombies, dead and
waiting for their parent to reap them, count as gone.
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["group_alive", "process_alive"]


def process_alive(pid: int) -> bool:
    """Whether process ``pid`` runs (a zombie does not); cheaper than :func:`group_alive`."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        if Path("/proc").is_dir():
            return False
        try:  # no procfs: ask the kernel, zombies included
            os.kill(pid, 0)
        except (ProcessLookupError, PermissionError):
            return False
        return True
    return state != "Z"


def group_alive(pgid: int) -> bool:
    """Whether a process of group ``pgid`` still runs; zombies (dead, awaiting their reaper) do not count."""
    proc = Path("/proc")
    if not proc.is_dir():  # no procfs: ask the kernel, zombies included
        try:
            os.killpg(pgid, 0)
        except (ProcessLookupError, PermissionError):
            return False
        return True
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # exited while we looked
        if int(fields[2]) == pgid and fields[0] != "Z":
            return True
    return False
