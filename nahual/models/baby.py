"""The ``baby`` model: BABY (Birth Annotator for Budding Yeast) segments, tracks and assigns buds to mothers.

Layer: model zoo. BABY (Pietsch et al., eLife 2023) runs a U-Net on
brightfield z-stacks (the z-sections are its input channels), cuts the cell
outlines out of its maps, links cells from frame to frame with a classifier
and assigns each bud to its mother with another. It needs TensorFlow 2.14,
numpy < 2 and Python 3.11, hence its own environment (``envs/baby``);
``baby`` and TensorFlow are imported in ``load`` only.

Input: ``{"image": (t, [c,] [z,] y, x), "axes": str}``, a series in time
order; the number of z-sections must be the model set's depth (5 for the
``-5z`` sets, 1 for ``-1z`` sets, which also take ``tyx``); with a ``c`` axis
only ``channel`` is used. The pixel size (micrometres) is the ``pixel_size``
param, else the payload's ``scale`` (``{axis: size}``, which a caller may
send; a scale of exactly 1, what a store without one reads as, is ignored),
else the model set's own: BABY rescales to its network's pixel size and back.
Output: the ``cells`` kind of :mod:`nahual.models._baby_cells` (overlap
layers, nodes, edges with a ``lineage`` attribute, a per-cell table).

BABY's tracker keeps state from frame to frame, so a series goes through one
:class:`baby.crawler.BabyCrawler` in time order. A request holds a whole
series, or one window of it: a payload with ``series`` (an id the caller
picks) keeps that series' crawler on this instance after the request, and
the next request with the same id and ``t0`` (its first frame's index, the
frame after the last one sent) goes on from it; ``last: true`` (the default)
drops it. Series never share a crawler, whatever order their windows come in;
a window out of order, or one that fails, ends its series (it must start again
at ``t0: 0``).

Weights are BABY model sets in nahual's weights cache (``nahual weights
fetch baby NAME``, or ``nahual weights add baby NAME FOLDER``), or the path of
a model set folder; see :mod:`nahual.models._baby_sets` for how every file is
resolved and checked. ``BABY_MODELSETS_PATH`` is pointed at the cache's
``baby`` folder before ``baby`` is imported (it is read once, then), and
Keras loads the network in its safe mode, which refuses a Python lambda.
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

from ..errors import ConfigError, ContractError, ParamError, WeightsError
from ..model import Contract, Model, Param
from ..weights import WeightSource, model_dir
from ._baby_cells import Frame, series_result
from ._baby_sets import ModelSet, read_modelset

__all__ = ["MODELSETS", "Baby"]

#: BABY's default model set (brightfield, 60x, EMCCD camera, 5 z-sections).
DEFAULT_MODELSET = "yeast-alcatras-brightfield-EMCCD-60x-5z"
#: The BABY authors' model sets (julianpietsch/baby-models, MIT), fetched from this commit of their repository.
MODELS_COMMIT = "57c4d56c2712b02ce185428ffc87841b37c54e20"
MODELS_ARCHIVE = f"https://github.com/julianpietsch/baby-models/archive/{MODELS_COMMIT}.zip"
MODELSETS = (
    DEFAULT_MODELSET,
    "yeast-alcatras-brightfield-EMCCD-60x-3z",
    "yeast-alcatras-brightfield-EMCCD-60x-1z",
    "yeast-alcatras-brightfield-sCMOS-60x-5z",
    "yeast-alcatras-brightfield-sCMOS-60x-3z",
    "yeast-alcatras-brightfield-sCMOS-60x-1z",
    "yeast-microcol-brightfield-sCMOS-100x-1z",
)
#: Params that choose what is loaded: fixed for an instance, so a call may not change them.
LOAD_PARAMS = ("model", "clogging_thresh", "threads")
#: Series one instance keeps open at once (each holds a crawler's state between windows).
MAX_OPEN_SERIES = 256


@dataclass
class _Series:
    """One series' crawler and what its next window must continue."""

    crawler: Any
    next_t: int = 0
    frame_shape: tuple[int, ...] = ()
    past_t: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    past_labels: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    busy: bool = True


class Baby(Model):
    """Segment, track and find the mothers of budding yeast cells in brightfield z-stack series."""

    name = "baby"
    packages = ("baby-seg", "keras", "scikit-learn", "numpy")
    contract = Contract(
        axes=("tczyx", "tzyx", "tcyx", "tyx"),
        inputs=("image",),
        dtype="float32",
        output="cells",
        tiling=False,
        reads_scale=True,
        halo=0,
    )
    param_spec = (
        Param("model", DEFAULT_MODELSET, "a BABY model set in the weights cache, or the path of a model set folder"),
        Param("pixel_size", None, "micrometres per pixel; null: the image's scale, else the set's", type=float, min=0),
        Param("channel", 0, "the brightfield channel, for an image with a c axis", min=0),
        Param("with_volumes", True, "estimate each cell's volume (BABY's conical sections)"),
        Param("refine_outlines", False, "refine each outline on the edge map (slower)"),
        Param("clogging_thresh", 0.75, "largest fraction of a frame that may look like cells", min=0, max=1),
        Param("threads", None, "TensorFlow CPU threads (process-wide); null leaves TensorFlow's", type=int, min=1),
    )
    #: The released model sets and their shared trackers, for ``nahual weights fetch baby NAME``
    #: (the authors publish no checksum: fetch records what it got).
    weights: ClassVar[dict[str, WeightSource]] = {
        name: WeightSource(MODELS_ARCHIVE, sha256="", archive=True, filename=f"baby-models-{MODELS_COMMIT}/{name}")
        for name in (*MODELSETS, "shared")
    }

    def load(self, **params: Any) -> None:
        """Check the params and the model set, import BABY, and build its brain.

        Raises
        ------
        WeightsError
            When the model set or one of its files is missing, or a file could run code.
        ConfigError
            When TensorFlow already runs with other threads, or the network does not load.
        """
        super().load(**params)
        self.modelset: ModelSet = read_modelset(self.params["model"])
        self.api = _import_baby()
        _set_threads(self.params["threads"])
        self.brain = self._brain()
        self.depth = int(self.brain.depth)
        self._series: dict[str, _Series] = {}
        self._lock = threading.Lock()

    def _brain(self) -> Any:
        """``BabyBrain`` on the resolved files, its network loaded in Keras' safe mode."""
        from keras.src.saving.serialization_lib import SafeModeScope

        files = {key: str(path) for key, path in self.modelset.files.items()}
        kwargs = {**self.modelset.options, **files, "clogging_thresh": self.params["clogging_thresh"]}
        try:
            with SafeModeScope(True):
                return self.api.BabyBrain(modelset_path=str(self.modelset.folder), suppress_errors=False, **kwargs)
        except Exception as exc:  # Keras, h5py and BABY's own errors: one line naming the set
            text = str(exc).strip()
            first = text.splitlines()[0] if text else type(exc).__name__
            raise WeightsError(f"BABY model set {self.modelset.folder} does not load: {first}") from exc

    def process(self, payload: dict[str, Any], **params: Any) -> dict[str, Any]:
        """Segment and track one series (or one window of it); see the module docstring."""
        p = self.merge_params(params, self.params)
        fixed = [name for name in LOAD_PARAMS if p[name] != self.params[name]]
        if fixed:
            raise ParamError(f"baby params {fixed} are fixed at load; load another instance to change them")
        arrays, axes = self.contract.read_payload(payload)
        frames = self._frames(arrays["image"], axes, p["channel"])
        pixel_size = p["pixel_size"] or _scale_pixel_size(payload.get("scale")) or self.modelset.pixel_size
        series, t0, last = _window(payload)
        with self._crawler(series, t0, last, frames.shape[1:3]) as state:
            start = state.next_t
            found = [self._step(state.crawler, frame, pixel_size, p, start + k) for k, frame in enumerate(frames)]
            result = series_result(found, start, frames.shape[1:3], (state.past_t, state.past_labels))
            nodes = result["nodes"]
            state.past_t = np.concatenate([state.past_t, nodes["t"]])
            state.past_labels = np.concatenate([state.past_labels, nodes["label"]])
            state.next_t += len(frames)
        return {**result, "t0": start, "pixel_size": pixel_size}

    def _frames(self, image: np.ndarray, axes: str, channel: int) -> np.ndarray:
        """The series as BABY reads it, (t, y, x, z): the z-sections last, the brightfield channel only.

        Raises
        ------
        ContractError
            For a channel the image lacks, or a number of z-sections other than the set's.
        """
        if "c" in axes:
            count = image.shape[axes.index("c")]
            if channel >= count:
                raise ContractError(f"channel {channel} does not exist: the image has {count} channels")
            image, axes = np.take(image, channel, axis=axes.index("c")), axes.replace("c", "")
        frames = np.moveaxis(image, axes.index("z"), -1) if "z" in axes else image[..., np.newaxis]
        if frames.shape[-1] != self.depth:
            raise ContractError(
                f"the BABY model set {self.modelset.name} takes {self.depth} z-sections per frame, "
                f"the image has {frames.shape[-1]}"
            )
        if frames.shape[0] == 0:
            raise ContractError("the series has no frames")
        return frames

    @contextmanager
    def _crawler(self, series: str | None, t0: int | None, last: bool, shape: tuple[int, ...]) -> Iterator[_Series]:
        """The crawler of ``series`` (a new one without an id), kept after the request unless ``last`` or an error."""
        state = self._open(series, t0, shape)
        try:
            yield state
        except BaseException:
            self._drop(series)
            raise
        with self._lock:
            state.busy = False
        if last:
            self._drop(series)

    def _open(self, series: str | None, t0: int | None, shape: tuple[int, ...]) -> _Series:
        """Start a series or take up a kept one, checking that this window continues it.

        Raises
        ------
        ContractError
            For a window out of order, of another frame size, of a series busy elsewhere, or too many open series.
        """
        if series is None:
            return _Series(self.api.BabyCrawler(self.brain), t0 or 0, shape)
        with self._lock:
            state = self._series.get(series)
            if state is None:
                if t0 not in (None, 0):
                    raise ContractError(f"series {series!r} is not open here: its first window must have t0 0")
                if len(self._series) >= MAX_OPEN_SERIES:
                    raise ContractError(f"{MAX_OPEN_SERIES} series are open here; end one (last: true) first")
                state = self._series[series] = _Series(self.api.BabyCrawler(self.brain), 0, shape)
                return state
            problem = None
            if state.busy:
                problem = "another request is running it"
            elif t0 is not None and t0 != state.next_t:
                problem = f"its next window must have t0 {state.next_t}, got {t0}"
            elif shape != state.frame_shape:
                problem = f"its frames are {state.frame_shape}, this window's {shape}"
            if problem is not None:
                del self._series[series]
                raise ContractError(f"series {series!r}: {problem}; the series is ended (start again at t0 0)")
            state.busy = True
            return state

    def _drop(self, series: str | None) -> None:
        with self._lock:
            self._series.pop(series, None)

    def _step(self, crawler: Any, frame: np.ndarray, pixel_size: float, p: dict[str, Any], t: int) -> Frame:
        """One frame through the crawler, as a :class:`Frame` in the input's pixels and micrometres.

        Raises
        ------
        ContractError
            When BABY's clogging check trips (most of the frame looks like cells).
        """
        from scipy.ndimage import binary_fill_holes

        try:
            out = crawler.step(
                frame[np.newaxis],
                pixel_size=pixel_size,
                with_edgemasks=True,
                assign_mothers=True,
                return_baprobs=True,
                refine_outlines=p["refine_outlines"],
                with_volumes=p["with_volumes"],
            )[0]
        except self.api.Clogging as exc:
            raise ContractError(
                f"BABY's clogging check tripped at frame {t}: more than {p['clogging_thresh']} of it looks like "
                f"cells (not brightfield of the kind model set {self.modelset.name} was trained on?)"
            ) from exc
        edges = np.asarray(out["edgemasks"], bool)
        count = len(out["cell_label"])
        probabilities = np.asarray(out.get("p_bud_assign") or np.zeros((count, count)), np.float64)
        scale = self.modelset.pixel_size**2  # BABY's ellipse axes are model pixels divided by the model's pixel size
        return Frame(
            labels=np.asarray(out["cell_label"], np.int64),
            masks=np.array([binary_fill_holes(edge) for edge in edges], bool).reshape(edges.shape),
            volumes=np.asarray(out.get("volumes") or [np.nan] * count, np.float64) * pixel_size**3,
            axes=np.asarray(out["ellipse_dims"], np.float64).reshape(count, 2) * scale,
            bud_probability=probabilities.max(axis=0, initial=0.0) if count else np.zeros(0),
            mother_assign=np.asarray(out.get("mother_assign", []), np.int64),
        )

    def close(self) -> None:
        """Drop every open series."""
        if hasattr(self, "_series"):
            with self._lock:
                self._series.clear()


def _window(payload: dict[str, Any]) -> tuple[str | None, int | None, bool]:
    """The payload's ``series``, ``t0`` and ``last``, checked.

    Raises
    ------
    ContractError
        For a series id that is not a short string, a t0 that is not a count, a last that is not a boolean.
    """
    series, t0, last = payload.get("series"), payload.get("t0"), payload.get("last", True)
    if series is not None and not (isinstance(series, str) and 0 < len(series) <= 200):
        raise ContractError(f"payload 'series' must be a string of 1 to 200 characters, got {series!r}")
    if t0 is not None and (isinstance(t0, bool) or not isinstance(t0, int | np.integer) or t0 < 0):
        raise ContractError(f"payload 't0' must be a frame index (an integer >= 0), got {t0!r}")
    if not isinstance(last, bool | np.bool_):
        raise ContractError(f"payload 'last' must be true or false, got {last!r}")
    return series, None if t0 is None else int(t0), bool(last)


def _scale_pixel_size(scale: Any) -> float | None:
    """The x pixel size of a payload's ``scale`` (``{axis: size}``), or None when absent or exactly 1.

    Raises
    ------
    ContractError
        When y and x pixel sizes differ (BABY takes square pixels).
    """
    if not isinstance(scale, dict) or "x" not in scale:
        return None
    x, y = float(scale["x"]), float(scale.get("y", scale["x"]))
    if not np.isclose(x, y, rtol=1e-3):
        raise ContractError(f"BABY takes square pixels; the image's are {y} x {x}: give pixel_size to override")
    return None if x == 1.0 or x <= 0 else x


def _import_baby() -> Any:
    """``baby`` (brain, crawler, errors), imported with ``BABY_MODELSETS_PATH`` at the weights cache.

    BABY reads the variable once, at import; the cache's ``baby`` folder gets
    the empty index BABY's listing functions need, so that they never go online.
    """
    root = model_dir("baby")
    os.environ["BABY_MODELSETS_PATH"] = str(root)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TensorFlow's CUDA/oneDNN notices on every start
    index = root / "modelsets.json"
    if root.is_dir() and not index.exists():
        with contextlib.suppress(OSError):  # a read-only cache: nahual itself never lists sets through BABY
            index.write_text(json.dumps({"models": {}, "shared": []}))
    try:
        from baby import brain, crawler, errors
    except ImportError as exc:
        raise ConfigError(f"the baby model needs baby-seg and TensorFlow in its environment: {exc}") from exc

    class Api:
        BabyBrain, BabyCrawler, Clogging = brain.BabyBrain, crawler.BabyCrawler, errors.Clogging

    return Api


def _set_threads(threads: int | None) -> None:
    """TensorFlow's CPU threads, which can be set only before it runs its first operation.

    Raises
    ------
    ConfigError
        When TensorFlow already runs with another number (another instance chose it).
    """
    if threads is None:
        return
    import tensorflow as tf

    threading_config = tf.config.threading
    current = threading_config.get_intra_op_parallelism_threads()
    if current == threads:
        return
    try:
        threading_config.set_intra_op_parallelism_threads(threads)
        threading_config.set_inter_op_parallelism_threads(threads)
    except RuntimeError as exc:
        raise ConfigError(
            f"baby: threads={threads} asked, but TensorFlow already runs with {current or 'its default'} in this "
            "server (threads are process-wide: run another server)"
        ) from exc
