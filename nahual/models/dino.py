"""The ``dinov2`` and ``dinov3`` models: one DINO embedding per labelled object, per tile or per frame.

Layer: model zoo. Both run in ``envs/dino`` (torch, transformers; no torchvision, no timm); torch and
transformers are imported in ``load`` only, and nothing is ever downloaded.

What the model sees (:mod:`nahual.models._crops`, then torch), in this order:

1. ``normalize`` (``percentile``: the ``percentiles`` of each channel to 0 and 1; ``zscore``; ``none``),
   over the whole frame (``normalize_over: image``, so that a cell's vector does not depend on what else
   falls in its crop) or over each crop (``crop``; then ``background: mask`` zeroes after normalising);
2. crops: ``object`` (a square per label, ``crop_size`` or ``crop_scale`` times its bbox, zero past the
   frame), ``tile`` (a ``tile_size`` grid from (0, 0)) or ``frame`` (the whole block);
3. 3-channel views: ``channels: each`` (each channel as grey RGB), ``triplets`` or ``[i, j, k]``;
4. resized with ``F.interpolate(mode="bilinear", antialias=True, align_corners=False)`` to ``size`` x
   ``size`` (a frame: shorter side ``size``, the longer one the nearest multiple of the patch size);
5. ImageNet mean/std (:data:`IMAGENET_MEAN`, :data:`IMAGENET_STD`), then ``batch_size`` views per
   forward pass under ``torch.inference_mode`` (``bfloat16``/``float16`` autocast on CUDA only).

Tokens: ``cls`` is the model's normalised CLS token (torch.hub: ``forward_features(x)["x_norm_clstoken"]``;
transformers: ``last_hidden_state[:, 0]``, which both Dinov2Model and DINOv3ViTModel return after their
final layernorm); ``mean`` is the mean of the normalised patch tokens, registers left out (torch.hub:
``x_norm_patchtokens``; transformers: ``last_hidden_state[:, 1 + num_register_tokens:]``). A row holds,
for each view, the chosen tokens one after the other (columns ``c0_cls_0``, ``c0_cls_1``, ...).

Weights, torch.hub route (``source: hub``): the entry (``model``) is built by the repo's own code with
``pretrained=False`` (DINOv2: ``torch.hub.load(folder, entry, source="local")``; DINOv3: its clone's
``dinov3.hub.backbones``, since its hubconf imports torchvision), then the state dict ``weights`` (a name
in nahual's weights cache, by default ``<entry>_pretrain.pth``, or a file) is loaded strictly. The repo
is a clone, or ``owner/name[:ref]`` found in the torch hub cache (``$TORCH_HOME/hub/owner_name_ref``).
Transformers route (``source: hf``): a ``save_pretrained`` folder, its weights-cache name, or a hub id
already in the Hugging Face cache, read with ``HF_HUB_OFFLINE=1``.
"""

from __future__ import annotations

import contextlib
import itertools
import re
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from ..errors import ConfigError, ParamError, WeightsError
from ..model import Contract, Model, Param
from ..weights import WeightSource, checksum, list_weights, model_dir, parse_weight_name, weight_path
from ._crops import Crops, channel_views, frame_crop, normalize, object_crops, tile_crops
from ._dino_load import Backbone, hf_backbone, hf_folder, hub_backbone, hub_folder, is_path, names_hf_folder
from ._torch import torch_device

__all__ = ["DINOV2_WEIGHTS", "IMAGENET_MEAN", "IMAGENET_STD", "DINOv2", "DINOv3"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
#: Where Meta publishes the DINOv2 torch.hub checkpoints (no checksums: fetch records what it got).
DINOV2_WEIGHTS = "https://dl.fbaipublicfiles.com/dinov2"
#: Params that choose what is loaded: fixed for an instance, so a call may not change them.
LOAD_PARAMS = ("model", "source", "repo", "weights", "granularity", "device", "dtype", "threads")
#: Token choices -> the tokens of each view, in row order.
TOKENS = {"cls": ("cls",), "mean": ("mean",), "both": ("cls", "mean")}
_DEVICE = re.compile(r"auto|cpu|mps|cuda(:\d+)?")


def _param_spec(model: str) -> tuple[Param, ...]:
    """The params of both models; only the default ``model`` differs."""
    return (
        Param("model", model, "torch.hub entry, Hugging Face id (with '/'), save_pretrained folder or its cache name"),
        Param("source", None, "null: hf for an id or a folder with config.json, else hub", type=str,
              choices=("hub", "hf")),
        Param("repo", None, "torch.hub repo: a clone, or owner/name[:ref] in the torch hub cache; null: upstream",
              type=str),
        Param("weights", None, "hub state dict: a weights-cache name or a file; null: <model>_pretrain.pth", type=str),
        Param("granularity", "object", "one vector per labelled object, per tile, or per frame",
              choices=("object", "tile", "frame")),
        Param("crop_size", None, "side of object crops in pixels; null: crop_scale times the bbox", type=int, min=1),
        Param("crop_scale", 1.5, "object crop side over the larger side of the object's bbox", min=0.01),
        Param("background", "keep", "pixels of an object crop outside its object: kept, or 0",
              choices=("keep", "mask")),
        Param("tile_size", 224, "side in pixels of the tiles of granularity tile", min=1),
        Param("channels", "each", "views: each (one per channel), triplets (0-2, 3-5, ...) or [i, j, k]",
              type=(str, list)),
        Param("normalize", "percentile", "intensity normalisation of each channel",
              choices=("percentile", "zscore", "none")),
        Param("normalize_over", "image", "statistics of the normalisation: the frame, or each crop",
              choices=("image", "crop")),
        Param("percentiles", [1.0, 99.8], "[low, high] percentiles mapped to 0 and 1", type=list),
        Param("size", 224, "side the model sees, a multiple of the patch size", min=1),
        Param("tokens", "cls", "the normalised CLS token, the mean patch token, or both", choices=tuple(TOKENS)),
        Param("patch_grid", False, "also return the grid of patch tokens (patches)"),
        Param("device", "auto", "torch device: auto, cpu, cuda, cuda:N or mps"),
        Param("dtype", "float32", "compute dtype; bfloat16/float16 autocast on CUDA only",
              choices=("float32", "bfloat16", "float16")),
        Param("threads", None, "torch CPU threads (process-wide); null leaves torch's default", type=int, min=1),
        Param("batch_size", 64, "views per forward pass", min=1),
    )  # fmt: skip


class _DINO(Model):
    """What DINOv2 and DINOv3 share: loading, what the model sees, and the rows returned."""

    packages = ("torch", "transformers", "numpy")
    contract = Contract(
        axes=("cyx",),
        inputs=("image", "labels"),
        dtype="float32",
        channels=1,
        output="embeddings",
        tiling=False,
    )
    #: Family of the checkpoints: the torch.hub package and the Hugging Face model types accepted.
    family: ClassVar[str] = ""
    #: torch.hub repo used when ``repo`` is null.
    upstream: ClassVar[str] = ""
    #: Module of the clone the hub entries are called from; None: ``torch.hub.load`` of its hubconf.
    hub_module: ClassVar[str | None] = None
    #: How to get weights the cache does not hold, for the message.
    obtain: ClassVar[str] = ""

    def load(self, **params: Any) -> None:
        """Check the params, find repo and weights (before importing torch), build the model on its device.

        Raises
        ------
        ParamError
            For bad view params, weights given with source hf, or a size not a multiple of the patch.
        WeightsError
            One line naming the weight, the path looked at and the command that fills it.
        ConfigError
            For a repo or Hugging Face folder not found, a model that does not build, a device this
            machine lacks, or a half-precision dtype off CUDA.
        """
        super().load(**params)
        p = self.params
        _check_call_params(p, None)
        if not _DEVICE.fullmatch(p["device"]):
            raise ParamError(f"{self.name}: param 'device' expects auto, cpu, cuda, cuda:N or mps, got {p['device']!r}")
        self.source = p["source"] or ("hf" if names_hf_folder(p["model"], self.name) else "hub")
        if self.source == "hf" and p["weights"] is not None:
            raise ParamError(f"{self.name}: param 'weights' is for source hub; with hf, model names the folder")
        if self.source == "hub":
            weights, self.weights_name = self.weights_file(p["model"], p["weights"])
            folder = hub_folder(p["repo"] or self.upstream)
        else:
            weights = folder = hf_folder(p["model"], self.name)
            self.weights_name = p["model"]
        self.device = torch_device(self.name, p["device"], p["threads"])
        if p["dtype"] != "float32" and self.device.type != "cuda":
            raise ConfigError(
                f"{self.name}: dtype {p['dtype']!r} (autocast) runs on CUDA only; the device is {self.device}"
            )
        if self.source == "hub":
            self.backbone: Backbone = hub_backbone(folder, p["model"], self.hub_module, weights, self.device)
        else:
            self.backbone = hf_backbone(folder, self.family, self.device)
        _check_call_params(p, self.backbone.patch)
        self.sha256 = self.recorded_sha256(weights)
        whole_frames = p["granularity"] == "object"
        inputs = ("image", "labels") if whole_frames else ("image",)
        self.contract = replace(type(self).contract, inputs=inputs, tiling=not whole_frames)

    def weights_file(self, entry: str, weights: str | None) -> tuple[Path, str]:
        """The state dict file of hub entry ``entry`` and its name: ``weights``, else ``<entry>_pretrain.pth``.

        Raises
        ------
        WeightsError
            For a path that is no file, or a name not in the cache (the fetch command for a known one).
        """
        name = weights or self.implied_weights(entry)
        if is_path(name):
            path = Path(name).expanduser()
            if not path.is_file():
                raise WeightsError(f"{self.name}: weights file {path} does not exist (param weights={weights!r})")
            return path.absolute(), path.name
        path = model_dir(self.name) / parse_weight_name(name)
        if name in self.weights or path.exists():
            return weight_path(self.name, name), name
        raise WeightsError(
            f"weights {name!r} of model {self.name!r} are not in the cache (looked at {path}); {self.obtain}, "
            f"then run `nahual weights add {self.name} {name} FILE` (or pass weights=FILE)"
        )

    def implied_weights(self, entry: str) -> str:
        """The weights name of a hub entry: ``<entry>_pretrain.pth``."""
        return f"{entry}_pretrain.pth"

    def recorded_sha256(self, path: Path) -> str:
        """The checksum the cache's manifest recorded for ``path``, else computed now."""
        for entry in list_weights([self.name]):
            if entry.present and entry.path == path and entry.sha256 not in ("", "?"):
                return entry.sha256
        return checksum(path)

    def process(self, payload: dict[str, Any], **params: Any) -> dict[str, Any]:
        """Embed every object, tile or the frame of one ``cyx`` image (see the module docstring).

        Returns
        -------
        dict
            ``embedding`` (n, d) float32, ``obs`` (label and bbox per row, int64), ``columns``, ``uns``,
            and with ``patch_grid`` ``patches`` (n, gh, gw, views * dim).
        """
        p = self.merge_params(params, self.params)
        fixed = [name for name in LOAD_PARAMS if p[name] != self.params[name]]
        if fixed:
            raise ParamError(f"{self.name}: params {fixed} are fixed at load; load another instance to change them")
        _check_call_params(p, self.backbone.patch)
        arrays, _ = self.contract.read_payload(payload)
        names = _view_names(arrays["image"].shape[0], p["channels"])
        crops = self.crops(arrays, p)
        cls, mean, grid = self.embed(crops, p, len(names))
        chosen = TOKENS[p["tokens"]]
        parts = {"cls": cls, "mean": mean}
        dim = self.backbone.dim
        width = len(names) * len(chosen) * dim  # spelled out: reshape cannot infer it for no rows
        embedding = np.concatenate([parts[token] for token in chosen], axis=2).reshape(len(cls), width)
        out: dict[str, Any] = {
            "embedding": np.ascontiguousarray(embedding, np.float32),
            "obs": {
                "label": crops.labels.astype(np.int64),
                **{f"bbox_{key}": crops.boxes[:, k].astype(np.int64) for k, key in enumerate(BOX_KEYS)},
            },
            "columns": [f"{view}_{token}_{i}" for view in names for token in chosen for i in range(dim)],
            "uns": self.provenance(p),
        }
        if p["patch_grid"]:
            out["patches"] = grid
        return out

    def crops(self, arrays: dict[str, np.ndarray], p: dict[str, Any]) -> Crops:
        """The normalised crops of the payload's image, per ``granularity``, ``normalize`` and ``normalize_over``."""
        image = arrays["image"]
        low, high = p["percentiles"]
        over_image = p["normalize_over"] == "image"
        shown = normalize(image, p["normalize"], low, high) if over_image else image
        sizing = {"size": p["crop_size"], "scale": p["crop_scale"]}
        if p["granularity"] == "object":
            background = p["background"] if over_image else "keep"
            crops = object_crops(shown, arrays["labels"], background=background, **sizing)
        elif p["granularity"] == "tile":
            crops = tile_crops(shown, p["tile_size"])
        else:
            crops = frame_crop(shown)
        if over_image:
            return crops
        pixels = [normalize(crop, p["normalize"], low, high) for crop in crops.pixels]
        if p["granularity"] == "object" and p["background"] == "mask":  # zeroed after normalising, as over image
            ones = np.ones((1, *image.shape[1:]), np.float32)
            masks = object_crops(ones, arrays["labels"], background="mask", **sizing).pixels
            pixels = [crop * mask for crop, mask in zip(pixels, masks)]
        return replace(crops, pixels=pixels)

    def input_size(self, shape: tuple[int, ...], p: dict[str, Any]) -> tuple[int, int]:
        """The (H, W) a crop of ``shape`` is resized to: ``size`` square, or a frame's shorter side ``size``."""
        side = p["size"]
        if p["granularity"] != "frame":
            return side, side
        height, width = shape
        patch = self.backbone.patch
        longer = max(patch, int(max(height, width) * side / min(height, width) / patch + 0.5) * patch)
        return (side, longer) if height <= width else (longer, side)

    def embed(self, crops: Crops, p: dict[str, Any], views: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """CLS ``(n, views, dim)``, mean patch token ``(n, views, dim)`` and patch grid ``(n, gh, gw, views * dim)``."""
        import torch
        import torch.nn.functional as F

        mean = torch.tensor(IMAGENET_MEAN, device=self.device).view(1, 3, 1, 1)
        std = torch.tensor(IMAGENET_STD, device=self.device).view(1, 3, 1, 1)
        shape = crops.pixels[0].shape[1:] if crops.pixels else (p["size"], p["size"])
        height, width = self.input_size(shape, p)

        def prepared() -> Iterator[Any]:
            for crop in crops.pixels:
                stack = torch.from_numpy(channel_views(crop, p["channels"])).to(self.device)
                resized = F.interpolate(
                    stack, size=(height, width), mode="bilinear", antialias=True, align_corners=False
                )
                yield from ((resized - mean) / std).unbind(0)

        half = p["dtype"] != "float32"
        autocast = torch.autocast("cuda", dtype=getattr(torch, p["dtype"])) if half else contextlib.nullcontext()
        cls_parts, mean_parts, grid_parts = [], [], []
        with torch.inference_mode(), autocast:
            for batch in _batches(prepared(), p["batch_size"]):
                cls, patches = self.backbone.tokens(torch.stack(batch))
                cls_parts.append(cls.float().cpu().numpy())
                mean_parts.append(patches.float().mean(dim=1).cpu().numpy())
                if p["patch_grid"]:
                    grid_parts.append(patches.float().cpu().numpy())
        n, dim, patch = len(crops.pixels), self.backbone.dim, self.backbone.patch
        grid_h, grid_w = height // patch, width // patch
        cls = np.concatenate(cls_parts).reshape(n, views, dim) if n else np.zeros((0, views, dim), np.float32)
        mean = np.concatenate(mean_parts).reshape(n, views, dim) if n else np.zeros((0, views, dim), np.float32)
        grid = np.zeros((0, grid_h, grid_w, views * dim), np.float32)
        if grid_parts:
            tokens = np.concatenate(grid_parts).reshape(n, views, grid_h, grid_w, dim)
            grid = np.ascontiguousarray(tokens.transpose(0, 2, 3, 1, 4).reshape(n, grid_h, grid_w, views * dim))
        return cls, mean, grid

    def provenance(self, p: dict[str, Any]) -> dict[str, Any]:
        """The ``uns`` of a result: what model, which weights (and their sha256), and what it was shown."""
        shown = ("granularity", "crop_size", "crop_scale", "background", "tile_size", "channels", "normalize")
        preprocessing = {key: p[key] for key in (*shown, "normalize_over", "percentiles", "size", "tokens")}
        preprocessing.update(
            patch_size=self.backbone.patch,
            resize="bilinear, antialias, align_corners false",
            mean=list(IMAGENET_MEAN),
            std=list(IMAGENET_STD),
            dtype=p["dtype"],
        )
        return {
            "model": p["model"],
            "source": self.source,
            "weights": self.weights_name,
            "sha256": self.sha256,
            "preprocessing": preprocessing,
        }


class DINOv2(_DINO):
    """DINOv2 ViTs (patch 14; ``_reg`` entries with 4 registers): morphological profiles of cells, tiles or frames."""

    name = "dinov2"
    family = "dinov2"
    upstream = "facebookresearch/dinov2"
    param_spec = _param_spec("dinov2_vits14")
    obtain = "put your own state dict there"
    #: The released torch.hub checkpoints, for ``nahual weights fetch dinov2 NAME``.
    weights: ClassVar[dict[str, WeightSource]] = {
        f"dinov2_{arch}{reg}_pretrain.pth": WeightSource(
            f"{DINOV2_WEIGHTS}/dinov2_{arch}/dinov2_{arch}{reg}_pretrain.pth", sha256=""
        )
        for arch in ("vits14", "vitb14", "vitl14", "vitg14")
        for reg in ("", "_reg4")
    }

    def implied_weights(self, entry: str) -> str:
        """``<entry>_pretrain.pth``, a ``_reg`` entry's file named ``..._reg4_pretrain.pth`` as upstream names it."""
        return f"{entry.removesuffix('_reg')}_reg4_pretrain.pth" if entry.endswith("_reg") else f"{entry}_pretrain.pth"


class DINOv3(_DINO):
    """DINOv3 ViTs (patch 16, 4 storage tokens): morphological profiles of cells, tiles or frames."""

    name = "dinov3"
    family = "dinov3"
    upstream = "facebookresearch/dinov3"
    hub_module = "dinov3.hub.backbones"
    param_spec = _param_spec("dinov3_vits16")
    obtain = "DINOv3 weights are licence-gated: request them from Meta (https://ai.meta.com/dinov3/)"
    weights: ClassVar[dict[str, WeightSource]] = {}


#: obs keys of the crop boxes, in the order of :attr:`Crops.boxes`' columns.
BOX_KEYS = ("y_min", "x_min", "y_max", "x_max")


def _view_names(count: int, channels: str | list[int]) -> list[str]:
    """Names of the views of a ``count``-channel image: ``c0..`` (each), ``t0..`` (triplets), ``rgb``."""
    views = channel_views(np.zeros((count, 1, 1), np.float32), channels).shape[0]  # checks channels against c
    prefix = {"each": "c", "triplets": "t"}.get(channels) if isinstance(channels, str) else None
    return [f"{prefix}{i}" for i in range(views)] if prefix else ["rgb"]


def _check_call_params(p: dict[str, Any], patch: int | None) -> None:
    """Raise :class:`ParamError` for params whose spec cannot say it all: channels, percentiles, size."""
    channels, percentiles = p["channels"], p["percentiles"]
    if channels not in ("each", "triplets") and not (isinstance(channels, list) and _are_indices(channels)):
        raise ParamError(f"param 'channels' expects each, triplets or [i, j, k] channel indices, got {channels!r}")
    numbers = [isinstance(v, int | float) and not isinstance(v, bool) for v in percentiles]
    if not (len(percentiles) == 2 and all(numbers) and 0 <= percentiles[0] < percentiles[1] <= 100):
        raise ParamError(f"param 'percentiles' expects [low, high] with 0 <= low < high <= 100, got {percentiles!r}")
    if patch is not None and p["size"] % patch:
        raise ParamError(f"param 'size' expects a multiple of the patch size {patch}, got {p['size']}")


def _are_indices(values: list[Any]) -> bool:
    return len(values) == 3 and all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in values)


def _batches(items: Iterator[Any], size: int) -> Iterator[list[Any]]:
    """``items`` in lists of ``size`` (the last one shorter)."""
    while batch := list(itertools.islice(items, size)):
        yield batch
