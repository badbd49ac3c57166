"""Synthetic fluorescence time-lapse with ground truth, for tests, demos and benchmarks.

Layer: above Zarr streaming, beside the CLI: :func:`write_demo` writes through
:mod:`nahual.stream` (imported only there), and the node ids follow the model
zoo's tracks format, so nothing below may import this module. Making the data
(:func:`make_demo`) needs numpy and scipy only.

The scene is a set of elliptical nuclei that drift, push each other apart
(so that neighbours touch without overlapping much) and divide into two
touching daughters. Two channels are rendered:

- channel 0, a nuclear stain: bright, textured nuclei, blurred by a PSF;
- channel 1, a cytoplasm-like marker: a dim halo around each nucleus.

Both get a smooth uneven background, shot noise and camera read noise.
Ground truth follows the Cell Tracking Challenge convention: the label of a
nucleus is its track id in every frame, and ``tracks`` lists
``track_id, start, end, parent`` (``res_track.txt``); ``nodes``/``edges`` give
the same lineage as a graph (node id ``t * 2**32 + label``, as the ``laptrack``
model writes them).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .errors import ConfigError
from .lineage import NODE_ID_STRIDE
from .models.laptrack import object_nodes

__all__ = ["DEFAULT_SIZE", "LARGE_SIZE", "DemoData", "DemoSize", "lineage_graph", "make_demo", "write_demo"]


@dataclass(frozen=True)
class DemoSize:
    """Size of a demo scene.

    Parameters
    ----------
    frames, height, width : int
        Shape of the time-lapse.
    nuclei : int
        Nuclei in the first frame (divisions add more).
    radius : float
        Mean nucleus radius in pixels.
    """

    frames: int = 8
    height: int = 256
    width: int = 256
    nuclei: int = 14
    radius: float = 9.0


#: Small enough for CI (a fraction of a second to generate).
DEFAULT_SIZE = DemoSize()
#: For benchmarks: 64 frames of 1024 x 1024 with a few hundred nuclei.
LARGE_SIZE = DemoSize(frames=64, height=1024, width=1024, nuclei=220, radius=9.0)


@dataclass
class DemoData:
    """A generated scene.

    Attributes
    ----------
    image : ndarray, uint16, (t, c, y, x)
        Two-channel fluorescence time-lapse.
    labels : ndarray, uint32, (t, y, x)
        Ground-truth nuclei; the value is the track id.
    tracks : dict of str to ndarray
        ``track_id``, ``start``, ``end``, ``parent`` (0 for none), CTC style.
    nodes : dict of str to ndarray
        ``id``, ``t``, ``label``, ``y``, ``x`` (centroid of the mask).
    edges : dict of str to ndarray
        ``source``, ``target``: node ids, parent to child.
    """

    image: np.ndarray
    labels: np.ndarray
    tracks: dict[str, np.ndarray]
    nodes: dict[str, np.ndarray] = field(default_factory=dict)
    edges: dict[str, np.ndarray] = field(default_factory=dict)

    @property
    def divisions(self) -> int:
        """Number of mother tracks (each has two daughters)."""
        parents = self.tracks["parent"]
        return int(np.unique(parents[parents > 0]).size)


@dataclass
class _Nucleus:
    track: int
    y: float
    x: float
    vy: float
    vx: float
    a: float  # semi-axes
    b: float
    angle: float
    brightness: float
    divides_at: int | None


def make_demo(size: DemoSize = DEFAULT_SIZE, seed: int = 0) -> DemoData:
    """Generate a scene; the same ``size`` and ``seed`` give the same arrays.

    Parameters
    ----------
    size : DemoSize
        Shape and crowding of the scene.
    seed : int
        Seed of the random generator.

    Returns
    -------
    DemoData
    """
    if size.frames < 1 or size.nuclei < 1:
        raise ConfigError(f"a demo needs at least one frame and one nucleus, got {size}")
    if size.height < 8 * size.radius or size.width < 8 * size.radius:
        raise ConfigError(f"demo size too small for nuclei of radius {size.radius}: {size}")
    rng = np.random.default_rng(seed)
    nuclei = _seed_nuclei(size, rng)
    next_track = len(nuclei) + 1
    tracks: list[list[int]] = [[n.track, 0, 0, 0] for n in nuclei]
    labels = np.zeros((size.frames, size.height, size.width), np.uint32)
    image = np.zeros((size.frames, 2, size.height, size.width), np.uint16)
    background = _background(size, rng)
    for t in range(size.frames):
        if t > 0:
            nuclei, next_track = _step(nuclei, t, size, rng, tracks, next_track)
        frame_labels = _rasterize(nuclei, size)
        labels[t] = frame_labels
        image[t] = _render(frame_labels, nuclei, background, size, rng)
        for n in nuclei:
            tracks[n.track - 1][2] = t
    table = {
        key: np.array([row[i] for row in tracks], np.int64)
        for i, key in enumerate(("track_id", "start", "end", "parent"))
    }
    data = DemoData(image=image, labels=labels, tracks=table)
    data.nodes, data.edges = lineage_graph(labels, table)
    return data


def _seed_nuclei(size: DemoSize, rng: np.random.Generator) -> list[_Nucleus]:
    """Place nuclei at random, apart except every fourth, which touches the one before; ~30 % will divide."""
    margin = 2.5 * size.radius
    nuclei: list[_Nucleus] = []
    attempts = 0
    while len(nuclei) < size.nuclei and attempts < 200 * size.nuclei:
        attempts += 1
        y, x = rng.uniform(margin, size.height - margin), rng.uniform(margin, size.width - margin)
        buddy = nuclei[-1] if len(nuclei) % 4 == 3 else None  # every fourth nucleus touches the one before
        if buddy is not None:
            angle = rng.uniform(0, 2 * np.pi)
            y, x = buddy.y + 1.9 * size.radius * np.sin(angle), buddy.x + 1.9 * size.radius * np.cos(angle)
        inside = margin <= y <= size.height - margin and margin <= x <= size.width - margin
        if not inside or any(np.hypot(n.y - y, n.x - x) < 2.6 * size.radius for n in nuclei if n is not buddy):
            continue
        radius = size.radius * rng.uniform(0.8, 1.2)
        elong = rng.uniform(1.0, 1.35)
        divides = int(rng.integers(1, size.frames)) if size.frames > 2 and rng.random() < 0.3 else None
        nuclei.append(
            _Nucleus(
                track=len(nuclei) + 1,
                y=y,
                x=x,
                vy=rng.normal(0, 1.0),
                vx=rng.normal(0, 1.0),
                a=radius * np.sqrt(elong),
                b=radius / np.sqrt(elong),
                angle=rng.uniform(0, np.pi),
                brightness=rng.uniform(0.6, 1.0),
                divides_at=divides,
            )
        )
    return nuclei


def _step(
    nuclei: list[_Nucleus],
    t: int,
    size: DemoSize,
    rng: np.random.Generator,
    tracks: list[list[int]],
    next_track: int,
) -> tuple[list[_Nucleus], int]:
    """Advance to frame ``t``: divide due nuclei (adding their tracks), move, push apart, keep inside."""
    moved: list[_Nucleus] = []
    for n in nuclei:
        if n.divides_at == t:
            daughters = _divide(n, t, size, rng, next_track)
            tracks.extend([[d.track, t, t, n.track] for d in daughters])
            next_track += 2
            moved.extend(daughters)
        else:
            n.vy, n.vx = 0.7 * n.vy + rng.normal(0, 0.6), 0.7 * n.vx + rng.normal(0, 0.6)
            n.y, n.x = n.y + n.vy, n.x + n.vx
            n.a, n.b = min(n.a * 1.03, size.radius * 1.4), min(n.b * 1.03, size.radius * 1.2)
            moved.append(n)
    _repel(moved, size)
    return moved, next_track


def _divide(n: _Nucleus, t: int, size: DemoSize, rng: np.random.Generator, track: int) -> list[_Nucleus]:
    """Two daughters of half the area, touching along the mother's short axis."""
    r = np.sqrt(n.a * n.b / 2)
    dy, dx = np.sin(n.angle), np.cos(n.angle)
    daughters = []
    for k, sign in enumerate((1.0, -1.0)):
        daughters.append(
            _Nucleus(
                track=track + k,
                y=n.y + sign * 0.95 * r * dy,
                x=n.x + sign * 0.95 * r * dx,
                vy=sign * 0.8 * dy,
                vx=sign * 0.8 * dx,
                a=r * 1.05,
                b=r / 1.05,
                angle=n.angle + np.pi / 2,
                brightness=n.brightness * rng.uniform(0.9, 1.1),
                divides_at=None,
            )
        )
    return daughters


def _repel(nuclei: list[_Nucleus], size: DemoSize) -> None:
    """Push overlapping nuclei apart so that they touch at most, and keep all in the field."""
    margin = 1.5 * size.radius
    pos = np.array([[n.y, n.x] for n in nuclei], np.float64).reshape(-1, 2)
    radius = np.array([np.sqrt(n.a * n.b) for n in nuclei])
    for _ in range(3):
        delta = pos[:, None, :] - pos[None, :, :]
        gap = np.hypot(delta[..., 0], delta[..., 1])
        overlap = np.clip(0.9 * (radius[:, None] + radius[None, :]) - gap, 0, None)
        np.fill_diagonal(overlap, 0)
        # coincident centres are pushed apart along y, the lower index upwards
        unit = np.where(gap[..., None] > 1e-6, delta / np.maximum(gap, 1e-6)[..., None], 0.0)
        unit[..., 0] += (gap <= 1e-6) * np.sign(np.arange(len(pos))[:, None] - np.arange(len(pos))[None, :])
        pos += (overlap[..., None] / 2 * unit).sum(axis=1)
    low, high = np.array([margin, margin]), np.array([size.height - margin, size.width - margin])
    for n, (y, x) in zip(nuclei, pos):
        n.vy = -n.vy if not low[0] <= y <= high[0] else n.vy
        n.vx = -n.vx if not low[1] <= x <= high[1] else n.vx
        n.y, n.x = float(np.clip(y, low[0], high[0])), float(np.clip(x, low[1], high[1]))


def _rasterize(nuclei: list[_Nucleus], size: DemoSize) -> np.ndarray:
    """Label each pixel with the nucleus whose ellipse it lies deepest in."""
    depth = np.full((size.height, size.width), np.inf, np.float32)
    labels = np.zeros((size.height, size.width), np.uint32)
    for n in nuclei:
        box, r = _ellipse_radius(n, size)
        inside = (r <= 1.0) & (r < depth[box])
        depth[box][inside] = r[inside]
        labels[box][inside] = n.track
    return labels


def _ellipse_radius(n: _Nucleus, size: DemoSize) -> tuple[tuple[slice, slice], np.ndarray]:
    """Normalised elliptical radius (1 on the outline) over the nucleus' bounding box."""
    reach = int(np.ceil(max(n.a, n.b))) + 2
    y0, y1 = max(int(n.y) - reach, 0), min(int(n.y) + reach + 1, size.height)
    x0, x1 = max(int(n.x) - reach, 0), min(int(n.x) + reach + 1, size.width)
    yy, xx = np.mgrid[y0:y1, x0:x1].astype(np.float32)
    dy, dx = yy - n.y, xx - n.x
    c, s = np.cos(n.angle), np.sin(n.angle)
    u, v = dx * c + dy * s, -dx * s + dy * c
    return (slice(y0, y1), slice(x0, x1)), np.sqrt((u / n.a) ** 2 + (v / n.b) ** 2)


def _background(size: DemoSize, rng: np.random.Generator) -> np.ndarray:
    """A smooth, uneven illumination field in [0.5, 1.5] (vignetting plus a gradient)."""
    yy, xx = np.mgrid[0 : size.height, 0 : size.width].astype(np.float32)
    yy, xx = yy / size.height - 0.5, xx / size.width - 0.5
    tilt = rng.uniform(-0.4, 0.4, 2)
    return (1.2 - 0.8 * (yy**2 + xx**2) + tilt[0] * yy + tilt[1] * xx).astype(np.float32)


def _render(
    labels: np.ndarray, nuclei: list[_Nucleus], background: np.ndarray, size: DemoSize, rng: np.random.Generator
) -> np.ndarray:
    """Both channels of one frame, as uint16 camera counts."""
    from scipy import ndimage

    brightness = np.zeros(max(n.track for n in nuclei) + 1, np.float32)
    for n in nuclei:
        brightness[n.track] = n.brightness
    nuclear = brightness[labels] * (0.85 + 0.15 * rng.random(labels.shape, dtype=np.float32))
    nuclear = ndimage.gaussian_filter(nuclear, 1.2)
    cyto = ndimage.gaussian_filter((labels > 0).astype(np.float32), size.radius * 0.6) * 0.8 * (labels == 0)
    cyto = ndimage.gaussian_filter(cyto, 1.0)
    frame = np.stack([1000 * nuclear + 200 * background, 500 * cyto + 150 * background])
    counts = rng.poisson(np.maximum(frame, 0)).astype(np.float32) + rng.normal(100, 8, frame.shape)
    return np.clip(counts, 0, 65535).astype(np.uint16)


def lineage_graph(
    labels: np.ndarray, tracks: dict[str, np.ndarray]
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """The lineage as a graph from CTC-style labels and a track table.

    Parameters
    ----------
    labels : ndarray, (t, y, x) or (t, z, y, x)
        Masks whose value is the track id.
    tracks : dict of str to ndarray
        ``track_id``, ``start``, ``end``, ``parent``.

    Returns
    -------
    nodes, edges : dict of str to ndarray
        Nodes ``id, t, label, y, x`` (``z`` too in 3-D) at mask centroids; edges
        link consecutive frames of a track and a mother's last frame to each daughter's first.
    """
    nodes = object_nodes(labels)
    start = dict(zip(tracks["track_id"].tolist(), tracks["start"].tolist()))
    parent = dict(zip(tracks["track_id"].tolist(), tracks["parent"].tolist()))
    known = set(nodes["id"].tolist())
    source, target = [], []
    for nid, t, lab in zip(nodes["id"].tolist(), nodes["t"].tolist(), nodes["label"].tolist()):
        before = lab if t > start[lab] else parent[lab]
        prev = (t - 1) * NODE_ID_STRIDE + before
        if before and prev in known:
            source.append(prev)
            target.append(nid)
    return nodes, {"source": np.array(source, np.int64), "target": np.array(target, np.int64)}


def write_demo(path: str | Path, data: DemoData, levels: int = 1) -> Path:
    """Write a scene as OME-Zarr: the image, ``labels/ground_truth`` and ``tracks/ground_truth`` (GEFF).

    Parameters
    ----------
    path : str or Path
        The ``.zarr`` store to create.
    data : DemoData
        What :func:`make_demo` returned.
    levels : int
        Resolution levels of the image (and so of its label images), each halving y and x.

    Returns
    -------
    Path
        The store written.
    """
    from . import stream

    path = Path(path)
    stream.write_image(path, data.image, "tcyx", levels=levels)
    stream.write_labels(path, "ground_truth", data.labels, "tyx", attrs={"source": "nahual demo-data"})
    nodes = {**data.nodes, "track_id": data.nodes["label"]}  # CTC convention: the label is the track
    stream.write_tracks(
        path,
        "ground_truth",
        nodes,
        data.edges,
        labels_name="ground_truth",
        attrs={"source": "nahual demo-data", "ctc_tracks": {k: v.tolist() for k, v in data.tracks.items()}},
    )
    return path
