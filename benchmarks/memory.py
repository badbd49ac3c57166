"""Benchmark: peak memory of ``nahual apply`` against the size of the store (goal: it does not grow with it).

Goal (issue 15): ``apply`` on a synthetic store of 2 GiB (8 GiB with
``--large``) keeps its peak resident memory under a bound set by the tile and
the in-flight window, not by the image; two sizes (a quarter of it, and all of
it) give a ratio of peak memories of about 1.

Usage::

    python benchmarks/memory.py [--large] [--size 2048] [--inflight 4] [--keep DIR]

Each store is written lazily, frame by frame (uint16 frames of ``--size`` x
``--size``, 1024x1024 chunks, Zstd: bright discs on a flat background, so it
compresses well and writes fast), and run with the zoo's ``threshold`` in one
``nahual apply --local`` process (model, reading, writing and stitching all
in it: the worst case), with the default tile and the model's halo. The peak
RSS of that process comes from the kernel (``wait4``). The bound printed is

    base + 2 x (inflight + 3) x (payload + result) + cache

where ``base`` is the peak of the same command on a one-frame store (the
interpreter, numpy, zarr, scipy), ``payload`` and ``result`` are one block's
read box as float32 and as uint32 labels, ``inflight + 2`` the blocks a run
holds at most (one per lane: read ahead, in flight, written behind) plus the
one the model works on, doubled for the copies a block goes through (decoded and cast,
encoded and compressed), and ``cache`` the decoded chunks the plan keeps
(at most :data:`nahual.stream._cache.CACHE_BYTES` of whole chunks, plus one chunk).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import zarr

from nahual.models.threshold import Threshold
from nahual.stream import StreamOptions, make_plan, write_image
from nahual.stream._cache import CACHE_BYTES
from nahual.stream._runner import lane_count

PARAMS = {"threshold": 300.0, "split": False, "sigma": 0.0, "fill_holes": False, "min_size": 0}
CHUNK = 1024
GIB = 2**30


def frame(base: np.ndarray, t: int) -> np.ndarray:
    """Frame ``t``: the base discs drifting one pixel per frame, on a flat background."""
    return np.roll(base, t, axis=1)


def make_base(size: int, seed: int = 0) -> np.ndarray:
    """Discs of value 600 on a background of 100, about one per 4000 pixels."""
    rng = np.random.default_rng(seed)
    base = np.full((size, size), 100, np.uint16)
    yy, xx = np.ogrid[:size, :size]
    for _ in range(size * size // 4000):
        cy, cx, r = rng.integers(0, size), rng.integers(0, size), rng.integers(4, 12)
        box = (slice(max(cy - r, 0), cy + r + 1), slice(max(cx - r, 0), cx + r + 1))
        base[box][(yy[box[0]] - cy) ** 2 + (xx[:, box[1]] - cx) ** 2 <= r * r] = 600
    return base


def make_store(path: Path, frames: int, size: int) -> str:
    """A ``frames`` x ``size`` x ``size`` uint16 OME-Zarr image, written one frame at a time."""
    base = make_base(size)
    store = write_image(path, frame(base, 0)[np.newaxis], "tyx", chunks=(1, CHUNK, CHUNK))
    array = zarr.open_array(f"{store}/0", mode="r+")
    array.resize((frames, size, size))
    for t in range(1, frames):
        array[t] = frame(base, t)
    return store


def peak_rss(store: str, inflight: int) -> tuple[int, float]:
    """Peak RSS in bytes and seconds of ``nahual apply --local`` on ``store`` (with the stitch)."""
    command = [sys.executable, "-m", "nahual", "apply", store, "mem", "--local", "--model", "threshold"]
    command += ["--params", json.dumps(PARAMS), "--inflight", str(inflight), "--quiet"]
    start = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(process.pid, 0)
    took = time.perf_counter() - start
    errors = process.stderr.read().decode() if process.stderr else ""
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode != 0:
        raise SystemExit(f"apply failed on {store}:\n{errors}")
    return usage.ru_maxrss * 1024, took


def window_bound(store: str, base: int, inflight: int) -> int:
    """The stated bound: ``base + 2 x (lanes + 1) x (payload + result) + cache``, from the run's plan."""
    array = zarr.open_array(f"{store}/0", mode="r")
    plan = make_plan(Threshold.contract, "labels", "tyx", array.shape, array.chunks, StreamOptions())
    blocks = plan.blocks()
    side = max(math.prod(e - s for s, e in zip(b.read_start, b.read_stop, strict=True)) for b in blocks)
    block = side * (4 + 4)  # payload float32 + result uint32
    cache = CACHE_BYTES + math.prod(array.chunks) * array.dtype.itemsize
    return base + 2 * (lane_count(inflight) + 1) * block + cache


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--large", action="store_true", help="8 GiB (and 2 GiB) instead of 2 GiB (and 0.5 GiB)")
    parser.add_argument("--size", type=int, default=2048, help="frame height and width (2048)")
    parser.add_argument("--inflight", type=int, default=4)
    parser.add_argument("--keep", type=Path, help="write the stores here and keep them (default: a temporary folder)")
    args = parser.parse_args()
    full = (8 if args.large else 2) * GIB
    frame_bytes = args.size * args.size * 2
    folder = args.keep or Path(tempfile.mkdtemp(prefix="nahual-memory-"))
    try:
        base, _ = peak_rss(make_store(folder / "one.zarr", 1, args.size), args.inflight)
        print(f"one frame: peak RSS {base / 2**20:.0f} MiB (the process itself)")
        peaks = []
        for nbytes in (full // 4, full):
            frames = nbytes // frame_bytes
            start = time.perf_counter()
            store = make_store(folder / f"{frames}.zarr", frames, args.size)
            written = time.perf_counter() - start
            bound = window_bound(store, base, args.inflight)
            on_disk = sum(f.stat().st_size for f in Path(store).rglob("*") if f.is_file())
            peak, took = peak_rss(store, args.inflight)
            peaks.append(peak)
            print(
                f"store {nbytes / GIB:4.1f} GiB ({frames} frames, {on_disk / 2**20:.0f} MiB on disk, written in "
                f"{written:.0f} s): peak RSS {peak / 2**20:6.0f} MiB in {took:.0f} s, "
                f"bound {bound / 2**20:.0f} MiB ({'within' if peak <= bound else 'OVER'})"
            )
            shutil.rmtree(store, ignore_errors=True)
            shutil.rmtree(store + ".nahual", ignore_errors=True)
        print(f"peak RSS ratio, {full / GIB:.0f} GiB / {full / 4 / GIB:.1f} GiB: {peaks[1] / peaks[0]:.3f} (goal ~1)")
    finally:
        if args.keep is None:
            shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
