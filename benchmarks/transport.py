"""Round trips of float32 arrays through ``echo`` over ipc, against a raw AF_UNIX socket echo.

Usage::

    python benchmarks/transport.py [--sizes 1 16 64] [--repeats 9]

Both echoes run in a second process and carry the same bytes both ways; their
rounds are interleaved in one run so that machine noise hits both alike. The
raw echo is the floor: one kernel copy each way, a preallocated receive
buffer, no framing beyond an 8-byte length. Prints each median and the
throughput ratio nahual/raw (goal at 16 MiB: at least 0.45).

The environment (e.g. ``GLIBC_TUNABLES``) is passed on to the server process.
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

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


def wait_for(path: Path, process: subprocess.Popen, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if process.poll() is not None or time.monotonic() > deadline:
            raise SystemExit(f"{process.args} did not start")
        time.sleep(0.01)


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
        wait_for(ready, server)
        wait_for(raw_path, raw)
        conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        conn.connect(str(raw_path))
        with nahual.Client(address, timeout=120) as client:
            echo = client.load("echo")
            print(f"GLIBC_TUNABLES={os.environ.get('GLIBC_TUNABLES', '')!r}; {os.cpu_count()} CPUs; "
                  f"median of {args.repeats} round trips each (payload counted both ways)")  # fmt: skip
            print(f"{'size':>7} {'nahual ms':>10} {'raw ms':>8} {'nahual GB/s':>12} {'raw GB/s':>9} {'nahual/raw':>11}")
            for size in args.sizes:
                array = np.random.default_rng(size).random(size * MiB // 4, dtype=np.float32)
                header = len(array.data.cast("B")).to_bytes(LENGTH, "little")
                received = bytearray(LENGTH + array.nbytes)
                times: dict[str, list[float]] = {"nahual": [], "raw": []}
                for repeat in range(args.repeats + 1):  # the first round warms both up
                    start = time.perf_counter()
                    result = echo(array)
                    nahual_s = time.perf_counter() - start
                    start = time.perf_counter()
                    conn.sendall(header)
                    conn.sendall(array.data.cast("B"))
                    recv_exactly(conn, memoryview(received))
                    raw_result = np.frombuffer(received, np.float32, offset=LENGTH)
                    raw_s = time.perf_counter() - start
                    if repeat == 0:
                        assert np.array_equal(result, array) and np.array_equal(raw_result, array)
                        continue
                    times["nahual"].append(nahual_s)
                    times["raw"].append(raw_s)
                    del result
                nahual_median, raw_median = (statistics.median(times[k]) for k in ("nahual", "raw"))
                moved = 2 * array.nbytes / 1e9
                print(
                    f"{size:>4} MiB {nahual_median * 1e3:>10.2f} {raw_median * 1e3:>8.2f} "
                    f"{moved / nahual_median:>12.2f} {moved / raw_median:>9.2f} {raw_median / nahual_median:>11.2f}"
                )
        conn.close()
    finally:
        for process in (server, raw):
            if process.poll() is None:
                process.terminate()
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
        shutil.rmtree(directory, ignore_errors=True)


if __name__ == "__main__":
    main()
