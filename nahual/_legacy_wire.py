"""The earlier nahual wire (the PyPI releases 0.0.x): its messages, encoded and decoded, and nothing else.

Layer: the bottom of nahual, beside :mod:`nahual._protocol` (numpy only; no
sockets). One nng Req0/Rep0 message each way, with no envelope, version or
request id; what a message is, its first bytes say (``docs/protocol.md``,
*The earlier wire*)::

    b"NHWL"            protocol v1 (never an earlier-wire message: numpy has
                       no 72-dimensional arrays, and b"H" as ndim would be one)
    b"{"               a dict, as UTF-8 JSON (a setup, or a dict reply)
    b"!"               an error reply: b"!" + JSON {"error": ..., "stage": ...}
    b"\\x00NHSM\\x01"    a shared-memory request (newer 0.0.x clients), then JSON
    b"\\x00NHSR\\x01"    its reply, then JSON {dtype, nbytes, shape, token}
    anything else      an array: one byte ``dtype.char``, one byte ndim, each
                       dimension a big-endian uint16, then the C-order bytes in
                       the sender's native byte order

So an array with a dimension over 65,535 or more than 255 dimensions, a
byte order other than this machine's, or a non-numeric dtype cannot
travel: :func:`check_array` refuses it, before anything is sent, with one
line saying why. Decoding builds read-only views on the received buffer,
and nothing in a message can execute code.
"""

from __future__ import annotations

import json
import math
import re
import struct
from dataclasses import dataclass
from typing import Any

import numpy as np

from ._protocol import MAGIC
from .errors import PayloadError, ProtocolError

__all__ = [
    "ERROR_PREFIX",
    "SHM_REPLY",
    "SHM_REQUEST",
    "LegacyMessage",
    "ShmRequest",
    "check_array",
    "decode_array",
    "decode_dict",
    "decode_error",
    "encode_array",
    "encode_dict",
    "encode_error",
    "encode_shm_reply",
    "message_kind",
    "parse_shm_request",
]

ERROR_PREFIX = b"!"
#: The family of the shared-memory messages (a NUL first byte), and the version 1 request and reply.
SHM_FAMILY = b"\x00NHSM"
SHM_REQUEST = SHM_FAMILY + b"\x01"
SHM_REPLY = b"\x00NHSR\x01"
#: The largest dimension and number of dimensions the array header can say.
MAX_DIM = 0xFFFF
MAX_NDIM = 0xFF
#: Numeric dtype kinds: bool, signed and unsigned integers, floats, complex numbers.
NUMERIC_KINDS = "biufc"
#: JSON messages larger than this are refused before parsing (setups and dict replies are small).
MAX_JSON_BYTES = 64 * 1024 * 1024
#: A shared-memory request: its fields (exactly these), and the limits of its descriptor.
SHM_FIELDS = frozenset({"capacity", "dtype", "name", "nbytes", "output_mode", "shape", "token"})
SHM_MAX_DESCRIPTOR = 16 * 1024
SHM_MAX_NDIM = 32
SHM_OUTPUT_MODES = ("reuse", "serialized")
#: A segment name (a file directly in /dev/shm: no slash, no dots) and a request token.
SHM_NAME = re.compile(r"[A-Za-z0-9_-]{1,128}")
SHM_TOKEN = re.compile(r"[0-9a-f]{32}")


@dataclass
class LegacyMessage:
    """One outgoing message: a header and, for an array, its data, copied once into the nng message.

    It has what :meth:`nahual._nng.Channel.send` needs of a
    :class:`~nahual._protocol.MessagePlan` (``nbytes``, :meth:`write_into`,
    ``segment_names``), so both wires go out through the same channels.
    """

    head: bytes
    array: np.ndarray | None = None

    @property
    def nbytes(self) -> int:
        """The message's exact size."""
        return len(self.head) + (0 if self.array is None else self.array.nbytes)

    @property
    def segment_names(self) -> list[str]:
        """Shared-memory segments the message names for the peer to free: none on this wire."""
        return []

    def write_into(self, buffer: Any) -> None:
        """Write the message into a writable buffer of exactly :attr:`nbytes` bytes."""
        view = memoryview(buffer).cast("B")
        if len(view) != self.nbytes:
            raise ProtocolError(f"buffer holds {len(view)} bytes, the message needs {self.nbytes}")
        view[: len(self.head)] = self.head
        array = self.array
        if array is not None and array.nbytes:
            target = np.frombuffer(view, array.dtype, array.size, len(self.head))
            np.copyto(target.reshape(array.shape), array, casting="no")

    def to_bytes(self) -> bytes:
        """The message as bytes (tests and tools; the transport uses :meth:`write_into`)."""
        buffer = bytearray(self.nbytes)
        self.write_into(buffer)
        return bytes(buffer)


def message_kind(buffer: Any) -> str:
    """What a received message is, from its first bytes: v1, setup, error, shm, shm-reply or array."""
    head = bytes(memoryview(buffer).cast("B")[:6])
    if head.startswith(MAGIC):
        return "v1"
    if head.startswith(b"{"):
        return "setup"
    if head.startswith(ERROR_PREFIX):
        return "error"
    if head.startswith(SHM_FAMILY):
        return "shm"
    if head.startswith(SHM_REPLY[:5]):
        return "shm-reply"
    return "array"


def check_array(array: np.ndarray, what: str = "array") -> None:
    """Raise :class:`PayloadError` for an array the earlier wire cannot carry, saying why.

    Parameters
    ----------
    array : numpy.ndarray
        What would be sent.
    what : str
        What the array is, for the message (``"the tile"``, ``"the reply"``).
    """
    dtype = array.dtype
    if dtype.kind not in NUMERIC_KINDS or dtype.fields is not None or dtype.subdtype is not None:
        raise PayloadError(f"the earlier nahual wire carries numeric arrays only; {what} has dtype {dtype}")
    if not dtype.isnative:
        raise PayloadError(
            f"the earlier nahual wire carries arrays in the machine's byte order only; {what} has dtype "
            f"{dtype.str} (convert it with .astype('{dtype.newbyteorder('=').str}') first)"
        )
    if np.dtype(dtype.char) != dtype:
        raise PayloadError(f"the earlier nahual wire cannot name dtype {dtype} by its one-letter code {dtype.char!r}")
    if array.ndim > MAX_NDIM:
        raise PayloadError(f"the earlier nahual wire carries at most {MAX_NDIM} dimensions; {what} has {array.ndim}")
    if any(n > MAX_DIM for n in array.shape):
        raise PayloadError(
            f"the earlier nahual wire carries dimensions up to {MAX_DIM}; {what} has shape {array.shape}: "
            "send it in smaller pieces"
        )


def encode_array(array: np.ndarray, what: str = "array") -> LegacyMessage:
    """An array message; raises :class:`PayloadError` (nothing sent) for one the wire cannot carry."""
    array = np.asarray(array)
    check_array(array, what)
    head = array.dtype.char.encode("ascii") + bytes([array.ndim]) + struct.pack(f">{array.ndim}H", *array.shape)
    return LegacyMessage(head, array)


def encode_dict(data: dict[str, Any]) -> LegacyMessage:
    """A dict message (a setup, or a dict reply) as UTF-8 JSON; raises :class:`PayloadError` for non-JSON values."""
    try:
        text = json.dumps(data, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise PayloadError(f"the earlier nahual wire carries dicts as JSON: {exc}") from None
    return LegacyMessage(text.encode("utf-8"))


def encode_error(message: str, stage: str) -> LegacyMessage:
    """An error reply as newer 0.0.x servers send it: ``!`` then JSON ``{"error": ..., "stage": ...}``."""
    return LegacyMessage(ERROR_PREFIX + json.dumps({"error": message, "stage": stage}).encode("utf-8"))


def decode_array(buffer: Any) -> np.ndarray:
    """The array of an array message: a read-only view on ``buffer`` (copied only when misaligned).

    Raises
    ------
    ProtocolError
        For an unknown or non-numeric dtype code, a header cut short, or data
        that does not fill the shape exactly.
    """
    view = memoryview(buffer).cast("B")
    if len(view) < 2:
        raise ProtocolError(f"an array message needs at least 2 bytes, got {len(view)}")
    code = chr(view[0])
    try:
        dtype = np.dtype(code)
    except (TypeError, ValueError):
        raise ProtocolError(f"unknown dtype code {code!r} in an array message") from None
    if dtype.kind not in NUMERIC_KINDS or not code.isprintable():
        raise ProtocolError(f"dtype code {code!r} ({dtype}) is not a numeric dtype")
    ndim = view[1]
    start = 2 + 2 * ndim
    if len(view) < start:
        raise ProtocolError(f"array header of {ndim} dimensions needs {start} bytes, the message has {len(view)}")
    shape = struct.unpack_from(f">{ndim}H", view, 2)
    count = math.prod(shape)
    if len(view) - start != count * dtype.itemsize:
        raise ProtocolError(
            f"an array of shape {shape} and dtype {dtype} needs {count * dtype.itemsize} bytes, "
            f"the message carries {len(view) - start}"
        )
    array = np.frombuffer(view, dtype, count, start).reshape(shape)
    if not array.flags.aligned:
        array = array.copy()  # the data starts at 2 + 2 * ndim: models and torch want aligned items
    array.flags.writeable = False
    return array


def decode_dict(buffer: Any) -> dict[str, Any]:
    """The dict of a JSON message (a setup, or a dict reply).

    Raises
    ------
    ProtocolError
        When it is not UTF-8 JSON holding an object, or larger than :data:`MAX_JSON_BYTES`.
    """
    return _json_object(bytes(memoryview(buffer).cast("B")), "a dict message")


def decode_error(buffer: Any) -> tuple[str, str]:
    """The ``(error, stage)`` of an error reply; what the server said, as far as it can be read."""
    body = bytes(memoryview(buffer).cast("B")[len(ERROR_PREFIX) :])
    try:
        data = _json_object(body, "an error reply")
    except ProtocolError:
        return body.decode("utf-8", "replace")[:2000], ""
    return str(data.get("error", "")), str(data.get("stage", ""))


def _json_object(body: bytes, what: str) -> dict[str, Any]:
    if len(body) > MAX_JSON_BYTES:
        raise ProtocolError(f"{what} of {len(body)} bytes is over the {MAX_JSON_BYTES}-byte limit")
    try:
        data = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise ProtocolError(f"{what} is not UTF-8 JSON: {exc}") from None
    if not isinstance(data, dict):
        raise ProtocolError(f"{what} must hold a JSON object, got {type(data).__name__}")
    return data


@dataclass(frozen=True)
class ShmRequest:
    """A shared-memory request: the client's segment ``name`` holds the input array at offset 0.

    With ``output_mode`` ``reuse`` the reply may go back into the same segment
    (if it fits its ``capacity``), answered by :func:`encode_shm_reply`;
    ``serialized`` asks for an array message instead and for the segment to
    be left untouched.
    """

    name: str
    token: str
    dtype: np.dtype
    shape: tuple[int, ...]
    nbytes: int
    capacity: int
    output_mode: str


def parse_shm_request(buffer: Any) -> ShmRequest:
    """The request of a ``\\x00NHSM\\x01`` message, every field checked.

    Raises
    ------
    ProtocolError
        For another version, a descriptor that is not a JSON object of exactly
        the fields :data:`SHM_FIELDS`, a name that is no plain file name in
        ``/dev/shm``, a token that is not 32 hex digits, a dtype that is not
        the canonical ``dtype.str`` of a native numeric dtype, or a shape,
        ``nbytes`` and ``capacity`` that disagree.
    """
    raw = bytes(memoryview(buffer).cast("B"))
    if not raw.startswith(SHM_REQUEST):
        raise ProtocolError(f"unsupported shared-memory message version {raw[5:6]!r}; expected {SHM_REQUEST[5:]!r}")
    body = raw[len(SHM_REQUEST) :]
    if not body or len(body) > SHM_MAX_DESCRIPTOR:
        raise ProtocolError(f"a shared-memory descriptor holds 1 to {SHM_MAX_DESCRIPTOR} bytes, got {len(body)}")
    fields = _json_object(body, "a shared-memory descriptor")
    if set(fields) != SHM_FIELDS:
        expected = ", ".join(sorted(SHM_FIELDS))
        raise ProtocolError(f"a shared-memory request has exactly the fields {expected}; got {sorted(fields)}")
    name, token, mode = fields["name"], fields["token"], fields["output_mode"]
    if not isinstance(name, str) or not SHM_NAME.fullmatch(name):
        raise ProtocolError(f"shared-memory segment name {name!r} is not 1-128 of A-Z a-z 0-9 _ -")
    if not isinstance(token, str) or not SHM_TOKEN.fullmatch(token):
        raise ProtocolError("a shared-memory request token is 32 lowercase hex digits")
    if mode not in SHM_OUTPUT_MODES:
        raise ProtocolError(f"shared-memory output_mode must be one of {SHM_OUTPUT_MODES}, got {mode!r}")
    dtype = _shm_dtype(fields["dtype"])
    shape = fields["shape"]
    if not isinstance(shape, list) or len(shape) > SHM_MAX_NDIM or not all(_count(n) for n in shape):
        raise ProtocolError(f"shared-memory shape must be at most {SHM_MAX_NDIM} integers >= 0, got {shape!r}")
    nbytes, capacity = fields["nbytes"], fields["capacity"]
    if not (_count(nbytes) and _count(capacity)) or nbytes != math.prod(shape) * dtype.itemsize or capacity != nbytes:
        raise ProtocolError(
            f"shared-memory shape {shape}, dtype {dtype.str}, nbytes {nbytes!r} and capacity {capacity!r} disagree"
        )
    return ShmRequest(name, token, dtype, tuple(shape), nbytes, capacity, mode)


def encode_shm_reply(array: np.ndarray, token: str) -> LegacyMessage:
    """The reply saying the result lies at offset 0 of the request's segment: ``\\x00NHSR\\x01`` + JSON."""
    descriptor = {"dtype": array.dtype.str, "nbytes": int(array.nbytes), "shape": list(array.shape), "token": token}
    return LegacyMessage(SHM_REPLY + json.dumps(descriptor, separators=(",", ":"), sort_keys=True).encode("ascii"))


def _shm_dtype(value: Any) -> np.dtype:
    """A native numeric dtype given as its canonical ``dtype.str`` (``"<f4"``, ``"|u1"``)."""
    try:
        dtype = np.dtype(value) if isinstance(value, str) and len(value) <= 32 else None
    except (TypeError, ValueError):
        dtype = None
    if dtype is None or dtype.kind not in NUMERIC_KINDS or not dtype.isnative or dtype.str != value:
        raise ProtocolError(f"shared-memory dtype must be the dtype.str of a native numeric dtype, got {value!r}")
    return dtype


def _count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 2**63
