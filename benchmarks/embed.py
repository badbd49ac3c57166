"""Benchmark: DINOv2 per-object embeddings through a nahual server against the same crops embedded in-process.

Two ratios of median seconds per demo frame, from interleaved rounds (each round is one frame, embedded
each way in turn, the order rotated every round so that none always runs first on a busy machine):

- ``direct/server``: the direct in-process time over the served time (goal >= 0.95, higher is better;
  1.0 means the server, the transport and the adapter cost nothing beside the model);
- ``batched``: one crop per request over all crops of a frame in one request (``batch_size`` 64): the
  speed-up the batch axis gives.

Usage::

    python benchmarks/embed.py [--env 'uv:envs/dino?torch=cpu'] [--rounds 16] [--size 112] [--threads 1]

The frames and their ground-truth labels are the demo's (:func:`nahual.demo.make_demo`: 8 frames of
256², 14 to 16 nuclei, 2 channels). The models are written here, in the environment: a torch.hub repo
(``hubconf.py``, the tests' ViT of ``tests/dino_env.py``) with two entries, ``dinov2_vits14`` at ViT-S/14's
size (12 blocks of width 384: 21.6 M parameters) and ``tiny_vit14`` (2 blocks of width 32, where the
model costs least and the server's share is largest), with random state dicts. Each case gets a server
(``nahual.launch``) and a direct worker (this file's ``worker`` command, run by the environment's
Python: the same repo and state dict built by ``torch.hub.load``, the same crops cut by
:mod:`nahual.models._crops`, the same resize, ImageNet mean/std and batches of 64 views, no nahual
in between). The one-crop-per-request side normalises the frame and cuts the crops itself, then sends
each crop to an instance of ``granularity: frame, normalize: none``, which gives the very same vectors;
the ``equal`` column says that every served row equals the direct one and the one-crop one. Torch uses
``--threads`` threads on every side. The table is printed last.

Commands of the environment's Python (``compare`` starts the worker; ``benchmarks/gpu_check.py`` uses ``hf``)::

    ENV/bin/python benchmarks/embed.py hub DIR                  # DIR/hubconf.py, DIR/ENTRY.pth
    ENV/bin/python benchmarks/embed.py hf DIR [--arch vits14]   # transformers Dinov2Model, save_pretrained
    ENV/bin/python benchmarks/embed.py worker SPEC_JSON FRAMES.npy LABELS.npy OUT.npy
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from deep import ROOT, TIMEOUT, peak_rss  # deep puts tests/ on sys.path
from dino_env import TINY_VIT

import nahual
from nahual.launcher import parse_env_spec
from nahual.models._crops import channel_views, normalize, object_crops
from nahual.models.dino import IMAGENET_MEAN, IMAGENET_STD

#: torch.hub entries of the benchmark's repo -> the ViT's size (patch 14; ``tests/dino_env.py``'s TinyViT).
HUB_ENTRIES = {
    "dinov2_vits14": {"embed_dim": 384, "depth": 12, "num_heads": 6},  # ViT-S/14's size
    "tiny_vit14": {},  # the tests' 2 blocks of width 32
}
#: One entry of the hubconf, with the arguments of upstream's (``pretrained``; building is all it does).
HUB_ENTRY = """

def {name}(*, pretrained=True, **kwargs):
    return _built(pretrained, patch_size=14, **{size!r}, **kwargs)
"""
#: transformers Dinov2Config sizes (hidden size, heads; 12 layers, MLP 4x), as facebook/dinov2-small and -base.
HF_ARCHS = {"vits14": (384, 6), "vitb14": (768, 12)}
#: The three ways a frame is embedded, in the order of the first round.
WAYS = ("served", "direct", "one_crop")


# ---- commands run by the environment's Python ---------------------------------------------------------------


def write_hub(folder: Path) -> None:
    """``folder/hubconf.py`` with the :data:`HUB_ENTRIES` and a random state dict ``folder/ENTRY.pth`` for each."""
    import torch

    entries = "".join(HUB_ENTRY.format(name=name, size=size) for name, size in HUB_ENTRIES.items())
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "hubconf.py").write_text('dependencies = ["torch"]\n' + TINY_VIT + entries)
    spec = importlib.util.spec_from_file_location("benchmark_hubconf", folder / "hubconf.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    for seed, name in enumerate(HUB_ENTRIES):
        torch.manual_seed(seed)
        torch.save(getattr(module, name)(pretrained=False).state_dict(), folder / f"{name}.pth")


def write_hf(folder: Path, arch: str) -> None:
    """A random transformers ``Dinov2Model`` of size ``arch`` (:data:`HF_ARCHS`), ``save_pretrained`` to ``folder``."""
    import torch
    from transformers import Dinov2Config, Dinov2Model
    from transformers.utils import logging

    logging.disable_progress_bar()
    width, heads = HF_ARCHS[arch]
    config = Dinov2Config(hidden_size=width, num_hidden_layers=12, num_attention_heads=heads,
                          intermediate_size=4 * width, patch_size=14, image_size=518)  # fmt: skip
    torch.manual_seed(0)
    Dinov2Model(config).save_pretrained(folder)


def direct_worker(spec: dict[str, Any], frames: np.ndarray, labels: np.ndarray, out: Path) -> None:
    """Embed the frames whose indices come on stdin, one JSON line of seconds each; at EOF save the rows.

    ``spec``: ``kind`` (``hub``: ``repo``, ``entry``, ``weights``; ``hf``: ``folder``), ``size``, ``device``,
    ``dtype``, ``threads``, ``batch_size``. Rows are per object, per channel view the normalised CLS token,
    computed as the adapter's defaults say (``docs/deep-models.md``) but without nahual's server or adapter.
    """
    import torch
    import torch.nn.functional as F

    torch.set_num_threads(spec["threads"])
    device = torch.device(spec["device"])
    cls_token = _direct_model(spec, device)
    mean = torch.tensor(IMAGENET_MEAN, device=device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=device).view(1, 3, 1, 1)
    half = spec["dtype"] != "float32"
    autocast = torch.autocast("cuda", dtype=getattr(torch, spec["dtype"])) if half else contextlib.nullcontext()
    side = (spec["size"], spec["size"])

    def embed(index: int) -> np.ndarray:
        crops = object_crops(normalize(frames[index]), labels[index])
        with torch.inference_mode(), autocast:
            views = [
                F.interpolate(torch.from_numpy(channel_views(crop)).to(device), size=side, mode="bilinear",
                              antialias=True, align_corners=False)
                for crop in crops.pixels
            ]  # fmt: skip
            pixels = (torch.cat(views) - mean) / std
            rows = [cls_token(batch).float().cpu() for batch in pixels.split(spec["batch_size"])]
        return torch.cat(rows).reshape(len(crops.pixels), -1).numpy()

    done = {}
    print(json.dumps({"ready": True}), flush=True)
    for line in sys.stdin:
        index = int(line)
        start = time.perf_counter()
        done[index] = embed(index)
        print(json.dumps({"seconds": time.perf_counter() - start}), flush=True)
    np.save(out, np.concatenate([done[index] for index in sorted(done)]))
    peak = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else 0
    print(json.dumps({"peak_gpu_bytes": peak}), flush=True)


def _direct_model(spec: dict[str, Any], device: Any) -> Callable[[Any], Any]:
    """The CLS token of a batch, by the model's own API: torch.hub's ``forward_features``, or transformers."""
    import torch

    if spec["kind"] == "hf":
        from transformers import AutoModel
        from transformers.utils import logging

        logging.disable_progress_bar()
        model = AutoModel.from_pretrained(spec["folder"]).eval().to(device)
        return lambda pixels: model(pixel_values=pixels).last_hidden_state[:, 0]
    model = torch.hub.load(spec["repo"], spec["entry"], source="local", pretrained=False)
    model.load_state_dict(torch.load(spec["weights"], map_location="cpu", weights_only=True), strict=True)
    model = model.eval().to(device)
    return lambda pixels: model.forward_features(pixels)["x_norm_clstoken"]


# ---- the orchestrator ---------------------------------------------------------------------------------------


def demo_frames() -> tuple[np.ndarray, np.ndarray]:
    """The demo's ``(t, c, y, x)`` frames as float32 (the contract's dtype) and its ground-truth labels."""
    from nahual.demo import make_demo

    demo = make_demo()
    return demo.image.astype(np.float32), demo.labels


def compare(
    spec: str,
    model: str,
    load: dict[str, Any],
    direct: dict[str, Any],
    frames: np.ndarray,
    labels: np.ndarray,
    rounds: int,
    one_crop: bool = True,
) -> dict[str, Any]:
    """Embed the objects of ``frames`` through a server and a direct worker in ``spec``, interleaved.

    Parameters
    ----------
    spec : str
        The environment of both (prepared first).
    model, load : str, dict
        What the server preloads: ``dinov2`` or ``nahual.models.dino:DINOv2``, and its load params.
    direct : dict
        The worker's spec (:func:`direct_worker`), for the same model, weights, size, device and dtype.
    frames, labels : ndarray
        ``(t, c, y, x)`` float32 and ``(t, y, x)`` integers.
    rounds : int
        Measured rounds, after one warm-up on frame 0; round ``r`` embeds frame ``r mod t``.
    one_crop : bool
        Also embed each frame one crop per request.

    Returns
    -------
    dict
        Per way (``served``, ``direct``, ``one_crop``) its seconds per round (``WAY_s``) and their sum
        (``WAY_total``); ``crops`` of the measured rounds, ``ratio`` (direct/server of the medians),
        ``speedup`` (one crop/batched of the medians), ``server_peak_rss``, ``peak_gpu_bytes``,
        ``max_diff`` (largest difference of a served row from the direct and one-crop rows) and ``equal``.
    """
    backend = parse_env_spec(spec)
    backend.prepare()
    with tempfile.TemporaryDirectory() as scratch:
        paths = [Path(scratch) / name for name in ("frames.npy", "labels.npy", "direct.npy")]
        np.save(paths[0], frames)
        np.save(paths[1], labels)
        argv = [backend.python()[0], __file__, "worker", json.dumps(direct), *map(str, paths)]
        with (
            nahual.launch(backend, preload=model, params=load, timeout=TIMEOUT) as server,
            server.client() as client,
            subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=ROOT) as worker,
        ):
            batched = client.load(model, **load)
            single = client.load(model, **load, granularity="frame", normalize="none") if one_crop else None
            assert json.loads(worker.stdout.readline()).get("ready"), "the direct worker did not start"
            rows: dict[str, dict[int, np.ndarray]] = {"served": {}, "one_crop": {}}

            def run_direct(index: int) -> float:
                worker.stdin.write(f"{index}\n")
                worker.stdin.flush()
                return json.loads(worker.stdout.readline())["seconds"]

            def timed(way: str, embed: Callable[[int], np.ndarray]) -> Callable[[int], float]:
                def run(index: int) -> float:
                    start = time.perf_counter()
                    rows[way][index] = embed(index)
                    return time.perf_counter() - start

                return run

            def served(index: int) -> np.ndarray:
                return batched({"image": frames[index], "labels": labels[index], "axes": "cyx"})["embedding"]

            ways = {"served": timed("served", served), "direct": run_direct}
            if single is not None:
                ways["one_crop"] = timed("one_crop", partial(one_crop_per_request, single, frames, labels))
            seconds = interleaved(ways, rounds, len(frames))
            rss = peak_rss(server.pid)
            worker.stdin.close()
            peak_gpu = json.loads(worker.stdout.readlines()[-1])["peak_gpu_bytes"]
        expected = np.load(paths[2])
    crops = sum(len(rows["served"][r % len(frames)]) for r in range(rounds))
    return summary(seconds, rows, expected, crops, rss, peak_gpu, tolerance=_tolerance(direct["dtype"]))


def one_crop_per_request(handle: nahual.ModelHandle, frames: np.ndarray, labels: np.ndarray, index: int) -> np.ndarray:
    """The rows of frame ``index``'s objects, one request per crop: normalised and cut here, as the adapter does."""
    crops = object_crops(normalize(frames[index]), labels[index])
    return np.concatenate([handle({"image": crop, "axes": "cyx"})["embedding"] for crop in crops.pixels])


def interleaved(ways: dict[str, Callable[[int], float]], rounds: int, frames: int) -> dict[str, list[float]]:
    """Seconds of each way per round: a warm-up on frame 0, then frame ``r mod frames``, the order rotated."""
    names = list(ways)
    for name in names:  # warm-up: first calls allocate and tune kernels
        ways[name](0)
    seconds: dict[str, list[float]] = {name: [] for name in names}
    for r in range(rounds):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            seconds[name].append(ways[name](r % frames))
    return seconds


def summary(
    seconds: dict[str, list[float]],
    rows: dict[str, dict[int, np.ndarray]],
    expected: np.ndarray,
    crops: int,
    rss: int,
    peak_gpu: int,
    tolerance: float,
) -> dict[str, Any]:
    """What :func:`compare` returns, from the seconds of each way and the rows each gave (by frame index)."""
    out: dict[str, Any] = {f"{way}_s": s for way, s in seconds.items()}
    out.update({f"{way}_total": sum(s) for way, s in seconds.items()})
    median = {way: statistics.median(s) for way, s in seconds.items()}
    out["ratio"] = median["direct"] / median["served"]
    out["speedup"] = median["one_crop"] / median["served"] if "one_crop" in median else None
    out["crops"] = crops
    served = np.concatenate([rows["served"][i] for i in sorted(rows["served"])])
    others = [expected] + ([np.concatenate([rows["one_crop"][i] for i in sorted(rows["one_crop"])])]
                           if rows["one_crop"] else [])  # fmt: skip
    same_shapes = all(other.shape == served.shape for other in others)
    out["max_diff"] = max(float(np.abs(served - other).max()) for other in others) if same_shapes else np.inf
    out["equal"] = same_shapes and all(np.allclose(served, other, rtol=tolerance, atol=tolerance) for other in others)
    out.update(server_peak_rss=rss, peak_gpu_bytes=peak_gpu)
    return out


def _tolerance(dtype: str) -> float:
    """``rtol`` and ``atol`` of rows counted as equal: float32 rounding, or that of half-precision autocast."""
    return 1e-4 if dtype == "float32" else 5e-2


def main(argv: list[str]) -> int:
    """Run the benchmark (no command), or one of the environment's commands (module docstring)."""
    if argv[:1] in (["hub"], ["hf"], ["worker"]):
        return env_command(argv)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--env", default=f"uv:{ROOT / 'envs' / 'dino'}?torch=cpu", help="environment spec")
    parser.add_argument("--rounds", type=int, default=16, help="measured rounds (frames) per case")
    parser.add_argument("--size", type=int, default=112, help="side the model sees, a multiple of 14")
    parser.add_argument("--threads", type=int, default=1, help="torch threads of each side")
    args = parser.parse_args(argv)
    frames, labels = demo_frames()
    results = []
    with tempfile.TemporaryDirectory() as scratch:
        repo = Path(scratch) / "hub"
        subprocess.run([parse_env_spec(args.env).python()[0], __file__, "hub", str(repo)], check=True, cwd=ROOT)
        for entry in HUB_ENTRIES:
            weights = str(repo / f"{entry}.pth")
            load = {"model": entry, "repo": str(repo), "weights": weights, "size": args.size, "device": "cpu",
                    "threads": args.threads}  # fmt: skip
            direct = {"kind": "hub", "repo": str(repo), "entry": entry, "weights": weights, "size": args.size,
                      "device": "cpu", "dtype": "float32", "threads": args.threads, "batch_size": 64}  # fmt: skip
            print(f"{entry}: {args.rounds} rounds of a demo frame, size {args.size}, ...", flush=True)
            results.append((entry, compare(args.env, "dinov2", load, direct, frames, labels, args.rounds)))
    print(f"\n{args.rounds} rounds (demo frames of 256², 2 channels: 2 views per crop), size {args.size}, "
          f"{args.threads} torch thread(s), env {args.env}; medians of seconds per frame")  # fmt: skip
    print(f"{'model':<14} {'crops/s':>8} {'served':>8} {'direct':>8} {'direct/server':>13} {'one crop':>9} "
          f"{'batched x':>9} {'RSS':>8} equal (max diff)")  # fmt: skip
    for entry, out in results:
        median = {way: statistics.median(out[f"{way}_s"]) for way in WAYS}
        print(
            f"{entry:<14} {out['crops'] / out['served_total']:>8.1f} {median['served']:>8.4f} "
            f"{median['direct']:>8.4f} {out['ratio']:>13.3f} {median['one_crop']:>9.4f} {out['speedup']:>9.2f} "
            f"{out['server_peak_rss'] / 2**20:>4.0f} MiB {out['equal']} ({out['max_diff']:.1e})"
        )
    return 0


def env_command(argv: list[str]) -> int:
    """The commands run by the environment's Python: ``hub``, ``hf`` and ``worker``."""
    parser = argparse.ArgumentParser(description="the environment's side of benchmarks/embed.py")
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("hub").add_argument("folder", type=Path)
    hf = commands.add_parser("hf")
    hf.add_argument("folder", type=Path)
    hf.add_argument("--arch", choices=tuple(HF_ARCHS), default="vits14")
    worker = commands.add_parser("worker")
    for name in ("spec", "frames", "labels", "out"):
        worker.add_argument(name)
    args = parser.parse_args(argv)
    if args.command == "hub":
        write_hub(args.folder)
    elif args.command == "hf":
        write_hf(args.folder, args.arch)
    else:
        direct_worker(json.loads(args.spec), np.load(args.frames), np.load(args.labels), Path(args.out))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
