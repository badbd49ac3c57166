"""The model author API: subclass :class:`Model`, declare a :class:`Contract`.

A model is one small file::

    class Blur(nahual.Model):
        name = "blur"
        packages = ("scipy",)
        contract = nahual.Contract(axes=("yx",), output="labels")

        def load(self, sigma=1.0):
            import scipy.ndimage          # heavy imports belong in load
            self.sigma = sigma

        def process(self, payload, **params):
            ...
            return {"labels": labels}

The server creates one instance per distinct (model, load params), calls
``load`` once, then ``process`` for every request. Payloads are dicts of
numpy arrays and JSON values (see ``docs/protocol.md``); arrays that arrive
from the network are read-only views, so copy before writing into them.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, ClassVar

import numpy as np

from .errors import ContractError

__all__ = ["OUTPUT_KINDS", "Contract", "Model"]

#: What a model produces; the streaming layer picks its writer from this.
OUTPUT_KINDS = ("labels", "tracks", "features", "embeddings", "array")


@dataclass(frozen=True)
class Contract:
    """What a model accepts and what it returns.

    Parameters
    ----------
    axes : tuple of str
        Axis orders the model accepts for its ``image``/``labels`` arrays, e.g.
        ``("cyx", "czyx")``. ``c`` is the channel axis, ``t`` a whole time
        series. Empty means any array at all (``echo``).
    inputs : tuple of str
        Payload keys the model reads: ``"image"`` and/or ``"labels"``.
    dtype : str or None
        dtype the model wants its ``image`` in (the caller casts); None keeps the stored dtype.
    channels : int or None
        Least number of channels the image must have; None for no requirement.
    output : str
        One of :data:`OUTPUT_KINDS`.
    tiling : bool
        False when the model needs whole frames (trackers, embeddings).
    halo : int
        Pixels of context the model needs around a tile for exact borders.
    params : dict
        Parameter names to a short description with the default, for ``nahual models``.
    """

    axes: tuple[str, ...] = ()
    inputs: tuple[str, ...] = ("image",)
    dtype: str | None = None
    channels: int | None = None
    output: str = "array"
    tiling: bool = True
    halo: int = 0
    params: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.output not in OUTPUT_KINDS:
            raise ContractError(f"contract output must be one of {OUTPUT_KINDS}, got {self.output!r}")

    def to_dict(self) -> dict[str, Any]:
        """JSON form, as sent in ``info``."""
        data = asdict(self)
        data["axes"] = list(self.axes)
        data["inputs"] = list(self.inputs)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Contract:
        """Inverse of :meth:`to_dict` (ignores keys it does not know, for newer servers)."""
        known = {k: data[k] for k in cls.__dataclass_fields__ if k in data}
        for key in ("axes", "inputs"):
            if key in known:
                known[key] = tuple(known[key])
        return cls(**known)

    def check_axes(self, axes: str) -> None:
        """Raise :class:`ContractError` unless ``axes`` is one the model accepts."""
        if self.axes and axes not in self.axes:
            raise ContractError(f"model expects axes {' or '.join(self.axes)}, got {axes!r}")

    def read_payload(self, payload: Any) -> tuple[dict[str, np.ndarray], str]:
        """The input arrays of ``payload`` and their axes, checked against this contract.

        ``axes`` may be left out when only one accepted order fits the first
        input's number of dimensions. Label arrays must have the image's axes
        without ``c``.

        Raises
        ------
        ContractError
            Naming what the model expects and what the payload holds.
        """
        if not isinstance(payload, dict) or any(key not in payload for key in self.inputs):
            found = sorted(payload) if isinstance(payload, dict) else type(payload).__name__
            raise ContractError(f"model expects payload keys {', '.join(self.inputs)} and axes, got {found}")
        arrays = {key: np.asarray(payload[key]) for key in self.inputs}
        first = arrays[self.inputs[0]]
        axes = payload.get("axes") or self._infer_axes(first.ndim)
        self.check_axes(axes)
        if first.ndim != len(axes):
            what = "integer label array" if self.inputs[0] == "labels" else self.inputs[0]
            raise ContractError(f"axes {axes!r} need a {len(axes)}-d {what}, got shape {first.shape}")
        if "labels" in arrays and self.inputs[0] != "labels":
            expected = tuple(n for n, axis in zip(first.shape, axes) if axis != "c")
            labels = arrays["labels"]
            if labels.shape != expected or labels.dtype.kind not in "iu":
                raise ContractError(
                    f"expected integer labels of shape {expected} (the image without c), "
                    f"got {labels.dtype} {labels.shape}"
                )
        return arrays, axes

    def _infer_axes(self, ndim: int) -> str:
        fitting = [axes for axes in self.axes if len(axes) == ndim]
        if len(fitting) != 1:
            raise ContractError(f"a {ndim}-d input needs payload 'axes', one of {' or '.join(self.axes)}")
        return fitting[0]


class Model:
    """Base class of every model a nahual server can host.

    Class attributes
    ----------------
    name : str
        Registry name (``nahual serve`` and ``Client.load`` use it).
    packages : tuple of str
        Distributions whose versions ``info`` reports (e.g. ``("torch", "cellpose")``).
    contract : Contract
        What the model accepts and returns.
    defaults : dict
        Every parameter with its default value; names outside it are typos.
    """

    name: ClassVar[str] = ""
    packages: ClassVar[tuple[str, ...]] = ()
    contract: ClassVar[Contract] = Contract()
    defaults: ClassVar[dict[str, Any]] = {}

    def load(self, **params: Any) -> None:
        """Prepare the model once per instance (weights, device, threads).

        The default stores :attr:`defaults` updated with ``params`` in
        ``self.params``; override it to load weights (call :meth:`merge_params`
        so that typos raise ``TypeError`` at load time).
        """
        self.params = self.merge_params(params)

    def merge_params(self, params: dict[str, Any], base: dict[str, Any] | None = None) -> dict[str, Any]:
        """``base`` (default: :attr:`defaults`) updated with ``params``; unknown names raise ``TypeError``."""
        unknown = sorted(set(params) - set(self.defaults))
        if unknown:
            name = self.name or type(self).__name__
            raise TypeError(f"{name} got unknown params {unknown}; known: {sorted(self.defaults)}")
        return {**(self.defaults if base is None else base), **params}

    def process(self, payload: Any, **params: Any) -> Any:
        """Process one payload; ``params`` are per-call overrides. Must be thread-safe
        if the model is to serve concurrent requests on one instance."""
        raise NotImplementedError(f"{type(self).__name__} does not implement process()")

    def close(self) -> None:
        """Release resources when the instance is unloaded (default: nothing)."""
