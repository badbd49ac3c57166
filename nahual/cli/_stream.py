"""CLI layer: ``nahual apply``, ``nahual stitch`` and ``nahual export ctc`` (Zarr streaming).

The streaming package (and zarr) is imported only when one of these commands runs.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from ..errors import ConfigError
from ._args import parse_json_object

__all__ = ["register"]


def _positive(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return int(text)


def _count(text: str) -> int:
    if not text.isdigit():
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {text!r}")
    return int(text)


def _add_apply(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "apply",
        help="stream a Zarr image through a model and write labels, tracks or tables next to it",
        description="Read INPUT block by block, send each block to the model (on --server, in a server launched "
        "in --env, or in this process with --local) and write OUTPUT_NAME under the image's labels/, tracks/ "
        "or tables/. A run that stops can be started again: finished blocks are skipped.",
    )
    p.add_argument("input", metavar="INPUT", help="OME-Zarr image, IMAGE/labels/NAME, or a plain array (with --axes)")
    p.add_argument("output", metavar="OUTPUT_NAME", help="name of the output")
    where = p.add_argument_group("where the model runs")
    where.add_argument(
        "--server",
        action="append",
        default=[],
        metavar="ADDRESS",
        help="address of a running server; repeat to spread blocks over several",
    )
    where.add_argument(
        "--env", metavar="SPEC", help="launch the server(s) in this environment (default: the catalog's)"
    )
    where.add_argument("--instances", type=_positive, default=1, help="servers to launch with --env (1)")
    where.add_argument("--local", action="store_true", help="run the model in this process (debugging, baselines)")
    where.add_argument("--timeout", type=float, default=600.0, help="seconds one request may take (600)")
    where.add_argument(
        "--retries", type=_count, default=0, help="reconnects (relaunches) per block after a server failure (0)"
    )
    model = p.add_argument_group("the model")
    model.add_argument("--model", required=True, help="model name or module:Class")
    model.add_argument("--params", default="{}", metavar="JSON", help="load params as a JSON object")
    model.add_argument(
        "--kind",
        choices=("labels", "tracks", "features", "embeddings"),
        help="output kind (default: what the model declares)",
    )
    data = p.add_argument_group("reading")
    data.add_argument("--axes", help="axes of a plain array, e.g. tczyx or tyx")
    data.add_argument("--level", type=_count, default=0, help="resolution level of an OME-Zarr image (0)")
    data.add_argument("--labels", metavar="NAME", help="label image of INPUT to send to models that take labels")
    data.add_argument("--channel", type=_count, help="channel to use when the model takes no channel axis")
    data.add_argument("--tile", default="y=1024,x=1024", help="tile size per spatial axis, or 'none' (y=1024,x=1024)")
    data.add_argument("--halo", type=_count, help="pixels read around each tile (default: the model's)")
    run = p.add_argument_group("running")
    run.add_argument("--inflight", type=_positive, default=4, help="requests in flight at once (4)")
    run.add_argument("--shard", metavar="I/N", help="process only blocks I, I+N, I+2N... (0 <= I < N)")
    run.add_argument(
        "--no-finish", action="store_true", help="do not stitch/assemble at the end (default with --shard)"
    )
    run.add_argument("--quiet", action="store_true", help="no progress report")
    p.set_defaults(run=run_apply)


def run_apply(args: argparse.Namespace) -> int:
    """Run ``nahual apply``; prints a one-line summary."""
    from ..stream import apply
    from ..stream._connect import connect_workers

    if args.local and (args.server or args.env):
        raise ConfigError("--local runs the model here: drop --server and --env")
    sharded = args.shard is not None and not args.shard.strip().endswith("/1")
    with connect_workers(
        args.model,
        parse_json_object(args.params),
        servers=args.server,
        env=args.env,
        instances=args.instances,
        local=args.local,
        timeout=args.timeout,
    ) as workers:
        result = apply(
            workers,
            args.input,
            args.output,
            kind=args.kind,
            axes=args.axes,
            level=args.level,
            labels=args.labels,
            tile=args.tile,
            halo=args.halo,
            channel=args.channel,
            inflight=args.inflight,
            shard=args.shard,
            retries=args.retries,
            finalize=False if args.no_finish else not sharded,
            progress=not args.quiet,
        )
    final = f", final: {json.dumps(result['final'])}" if result["final"] else ""
    print(
        f"{args.output}: {result['processed']} blocks processed, {result['skipped']} skipped "
        f"of {result['blocks']}{final}",
        file=sys.stderr,
    )
    return 0


def run_stitch(args: argparse.Namespace) -> int:
    """Run ``nahual stitch``: finish an output once all shards are done."""
    from ..stream import finish

    summary = finish(args.image, args.name)
    print(f"{args.name}: {json.dumps(summary)}", file=sys.stderr)
    return 0


def run_export_ctc(args: argparse.Namespace) -> int:
    """Run ``nahual export ctc``."""
    from ..stream import export_ctc

    summary = export_ctc(args.image, args.outdir, tracks=args.tracks)
    print(f"{args.outdir}: {summary['frames']} frames, {summary['tracks']} tracks", file=sys.stderr)
    return 0


def register(subparsers: Any) -> None:
    """Add ``apply``, ``stitch`` and ``export`` to the ``nahual`` parser."""
    _add_apply(subparsers)
    stitch = subparsers.add_parser(
        "stitch",
        help="finish an output after all its shards ran (merge labels across blocks, assemble tables)",
        description="Merge objects cut by block borders and number them 1..N (labels), or assemble the "
        "per-block rows into one table. Needs every block done; running it again changes nothing.",
    )
    stitch.add_argument("image", metavar="IMAGE", help="the image group holding the output")
    stitch.add_argument("name", metavar="NAME", help="the output's name")
    stitch.set_defaults(run=run_stitch)

    export = subparsers.add_parser("export", help="export outputs to other formats")
    formats = export.add_subparsers(dest="format", required=True, metavar="FORMAT")
    ctc = formats.add_parser(
        "ctc",
        help="Cell Tracking Challenge format: maskNNN.tif + res_track.txt",
        description="Write the track-relabelled masks and res_track.txt of IMAGE/tracks/NAME into OUTDIR.",
    )
    ctc.add_argument("image", metavar="IMAGE")
    ctc.add_argument("outdir", metavar="OUTDIR")
    ctc.add_argument("--tracks", metavar="NAME", help="the tracks to export (needed when there are several)")
    ctc.set_defaults(run=run_export_ctc)
