"""The array layouts of the earlier nahual's model servers, and our payloads and results in those layouts.

Layer: beside the model API (numpy, :class:`~nahual.model.Contract` and the
track node ids of :mod:`nahual.lineage`). An earlier-wire server takes one
array and answers one array or dict, and which layout it expects is known
only out of band, per model. :data:`LAYOUTS` holds the ones labs rely on;
each converts both ways, for both sides of the wire (``docs/protocol.md``,
*The earlier wire*):

========== ============================== =================================== ==========================
layout     the server takes               it answers                          our output kind
========== ============================== =================================== ==========================
labels     (Z, Y, X)                      labels (1, Y, X), z max-projected   labels (Cellpose)
embeddings (N, C, Z, Y, X), Y, X multiples (N, D * ceil(C / 3)) float32       embeddings (DINOv2)
           of 14                          (channels in triplets)
tracks     (2, T, Y, X): images, masks    {source_frame, source_label,        tracks (Trackastra)
                                          target_frame, target_label, weight}
array      any array                      an array (or a dict)                array
========== ============================== =================================== ==========================

On the client side (``to_upstream``, ``from_upstream``) a layout turns the
payloads the streaming layer builds for its :attr:`Layout.contract` into the
server's array and its reply into our result; on the server side
(``serve``) it turns an old client's array into payloads for one of our
models, runs them, and lays the results out as that client expects.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import Any, ClassVar

import numpy as np

from .errors import ContractError, PayloadError, ProtocolError
from .lineage import NODE_ID_STRIDE, tracking_result
from .model import Contract

__all__ = ["KNOWN_MODELS", "LAYOUTS", "Layout", "layout_named", "layout_of"]

#: Upstream model servers by name -> the layout they use.
KNOWN_MODELS = {"cellpose": "labels", "dinov2": "embeddings", "trackastra": "tracks"}
#: The patch size of the DINOv2 servers: Y and X must be multiples of it.
DINO_PATCH = 14
#: Labels sent as float32 in a stacked (2, T, Y, X) array stay exact below this.
FLOAT32_EXACT = 2**24
#: The edge lists of a tracks reply.
EDGE_KEYS = ("source_frame", "source_label", "target_frame", "target_label")

#: Runs one of our payloads on the model and returns its result (server side).
Run = Callable[[Any], Any]


class Layout:
    """One upstream layout: the contract a client of such a server sees, and the conversions both ways."""

    name: ClassVar[str] = "array"
    #: What the streaming layer sees when it drives a server of this layout.
    contract: ClassVar[Contract] = Contract(output="array")
    #: Load params our model gets for this layout, where it has them (server side).
    load_defaults: ClassVar[Mapping[str, Any]] = MappingProxyType({})

    def to_upstream(self, data: Any) -> np.ndarray:
        """The array to send for one of our payloads (client side)."""
        if isinstance(data, dict) and "image" in data:
            data = data["image"]
        if not isinstance(data, np.ndarray):
            raise PayloadError(f"the earlier nahual wire sends one array, got a {type(data).__name__}")
        return data

    def from_upstream(self, reply: Any, data: Any) -> Any:
        """Our result for the server's reply to ``data`` (client side): the reply itself."""
        return reply

    def serve(self, array: np.ndarray, contract: Contract, run: Run) -> Any:
        """The reply to an old client's array (server side): the model's result on the array itself.

        A result that is a dict of one array (``{"output": array}``) is answered with that array.
        """
        result = run(array)
        if isinstance(result, dict) and len(result) == 1 and isinstance(next(iter(result.values())), np.ndarray):
            return next(iter(result.values()))
        return result


class _Labels(Layout):
    name = "labels"
    contract = Contract(axes=("yx",), dtype="float32", output="labels", tiling=True, halo=64)

    def to_upstream(self, data: Any) -> np.ndarray:
        image = _image(data, "yx")
        return image[np.newaxis]

    def from_upstream(self, reply: Any, data: Any) -> dict[str, np.ndarray]:
        image = _image(data, "yx")
        labels = _reply_array(reply, "labels")
        if labels.ndim == 3 and labels.shape[0] == 1:
            labels = labels[0]
        if labels.shape != image.shape:
            raise ProtocolError(f"the server answered labels of shape {labels.shape} for a {image.shape} image")
        return {"labels": labels}

    def serve(self, array: np.ndarray, contract: Contract, run: Run) -> np.ndarray:
        if array.ndim == 2 or (array.ndim == 3 and array.shape[0] == 1):
            image, axes = array.reshape(array.shape[-2:]), "yx"
        elif array.ndim == 3:
            image, axes = array, "zyx"
        else:
            raise ContractError(f"this server takes a (Z, Y, X) or (Y, X) array, got shape {array.shape}")
        labels = np.asarray(_field(run({"image": _cast(image, contract), "axes": axes}), "labels"))
        if labels.ndim == 3:  # z is max-projected, as the upstream servers do, then numbered 1..n again
            _, inverse = np.unique(np.concatenate([[0], labels.max(axis=0).ravel()]), return_inverse=True)
            labels = inverse[1:].reshape(labels.shape[1:]).astype(np.uint32)
        return labels[np.newaxis]


class _Embeddings(Layout):
    name = "embeddings"
    contract = Contract(axes=("cyx",), dtype="float32", channels=1, output="embeddings", tiling=False)
    load_defaults = MappingProxyType({"granularity": "frame", "channels": "triplets"})

    def to_upstream(self, data: Any) -> np.ndarray:
        image = _image(data, "cyx")
        pad = [(0, 0)] + [(0, -n % DINO_PATCH) for n in image.shape[1:]]  # zeros to multiples of the patch
        return np.pad(image, pad)[np.newaxis, :, np.newaxis]

    def from_upstream(self, reply: Any, data: Any) -> dict[str, Any]:
        embedding = np.atleast_2d(_reply_array(reply, "an embedding"))
        if embedding.ndim != 2 or embedding.shape[0] != 1 or embedding.dtype.kind not in "biuf":
            raise ProtocolError(f"the server answered {embedding.dtype} {embedding.shape} for one image, not (1, D)")
        padded = [int(n) for n in self.to_upstream(data).shape[-2:]]
        return {"embedding": embedding.astype(np.float32), "uns": {"earlier_wire": {"padded_yx": padded}}}

    def serve(self, array: np.ndarray, contract: Contract, run: Run) -> np.ndarray:
        if array.ndim != 5:
            raise ContractError(f"this server takes an (N, C, Z, Y, X) array, got shape {array.shape}")
        rows = []
        for image in array[:, :, 0]:  # the first z plane, as the upstream servers take
            image = np.pad(_cast(image, contract), [(0, -image.shape[0] % 3), (0, 0), (0, 0)])
            embedding = np.asarray(_field(run({"image": image, "axes": "cyx"}), "embedding"))
            if embedding.ndim != 2 or embedding.shape[0] != 1:
                raise ContractError(
                    f"the earlier layout needs one embedding per image, the model gave {embedding.shape}: "
                    "load it with granularity frame"
                )
            rows.append(embedding[0])
        return np.stack(rows).astype(np.float32) if rows else np.zeros((0, 0), np.float32)


class _Tracks(Layout):
    name = "tracks"
    contract = Contract(
        axes=("tyx",), inputs=("image", "labels"), dtype="float32", output="tracks", tiling=False, halo=0
    )

    def to_upstream(self, data: Any) -> np.ndarray:
        image, labels = _image(data, "tyx"), np.asarray(data["labels"])
        if labels.size and labels.max() >= FLOAT32_EXACT:
            raise PayloadError(
                f"the earlier wire stacks masks with the float32 images, exact below {FLOAT32_EXACT} labels; "
                f"these labels reach {labels.max()}"
            )
        return np.stack([image.astype(np.float32, copy=False), labels.astype(np.float32)])

    def from_upstream(self, reply: Any, data: Any) -> dict[str, Any]:
        from .models.laptrack import object_nodes  # the nodes our trackers give: one per (frame, label)

        if not isinstance(reply, dict) or not all(isinstance(reply.get(k), list) for k in EDGE_KEYS):
            found = sorted(reply) if isinstance(reply, dict) else type(reply).__name__
            raise ProtocolError(f"a tracks server answers the lists {', '.join(EDGE_KEYS)}; got {found}")
        try:
            frame_source, label_source, frame_target, label_target = (np.asarray(reply[k], np.int64) for k in EDGE_KEYS)
            source = frame_source * NODE_ID_STRIDE + label_source
            target = frame_target * NODE_ID_STRIDE + label_target
            pairs = np.sort(np.stack([source, target], axis=1).reshape(-1, 2), axis=1)  # forward in time
        except (TypeError, ValueError) as exc:
            raise ProtocolError(f"a tracks reply holds equally long lists of integers: {exc}") from None
        return tracking_result(object_nodes(np.asarray(data["labels"])), {"source": pairs[:, 0], "target": pairs[:, 1]})

    def serve(self, array: np.ndarray, contract: Contract, run: Run) -> dict[str, list[Any]]:
        if array.ndim != 4 or array.shape[0] != 2:
            raise ContractError(f"this server takes images and masks stacked as (2, T, Y, X), got shape {array.shape}")
        masks = array[1]
        if masks.size and (masks.min() < 0 or not np.array_equal(masks, np.round(masks))):
            raise ContractError("the masks (the second of the stacked arrays) must hold whole numbers >= 0")
        payload = {"image": _cast(array[0], contract), "labels": masks.astype(np.uint32), "axes": "tyx"}
        edges = _field(run(payload), "edges")
        source, target = (np.asarray(edges[key], np.int64) for key in ("source", "target"))
        return {
            "source_frame": (source // NODE_ID_STRIDE).tolist(),
            "source_label": (source % NODE_ID_STRIDE).tolist(),
            "target_frame": (target // NODE_ID_STRIDE).tolist(),
            "target_label": (target % NODE_ID_STRIDE).tolist(),
            "weight": [1.0] * len(source),  # our trackers keep links, not their scores
        }


#: Every layout by name.
LAYOUTS: dict[str, Layout] = {layout.name: layout for layout in (Layout(), _Labels(), _Embeddings(), _Tracks())}


def layout_named(name: str) -> Layout:
    """The layout of a server: a known upstream model's (:data:`KNOWN_MODELS`), a layout's own name, else ``array``."""
    return LAYOUTS[KNOWN_MODELS.get(name, name if name in LAYOUTS else "array")]


def layout_of(contract: Contract) -> Layout:
    """The layout an old client of one of our models expects, from the model's output kind."""
    return LAYOUTS.get(contract.output, LAYOUTS["array"])


def _image(data: Any, axes: str) -> np.ndarray:
    """The payload's image, which must have ``axes``."""
    if not isinstance(data, dict) or "image" not in data:
        found = sorted(data) if isinstance(data, dict) else type(data).__name__
        raise PayloadError(f"expected a payload with an image, got {found}")
    image = np.asarray(data["image"])
    given = data.get("axes") or axes
    if given != axes or image.ndim != len(axes):
        raise ContractError(f"this earlier-wire server takes {axes} images, got axes {given!r} of shape {image.shape}")
    return image


def _reply_array(reply: Any, what: str) -> np.ndarray:
    if not isinstance(reply, np.ndarray):
        raise ProtocolError(f"the server answered a {type(reply).__name__} where {what} array was expected")
    return reply


def _field(result: Any, key: str) -> Any:
    """``result[key]`` of one of our models' results, or a :class:`ContractError` saying what it returned."""
    if not isinstance(result, dict) or key not in result:
        found = sorted(result) if isinstance(result, dict) else type(result).__name__
        raise ContractError(f"the model returned {found}, without the {key!r} this layout sends")
    return result[key]


def _cast(image: np.ndarray, contract: Contract) -> np.ndarray:
    """The image in the dtype the model asks for (as the streaming layer sends it)."""
    return image.astype(contract.dtype, copy=False) if contract.dtype else image
