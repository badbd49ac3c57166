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
RSS and whether the labels agree. Nothing is fetched. Under 8 minutes on one
GPU with the defaults. ``--cp3-env``/``--cp4-env`` take existing environment
specs instead of building venvs (how it is tried on a CPU:
``run --device cpu --tiles 2 --size 256 --cp3-env uv:envs/cellpose --cp4-env venv:PATH``).
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
from deep import HELPER, ROOT, compare, disks

from nahual.launcher._torch import cuda_only_packages
from nahual.weights import add

WHEELS = ROOT / "wheels"
ENVS = ("cellpose", "cellpose-sam")


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


def random_weights(cp3_env: str, cp4_env: str, out: Path) -> tuple[Path, Path]:
    """A random CPnet and a random Cellpose-SAM (``W2``-only file), made in their environments."""
    from nahual.launcher import parse_env_spec

    out.mkdir(parents=True)
    cp3, cp4 = (parse_env_spec(spec).python()[0] for spec in (cp3_env, cp4_env))
    subprocess.run([cp3, str(HELPER), "weights", str(out), "--steps", "0"], check=True, cwd=ROOT)
    subprocess.run([cp4, str(HELPER), "sam-weights", str(out)], check=True, cwd=ROOT)
    return add("cellpose", "random", out / "random"), add("cellpose-sam", "random", out / "tiny")


def cases(cp3: str, cp4: str, device: str, threads: int) -> list[dict[str, Any]]:
    """Each row of the table: environment, model, load params and the direct call's build and eval params."""
    evaluate = {"channel_axis": None, "z_axis": None, "flow_threshold": 0.4, "cellprob_threshold": 0.0,
                "min_size": 15, "normalize": True, "batch_size": 8, "do_3D": False, "stitch_threshold": 0.0,
                "anisotropy": None, "threads": threads}  # fmt: skip
    load = {"model": "random", "device": device, "threads": threads}
    rows = [
        {
            "case": "cellpose 3 (CPnet) fp32",
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
                "env": cp4,
                "model": "nahual.models.cellpose:CellposeSAM",
                "load": {**load, "bf16": bf16},
                "direct": {**evaluate, "diameter": None, "build": {"device": device, "use_bfloat16": bf16}},
            }
        )
    # ---- Trackastra and DINOv2/v3 cases go here (issue 10's Trackastra adapter; the embeddings issue) ----
    return rows


def run(args: argparse.Namespace) -> int:
    """Build or take the environments, make weights, run every case; print the table last."""
    started = time.perf_counter()
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)
    cp3 = args.cp3_env or build_venv(args.wheels, "cellpose")
    cp4 = args.cp4_env or build_venv(args.wheels, "cellpose-sam")
    tiles = np.stack([disks((args.size, args.size), args.size**2 // 2600, seed=i)[0] for i in range(args.tiles)])
    results = []
    with tempfile.TemporaryDirectory() as cache:
        os.environ["NAHUAL_WEIGHTS"] = cache
        weights = dict(zip((cp3, cp4), random_weights(cp3, cp4, Path(cache) / "made"), strict=True))
        for row in cases(cp3, cp4, args.device, args.threads):
            print(f"{row['case']}: {args.tiles} tiles of {args.size}² on {args.device} ...", flush=True)
            out = compare(row["env"], row["model"], row["load"], row["direct"], weights[row["env"]], tiles, "yx")
            results.append((row["case"], out))
    header = f"{'case':<28} {'served/s':>9} {'direct/s':>9} {'direct/server':>13} {'GPU peak':>9} {'RSS':>7} equal"
    print(f"\n{args.tiles} tiles of {args.size}², device {args.device}, {time.perf_counter() - started:.0f} s in all")
    print(header)
    for case, out in results:
        print(
            f"{case:<28} {len(out['served_s']) / out['served_total']:>9.2f} "
            f"{len(out['direct_s']) / out['direct_total']:>9.2f} {out['ratio']:>13.3f} "
            f"{out['peak_gpu_bytes'] / 2**20:>6.0f} MiB {out['server_peak_rss'] / 2**30:>4.1f} GiB {out['equal']}"
        )
    return 0


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
    args = parser.parse_args(argv)
    if args.verb == "requirements":
        write_requirements(args.wheels)
        return 0
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
