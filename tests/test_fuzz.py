"""Fuzzing the server: random and mutated messages get an error reply (or a normal one), never a crash or hang."""

from __future__ import annotations

import json
import random
from collections.abc import Iterator

import numpy as np
import pynng
import pytest
from conftest import Served
from hypothesis import given, settings
from hypothesis import strategies as st

import nahual
from nahual import _protocol as protocol
from nahual._protocol import ENVELOPE, MAGIC, VERSION, Kind
from nahual.errors import ProtocolError
from nahual.server import RequestHandler

MESSAGES = 3000


def seeds(instance: str) -> list[bytes]:
    """Valid requests to mutate (none that sleeps, unloads or shuts down)."""
    image = np.arange(60, dtype=">u2").reshape(6, 10)
    process = {"op": "process", "instance": instance}
    made = [
        protocol.encode(Kind.REQUEST, 11, {"op": "ping"}),
        protocol.encode(Kind.REQUEST, 12, {"op": "load", "model": "echo", "replica": 0}, {}),
        protocol.encode(Kind.REQUEST, 13, process, {"data": {"image": image, "axes": "yx"}, "params": {}}),
        protocol.encode(Kind.REQUEST, 14, process, {"data": [np.zeros(3, np.complex64), "x", 1.5], "params": {}}),
    ]
    return [bytes(message) for message in made]


def mutate(rng: random.Random, message: bytes) -> bytes:
    """One of: random bytes, byte flips, truncation, garbage appended, envelope fields or header rewritten."""
    data = bytearray(message)
    choice = rng.randrange(7)
    if choice == 0:
        return rng.randbytes(rng.randrange(0, 300))
    if choice == 1:
        for _ in range(rng.randint(1, 8)):
            data[rng.randrange(len(data))] = rng.randrange(256)
    elif choice == 2:
        del data[rng.randrange(len(data)) :]
    elif choice == 3:
        data += rng.randbytes(rng.randrange(1, 200))
    elif choice == 4:  # lying envelope: header length, kind, version or magic
        fields = list(ENVELOPE.unpack_from(data))
        index = rng.choice([1, 2, 5])
        fields[index] = rng.randrange(2**16 if index == 1 else 2**8 if index == 2 else 2**32)
        ENVELOPE.pack_into(data, 0, *fields)
    elif choice == 5:  # a header that is valid JSON but says something else
        header = rng.choice(
            [{"arrays": [{"dtype": "<f8", "shape": [2**40], "offset": 64, "nbytes": 2**43}]}, {"meta": [1]},
             {"meta": {"op": "process", "instance": 7}}, {"payload": {"$nahual": "array", "index": 3}}, [], 5]
        )  # fmt: skip
        text = json.dumps(header).encode()
        data = bytearray(ENVELOPE.pack(MAGIC, VERSION, Kind.REQUEST, 0, 99, len(text), 0) + text)
    else:
        position = rng.randrange(ENVELOPE.size, len(data))
        data[position : position + 4] = rng.choice([b"\xff\xfe\x00\x01", b'"}]{', b"9999", b"NaN,"])
    return bytes(data)


def check_reply(sent: bytes, reply: bytes) -> int:
    """The reply is a valid message answering ``sent``; returns its kind."""
    frame = protocol.decode(reply)
    assert frame.kind in (Kind.REPLY, Kind.ERROR)
    try:
        _kind, request_id, _ = protocol.read_envelope(sent)
    except ProtocolError:
        return frame.kind
    assert frame.request_id == request_id
    return frame.kind


def test_thousands_of_hostile_messages_to_a_live_server(echo_server: Served) -> None:
    with nahual.Client(echo_server.address, timeout=10) as client:
        instance = client.load("echo").instance_id
    rng = random.Random(20240601)
    pool = seeds(instance)
    kinds = {Kind.REPLY: 0, Kind.ERROR: 0}
    with pynng.Req0(dial=echo_server.address, recv_timeout=10_000, send_timeout=10_000, resend_time=-1) as sock:
        for _ in range(MESSAGES):
            message = mutate(rng, rng.choice(pool))
            sock.send(message)
            kinds[check_reply(message, sock.recv())] += 1  # a hang would raise pynng.Timeout
    assert kinds[Kind.ERROR] > MESSAGES // 2
    assert echo_server.process.poll() is None
    with nahual.Client(echo_server.address, timeout=10) as client:
        assert client.ping() > 0
        image = np.arange(12.0).reshape(3, 4)
        np.testing.assert_array_equal(client.load("echo")(image), image)


@pytest.fixture(scope="module")
def handler() -> Iterator[RequestHandler]:
    made = RequestHandler()  # no socket: the handler alone
    made.load("echo")
    yield made
    made.close()


def answer(handler: RequestHandler, message: bytes) -> int:
    plan = handler.handle(message)
    buffer = bytearray(plan.nbytes)
    plan.write_into(buffer)
    return check_reply(message, bytes(buffer))


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=500))
def test_handle_answers_any_bytes_with_an_error(handler: RequestHandler, data: bytes) -> None:
    assert answer(handler, data) == Kind.ERROR
    assert answer(handler, MAGIC + bytes([VERSION, 0, Kind.REQUEST]) + data) == Kind.ERROR


@settings(max_examples=500, deadline=None)
@given(st.randoms(use_true_random=False), st.integers(0, 3))
def test_handle_answers_mutated_requests(handler: RequestHandler, rng: random.Random, which: int) -> None:
    instance = handler.load("echo")["instance"]  # the fixture's instance: same model and params
    answer(handler, mutate(rng, seeds(instance)[which]))
