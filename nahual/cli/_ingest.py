"""CLI layer: ``nahual ingest``, a TIFF (or a folder of them) into an OME-Zarr image (Zarr streaming).

The streaming package (tifffile and zarr) is imported only when the command runs.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

__all__ = ["register"]


def run_ingest(args: argparse.Namespace) -> int:
    """Run ``nahual ingest``; prints a one-line summary of the image written."""
    from ..stream._ingest import ingest

    given = {"levels": args.levels} if args.levels is not None else {}  # else ingest's default
    result = ingest(
        args.input, args.output, axes=args.axes, scale=args.scale, chunks=args.chunks, overwrite=args.overwrite, **given
    )
    sizes = " ".join(
        f"{a}={s:g}{' ' + u if u else ''}" for a, s, u in zip(result.axes, result.scale, result.units) if a != "c"
    )
    print(
        f"{result.path}: {result.axes} {result.shape} {result.dtype}, {result.levels} levels, pixel size {sizes}",
        file=sys.stderr,
    )
    if result.series > 1:
        print(f"note: {args.input} holds {result.series} series; only the first was ingested", file=sys.stderr)
    return 0


def register(subparsers: Any) -> None:
    """Add ``ingest`` to the ``nahual`` parser."""
    p = subparsers.add_parser(
        "ingest",
        help="convert a TIFF, OME-TIFF, multi-page stack or folder of frames into an OME-Zarr image",
        description="Write IN as an OME-Zarr 0.5 image at OUT, chunked for streaming and with resolution levels. "
        "Axes and pixel sizes come from the OME-TIFF or ImageJ metadata where IN has them, and from --axes and "
        "--scale where not (or to override). IN is read slab by slab, never whole; OUT appears only when complete.",
    )
    p.add_argument("input", metavar="IN", help="a .tif/.tiff file, or a folder of single-frame TIFFs")
    p.add_argument("output", metavar="OUT", help="the OME-Zarr image to create, e.g. image.zarr")
    p.add_argument(
        "--axes",
        help="one letter of tczyx per dimension of IN, in the file's order (e.g. tyx); replaces the metadata",
    )
    p.add_argument(
        "--scale", metavar="AXIS=SIZE,...", help="pixel sizes, micrometers for z/y/x and seconds for t (e.g. z=2,y=0.5)"
    )
    p.add_argument("--levels", type=int, help="resolution levels, each halving y and x by a 2 x 2 mean (2)")
    p.add_argument(
        "--chunks", metavar="y=N,x=N", help="chunk size along y and x (y=512,x=512); one plane per chunk along t, c, z"
    )
    p.add_argument("--overwrite", action="store_true", help="replace OUT if it is a Zarr store already")
    p.set_defaults(run=run_ingest)
