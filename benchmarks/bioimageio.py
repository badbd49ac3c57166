"""Benchmark: tiled streaming through the bioimageio adapter against bioimageio.core's own blockwise prediction.

Goal (issue 14): on an 8192² image, the time of ``nahual apply`` (tiles of
``--tile`` with the package's halo, streamed from and to OME-Zarr through a
server in the environment) over the time of bioimageio.core's ``predict``
with its own blocking (``blocksize_parameter``, blocks of about the same
size, the image and the output in memory), both in the same environment,
taken in turns; and the peak RSS of each. nahual's should not grow with the
image: the run is repeated at each of ``--also`` (a smaller and a larger image)
and nahual's peaks are printed against the one at ``--size``. An image of
fewer blocks than the in-flight window holds (3 x ``inflight``: 12 blocks by default,
2048² in 1024² tiles has 4) never fills it, so it is no baseline.

Usage::

    python benchmarks/bioimageio.py [--env uv:envs/bioimageio-onnx] [--size 8192] [--also 4096,16384]
                                    [--tile 1024] [--rounds 2] [--package DIR]

The package is, unless ``--package`` names one, the test suite's convolution
stack (``tests/bioimageio_env.py onnx``). Both sides read the same float32
image: nahual from an OME-Zarr store with chunks of ``--tile``, bioimageio.core
from a ``.npy`` file. Times are wall-clock seconds of the prediction (the
server is started and the package loaded before); nahual's are of the whole
``nahual apply`` process, its Python starting and importing included (about
half a second), bioimageio.core's include reading the package (a fraction of
a second) and saving the output. Prints one JSON line per size and a summary.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
HELPER = ROOT / "tests" / "bioimageio_env.py"
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "benchmarks"))
from bioimageio_env import blobs  # noqa: E402
from deep import peak_rss  # noqa: E402

import nahual  # noqa: E402
from nahual.launcher import parse_env_spec  # noqa: E402

TIMEOUT = nahual.Timeout(connect=10.0, request=900.0, startup=300.0)
#: ``nahual apply`` in a child process that prints its own peak RSS (bytes, ``VmHWM``) last; not ``ru_maxrss``,
#: which a child forked from this process takes over from it (90 MiB too many at 8192², this process having
#: held the image).
APPLY = (
    "import os, sys\n"
    "sys.path.insert(0, os.path.join(sys.argv.pop(1), 'benchmarks'))\n"
    "from deep import peak_rss\n"
    "from nahual.cli import main\n"
    "code = main(sys.argv[1:])\n"
    "print(peak_rss(os.getpid()))\n"
    "sys.exit(code)\n"
)


def write_input(folder: Path, size: int, tile: int) -> tuple[Path, Path]:
    """The benchmark image as OME-Zarr (chunks of ``tile``) and as ``.npy``; blobs tiled from a 1024² patch."""
    from nahual.stream import write_image

    patch = blobs((1024, 1024), 300, seed=0)
    image = np.tile(patch, (size // 1024 + 1, size // 1024 + 1))[:size, :size]
    store = Path(write_image(folder / f"img{size}.zarr", image[None], "cyx", chunks=(1, tile, tile)))
    np.save(folder / f"img{size}.npy", image)
    return store, folder / f"img{size}.npy"


def core_block(package: Path, tile: int) -> int:
    """bioimageio.core's block size parameter whose blocks are about ``tile`` plus the halo (the packages: 16 + 8n)."""
    text = (package / "rdf.yaml").read_text()
    least, step = (16, 8) if "size: {min: 16, step: 8}" in text else (tile, 1)
    return max(0, (tile - least) // step)


def run_nahual(address: str, store: Path, name: str, package: Path, tile: int) -> dict[str, Any]:
    """One ``nahual apply`` of the package over the store through the server: seconds and the client's peak RSS."""
    params = json.dumps({"source": str(package)})
    argv = [sys.executable, "-c", APPLY, str(ROOT), "apply", str(store), name, "--server", address]
    argv += ["--model", "bioimageio"]
    argv += ["--params", params, "--tile", f"y={tile},x={tile}", "--quiet"]
    started = time.perf_counter()
    done = subprocess.run(argv, capture_output=True, text=True, check=True, timeout=3600)
    return {"seconds": time.perf_counter() - started, "client_peak_rss": int(done.stdout.split()[-1])}


def run_core(python: str, package: Path, image: Path, out: Path, block: int) -> dict[str, Any]:
    """bioimageio.core's blockwise ``predict`` of the whole image in the environment: its seconds and peak RSS."""
    argv = [python, str(HELPER), "predict", str(package), str(image), str(out), "--block", str(block)]
    done = subprocess.run(argv, capture_output=True, text=True, check=True, timeout=3600)
    record = json.loads(done.stdout.strip().splitlines()[-1])
    return {"seconds": record["seconds"], "peak_rss": record["peak_rss_bytes"]}


def compare(spec: str, package: Path, size: int, tile: int, rounds: int, folder: Path) -> dict[str, Any]:
    """Both predictions of one image, ``rounds`` times in turns; the outputs checked equal."""
    import zarr

    python = parse_env_spec(spec).python()[0]
    store, npy = write_input(folder, size, tile)
    block = core_block(package, tile)
    nahual_runs, core_runs = [], []
    with nahual.launch(spec, timeout=TIMEOUT) as server, server.client() as client:
        client.load("bioimageio", source=str(package))  # loaded before the first timed run
        for index in range(rounds):
            nahual_runs.append(run_nahual(server.address, store, f"bench{index}", package, tile))
            core_runs.append(run_core(python, package, npy, folder / "core.npy", block))
        server_rss = peak_rss(server.pid)
    ours = zarr.open_group(store / "predictions" / f"bench{rounds - 1}", mode="r")["0"][...]
    difference = float(np.abs(ours - np.load(folder / "core.npy")).max())
    best_nahual = min(r["seconds"] for r in nahual_runs)
    best_core = min(r["seconds"] for r in core_runs)
    return {
        "size": size,
        "tile": tile,
        "core_block_parameter": block,
        "nahual_seconds": [round(r["seconds"], 2) for r in nahual_runs],
        "core_seconds": [round(r["seconds"], 2) for r in core_runs],
        "time_ratio_nahual_over_core": round(best_nahual / best_core, 3),
        "time_ratio_per_round": [round(n["seconds"] / c["seconds"], 3) for n, c in zip(nahual_runs, core_runs)],
        "nahual_client_peak_rss_mib": round(max(r["client_peak_rss"] for r in nahual_runs) / 2**20),
        "nahual_client_peak_rss_per_round_mib": [round(r["client_peak_rss"] / 2**20) for r in nahual_runs],
        "nahual_server_peak_rss_mib": round(server_rss / 2**20),
        "core_peak_rss_mib": round(max(r["peak_rss"] for r in core_runs) / 2**20),
        "max_abs_difference": difference,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--env", default=f"uv:{ROOT / 'envs' / 'bioimageio-onnx'}")
    parser.add_argument("--size", type=int, default=8192)
    parser.add_argument("--also", default="4096,16384", help="other image sizes, for nahual's peak RSS ('': none)")
    parser.add_argument("--tile", type=int, default=1024)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--package", type=Path, help="a package folder (default: the tests' convolution stack)")
    args = parser.parse_args(argv)
    backend = parse_env_spec(args.env)
    backend.prepare()
    with tempfile.TemporaryDirectory(prefix="nahual-bench-bioimageio-") as scratch:
        folder = Path(scratch)
        package = args.package
        if package is None:
            subprocess.run([backend.python()[0], str(HELPER), "onnx", str(folder)], check=True, timeout=600)
            package = folder / "conv-onnx"
        sizes = [int(size) for size in args.also.split(",") if size] + [args.size]
        results = [compare(args.env, package, size, args.tile, args.rounds, folder) for size in sizes]
    for result in results:
        print(json.dumps(result))
    print(summary(results))
    return 0


def summary(results: list[dict[str, Any]]) -> str:
    """One line: the main image's time ratio and peak RSS, and how nahual's client RSS compares at the other sizes."""
    main, others = results[-1], results[:-1]
    line = (
        f"{main['size']}²: nahual/core time {main['time_ratio_nahual_over_core']} (per round "
        f"{main['time_ratio_per_round']}); peak RSS nahual client {main['nahual_client_peak_rss_mib']} MiB + server "
        f"{main['nahual_server_peak_rss_mib']} MiB, bioimageio.core {main['core_peak_rss_mib']} MiB"
    )
    for other in others:
        growth = other["nahual_client_peak_rss_mib"] / main["nahual_client_peak_rss_mib"]
        line += (
            f"; at {other['size']}²: nahual client {other['nahual_client_peak_rss_mib']} MiB ({growth:.2f} of "
            f"{main['size']}²'s), bioimageio.core {other['core_peak_rss_mib']} MiB"
        )
    return line


if __name__ == "__main__":
    sys.exit(main())
