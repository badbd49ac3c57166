"""The ``report`` command: PNG pictures of a processed image (outlines, tracks, summary)."""

from __future__ import annotations

import argparse
import json
from typing import Any

__all__ = ["register"]


def register(subparsers: Any) -> None:
    """Add the ``report`` command."""
    report = subparsers.add_parser(
        "report",
        help="draw PNGs of an image: mask outlines, tracks in lineage colours, a summary",
        description="Draw outlines.png (with --labels), tracks.png (with --tracks) and summary.png into OUTDIR; "
        "print the summary as JSON.",
    )
    report.add_argument("image", help="OME-Zarr image (or a plain Zarr array with --axes)")
    report.add_argument("outdir", help="folder of the PNGs (created)")
    report.add_argument("--labels", metavar="NAME", help="label image IMAGE/labels/NAME to outline")
    report.add_argument("--tracks", metavar="NAME", help="GEFF tracks IMAGE/tracks/NAME to draw")
    report.add_argument("--frames", type=int, default=3, help="time points with outlines (default 3)")
    report.add_argument("--channel", type=int, default=0, help="channel shown (default 0)")
    report.add_argument("--axes", help="axes of a plain Zarr array, e.g. tcyx")
    report.set_defaults(run=run_report)


def run_report(args: argparse.Namespace) -> int:
    """Draw the pictures and print the summary."""
    from ..report import write_report

    summary = write_report(
        args.image,
        args.outdir,
        labels=args.labels,
        tracks=args.tracks,
        frames=args.frames,
        channel=args.channel,
        axes=args.axes,
    )
    print(json.dumps(summary))
    return 0
