"""Benchmark: per-frame time of each zoo model on a 1024x1024 frame, via its server vs a direct call.

Both sides run in the model's own environment (the catalog default,
``envs/<model>``): the direct call is this script re-run with ``--direct``
by the environment's Python; the server is ``nahual.launch`` of the same
environment, called through a ``Client`` over ipc. Calls alternate between
the two so that both see the same machine load. The ratio (server / direct,
medians) is what the wire protocol and the process hop cost.

Data: ``nahual demo-data --large`` frames (1024x1024, two channels, a few
hundred nuclei), generated in each process from the same seed. ``laptrack``
gets a series of ``--frames`` frames; its time is divided by the frame count.

Usage::

    python benchmarks/models.py [--repeat 5] [--frames 8] [--models threshold laptrack regionprops]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

MODELS = ("threshold", "laptrack", "regionprops")


def payloads(model: str, frames: int) -> tuple[dict[str, Any], int]:
    """The payload one call gets and the number of frames it covers."""
    from nahual.demo import LARGE_SIZE, make_demo

    data = make_demo(dataclasses.replace(LARGE_SIZE, frames=frames), seed=0)
    if model == "threshold":
        return {"image": data.image[-1].astype(np.float32), "axes": "cyx"}, 1
    if model == "regionprops":
        return {"image": data.image[-1], "labels": data.labels[-1], "axes": "cyx"}, 1
    return {"labels": data.labels, "axes": "tyx"}, frames


def timed(call, payload: dict[str, Any], count: int) -> float:
    """Seconds per frame of one call."""
    start = time.perf_counter()
    call(payload)
    return (time.perf_counter() - start) / count


def direct(model: str, frames: int) -> None:
    """Serve timings of direct calls, one per line read from stdin (run by the environment's Python)."""
    from nahual.registry import resolve_model

    instance = resolve_model(model)()
    instance.load()
    payload, count = payloads(model, frames)
    instance.process(payload)  # warm-up
    print("ready", flush=True)
    for _ in sys.stdin:
        print(json.dumps(timed(instance.process, payload, count)), flush=True)


def compare(model: str, frames: int, repeat: int) -> tuple[list[float], list[float]]:
    """Per-frame seconds through a server and directly, both in the model's environment.

    Calls alternate (server, direct, server, ...) so that both sides see the same
    machine load.
    """
    import nahual
    from nahual.catalog import default_env

    spec = default_env(model)
    python = Path(spec.split(":", 1)[1]) / ".venv" / "bin" / "python"
    remote, local = [], []
    with nahual.launch(spec, preload=model, timeout=nahual.Timeout(10.0, 600.0, 300.0)) as server:
        argv = [str(python), __file__, "--direct", model, "--frames", str(frames)]
        with (
            server.client() as client,
            subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True) as child,
        ):
            handle = client.load(model)
            payload, count = payloads(model, frames)
            handle(payload)  # warm-up
            if child.stdout.readline().strip() != "ready":
                raise RuntimeError(f"the direct-call process for {model} did not start")
            for _ in range(repeat):
                remote.append(timed(handle, payload, count))
                child.stdin.write("\n")
                child.stdin.flush()
                local.append(json.loads(child.stdout.readline()))
            child.stdin.close()
    return remote, local


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--frames", type=int, default=8, help="frames of the laptrack series (default 8)")
    parser.add_argument("--direct", metavar="MODEL", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.direct:
        direct(args.direct, args.frames)
        return 0
    print(f"{'model':<12} {'server ms/frame':>16} {'direct ms/frame':>16} {'ratio':>7}")
    for model in args.models:
        remote, local = compare(model, args.frames, args.repeat)
        r, d = statistics.median(remote) * 1e3, statistics.median(local) * 1e3
        print(f"{model:<12} {r:>16.1f} {d:>16.1f} {r / d:>7.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
