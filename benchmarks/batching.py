"""Throughput and latency per request of a served model with server-side batching, against one call per request.

Usage::

    python benchmarks/batching.py [--clients 16] [--requests 256] [--delay-ms 20] [--max-batch 16]
                                  [--wait-ms 5] [--tile 128] [--rounds 3] [--torch PYTHON]

One ``nahual serve`` process per model (``--workers`` at least ``--clients``)
holds one instance per mode: ``plain`` (one call per request, one at a
time), ``batched`` (``max_batch``, ``batch_wait_ms``) and, for ConvNet,
``threads`` (no batching, ``concurrency`` = CPUs: torch releases the GIL).
``--clients`` threads each send their share of ``--requests`` one after the
other (a closed loop: a client sends its next request once its last reply is
back), first with a single client, then with all of them; the rounds
alternate the modes, so that machine noise hits all alike. The models:

- ``echo`` with ``delay_s``: a fixed cost per call and nothing per payload,
  so batching can gain up to ``max_batch``;
- with ``--torch PYTHON`` (an interpreter with torch, e.g. a CPU venv such
  as ``envs/cellpose/.venv/bin/python``), also :class:`ConvNet`: three 3x3
  convolutions on ``--tile`` square tiles, one torch thread per call, a
  batch stacked on a leading axis; a real model, whose cost per call is
  mostly per tile on a CPU.

Prints, per model, number of clients and mode, the median over the rounds of
requests per second, of the median and 90th percentile latency per request,
and of the requests per model call (``info``'s ``calls``), with each ratio
against ``plain``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from _servers import stop_all, wait_ready

import nahual

HERE = Path(__file__).resolve().parent


class ConvNet(nahual.Model):
    """Three 3x3 convolutions (1, 16, 16, 1 channels) on float32 ``yx`` tiles, one torch thread."""

    name = "convnet"
    packages = ("torch",)
    contract = nahual.Contract(axes=("yx",), dtype="float32")
    param_spec = (
        nahual.Param("max_batch", 1, "tiles per call at most", min=1),
        nahual.Param("batch_wait_ms", 5.0, "ms a batch that is not full waits", min=0),
        nahual.Param("concurrency", 1, "calls at once on this instance (torch releases the GIL)", min=1),
    )

    def load(self, **params: Any) -> None:
        """Build the net with fixed random weights; batching and concurrency as the params say."""
        super().load(**params)
        import dataclasses

        import torch

        torch.set_num_threads(1)
        torch.manual_seed(0)
        self.torch = torch
        self.net = torch.nn.Sequential(
            torch.nn.Conv2d(1, 16, 3, padding=1), torch.nn.ReLU(),
            torch.nn.Conv2d(16, 16, 3, padding=1), torch.nn.ReLU(),
            torch.nn.Conv2d(16, 1, 3, padding=1),
        ).eval()  # fmt: skip
        batching = {key: self.params[key] for key in ("max_batch", "batch_wait_ms", "concurrency")}
        self.contract = dataclasses.replace(type(self).contract, **batching)

    def process(self, payload: Any, **params: Any) -> Any:
        """One tile: a batch of one."""
        return self.process_batch([payload], **params)[0]

    def process_batch(self, payloads: Sequence[Any], **params: Any) -> list[Any]:
        """Stack the tiles on a leading axis, run the net once, split the output."""
        self.merge_params(params, self.params)
        images = [self.contract.read_payload(payload)[0]["image"] for payload in payloads]
        with self.torch.inference_mode():
            out = self.net(self.torch.from_numpy(np.stack(images))[:, None])
        return [{"array": tile[0].numpy()} for tile in out]


def closed_loop(handle: nahual.ModelHandle, payload: dict, clients: int, requests: int) -> tuple[float, list[float]]:
    """Seconds for ``requests`` sent by ``clients`` threads one after the other, and each request's latency."""
    latencies: list[float] = []
    lock = threading.Lock()
    share = requests // clients

    def client() -> None:
        mine = []
        for _ in range(share):
            start = time.perf_counter()
            handle(payload)
            mine.append(time.perf_counter() - start)
        with lock:
            latencies.extend(mine)

    threads = [threading.Thread(target=client) for _ in range(clients)]
    start = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return time.perf_counter() - start, latencies


def calls_made(handle: nahual.ModelHandle) -> int:
    """Model calls the handle's instance made so far (``info``)."""
    return next(i["calls"] for i in handle.client.info()["instances"] if i["id"] == handle.instance_id)


def measure(handles: dict[str, nahual.ModelHandle], payload: dict, clients: int, args: argparse.Namespace) -> dict:
    """Per mode: medians over the rounds of requests/s, p50 and p90 latency (s), requests per call; interleaved."""
    requests = max(args.requests // clients * clients, clients) if clients > 1 else max(args.requests // 8, 8)
    rounds: dict[str, list[tuple[float, ...]]] = {mode: [] for mode in handles}
    for handle in handles.values():  # warm-up, not counted
        closed_loop(handle, payload, clients, clients)
    for _ in range(args.rounds):
        for mode, handle in handles.items():
            before = calls_made(handle)
            seconds, latencies = closed_loop(handle, payload, clients, requests)
            per_call = len(latencies) / (calls_made(handle) - before)
            p90 = statistics.quantiles(latencies, n=10)[-1]
            rounds[mode].append((len(latencies) / seconds, statistics.median(latencies), p90, per_call))
    return {mode: [statistics.median(column) for column in zip(*values)] for mode, values in rounds.items()}


def serve(python: str, directory: Path, name: str, workers: int) -> tuple[subprocess.Popen, str]:
    """A ``nahual serve`` process run by ``python`` that can load ``batching:ConvNet``; waits until ready."""
    ready, address = directory / f"{name}.ready", f"ipc://{directory / name}.sock"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, (str(HERE), os.environ.get("PYTHONPATH"))))}
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1")
    argv = [python, "-m", "nahual", "serve", address, "--ready-file", str(ready), "--workers", str(workers)]
    process = subprocess.Popen([*argv, "--allow-module-models"], env=env)
    wait_ready(ready, process, timeout=120)
    return process, address


HEADER = (
    f"{'model':>8} {'clients':>7} {'mode':>8} {'req/s':>8} {'ratio':>6} {'p50 ms':>8} {'ratio':>6} "
    f"{'p90 ms':>8} {'ratio':>6} {'req/call':>8}"
)


def report(model: str, clients: int, figures: dict[str, list[float]]) -> None:
    """One line per mode; the ratios are against ``plain`` in the same interleaved run."""
    plain_rate, plain_p50, plain_p90, _ = figures["plain"]
    for mode, (rate, p50, p90, per_call) in figures.items():
        print(
            f"{model:>8} {clients:>7} {mode:>8} {rate:>8.1f} {rate / plain_rate:>6.2f} {p50 * 1e3:>8.1f}"
            f" {p50 / plain_p50:>6.2f} {p90 * 1e3:>8.1f} {p90 / plain_p90:>6.2f} {per_call:>8.1f}"
        )


def run_model(address: str, model: str, modes: dict[str, dict], payload: dict, args: argparse.Namespace) -> None:
    """Load one instance per mode (its load params) and report them with one client, then all."""
    with nahual.Client(address, timeout=300) as client:
        handles = {mode: client.load(model, **params) for mode, params in modes.items()}
        for clients in sorted({1, args.clients}):
            report(model.rsplit(":", 1)[-1], clients, measure(handles, payload, clients, args))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=16, help="concurrent clients (default 16)")
    parser.add_argument("--requests", type=int, default=256, help="requests per round with every client (default 256)")
    parser.add_argument("--delay-ms", type=float, default=20.0, help="echo's fixed cost per call (default 20)")
    parser.add_argument("--max-batch", type=int, default=16, help="max_batch of the batched instances (default 16)")
    parser.add_argument("--wait-ms", type=float, default=5.0, help="their batch_wait_ms (default 5)")
    parser.add_argument("--tile", type=int, default=128, help="pixels per side of the tiles sent (default 128)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds per mode, interleaved (default 3)")
    parser.add_argument("--torch", metavar="PYTHON", help="an interpreter with torch: also benchmark ConvNet")
    args = parser.parse_args()
    workers = max(args.clients, args.max_batch)
    batching = {"max_batch": args.max_batch, "batch_wait_ms": args.wait_ms}
    tile = {"image": np.random.default_rng(0).random((args.tile, args.tile), dtype=np.float32)}
    print(f"{os.cpu_count()} CPUs; {args.tile}x{args.tile} float32 tiles; max_batch {args.max_batch}, "
          f"batch_wait_ms {args.wait_ms:g}; median of {args.rounds} interleaved rounds")  # fmt: skip
    print(HEADER + "   (req/call: requests per model call)")
    directory = Path(tempfile.mkdtemp(prefix="nhb"))
    servers = []
    try:
        server, address = serve(sys.executable, directory, "echo", workers)
        servers.append(server)
        delay = {"delay_s": args.delay_ms / 1000}
        run_model(address, "echo", {"plain": delay, "batched": {**delay, **batching}}, tile, args)
        if args.torch:
            server, address = serve(args.torch, directory, "torch", workers)
            servers.append(server)
            threads = {"concurrency": os.cpu_count() or 1}
            run_model(address, "batching:ConvNet", {"plain": {}, "batched": batching, "threads": threads}, tile, args)
    finally:
        stop_all(servers, directory)


if __name__ == "__main__":
    main()
