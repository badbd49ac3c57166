"""GPU check: the deep models on CUDA through nahual servers against direct calls, one table printed last.

For a GPU machine with no network and its own ``python3`` (3.12, with torch,
torchvision and transformers installed). Everything else comes along as
wheels for that Python, downloaded beforehand into ``wheels/`` (ignored by
git), on a machine with internet and this checkout::

    python3 benchmarks/gpu_check.py requirements       # wheels/cellpose.txt, wheels/cellpose-sam.txt from the locks
    for env in cellpose cellpose-sam; do
        pip download --python-version 3.12 --only-binary=:all: --no-deps -d wheels/$env -r wheels/$env.txt
    done

The requirement files are the locks of ``envs/cellpose`` and
``envs/cellpose-sam`` without torch, torchvision and the CUDA packages (the GPU
machine's own are used). Then, on the GPU machine, from the checkout::

    python3 benchmarks/gpu_check.py run [--device cuda:0] [--tiles 32] [--size 512]

builds ``wheels/venv-cellpose`` and ``wheels/venv-cellpose-sam`` (venvs over
the system site-packages, so torch is the machine's; pip installs offline
from the wheels), makes random weights of the real architectures (a CPnet; a
Cellpose-SAM ViT-L from a ``W2``-only file), and for each case serves the
tiles through a nahual server and, in turn, through cellpose's own model in
the same venv (``benchmarks/deep.py``'s comparison): tiles per second of
each, ``direct/server``, the peak GPU memory of the model, the server's peak
RSS and whether the labels agree.

DINOv2 (``benchmarks/embed.py``'s comparison): a random ``Dinov2Model`` of
ViT-S/14 (``--dino-arch vitb14``: ViT-B/14) built from transformers'
``Dinov2Config`` and saved with ``save_pretrained``, served from the weights
cache (the Hugging Face route; the machine has no dinov2 clone) in fp32 and
bf16 (autocast), against the same model called directly on the same crops:
``--dino-frames`` frames of ``--dino-side``² holding the tiles' discs (about
400 at 1024²) in 2 channels (2 views per crop), each disc's crop resized to
``--dino-size``, 64 views a forward pass; crops per second of each,
``direct/server``, and ``batched x``, the speed-up of all crops of a frame in
one request over one crop per request. It runs in the Cellpose 3 venv, which
holds all it needs (the machine's torch and transformers, nahual's own
dependencies), unless ``--dino-env`` names another environment.

Nothing is fetched. The Cellpose cases take under 8 minutes on one GPU with
the defaults; the DINOv2 ones (not yet timed on a GPU) embed about 1,600
crops each way and case.
``--cp3-env``/``--cp4-env``/``--dino-env`` take existing environment specs
instead of building venvs, and ``--cases`` picks the groups (how the DINOv2
case is tried on a CPU, fp32 only: ``run --device cpu --cases dino
--dino-env 'uv:envs/dino?torch=cpu' --dino-frames 2 --dino-side 256
--dino-size 56``; the Cellpose ones: ``run --device cpu --tiles 2 --size 256
--cp3-env uv:envs/cellpose --cp4-env venv:PATH``).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import embed
from deep import HELPER, ROOT, compare, disks

from nahual.launcher import parse_env_spec
from nahual.launcher._torch import cuda_only_packages
from nahual.weights import add

WHEELS = ROOT / "wheels"
ENVS = ("cellpose", "cellpose-sam")
#: The groups of cases ``--cases`` picks from.
GROUPS = (*ENVS, "dino")
#: The served DINOv2 class (the venvs hold no nahual distribution, so no registered model names).
DINO_MODEL = "nahual.models.dino:DINOv2"


def write_requirements(wheels: Path) -> None:
    """``wheels/ENV.txt`` for each env: its lock, exported without nahual, torch and the CUDA packages."""
    wheels.mkdir(exist_ok=True)
    for env in ENVS:
        project = ROOT / "envs" / env
        skipped = [arg for name in ["nahual", *cuda_only_packages(project)] for arg in ("--no-emit-package", name)]
        argv = ["uv", "export", "--frozen", "--no-hashes", "--no-dev", "--no-emit-project", "--project", str(project)]
        text = subprocess.run([*argv, *skipped], check=True, capture_output=True, text=True).stdout
        (wheels / f"{env}.txt").write_text(text)
        print(f"wrote {wheels / f'{env}.txt'}: {sum(1 for line in text.splitlines() if '==' in line)} packages")


def build_venv(wheels: Path, env: str) -> str:
    """``wheels/venv-ENV`` over the system site-packages, filled offline from ``wheels/ENV``; its spec."""
    venv = wheels / f"venv-{env}"
    python = venv / "bin" / "python"
    if not python.exists():
        subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", str(venv)], check=True)
        install = [str(python), "-m", "pip", "install", "--quiet", "--no-index", "--no-deps"]
        subprocess.run([*install, "--find-links", str(wheels / env), "-r", str(wheels / f"{env}.txt")], check=True)
    return f"venv:{venv}"


def random_weights(env: str, spec: str, out: Path) -> Path:
    """Random weights of ``env``'s real architecture, made in ``spec``: a CPnet, or a Cellpose-SAM (``W2``-only)."""
    out.mkdir(parents=True, exist_ok=True)
    python = parse_env_spec(spec).python()[0]
    if env == "cellpose":
        subprocess.run([python, str(HELPER), "weights", str(out), "--steps", "0"], check=True, cwd=ROOT)
        return add("cellpose", "random", out / "random")
    subprocess.run([python, str(HELPER), "sam-weights", str(out)], check=True, cwd=ROOT)
    return add("cellpose-sam", "random", out / "tiny")


def dino_weights(spec: str, out: Path, arch: str) -> Path:
    """A random transformers ``Dinov2Model`` of ``arch``, made in ``spec``, in the cache as ``random-ARCH``."""
    folder = out / f"dinov2-{arch}"
    subprocess.run([parse_env_spec(spec).python()[0], embed.__file__, "hf", str(folder), "--arch", arch],
                   check=True, cwd=ROOT)  # fmt: skip
    return add("dinov2", f"random-{arch}", folder)


def cases(cp3: str, cp4: str, device: str, threads: int) -> list[dict[str, Any]]:
    """Each Cellpose row of the table: group, environment, model, load params, the direct call's build and eval."""
    evaluate = {"channel_axis": None, "z_axis": None, "flow_threshold": 0.4, "cellprob_threshold": 0.0,
                "min_size": 15, "normalize": True, "batch_size": 8, "do_3D": False, "stitch_threshold": 0.0,
                "anisotropy": None, "threads": threads}  # fmt: skip
    load = {"model": "random", "device": device, "threads": threads}
    rows = [
        {
            "case": "cellpose 3 (CPnet) fp32",
            "group": "cellpose",
            "env": cp3,
            "model": "nahual.models.cellpose:Cellpose",
            "load": {**load, "diameter": 30.0},
            "direct": {**evaluate, "channels": [0, 0], "diameter": 30.0, "build": {"device": device}},
        }
    ]
    for bf16 in (True, False):
        rows.append(
            {
                "case": f"cellpose-sam (ViT-L) {'bf16' if bf16 else 'fp32'}",
                "group": "cellpose-sam",
                "env": cp4,
                "model": "nahual.models.cellpose:CellposeSAM",
                "load": {**load, "bf16": bf16},
                "direct": {**evaluate, "diameter": None, "build": {"device": device, "use_bfloat16": bf16}},
            }
        )
    # ---- Trackastra cases go here (issue 10's Trackastra adapter) ----
    return rows


def dino_cases(weights: Path, args: argparse.Namespace) -> list[dict[str, Any]]:
    """The DINOv2 rows: bf16 (on CUDA only) and fp32, served load params and the direct worker's spec."""
    dtypes = ("bfloat16", "float32") if args.device.startswith("cuda") else ("float32",)
    common = {"size": args.dino_size, "device": args.device, "threads": args.threads}
    return [
        {
            "case": f"dinov2 ({args.dino_arch}) {'fp32' if dtype == 'float32' else 'bf16'}",
            "load": {**common, "model": weights.name, "dtype": dtype},
            "direct": {**common, "kind": "hf", "folder": str(weights), "dtype": dtype, "batch_size": 64},
        }
        for dtype in dtypes
    ]


def run(args: argparse.Namespace) -> int:
    """Build or take the environments, make weights, run every case; print the table last."""
    started = time.perf_counter()
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)
    groups = parse_cases(args.cases)
    given = {"cellpose": args.cp3_env, "cellpose-sam": args.cp4_env}
    dino_in_cp3 = "dino" in groups and not args.dino_env  # the Cellpose 3 venv is DINOv2's by default
    venvs = [env for env in ENVS if env in groups or (env == "cellpose" and dino_in_cp3)]
    specs = {env: given[env] or build_venv(args.wheels, env) for env in venvs}
    results = []  # (case, unit, items per pass of each side, result of the comparison)
    with tempfile.TemporaryDirectory() as cache:
        os.environ["NAHUAL_WEIGHTS"] = cache
        made = Path(cache) / "made"
        weights = {specs[env]: random_weights(env, specs[env], made) for env in ENVS if env in groups}
        tiles = np.stack([disks((args.size, args.size), args.size**2 // 2600, seed=i)[0] for i in range(args.tiles)])
        rows = cases(specs.get("cellpose", ""), specs.get("cellpose-sam", ""), args.device, args.threads)
        for row in (row for row in rows if row["group"] in groups):
            print(f"{row['case']}: {args.tiles} tiles of {args.size}² on {args.device} ...", flush=True)
            out = compare(row["env"], row["model"], row["load"], row["direct"], weights[row["env"]], tiles, "yx")
            results.append((row["case"], "tiles", len(out["served_s"]), out))
        if "dino" in groups:
            results += run_dino(args.dino_env or specs["cellpose"], made, args)
    sizes = [f"{args.tiles} tiles of {args.size}²"] if groups & set(ENVS) else []
    if "dino" in groups:
        sizes.append(f"{args.dino_frames} frames of {args.dino_side}² discs, crops at {args.dino_size}²")
    print(f"\n{'; '.join(sizes)}; device {args.device}, {time.perf_counter() - started:.0f} s in all")
    print(f"{'case':<28} {'unit':<5} {'served/s':>9} {'direct/s':>9} {'direct/server':>13} {'batched x':>9} "
          f"{'GPU peak':>9} {'RSS':>7} equal")  # fmt: skip
    for case, unit, items, out in results:
        speedup = f"{out['speedup']:>9.2f}" if out.get("speedup") else f"{'-':>9}"
        print(
            f"{case:<28} {unit:<5} {items / out['served_total']:>9.2f} {items / out['direct_total']:>9.2f} "
            f"{out['ratio']:>13.3f} {speedup} {out['peak_gpu_bytes'] / 2**20:>6.0f} MiB "
            f"{out['server_peak_rss'] / 2**30:>4.1f} GiB {out['equal']}"
        )
    return 0


def run_dino(spec: str, made: Path, args: argparse.Namespace) -> list[tuple[str, str, int, dict[str, Any]]]:
    """The DINOv2 rows of the table: each case through a server and directly, interleaved over the frames."""
    weights = dino_weights(spec, made, args.dino_arch)
    frames, labels = disk_frames(args.dino_frames, args.dino_side)
    rows = []
    for row in dino_cases(weights, args):
        print(f"{row['case']}: {args.dino_frames} frames of {args.dino_side}² on {args.device} ...", flush=True)
        out = embed.compare(spec, DINO_MODEL, row["load"], row["direct"], frames, labels, rounds=len(frames))
        rows.append((row["case"], "crops", out["crops"], out))
    return rows


def disk_frames(count: int, side: int) -> tuple[np.ndarray, np.ndarray]:
    """``(t, 2, y, x)`` frames of the tiles' discs and their inverse (numpy only), and their ``(t, y, x)`` labels."""
    made = [disks((side, side), side**2 // 2600, seed=i) for i in range(count)]
    frames = np.stack([np.stack([image, 1.0 - image]) for image, _ in made])
    return frames, np.stack([labels for _, labels in made])


def parse_cases(text: str) -> set[str]:
    """The groups of ``--cases`` (comma-separated names of :data:`GROUPS`)."""
    groups = {name.strip() for name in text.split(",") if name.strip()}
    unknown = groups.difference(GROUPS)
    if unknown or not groups:
        raise SystemExit(f"--cases expects names among {', '.join(GROUPS)}, got {text!r}")
    return groups


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    verbs = parser.add_subparsers(dest="verb", required=True)
    requirements = verbs.add_parser("requirements", help="write wheels/ENV.txt from the locks (internet machine)")
    requirements.add_argument("--wheels", type=Path, default=WHEELS)
    go = verbs.add_parser("run", help="run the check (GPU machine)")
    go.add_argument("--wheels", type=Path, default=WHEELS)
    go.add_argument("--device", default="cuda:0")
    go.add_argument("--tiles", type=int, default=32)
    go.add_argument("--size", type=int, default=512)
    go.add_argument("--threads", type=int, default=4, help="torch CPU threads of each side")
    go.add_argument("--cp3-env", help="an existing Cellpose 3 environment spec instead of wheels/venv-cellpose")
    go.add_argument("--cp4-env", help="an existing Cellpose 4 environment spec instead of wheels/venv-cellpose-sam")
    go.add_argument("--dino-env", help="an environment spec for DINOv2 (default: the Cellpose 3 one)")
    go.add_argument("--cases", default=",".join(GROUPS), help=f"groups of cases to run, among {','.join(GROUPS)}")
    go.add_argument("--dino-arch", choices=tuple(embed.HF_ARCHS), default="vits14", help="the random DINOv2's size")
    go.add_argument("--dino-frames", type=int, default=4, help="frames embedded by each DINOv2 side")
    go.add_argument("--dino-side", type=int, default=1024, help="side of those frames in pixels")
    go.add_argument("--dino-size", type=int, default=224, help="side DINOv2 sees, a multiple of 14")
    args = parser.parse_args(argv)
    if args.verb == "requirements":
        write_requirements(args.wheels)
        return 0
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
