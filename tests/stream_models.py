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

__all__ = ["Blobs", "Embed", "Measure", "Overlap", "TwoChannels"]


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


class TwoChannels(Model):
    """Declares that it needs two channels (never called: the streaming layer refuses one-channel stores)."""

    name = "two-channels"
    contract = Contract(axes=("cyx",), channels=2, output="labels")
