"""Wire protocol v1: one message = envelope + JSON header + aligned raw array buffers.

Layer: the bottom of nahual (numpy only; no sockets). The layout is written
down in ``docs/protocol.md``::

    offset 0   envelope, 24 bytes, little-endian ``<4sHBBQII``:
               magic b"NHWL", version (1), kind, flags (0), request id,
               header length, reserved (0)
    offset 24  JSON header (UTF-8): {"meta": {...}, "payload": tree, "arrays": [...]}
    then       each array's bytes at a 64-byte aligned offset, in order

Arrays inside ``payload`` are replaced by ``{"$nahual": "array", "index": i}``;
``arrays[i]`` holds ``dtype`` (``dtype.str``, byte order included), ``shape``,
``offset`` and ``nbytes``. Decoding builds read-only numpy views on the
received buffer: no copy, and nothing in a message can execute code.

Out of band: a spec may add ``"segment": NAME``; its ``offset``/``nbytes``
then refer to a same-host shared-memory segment, not the message.
:func:`plan` places large arrays there through an :class:`OutOfBand` writer
(or finds them there already, written by a model: ``nahual.reply_array``)
and :func:`decode` resolves them through a :class:`SegmentResolver`; both
come from the transport (``nahual/_shm.py``), which offers them over ipc only.
"""

from __future__ import annotations

import json
import math
import struct
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from .errors import PayloadError, ProtocolError

__all__ = [
    "ALIGNMENT",
    "ENVELOPE",
    "MAGIC",
    "VERSION",
    "Frame",
    "Kind",
    "MessagePlan",
    "OutOfBand",
    "SegmentResolver",
    "check_dtype",
    "decode",
    "encode",
    "plan",
]

MAGIC = b"NHWL"
VERSION = 1
ALIGNMENT = 64
ENVELOPE = struct.Struct("<4sHBBQII")
#: The reserved key that marks an array inside the JSON tree.
ARRAY_TAG = "$nahual"
#: Headers above this size are refused before parsing (arrays travel outside the header).
MAX_HEADER_BYTES = 64 * 1024 * 1024
#: Nesting deeper than this is refused (keeps decoding free of recursion errors).
MAX_DEPTH = 64


class Kind:
    """Message kinds (the envelope's kind byte)."""

    REQUEST = 1
    REPLY = 2
    ERROR = 3
    ALL = (REQUEST, REPLY, ERROR)


@dataclass
class Frame:
    """A decoded message.

    Attributes
    ----------
    kind : int
        One of :class:`Kind`.
    request_id : int
        The id that pairs a reply with its request.
    meta : dict
        Protocol-level fields (operation, instance, params, token, error details).
    payload : Any
        The user payload: nested dicts/lists of JSON values and numpy arrays.
    """

    kind: int
    request_id: int
    meta: dict[str, Any] = field(default_factory=dict)
    payload: Any = None


def _align(offset: int) -> int:
    return -(-offset // ALIGNMENT) * ALIGNMENT


def check_dtype(dtype: np.dtype, where: str) -> None:
    """Raise :class:`PayloadError` for a dtype the protocol cannot carry (``where`` names the caller)."""
    if dtype.hasobject or dtype.fields is not None or dtype.kind in "VOMm" or dtype.subdtype is not None:
        raise PayloadError(
            f"{where}: arrays of dtype {dtype.str!r} ({dtype}) cannot be sent; "
            "expected bool, int, uint, float, complex, bytes or str dtypes"
        )


class OutOfBand(Protocol):
    """Where a sender puts large arrays instead of the message (``nahual._shm.SegmentWriter``).

    A writer may also have ``locate(array) -> (name, offset) | None``: where an
    array already lies in one of its segments (a model wrote it there), so
    that it is sent without a copy (``nahual._shm_replies.ReplyBuffers``).
    """

    threshold: int

    def place(self, sizes: list[int]) -> Any:
        """Room for arrays of ``sizes`` bytes: an object with ``name``, ``offsets`` and a
        writable ``buffer``, or None to send them in the message."""


class SegmentResolver(Protocol):
    """How a receiver reads out-of-band arrays (``nahual._shm_maps.SegmentReader``)."""

    def view(self, name: str, offset: int, nbytes: int) -> Any:
        """The bytes of segment ``name`` (a buffer that arrays may view for as long as they live);
        raises :class:`ProtocolError` for bad names or bounds."""


@dataclass
class MessagePlan:
    """The layout of one outgoing message, computed before any buffer exists.

    ``nbytes`` is the exact message size, so the transport can allocate the
    message once and :meth:`write_into` copies each array exactly once.
    """

    kind: int
    request_id: int
    header: bytes
    arrays: list[np.ndarray]
    offsets: list[int]
    nbytes: int
    #: Per array: True when it goes into a segment (at its offset there) instead of the message.
    external: list[bool] = field(default_factory=list)
    #: The writable out-of-band buffer of the arrays copied out of band, or None.
    segment: Any = None
    #: Per array: True when it lies in its segment already (a model wrote it there): nothing to copy.
    placed: list[bool] = field(default_factory=list)
    #: The segments the message names, for the sender to lend once it is sent.
    segment_names: list[str] = field(default_factory=list)

    def write_into(self, buffer: Any) -> None:
        """Write the message into a writable buffer of exactly ``nbytes`` bytes (and the segment)."""
        view = memoryview(buffer).cast("B")
        if len(view) != self.nbytes:
            raise ProtocolError(f"buffer holds {len(view)} bytes, the message needs {self.nbytes}")
        ENVELOPE.pack_into(view, 0, MAGIC, VERSION, self.kind, 0, self.request_id, len(self.header), 0)
        start = ENVELOPE.size
        view[start : start + len(self.header)] = self.header
        external = self.external or [False] * len(self.arrays)
        placed = self.placed or [False] * len(self.arrays)
        for array, offset, outside, there in zip(self.arrays, self.offsets, external, placed):
            if array.nbytes and not there:
                target = np.frombuffer(self.segment if outside else view, array.dtype, array.size, offset)
                np.copyto(target.reshape(array.shape), array, casting="no")


def _to_tree(value: Any, arrays: list[np.ndarray], depth: int) -> Any:
    if depth > MAX_DEPTH:
        raise PayloadError(f"payload nests deeper than {MAX_DEPTH} levels")
    if value is None or isinstance(value, (bool, int, float, str)):
        if isinstance(value, int) and not isinstance(value, bool) and not -(2**63) <= value < 2**64:
            raise PayloadError(f"integer {value} does not fit in 64 bits; send it as a string or array")
        return value
    if isinstance(value, np.generic):
        value = np.asarray(value)
    if isinstance(value, np.ndarray):
        check_dtype(value.dtype, "payload")
        arrays.append(value)
        return {ARRAY_TAG: "array", "index": len(arrays) - 1}
    if isinstance(value, Mapping):
        tree = {}
        for key, item in value.items():
            if not isinstance(key, str):
                raise PayloadError(f"payload dict keys must be str, got {type(key).__name__} {key!r}")
            if key == ARRAY_TAG:
                raise PayloadError(f"payload dict key {ARRAY_TAG!r} is reserved by the nahual protocol")
            tree[key] = _to_tree(item, arrays, depth + 1)
        return tree
    if isinstance(value, (list, tuple)):
        return [_to_tree(item, arrays, depth + 1) for item in value]
    raise PayloadError(
        f"cannot send a {type(value).__name__}: payloads hold dicts, lists, str, int, float, bool, None "
        "and numpy arrays"
    )


def plan(
    kind: int,
    request_id: int,
    meta: Mapping[str, Any] | None = None,
    payload: Any = None,
    out_of_band: OutOfBand | None = None,
) -> MessagePlan:
    """Lay out a message; raises :class:`PayloadError` for unsendable payloads before anything is written.

    Parameters
    ----------
    kind : int
        One of :class:`Kind`.
    request_id : int
        Unsigned 64-bit request id.
    meta : mapping, optional
        Protocol fields (JSON values only).
    payload : Any
        Nested dicts/lists of JSON scalars, strings and numpy arrays.
    out_of_band : OutOfBand, optional
        Arrays of at least ``out_of_band.threshold`` bytes go there (same host only).
    """
    arrays: list[np.ndarray] = []
    tree = _to_tree(payload, arrays, 0)
    meta_arrays: list[np.ndarray] = []
    meta_tree = _to_tree(dict(meta or {}), meta_arrays, 0)
    if meta_arrays:
        raise PayloadError("message meta holds JSON values only; send arrays in the payload")
    specs = [{"dtype": a.dtype.str, "shape": list(a.shape), "nbytes": a.nbytes} for a in arrays]
    placed = _locate_out_of_band(arrays, specs, out_of_band)
    external, placement = _place_out_of_band(arrays, specs, placed, out_of_band)
    # The header's length depends on the offsets and vice versa: place the
    # buffers after a header measured with placeholder offsets of full width.
    draft = json.dumps({"meta": meta_tree, "payload": tree, "arrays": [dict(s, offset=2**63) for s in specs]})
    cursor = _align(ENVELOPE.size + len(draft.encode()))
    end = cursor
    for spec, outside in zip(specs, external):
        if not outside:
            spec["offset"] = cursor
            end = cursor + spec["nbytes"]
            cursor = _align(end)
    header = json.dumps({"meta": meta_tree, "payload": tree, "arrays": specs}).encode()
    total = end if any(not outside for outside in external) else ENVELOPE.size + len(header)
    offsets = [spec["offset"] for spec in specs]
    segment = placement.buffer if placement is not None else None
    names = list(dict.fromkeys(spec["segment"] for spec in specs if "segment" in spec))
    return MessagePlan(kind, request_id, header, arrays, offsets, total, external, segment, placed, names)


def _locate_out_of_band(
    arrays: list[np.ndarray], specs: list[dict[str, Any]], out_of_band: OutOfBand | None
) -> list[bool]:
    """Mark the arrays that lie in the writer's segments already (no copy) and give them their place."""
    locate = getattr(out_of_band, "locate", None)
    placed = [False] * len(arrays)
    if locate is None:
        return placed
    for i, (array, spec) in enumerate(zip(arrays, specs)):
        where = locate(array)
        if where is not None:
            spec["segment"], spec["offset"] = where
            placed[i] = True
    return placed


def _place_out_of_band(
    arrays: list[np.ndarray], specs: list[dict[str, Any]], placed: list[bool], out_of_band: OutOfBand | None
) -> tuple[list[bool], Any]:
    """Mark the arrays that go out of band (copied, or placed already) and give them their segment offsets."""
    copied = [
        out_of_band is not None and not there and a.nbytes >= out_of_band.threshold for a, there in zip(arrays, placed)
    ]
    placement = None
    if any(copied):
        placement = out_of_band.place([a.nbytes for a, outside in zip(arrays, copied) if outside])
    if placement is None:
        return list(placed), None
    offsets = iter(placement.offsets)
    for spec, outside in zip(specs, copied):
        if outside:
            spec["segment"] = placement.name
            spec["offset"] = next(offsets)
    return [a or b for a, b in zip(copied, placed)], placement


def encode(kind: int, request_id: int, meta: Mapping[str, Any] | None = None, payload: Any = None) -> bytearray:
    """Encode a message into a new ``bytearray`` (tests and tools; the transport uses :func:`plan`)."""
    message_plan = plan(kind, request_id, meta, payload)
    buffer = bytearray(message_plan.nbytes)
    message_plan.write_into(buffer)
    return buffer


def read_envelope(buffer: Any) -> tuple[int, int, int]:
    """Return (kind, request id, header length) or raise :class:`ProtocolError`."""
    view = memoryview(buffer).cast("B")
    if len(view) < ENVELOPE.size:
        raise ProtocolError(f"message of {len(view)} bytes is shorter than the {ENVELOPE.size}-byte envelope")
    magic, version, kind, _flags, request_id, header_len, _reserved = ENVELOPE.unpack_from(view, 0)
    if magic != MAGIC:
        raise ProtocolError(f"bad magic {magic!r}, expected {MAGIC!r}: not a nahual message")
    if version != VERSION:
        raise ProtocolError(f"protocol version {version} is not supported, expected {VERSION}")
    if kind not in Kind.ALL:
        raise ProtocolError(f"unknown message kind {kind}")
    if header_len > min(MAX_HEADER_BYTES, len(view) - ENVELOPE.size):
        raise ProtocolError(f"header length {header_len} exceeds the {len(view)}-byte message")
    return kind, request_id, header_len


def _parse_array(spec: Any, view: memoryview, header_end: int, segments: SegmentResolver | None) -> np.ndarray:
    if not isinstance(spec, dict):
        raise ProtocolError("array spec must be an object")
    dtype_str, shape, offset, nbytes = (spec.get(k) for k in ("dtype", "shape", "offset", "nbytes"))
    if not isinstance(dtype_str, str) or len(dtype_str) > 16:
        raise ProtocolError(f"bad array dtype {dtype_str!r}")
    try:
        dtype = np.dtype(dtype_str)
        check_dtype(dtype, "received")
    except (TypeError, ValueError) as exc:
        raise ProtocolError(f"bad array dtype {dtype_str!r}: {exc}") from None
    if not isinstance(shape, list) or not all(type(n) is int and n >= 0 for n in shape):
        raise ProtocolError(f"bad array shape {shape!r}")
    if not all(type(n) is int and n >= 0 for n in (offset, nbytes)):
        raise ProtocolError("array offset and nbytes must be non-negative integers")
    count = math.prod(shape)
    if count * dtype.itemsize != nbytes:
        raise ProtocolError(f"array of shape {shape} and dtype {dtype_str} cannot hold {nbytes} bytes")
    source = view
    if "segment" in spec:
        if segments is None:
            raise ProtocolError("shared-memory buffers are only accepted over ipc")
        source, offset = segments.view(spec["segment"], offset, nbytes), 0
    elif offset < header_end or offset + nbytes > len(view):
        raise ProtocolError(f"array bytes [{offset}, {offset + nbytes}) lie outside the message")
    try:  # numpy's own limits: at most 64 dimensions, each below 2**63, no zero-width items
        array = np.frombuffer(source, dtype=dtype, count=count, offset=offset).reshape(shape)
    except ValueError as exc:
        raise ProtocolError(f"array of shape {shape} and dtype {dtype_str}: {exc}") from None
    array.flags.writeable = False
    return array


def _from_tree(tree: Any, arrays: list[np.ndarray], depth: int = 0) -> Any:
    if depth > MAX_DEPTH:
        raise ProtocolError(f"payload nests deeper than {MAX_DEPTH} levels")
    if isinstance(tree, dict):
        if ARRAY_TAG in tree:
            index = tree.get("index")
            if tree[ARRAY_TAG] != "array" or type(index) is not int or not 0 <= index < len(arrays):
                raise ProtocolError(f"bad array reference {tree!r}")
            return arrays[index]
        return {key: _from_tree(item, arrays, depth + 1) for key, item in tree.items()}
    if isinstance(tree, list):
        return [_from_tree(item, arrays, depth + 1) for item in tree]
    return tree


def decode(buffer: Any, segments: SegmentResolver | None = None) -> Frame:
    """Decode a message; arrays are read-only views that keep ``buffer`` alive.

    ``segments`` resolves out-of-band arrays (ipc only); without it they are
    refused. They are views on what it resolves, as in-band arrays are views
    on the message: nothing is copied.

    Raises
    ------
    ProtocolError
        For any message that does not follow protocol v1, whatever its bytes.
    """
    kind, request_id, header_len = read_envelope(buffer)
    view = memoryview(buffer).cast("B")
    header_end = ENVELOPE.size + header_len
    try:
        header = json.loads(bytes(view[ENVELOPE.size : header_end]).decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise ProtocolError(f"header is not valid JSON: {exc}") from None
    if not isinstance(header, dict) or not isinstance(header.get("arrays", []), list):
        raise ProtocolError("header must be an object with an 'arrays' list")
    meta = header.get("meta", {})
    if not isinstance(meta, dict):
        raise ProtocolError("header 'meta' must be an object")
    arrays = [_parse_array(spec, view, header_end, segments) for spec in header.get("arrays", [])]
    try:
        payload = _from_tree(header.get("payload"), arrays)
    except RecursionError:
        raise ProtocolError("payload nests too deeply") from None
    return Frame(kind, request_id, meta, payload)
