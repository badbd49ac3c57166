"""Wire protocol v1: exact round trips, the documented layout, refusals and hostile bytes."""

from __future__ import annotations

import contextlib
import json
import math
import struct

import hypothesis.extra.numpy as hnp
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nahual import _protocol as protocol
from nahual._protocol import ALIGNMENT, ENVELOPE, MAGIC, VERSION, Kind, decode, encode, plan
from nahual.errors import PayloadError, ProtocolError

PROPERTY = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# -- strategies ---------------------------------------------------------------------------------

ENDIAN = "?"  # both byte orders
DTYPES = st.one_of(
    hnp.boolean_dtypes(),
    hnp.integer_dtypes(endianness=ENDIAN),
    hnp.unsigned_integer_dtypes(endianness=ENDIAN),
    hnp.floating_dtypes(endianness=ENDIAN, sizes=(16, 32, 64)),
    hnp.complex_number_dtypes(endianness=ENDIAN),
    hnp.byte_string_dtypes(endianness=ENDIAN, min_len=1, max_len=8),
    hnp.unicode_string_dtypes(endianness=ENDIAN, min_len=1, max_len=8),
)
SHAPES = hnp.array_shapes(min_dims=0, max_dims=4, min_side=0, max_side=6)
ARRAYS = hnp.arrays(DTYPES, SHAPES)


@st.composite
def views(draw: st.DrawFn) -> np.ndarray:
    """An array or a (usually non-contiguous) view of one: basic slices, steps, transposes."""
    array = draw(ARRAYS)
    if array.ndim and draw(st.booleans()):
        array = array[draw(hnp.basic_indices(array.shape, allow_newaxis=True))]
    if array.ndim > 1 and draw(st.booleans()):
        array = array.T
    return np.asarray(array)


JSON_SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**63), max_value=2**64 - 1),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=20),
)
KEYS = st.text(max_size=10).filter(lambda key: key != protocol.ARRAY_TAG)
PAYLOADS = st.recursive(
    st.one_of(JSON_SCALARS, views()),
    lambda children: st.one_of(st.lists(children, max_size=4), st.dictionaries(KEYS, children, max_size=4)),
    max_leaves=12,
)


def assert_same(sent: object, received: object) -> None:
    """Exact equality: arrays by dtype (with byte order), shape and bytes; floats bit for bit."""
    if isinstance(sent, np.ndarray):
        assert isinstance(received, np.ndarray)
        assert received.dtype.str == sent.dtype.str
        assert received.shape == sent.shape
        assert received.tobytes() == sent.tobytes()
    elif isinstance(sent, dict):
        assert isinstance(received, dict) and received.keys() == sent.keys()
        for key in sent:
            assert_same(sent[key], received[key])
    elif isinstance(sent, (list, tuple)):
        assert isinstance(received, list) and len(received) == len(sent)
        for item_sent, item_received in zip(sent, received):
            assert_same(item_sent, item_received)
    elif isinstance(sent, float):
        assert isinstance(received, float)
        assert struct.pack("<d", sent) == struct.pack("<d", received) or (math.isnan(sent) and math.isnan(received))
    else:
        assert type(received) is type(sent) and received == sent


def round_trip(payload: object, meta: dict | None = None) -> protocol.Frame:
    return decode(encode(Kind.REQUEST, 42, meta or {}, payload))


# -- round trips --------------------------------------------------------------------------------


@PROPERTY
@given(views())
def test_arrays_round_trip_exactly(array: np.ndarray) -> None:
    assert_same(array, round_trip(array).payload)


@PROPERTY
@given(PAYLOADS, st.integers(min_value=0, max_value=2**64 - 1), st.sampled_from(Kind.ALL))
def test_nested_payloads_round_trip(payload: object, request_id: int, kind: int) -> None:
    frame = decode(encode(kind, request_id, {"op": "process", "n": [1, "x"]}, payload))
    assert (frame.kind, frame.request_id, frame.meta) == (kind, request_id, {"op": "process", "n": [1, "x"]})
    assert_same(payload, frame.payload)


@pytest.mark.parametrize(
    "shape", [(70_000,), (0, 70_000), (70_000, 0, 3), (1, 70_000), (2**16,), (2**16 + 1, 1)], ids=str
)
def test_dimensions_above_65535(shape: tuple[int, ...]) -> None:
    array = np.arange(math.prod(shape), dtype=np.uint8).reshape(shape)
    assert_same(array, round_trip(array).payload)


@pytest.mark.parametrize("dtype", [">i4", "<i4", ">f8", "<c16", ">c8", ">u2", "|b1", ">U3", "|S2", "<f2"])
def test_byte_order_is_kept(dtype: str) -> None:
    array = np.arange(6).astype(dtype).reshape(2, 3)
    received = round_trip(array).payload
    assert received.dtype.str == np.dtype(dtype).str
    np.testing.assert_array_equal(received, array)


def test_zero_d_and_numpy_scalars_become_zero_d_arrays() -> None:
    received = round_trip({"a": np.array(3.5, ">f4"), "b": np.int16(-7), "c": np.bool_(True)}).payload
    assert received["a"].shape == () and received["a"].dtype.str == ">f4" and received["a"] == 3.5
    assert received["b"].shape == () and received["b"].dtype == np.int16 and received["b"] == -7
    assert received["c"].dtype == np.bool_ and bool(received["c"]) is True


def test_non_contiguous_views_are_sent_by_value() -> None:
    base = np.arange(4 * 5 * 6, dtype=np.float64).reshape(4, 5, 6)
    for view in (base[::2, 1:, ::-3], base.transpose(2, 0, 1), base[..., 1], np.broadcast_to(base[0, 0], (3, 6))):
        received = round_trip(view).payload
        assert received.shape == view.shape
        np.testing.assert_array_equal(received, view)


def test_tuples_arrive_as_lists_and_keep_each_dtype() -> None:
    image, masks = np.zeros((2, 2), np.float32), np.ones((2, 2), np.uint32)
    received = round_trip((image, masks)).payload
    assert isinstance(received, list)
    assert [a.dtype for a in received] == [np.float32, np.uint32]


# -- layout --------------------------------------------------------------------------------------


def test_envelope_layout_matches_the_documentation() -> None:
    array = np.arange(10, dtype="<u2")
    message = bytes(encode(Kind.REPLY, 2**64 - 1, {"op": "ping"}, {"x": array, "s": "é"}))
    magic, version, kind, flags, request_id, header_len, reserved = struct.unpack_from("<4sHBBQII", message)
    assert (magic, version, kind, flags, request_id, reserved) == (MAGIC, VERSION, Kind.REPLY, 0, 2**64 - 1, 0)
    assert ENVELOPE.size == 24 and MAGIC == b"NHWL"
    header = json.loads(message[24 : 24 + header_len].decode("utf-8"))
    assert header["meta"] == {"op": "ping"}
    assert header["payload"] == {"x": {"$nahual": "array", "index": 0}, "s": "é"}
    (spec,) = header["arrays"]
    assert spec["dtype"] == "<u2" and spec["shape"] == [10] and spec["nbytes"] == 20
    assert spec["offset"] % ALIGNMENT == 0 and spec["offset"] >= 24 + header_len
    assert message[spec["offset"] : spec["offset"] + 20] == array.tobytes()
    assert len(message) == spec["offset"] + 20


def test_every_array_starts_on_a_64_byte_boundary() -> None:
    arrays = [np.ones(n, np.uint8) for n in (1, 63, 64, 65, 0, 200)]
    message_plan = plan(Kind.REQUEST, 1, {}, arrays)
    assert all(offset % 64 == 0 for offset in message_plan.offsets)
    assert message_plan.offsets == sorted(message_plan.offsets)
    buffer = encode(Kind.REQUEST, 1, {}, arrays)
    assert message_plan.nbytes == len(buffer)
    start = np.frombuffer(buffer, np.uint8).ctypes.data
    for received, offset in zip(decode(buffer).payload, message_plan.offsets):
        assert received.ctypes.data - start == offset


def test_message_without_arrays_is_envelope_plus_header() -> None:
    message = encode(Kind.REQUEST, 5, {"op": "ping"})
    header_len = ENVELOPE.unpack_from(message)[5]
    assert len(message) == ENVELOPE.size + header_len


# -- copies --------------------------------------------------------------------------------------


def test_plan_keeps_the_callers_arrays_and_copies_nothing() -> None:
    array = np.arange(1000, dtype=np.float32)[::2]
    message_plan = plan(Kind.REQUEST, 1, {}, {"a": array})
    assert message_plan.arrays[0] is array


def test_decoded_arrays_are_read_only_views_on_the_message() -> None:
    buffer = encode(Kind.REQUEST, 1, {}, {"a": np.arange(100, dtype=np.int64)})
    received = decode(buffer).payload["a"]
    assert np.shares_memory(received, np.frombuffer(buffer, np.uint8))
    assert not received.flags.writeable
    with pytest.raises(ValueError):
        received[0] = 1
    copy = received.copy()
    copy[0] = 1  # a copy is writable
    assert received[0] == 0


def test_write_into_refuses_a_buffer_of_the_wrong_size() -> None:
    message_plan = plan(Kind.REQUEST, 1, {}, np.zeros(3))
    with pytest.raises(ProtocolError, match="needs"):
        message_plan.write_into(bytearray(message_plan.nbytes + 1))


# -- refusals before sending --------------------------------------------------------------------


@pytest.mark.parametrize(
    "array",
    [
        np.array([object(), 1], dtype=object),
        np.zeros(2, dtype=[("a", "<i4"), ("b", "<f8")]),
        np.zeros(2, dtype="V8"),
        np.zeros(2, dtype="datetime64[s]"),
        np.zeros(2, dtype="timedelta64[ms]"),
    ],
    ids=["object", "structured", "void", "datetime", "timedelta"],
)
def test_unsendable_dtypes_raise_type_error(array: np.ndarray) -> None:
    with pytest.raises(TypeError, match="cannot be sent"):
        plan(Kind.REQUEST, 1, {}, {"nested": [array]})


@pytest.mark.parametrize(
    "payload, match",
    [
        ({1: "x"}, "keys must be str"),
        ({"$nahual": 1}, "reserved"),
        (2**64, "64 bits"),
        (-(2**63) - 1, "64 bits"),
        (b"bytes", "cannot send a bytes"),
        ({1, 2}, "cannot send a set"),
        (object(), "cannot send a object"),
    ],
    ids=["int-key", "reserved-key", "big-int", "small-int", "bytes", "set", "object"],
)
def test_unsendable_values_raise_type_error(payload: object, match: str) -> None:
    with pytest.raises(TypeError, match=match):
        encode(Kind.REQUEST, 1, {}, payload)


def test_arrays_in_meta_are_refused() -> None:
    with pytest.raises(PayloadError, match="meta"):
        plan(Kind.REQUEST, 1, {"x": np.zeros(1)}, None)


def test_too_deep_payloads_are_refused() -> None:
    payload: list = []
    for _ in range(protocol.MAX_DEPTH + 5):
        payload = [payload]
    with pytest.raises(PayloadError, match="deeper"):
        encode(Kind.REQUEST, 1, {}, payload)


# -- hostile input: always ProtocolError --------------------------------------------------------

GOOD = bytes(encode(Kind.REQUEST, 9, {"op": "process"}, {"a": np.arange(12, dtype=">f4").reshape(3, 4), "b": "x"}))


def raw_message(header: object, body: bytes = b"", header_len: int | None = None, **envelope: int) -> bytearray:
    """A message with a hand-written header (padded to 1000 bytes, so arrays may start at 1024)."""
    text = (header if isinstance(header, bytes) else json.dumps(header).encode()).ljust(1000)
    fields = {"version": VERSION, "kind": Kind.REQUEST, "request_id": 3, "magic": MAGIC} | envelope
    head = ENVELOPE.pack(
        fields["magic"], fields["version"], fields["kind"], 0, fields["request_id"],
        len(text) if header_len is None else header_len, 0,
    )  # fmt: skip
    return bytearray(head + text + body)


def array_message(**spec: object) -> bytearray:
    fields = {"dtype": "<f4", "shape": [2], "offset": 1024, "nbytes": 8} | spec
    return raw_message({"arrays": [fields], "payload": {"$nahual": "array", "index": 0}}, b"\0" * 64)


HOSTILE = {
    "empty": bytearray(),
    "short-envelope": bytearray(GOOD[:23]),
    "wrong-magic": raw_message({}, magic=b"HTTP"),
    "wrong-version": raw_message({}, version=2),
    "unknown-kind": raw_message({}, kind=9),
    "header-longer-than-message": raw_message({}, header_len=5000),
    "header-length-max": raw_message({}, header_len=2**32 - 1),
    "bad-json": raw_message(b"{not json"),
    "bad-utf8": raw_message(b'{"meta": "\xff\xfe"}'),
    "header-not-object": raw_message([1, 2]),
    "meta-not-object": raw_message({"meta": [1]}),
    "arrays-not-list": raw_message({"arrays": {}}),
    "huge-int": raw_message(b"1" * 990),
    "deep-json": raw_message(b"[" * 500 + b"]" * 500),
    "deep-payload": raw_message({"payload": json.loads("[" * 70 + "]" * 70)}),
    "array-ref-out-of-range": raw_message({"payload": {"$nahual": "array", "index": 0}}),
    "array-ref-bad-index": raw_message({"payload": {"$nahual": "array", "index": [0]}}),
    "array-ref-bad-tag": raw_message({"payload": {"$nahual": "pickle", "index": 0}}),
    "spec-not-object": raw_message({"arrays": [1]}),
    "dtype-object": array_message(dtype="|O", nbytes=16),
    "dtype-structured": array_message(dtype="[('a', '<i4')]"),
    "dtype-void": array_message(dtype="|V4"),
    "dtype-zero-width": array_message(dtype="S0", nbytes=0),
    "dtype-datetime": array_message(dtype="<M8[s]", nbytes=16),
    "dtype-nonsense": array_message(dtype="<f3"),
    "dtype-not-str": array_message(dtype=4),
    "dtype-long": array_message(dtype="<f4" + " " * 40),
    "shape-negative": array_message(shape=[-2], nbytes=-8),
    "shape-float": array_message(shape=[2.0]),
    "shape-not-list": array_message(shape=2),
    "too-many-dims": array_message(shape=[1] * 70, nbytes=4),
    "dim-too-large": array_message(shape=[2**63, 0], nbytes=0),
    "nbytes-lies": array_message(nbytes=12),
    "offset-in-header": array_message(offset=10),
    "offset-past-end": array_message(offset=1024 + 60),
    "offset-bool": array_message(offset=True),
    "huge-array": array_message(shape=[2**40], nbytes=2**42),
}


@pytest.mark.parametrize("message", HOSTILE.values(), ids=HOSTILE.keys())
def test_hostile_messages_raise_protocol_error(message: bytearray) -> None:
    with pytest.raises(ProtocolError):
        decode(message)


def test_every_truncation_of_a_valid_message_is_refused() -> None:
    for length in range(len(GOOD)):
        with pytest.raises(ProtocolError):
            decode(GOOD[:length])
    assert decode(GOOD).request_id == 9


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=400))
def test_random_bytes_never_raise_anything_but_protocol_error(data: bytes) -> None:
    for message in (data, MAGIC + struct.pack("<H", VERSION) + data):
        with contextlib.suppress(ProtocolError):
            decode(message)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.integers(0, len(GOOD) - 1), st.integers(0, 255)), min_size=1, max_size=8))
def test_mutated_messages_decode_or_raise_protocol_error(mutations: list[tuple[int, int]]) -> None:
    message = bytearray(GOOD)
    for position, value in mutations:
        message[position] = value
    try:
        frame = decode(message)
    except ProtocolError:
        return
    assert isinstance(frame.meta, dict)


def test_decoding_never_executes_code(tmp_path) -> None:
    marker = tmp_path / "pwned"
    evil = f"__import__('pathlib').Path({str(marker)!r}).touch()"
    for message in (
        raw_message({"payload": {"$nahual": "pickle", "data": evil}}),
        array_message(dtype=evil),
        raw_message({"payload": evil, "meta": {"op": evil}}),
    ):
        try:
            frame = decode(message)
        except ProtocolError:
            continue
        assert frame.payload == evil  # strings stay strings
    assert not marker.exists()


# -- out-of-band buffers (the protocol side; shared memory itself is in test_shm.py) ------------


class _Placement:
    def __init__(self, name: str, offsets: list[int], buffer: bytearray) -> None:
        self.name, self.offsets, self.buffer = name, offsets, buffer


class _MemoryOutOfBand:
    """An out-of-band writer and resolver on one bytearray, standing in for a segment."""

    def __init__(self, threshold: int) -> None:
        self.threshold = threshold
        self.segment = bytearray()

    def place(self, sizes: list[int]) -> _Placement:
        offsets, end = [], ALIGNMENT
        for size in sizes:
            offsets.append(end)
            end = -(-(end + size) // ALIGNMENT) * ALIGNMENT
        self.segment = bytearray(end)
        return _Placement("seg", offsets, self.segment)

    def view(self, name: str, offset: int, nbytes: int) -> memoryview:
        if name != "seg" or offset + nbytes > len(self.segment):
            raise ProtocolError("bad segment reference")
        return memoryview(self.segment)[offset : offset + nbytes]


def test_large_arrays_go_out_of_band_and_small_ones_stay_in_the_message() -> None:
    oob = _MemoryOutOfBand(threshold=1024)
    payload = {"big": np.arange(1000, dtype="<f8")[::2], "small": np.arange(5, dtype=">i2"), "n": 3}
    message_plan = plan(Kind.REQUEST, 9, {"op": "x"}, payload, oob)
    buffer = bytearray(message_plan.nbytes)
    message_plan.write_into(buffer)
    specs = json.loads(bytes(buffer[ENVELOPE.size : ENVELOPE.size + len(message_plan.header)]))["arrays"]
    assert specs[0]["segment"] == "seg" and specs[0]["offset"] == ALIGNMENT
    assert "segment" not in specs[1]
    assert len(buffer) < 4000 / 2  # the big array's 4000 bytes are not in the message
    frame = decode(buffer, oob)
    assert_same(payload, frame.payload)
    assert not frame.payload["big"].flags.writeable
    assert np.shares_memory(frame.payload["big"], np.frombuffer(oob.segment, np.uint8))  # a view, no copy


def test_a_writer_that_declines_leaves_every_array_in_the_message() -> None:
    class Declines(_MemoryOutOfBand):
        def place(self, sizes: list[int]) -> None:
            return None

    payload = {"big": np.arange(1000, dtype="<f8")}
    message_plan = plan(Kind.REQUEST, 9, {}, payload, Declines(threshold=1))
    assert message_plan.nbytes == len(encode(Kind.REQUEST, 9, {}, payload))
    buffer = bytearray(message_plan.nbytes)
    message_plan.write_into(buffer)
    assert_same(payload, decode(buffer).payload)


def test_segment_references_need_a_resolver() -> None:
    oob = _MemoryOutOfBand(threshold=1)
    message_plan = plan(Kind.REPLY, 1, {}, np.zeros(8), oob)
    buffer = bytearray(message_plan.nbytes)
    message_plan.write_into(buffer)
    with pytest.raises(ProtocolError, match="only accepted over ipc"):
        decode(buffer)
    header = json.loads(bytes(buffer[ENVELOPE.size : ENVELOPE.size + len(message_plan.header)]))
    header["arrays"][0]["segment"] = "other"
    text = json.dumps(header).encode()
    forged = ENVELOPE.pack(MAGIC, VERSION, Kind.REPLY, 0, 1, len(text), 0) + text
    with pytest.raises(ProtocolError, match="bad segment"):
        decode(forged, oob)
