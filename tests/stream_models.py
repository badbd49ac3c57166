"""Small models for the streaming tests, loaded as ``stream_models:Blobs`` (tests/ is on PYTHONPATH).

Each is exact and cheap, so that the tests can compare a tiled run with a
whole-image run, a sharded run with a single one, a killed run with an
uninterrupted one.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from nahual import Contract, Model, Param
from nahual.lineage import NODE_ID_STRIDE

__all__ = ["BREAKS", "Blobs", "Double", "Embed", "Measure", "ObjectEmbed", "Overlap", "TileEmbed", "TwoChannels"]


class Blobs(Model):
    """Threshold then 8-connected components: a segmenter whose result depends only on a small neighbourhood.

    ``delay_s`` sleeps per call (to kill runs midway, or to time pipelining).
    """

    name = "blobs"
    contract = Contract(
        axes=("yx", "zyx"),
        output="labels",
        halo=16,
        dtype="float32",
    )
    param_spec = (
        Param("threshold", 0.5, "pixels above it are foreground"),
        Param("delay_s", 0.0, "seconds to sleep per call", min=0),
    )

    def load(self, **params: Any) -> None:
        super().load(**params)
        import scipy.ndimage

        self.ndimage = scipy.ndimage

    def process(self, payload: dict[str, Any], **params: Any) -> dict[str, Any]:
        p = self.merge_params(params, self.params)
        time.sleep(p["delay_s"])
        image = np.asarray(payload["image"])
        structure = np.ones((3,) * image.ndim, bool)
        labels, _ = self.ndimage.label(image > p["threshold"], structure=structure)
        return {"labels": labels.astype(np.uint32)}


class Double(Model):
    """Twice the image, as a one-channel float32 map: the smallest model of the ``array`` kind."""

    name = "double"
    contract = Contract(axes=("yx",), output="array", dtype="float32")

    def process(self, payload: dict[str, Any], **params: Any) -> dict[str, Any]:
        return {"array": 2 * np.asarray(payload["image"])[np.newaxis]}


class Overlap(Model):
    """Links each object to the object of the previous frame it overlaps most; two children make a division."""

    name = "overlap"
    contract = Contract(axes=("tyx",), inputs=("labels",), output="tracks", tiling=False)

    def process(self, payload: dict[str, Any], **params: Any) -> dict[str, Any]:
        labels = np.asarray(payload["labels"])
        ts, values, ys, xs = [], [], [], []
        for t, frame in enumerate(labels):
            ids = np.unique(frame[frame > 0])
            for value in ids.tolist():
                y, x = np.nonzero(frame == value)
                ts.append(t), values.append(value), ys.append(y.mean()), xs.append(x.mean())
        t_arr, label_arr = np.array(ts, np.int64), np.array(values, np.int64)
        ids = t_arr * NODE_ID_STRIDE + label_arr
        sources, targets = [], []
        for t in range(1, labels.shape[0]):
            prev, cur = labels[t - 1], labels[t]
            for value in np.unique(cur[cur > 0]).tolist():
                under = prev[cur == value]
                under = under[under > 0]
                if under.size:
                    parent = np.bincount(under).argmax()
                    sources.append((t - 1) * NODE_ID_STRIDE + parent), targets.append(t * NODE_ID_STRIDE + value)
        nodes = {"id": ids, "t": t_arr, "label": label_arr, "y": np.array(ys), "x": np.array(xs)}
        return {"nodes": nodes, "edges": {"source": np.array(sources, np.int64), "target": np.array(targets, np.int64)}}


class Measure(Model):
    """Per-object area and mean intensity of one frame."""

    name = "measure"
    contract = Contract(axes=("yx",), inputs=("image", "labels"), output="features", tiling=False)

    def process(self, payload: dict[str, Any], **params: Any) -> dict[str, Any]:
        image, labels = np.asarray(payload["image"], float), np.asarray(payload["labels"])
        ids = np.unique(labels[labels > 0])
        area = np.array([(labels == i).sum() for i in ids.tolist()], np.int64)
        mean = np.array([image[labels == i].mean() for i in ids.tolist()])
        return {"table": {"label": ids, "area": area, "mean": mean}}


class Embed(Model):
    """Mean and standard deviation of a tile, as a 2-vector."""

    name = "embed"
    contract = Contract(axes=("yx",), output="embeddings")

    def process(self, payload: dict[str, Any], **params: Any) -> dict[str, Any]:
        image = np.asarray(payload["image"], float)
        return {"embedding": np.array([[image.mean(), image.std()]], np.float32)}


def _boxes(boxes: np.ndarray) -> dict[str, np.ndarray]:
    """(n, 4) half-open boxes ``y_min, x_min, y_max, x_max`` as the obs columns an embeddings model returns."""
    names = ("bbox_y_min", "bbox_x_min", "bbox_y_max", "bbox_x_max")
    return {name: boxes[:, k] for k, name in enumerate(names)}


#: Ways :class:`ObjectEmbed` breaks the embeddings contract (its ``misbehave`` param): each changes a good result.
BREAKS = {
    "obs-2d": lambda r: {**r, "obs": {**r["obs"], "label": r["obs"]["label"][:, None]}},
    "obs-complex": lambda r: {**r, "obs": {**r["obs"], "score": r["obs"]["label"].astype(complex)}},
    "label-float": lambda r: {**r, "obs": {**r["obs"], "label": r["obs"]["label"] + 0.5}},
    "obs-clash": lambda r: {**r, "obs": {**r["obs"], "row": r["obs"]["label"]}},
    "bbox-axis": lambda r: {**r, "obs": {**r["obs"], "bbox_z_min": r["obs"]["label"]}},
    "columns-short": lambda r: {**r, "columns": r["columns"][:-1]},
    "patches-rows": lambda r: {**r, "patches": np.zeros((len(r["embedding"]) + 1, 2), np.float32)},
    "uns-array": lambda r: {**r, "uns": {**r["uns"], "mean": np.zeros(3)}},
    "width-by-frame": lambda r: {"embedding": np.pad(r["embedding"], ((0, 0), (0, len(r["embedding"]))))},
    "uns-by-frame": lambda r: {**r, "uns": {**r["uns"], "objects": len(r["embedding"])}},
}


class ObjectEmbed(Model):
    """One vector per labelled object of a frame, as a DINO model at object granularity returns it.

    The vector of an object is its mean in each channel, then its area; ``obs``
    has its label and its box (in the frame's pixels), ``columns`` names the
    vector's entries, ``uns`` describes the model. ``patch_grid`` adds a 2 x 2
    grid of patch tokens per object (the vector, repeated); ``width_when_empty``
    false gives a frame without objects as a (0, 0) embedding, width unknown;
    ``misbehave`` names one of :data:`BREAKS`.
    """

    name = "object-embed"
    contract = Contract(axes=("cyx",), inputs=("image", "labels"), dtype="float32", output="embeddings", tiling=False)
    param_spec = (
        Param("patch_grid", False, "return a 2 x 2 grid of patch tokens per object"),
        Param("width_when_empty", True, "a frame without objects still says the vectors' width"),
        Param("misbehave", "", "break the embeddings contract this way", choices=("", *BREAKS)),
        Param("delay_s", 0.0, "seconds to sleep per call", min=0),
    )

    def process(self, payload: dict[str, Any], **params: Any) -> dict[str, Any]:
        p = self.merge_params(params, self.params)
        time.sleep(p["delay_s"])
        image, labels = np.asarray(payload["image"]), np.asarray(payload["labels"])
        ids = np.unique(labels[labels > 0]).astype(np.int64)
        width = image.shape[0] + 1
        vectors, boxes = np.zeros((ids.size, width), np.float32), np.zeros((ids.size, 4), np.int64)
        for row, value in enumerate(ids.tolist()):
            mask = labels == value
            ys, xs = np.nonzero(mask)
            vectors[row] = [*image[:, mask].mean(axis=1), mask.sum()]
            boxes[row] = ys.min(), xs.min(), ys.max() + 1, xs.max() + 1
        result = {
            "embedding": vectors,
            "obs": {"label": ids, **_boxes(boxes)},
            "columns": [f"c{k}_mean" for k in range(image.shape[0])] + ["area"],
            "uns": {"model": "object-embed", "weights": "none", "sha256": "", "preprocessing": {"normalize": None}},
        }
        if p["patch_grid"]:
            result["patches"] = np.tile(vectors[:, None, None, :], (1, 2, 2, 1))
        if not ids.size and not p["width_when_empty"]:
            result = {"embedding": np.zeros((0, 0), np.float32), "obs": {"label": ids}}
        return BREAKS[p["misbehave"]](result) if p["misbehave"] else result


class TileEmbed(Model):
    """One vector per ``grid`` x ``grid`` cell of the block it is given (cut at its border): the cell's
    mean in each channel, with the cell's box in the block's pixels and label 0, as DINO tiles are."""

    name = "tile-embed"
    contract = Contract(axes=("cyx",), dtype="float32", output="embeddings")
    param_spec = (Param("grid", 16, "side of a cell in pixels", min=1),)

    def process(self, payload: dict[str, Any], **params: Any) -> dict[str, Any]:
        grid = self.merge_params(params, self.params)["grid"]
        image = np.asarray(payload["image"])
        height, width = image.shape[1:]
        boxes = np.array(
            [
                (y, x, min(y + grid, height), min(x + grid, width))
                for y in range(0, height, grid)
                for x in range(0, width, grid)
            ],
            np.int64,
        )
        vectors = np.array([image[:, y0:y1, x0:x1].mean(axis=(1, 2)) for y0, x0, y1, x1 in boxes], np.float32)
        return {
            "embedding": vectors,
            "obs": {"label": np.zeros(len(boxes), np.int64), **_boxes(boxes)},
            "columns": [f"c{k}_mean" for k in range(image.shape[0])],
        }


class TwoChannels(Model):
    """Declares that it needs two channels (never called: the streaming layer refuses one-channel stores)."""

    name = "two-channels"
    contract = Contract(axes=("cyx",), channels=2, output="labels")
