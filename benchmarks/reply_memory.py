"""Peak memory of a client that receives a large reply over ipc, and of the server that sends it.

Usage::

    python benchmarks/reply_memory.py [--mib 64 1024] [--repeats 2]

For each reply size, three ways of calling run interleaved, each with a fresh
server (``nahual serve``, this file's ``Fill`` model: ``mib`` MiB of uint8)
and a fresh client process, so that each peak is its own:

- ``view``: the default: the reply's arrays are read-only views on the
  server's shared memory (no copy in the client);
- ``copy``: ``fill(..., copy=True)``: private, writable copies;
- ``reply_array``: the model writes its result into ``nahual.reply_array``,
  so the server sends it without copying it into a segment.

The client reads one byte of every page of the reply, so all of it is
resident, and reports how much its peak RSS (``VmHWM``) grew over the call,
and the server's. Prints each growth in MiB and as a ratio to the reply size
(goal for ``view``: the client grows by at most 1.1x the reply), from the last
round, and the fastest round's seconds for the call (the first round on a
fresh machine pays for the kernel's first page allocations).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from transport import wait_for

import nahual
from nahual import Contract, Model, Param

MiB = 1 << 20
PAGE = 4096
MODES = ("view", "copy", "reply_array")


class Fill(Model):
    """Returns ``mib`` MiB of uint8 sevens, in a reply array when ``reply_buffer`` is set."""

    name = "fill"
    contract = Contract(output="array")
    param_spec = (
        Param("mib", 1, "reply size in MiB", min=0),
        Param("reply_buffer", False, "write the result into nahual.reply_array instead of np.empty"),
    )

    def process(self, payload: Any, **params: Any) -> Any:
        """Fill a new array with 7 and return it."""
        p = self.merge_params(params, self.params)
        n = p["mib"] * MiB
        out = nahual.reply_array(n, np.uint8) if p["reply_buffer"] else np.empty(n, np.uint8)
        out.fill(7)
        return out


def peak_kib(pid: int | str = "self") -> int:
    """A process's peak resident set size (``VmHWM``), in KiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise SystemExit(f"no VmHWM in /proc/{pid}/status")


def client_run(address: str, mib: int, mode: str) -> None:
    """One measured call (in its own process); prints the peaks' growth as JSON."""
    with nahual.Client(address, timeout=600) as client:
        fill = client.load("reply_memory:Fill")
        server = client.request("ping")["pid"]
        reply_buffer = mode == "reply_array"
        fill(None, mib=1, reply_buffer=reply_buffer)  # warm up: segments, code paths (the reply is dropped)
        before, server_before = peak_kib(), peak_kib(server)
        start = time.perf_counter()
        result = fill(None, mib=mib, reply_buffer=reply_buffer, copy=mode == "copy")
        pages = result[::PAGE]  # one byte of every page: all of the reply is resident
        if int(pages.sum(dtype=np.int64)) != 7 * len(pages):
            raise SystemExit(f"{mode}: the reply does not hold the model's values")
        seconds = time.perf_counter() - start
        grown = {"client": peak_kib() - before, "server": peak_kib(server) - server_before, "seconds": seconds}
        print(json.dumps(grown), flush=True)


def measure(directory: Path, mib: int, mode: str) -> dict[str, float]:
    """Start a server, run one client process against it, stop the server."""
    ready = directory / f"{mode}-{mib}.ready"
    address = f"ipc://{directory / f'{mode}-{mib}.sock'}"
    path = os.pathsep.join(filter(None, (str(Path(__file__).parent), os.environ.get("PYTHONPATH"))))
    env = dict(os.environ, PYTHONPATH=path)  # the server imports Fill from this file
    command = [sys.executable, "-m", "nahual", "serve", address, "--ready-file", str(ready), "--allow-module-models"]
    server = subprocess.Popen(command, env=env)
    try:
        wait_for(ready, server)
        out = subprocess.run(
            [sys.executable, __file__, "--client", address, "--mib", str(mib), "--mode", mode],
            env=env, check=True, capture_output=True, text=True,
        ).stdout  # fmt: skip
        return json.loads(out.splitlines()[-1])
    finally:
        server.terminate()
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mib", type=int, nargs="+", default=[64, 1024], help="reply sizes in MiB (default 64 1024)")
    parser.add_argument("--repeats", type=int, default=2, help="rounds of every size and mode (default 2)")
    parser.add_argument("--client", help=argparse.SUPPRESS)
    parser.add_argument("--mode", choices=MODES, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.client:
        client_run(args.client, args.mib[0], args.mode)
        return

    directory = Path(tempfile.mkdtemp(prefix="nhm"))
    runs: dict[tuple[int, str], list[dict[str, float]]] = {}
    try:
        for _round in range(args.repeats):
            for mib in args.mib:
                for mode in MODES:
                    runs.setdefault((mib, mode), []).append(measure(directory, mib, mode))
    finally:
        shutil.rmtree(directory, ignore_errors=True)
    print(f"{os.cpu_count()} CPUs; peak RSS (VmHWM) growth over one call, client and server in their own processes")
    print(f"{'reply':>9} {'mode':>12} {'client MiB':>11} {'/reply':>7} {'server MiB':>11} {'/reply':>7} {'s':>6}")
    for (mib, mode), grown in runs.items():
        client, server = grown[-1]["client"] / 1024, grown[-1]["server"] / 1024
        seconds = min(g["seconds"] for g in grown)
        print(
            f"{mib:>5} MiB {mode:>12} {client:>11.0f} {client / mib:>7.2f} "
            f"{server:>11.0f} {server / mib:>7.2f} {seconds:>6.2f}"
        )


if __name__ == "__main__":
    main()
