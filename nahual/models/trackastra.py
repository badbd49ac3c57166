"""The ``trackastra`` model: transformer-based linking of a segmented time-lapse with Trackastra.

Layer: model zoo. Trackastra (Gallusser & Weigert, ECCV 2024) predicts an
association weight for every pair of objects in nearby frames from their
positions, shapes and intensities, then keeps the links by a greedy pass
(``greedy``, ``greedy_nodiv``) or an integer linear program (``ilp``, solved
with SCIP through motile/ilpy: no licence needed).

Input: ``{"image": (t, [c,] [z,] y, x), "labels": (t, [z,] y, x), "axes": str}``,
the whole series; with a ``c`` axis only ``channel`` is used. Output: the
``tracks`` kind exactly as :mod:`nahual.models.laptrack` returns it (nodes,
edges, ``track_id``, ``tracks``; node ids from :mod:`nahual.lineage`), so that
GEFF, the relabelled masks and ``nahual export ctc`` work the same. Every
object of the labels is a node: one the tracker links to nothing is a track
of its own (Trackastra's own graph would drop it, and its mask with it).

Weights are a Trackastra model folder (``config.yaml``, ``model.pt``,
``train_config.yaml``), loaded with ``Trackastra.from_folder``, never
``from_pretrained`` (which downloads): ``model`` names a weight in nahual's
weights cache (the releases ``general_2d`` and ``ctc``, put there by ``nahual
weights fetch trackastra NAME``, or a folder added with ``nahual weights add
trackastra NAME FOLDER``) or is the path of a folder. Importing trackastra
configures the root logger and sets ``KMP_DUPLICATE_LIB_OK`` (which hides
clashing OpenMP runtimes); :meth:`Trackastra.load` undoes both, so a server's
other models and logs are not affected.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from ..errors import ConfigError, ContractError, ParamError, WeightsError
from ..lineage import NODE_ID_STRIDE, tracking_result
from ..model import Contract, Model, Param
from ..weights import WeightSource, weight_path
from ._torch import torch_device
from .laptrack import object_nodes

__all__ = ["MODEL_FILES", "RELEASES", "Trackastra", "model_folder"]

#: Files a Trackastra model folder holds (``TrackingTransformer.save`` writes the first two).
MODEL_FILES = ("config.yaml", "model.pt", "train_config.yaml")

#: Params that choose what is loaded: fixed for an instance, so a call may not change them.
LOAD_PARAMS = ("model", "device", "threads")

#: What ``import trackastra`` sets for the whole process and :func:`_import_trackastra` undoes. It also sets
#: ``PYTORCH_ENABLE_MPS_FALLBACK=1``, which stays: on Apple GPUs Trackastra relies on it (it only touches MPS).
IMPORT_ENV = ("KMP_DUPLICATE_LIB_OK",)

#: Trackastra's released models (weigertlab/trackastra-models, BSD-3): zips of one model folder each.
RELEASES = {
    "general_2d": "https://github.com/weigertlab/trackastra-models/releases/download/v0.3.0/general_2d.zip",
    "ctc": "https://github.com/weigertlab/trackastra-models/releases/download/v0.3.0/ctc.zip",
}

#: Prediction batch size per device kind (Trackastra's own defaults).
BATCH_SIZE = {"cpu": 1, "cuda": 4, "mps": 4}


class Trackastra(Model):
    """Link the objects of a labelled time-lapse with a Trackastra transformer, divisions included."""

    name = "trackastra"
    packages = ("trackastra", "torch", "motile", "ilpy")
    contract = Contract(
        axes=("tyx", "tzyx", "tcyx", "tczyx"),
        inputs=("image", "labels"),
        dtype="float32",
        output="tracks",
        tiling=False,
        halo=0,
    )
    param_spec = (
        Param("model", "general_2d", "a weight name in the weights cache, or the path of a Trackastra model folder"),
        Param("mode", "greedy", "how links are chosen", choices=("greedy", "greedy_nodiv", "ilp")),
        Param("device", "auto", "torch device: auto, cpu, cuda, cuda:N or mps"),
        Param("max_distance", 256.0, "largest distance in pixels between objects that may be linked", min=0),
        Param("channel", 0, "the channel Trackastra measures intensities in, for an image with a c axis", min=0),
        Param("normalize", True, "scale the series to its 1st-99.8th percentile range first, as Trackastra does"),
        Param("threads", None, "torch CPU threads (process-wide); null leaves torch's default", type=int, min=1),
    )
    #: The releases, for ``nahual weights fetch trackastra NAME`` (no checksum is published: fetch records what it got).
    weights: ClassVar[dict[str, WeightSource]] = {
        name: WeightSource(url, sha256="", archive=True) for name, url in RELEASES.items()
    }

    def load(self, **params: Any) -> None:
        """Check the params, import trackastra (side effects undone) and load the weights folder.

        Raises
        ------
        ParamError
            For a malformed ``device``.
        WeightsError
            When the weight is not in the cache or its folder lacks a file.
        ConfigError
            When the device is not there (no CUDA GPU) or the folder does not load.
        """
        super().load(**params)
        folder = model_folder(self.params["model"])
        api = _import_trackastra()
        device = torch_device(self.name, self.params["device"], self.params["threads"])
        try:
            tracker = api.Trackastra.from_folder(folder, device="cpu", batch_size=BATCH_SIZE[device.type])
        except Exception as exc:  # torch, yaml and Trackastra's own errors: one line naming the folder
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ConfigError(f"trackastra model folder {folder} does not load: {first}") from exc
        features = tracker.train_args.get("features")
        if features not in ("wrfeat", "none", None):
            raise ConfigError(f"trackastra model {folder} needs features {features!r}; this adapter computes wrfeat")
        tracker.transformer.to(device)
        self.tracker, self.folder = tracker, folder
        self.coord_dim = int(tracker.transformer.config["coord_dim"])

    def process(self, payload: dict[str, Any], **params: Any) -> dict[str, Any]:
        """Track one whole series; ``mode``, ``max_distance``, ``channel`` and ``normalize`` may change per call."""
        p = self.merge_params(params, self.params)
        fixed = [name for name in LOAD_PARAMS if p[name] != self.params[name]]
        if fixed:
            raise ParamError(f"trackastra params {fixed} are fixed at load; load another instance to change them")
        arrays, axes = self.contract.read_payload(payload)
        labels = arrays["labels"]
        image = _channel(arrays["image"], axes, p["channel"])
        if labels.ndim - 1 != self.coord_dim:
            found = labels.ndim - 1
            raise ContractError(
                f"the trackastra model {self.folder.name} tracks {self.coord_dim}-d objects, got {found}-d frames"
            )
        nodes = object_nodes(labels)
        pairs = self._links(image, labels, p) if nodes["id"].size else np.zeros((0, 2), np.int64)
        return tracking_result(nodes, {"source": pairs[:, 0], "target": pairs[:, 1]})

    def _links(self, image: np.ndarray, labels: np.ndarray, p: dict[str, Any]) -> np.ndarray:
        """Trackastra's chosen links as (source, target) node ids, forward in time, sorted."""
        from tqdm import tqdm

        def quiet(*args: Any, **kwargs: Any) -> Any:
            return tqdm(*args, **{**kwargs, "disable": True})

        # Arrays from the network are read-only views, and Trackastra's compiled helpers need writable buffers.
        graph, _ = self.tracker.track(
            np.require(image, requirements="CW"),
            np.require(labels, requirements="CW"),
            mode=p["mode"],
            normalize_imgs=p["normalize"],
            progbar_class=quiet,
            max_distance=p["max_distance"],
        )
        ids = {n: int(d["time"]) * NODE_ID_STRIDE + int(d["label"]) for n, d in graph.nodes(data=True)}
        pairs = np.array([sorted((ids[u], ids[v])) for u, v in graph.edges()], np.int64).reshape(-1, 2)
        return pairs[np.lexsort((pairs[:, 1], pairs[:, 0]))]


def model_folder(model: str) -> Path:
    """The Trackastra model folder that the ``model`` param names; never downloads.

    A value with a ``/`` (or starting with ``~``) is a folder path; anything
    else is a weight name in nahual's weights cache.

    Raises
    ------
    WeightsError
        One line, when the weight is not in the cache, the path is no folder,
        or the folder lacks one of :data:`MODEL_FILES`.
    """
    if "/" in model or model.startswith("~"):
        folder = Path(model).expanduser().absolute()
        if not folder.is_dir():
            raise WeightsError(f"trackastra model folder {folder} does not exist (param model={model!r})")
    else:
        folder = weight_path("trackastra", model)
        if not folder.is_dir():
            raise WeightsError(f"trackastra weights {model!r} at {folder} are a file; expected a model folder")
    missing = [name for name in MODEL_FILES if not (folder / name).is_file()]
    if missing:
        raise WeightsError(f"trackastra model folder {folder} lacks {', '.join(missing)} (it needs {MODEL_FILES})")
    return folder


def _import_trackastra() -> Any:
    """``trackastra.model``, imported with its process-wide side effects undone.

    trackastra sets :data:`IMPORT_ENV` and calls ``logging.basicConfig(level=INFO)``
    at import; both would change every other model and log line of the server.
    """
    before_env = {key: os.environ.get(key) for key in IMPORT_ENV}
    root = logging.getLogger()
    level, handlers = root.level, list(root.handlers)
    try:
        import trackastra.model as api
    except ImportError as exc:
        raise ConfigError(f"the trackastra model needs trackastra and torch in its environment: {exc}") from exc
    finally:
        root.setLevel(level)
        root.handlers[:] = handlers
        for key, value in before_env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
    return api


def _channel(image: np.ndarray, axes: str, channel: int) -> np.ndarray:
    """The one-channel series Trackastra measures: ``channel`` of a ``c`` axis, else the image as is."""
    if "c" not in axes:
        return image
    position = axes.index("c")
    if channel >= image.shape[position]:
        raise ContractError(f"channel {channel} does not exist: the image has {image.shape[position]} channels")
    return np.take(image, channel, axis=position)
