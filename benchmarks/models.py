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

``--baby`` times BABY (``envs/baby``, TensorFlow) on the synthetic budding
series of ``tests/baby_env.py`` (``--frames`` frames of ``--baby-size``
pixels, 5 z-sections) with a model set folder (``--baby-set``; by default
the tests' tiny set, made first): ms per frame of a whole series through the
server against BABY's own ``BabyCrawler`` stepping the same frames in the
same environment, and the server's start-up to its first ping with
TensorFlow imported and the brain built.

Usage::

    python benchmarks/models.py [--repeat 5] [--frames 8] [--models threshold laptrack regionprops]
    python benchmarks/models.py --baby --models [--baby-set FOLDER] [--baby-size 256] [--frames 8]   # BABY only
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


def baby_series(frames: int, size: int) -> np.ndarray:
    """The tests' synthetic budding series, (t, z, y, x), at ``size`` pixels a side."""
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
    from baby_env import budding_series

    return budding_series(frames=frames, size=size)


def baby_direct(folder: str, frames: int, size: int) -> None:
    """Serve timings of BabyCrawler runs over the series, one per stdin line (run by envs/baby's Python)."""
    from nahual.models._baby_sets import read_modelset
    from nahual.models.baby import _import_baby

    modelset = read_modelset(folder)
    api = _import_baby()
    files = {key: str(path) for key, path in modelset.files.items()}
    brain = api.BabyBrain(modelset_path=folder, **modelset.options, **files)
    series = np.moveaxis(baby_series(frames, size), 1, -1)

    def run(_: Any) -> None:
        crawler = api.BabyCrawler(brain)
        for frame in series:
            crawler.step(frame[None], with_edgemasks=True, assign_mothers=True, return_baprobs=True, with_volumes=True)

    run(None)  # warm-up: Keras builds its model for this frame size
    print("ready", flush=True)
    for _ in sys.stdin:
        print(json.dumps(timed(run, {}, frames)), flush=True)


def baby_compare(folder: str, frames: int, size: int, repeat: int) -> tuple[list[float], list[float], float]:
    """Per-frame seconds through a server and with BabyCrawler directly, and the server's start-up seconds."""
    import nahual
    from nahual.catalog import default_env

    spec = default_env("baby")
    python = Path(spec.split(":", 1)[1]) / ".venv" / "bin" / "python"
    params = {"model": folder, "threads": 1}
    remote, local = [], []
    start = time.perf_counter()
    with nahual.launch(spec, preload="baby", params=params, timeout=nahual.Timeout(10.0, 600.0, 300.0)) as server:
        with server.client() as client:
            client.ping()
            startup = time.perf_counter() - start
            argv = [str(python), __file__, "--baby-direct", folder, "--frames", str(frames), "--baby-size", str(size)]
            with subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True) as child:
                handle = client.load("baby", **params)
                payload = {"image": baby_series(frames, size), "axes": "tzyx"}
                handle(payload)  # warm-up
                if child.stdout.readline().strip() != "ready":
                    raise RuntimeError("the direct BabyCrawler process did not start")
                for _ in range(repeat):
                    remote.append(timed(handle, payload, frames))
                    child.stdin.write("\n")
                    child.stdin.flush()
                    local.append(json.loads(child.stdout.readline()))
                child.stdin.close()
    return remote, local, startup


def tiny_baby_set() -> str:
    """The tests' tiny BABY model set, made by envs/baby's Python in a temporary folder (kept for the run)."""
    import tempfile

    from nahual.catalog import default_env

    python = Path(default_env("baby").split(":", 1)[1]) / ".venv" / "bin" / "python"
    folder = Path(tempfile.mkdtemp(prefix="nahual-baby-bench-"))
    helper = Path(__file__).resolve().parent.parent / "tests" / "baby_env.py"
    subprocess.run([str(python), str(helper), str(folder), "tiny"], check=True, capture_output=True, timeout=600)
    return str(folder / "tiny")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="*", default=list(MODELS), choices=MODELS)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--frames", type=int, default=8, help="frames of the laptrack series (default 8)")
    parser.add_argument("--direct", metavar="MODEL", help=argparse.SUPPRESS)
    parser.add_argument("--baby", action="store_true", help="time BABY too (envs/baby must be prepared)")
    parser.add_argument("--baby-set", metavar="FOLDER", help="BABY model set folder (default: the tests' tiny one)")
    parser.add_argument("--baby-size", type=int, default=256, help="pixels a side of the BABY frames (256)")
    parser.add_argument("--baby-direct", metavar="FOLDER", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.direct:
        direct(args.direct, args.frames)
        return 0
    if args.baby_direct:
        baby_direct(args.baby_direct, args.frames, args.baby_size)
        return 0
    print(f"{'model':<12} {'server ms/frame':>16} {'direct ms/frame':>16} {'ratio':>7}")
    if args.baby:
        folder = str(Path(args.baby_set).absolute()) if args.baby_set else tiny_baby_set()
        remote, local, startup = baby_compare(folder, args.frames, args.baby_size, args.repeat)
        r, d = statistics.median(remote) * 1e3, statistics.median(local) * 1e3
        print(f"{'baby':<12} {r:>16.1f} {d:>16.1f} {r / d:>7.2f}   (server start-up to first ping: {startup:.1f} s)")
    for model in args.models:
        remote, local = compare(model, args.frames, args.repeat)
        r, d = statistics.median(remote) * 1e3, statistics.median(local) * 1e3
        print(f"{model:<12} {r:>16.1f} {d:>16.1f} {r / d:>7.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
