"""What the cellpose tests and benchmarks run inside a cellpose environment: test weights and direct ``eval`` calls.

Only numpy is imported at the top, so the orchestrator imports :func:`disks`
from here too; torch and cellpose are imported by the commands, which run in
the environment's own Python::

    ENV/bin/python tests/cellpose_env.py weights OUT_DIR [--steps 120]
    ENV/bin/python tests/cellpose_env.py sam-weights OUT_DIR
    ENV/bin/python tests/cellpose_env.py eval WEIGHTS IMAGE.npy OUT.npy PARAMS_JSON
    ENV/bin/python tests/cellpose_env.py worker WEIGHTS TILES.npy OUT.npy PARAMS_JSON

``weights`` writes ``random`` (an untrained CPnet, as ``net.save_model``
saves it), ``trained`` (the same net with its last up-block and output layer
fitted for ~120 Adam steps to discs of 20-32 px: it finds them with an F1
near 0.98, so tests see real objects) and ``trained_size.npy`` (a size model
that starts its estimate at 30 px). ``sam-weights`` writes ``tiny``: a
Cellpose-SAM file holding only the ``W2`` key, which Cellpose 4 loads through
its public path into a randomly initialised ViT-L (149 KB instead of 1.2 GB).
``eval`` is the direct call the adapter must match: ``CellposeModel(...)``
then ``eval(image, **params)``, one torch thread. ``worker`` is the same
model kept loaded for a benchmark: for each line ``I`` on stdin it evaluates
tile ``I`` of TILES.npy and prints ``{"seconds": ...}``; at end of input it
saves the labels to OUT.npy and prints ``{"peak_gpu_bytes": ...}``. PARAMS
may hold ``build`` (constructor keywords: ``device``, ``use_bfloat16``) and
``threads``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

__all__ = ["disks"]


def disks(
    shape: tuple[int, int], count: int, seed: int, radius: tuple[int, int] = (10, 16), noise: float = 0.05
) -> tuple[np.ndarray, np.ndarray]:
    """A float32 image of ``count`` non-overlapping bright discs on a dark, noisy background, and their labels."""
    rng = np.random.default_rng(seed)
    image = np.zeros(shape, np.float32)
    labels = np.zeros(shape, np.int32)
    yy, xx = np.ogrid[: shape[0], : shape[1]]
    placed = 0
    for _ in range(count * 20):
        r = int(rng.integers(*radius))
        cy, cx = (int(rng.integers(0, n)) for n in shape)
        disc = (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r
        if labels[disc].any():
            continue
        placed += 1
        labels[disc] = placed
        image[disc] = 1.0
        if placed == count:
            break
    image += noise * rng.standard_normal(shape).astype(np.float32)
    return image, labels


def make_weights(out: Path, steps: int) -> None:
    """Write ``random``, ``trained`` and ``trained_size.npy`` into ``out`` (about 20-40 s on 2 cores)."""
    import torch
    from cellpose import dynamics, models, transforms

    torch.set_num_threads(2)
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    model = models.CellposeModel(gpu=False, pretrained_model=False, mkldnn=False)
    net = model.net.eval()
    net.save_model(str(out / "random"))
    captured: dict[str, list] = {}
    hook = net.upsample.up[0].register_forward_pre_hook(lambda _, args: captured.__setitem__("args", args))
    inputs, targets = [], []
    for seed in range(4):
        image, labels = disks((224, 224), 30, seed)
        flows = dynamics.masks_to_flows(labels)
        x = transforms.normalize_img(np.stack([image, np.zeros_like(image)], -1), axis=-1).transpose(2, 0, 1)
        with torch.no_grad():
            net(torch.from_numpy(np.ascontiguousarray(x[None])))
        inputs.append([arg.detach() for arg in captured["args"]])
        target = np.stack([5 * flows[0], 5 * flows[1], (labels > 0).astype(np.float32)])
        targets.append(torch.from_numpy(target[None].astype(np.float32)))
    hook.remove()
    up, skip, style = (torch.cat([batch[i] for batch in inputs]) for i in range(3))
    target = torch.cat(targets)
    trained = [*net.upsample.up[0].parameters(), *net.output.parameters()]
    optimizer = torch.optim.Adam(trained, lr=3e-3)
    crop = 64
    for _ in range(steps):
        pick = rng.integers(0, len(target), 8)
        ys, xs = rng.integers(0, 224 - crop, 8), rng.integers(0, 224 - crop, 8)

        def batch(t: torch.Tensor, pick=pick, ys=ys, xs=xs) -> torch.Tensor:
            return torch.stack([t[k, :, y : y + crop, x : x + crop] for k, y, x in zip(pick, ys, xs)])

        out_ = net.output(net.upsample.up[0](batch(up), batch(skip), style[pick]))
        want = batch(target)
        loss = torch.nn.functional.mse_loss(out_[:, :2], want[:, :2])
        loss = loss + torch.nn.functional.binary_cross_entropy_with_logits(out_[:, 2], want[:, 2])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    net.save_model(str(out / "trained"))
    size = {"A": np.zeros(256), "smean": np.zeros(256), "ymean": np.float64(0.0), "diam_mean": np.float64(30.0)}
    np.save(out / "trained_size.npy", size, allow_pickle=True)


def make_sam_weights(out: Path) -> None:
    """Write ``tiny``: the one key Cellpose 4's loader checks (``W2``), so it builds a random ViT-L."""
    import torch

    torch.save({"W2": torch.eye(192).reshape(192, 3, 8, 8)}, out / "tiny")


def build_model(weights: Path, params: dict) -> object:
    """Cellpose's own model as the adapter builds it; pops ``build`` and ``threads`` (default 1) from ``params``."""
    from importlib.metadata import version

    import torch
    from cellpose import models

    torch.set_num_threads(params.pop("threads", 1))
    build = dict(params.pop("build", {}))
    device = torch.device(build.pop("device", "cpu"))
    if int(version("cellpose").split(".")[0]) >= 4:
        return models.CellposeModel(device=device, pretrained_model=str(weights), **build)
    return models.CellposeModel(device=device, pretrained_model=str(weights), model_type=None)


def direct_eval(weights: Path, image: Path, out: Path, params: dict) -> None:
    """The reference the adapter must match: cellpose's own model and ``eval``, on one torch thread."""
    model = build_model(weights, params)
    np.save(out, np.asarray(model.eval(np.load(image), **params)[0]))


def worker(weights: Path, tiles: Path, out: Path, params: dict) -> None:
    """Evaluate the tiles named on stdin, one JSON line of seconds each (see the module docstring)."""
    import time

    import torch

    model = build_model(weights, params)
    images = np.load(tiles)
    labels = np.zeros(images.shape, np.uint32)
    sync = torch.cuda.synchronize if torch.cuda.is_available() else lambda: None
    print(json.dumps({"ready": True}), flush=True)
    for line in sys.stdin:
        index = int(line)
        start = time.perf_counter()
        labels[index] = np.asarray(model.eval(images[index], **params)[0])
        sync()
        print(json.dumps({"seconds": time.perf_counter() - start}), flush=True)
    np.save(out, labels)
    peak = torch.cuda.max_memory_allocated() if torch.cuda.is_available() else 0
    print(json.dumps({"peak_gpu_bytes": peak}), flush=True)


def main(argv: list[str] | None = None) -> int:
    """Run one of the commands of the module docstring."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    weights = commands.add_parser("weights")
    weights.add_argument("out", type=Path)
    weights.add_argument("--steps", type=int, default=120)
    commands.add_parser("sam-weights").add_argument("out", type=Path)
    for command in ("eval", "worker"):
        direct = commands.add_parser(command)
        for name in ("weights", "image", "out"):
            direct.add_argument(name, type=Path)
        direct.add_argument("params", type=json.loads)
    args = parser.parse_args(argv)
    if args.command == "weights":
        make_weights(args.out, args.steps)
    elif args.command == "sam-weights":
        make_sam_weights(args.out)
    else:
        (direct_eval if args.command == "eval" else worker)(args.weights, args.image, args.out, args.params)
    return 0


if __name__ == "__main__":
    sys.exit(main())
