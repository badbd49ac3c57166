"""The ``bioimageio`` models: any BioImage Model Zoo package, run by bioimageio.core in its weights' environment.

Layer: model zoo. A package (``rdf.yaml``/``bioimageio.yaml`` with its weights)
says what a model takes and gives; this adapter turns that into a nahual
contract and lets bioimageio.core do the rest, pre- and post-processing
included. Three model names share it, one per environment, each running the
weight formats its environment has a runtime for: ``bioimageio`` (ONNX,
``envs/bioimageio-onnx``), ``bioimageio-torch`` (TorchScript and PyTorch
state dicts, ``envs/bioimageio-torch``) and ``bioimageio-tf`` (TensorFlow 2
SavedModel bundles and Keras HDF5, ``envs/bioimageio-tf``). A package whose
weights the chosen name does not run gets one line naming the one that does.

``source`` is a package folder, its ``.zip``, its yaml file, or the name of a
package in nahual's weights cache (``nahual weights fetch bioimageio
affable-shark``, ``nahual weights add bioimageio NAME PATH``); a server never
downloads (:mod:`._bioimageio_package`).

The contract is the package's: its input axes (``b`` dropped, ``c``/``t``/
``z``/``y``/``x`` kept in its order), dtype and channels; the halo is the
input context its output's declared halo asks for. Each block goes through
bioimageio.core's own whole-sample prediction: padded on every side by the
halo with the package's padding (so that at the image's border it sees what
bioimageio.core's whole-image prediction sees), padded further to the next
size of ``min + n * step`` the package takes, and cropped back; nahual keeps
the block's core, whose every pixel saw only real pixels. Tiles then equal
the whole-image prediction wherever the package's processing is block-wise;
a package whose pre-processing takes statistics of a whole sample (per-image
percentiles, mean and variance) gets whole frames instead, unless
``per_tile_statistics`` says that each tile may compute its own.

The output is ``labels`` when the output's last processing gives instances
(StarDist's or Cellpose's post-processing) or a mask (``binarize``, whose
connected components become the instances; nahual stitches them across
tiles), else an ``array`` written as an OME-Zarr image
(``IMAGE/predictions/NAME``). ``info`` and every output's provenance carry
the package's name, id, version, license, authors and citation (the
contract's ``about``).
"""

from __future__ import annotations

import re
from dataclasses import replace
from typing import Any, ClassVar

import numpy as np

from ..errors import ConfigError, ContractError, ParamError, WeightsError
from ..model import Contract, Model, Param
from ..weights import WeightSource
from ._bioimageio_package import INSTANCE_OPS, Layout, about, description_file, read_description, read_layout

__all__ = ["FORMAT_MODELS", "BioImageIO", "BioImageIOTF", "BioImageIOTorch"]

#: The model name (and so the environment, ``envs/<name>``) that runs each weight format, in preference order.
FORMAT_MODELS = {
    "onnx": "bioimageio",
    "torchscript": "bioimageio-torch",
    "pytorch_state_dict": "bioimageio-torch",
    "tensorflow_saved_model_bundle": "bioimageio-tf",
    "keras_hdf5": "bioimageio-tf",
}
#: The environment of each model name.
ENVIRONMENTS = {
    "bioimageio": "bioimageio-onnx",
    "bioimageio-torch": "bioimageio-torch",
    "bioimageio-tf": "bioimageio-tf",
}
#: Where the zoo serves a package as one zip (what the bioimage.io website's download button fetches).
ZOO_ZIP = "https://hypha.aicell.io/bioimage-io/artifacts/{id}/create-zip-file"
_DEVICE = re.compile(r"auto|cpu|cuda(:\d+)?")


class BioImageIO(Model):
    """A bioimage.io package with ONNX weights, run by bioimageio.core on onnxruntime."""

    name = "bioimageio"
    packages = ("bioimageio.core", "onnxruntime")
    #: The weight formats this model name runs, preferred first.
    formats: ClassVar[tuple[str, ...]] = ("onnx",)
    contract = Contract(inputs=("image",), output="array", tiling=True, halo=0)
    param_spec = (
        Param("source", "", "package folder, .zip or yaml file, or a package name in the weights cache"),
        Param(
            "weights_format",
            "auto",
            "the package's weights to run; auto: the first this model runs",
            choices=("auto", *FORMAT_MODELS),
        ),
        Param("output", None, "the package's output tensor to write; null: its first", type=str),
        Param("device", "auto", "cpu, cuda or cuda:N; auto: a GPU when one is there"),
        Param("threads", None, "torch CPU threads (process-wide); null leaves the default", type=int, min=1),
        Param("per_tile_statistics", False, "tile a package whose processing takes whole-image statistics"),
        Param("trust_code", False, "run Python code the package ships (architecture file, custom processing)"),
    )
    #: Packages ``nahual weights fetch bioimageio NAME`` knows (the zoo publishes no checksum: fetch records it).
    weights: ClassVar[dict[str, WeightSource]] = {
        name: WeightSource(ZOO_ZIP.format(id=name), sha256="", archive=True) for name in ("affable-shark",)
    }

    def load(self, **params: Any) -> None:
        """Read the package, choose its weights, build bioimageio.core's pipeline and this instance's contract.

        Raises
        ------
        ParamError
            Without a ``source``, or for a malformed ``device``.
        WeightsError
            When the package is not there, or its weights are a URL.
        ConfigError
            For a description that does not validate, weights this model does
            not run (naming the one that does), package code without
            ``trust_code``, or a device that is not here.
        ContractError
            For axes or tensors nahual cannot map.
        """
        super().load(**params)
        p = self.params
        if not p["source"]:
            raise ParamError(f"{self.name}: param 'source' is required (a package folder, zip, yaml or cached name)")
        if not _DEVICE.fullmatch(p["device"]):
            raise ParamError(f"{self.name}: param 'device' expects auto, cpu, cuda or cuda:N, got {p['device']!r}")
        path = description_file(p["source"])
        descr = read_description(path)
        weights_format = self.choose_format(descr)
        self._check_local(descr, weights_format)
        self.layout = read_layout(descr, p["output"])
        self.form = output_form(descr, self.layout)
        self.kind = "array" if self.form == "array" else "labels"
        self.pipeline = self._pipeline(descr, weights_format)
        exact = not self.pipeline.has_non_blockwise_preprocessing and (
            self.kind == "labels" or not self.pipeline.has_non_blockwise_postprocessing
        )
        data = descr.inputs[0].data
        dtype = str((data[0] if isinstance(data, (list, tuple)) else data).type)
        self.contract = replace(
            type(self).contract,
            axes=(self.layout.axes,),
            dtype=dtype if dtype.startswith("float") else None,
            channels=self.layout.channels,
            output=self.kind,
            tiling=exact or p["per_tile_statistics"],
            halo=max(self.layout.halo.values(), default=0),
            about=about(descr, path, self.layout, weights_format),
        )

    def choose_format(self, descr: Any) -> str:
        """The weight format to run: the one asked for, else the first of :attr:`formats` the package has.

        Raises
        ------
        ConfigError
            Naming the model (and environment) that runs the package's weights, or saying none does.
        """
        present = [f for f, entry in descr.weights if entry is not None]
        asked = self.params["weights_format"]
        wanted = self.formats if asked == "auto" else (asked,)
        chosen = next((f for f in wanted if f in present and f in self.formats), None)
        if chosen is not None:
            return chosen
        if asked != "auto" and asked not in present:
            raise ConfigError(f"package {descr.name!r} has no {asked} weights; it has {', '.join(present)}")
        runnable = [f for f in present if f in FORMAT_MODELS]
        if not runnable:
            raise ConfigError(
                f"package {descr.name!r} has weights in {', '.join(present)}, which no nahual environment runs "
                f"(they run {', '.join(FORMAT_MODELS)})"
            )
        other = FORMAT_MODELS[asked if asked != "auto" else runnable[0]]
        raise ConfigError(
            f"package {descr.name!r} has {', '.join(runnable)} weights; model {self.name!r} runs "
            f"{', '.join(self.formats)}: load it with model {other!r} (environment envs/{ENVIRONMENTS[other]})"
        )

    def _check_local(self, descr: Any, weights_format: str) -> None:
        """Refuse weights that are a URL (a server never downloads) and package code unless trusted."""
        from bioimageio.spec.model import v0_5

        entry = descr.weights[weights_format]
        if str(entry.source).startswith(("http://", "https://")):
            raise WeightsError(
                f"package {descr.name!r} points at its {weights_format} weights on the web ({entry.source}); "
                "make a local package with `bioimageio package SOURCE OUT.zip` and use that"
            )
        code = [
            f"the {op.id} processing of {tensor.id}"
            for tensor in (*descr.inputs, *descr.outputs)
            for op in getattr(tensor, "preprocessing", getattr(tensor, "postprocessing", []))
            if isinstance(op, v0_5.CustomProcessingDescr)
        ]
        if isinstance(getattr(entry, "architecture", None), v0_5.ArchitectureFromFileDescr):
            code.append(f"the architecture file {entry.architecture.source}")
        if code and not self.params["trust_code"]:
            raise ConfigError(
                f"package {descr.name!r} ships Python code ({'; '.join(code)}) that loading would run as you; "
                "pass trust_code: true if you trust its authors"
            )

    def _pipeline(self, descr: Any, weights_format: str) -> Any:
        """bioimageio.core's prediction pipeline on the chosen device, loaded.

        Raises
        ------
        ConfigError
            When the device is not here, or bioimageio.core cannot build the pipeline.
        """
        from bioimageio.core import create_prediction_pipeline

        devices = self.devices(weights_format)
        try:
            pipeline = create_prediction_pipeline(descr, weights_format=weights_format, devices=devices)
            pipeline.load()
        except Exception as exc:  # the runtime's own errors (onnxruntime, torch, TensorFlow): one line
            text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ConfigError(
                f"package {descr.name!r} does not load with its {weights_format} weights: {text}"
            ) from exc
        return pipeline

    def devices(self, weights_format: str) -> list[str] | None:
        """bioimageio.core's ``devices`` for the ``device`` param: onnxruntime providers or torch devices.

        Raises
        ------
        ConfigError
            When a GPU is asked for and the runtime sees none.
        """
        device = self.params["device"]
        if weights_format != "onnx":
            return None
        import onnxruntime

        providers = onnxruntime.get_available_providers()
        gpu = "CUDAExecutionProvider" in providers
        if device.startswith("cuda") and not gpu:
            raise ConfigError(
                f"{self.name}: device {device!r} asked for, but onnxruntime {onnxruntime.__version__} has only "
                f"{', '.join(providers)} (install onnxruntime-gpu for CUDA)"
            )
        return ["CUDAExecutionProvider" if gpu and device != "cpu" else "CPUExecutionProvider"]

    def process(self, payload: dict[str, Any], **params: Any) -> dict[str, np.ndarray]:
        """Predict one block; its params are fixed at load (a call may repeat them, not change them)."""
        changed = [k for k, v in self.merge_params(params, self.params).items() if v != self.params[k]]
        if changed:
            raise ParamError(f"{self.name}: params {changed} are fixed at load; load another instance to change them")
        arrays, _ = self.contract.read_payload(payload)
        image = arrays["image"]
        channels = self.layout.channels
        if channels is not None and image.shape[self.layout.axes.index("c")] != channels:
            found = image.shape[self.layout.axes.index("c")]
            raise ContractError(
                f"the package takes {channels} channel(s), got {found}: choose them with the channel option"
            )
        predicted = predict_block(self.pipeline, self.layout, image)
        return {"labels": to_labels(predicted, self.form)} if self.kind == "labels" else {"array": predicted}

    def close(self) -> None:
        """Free what the pipeline holds (device memory)."""
        pipeline = getattr(self, "pipeline", None)
        if pipeline is not None:
            pipeline.unload()


class BioImageIOTorch(BioImageIO):
    """A bioimage.io package with TorchScript or PyTorch state-dict weights, run by bioimageio.core on torch."""

    name = "bioimageio-torch"
    packages = ("bioimageio.core", "torch")
    formats = ("torchscript", "pytorch_state_dict")
    weights: ClassVar[dict[str, WeightSource]] = {}  # packages live in the cache under bioimageio

    def devices(self, weights_format: str) -> list[str]:
        """The torch device of the ``device`` param (and the ``threads``), checked against this machine."""
        from ._torch import torch_device

        return [str(torch_device(self.name, self.params["device"], self.params["threads"]))]


class BioImageIOTF(BioImageIO):
    """A bioimage.io package with TensorFlow 2 SavedModel or Keras HDF5 weights, run by bioimageio.core."""

    name = "bioimageio-tf"
    packages = ("bioimageio.core", "tensorflow")
    formats = ("tensorflow_saved_model_bundle", "keras_hdf5")
    weights: ClassVar[dict[str, WeightSource]] = {}  # packages live in the cache under bioimageio

    def devices(self, weights_format: str) -> list[str] | None:
        """None (TensorFlow places the model itself); a GPU asked for must be there.

        Raises
        ------
        ConfigError
            When a GPU is asked for and TensorFlow sees none.
        """
        import tensorflow as tf

        if self.params["device"].startswith("cuda") and not tf.config.list_physical_devices("GPU"):
            raise ConfigError(f"{self.name}: device {self.params['device']!r} asked for, but TensorFlow sees no GPU")
        return None


def output_form(descr: Any, layout: Layout) -> str:
    """What the output's last processing gives: ``instances`` (labels as they are), a ``mask``, or an ``array``.

    Raises
    ------
    ContractError
        For instances or a mask in more than one channel.
    """
    target = next(t for t in descr.outputs if str(t.id) == layout.output_id)
    steps = [op.id for op in target.postprocessing if op.id != "ensure_dtype"]
    last = steps[-1] if steps else None
    form = "instances" if last in INSTANCE_OPS else "mask" if last == "binarize" else "array"
    channel = next((a for a in target.axes if a.type == "channel"), None)
    if form != "array" and channel is not None and len(channel.channel_names) != 1:
        raise ContractError(f"output {layout.output_id!r} gives {last} labels in {len(channel.channel_names)} channels")
    return form


def predict_block(pipeline: Any, layout: Layout, image: np.ndarray) -> np.ndarray:
    """bioimageio.core's whole-sample prediction of one block, padded by the halo and to a valid size, cropped back.

    A package whose pre-processing takes statistics of the whole sample is
    padded by the halo only, as bioimageio.core pads a whole image (the
    statistics include the padding): its network must take that size, as it
    must in bioimageio.core's own whole-image prediction.

    Returns
    -------
    numpy.ndarray
        The output on the block's pixels, ``c`` first (a singleton without one), then the input's other axes.
    """
    from bioimageio.core import Sample, Tensor
    from bioimageio.core.common import PadWidth

    data = np.expand_dims(image, [i for i, a in enumerate(layout.input_letters) if a == "b"])
    sizes = dict(zip(layout.axes, image.shape, strict=True))
    pads, crops = {}, {}
    to_valid = not pipeline.has_non_blockwise_preprocessing
    for axis, dim in zip(layout.input_letters, layout.input_dims, strict=True):
        if axis in layout.sizes:
            left = layout.halo.get(axis, 0)
            right = layout.padded_size(axis, sizes[axis]) - sizes[axis] - left if to_valid else left
            pads[dim] = PadWidth(left, right)
            crops[axis] = slice(left, left + sizes[axis])
    sample = Sample(members={layout.input_id: Tensor.from_numpy(data, dims=layout.input_dims)}, stat={}, id="block")
    sample = sample.pad({layout.input_id: pads}, mode=pipeline.pad_mode)
    out = pipeline.predict_sample_without_blocking(sample, skip_input_padding=True, skip_output_cropping=True)
    array = np.asarray(out.members[layout.output_id].data)
    array = array[tuple(0 if a == "b" else crops.get(a, slice(None)) for a in layout.output_letters)]
    kept = layout.output_letters.replace("b", "")
    if "c" not in kept:
        array, kept = array[np.newaxis], "c" + kept
    return np.transpose(array, [kept.index(a) for a in "c" + layout.axes.replace("c", "")])


def to_labels(predicted: np.ndarray, form: str) -> np.ndarray:
    """uint32 instance labels of a one-channel prediction: instances as they are, a mask's connected components."""
    plane = predicted[0]
    if form == "instances":
        return plane.astype(np.uint32)
    from scipy import ndimage

    labels, _ = ndimage.label(plane > 0)
    return labels.astype(np.uint32)
