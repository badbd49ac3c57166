"""Progress of a run: a bar on a terminal, plain lines in logs.

Zarr streaming layer. Reports blocks done, blocks per second and the estimated
time left, to stderr by default. On a terminal one line is redrawn in place
(``\\r``) a few times a second; anywhere else (a Snakemake log, a pipe) each
report is its own line, written every ``every`` blocks or every ``interval``
seconds, whichever comes first, so that a log shows a slow run moving without
filling up with a fast one.
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable
from typing import TextIO

__all__ = ["LOG_INTERVAL", "LOG_LINES", "Progress"]

#: Seconds between log lines at most, when the stream is not a terminal.
LOG_INTERVAL = 10.0
#: Log lines a run writes at least (one every ``total / LOG_LINES`` blocks), when the stream is not a terminal.
LOG_LINES = 20
#: Seconds between redrawings of the bar on a terminal.
TTY_INTERVAL = 0.2
#: Width of the bar, in characters.
BAR_WIDTH = 24


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    hours, rest = divmod(seconds, 3600)
    return f"{hours}h{rest // 60:02d}m" if hours else f"{rest // 60}m{rest % 60:02d}s"


class Progress:
    """Count finished blocks and report them.

    Parameters
    ----------
    total : int
        Blocks this run will process.
    label : str
        Shown before the counts.
    stream : file, optional
        Where to print (stderr by default); a terminal gets the bar.
    interval : float
        Most seconds between two log lines when the stream is not a terminal.
    every : int, optional
        Blocks between two log lines when the stream is not a terminal; by
        default ``total / LOG_LINES`` (rounded up), so a run logs about 20 lines.
    enabled : bool
        False prints nothing.
    clock : callable
        Seconds, monotonic (``time.monotonic``; tests pass their own).
    """

    def __init__(
        self,
        total: int,
        label: str = "blocks",
        stream: TextIO | None = None,
        interval: float = LOG_INTERVAL,
        every: int | None = None,
        enabled: bool = True,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.total = total
        self.label = label
        self.stream = stream or sys.stderr
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.interval = TTY_INTERVAL if self.tty else interval
        self.every = every if every is not None else max(math.ceil(total / LOG_LINES), 1)
        self.enabled = enabled
        self.done = 0
        self._clock = clock
        self._start = clock()
        self._last = self._start
        self._last_done = 0

    def line(self) -> str:
        """The current report: ``seg 12/256  3.40/s  ETA 1m12s`` (with a bar before the counts on a terminal)."""
        elapsed = self._clock() - self._start
        rate = self.done / elapsed if elapsed > 0 else 0.0
        eta = _duration((self.total - self.done) / rate) if rate > 0 else "?"
        filled = int(BAR_WIDTH * self.done / self.total) if self.total else BAR_WIDTH
        bar = f"[{'#' * filled}{'.' * (BAR_WIDTH - filled)}] " if self.tty else ""
        return f"{self.label} {bar}{self.done}/{self.total}  {rate:.2f}/s  ETA {eta}"

    def _due(self, now: float) -> bool:
        if self.done >= self.total or now - self._last >= self.interval:
            return True
        return not self.tty and self.done - self._last_done >= self.every

    def advance(self, count: int = 1) -> None:
        """Count finished blocks; report when a line is due."""
        self.done += count
        now = self._clock()
        if self.enabled and self._due(now):
            self._last, self._last_done = now, self.done
            end = "\r" if self.tty and self.done < self.total else "\n"
            print(self.line(), end=end, file=self.stream, flush=True)
