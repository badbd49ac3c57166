"""CLI layer: ``nahual apply``, ``stitch``, ``reset``, ``verify`` and ``export ctc`` (Zarr streaming).

The streaming package (and zarr) is imported only when one of these commands runs.
The flags of :class:`~nahual.stream.StreamOptions` default to None here, so that
``StreamOptions.from_cli`` fills in its own defaults, the only ones; the
defaults named in the help texts are checked against them by the tests.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from typing import Any

from .._malloc import STREAMING, tune_malloc
from ..errors import ConfigError
from ..model import OUTPUT_KINDS
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


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive number of seconds, got {text!r}")
    return value


def _add_apply(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "apply",
        help="stream a Zarr image through a model and write labels, tracks, tables or predictions next to it",
        description="Read INPUT block by block, send each block to the model (on --server, in a server launched "
        "in --env, or in this process with --local) and write OUTPUT_NAME under the image's labels/, tracks/, "
        "tables/ or predictions/. A run that stops can be started again: finished blocks are skipped.",
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
    where.add_argument("--timeout", type=_seconds, default=600.0, help="seconds one request may take (600)")
    where.add_argument("--retries", type=_count, help="reconnects (relaunches) per block after a server failure (0)")
    model = p.add_argument_group("the model")
    model.add_argument("--model", required=True, help="model name or module:Class")
    model.add_argument("--params", default="{}", metavar="JSON", help="load params as a JSON object")
    model.add_argument(
        "--kind",
        choices=OUTPUT_KINDS,
        help="output kind (default: what the model declares)",
    )
    data = p.add_argument_group("reading")
    data.add_argument("--axes", help="axes of a plain array, e.g. tczyx or tyx")
    data.add_argument("--level", type=_count, help="resolution level of an OME-Zarr image (0)")
    data.add_argument("--labels", metavar="NAME", help="label image of INPUT to send to models that take labels")
    data.add_argument("--channel", type=_count, help="channel to use when the model takes no channel axis")
    data.add_argument("--tile", help="tile size per spatial axis, or 'none' for whole frames (y=1024,x=1024)")
    data.add_argument("--halo", type=_count, help="pixels read around each tile (default: the model's)")
    run = p.add_argument_group("running")
    run.add_argument("--inflight", type=_positive, help="requests in flight at once (4)")
    run.add_argument("--shard", metavar="I/N", help="process only blocks I, I+N, I+2N... (0 <= I < N)")
    run.add_argument(
        "--no-finish", action="store_true", help="do not stitch/assemble at the end (default with --shard)"
    )
    run.add_argument("--quiet", action="store_true", help="no progress report")
    run.add_argument(
        "--ready",
        metavar="FILE",
        help="the ready file of the --server: fail at once if it holds the error the server failed to start with "
        "(nahual serve --error-in-ready-file)",
    )
    run.add_argument(
        "--done",
        metavar="FILE",
        help="after a successful run (or when the output was complete already) write FILE, a one-line JSON summary",
    )
    p.set_defaults(run=run_apply)


def run_apply(args: argparse.Namespace) -> int:
    """Run ``nahual apply``; prints a one-line summary."""
    from ..stream import StreamOptions, apply
    from ..stream._connect import connect_workers

    if args.local and (args.server or args.env):
        raise ConfigError("--local runs the model here: drop --server and --env")
    tune_malloc(STREAMING)  # before the lanes start
    options = StreamOptions.from_cli(args)
    if args.ready:
        _check_ready(args.ready)
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
            options,
            kind=args.kind,
            axes=args.axes,
            labels=args.labels,
            finalize=False if args.no_finish else not options.sharded,
            progress=not args.quiet,
        )
    final = f", final: {json.dumps(result['final'])}" if result["final"] else ""
    redone = f" ({result['redone']} of them damaged, done again)" if result["redone"] else ""
    print(
        f"{args.output}: {result['processed']} blocks processed{redone}, {result['skipped']} skipped "
        f"of {result['blocks']}{final}",
        file=sys.stderr,
    )
    if args.done:
        _write_done(args.done, {"input": args.input, "output": args.output, **result})
    return 0


def _check_ready(path: str) -> None:
    """Raise the error a server recorded in its ready file when it failed to start.

    Raises
    ------
    LaunchError
        With the server's own one-line error.
    """
    from ..errors import LaunchError

    try:
        with open(path) as handle:
            record = json.load(handle)
    except (OSError, ValueError):
        return  # no record of a failure: connecting says whether the server is there
    if isinstance(record, dict) and record.get("error"):
        raise LaunchError(f"the server of {path} failed to start: {record['error']}")


def run_reset(args: argparse.Namespace) -> int:
    """Run ``nahual reset``: forget an output's run, so that the next ``apply`` starts it afresh."""
    from ..stream._ome import output_group
    from ..stream._resume import RunState

    RunState(output_group(args.image), args.name).reset()
    print(f"{args.name}: reset, the next apply starts it afresh", file=sys.stderr)
    return 0


def _write_done(path: str, summary: dict[str, Any]) -> None:
    """Write the ``--done`` marker: one JSON line, through a temporary file, so it exists only when whole.

    Raises
    ------
    ConfigError
        When the file cannot be written (the run itself succeeded).
    """
    from ..stream._resume import atomic_write

    try:
        atomic_write(os.path.abspath(path), (json.dumps(summary, sort_keys=True) + "\n").encode())
    except OSError as exc:
        raise ConfigError(f"--done {path} cannot be written: {exc.strerror or exc}") from exc


def run_stitch(args: argparse.Namespace) -> int:
    """Run ``nahual stitch``: finish an output once all shards are done."""
    from ..stream import finish

    summary = finish(args.image, args.name)
    print(f"{args.name}: {json.dumps(summary)}", file=sys.stderr)
    return 0


def run_verify(args: argparse.Namespace) -> int:
    """Run ``nahual verify``: one line per damaged chunk or block, then a count; 1 when anything is damaged."""
    from ..stream import verify

    found = verify(args.store, everything=args.all)
    for damage in found.damage:
        print(f"damaged: {damage}", file=sys.stderr)
    print(
        f"{args.store}: {found.chunks} chunks of {found.arrays} arrays and {found.blocks} recorded blocks checked, "
        f"{len(found.damage)} damaged",
        file=sys.stderr,
    )
    return 1 if found.damage else 0


def run_export_ctc(args: argparse.Namespace) -> int:
    """Run ``nahual export ctc``."""
    from ..stream import export_ctc

    summary = export_ctc(args.image, args.outdir, tracks=args.tracks)
    print(f"{args.outdir}: {summary['frames']} frames, {summary['tracks']} tracks", file=sys.stderr)
    return 0


def register(subparsers: Any) -> None:
    """Add ``apply``, ``stitch``, ``reset``, ``verify`` and ``export`` to the ``nahual`` parser."""
    _add_apply(subparsers)
    for name, run, helptext, description in (
        (
            "stitch",
            run_stitch,
            "finish an output after all its shards ran (merge labels across blocks, assemble tables or predictions)",
            "Merge objects cut by block borders and number them 1..N (labels), assemble the per-block rows "
            "into one table, or copy an array output's blocks into predictions/NAME with the image's levels. "
            "Needs every block done; running it again changes nothing.",
        ),
        (
            "reset",
            run_reset,
            "forget the run of an output, so that the next apply starts it afresh (after changing its params)",
            "Drop what nahual recorded of output NAME's run (the record of a finished output, the state of an "
            "unfinished one), so that the next apply starts it afresh instead of refusing a run with other "
            "params. The output itself stays until that run replaces it.",
        ),
    ):
        command = subparsers.add_parser(name, help=helptext, description=description)
        command.add_argument(
            "image", metavar="IMAGE", help="the image group holding the output, or the plain array the run read"
        )
        command.add_argument("name", metavar="NAME", help="the output's name")
        command.set_defaults(run=run)

    check = subparsers.add_parser(
        "verify",
        help="check that nahual's outputs in a store decode and that unfinished runs' blocks are intact",
        description="Read every chunk of the arrays under each image's labels/, tables/, tracks/ and "
        "predictions/ (nahual writes them with zstd checksums), and check the blocks recorded by unfinished runs "
        "against their digests. Prints each damaged chunk or block; exits 1 when there is one.",
    )
    check.add_argument("store", metavar="STORE", help="the store (or an image group in it)")
    check.add_argument("--all", action="store_true", help="check every array, the images too, not only outputs")
    check.set_defaults(run=run_verify)

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
