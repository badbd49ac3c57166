"""The model author API: subclass :class:`Model`, declare a :class:`Contract` and its :class:`Param` spec.

Layer: model author API (numpy only). A model is one small file::

    class Bright(nahual.Model):
        name = "bright"
        packages = ("scipy",)
        contract = nahual.Contract(axes=("yx",), output="labels", halo=8)
        param_spec = (nahual.Param("level", 0.5, "pixels above it are objects", min=0),)

        def load(self, **params):
            super().load(**params)          # checks params, stores self.params
            import scipy.ndimage            # heavy imports belong in load
            self.ndimage = scipy.ndimage

        def process(self, payload, **params):
            p = self.merge_params(params, self.params)
            arrays, axes = self.contract.read_payload(payload)
            labels, _ = self.ndimage.label(arrays["image"] > p["level"])
            return {"labels": labels.astype("uint32")}

The server creates one instance per distinct (model, load params), calls
``load`` once, then ``process`` for every request. Payloads are dicts of
numpy arrays and JSON values (see ``docs/protocol.md``); arrays that arrive
from the network are read-only views, so copy before writing into them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, replace
from types import MappingProxyType
from typing import Any, ClassVar

import numpy as np

from ._params import Param, check_params, describe_params
from .errors import ContractError, ParamError

__all__ = ["OUTPUT_KINDS", "Contract", "Model", "Param"]

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
        Parameter names to their one-line description (what each takes and its
        default), for ``info`` and ``nahual models``. In a :class:`Model` it is
        written from the model's ``param_spec``; leave it empty there.
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
        if not isinstance(axes, str):
            raise ContractError(f"payload 'axes' must be a string of axis names, got {axes!r}")
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
        if not fitting:
            raise ContractError(f"model expects axes {' or '.join(self.axes)}, got a {ndim}-d input without 'axes'")
        if len(fitting) > 1:
            raise ContractError(f"a {ndim}-d input needs payload 'axes', one of {' or '.join(fitting)}")
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
        What the model accepts and returns; its ``params`` are filled in from ``param_spec``.
    param_spec : tuple of Param
        Every parameter, declared once; names outside it are typos.
    defaults : mapping
        Each param's default, derived from ``param_spec`` (read-only).
    """

    name: ClassVar[str] = ""
    packages: ClassVar[tuple[str, ...]] = ()
    contract: ClassVar[Contract] = Contract()
    param_spec: ClassVar[tuple[Param, ...]] = ()
    defaults: ClassVar[Mapping[str, Any]] = MappingProxyType({})

    def __init_subclass__(cls, **kwargs: Any) -> None:
        """Derive ``defaults`` and ``contract.params`` from ``param_spec``, so neither is written by hand.

        Raises
        ------
        ParamError
            When the class sets ``defaults`` itself, writes contract params that
            differ from its spec, or declares a bad spec.
        """
        super().__init_subclass__(**kwargs)
        owner = cls.name or cls.__name__
        if "defaults" in vars(cls):
            raise ParamError(f"{owner}: declare parameters as param_spec = (Param(...), ...), not defaults")
        descriptions = describe_params(owner, cls.param_spec)
        if "contract" in vars(cls) and cls.contract.params and cls.contract.params != descriptions:
            raise ParamError(f"{owner}: Contract(params=...) is written from param_spec; leave it out")
        cls.contract = replace(cls.contract, params=descriptions)
        cls.defaults = MappingProxyType({param.name: param.default for param in cls.param_spec})

    @classmethod
    def check_params(cls, params: Mapping[str, Any]) -> dict[str, Any]:
        """Check params against ``param_spec`` without creating or loading the model.

        The workflow calls it when it reads its config, so that ``{sigmaa: 2}``
        fails at parse time instead of on a server.

        Parameters
        ----------
        params : mapping
            Names to values, load or call params.

        Returns
        -------
        dict
            The same params, as a new dict (defaults are not added).

        Raises
        ------
        ParamError
            For an unknown name, a wrong type, None where it is not allowed, a
            value outside the choices or range, or NaN/infinity.
        """
        return check_params(cls.name or cls.__name__, cls.param_spec, params)

    def load(self, **params: Any) -> None:
        """Prepare the model once per instance (weights, device, threads).

        The default stores :attr:`defaults` updated with ``params`` in
        ``self.params``; an override that loads weights calls it first (or
        :meth:`merge_params`) so that bad params raise ``ParamError`` at load.
        """
        self.params = self.merge_params(params)

    def merge_params(self, params: Mapping[str, Any], base: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """``base`` (default: :attr:`defaults`) updated with ``params``, checked by :meth:`check_params`.

        Raises
        ------
        ParamError
            As :meth:`check_params`.
        """
        return {**(self.defaults if base is None else base), **self.check_params(params)}

    def process(self, payload: Any, **params: Any) -> Any:
        """Process one payload; ``params`` are per-call overrides. Must be thread-safe
        if the model is to serve concurrent requests on one instance."""
        raise NotImplementedError(f"{type(self).__name__} does not implement process()")

    def close(self) -> None:
        """Release resources when the instance is unloaded (default: nothing)."""
