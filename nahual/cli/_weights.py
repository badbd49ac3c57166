"""CLI layer, the weights cache: ``nahual weights list|fetch|add|path``.

Everything here is a thin front over :mod:`nahual.weights`; servers never run
these commands (they only read the cache), people do, on a machine with
internet for ``fetch``.
"""

from __future__ import annotations

import argparse

__all__ = ["register"]


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``weights`` and its four subcommands."""
    parser = subparsers.add_parser(
        "weights",
        help="the model weights cache: list, fetch, add, path",
        description=(
            "One weights cache for every model: $NAHUAL_WEIGHTS, else $XDG_CACHE_HOME/nahual/weights. "
            "Servers only read it; fill it with `fetch` on a machine with internet (on a cluster, the "
            "login node) or with `add` for your own weights."
        ),
    )
    verbs = parser.add_subparsers(dest="verb", required=True, metavar="VERB")
    listing = verbs.add_parser("list", help="known and added weights of each model, present or not")
    listing.add_argument("models", nargs="*", metavar="MODEL", help="only these models (default: all registered)")
    listing.set_defaults(run=run_list)
    fetch = verbs.add_parser("fetch", help="download a model's weights from its own source, verified by sha256")
    fetch.add_argument("model", metavar="MODEL")
    fetch.add_argument("names", nargs="*", metavar="NAME", help="weight names (default: every one the model knows)")
    fetch.add_argument("--force", action="store_true", help="download again even when a verified copy is present")
    fetch.add_argument("--timeout", type=float, default=60.0, help="seconds a stalled connection waits (default 60)")
    fetch.set_defaults(run=run_fetch)
    add = verbs.add_parser("add", help="copy your own weight file or folder into the cache")
    add.add_argument("model", metavar="MODEL")
    add.add_argument("name", metavar="NAME")
    add.add_argument("path", metavar="PATH", help="the file or folder to copy in")
    add.set_defaults(run=run_add)
    path = verbs.add_parser("path", help="print the cache folder, a model's folder or a weight's path")
    path.add_argument("model", nargs="?", metavar="MODEL")
    path.add_argument("name", nargs="?", metavar="NAME", help="a weight; it must be present")
    path.set_defaults(run=run_path)


def run_list(args: argparse.Namespace) -> int:
    """Print one line per weight: model, name, present, size, sha256 (first 12), origin."""
    from ..weights import format_size, list_weights, weights_dir

    entries = list_weights(args.models or None)
    print(f"weights cache: {weights_dir()}")
    if not entries:
        print("no model here declares or holds weights")
        return 0
    rows = [
        (e.model, e.name, "yes" if e.present else "no", format_size(e.size), e.sha256[:12], e.origin) for e in entries
    ]
    header = ("MODEL", "NAME", "PRESENT", "SIZE", "SHA256", "ORIGIN")
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header) - 1)]
    for row in [header, *rows]:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths)) + "  " + row[-1])
    return 0


def run_fetch(args: argparse.Namespace) -> int:
    """Fetch the named weights (or all the model knows); prints each path."""
    from ..errors import WeightsError
    from ..weights import fetch, known_weights

    names = args.names or list(known_weights(args.model))
    if not names:
        raise WeightsError(f"model {args.model!r} declares no weights to fetch; add your own with `nahual weights add`")
    for name in names:
        print(fetch(args.model, name, force=args.force, timeout=args.timeout))
    return 0


def run_add(args: argparse.Namespace) -> int:
    """Copy the file or folder in; prints its path in the cache."""
    from ..weights import add

    print(add(args.model, args.name, args.path))
    return 0


def run_path(args: argparse.Namespace) -> int:
    """Print the cache root, a model folder, or a present weight's path (else the one-line error)."""
    from ..weights import model_dir, weight_path, weights_dir

    if args.model is None:
        print(weights_dir())
    elif args.name is None:
        print(model_dir(args.model))
    else:
        print(weight_path(args.model, args.name))
    return 0
