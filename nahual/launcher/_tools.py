"""Environment launcher layer: run an environment's tools (``uv sync``, ``nix develop``) and probes.

Both report a failure as its cause in one line (see ``_cause.py``) with the
command and the tool's own error block after it, so that ``nahual
env-prepare`` and ``nahual envs`` say what went wrong rather than a hint to
look elsewhere.
"""

from __future__ import annotations

import shlex
import subprocess

from ..errors import LaunchError
from ._cause import cause_details, cause_line

__all__ = ["PROBE", "PROBE_TIMEOUT", "TAIL_LINES", "probe", "run_tool"]

#: Lines of a failed tool's output quoted under its cause.
TAIL_LINES = 15
#: Seconds a probe may take: the first ``nix develop`` of a shell builds it.
PROBE_TIMEOUT = 600.0
#: What a probe runs in the environment's Python: the import a server needs first.
PROBE = "import sys, nahual; print(sys.executable, 'imports nahual from', nahual.__path__[0])"


def run_tool(argv: list[str], what: str, env: dict[str, str] | None = None) -> None:
    """Run a preparation tool; raise :class:`LaunchError` with its cause first when it fails.

    Parameters
    ----------
    argv : list of str
        The command.
    what : str
        What it does, for the message (``"uv sync of uv:envs/threshold"``).
    env : dict, optional
        Its environment; default: this process's.

    Raises
    ------
    LaunchError
        ``WHAT failed (exit N): CAUSE``, then the command and the tool's error block.
    """
    try:
        done = subprocess.run(argv, env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True, check=False)
    except OSError as exc:
        raise LaunchError(f"{what}: cannot run {argv[0]}: {exc}") from exc
    if done.returncode != 0:
        output = done.stderr + done.stdout
        raise LaunchError(
            f"{what} failed (exit {done.returncode}): {cause_line(output)}\n"
            f"command: {shlex.join(argv)}\n{cause_details(output, TAIL_LINES)}"
        )


def probe(argv: list[str], timeout: float = PROBE_TIMEOUT) -> tuple[bool, str]:
    """Run ``argv`` (an environment's ``python -c PROBE``) and say in one line whether it worked.

    Parameters
    ----------
    argv : list of str
        The command; its last line of output on success is the answer.
    timeout : float
        Seconds before the probe counts as failed.

    Returns
    -------
    tuple of (bool, str)
        Whether it exited 0, and its last line of output or the cause of its failure.
    """
    try:
        done = subprocess.run(
            argv, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=timeout, check=False
        )
    except OSError as exc:
        return False, f"cannot run {argv[0]}: {exc}"
    except subprocess.TimeoutExpired:
        return False, f"{shlex.join(argv)} did not finish within {timeout:g} s"
    if done.returncode != 0:
        return False, f"{cause_line(done.stderr + done.stdout)} (exit {done.returncode})"
    lines = done.stdout.strip().splitlines()
    return True, lines[-1] if lines else "ran"
