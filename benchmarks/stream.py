"""Benchmark: streaming a store through a model server against the same model in this process.

Goal (issue 4): the server path takes no more than 1.1x the in-process
(``--local``) time, on a 64-frame 1024x1024 uint16 store through a CPU
segmentation model (the zoo's ``threshold`` with a fixed threshold and no
watershed, so that the model's time is close to the data's).

Usage::

    python benchmarks/stream.py [--frames 64] [--size 1024] [--repeat 2] [--inflight N]
                                [--tile y=1024,x=1024] [--halo 0] [--keep DIR]

``--tile`` and ``--inflight`` default to :class:`nahual.stream.StreamOptions`' own defaults.

Both paths run in the same process, alternating (local, server, local,
server...), on the same store; each writes its own label image and both are
checked to be identical. Prints the best and median seconds of each path and
the ratio server/local (below 1.0 the server is faster: its model runs in
another process, in parallel with this one's reading and writing).
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import zarr

from nahual.launcher import launch
from nahual.stream import LocalModel, StreamOptions, Worker, apply, write_image

MODEL = "nahual.models.threshold:Threshold"
PARAMS = {"threshold": 300.0, "split": False, "sigma": 1.0, "min_size": 10}


def make_store(path: Path, frames: int, size: int, seed: int = 0) -> str:
    """``frames`` uint16 frames of bright discs on a noisy background, drifting by one pixel per frame."""
    rng = np.random.default_rng(seed)
    base = np.zeros((size, size), np.uint16)
    yy, xx = np.ogrid[:size, :size]
    for _ in range(size * size // 4000):
        cy, cx, r = rng.integers(0, size), rng.integers(0, size), rng.integers(4, 12)
        box = (slice(max(cy - r, 0), cy + r + 1), slice(max(cx - r, 0), cx + r + 1))
        base[box][(yy[box[0]] - cy) ** 2 + (xx[:, box[1]] - cx) ** 2 <= r * r] = 600
    data = np.empty((frames, size, size), np.uint16)
    for t in range(frames):
        data[t] = np.roll(base, t, axis=1) + rng.integers(0, 200, (size, size), dtype=np.uint16)
    return write_image(path, data, "tyx", chunks=(1, min(size, 512), min(size, 512)))


def run_once(handle: object, store: str, name: str, options: StreamOptions) -> float:
    """Seconds for one complete ``apply`` (stitch included)."""
    start = time.perf_counter()
    apply(handle, store, name, options, progress=False)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=64)
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--inflight", type=int, help="requests in flight (StreamOptions' default)")
    parser.add_argument("--tile", help="tile, e.g. y=512,x=512 (StreamOptions' default)")
    parser.add_argument("--halo", type=int, default=0)
    parser.add_argument("--keep", type=Path, help="write the store here and keep it (default: a temporary folder)")
    args = parser.parse_args()
    options = StreamOptions.from_cli(args)

    folder = args.keep or Path(tempfile.mkdtemp(prefix="nahual-bench-"))
    try:
        start = time.perf_counter()
        store = make_store(folder / "bench.zarr", args.frames, args.size)
        print(f"store: {args.frames} x {args.size} x {args.size} uint16 written in {time.perf_counter() - start:.1f} s")
        times: dict[str, list[float]] = {"local": [], "server": []}
        with LocalModel(MODEL, PARAMS) as local, launch("current", preload=MODEL, params=PARAMS, timeout=120) as server:
            with server.client(timeout=600) as client:
                remote = Worker(client.load(MODEL, **PARAMS), server.address)
                for i in range(args.repeat):
                    times["local"].append(run_once(local, store, f"local{i}", options))
                    times["server"].append(run_once(remote, store, f"server{i}", options))
        group = zarr.open_group(store, mode="r")
        same = all(
            np.array_equal(group[f"labels/local{i}/0"][...], group[f"labels/server{i}/0"][...])
            for i in range(args.repeat)
        )
        for path, values in times.items():
            print(
                f"{path:<7} best {min(values):7.2f} s  median {statistics.median(values):7.2f} s  "
                f"({args.frames / min(values):.1f} frames/s)"
            )
        ratio = min(times["server"]) / min(times["local"])
        print(f"server/local: {ratio:.3f} (goal <= 1.1)  outputs identical: {same}")
    finally:
        if args.keep is None:
            shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
