"""What the earlier-wire tests run in ``envs/nahual-0.0.8``: the PyPI nahual 0.0.8 client, and a server built on it.

Run by that environment's Python, where ``import nahual`` is the 0.0.8 release
(this file imports nothing of ours)::

    ENV/bin/python tests/legacy_env.py client ADDRESS MODEL SETUP_JSON IN.npy OUT [--repeat N] [--resend-ms MS]
    ENV/bin/python tests/legacy_env.py serve ADDRESS MODE

``client`` is what aliby does: ``setup, process = dispatch_setup_process(MODEL)``,
``setup(SETUP, address=...)``, then ``process(array, address=...)``, ``--repeat``
times (aliby sets up again for every position). It prints one JSON line per
setup reply and writes the last result to OUT (``.npy``, or JSON for a dict);
a failure prints ``FAILED <type>: <message>`` and exits 3. ``--resend-ms``
shortens nng's resend time (60 s by default; 0.0.8 offers no way to set it)
by giving ``pynng.Req0`` that default, so that a request slower than the
resend time takes seconds instead of minutes.

``serve`` is a server as the upstream model servers are written: a ``setup``
returning ``(processor, info)``, handed to 0.0.8's ``responder`` on a Rep0
socket (under asyncio rather than trio, which 0.0.8 does not install). MODE:

- ``labels``: (Z, Y, X) -> (1, Y, X) uint16 labels, the rounded max over z, or with a setup
  ``threshold`` 1 where the max is above it (Cellpose's layout);
- ``embeddings``: (N, C, Z, Y, X), Y and X multiples of 14 -> (N, 2 * ceil(C / 3)) float32: per
  channel triplet its mean and its max (DINOv2's layout);
- ``tracks``: (2, T, Y, X) -> every label linked to the same label one frame later (Trackastra's); 0.0.8's
  ``responder`` sends arrays only, so this one answers with a loop of its own around 0.0.8's
  ``setup_content`` and ``deserialize_numpy``, replying JSON, as a dict-returning server must;
- ``slow``: sleeps the setup's ``delay_s``, appends a line to its ``log`` file, returns the array;
- ``error``: raises ``ValueError("injected failure")`` on every array.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import sys
import time
from pathlib import Path

import numpy as np


def run_client(args: argparse.Namespace) -> int:
    import pynng

    if args.resend_ms is not None:
        pynng.Req0 = functools.partial(pynng.Req0, resend_time=args.resend_ms)
    from nahual.process import dispatch_setup_process

    setup, process = dispatch_setup_process(args.model)
    data = np.load(args.input)
    try:
        for _ in range(args.repeat):
            print(json.dumps(setup(json.loads(args.setup), address=args.address)), flush=True)
            result = process(data, address=args.address)
    except Exception as exc:
        print(f"FAILED {type(exc).__name__}: {exc}", flush=True)
        return 3
    if isinstance(result, dict):
        Path(args.output).write_text(json.dumps(result))
    else:
        np.save(args.output, np.asarray(result))
    return 0


def labels(pixels: np.ndarray, threshold: float | None = None) -> np.ndarray:
    top = pixels.max(axis=0)
    return (np.round(top) if threshold is None else top > threshold).astype(np.uint16)[np.newaxis]


def embeddings(pixels: np.ndarray) -> np.ndarray:
    n, c, _, y, x = pixels.shape
    assert y % 14 == 0 and x % 14 == 0, f"Invalid input shape {(y, x)}. Last dims should be divisible by 14"
    plane = np.concatenate([pixels[:, :, 0], np.zeros((n, -c % 3, y, x), pixels.dtype)], axis=1)
    triplets = plane.reshape(n, -1, 3 * y * x)
    return np.concatenate([triplets.mean(axis=2), triplets.max(axis=2)], axis=1).astype(np.float32)


def tracks(pixels: np.ndarray) -> dict[str, list]:
    masks = pixels[1].astype(int)
    edges: dict[str, list] = {key: [] for key in ("source_frame", "source_label", "target_frame", "target_label")}
    for t in range(len(masks) - 1):
        for label in sorted(set(np.unique(masks[t]).tolist()) & set(np.unique(masks[t + 1]).tolist()) - {0}):
            for key, value in zip(edges, (t, label, t + 1, label)):
                edges[key].append(value)
    return {**edges, "weight": [0.5] * len(edges["source_frame"])}


def slow(pixels: np.ndarray, delay_s: float, log: str) -> np.ndarray:
    with open(log, "a") as handle:
        handle.write("call\n")
    time.sleep(delay_s)
    return pixels


def fail(pixels: np.ndarray) -> np.ndarray:
    raise ValueError("injected failure")


def make_setup(mode: str):
    def setup(**params):
        if mode == "slow":
            return functools.partial(slow, delay_s=float(params["delay_s"]), log=params["log"]), {"mode": mode}
        if mode == "labels":
            return functools.partial(labels, threshold=params.get("threshold")), {"mode": mode, **params}
        processor = {"embeddings": embeddings, "tracks": tracks, "error": fail}[mode]
        return processor, {"mode": mode, **params}

    return setup


async def dict_responder(sock, setup) -> None:
    """0.0.8's responder for a processor that returns a dict: the reply is its JSON (``{}`` on a failure)."""
    from nahual.serial import deserialize_numpy

    from nahual.server import setup_content

    processor = None
    while True:
        msg = await sock.arecv_msg()
        try:
            if processor is None:
                processor = await setup_content(msg, sock, setup)
            else:
                await sock.asend(json.dumps(processor(deserialize_numpy(msg.bytes))).encode())
        except Exception as exc:
            print(f"failed: {exc}", flush=True)
            await sock.asend(b"{}")


async def serve(address: str, mode: str) -> None:
    import pynng

    from nahual.server import responder

    with pynng.Rep0(listen=address) as sock:
        print("READY", flush=True)
        await (dict_responder if mode == "tracks" else responder)(sock, setup=make_setup(mode))


def main() -> int:
    parser = argparse.ArgumentParser()
    commands = parser.add_subparsers(dest="command", required=True)
    client = commands.add_parser("client")
    for name in ("address", "model", "setup", "input", "output"):
        client.add_argument(name)
    client.add_argument("--repeat", type=int, default=1)
    client.add_argument("--resend-ms", type=int)
    server = commands.add_parser("serve")
    server.add_argument("address")
    server.add_argument("mode", choices=("labels", "embeddings", "tracks", "slow", "error"))
    args = parser.parse_args()
    if args.command == "client":
        return run_client(args)
    asyncio.run(serve(args.address, args.mode))
    return 0


if __name__ == "__main__":
    sys.exit(main())
