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
``load`` once, then ``process`` for every request (``process_batch`` for
several at once when the contract has ``max_batch`` above 1). Payloads are
dicts of numpy arrays and JSON values (see ``docs/protocol.md``); arrays that
arrive from the network are read-only views, so copy before writing into them.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from types import MappingProxyType
from typing import Any, ClassVar

import numpy as np

from ._params import Param, check_params, describe_params
from .errors import ContractError, ParamError

__all__ = ["OUTPUT_KINDS", "Contract", "Model", "Param"]

#: What a model produces; the streaming layer picks its writer from this.
OUTPUT_KINDS = ("labels", "tracks", "features", "embeddings", "cells", "array")


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
    reads_scale : bool
        True when the model reads the payload's ``scale``: ``{axis: pixel size}``
        of the spatial axes as the store records them (micrometres in
        OME-Zarr), for models that rescale to their network's pixel size
        (BABY). Off by default, so other payloads stay as they were.
    params : dict
        Parameter names to their one-line description (what each takes and its
        default), for ``info`` and ``nahual models``. In a :class:`Model` it is
        written from the model's ``param_spec``; leave it empty there.
    max_batch : int
        Payloads the model takes in one call. Above 1 the server gathers
        concurrent requests for one instance (with equal call params) and
        calls :meth:`Model.process_batch` with up to this many; 1 (the
        default): one :meth:`Model.process` call per request.
    batch_wait_ms : float
        Milliseconds a batch that is not full waits for more requests, counted
        from when its first request arrived or the model became free,
        whichever is later (only with ``max_batch`` above 1).
    concurrency : int
        Calls one instance runs at once: above 1 only for a model whose
        ``process`` (or ``process_batch``) is thread-safe and releases the GIL
        (numpy, torch), so that one loaded copy serves several requests
        side by side. 1 (the default): one call at a time.
    about : dict
        What a loaded instance is, as JSON values, for ``info`` and every
        output's provenance (a bioimage.io package's name, id, version,
        license, authors and citation); empty for most models.
    """

    axes: tuple[str, ...] = ()
    inputs: tuple[str, ...] = ("image",)
    dtype: str | None = None
    channels: int | None = None
    output: str = "array"
    tiling: bool = True
    halo: int = 0
    reads_scale: bool = False
    params: dict[str, str] = field(default_factory=dict)
    max_batch: int = 1
    batch_wait_ms: float = 5.0
    concurrency: int = 1
    about: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.output not in OUTPUT_KINDS:
            raise ContractError(f"contract output must be one of {OUTPUT_KINDS}, got {self.output!r}")
        for name in ("max_batch", "concurrency"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ContractError(f"contract {name} must be an integer of at least 1, got {value!r}")
        wait = self.batch_wait_ms
        if isinstance(wait, bool) or not isinstance(wait, (int, float)) or not 0 <= wait < math.inf:
            raise ContractError(f"contract batch_wait_ms must be a finite number of at least 0, got {wait!r}")

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
        cls.check_contract(cls.contract)

    @classmethod
    def check_contract(cls, contract: Contract) -> None:
        """Check that this class implements what ``contract`` promises.

        Run when the class is defined, and by the server after ``load`` (which
        may set an instance's own contract, e.g. ``max_batch`` from a param).

        Raises
        ------
        ContractError
            When the contract has ``max_batch`` above 1 and the class does not
            override :meth:`process_batch`.
        """
        if contract.max_batch > 1 and cls.process_batch is Model.process_batch:
            owner = cls.name or cls.__name__
            raise ContractError(
                f"{owner}: contract max_batch {contract.max_batch} needs a process_batch method, found only process"
            )

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
        if the contract's ``concurrency`` is above 1."""
        raise NotImplementedError(f"{type(self).__name__} does not implement process()")

    def process_batch(self, payloads: Sequence[Any], **params: Any) -> Sequence[Any]:
        """Process several payloads in one call (models whose contract has ``max_batch`` above 1).

        The server calls it instead of :meth:`process` with between 1 and
        ``max_batch`` payloads of concurrent requests that share the same call
        ``params``. Payloads stay separate (not stacked): edge tiles differ in
        shape and payloads hold JSON values too, so the model stacks (and
        pads) what it can.

        Parameters
        ----------
        payloads : sequence
            One request's payload per item, in arrival order.
        **params
            The per-call overrides every one of these requests carries.

        Returns
        -------
        sequence
            One result per payload, in the same order. An item that is an
            exception fails its own request only; when the call raises, the
            server runs each payload again alone, so that a bad payload fails
            alone too.
        """
        raise NotImplementedError(f"{type(self).__name__} does not implement process_batch()")

    def close(self) -> None:
        """Release resources when the instance is unloaded (default: nothing)."""
