"""Pictures of a processed image for people: outlines, tracks, a summary (PNG, matplotlib).

Layer: CLI helpers (reads the outputs of the Zarr streaming layer; needs
matplotlib, from the ``workflow`` extra). :func:`write_report` draws, for one
OME-Zarr image:

- ``outlines.png``: the image at a few time points with the outlines of a label image;
- ``tracks.png``: the tracks of a GEFF graph over the image, one colour per lineage
  (a cell and all its descendants), divisions marked;
- ``summary.png``: objects per frame and divisions per frame, with totals.

Images are shown as one 2-D plane per time point: the chosen channel, and the
maximum projection over ``z`` for 3-D data.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from .errors import ConfigError

__all__ = ["lineage_roots", "outlines", "plane", "write_report"]


def plane(array: Any, axes: str, t: int, channel: int = 0) -> np.ndarray:
    """One 2-D (y, x) plane of an image or label array at time ``t``.

    Parameters
    ----------
    array : array-like
        A Zarr or numpy array with the axes ``axes``.
    axes : str
        Its axes, e.g. ``"tcyx"``, ``"tyx"``, ``"tczyx"``.
    t : int
        Time index (ignored when there is no ``t``).
    channel : int
        Channel index (ignored when there is no ``c``).

    Returns
    -------
    numpy.ndarray
        The plane; 3-D data is projected by its maximum over ``z``.
    """
    index = tuple(t if a == "t" else channel if a == "c" else slice(None) for a in axes)
    data = np.asarray(array[index])
    rest = [a for a in axes if a not in "tc"]
    if "z" in rest:
        data = data.max(axis=rest.index("z"))
    return data


def outlines(labels: np.ndarray) -> np.ndarray:
    """Boolean mask of the pixels of ``labels`` that touch another value (one pixel wide, inside objects)."""
    edge = np.zeros(labels.shape, bool)
    for axis in range(labels.ndim):
        diff = np.diff(labels, axis=axis) != 0
        before = [slice(None)] * labels.ndim
        after = [slice(None)] * labels.ndim
        before[axis], after[axis] = slice(None, -1), slice(1, None)
        edge[tuple(before)] |= diff
        edge[tuple(after)] |= diff
    return edge & (labels > 0)


def lineage_roots(ids: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """For each node, the id of the first ancestor of its lineage (itself when it has no parent).

    Parameters
    ----------
    ids : numpy.ndarray
        Node ids.
    edges : numpy.ndarray
        (E, 2) parent -> child node ids.
    """
    parent = {int(child): int(source) for source, child in edges.tolist()}
    roots = np.empty(len(ids), np.int64)
    cache: dict[int, int] = {}
    for i, node in enumerate(ids.tolist()):
        path = []
        while node in parent and node not in cache:
            path.append(node)
            node = parent[node]
        root = cache.get(node, node)
        for step in path:
            cache[step] = root
        roots[i] = root
    return roots


def _contrast(image: np.ndarray) -> tuple[float, float]:
    low, high = np.percentile(image, (1, 99.8)) if image.size else (0.0, 1.0)
    return float(low), float(max(high, low + 1e-6))


def _frames(count: int, wanted: int) -> list[int]:
    return sorted({round(float(v)) for v in np.linspace(0, count - 1, min(wanted, count))})


def _figure(ncols: int, height: float = 4.0) -> tuple[Any, Any]:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    fig, axes = plt.subplots(1, ncols, figsize=(height * ncols, height), squeeze=False)
    return fig, axes[0]


def _save(fig: Any, path: Path) -> Path:
    from matplotlib import pyplot as plt

    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    os.replace(tmp, path)
    return path


def draw_outlines(image: Any, frames: list[int], name: str, path: Path) -> Path:
    """``outlines.png``: the image at ``frames`` with the outlines of the label image ``name``."""
    fig, panels = _figure(len(frames))
    for panel, t in zip(panels, frames):
        pixels = plane(image.source.array, image.source.axes, t, image.channel).astype(np.float32)
        labels = plane(image.labels.array, image.labels.axes, t)
        low, high = _contrast(pixels)
        panel.imshow(pixels, cmap="gray", vmin=low, vmax=high, interpolation="nearest")
        overlay = np.zeros((*labels.shape, 4), np.float32)
        overlay[outlines(labels)] = (1.0, 0.85, 0.0, 1.0)
        panel.imshow(overlay, interpolation="nearest")
        count = len(np.unique(labels)) - (1 if (labels == 0).any() else 0)
        panel.set_title(f"t = {t}: {count} objects ({name})")
        panel.axis("off")
    return _save(fig, path)


def draw_tracks(image: Any, tracks: dict[str, Any], name: str, path: Path) -> Path:
    """``tracks.png``: track segments over the last frame, one colour per lineage, divisions as stars.

    The objects of the last frame are outlined in their lineage's colour when
    the graph links to a label image (GEFF ``related_objects``, ``seg_id``).
    """
    from matplotlib import colormaps

    nodes, edges = tracks["nodes"], tracks["edges"]
    last = int(nodes["t"].max()) if len(nodes["t"]) else 0
    fig, panels = _figure(1, height=7.0)
    panel = panels[0]
    pixels = plane(image.source.array, image.source.axes, last, image.channel).astype(np.float32)
    low, high = _contrast(pixels)
    panel.imshow(pixels, cmap="gray", vmin=low, vmax=low + 2 * (high - low), interpolation="nearest")  # dimmed
    roots = lineage_roots(nodes["id"], edges)
    lineages = {root: k for k, root in enumerate(np.unique(roots).tolist())}
    colours = colormaps["tab20"]
    where = {node: i for i, node in enumerate(nodes["id"].tolist())}
    linked = tracks.get("labels")
    if linked is not None and "seg_id" in nodes:
        # outline each object of the last frame in the colour of its lineage
        labels = plane(linked.array, linked.axes, last)
        lut = np.zeros((int(labels.max()) + 1, 4), np.float32)
        for i in np.flatnonzero(nodes["t"] == last).tolist():
            value = int(nodes["seg_id"][i])
            if 0 < value < len(lut):
                lut[value] = colours(lineages[int(roots[i])] % 20)
        overlay = lut[labels]
        overlay[~outlines(labels)] = 0
        panel.imshow(overlay, interpolation="nearest")
    for source, target in edges.tolist():
        a, b = where[source], where[target]
        colour = colours(lineages[int(roots[a])] % 20)
        panel.plot([nodes["x"][a], nodes["x"][b]], [nodes["y"][a], nodes["y"][b]], "-", color=colour, lw=2)
    at_last = nodes["t"] == last
    panel.scatter(
        nodes["x"][at_last], nodes["y"][at_last], s=10, c=[colours(lineages[int(r)] % 20) for r in roots[at_last]]
    )
    mothers = _mothers(edges)
    if mothers.size:
        index = [where[m] for m in mothers.tolist()]
        panel.scatter(
            nodes["x"][index],
            nodes["y"][index],
            marker="*",
            s=120,
            c="white",
            edgecolors="red",
            lw=0.8,
            label=f"divisions ({mothers.size})",
        )
        panel.legend(loc="lower right", fontsize="small")
    panel.set_title(f"{name}: {len(lineages)} lineages over {last + 1} frames (image at t = {last})")
    panel.axis("off")
    return _save(fig, path)


def _mothers(edges: np.ndarray) -> np.ndarray:
    """Node ids with two or more children."""
    if not len(edges):
        return np.zeros(0, np.int64)
    sources, counts = np.unique(edges[:, 0], return_counts=True)
    return sources[counts >= 2]


def summarize(labels: Any | None, tracks: dict[str, Any] | None, frames: int) -> dict[str, Any]:
    """Objects per frame (from the labels, else the track nodes), divisions per frame and totals."""
    summary: dict[str, Any] = {"frames": frames}
    if labels is not None:
        counts = []
        for t in range(frames):
            values = np.unique(plane(labels.array, labels.axes, t))
            counts.append(int((values > 0).sum()))
        summary["objects_per_frame"] = counts
    if tracks is not None:
        nodes, edges = tracks["nodes"], tracks["edges"]
        t_of = dict(zip(nodes["id"].tolist(), nodes["t"].tolist()))
        mothers = _mothers(edges)
        per_frame = np.bincount([t_of[m] for m in mothers.tolist()], minlength=frames).tolist()
        summary["divisions_per_frame"] = per_frame[:frames]
        summary["divisions"] = int(mothers.size)
        summary["lineages"] = int(np.unique(lineage_roots(nodes["id"], edges)).size)
        summary.setdefault("objects_per_frame", np.bincount(nodes["t"].astype(np.int64), minlength=frames).tolist())
    return summary


def draw_summary(summary: dict[str, Any], path: Path) -> Path:
    """``summary.png``: objects per frame and divisions per frame, totals in the title."""
    from matplotlib.ticker import MaxNLocator

    fig, panels = _figure(2, height=4.5)
    frames = np.arange(summary["frames"])
    objects = summary.get("objects_per_frame", [])
    panels[0].plot(frames[: len(objects)], objects, "o-", color="tab:blue")
    panels[0].set_xlabel("frame")
    panels[0].set_ylabel("objects")
    panels[0].set_ylim(bottom=0)
    panels[0].set_title(f"objects per frame (mean {np.mean(objects) if objects else 0:.1f})")
    divisions = summary.get("divisions_per_frame")
    if divisions is not None:
        panels[1].bar(frames[: len(divisions)], divisions, color="tab:red")
        panels[1].set_title(f"divisions per frame (total {summary['divisions']})")
    else:
        panels[1].text(0.5, 0.5, "no tracks", ha="center", va="center", transform=panels[1].transAxes)
        panels[1].set_title("divisions per frame")
    panels[1].set_xlabel("frame")
    panels[1].set_ylabel("divisions")
    for panel in panels:
        panel.xaxis.set_major_locator(MaxNLocator(integer=True))
        panel.yaxis.set_major_locator(MaxNLocator(integer=True))
    return _save(fig, path)


def _linked_labels(image_path: str | os.PathLike, tracks: str, meta: dict[str, Any]) -> Any:
    """The label image a GEFF graph links to (its first ``related_objects`` of type labels), or None."""
    from .stream import open_source

    for related in meta.get("related_objects") or []:
        if related.get("type") == "labels" and related.get("path"):
            path = os.path.normpath(os.path.join(os.fspath(image_path), "tracks", tracks, related["path"]))
            if os.path.exists(path):
                return open_source(path)
    return None


class _Image:
    """The image being drawn, its chosen channel and (optionally) a label image."""

    def __init__(self, path: str, labels: str | None, channel: int, axes: str | None) -> None:
        from .stream import open_source

        self.source = open_source(path, axes=axes)
        self.channel = channel
        if "c" in self.source.axes and not 0 <= channel < self.source.shape[self.source.axes.index("c")]:
            raise ConfigError(f"--channel {channel} does not exist in {path}")
        # outputs are in the image group (the group holding a plain array)
        self.labels = open_source(os.path.join(self.source.image_path, "labels", labels)) if labels else None

    @property
    def frames(self) -> int:
        axes, shape = self.source.axes, self.source.shape
        return shape[axes.index("t")] if "t" in axes else 1


def write_report(
    image_path: str | os.PathLike,
    outdir: str | os.PathLike,
    labels: str | None = None,
    tracks: str | None = None,
    frames: int = 3,
    channel: int = 0,
    axes: str | None = None,
) -> dict[str, Any]:
    """Draw the pictures of one image into ``outdir``.

    Parameters
    ----------
    image_path : str or path-like
        An OME-Zarr image (or a plain Zarr array with ``axes``).
    outdir : str or path-like
        Folder of the PNGs (created).
    labels : str, optional
        Name of a label image under ``IMAGE/labels/``: draws ``outlines.png``.
    tracks : str, optional
        Name of a GEFF graph under ``IMAGE/tracks/``: draws ``tracks.png``.
    frames : int
        Time points in ``outlines.png``.
    channel : int
        Channel shown.
    axes : str, optional
        Axes of a plain Zarr array.

    Returns
    -------
    dict
        The summary (objects and divisions per frame) and ``figures``: the paths written.

    Raises
    ------
    ConfigError
        When neither ``labels`` nor ``tracks`` is given, or an input is missing.
    """
    if labels is None and tracks is None:
        raise ConfigError("nothing to draw: give --labels NAME and/or --tracks NAME")
    if frames < 1:
        raise ConfigError(f"--frames must be >= 1, got {frames}")
    image = _Image(os.fspath(image_path), labels, channel, axes)
    graph = None
    if tracks is not None:
        from .stream import read_tracks

        group = image.source.image_path
        nodes, edges, meta = read_tracks(group, tracks)
        graph = {"nodes": nodes, "edges": edges, "labels": _linked_labels(group, tracks, meta)}
    out = Path(outdir)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    if labels is not None:
        written.append(draw_outlines(image, _frames(image.frames, frames), labels, out / "outlines.png"))
    if graph is not None:
        written.append(draw_tracks(image, graph, tracks, out / "tracks.png"))
    summary = summarize(image.labels, graph, image.frames)
    written.append(draw_summary(summary, out / "summary.png"))
    summary["figures"] = [str(p) for p in written]
    return summary
