"""Progress of a run: a bar on a terminal, periodic log lines otherwise.

Zarr streaming layer. Prints blocks done, blocks per second and the estimated
time left, to stderr by default.
"""

from __future__ import annotations

import sys
import time
from typing import TextIO

__all__ = ["Progress"]


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
        Where to print (stderr by default); None of it is printed when ``enabled`` is False.
    interval : float
        Seconds between log lines when the stream is not a terminal.
    enabled : bool
        False prints nothing.
    """

    def __init__(
        self,
        total: int,
        label: str = "blocks",
        stream: TextIO | None = None,
        interval: float = 10.0,
        enabled: bool = True,
    ) -> None:
        self.total = total
        self.label = label
        self.stream = stream or sys.stderr
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.interval = interval if not self.tty else 0.2
        self.enabled = enabled
        self.done = 0
        self._start = time.monotonic()
        self._last = self._start

    def line(self) -> str:
        """The current report: ``blocks 12/256  3.4/s  ETA 1m12s``."""
        elapsed = time.monotonic() - self._start
        rate = self.done / elapsed if elapsed > 0 else 0.0
        eta = _duration((self.total - self.done) / rate) if rate > 0 else "?"
        width = 24
        filled = int(width * self.done / self.total) if self.total else width
        bar = f"[{'#' * filled}{'.' * (width - filled)}] " if self.tty else ""
        return f"{self.label} {bar}{self.done}/{self.total}  {rate:.2f}/s  ETA {eta}"

    def advance(self, count: int = 1) -> None:
        """Count finished blocks; print when the interval has passed."""
        self.done += count
        now = time.monotonic()
        if self.enabled and (now - self._last >= self.interval or self.done == self.total):
            self._last = now
            end = "\r" if self.tty and self.done < self.total else "\n"
            print(self.line(), end=end, file=self.stream, flush=True)
