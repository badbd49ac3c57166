"""Benchmark: a streamed run against the model's own compute, against the model in this process, over instances.

Goals: the server path takes no more than 1.1x the in-process (``--local``)
time (issue 4); ``apply`` with one server takes no more than 1.1x the model's
own compute time on the same blocks held in memory (reads, decoding, transport,
encoding and writes hidden behind the model, issue 15); two instances of a
single-threaded model on 2 cores give at least 1.8x the throughput of one
(issue 15). The store is a 64-frame 1024x1024 uint16 store with Zstd chunks
(or ``--store``, e.g. ``nahual demo-data --large``), the model the zoo's
``threshold`` (one thread per BLAS/OpenMP pool, set here for every process),
this process's allocator set as ``nahual apply`` sets it (``nahual._malloc``).

Usage::

    python benchmarks/stream.py [--frames 64] [--size 1024] [--repeat 2] [--inflight N]
                                [--tile y=1024,x=1024] [--halo 0] [--store PATH] [--params JSON]
                                [--keep DIR]

``--tile`` and ``--inflight`` default to :class:`nahual.stream.StreamOptions`' own defaults.

Every path runs in one interleaved loop (local, one server, two servers,
local...), on the same store; each writes its own label image and all are
checked to be identical. Printed: the best seconds of each path, split into
the blocks (reading, model, writing) and the finish (stitching), the seconds
of CPU this process spent on them, and the ratios. ``compute`` is the model's
own ``process`` on every block's payload, read into memory first, in this
process (its turn in the same loop): what a run would take if nothing but
the model cost anything. ``compute2`` is the same work split between two
processes forked from this one, at once, with nothing of nahual between
them: what the machine gives two copies of the model (on a VM shared with
other jobs, 1.4-1.8x, not 2x, from run to run), against which the two
instances' ratio is read. ``requests`` and ``requests2`` send those same
in-memory payloads to the one and the two servers, ``inflight`` at a time,
and drop the results: no reading, writing or records, so their ratio is the
most that two instances can give over one on these workers, whatever the
streaming layer does. ``reading`` reads every block's payload on this thread
(Zstd decoding, the chunk caches, the cast to the model's dtype) and drops
it: every run pays that much CPU, and two instances pay it on the cores their
models share, so ``compute2``'s ratio divided by ``1 + reading / compute`` is
the most two instances can give over one that runs as fast as the model
alone, before any transport, writing or record.
"""

from __future__ import annotations

import os

for _pool in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_pool, "1")  # before numpy: single-threaded models, here and in the servers

import argparse  # noqa: E402
import json  # noqa: E402
import shutil  # noqa: E402
import tempfile  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402
import traceback  # noqa: E402
from collections.abc import Iterator  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import zarr  # noqa: E402

from nahual._malloc import STREAMING, tune_malloc  # noqa: E402
from nahual.registry import resolve_model  # noqa: E402
from nahual.stream import LocalModel, StreamOptions, Worker, apply, finish, output_group, write_image  # noqa: E402
from nahual.stream._connect import connect_workers  # noqa: E402
from nahual.stream._jobs import Job, make_job  # noqa: E402
from nahual.stream._payload import BlockReader  # noqa: E402
from nahual.stream._resume import RunState  # noqa: E402

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


def reading_job(store: str, params: dict, options: StreamOptions) -> Job:
    """A job over ``store`` that is only read: its plan, contract and inputs (no state folder left)."""
    with LocalModel(MODEL, params) as handle:
        job = make_job(handle, store, "compute", options, kind=None, axes=None, labels=None, info={})
    shutil.rmtree(job.state.path, ignore_errors=True)
    return job


def block_payloads(job: Job) -> Iterator[dict]:
    """Every block's payload, as a run reads it (decoded through the chunk caches and cast): what ``compute`` gets."""
    reader = BlockReader(job.contract, job.plan, job.mine, job.image, job.labels, ahead=1)
    return (reader(block) for block in job.mine)


def reading_once(job: Job) -> dict[str, float]:
    """Every block's payload read on this thread and dropped: the input's share of any run's CPU."""
    start = time.perf_counter()
    for _ in block_payloads(job):
        pass
    return {"total": time.perf_counter() - start}


def compute_once(model: object, payloads: list[dict]) -> dict[str, float]:
    """The model's own ``process`` on every payload, in this process: nothing but the model costs."""
    start = time.perf_counter()
    for payload in payloads:
        model.process(payload)
    return {"total": time.perf_counter() - start}


def compute_split(model: object, payloads: list[dict], processes: int = 2) -> dict[str, float]:
    """:func:`compute_once` split between ``processes`` forked processes, running at once."""
    start, children = time.perf_counter(), []
    for first in range(processes):
        pid = os.fork()
        if pid == 0:  # the child runs its share of the model's calls and nothing else
            status = 1
            try:
                compute_once(model, payloads[first::processes])
                status = 0
            except BaseException:
                traceback.print_exc()
            finally:
                os._exit(status)
        children.append(pid)
    failed = [pid for pid in children if os.waitpid(pid, 0)[1] != 0]
    if failed:
        raise SystemExit(f"compute2: {len(failed)} of {processes} processes failed (their traceback is above)")
    return {"total": time.perf_counter() - start}


def requests_once(workers: list[Worker], payloads: list[dict], inflight: int) -> dict[str, float]:
    """The payloads sent to ``workers`` by ``inflight`` threads (each to the least busy), results dropped."""
    pending, lock = iter(payloads), threading.Lock()
    busy = dict.fromkeys(range(len(workers)), 0)

    def send() -> None:
        while True:
            with lock:
                payload = next(pending, None)
                if payload is None:
                    return
                chosen = min(busy, key=busy.__getitem__)
                busy[chosen] += 1
            workers[chosen].handle(payload)
            with lock:
                busy[chosen] -= 1

    threads = [threading.Thread(target=send) for _ in range(inflight)]
    start = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return {"total": time.perf_counter() - start}


def run_once(workers: object, store: str, name: str, options: StreamOptions) -> dict[str, float]:
    """Seconds (wall and this process's CPU) of the blocks, then of the finish, of one complete run."""
    RunState(output_group(store), name).reset()  # a store given twice is run again, not found complete
    wall, cpu = time.perf_counter(), time.process_time()
    apply(workers, store, name, options, progress=False, finalize=False)
    blocks, blocks_cpu = time.perf_counter() - wall, time.process_time() - cpu
    finish(store, name)
    total = time.perf_counter() - wall
    return {"blocks": blocks, "finish": total - blocks, "total": total, "cpu": blocks_cpu}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=64)
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--inflight", type=int, help="requests in flight (StreamOptions' default)")
    parser.add_argument("--tile", help="tile, e.g. y=512,x=512 (StreamOptions' default)")
    parser.add_argument("--halo", type=int, default=0)
    parser.add_argument("--store", help="an existing image to read (default: a synthetic store)")
    parser.add_argument("--params", default=json.dumps(PARAMS), help=f"threshold params (default {PARAMS})")
    parser.add_argument("--keep", type=Path, help="write the store here and keep it (default: a temporary folder)")
    args = parser.parse_args()
    tune_malloc(STREAMING)  # as ``nahual apply`` does, before any thread
    options = StreamOptions.from_cli(args)
    params = json.loads(args.params)

    folder = args.keep or Path(tempfile.mkdtemp(prefix="nahual-bench-"))
    try:
        store = args.store or make_store(folder / "bench.zarr", args.frames, args.size)
        job = reading_job(store, params, options)
        payloads = list(block_payloads(job))
        model = resolve_model(MODEL)()
        model.params = model.check_params(params)
        model.load(**model.params)
        print(f"store {store}: {len(payloads)} blocks")
        times: dict[str, list[dict[str, float]]] = {path: [] for path in ("local", "server", "servers2")}
        two = options.replace(inflight=max(options.inflight, 4))
        with (
            LocalModel(MODEL, params) as local,
            connect_workers(MODEL, params, env="current", instances=1) as one,
            connect_workers(MODEL, params, env="current", instances=2) as both,
        ):
            runs = {"local": (Worker(local), options), "server": (one, options), "servers2": (both, two)}
            in_memory = {
                "compute": lambda: compute_once(model, payloads),
                "compute2": lambda: compute_split(model, payloads),
                "requests": lambda: requests_once(one, payloads, options.inflight),
                "requests2": lambda: requests_once(both, payloads, two.inflight),
                "reading": lambda: reading_once(job),
            }
            memory: dict[str, list[dict[str, float]]] = {path: [] for path in in_memory}
            for i in range(args.repeat):
                for path, measure in in_memory.items():
                    memory[path].append(measure())
                for path, (workers, opts) in runs.items():
                    times[path].append(run_once(workers, store, f"{path}{i}", opts))
        report(store, args.repeat, times, {path: min(t["total"] for t in v) for path, v in memory.items()})
    finally:
        if args.keep is None:
            shutil.rmtree(folder, ignore_errors=True)


def report(store: str, repeat: int, times: dict[str, list[dict[str, float]]], memory: dict[str, float]) -> None:
    """Print the best run of each path and the ratios, after checking that all outputs are identical.

    ``memory``: the best seconds of each path timed beside the runs: those on in-memory payloads
    (``compute``, ``compute2``, ``requests``, ``requests2``) and ``reading``, which reads the store.
    """
    group = zarr.open_group(store, mode="r")
    first = group[f"labels/{next(iter(times))}0/0"][...]
    same = all(np.array_equal(first, group[f"labels/{path}{i}/0"][...]) for path in times for i in range(repeat))
    best = {path: min(values, key=lambda v: v["total"]) for path, values in times.items()}
    for path, b in best.items():
        print(
            f"{path:<9} total {b['total']:7.2f} s = blocks {b['blocks']:7.2f} s + finish {b['finish']:5.2f} s"
            f"  (this process: {b['cpu']:6.2f} s CPU during the blocks)"
        )
    for path, seconds in memory.items():
        what = "every block's input read, nothing else" if path == "reading" else "payloads in memory"
        print(f"{path:<9} total {seconds:7.2f} s ({what})")
    server, local, two = best["server"], best["local"], best["servers2"]
    compute, machine = memory["compute"], memory["compute"] / memory["compute2"]
    print(f"server/local:              {server['total'] / local['total']:.3f} (goal <= 1.1)")
    print(f"apply/compute, blocks:     {server['blocks'] / compute:.3f} (goal <= 1.1; one server)")
    print(f"apply/compute, with finish: {server['total'] / compute:.3f}")
    print(f"2 instances / 1, blocks:   {server['blocks'] / two['blocks']:.3f} (goal >= 1.8)")
    print(f"2 instances / 1, total:    {server['total'] / two['total']:.3f}")
    print(f"2 processes / 1, the model alone: {machine:.3f} (what this machine gives two copies of the model)")
    print(f"2 instances / 1, payloads in memory: {memory['requests'] / memory['requests2']:.3f}")
    scaling = server["blocks"] / two["blocks"] / machine
    print(f"2 instances / 1, blocks, over the machine's: {scaling:.3f} (1.8x on a machine that gives 2x is 0.9)")
    ceiling = machine / (1 + memory["reading"] / compute)
    print(f"2 instances / 1, the most the input's reading leaves: {ceiling:.3f} (the machine's, less its share)")
    print(f"outputs identical: {same}")


if __name__ == "__main__":
    main()
