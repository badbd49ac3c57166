"""Round trips of float32 arrays through ``echo`` over ipc, against a raw AF_UNIX socket echo.

Usage::

    python benchmarks/transport.py [--sizes 1 16 64] [--repeats 9]

The echoes run in other processes and carry the same bytes both ways; their
rounds are interleaved in one run so that machine noise hits all alike:

- ``shm``: nahual as it runs over ipc, large arrays through shared memory;
- ``nng``: the same server, from a client made with ``NAHUAL_SHM=0``, so
  every byte goes through nng's ipc stream (the path before shared memory);
- ``raw``: the floor: one kernel copy each way, a preallocated receive
  buffer, no framing beyond an 8-byte length.

Prints each median and the throughput ratios shm/raw and nng/raw (goal at
16 MiB: shm/raw at least 1.5). ``shm`` reads each reply as a view on the
server's segment; the round trip drops it before the next one, which frees
the segment for the server's next reply.

The environment (e.g. ``GLIBC_TUNABLES``) is passed on to the server process.
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from _servers import stop_all, wait_ready

import nahual

MiB = 1 << 20
LENGTH = 8  # bytes of the raw echo's length prefix


def recv_exactly(conn: socket.socket, view: memoryview) -> None:
    while view:
        got = conn.recv_into(view)
        if not got:
            raise ConnectionError("peer closed")
        view = view[got:]


def raw_echo_server(path: str) -> None:
    """Serve length-prefixed echoes on an AF_UNIX socket until the peer closes."""
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(1)
    conn, _ = listener.accept()
    buffer = bytearray(LENGTH)
    try:
        while True:
            recv_exactly(conn, memoryview(buffer)[:LENGTH])
            size = int.from_bytes(buffer[:LENGTH], "little")
            if len(buffer) < LENGTH + size:
                buffer = bytearray(buffer[:LENGTH]) + bytearray(size)
            recv_exactly(conn, memoryview(buffer)[LENGTH : LENGTH + size])
            conn.sendall(memoryview(buffer)[: LENGTH + size])
    except ConnectionError:
        pass
    finally:
        conn.close()
        listener.close()


def plain_client(address: str) -> nahual.Client:
    """A client that keeps shared memory off (``NAHUAL_SHM=0`` while its socket is made)."""
    previous = os.environ.get("NAHUAL_SHM")
    os.environ["NAHUAL_SHM"] = "0"
    try:
        return nahual.Client(address, timeout=120)
    finally:
        if previous is None:
            del os.environ["NAHUAL_SHM"]
        else:
            os.environ["NAHUAL_SHM"] = previous


def raw_round_trip(conn: socket.socket, array: np.ndarray, received: bytearray) -> np.ndarray:
    """One length-prefixed echo of ``array`` through the raw socket."""
    conn.sendall(len(array.data.cast("B")).to_bytes(LENGTH, "little"))
    conn.sendall(array.data.cast("B"))
    recv_exactly(conn, memoryview(received))
    return np.frombuffer(received, np.float32, offset=LENGTH)


def measure(array: np.ndarray, echoes: dict, conn: socket.socket, repeats: int) -> dict[str, float]:
    """Median seconds per round trip of each method, rounds interleaved; the first round warms up."""
    received = bytearray(LENGTH + array.nbytes)
    calls = {name: (lambda e=echo: e(array)) for name, echo in echoes.items()}
    calls["raw"] = lambda: raw_round_trip(conn, array, received)
    times: dict[str, list[float]] = {name: [] for name in calls}
    for repeat in range(repeats + 1):
        for name, call in calls.items():
            start = time.perf_counter()
            result = call()
            elapsed = time.perf_counter() - start
            if repeat == 0:
                assert np.array_equal(result, array), name
            else:
                times[name].append(elapsed)
            del result
    return {name: statistics.median(values) for name, values in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1, 16, 64], help="MiB (default 1 16 64)")
    parser.add_argument("--repeats", type=int, default=9, help="round trips per size and method (default 9)")
    parser.add_argument("--raw-server", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.raw_server:
        raw_echo_server(args.raw_server)
        return

    directory = Path(tempfile.mkdtemp(prefix="nhb"))
    ready, raw_path = directory / "ready", directory / "raw.sock"
    address = f"ipc://{directory / 'echo.sock'}"
    server = subprocess.Popen([sys.executable, "-m", "nahual", "serve", address, "--ready-file", str(ready)])
    raw = subprocess.Popen([sys.executable, __file__, "--raw-server", str(raw_path)])
    try:
        wait_ready(ready, server)
        wait_ready(raw_path, raw)
        conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        conn.connect(str(raw_path))
        with nahual.Client(address, timeout=120) as client, plain_client(address) as plain:
            echoes = {"shm": client.load("echo"), "nng": plain.load("echo")}
            print(f"GLIBC_TUNABLES={os.environ.get('GLIBC_TUNABLES', '')!r}; {os.cpu_count()} CPUs; "
                  f"median of {args.repeats} round trips each (payload counted both ways)")  # fmt: skip
            print(f"{'size':>7} {'shm ms':>8} {'nng ms':>8} {'raw ms':>8} {'shm GB/s':>9} {'raw GB/s':>9} "
                  f"{'shm/raw':>8} {'nng/raw':>8}")  # fmt: skip
            for size in args.sizes:
                array = np.random.default_rng(size).random(size * MiB // 4, dtype=np.float32)
                medians = measure(array, echoes, conn, args.repeats)
                moved = 2 * array.nbytes / 1e9
                shm_s, nng_s, raw_s = medians["shm"], medians["nng"], medians["raw"]
                print(
                    f"{size:>4} MiB {shm_s * 1e3:>8.2f} {nng_s * 1e3:>8.2f} {raw_s * 1e3:>8.2f} "
                    f"{moved / shm_s:>9.2f} {moved / raw_s:>9.2f} {raw_s / shm_s:>8.2f} {raw_s / nng_s:>8.2f}"
                )
        conn.close()
    finally:
        stop_all((server, raw), directory)


if __name__ == "__main__":
    main()
