"""Export tracks to the Cell Tracking Challenge format (``maskNNN.tif`` + ``res_track.txt``).

Zarr streaming layer. Reads a GEFF graph written by nahual and the label image
it links to, and writes what traccuracy and the CTC measures read: one 16-bit
TIFF per frame where each object carries its track id, and one line
``L B E P`` per track (id, first frame, last frame, parent track or 0). Tracks
are recomputed from the graph by the rule nahual writes them with, which keeps
them continuous in time as CTC wants.
"""

from __future__ import annotations

import os

import numpy as np
import zarr

from ..errors import ConfigError, ContractError
from ..lineage import tracklets
from ._stitch import recolour
from ._tracks import read_tracks

__all__ = ["export_ctc"]


def _graph_name(image: str, tracks: str | None) -> str:
    if tracks is not None:
        return tracks
    try:
        names = sorted(zarr.open_group(os.path.join(image, "tracks"), mode="r").group_keys())
    except (FileNotFoundError, zarr.errors.NodeNotFoundError):
        names = []
    if len(names) != 1:
        raise ConfigError(f"{image} has tracks {names or 'none'}; choose one with --tracks NAME")
    return names[0]


def export_ctc(image: str | os.PathLike, outdir: str | os.PathLike, tracks: str | None = None) -> dict[str, int]:
    """Write ``outdir/maskNNN.tif`` and ``outdir/res_track.txt`` for a nahual tracking result.

    Parameters
    ----------
    image : str or path-like
        The image group holding ``tracks/NAME`` and the label image it links to.
    outdir : str or path-like
        Folder to write (created when missing).
    tracks : str, optional
        Name of the graph; required when the image has several.

    Returns
    -------
    dict
        ``frames`` and ``tracks`` written.
    """
    try:
        import tifffile
    except ImportError as exc:
        raise ConfigError("export ctc needs the tifffile package: pip install tifffile") from exc
    image, outdir = os.fspath(image), os.fspath(outdir)
    name = _graph_name(image, tracks)
    nodes, edges, meta = read_tracks(image, name)
    related = [r for r in meta.get("related_objects") or [] if r.get("type") == "labels"]
    if not related or "seg_id" not in nodes:
        raise ContractError(f"tracks {name!r} are not linked to a label image (no related_objects with seg_id)")
    masks_path = os.path.normpath(os.path.join(image, "tracks", name, related[0]["path"]))
    masks = zarr.open_group(masks_path, mode="r")["0"]
    track, rows = tracklets(nodes["id"], nodes["t"], edges)
    if len(rows) > np.iinfo(np.uint16).max:
        raise ContractError(f"CTC masks are 16-bit: {len(rows)} tracks do not fit")
    os.makedirs(outdir, exist_ok=True)
    frames = masks.shape[0]
    digits = max(3, len(str(frames - 1)))
    for frame in range(frames):
        here = nodes["t"] == frame
        out = recolour(np.asarray(masks[frame]), nodes["seg_id"][here], track[here]).astype(np.uint16)
        tifffile.imwrite(os.path.join(outdir, f"mask{frame:0{digits}d}.tif"), out)
    with open(os.path.join(outdir, "res_track.txt"), "w") as f:
        f.writelines(f"{label} {b} {e} {p}\n" for label, b, e, p in rows)
    return {"frames": frames, "tracks": len(rows)}
