"""Workflow runs that a test module's fixture holds: snakemake run to success in a copy, then stopped.

Layer: tests, over the runners of ``test_workflow``. A module-scoped fixture
yields from :func:`finished_run` (or :func:`weights_run`, for the chains whose
test weights reach the servers through the config's ``weights`` key), so that
whatever still runs in the copy is stopped however its tests end.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

from test_workflow import run_snakemake, stop_processes_in


@contextlib.contextmanager
def finished_run(workdir: Path, *args: str, env: dict[str, str] | None = None) -> Iterator[Path]:
    """``snakemake ARGS`` in ``workdir``, asserted to succeed; what still runs there is stopped on leaving."""
    try:
        result = run_snakemake(workdir, *args, env=env)
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
        yield workdir
    finally:
        stop_processes_in(workdir)


def weights_run(
    workdir: Path, weights: Path, *args: str, env: dict[str, str]
) -> contextlib.AbstractContextManager[Path]:
    """``snakemake --cores 2 ARGS --config weights=DIR`` without ``NAHUAL_WEIGHTS``.

    The servers then get the test cache from the config's weights key alone,
    which is what the run checks.
    """
    env = {key: value for key, value in env.items() if key != "NAHUAL_WEIGHTS"}
    return finished_run(workdir, "--cores", "2", *args, "--config", f"weights={weights}", env=env)
