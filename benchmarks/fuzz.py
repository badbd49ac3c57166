"""The long hardening runs, on demand: a 100,000-message fuzz of live servers and a SIGKILL-resume loop.

Usage::

    python benchmarks/fuzz.py [--messages 100000] [--transports ipc tcp] [--kills 10] [--seed 20240601]

``fuzz``: for each transport, a server is launched (tcp with a token, as tcp
requires), ``echo`` is loaded, and ``--messages`` random and mutated messages
(the mutations of ``tests/test_fuzz.py``, which sends 3,000 in CI) go to it
over a raw Req0 socket. Every message must get one valid reply naming its
request id within 10 s; the counts of replies, error replies, wrong replies
and hangs are printed, and the server must still answer afterwards.

``resume``: ``nahual apply`` (the Blobs run of ``tests/test_stream_resume.py``)
is SIGKILLed ``--kills`` times, each time at a random number of finished
blocks (the last block included: then it dies while stitching), and run
again to completion; the output's chunk files must be byte-identical to an
uninterrupted run's.

Exits 1 when any count is wrong (a hang, a wrong reply, a dead server, a
resumed output that differs).
"""

from __future__ import annotations

import argparse
import hashlib
import random
import secrets
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
import pynng  # noqa: E402
from conftest import free_tcp_port, subprocess_env  # noqa: E402
from stream_models import Blobs  # noqa: E402
from test_fuzz import check_reply, mutate, seeds  # noqa: E402
from test_stream_resume import apply_command, kill_when  # noqa: E402
from test_stream_stitch import blobs  # noqa: E402

from nahual import _protocol as protocol  # noqa: E402
from nahual import launch  # noqa: E402
from nahual._protocol import Kind  # noqa: E402
from nahual.stream import LocalModel, StreamOptions, apply, write_image  # noqa: E402
from nahual.stream._resume import RunState  # noqa: E402

#: Milliseconds a fuzzed message may wait for its reply before it counts as a hang.
REPLY_MS = 10_000
#: Seconds per block in the resumed runs (slow enough to be killed midway).
BLOCK_DELAY_S = 0.03


def with_token(message: bytes, token: str) -> bytes:
    """A seed message carrying ``token``, so that mutations reach past the token check."""
    frame = protocol.decode(message)
    return bytes(protocol.encode(frame.kind, frame.request_id, {**frame.meta, "token": token}, frame.payload))


def fuzz(transport: str, messages: int, seed: int, directory: Path) -> dict[str, int]:
    """Send ``messages`` mutated messages to a fresh server; returns the counts (``alive`` 1 if it survived)."""
    token = secrets.token_hex(16) if transport == "tcp" else None
    address = f"tcp://127.0.0.1:{free_tcp_port()}" if transport == "tcp" else f"ipc://{directory / 'fuzz.sock'}"
    counts = {"sent": 0, "replies": 0, "errors": 0, "wrong": 0, "hangs": 0, "alive": 0}
    with launch("current", address=address, timeout=30, token=token) as server:
        with server.client() as client:
            pool = seeds(client.load("echo").instance_id)
        pool = [with_token(message, token) for message in pool] if token else pool
        rng = random.Random(seed)
        with pynng.Req0(dial=address, recv_timeout=REPLY_MS, send_timeout=REPLY_MS, resend_time=-1) as sock:
            for _ in range(messages):
                message = mutate(rng, rng.choice(pool))
                sock.send(message)
                counts["sent"] += 1
                try:
                    kind = check_reply(message, sock.recv())
                except pynng.Timeout:
                    counts["hangs"] += 1
                    continue
                except AssertionError:
                    counts["wrong"] += 1
                    continue
                counts["replies" if kind == Kind.REPLY else "errors"] += 1
        with server.client() as client:
            client.ping()
            counts["alive"] = int(server.returncode is None)
    return counts


def chunk_digest(store: Path, name: str) -> str:
    """A digest of the chunk files of output ``name`` (their paths and bytes; metadata left out)."""
    digest = hashlib.sha256()
    group = store / "labels" / name
    for path in sorted(p for p in group.rglob("*") if p.is_file() and not p.name.startswith((".z", "zarr.json"))):
        digest.update(str(path.relative_to(group)).encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()


def resume_loop(kills: int, seed: int, directory: Path) -> dict[str, int]:
    """SIGKILL ``kills`` runs at random points, resume each; returns the counts."""
    image = write_image(directory / "img.zarr", blobs((3, 192, 192), 64, seed=5), "tyx", chunks=(1, 64, 64))
    options = StreamOptions(tile="y=64,x=64", halo=16)
    with LocalModel(Blobs, {"delay_s": BLOCK_DELAY_S}) as model:
        apply(model, image, "reference", options, progress=False)
    reference, total = chunk_digest(Path(image), "reference"), 3 * 9
    rng = random.Random(seed)
    counts = {"runs": 0, "killed": 0, "finished_first": 0, "identical": 0, "different": 0, "failed": 0}
    env = subprocess_env()
    for run in range(kills):
        name, point = f"seg{run}", rng.randint(1, total)
        state = RunState(str(image), name)
        process = subprocess.Popen(
            apply_command(image, name, delay=BLOCK_DELAY_S), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
        killed = kill_when(process, lambda s=state, p=point: len(s.finished()) >= p)
        counts["runs"] += 1
        counts["killed" if killed else "finished_first"] += 1
        done = subprocess.run(apply_command(image, name, delay=BLOCK_DELAY_S), env=env, capture_output=True, text=True)
        if done.returncode != 0:
            counts["failed"] += 1
            print(f"resumed run {name} failed:\n{done.stderr}", file=sys.stderr)
            continue
        counts["identical" if chunk_digest(Path(image), name) == reference else "different"] += 1
    return counts


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=100_000, help="fuzzed messages per transport")
    parser.add_argument("--transports", nargs="+", default=["ipc", "tcp"], choices=["ipc", "tcp"])
    parser.add_argument("--kills", type=int, default=10, help="SIGKILLed runs to resume (0: skip)")
    parser.add_argument("--seed", type=int, default=20240601)
    args = parser.parse_args()
    ok = True
    with tempfile.TemporaryDirectory(prefix="nh") as tmp:
        directory = Path(tmp)
        for transport in args.transports if args.messages else []:
            counts = fuzz(transport, args.messages, args.seed, directory)
            print(f"fuzz {transport}: " + ", ".join(f"{key} {value}" for key, value in counts.items()), flush=True)
            ok &= counts["wrong"] == counts["hangs"] == 0 and counts["alive"] == 1 and counts["errors"] > 0
        if args.kills:
            counts = resume_loop(args.kills, args.seed, directory)
            print("resume: " + ", ".join(f"{key} {value}" for key, value in counts.items()), flush=True)
            ok &= counts["identical"] == counts["runs"] and counts["killed"] > 0
    print("all counts as expected" if ok else "FAILED: see the counts above")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
