"""Benchmark: time from ``nahual.launch()`` to the first ``ping`` reply, per environment backend.

Goals (issue 3): under 0.3 s for ``current``, under 0.6 s for a uv environment
that is already synced. ``nix`` uses the input-less test flake through a
``path:`` copy, offline; its first launch in a process also builds the shell
(``prepare``), later ones reuse it.

Usage::

    python benchmarks/launch.py [--repeat 10] [--backends current,uv,nix]

Prints one line per backend: median, min and max seconds over the repeats,
plus the first (cold) launch separately. The ``bare`` line is the same
server started without the launcher (Popen until its ready file appears),
in the same run: the difference is the launcher's own cost, and the ratio
stays meaningful on a loaded machine.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from nahual.launcher import NixEnv, UvEnv, launch

ROOT = Path(__file__).resolve().parent.parent


def time_launches(spec: str, repeat: int) -> list[float]:
    """Seconds from ``launch(spec)`` to its return (first ping answered), ``repeat + 1`` times."""
    times = []
    for _ in range(repeat + 1):
        start = time.perf_counter()
        server = launch(spec, timeout=120)
        times.append(time.perf_counter() - start)
        server.stop()
    return times


def time_bare(repeat: int, directory: Path) -> list[float]:
    """Seconds from starting ``python -m nahual serve`` directly to its ready file, ``repeat + 1`` times."""
    times = []
    for i in range(repeat + 1):
        ready = directory / f"bare{i}.ready"
        argv = [sys.executable, "-m", "nahual", "serve", f"ipc://{directory}/bare{i}.sock", "--ready-file", str(ready)]
        start = time.perf_counter()
        process = subprocess.Popen(argv, start_new_session=True)
        while not ready.exists():
            if process.poll() is not None:
                raise SystemExit(f"the bare server exited with status {process.returncode}")
            time.sleep(0.002)
        times.append(time.perf_counter() - start)
        process.terminate()
        process.wait()
    return times


def nix_spec(scratch: Path) -> str:
    """Copy the test flake and configure Nix to stay offline; return its spec."""
    flake = scratch / "flake"
    shutil.copytree(ROOT / "tests" / "flakes" / "python", flake)
    registry = scratch / "registry.json"
    registry.write_text('{"flakes": [], "version": 2}')
    os.environ["NIX_CONFIG"] = (
        f"experimental-features = nix-command flakes\nsandbox = false\nsubstituters =\nflake-registry = {registry}\n"
    )
    os.environ["NAHUAL_TEST_PYTHON_BIN"] = str(Path(sys.executable).parent)
    return f"nix:path:{flake}#default"


def main() -> int:
    """Run the benchmark and print a table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=10, help="timed launches per backend after the first (10)")
    parser.add_argument("--backends", default="bare,current,uv,nix", help="comma-separated: bare, current, uv, nix")
    args = parser.parse_args()
    os.environ["UV_PYTHON_DOWNLOADS"] = "never"
    goals = {"current": 0.3, "uv": 0.6}
    with tempfile.TemporaryDirectory(prefix="nahual-bench-") as scratch:
        os.environ["NAHUAL_RUNTIME_DIR"] = str(Path(scratch) / "rt")
        specs = {"current": "current", "uv": f"uv:{ROOT / 'tests' / 'envs' / 'numpy2'}"}
        if "uv" in args.backends:
            UvEnv(specs["uv"][3:]).prepare()  # "already synced": the sync is not timed
        if "nix" in args.backends:
            specs["nix"] = nix_spec(Path(scratch))
        print(f"{'backend':<8} {'cold s':>8} {'median s':>9} {'min s':>7} {'max s':>7}  goal")
        for name in args.backends.split(","):
            backend_ok = {"uv": UvEnv.tool()[0], "nix": NixEnv.tool()[0]}.get(name, True)
            if not backend_ok:
                print(f"{name:<8} skipped: not available on this machine")
                continue
            if name == "bare":
                runtime = Path(scratch) / "bare"
                runtime.mkdir(mode=0o700)
                cold, *warm = time_bare(args.repeat, runtime)
            else:
                cold, *warm = time_launches(specs[name], args.repeat)
            goal = f"< {goals[name]}" if name in goals else "-"
            print(f"{name:<8} {cold:8.3f} {statistics.median(warm):9.3f} {min(warm):7.3f} {max(warm):7.3f}  {goal}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
