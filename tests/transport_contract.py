"""``TransportTests``: what every :class:`nahual.client.Transport` must do (zarr's ``StoreTests`` pattern).

A transport's test module subclasses it and provides one fixture,
``transport``: an open transport to a request handler that can load ``echo``
and ``models_for_tests:Counter``. Every test here then runs against it, so
the in-process and the nng transports are held to the same behaviour.
"""

from __future__ import annotations

import itertools
import threading
from typing import Any

import numpy as np
import pytest

import nahual
from nahual._protocol import Frame, Kind
from nahual._state import State
from nahual.client import Transport
from nahual.errors import StateError

__all__ = ["TransportTests"]

_ids = itertools.count(1 << 32)
MiB = 1 << 20


def ask(transport: Transport, operation: str, payload: Any = None, timeout: float | None = 10.0, **meta: Any) -> Frame:
    """One request straight through the transport (no client)."""
    return transport.request(Frame(Kind.REQUEST, next(_ids), {"op": operation, **meta}, payload), timeout)


def echo_instance(transport: Transport) -> str:
    reply = ask(transport, "load", {}, model="echo")
    assert reply.kind == Kind.REPLY, reply.meta
    return reply.payload["instance"]


class TransportTests:
    """Subclass with a ``transport`` fixture; see the module docstring."""

    def test_round_trip_of_arrays_and_dicts(self, transport: Transport) -> None:
        instance = echo_instance(transport)
        payload = {
            "image": np.arange(3 * 70_000, dtype=">u2").reshape(3, 70_000)[:, ::7],  # big-endian, strided
            "large": np.random.default_rng(0).random(MiB // 2),  # 4 MiB: out of band where a transport can
            "nested": {"list": [1, 2.5, None, True, "x"], "empty": np.zeros((0, 3), np.float32)},
        }
        reply = ask(transport, "process", {"data": payload, "params": {}}, instance=instance)
        assert reply.kind == Kind.REPLY and reply.meta == {"op": "process"}  # nothing of the transport's own
        result = reply.payload
        for key in ("image", "large"):
            assert result[key].dtype.str == payload[key].dtype.str and not result[key].flags.writeable
            np.testing.assert_array_equal(result[key], payload[key])
        assert result["nested"]["list"] == [1, 2.5, None, True, "x"]
        assert result["nested"]["empty"].shape == (0, 3)

    def test_replies_answer_their_own_request(self, transport: Transport) -> None:
        instance = echo_instance(transport)
        results: dict[int, Any] = {}

        def run(n: int) -> None:
            frame = ask(transport, "process", {"data": np.full(MiB // 4, n), "params": {}}, instance=instance)
            results[n] = int(frame.payload[0]), int(frame.payload[-1])

        threads = [threading.Thread(target=run, args=(n,)) for n in range(6)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=30)
        assert results == {n: (n, n) for n in range(6)}

    def test_errors_come_back_as_error_frames(self, transport: Transport) -> None:
        reply = ask(transport, "process", {"data": 1}, instance="missing")
        assert reply.kind == Kind.ERROR and reply.meta["type"] == "InstanceError"

    def test_timeout_raises_nahual_timeout_error(self, transport: Transport) -> None:
        instance = echo_instance(transport)
        with pytest.raises(nahual.TimeoutError, match="within 0.05 s") as caught:
            ask(transport, "process", {"data": 1, "params": {"delay_s": 1.0}}, timeout=0.05, instance=instance)
        assert isinstance(caught.value, TimeoutError)  # the builtin too
        assert ask(transport, "ping").payload["pong"] is True  # and the transport still works

    def test_close_is_idempotent_and_use_after_close_raises(self, transport: Transport) -> None:
        assert transport.state is State.OPEN and "open" in repr(transport)
        transport.close()
        transport.close()
        assert transport.state is State.CLOSED and "closed" in repr(transport)
        with pytest.raises(StateError, match="closed"):
            ask(transport, "ping")

    def test_context_manager_closes(self, transport: Transport) -> None:
        with transport as entered:
            assert entered is transport
            assert ask(transport, "ping").kind == Kind.REPLY
        assert transport.state is State.CLOSED

    def test_a_client_over_the_transport(self, transport: Transport) -> None:
        with nahual.Client(transport=transport, timeout=10) as client:
            assert client.address == transport.address
            echo = client.load("echo")
            assert echo({"a": [1, 2]}) == {"a": [1, 2]}
            assert list(echo.map([1, 2, 3], inflight=2)) == [1, 2, 3]
        assert transport.state is State.CLOSED
