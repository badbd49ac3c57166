"""Benchmark: Cellpose 3 through a nahual server against a direct ``eval`` of the same tiles, in the same environment.

Goal (issue 10): ``direct/server >= 0.95``, the ratio of the direct time to the
served time over the same tiles (higher is better; 1.0 means the transport
costs nothing beside the network). Also reports the server's peak RSS and
checks that both paths give the same labels.

Usage::

    python benchmarks/deep.py [--env uv:envs/cellpose] [--tiles 16] [--size 512] [--threads N]
                              [--weights FILE] [--stitch]

The server and a direct worker (``tests/cellpose_env.py worker``: cellpose's
own ``CellposeModel`` kept loaded) run in the environment's Python with the
same weights and thread count, and take turns on each tile (server, then
direct), so that neither competes with the other for the cores. The weights
are, unless ``--weights`` names a file (e.g. a real ``cyto3``), the test suite's
briefly fitted CPnet, made at the start (about a minute on 2 cores), so that
the masks step has real objects to follow. ``--stitch`` adds the 2048² check:
tiles of 512 with the model's halo against the whole frame (needs zarr).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
HELPER = ROOT / "tests" / "cellpose_env.py"
sys.path.insert(0, str(ROOT / "tests"))
from cellpose_env import disks  # noqa: E402

import nahual  # noqa: E402
from nahual.launcher import parse_env_spec  # noqa: E402
from nahual.weights import add  # noqa: E402

TIMEOUT = nahual.Timeout(connect=10.0, request=900.0, startup=300.0)


def peak_rss(pid: int) -> int:
    """Peak resident memory of process ``pid`` in bytes (``VmHWM``), 0 where /proc has none."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def compare(
    spec: str,
    model: str,
    load_params: dict[str, Any],
    direct_params: dict[str, Any],
    weights: Path,
    tiles: np.ndarray,
    payload_axes: str = "yx",
) -> dict[str, Any]:
    """Serve ``tiles`` one by one through ``model`` in ``spec`` and, in turn, through a direct worker there.

    Parameters
    ----------
    spec : str
        The environment of both (prepared first).
    model, load_params : str, dict
        What the server preloads (a name or ``module:Class``; weights by cache name, ``$NAHUAL_WEIGHTS``
        is inherited).
    direct_params : dict
        The worker's ``eval`` keywords, with ``build`` and ``threads`` (see ``tests/cellpose_env.py``).
    weights : Path
        The file the worker loads: the same as the server's.
    tiles : ndarray
        ``(N, ...)`` images; the first is also run once by each side as a warm-up.

    Returns
    -------
    dict
        Seconds per tile of each side, their totals, ``direct/server``, the server's peak RSS,
        the worker's peak GPU memory, and whether the labels are equal.
    """
    backend = parse_env_spec(spec)
    backend.prepare()
    with tempfile.TemporaryDirectory() as scratch:
        np.save(Path(scratch) / "tiles.npy", tiles)
        argv = [backend.python()[0], str(HELPER), "worker", str(weights), f"{scratch}/tiles.npy",
                f"{scratch}/labels.npy", json.dumps(direct_params)]  # fmt: skip
        with (
            nahual.launch(backend, preload=model, params=load_params, timeout=TIMEOUT) as server,
            server.client() as client,
            subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=ROOT) as direct,
        ):
            handle = client.load(model, **load_params)
            assert json.loads(direct.stdout.readline()).get("ready"), "the direct worker did not start"

            def run_direct(index: int) -> float:
                direct.stdin.write(f"{index}\n")
                direct.stdin.flush()
                return json.loads(direct.stdout.readline())["seconds"]

            def run_served(index: int) -> tuple[float, np.ndarray]:
                start = time.perf_counter()
                labels = handle({"image": tiles[index], "axes": payload_axes})["labels"]
                return time.perf_counter() - start, labels

            run_served(0), run_direct(0)  # warm-up: first calls allocate and tune kernels
            served_s, direct_s, served_labels = [], [], []
            for index in range(len(tiles)):
                seconds, labels = run_served(index)
                served_s.append(seconds)
                served_labels.append(labels)
                direct_s.append(run_direct(index))
            rss = peak_rss(server.pid)
            direct.stdin.close()
            peak_gpu = json.loads(direct.stdout.readlines()[-1])["peak_gpu_bytes"]
        expected = np.load(Path(scratch) / "labels.npy")
    return {
        "served_s": served_s,
        "direct_s": direct_s,
        "served_total": sum(served_s),
        "direct_total": sum(direct_s),
        "ratio": sum(direct_s) / sum(served_s),
        "server_peak_rss": rss,
        "peak_gpu_bytes": peak_gpu,
        "equal": bool(np.array_equal(np.stack(served_labels), expected)),
        "objects": int(sum(int(labels.max()) for labels in served_labels)),
    }


def make_weights(spec: str, cache: Path) -> Path:
    """The test suite's fitted CPnet, made in the environment and put in ``cache`` as ``cellpose/trained``."""
    backend = parse_env_spec(spec)
    backend.prepare()
    made = cache / "made"
    made.mkdir(parents=True)
    subprocess.run([backend.python()[0], str(HELPER), "weights", str(made)], check=True, cwd=ROOT)
    return add("cellpose", "trained", made / "trained")


def stitch_check(spec: str, load_params: dict[str, Any], size: int = 2048) -> dict[str, Any]:
    """Tiles of 512 plus the model's halo against the whole ``size``² frame: objects and their matches."""
    from conftest import object_f1

    from nahual.stream import StreamOptions, apply, write_image

    image, _ = disks((size, size), size * size // 2600, seed=3)
    with tempfile.TemporaryDirectory() as scratch, nahual.launch(spec, timeout=TIMEOUT) as server:
        path = write_image(Path(scratch) / "img.zarr", image[None], "tyx", chunks=(1, 512, 512))
        with server.client() as client:
            handle = client.load("cellpose", **load_params, intensity_range=[-0.2, 1.2])
            start = time.perf_counter()
            tiled = apply(handle, path, "tiled", StreamOptions(tile="y=512,x=512"), progress=False)
            tiled_s = time.perf_counter() - start
            start = time.perf_counter()
            whole = apply(handle, path, "whole", StreamOptions(tile="none"), progress=False)
            whole_s = time.perf_counter() - start
        import zarr

        a, b = (zarr.open_group(f"{path}/labels/{name}", mode="r")["0"][0] for name in ("tiled", "whole"))
    return {
        "tiled": tiled["final"],
        "whole": whole["final"],
        "f1_iou90": object_f1(b, a, iou=0.9),
        "tiled_s": tiled_s,
        "whole_s": whole_s,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--env", default=f"uv:{ROOT / 'envs' / 'cellpose'}", help="environment spec")
    parser.add_argument("--tiles", type=int, default=16)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="torch threads of each side")
    parser.add_argument("--weights", type=Path, help="a CPnet file (default: the tests' fitted net, made now)")
    parser.add_argument("--stitch", action="store_true", help="also compare tiled and whole on a 2048² frame")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as cache:
        os.environ["NAHUAL_WEIGHTS"] = cache
        weights = add("cellpose", "bench", args.weights) if args.weights else make_weights(args.env, Path(cache))
        load = {"model": weights.name, "device": "cpu", "threads": args.threads, "diameter": 30.0}
        direct = {"channel_axis": None, "z_axis": None, "channels": [0, 0], "diameter": 30.0, "flow_threshold": 0.4,
                  "cellprob_threshold": 0.0, "min_size": 15, "normalize": True, "batch_size": 8, "do_3D": False,
                  "stitch_threshold": 0.0, "anisotropy": None, "threads": args.threads}  # fmt: skip
        tiles = np.stack([disks((args.size, args.size), args.size**2 // 2600, seed=i)[0] for i in range(args.tiles)])
        result = compare(args.env, "cellpose", load, direct, weights, tiles)
        stitched = stitch_check(args.env, load) if args.stitch else None
    print(f"cellpose 3, {args.tiles} tiles of {args.size}², {args.threads} thread(s), env {args.env}")
    print(f"  served  total {result['served_total']:.2f} s, median {statistics.median(result['served_s']):.3f} s/tile")
    print(f"  direct  total {result['direct_total']:.2f} s, median {statistics.median(result['direct_s']):.3f} s/tile")
    medians = statistics.median(result["direct_s"]) / statistics.median(result["served_s"])
    print(f"  direct/server {result['ratio']:.3f} of totals, {medians:.3f} of medians (goal >= 0.95)")
    print(f"  labels equal: {result['equal']}")
    print(f"  objects {result['objects']}; server peak RSS {result['server_peak_rss'] / 2**20:.0f} MiB")
    if stitched:
        print(
            f"  2048² tiled 512 vs whole: {stitched['tiled']['objects']} vs {stitched['whole']['objects']} objects, "
            f"{stitched['tiled']['merged']} merged across tiles, object F1 at IoU 0.9 {stitched['f1_iou90']:.4f}; "
            f"{stitched['tiled_s']:.1f} s tiled, {stitched['whole_s']:.1f} s whole"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
