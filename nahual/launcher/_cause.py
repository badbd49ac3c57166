"""Environment launcher layer: find the line that says why a tool or a server failed.

A failure is reported as one line first (what the CLI prints) and details
after. The last line of the output is often not the cause: Nix ends with a
``(use '--show-trace' ...)`` hint, Python may print ``Exception ignored in``
noise at interpreter exit after nahual's own ``nahual serve: error:`` line.
The rules, in order of trust:

1. nahual's own one-line error (``nahual COMMAND: error: WHY``), the last one;
2. the exception line that ends the last Python traceback;
3. a Nix or uv ``error:`` block: its innermost ``error: WHY`` line (newer Nix
   nests the cause under ``… while evaluating`` lines);
4. the last line.

:class:`ErrorWatch` follows a starting server's log for rule 1's line, so
that a server that reported its error but hangs on its way out (a thread
that never ends) fails its launcher at once instead of at the deadline.
"""

from __future__ import annotations

import re
import time
from pathlib import Path

__all__ = ["ErrorWatch", "cause_details", "cause_line", "clean_lines"]

#: ``nahual serve: error: WHY``, as printed by ``nahual.cli.main``.
NAHUAL_ERROR = re.compile(r"^nahual [\w-]+: error: (?P<why>.+)$")
#: A top-level (unindented) ``error:`` line of Nix or uv; ``error (ignored):`` is not one.
TOOL_ERROR = re.compile(r"^error:")
#: Any ``error: WHY`` line of a Nix error block, nested ones included.
NESTED_ERROR = re.compile(r"^\s*error: (?P<why>\S.*)$")
#: Lines that point at more output instead of saying what failed.
HINTS = re.compile(r"^\(use '--show-trace'|^For full logs, run ")
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def clean_lines(text: str) -> list[str]:
    """The lines of ``text`` without colour codes, trailing spaces, blank lines at the ends and hints."""
    lines = [ANSI.sub("", line).rstrip() for line in text.splitlines()]
    lines = [line for line in lines if not HINTS.match(line.strip())]
    while lines and not lines[-1]:
        lines.pop()
    while lines and not lines[0]:
        lines.pop(0)
    return lines


def _tool_block(lines: list[str]) -> list[str]:
    """The lines from the last top-level ``error:`` line on (empty when there is none)."""
    starts = [i for i, line in enumerate(lines) if TOOL_ERROR.match(line)]
    return lines[starts[-1] :] if starts else []


def _traceback_end(lines: list[str]) -> str | None:
    """The exception line that ends the last traceback (``ValueError: ...``), if any."""
    headers = [i for i, line in enumerate(lines) if line.startswith("Traceback (most recent call last):")]
    if not headers:
        return None
    ends = [line for line in lines[headers[-1] + 1 :] if line and not line[0].isspace()]
    return ends[0] if ends else None


def cause_line(text: str) -> str:
    """The one line of a tool's or server's output that says why it failed.

    Parameters
    ----------
    text : str
        Everything the tool or server printed (stdout and stderr together).

    Returns
    -------
    str
        The cause without its ``error:`` prefix, or ``"(no output)"``.
    """
    lines = clean_lines(text)
    own = [match["why"] for line in lines if (match := NAHUAL_ERROR.match(line))]
    if own:
        return own[-1]
    raised = _traceback_end(lines)
    if raised is not None:
        return raised
    nested = [match["why"] for line in _tool_block(lines) if (match := NESTED_ERROR.match(line))]
    if nested:
        return nested[-1]
    return lines[-1].strip() if lines else "(no output)"


def cause_details(text: str, limit: int) -> str:
    """The lines to quote under the cause: a tool's ``error:`` block when it has one, else the last lines.

    Parameters
    ----------
    text : str
        Everything the tool or server printed.
    limit : int
        Most lines quoted (the block's first ones, or the output's last ones).

    Returns
    -------
    str
        Those lines, or ``"(no output)"``.
    """
    lines = clean_lines(text)
    block = _tool_block(lines)
    kept = block[:limit] if block else lines[-limit:]
    return "\n".join(kept) if kept else "(no output)"


class ErrorWatch:
    """Reads what a starting server appends to its log, and notes when nahual's own error line appears.

    Parameters
    ----------
    path : Path
        The server's log.
    offset : int
        Bytes of the log that were there before the server started (not its own).
    """

    def __init__(self, path: Path, offset: int = 0) -> None:
        self.path = path
        self.offset = offset
        self.partial = b""
        #: ``time.monotonic()`` when the error line was first seen, else None.
        self.seen_at: float | None = None

    def poll(self) -> float | None:
        """Read what was appended since the last call; returns :attr:`seen_at`."""
        if self.seen_at is not None:
            return self.seen_at
        try:
            with self.path.open("rb") as handle:
                handle.seek(self.offset)
                chunk = handle.read()
        except OSError:
            return None
        self.offset += len(chunk)
        *lines, self.partial = (self.partial + chunk).split(b"\n")
        if any(NAHUAL_ERROR.match(line.decode("utf-8", "replace").rstrip()) for line in lines):
            self.seen_at = time.monotonic()
        return self.seen_at
