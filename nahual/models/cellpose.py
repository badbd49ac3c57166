"""The ``cellpose`` (Cellpose 3, CPnet) and ``cellpose-sam`` (Cellpose 4, Cellpose-SAM) models.

Layer: model zoo. Each runs in its own environment (``envs/cellpose``,
``envs/cellpose-sam``); cellpose and torch are imported in ``load`` only.

Weights come from the nahual weights cache and nowhere else (a server never
downloads): ``model`` is a built-in name (``cyto3``, ``nuclei``, ``cyto2``;
``cpsam_v2``, ``cpsam``), resolved to the cached file of that name, or the name of weights
a user put in the cache (``nahual weights add cellpose NAME FILE``), or the
path of an existing file. The file is checked before cellpose sees it,
because cellpose swaps a missing path for its default model and tries to
download that. ``CELLPOSE_LOCAL_MODELS_PATH`` is pointed at the cache before
cellpose is imported, so that cellpose's own name lookup finds the same files.

The image's ``c`` axis maps to cellpose's channels through ``channel`` (what
to segment) and ``nuclear_channel``. ``zyx``/``czyx`` input needs ``do_3D``
or ``stitch_threshold > 0``. The halo of a loaded instance is twice the
diameter (the given one, else the model's mean), so an object that crosses a
tile's border lies whole in the tiles that see it. Tiled runs need the same
normalisation in every tile: pass ``intensity_range`` (fixed bounds) rather
than the per-image percentiles, and a fixed ``diameter``.
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import replace
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from ..errors import ConfigError, ContractError, ParamError, WeightsError
from ..model import Contract, Model, Param
from ..weights import WeightSource, model_dir, weight_path
from ._arrays_stream import read_arrays_stream
from ._torch import torch_device

__all__ = ["Cellpose", "CellposeSAM"]

#: Where Cellpose 3 publishes its models (no checksums are published: fetch records what it got).
CELLPOSE_ORG = "https://www.cellpose.org/models"
#: Where Cellpose 4 publishes Cellpose-SAM.
CELLPOSE_SAM_HF = "https://huggingface.co/mouseland/cellpose-sam/resolve/main"
#: Halo of a loaded instance, in diameters.
HALO_DIAMETERS = 2
_DEVICE = re.compile(r"auto|cpu|mps|cuda(:\d+)?")

# Params both versions take, declared once.
_MODEL_PARAMS = (
    Param("diameter", None, "object diameter in pixels; null: the size model, or the model's mean", type=float, min=1),
    Param("channel", 0, "index in the c axis of the channel to segment", min=0),
    Param("nuclear_channel", None, "index in the c axis of a nuclear channel; null for none", type=int, min=0),
    Param("flow_threshold", 0.4, "largest flow error of a mask that is kept; 0 keeps all", min=0),
    Param("cellprob_threshold", 0.0, "cell probability (logit) above which pixels belong to cells", min=-12, max=12),
    Param("min_size", 15, "smallest mask kept, in pixels", min=0),
    Param("normalize", True, "rescale intensities to the 1st-99th percentiles of each image"),
    Param(
        "intensity_range",
        None,
        "fixed [low, high] intensities mapped to 0 and 1 instead of per-image percentiles (for tiled runs)",
        type=list,
    ),
    Param("batch_size", 8, "network tiles run at once", min=1),
    Param("do_3D", False, "segment zyx input in 3-D"),
    Param("stitch_threshold", 0.0, "segment zyx input plane by plane and join masks above this IoU", min=0, max=1),
    Param("anisotropy", None, "z spacing over xy spacing for do_3D", type=float, min=0.01),
)
_DEVICE_PARAMS = (
    Param("device", "auto", "torch device: auto, cpu, cuda, cuda:N or mps"),
    Param("threads", None, "torch CPU threads (process-wide); null leaves torch's default", type=int, min=1),
)
#: Params fixed when an instance loads; a call may not change them.
LOAD_ONLY = ("model", "device", "threads", "bf16")


class Cellpose(Model):
    """Cellpose 3 (CPnet): cells or nuclei as uint32 labels, from a cached or user weight file."""

    name = "cellpose"
    packages = ("cellpose", "torch", "numpy")
    #: Cellpose major version this adapter drives.
    major: ClassVar[int] = 3
    contract = Contract(
        axes=("yx", "cyx", "zyx", "czyx"),
        inputs=("image",),
        dtype="float32",
        channels=1,
        output="labels",
        tiling=True,
        halo=64,
    )
    param_spec = (
        Param("model", "cyto3", "built-in name (cyto3, nuclei, cyto2), weights name in the cache, or a file path"),
        *_MODEL_PARAMS,
        *_DEVICE_PARAMS,
    )
    #: Built-in name -> (weight file, size model file) in the cache, named as cellpose names them.
    builtin: ClassVar[dict[str, tuple[str, str | None]]] = {
        "cyto3": ("cyto3", "size_cyto3.npy"),
        "nuclei": ("nucleitorch_0", "size_nucleitorch_0.npy"),
        "cyto2": ("cyto2torch_0", "size_cyto2torch_0.npy"),
    }
    weights: ClassVar[dict[str, WeightSource]] = {
        file: WeightSource(f"{CELLPOSE_ORG}/{file}", sha256="")
        for pair in builtin.values()
        for file in pair
        if file is not None
    }

    def load(self, **params: Any) -> None:
        """Resolve the weights, pick the device, then build cellpose's model (raises before importing cellpose).

        Raises
        ------
        WeightsError
            When the weights are neither in the cache nor an existing file.
        ConfigError
            For a device this machine does not have, or the wrong cellpose version.
        """
        super().load(**params)
        p = self.params
        _check_range(p["intensity_range"])
        if not _DEVICE.fullmatch(p["device"]):
            raise ParamError(f"{self.name}: param 'device' expects auto, cpu, cuda, cuda:N or mps, got {p['device']!r}")
        path = self.weights_file(p["model"])
        os.environ["CELLPOSE_LOCAL_MODELS_PATH"] = str(model_dir(self.name))  # read once, when cellpose is imported
        self._check_version()
        device = torch_device(self.name, p["device"], p["threads"])
        self.net = self.build(path, device)
        self.size_params = self._size_params(path) if p["diameter"] is None else None
        diameter = p["diameter"] or float(getattr(self.net, "diam_mean", 30.0))
        self.contract = replace(type(self).contract, halo=8 * math.ceil(HALO_DIAMETERS * diameter / 8))

    def weights_file(self, model: str) -> Path:
        """The weight file ``model`` names: a built-in in the cache, a cached name, or an existing path.

        Raises
        ------
        WeightsError
            One line: what was looked for, where, and how to get it.
        """
        if model in self.builtin:
            return weight_path(self.name, self.builtin[model][0])
        is_path = os.sep in model or "/" in model or model.startswith((".", "~"))
        if not is_path and (model_dir(self.name) / model).is_file():
            return weight_path(self.name, model)
        path = Path(model).expanduser()
        if path.is_file():
            return path
        if is_path:
            raise WeightsError(f"{self.name}: model file {path} does not exist (model: {model!r})")
        return weight_path(self.name, model)

    def _check_version(self) -> None:
        from importlib.metadata import version

        found = version("cellpose")
        if int(found.split(".")[0]) != self.major:
            raise ConfigError(
                f"model {self.name!r} needs Cellpose {self.major}, this environment has cellpose {found} "
                f"(run it in envs/{self.name})"
            )

    def build(self, path: Path, device: Any) -> Any:
        """Cellpose's model on ``device`` with the weights at ``path``."""
        from cellpose import models

        return models.CellposeModel(device=device, pretrained_model=str(path), model_type=None)

    def _size_params(self, path: Path) -> dict[str, Any] | None:
        """The size model beside the weights (``size_NAME.npy`` of a built-in, ``FILE_size.npy``), if any."""
        model = self.params["model"]
        size = self.builtin.get(model, (None, None))[1]
        candidate = path.with_name(size) if size else path.with_name(path.name + "_size.npy")
        return read_size_model(candidate) if candidate.is_file() else None

    def process(self, payload: dict[str, Any], **params: Any) -> dict[str, np.ndarray]:
        """Segment one image (or tile); ``params`` override the eval params for this call."""
        p = self.merge_params(params, self.params)
        changed = [name for name in LOAD_ONLY if name in params and params[name] != self.params.get(name)]
        if changed:
            raise ParamError(f"{self.name}: param {changed[0]!r} is fixed at load; load another instance to change it")
        _check_range(p["intensity_range"])
        arrays, axes = self.contract.read_payload(payload)
        image, kwargs = self.prepare_input(arrays["image"], axes, p)
        if "z" in axes and not (p["do_3D"] or p["stitch_threshold"] > 0):
            raise ContractError(f"{self.name}: {axes} input needs do_3D: true or stitch_threshold > 0")
        masks = self.net.eval(image, **kwargs, **self.eval_params(image, kwargs, p))[0]
        return {"labels": np.asarray(masks).astype(np.uint32)}

    def prepare_input(self, image: np.ndarray, axes: str, p: dict[str, Any]) -> tuple[np.ndarray, dict[str, Any]]:
        """A float32 copy holding the chosen channel(s) last, and the axis arguments of ``eval``.

        Raises
        ------
        ContractError
            For a channel index beyond the image's c axis.
        """
        z_axis = 0 if "z" in axes else None
        if "c" not in axes:
            return np.array(image, np.float32), {"channel_axis": None, "z_axis": z_axis, **self.channels(1)}
        picked = [p["channel"]] + ([p["nuclear_channel"]] if p["nuclear_channel"] is not None else [])
        count = image.shape[0]
        if any(index >= count for index in picked):
            raise ContractError(f"{self.name}: channel {max(picked)} asked, the image has {count} channel(s)")
        if len(picked) == 1:
            return np.array(image[picked[0]], np.float32), {"channel_axis": None, "z_axis": z_axis, **self.channels(1)}
        stacked = np.stack([image[index] for index in picked], axis=-1).astype(np.float32)
        return stacked, {"channel_axis": stacked.ndim - 1, "z_axis": z_axis, **self.channels(2)}

    def channels(self, count: int) -> dict[str, Any]:
        """Cellpose 3's ``channels`` for one (grey) or two (cells, nuclei) channels."""
        return {"channels": [0, 0] if count == 1 else [1, 2]}

    def eval_params(self, image: np.ndarray, layout: dict[str, Any], p: dict[str, Any]) -> dict[str, Any]:
        """The keyword arguments of ``CellposeModel.eval`` besides the axes, from the merged params."""
        normalize: bool | dict[str, Any] = p["normalize"]
        if p["intensity_range"] is not None:
            normalize = {"lowhigh": [float(v) for v in p["intensity_range"]]}
        return {
            "diameter": p["diameter"] if p["diameter"] is not None else self.estimate_diameter(image, layout, p),
            "flow_threshold": p["flow_threshold"],
            "cellprob_threshold": p["cellprob_threshold"],
            "min_size": p["min_size"],
            "normalize": normalize,
            "batch_size": p["batch_size"],
            "do_3D": p["do_3D"],
            "stitch_threshold": p["stitch_threshold"],
            "anisotropy": p["anisotropy"],
        }

    def estimate_diameter(self, image: np.ndarray, layout: dict[str, Any], p: dict[str, Any]) -> float | None:
        """The size model's diameter of a 2-D image; None (the model's mean) without a size model or in 3-D."""
        if self.size_params is None or layout["z_axis"] is not None:
            return None
        from cellpose.models import SizeModel

        sizer = SizeModel(self.net)  # built without a file: cellpose would unpickle it freely
        sizer.params, sizer.diam_mean = self.size_params, self.size_params["diam_mean"]
        normalize = p["normalize"] if p["intensity_range"] is None else {"lowhigh": list(p["intensity_range"])}
        axis_args = {key: layout[key] for key in ("channels", "channel_axis")}
        return float(sizer.eval(image, normalize=normalize, batch_size=p["batch_size"], **axis_args)[0])


class CellposeSAM(Cellpose):
    """Cellpose 4 (Cellpose-SAM, a ViT-L): cells as uint32 labels; size-invariant, so no size model."""

    name = "cellpose-sam"
    major = 4
    param_spec = (
        Param("model", "cpsam_v2", "built-in name (cpsam_v2, cpsam), weights name in the cache, or a file path"),
        *_MODEL_PARAMS,
        *_DEVICE_PARAMS,
        Param("bf16", True, "run the network in bfloat16 (half the memory; the default of Cellpose 4)"),
    )
    builtin: ClassVar[dict[str, tuple[str, str | None]]] = {"cpsam_v2": ("cpsam_v2", None), "cpsam": ("cpsam", None)}
    weights: ClassVar[dict[str, WeightSource]] = {
        name: WeightSource(f"{CELLPOSE_SAM_HF}/{name}", sha256="") for name in ("cpsam_v2", "cpsam")
    }

    def build(self, path: Path, device: Any) -> Any:
        """Cellpose 4's model on ``device``, in bfloat16 unless ``bf16`` is false."""
        from cellpose import models

        return models.CellposeModel(device=device, pretrained_model=str(path), use_bfloat16=self.params["bf16"])

    def _size_params(self, path: Path) -> None:
        return None

    def channels(self, count: int) -> dict[str, Any]:
        """Cellpose 4 reads the channels from ``channel_axis`` alone."""
        return {}


def _check_range(value: list | None) -> None:
    if value is not None and not (
        len(value) == 2 and all(isinstance(v, int | float) and not isinstance(v, bool) for v in value)
    ):
        raise ParamError(f"param 'intensity_range' expects [low, high] numbers, got {value!r}")
    if value is not None and not value[0] < value[1]:
        raise ParamError(f"param 'intensity_range' expects low < high, got {value!r}")


def read_size_model(path: Path) -> dict[str, Any]:
    """Cellpose's size model at ``path`` (keys ``A``, ``smean``, ``ymean``, ``diam_mean``), read without running code.

    Raises
    ------
    WeightsError
        For a file that is not such a size model.
    """
    with path.open("rb") as handle:
        try:
            version = np.lib.format.read_magic(handle)
            readers = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}
            if version not in readers:
                raise ValueError(f"npy format version {version} is not read")
            readers[version](handle)
            params = read_arrays_stream(handle.read())
        except (ValueError, TypeError, IndexError, KeyError, AttributeError) as exc:
            raise WeightsError(f"{path} is not a cellpose size model: {exc}") from exc
    params = params.item() if isinstance(params, np.ndarray) else params
    if not isinstance(params, dict) or not {"A", "smean", "ymean", "diam_mean"} <= set(params):
        raise WeightsError(f"{path} is not a cellpose size model (expected keys A, smean, ymean, diam_mean)")
    return params
