"""CLI layer, model-zoo commands: ``nahual demo-data OUT.zarr``.

``nahual models`` (listing contracts) lives with the core commands.
"""

from __future__ import annotations

import argparse
import dataclasses

__all__ = ["register"]


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``demo-data``."""
    parser = subparsers.add_parser(
        "demo-data",
        help="write a synthetic fluorescence time-lapse with ground truth (OME-Zarr)",
        description=(
            "Write a synthetic two-channel fluorescence time-lapse of nuclei that move, touch and "
            "divide, with noise and uneven background, as OME-Zarr 0.5; ground-truth masks go to "
            "OUT/labels/ground_truth and the lineage (GEFF) to OUT/tracks/ground_truth. "
            "The same seed and size give the same data."
        ),
    )
    parser.add_argument("out", metavar="OUT.zarr", help="the store to create")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument("--large", action="store_true", help="benchmark size: 64 frames of 1024x1024, ~220 nuclei")
    parser.add_argument("--frames", type=int, help="number of frames (default 8)")
    parser.add_argument("--size", type=int, metavar="PIXELS", help="height and width (default 256)")
    parser.add_argument("--nuclei", type=int, help="nuclei in the first frame (default 14)")
    parser.add_argument(
        "--levels", type=int, default=2, help="resolution levels, each halving height and width (default 2)"
    )
    parser.add_argument("--overwrite", action="store_true", help="replace OUT if it exists")
    parser.set_defaults(run=run_demo_data)


def run_demo_data(args: argparse.Namespace) -> int:
    """Generate the scene and write it; prints one summary line."""
    import shutil
    from pathlib import Path

    from ..demo import DEFAULT_SIZE, LARGE_SIZE, make_demo, write_demo
    from ..errors import ConfigError

    out = Path(args.out)
    if args.levels < 1:
        raise ConfigError(f"--levels must be at least 1, got {args.levels}")
    if out.exists() and not args.overwrite:
        raise ConfigError(f"{out} exists; pass --overwrite to replace it")
    size = LARGE_SIZE if args.large else DEFAULT_SIZE
    changes = {"frames": args.frames, "height": args.size, "width": args.size, "nuclei": args.nuclei}
    size = dataclasses.replace(size, **{key: value for key, value in changes.items() if value is not None})
    data = make_demo(size, seed=args.seed)
    if out.exists():
        shutil.rmtree(out)
    write_demo(out, data, levels=args.levels)
    frames, channels, height, width = data.image.shape
    print(
        f"wrote {out}: {frames} frames, {channels} channels, {height}x{width}, "
        f"{len(data.tracks['track_id'])} tracks, {data.divisions} divisions"
    )
    return 0
