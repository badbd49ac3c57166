"""What the bioimage.io tests and benchmark run inside a bioimageio environment: small packages, and the reference.

Only numpy is imported at the top, so the orchestrator imports the constants
from here too; onnx, torch and bioimageio.core are imported by the commands,
which run in an environment's own Python::

    ENV/bin/python tests/bioimageio_env.py onnx OUT_DIR         # conv-onnx/, instances/, per-sample/, ...
    ENV/bin/python tests/bioimageio_env.py torchscript OUT_DIR  # conv-torchscript/
    ENV/bin/python tests/bioimageio_env.py predict PACKAGE IMAGE.npy OUT.npy [--block N]

``onnx`` writes five package folders, each an ``rdf.yaml`` (format 0.5.4,
converted by bioimageio.spec on load) beside its weights:

- ``conv-onnx``: a stack of convolutions (5x5 then 3x3, no learned size
  change) with a receptive field of exactly :data:`RECEPTIVE_RADIUS` pixels
  each side, so that the declared output halo is exactly enough; input
  ``size: {min: 16, step: 8}`` along y and x, one channel, fixed
  zero-mean-unit-variance preprocessing (block-wise) and a sigmoid at the
  end: a probability map of two channels;
- ``instances``: the same network's first output channel alone, binarized at
  0.5 by its postprocessing: a mask, which nahual turns into instance labels;
- ``per-sample``: the same network with per-sample zero-mean-unit-variance
  (statistics of each whole image, so tiles would not see the same);
- ``tf-only``: weights in a format no nahual environment runs (TensorFlow.js);
- ``torch-only``: TorchScript weights alone (a placeholder file: only the
  choice of environment is tested with it).

``torchscript`` writes ``conv-torchscript``, the same network as TorchScript
(bit-equal weights). ``predict`` is the reference the adapter must match:
bioimageio.core's own ``predict`` of the whole image (``--block N``: its own
blockwise prediction with block size parameter N), saved as ``.npy`` (the
first output's array, batch axis dropped); it prints the seconds taken and
the process's peak RSS as JSON.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from pathlib import Path

import numpy as np

__all__ = ["HALO", "MEAN", "RECEPTIVE_RADIUS", "STD", "THRESHOLD", "blobs"]

#: Pixels each side that one output pixel of the test network sees (2 from the 5x5 conv, 1 from the 3x3).
RECEPTIVE_RADIUS = 3
#: The output halo the packages declare: exactly the receptive field.
HALO = RECEPTIVE_RADIUS
#: The fixed zero-mean-unit-variance preprocessing of the test packages.
MEAN, STD = 0.3, 0.25
#: Where the ``instances`` package binarizes its first output channel.
THRESHOLD = 0.5
#: Hidden channels of the test network.
HIDDEN = 4


def blobs(shape: tuple[int, int], count: int, seed: int) -> np.ndarray:
    """A float32 image of ``count`` bright Gaussian blobs on a noisy background (values about 0 to 1)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.ogrid[: shape[0], : shape[1]]
    image = 0.05 * rng.standard_normal(shape).astype(np.float32)
    for _ in range(count):
        cy, cx = (rng.uniform(0, n) for n in shape)
        sigma = rng.uniform(2.5, 6.0)
        image += np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * sigma**2)).astype(np.float32)
    return image


def _kernels() -> list[tuple[np.ndarray, np.ndarray]]:
    """The network's (weight, bias) pairs: 1 -> HIDDEN channels (5x5), HIDDEN -> 2 (3x3); fixed by a seed."""
    rng = np.random.default_rng(42)
    first = rng.normal(0, 0.3, (HIDDEN, 1, 5, 5)).astype(np.float32)
    second = rng.normal(0, 0.3, (2, HIDDEN, 3, 3)).astype(np.float32)
    return [(first, rng.normal(0, 0.1, HIDDEN).astype(np.float32)), (second, np.array([0.2, -0.4], np.float32))]


def _axes(tensor: str, channels: int = 2) -> str:
    """The axes of a tensor in ``rdf.yaml``: batch, channel, and y/x parameterized (inputs) or referencing them."""
    if tensor == "input":
        size = "size: {min: 16, step: 8}"
        channel = "{type: channel, channel_names: [raw]}"
    else:
        size = f"size: {{tensor_id: raw, axis_id: AXIS}}, halo: {HALO}"
        names = ("foreground", "background")[:channels]
        channel = f"{{type: channel, channel_names: [{', '.join(names)}]}}"
    space = [f"{{type: space, id: {axis}, {size.replace('AXIS', axis)}}}" for axis in ("y", "x")]
    return "[{type: batch}, " + channel + ", " + ", ".join(space) + "]"


def _rdf(name: str, weights: str, preprocessing: str, postprocessing: str, channels: int = 2) -> str:
    """A format-0.5.4 model ``rdf.yaml`` with one input ``raw`` and one output ``prob`` of ``channels``."""
    return f"""format_version: 0.5.4
type: model
name: {name}
description: A convolution stack with a known receptive field, made by nahual's tests.
id: nahual-test/{name}
version: 1.2.0
license: MIT
authors: [{{name: Nahual Tests, affiliation: nahual}}]
cite: [{{text: "nahual test package", url: "https://example.org/nahual"}}]
inputs:
  - id: raw
    axes: {_axes("input")}
    data: {{type: float32}}
    preprocessing: {preprocessing}
outputs:
  - id: prob
    axes: {_axes("output", channels)}
    data: {{type: float32}}
    postprocessing: {postprocessing}
weights:
{weights}
"""


FIXED = f"[{{id: fixed_zero_mean_unit_variance, kwargs: {{mean: {MEAN}, std: {STD}}}}}]"
PER_SAMPLE = "[{id: zero_mean_unit_variance, kwargs: {axes: [y, x]}}]"
BINARIZE = f"[{{id: binarize, kwargs: {{threshold: {THRESHOLD}}}}}]"


def _onnx_model(channels: int = 2) -> bytes:
    """The network (its first ``channels`` outputs) as an ONNX graph (opset 17, dynamic y and x), sigmoid included."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    (w1, b1), (w2, b2) = _kernels()
    w2, b2 = w2[:channels], b2[:channels]
    nodes = [
        helper.make_node("Conv", ["raw", "w1", "b1"], ["h1"], pads=[2, 2, 2, 2]),
        helper.make_node("Relu", ["h1"], ["a1"]),
        helper.make_node("Conv", ["a1", "w2", "b2"], ["h2"], pads=[1, 1, 1, 1]),
        helper.make_node("Sigmoid", ["h2"], ["prob"]),
    ]
    inits = [numpy_helper.from_array(a, n) for n, a in (("w1", w1), ("b1", b1), ("w2", w2), ("b2", b2))]
    graph = helper.make_graph(
        nodes,
        "nahual-conv",
        [helper.make_tensor_value_info("raw", TensorProto.FLOAT, [1, 1, "y", "x"])],
        [helper.make_tensor_value_info("prob", TensorProto.FLOAT, [1, channels, "y", "x"])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model.SerializeToString()


def _write(folder: Path, rdf: str, files: dict[str, bytes]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        (folder / name).write_bytes(data)
    (folder / "rdf.yaml").write_text(rdf)


def write_onnx_packages(out: Path) -> None:
    """``conv-onnx``, ``instances``, ``per-sample``, ``tf-only`` and ``torch-only`` under ``out``."""
    weights = {"weights.onnx": _onnx_model()}
    onnx = "  onnx: {source: weights.onnx, opset_version: 17}"
    _write(out / "conv-onnx", _rdf("conv-onnx", onnx, FIXED, "[]"), weights)
    _write(out / "instances", _rdf("instances", onnx, FIXED, BINARIZE, 1), {"weights.onnx": _onnx_model(1)})
    _write(out / "per-sample", _rdf("per-sample", onnx, PER_SAMPLE, "[]"), weights)
    tfjs = "  tensorflow_js: {source: model.json, tensorflow_version: 2.14.0}"
    _write(out / "tf-only", _rdf("tf-only", tfjs, FIXED, "[]"), {"model.json": b"{}"})
    torchscript = "  torchscript: {source: weights.pt, pytorch_version: 2.13.0}"
    _write(out / "torch-only", _rdf("torch-only", torchscript, FIXED, "[]"), {"weights.pt": b"never read"})


def write_torchscript_package(out: Path) -> None:
    """``conv-torchscript`` under ``out``: the network scripted with torch, the same weights."""
    import io

    import torch

    (w1, b1), (w2, b2) = _kernels()

    class Net(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.first = torch.nn.Conv2d(1, HIDDEN, 5, padding=2)
            self.second = torch.nn.Conv2d(HIDDEN, 2, 3, padding=1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.sigmoid(self.second(torch.relu(self.first(x))))

    net = Net().eval()
    with torch.no_grad():
        for layer, (w, b) in ((net.first, (w1, b1)), (net.second, (w2, b2))):
            layer.weight.copy_(torch.from_numpy(w))
            layer.bias.copy_(torch.from_numpy(b))
    buffer = io.BytesIO()
    torch.jit.save(torch.jit.script(net), buffer)
    version = torch.__version__.split("+")[0]
    weights = f"  torchscript: {{source: weights.pt, pytorch_version: {version}}}"
    _write(out / "conv-torchscript", _rdf("conv-torchscript", weights, FIXED, "[]"), {"weights.pt": buffer.getvalue()})


def predict(package: Path, image: Path, out: Path, block: int | None) -> None:
    """bioimageio.core's own prediction of the whole image (or blockwise), its first output saved to ``out``."""
    import bioimageio.core

    started = time.perf_counter()
    model = bioimageio.core.load_model_description(str(package / "rdf.yaml"), perform_io_checks=False)
    data = np.load(image)
    tensor = data.reshape((1, 1, *data.shape))
    sample = bioimageio.core.predict(model=model, inputs=tensor, blocksize_parameter=block)
    first = next(iter(sample.members.values()))
    np.save(out, np.asarray(first.data)[0])
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(json.dumps({"seconds": time.perf_counter() - started, "peak_rss_bytes": peak}))


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    for name in ("onnx", "torchscript"):
        commands.add_parser(name).add_argument("out", type=Path)
    reference = commands.add_parser("predict")
    for name in ("package", "image", "out"):
        reference.add_argument(name, type=Path)
    reference.add_argument("--block", type=int)
    args = parser.parse_args(argv)
    if args.command == "onnx":
        write_onnx_packages(args.out)
    elif args.command == "torchscript":
        write_torchscript_package(args.out)
    else:
        predict(args.package, args.image, args.out, args.block)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
