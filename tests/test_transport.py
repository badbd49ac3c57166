"""The nng transport: one copy on send, none on receive, resends off, errors translated, stale sockets,
and the shared transport contract (``transport_contract.TransportTests``)."""

from __future__ import annotations

import gc
import socket
import threading
import time
import tracemalloc
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pynng
import pytest
from conftest import free_tcp_port
from pynng import _nng
from transport_contract import MiB, TransportTests, ask, echo_instance

import nahual
from nahual._nng import Channel, ReplySocket, RequestSocket, ipc_path
from nahual._protocol import Frame, Kind, decode, plan
from nahual.client import NngTransport
from nahual.errors import ConfigError, TransportError


class _Tracked:
    """Wraps a socket so that every channel it makes is closed before the socket (as the server does)."""

    def __init__(self, sock: ReplySocket | RequestSocket, made: list[Channel]) -> None:
        self.sock, self.made, self.address = sock, made, sock.address

    def channel(self) -> Channel:
        self.made.append(self.sock.channel())
        return self.made[-1]

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def pair(ipc_address: Callable[[str], str]) -> Iterator[tuple[_Tracked, _Tracked]]:
    """A listening ReplySocket and a RequestSocket connected to it over ipc."""
    made: list[Channel] = []
    server = ReplySocket(ipc_address("t"))
    client = RequestSocket(server.address, connect_timeout=5)
    try:
        yield _Tracked(server, made), _Tracked(client, made)
    finally:
        for channel in made:
            channel.close()
        client.close()
        server.close()


def test_ipc_path() -> None:
    assert ipc_path("ipc:///run/a b.sock") == "/run/a b.sock"
    assert ipc_path("tcp://127.0.0.1:1") is None


@pytest.mark.parametrize("address", ["http://x", "relative/sock", "", "ipc:/missing-slash"])
def test_unknown_schemes_raise_config_error(address: str) -> None:
    with pytest.raises(ConfigError, match="address must start"):
        ReplySocket(address)
    with pytest.raises(ConfigError, match="address must start"):
        RequestSocket(address, connect_timeout=0.1)


def test_round_trip_through_channels(pair: tuple[_Tracked, _Tracked]) -> None:
    server, client = pair
    image = np.arange(3 * 70_000, dtype=">u2").reshape(3, 70_000)[:, ::7]
    client.channel().send(plan(Kind.REQUEST, 11, {"op": "x"}, {"image": image}), timeout=5)
    frame = decode(server.channel().recv(timeout=5))
    assert frame.request_id == 11 and frame.meta == {"op": "x"}
    assert frame.payload["image"].dtype.str == ">u2"
    np.testing.assert_array_equal(frame.payload["image"], image)


def test_received_arrays_outlive_the_sockets(pair: tuple[_Tracked, _Tracked]) -> None:
    server, client = pair
    client.channel().send(plan(Kind.REQUEST, 1, {}, np.arange(1000, dtype=np.int64)), timeout=5)
    array = decode(server.channel().recv(timeout=5)).payload
    server.close()
    client.close()
    gc.collect()  # only the array's reference keeps the nng message alive now
    assert not array.flags.writeable
    np.testing.assert_array_equal(array, np.arange(1000))


def test_send_copies_each_array_once_and_receive_copies_nothing(pair: tuple[_Tracked, _Tracked]) -> None:
    """Python-side allocations stay tiny: the one copy goes into nng's own message memory."""
    server, client = pair
    array = np.random.default_rng(0).random(16 * MiB // 8)  # 16 MiB, numpy allocations are traced
    strided = np.random.default_rng(1).random((2, 16 * MiB // 8))[0]  # non-contiguous, also one copy
    send_channel, recv_channel = client.channel(), server.channel()
    for payload in (array, strided):
        message_plan = plan(Kind.REQUEST, 1, {}, {"a": payload})
        tracemalloc.start()
        try:
            send_channel.send(message_plan, timeout=5)
            sent_peak = tracemalloc.get_traced_memory()[1]
            tracemalloc.reset_peak()
            received = decode(recv_channel.recv(timeout=5)).payload["a"]
            received_peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        assert sent_peak < MiB, f"send allocated {sent_peak} bytes in Python"
        assert received_peak < MiB, f"receive allocated {received_peak} bytes in Python"
        np.testing.assert_array_equal(received, payload)


def test_tracemalloc_sees_numpy_copies() -> None:
    """The check above could fail: a copy of 16 MiB does show in tracemalloc."""
    array = np.zeros(16 * MiB // 8)
    tracemalloc.start()
    try:
        copy = array.copy()
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak >= 16 * MiB and copy.nbytes == array.nbytes


def test_connect_timeout_to_missing_ipc_socket(short_dir: Path) -> None:
    with pytest.raises(nahual.TimeoutError, match="could not connect") as caught:
        RequestSocket(f"ipc://{short_dir / 'missing.sock'}", connect_timeout=0.01)
    assert isinstance(caught.value, TimeoutError)  # the builtin one


def test_receive_timeout_when_no_reply_comes(pair: tuple[_Tracked, _Tracked]) -> None:
    _server, client = pair  # nobody on the server side receives
    channel = client.channel()
    channel.send(plan(Kind.REQUEST, 1, {}), timeout=1)
    with pytest.raises(nahual.TimeoutError, match="within 0.02 s"):
        channel.recv(timeout=0.02)


def test_closing_the_reply_socket_wakes_blocked_receivers(ipc_address: Callable[[str], str]) -> None:
    server = ReplySocket(ipc_address("w"))
    channel = server.channel()
    errors: list[BaseException] = []

    def receive() -> None:
        try:
            channel.recv(timeout=None)
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=receive)
    thread.start()
    server.close()
    thread.join(timeout=10)
    channel.close()
    assert not thread.is_alive()
    assert len(errors) == 1 and isinstance(errors[0], TransportError)
    with pytest.raises(TransportError, match="closed"):
        server.channel()  # pynng's own Closed is translated too


def count_requests(rep: pynng.Rep0, window_s: float) -> int:
    """How many copies of a request (resends included) arrive within ``window_s``."""
    deadline = time.monotonic() + window_s
    count = 0
    while (left := deadline - time.monotonic()) > 0:
        rep.recv_timeout = max(1, int(left * 1000))
        try:
            rep.recv()
        except pynng.Timeout:
            break
        count += 1
    return count


def fast_resends(sock: pynng.Req0) -> None:
    """Resend every 50 ms, checked every 10 ms (nng checks once a second by default)."""
    sock.resend_time = 50
    assert _nng.lib.nng_socket_set_ms(sock.socket, b"req:resend-tick", 10) == 0


def test_request_channels_never_resend(ipc_address: Callable[[str], str]) -> None:
    # Control: a plain Req0 sends its request again and again while no reply comes.
    with pynng.Rep0(listen=ipc_address("control")) as rep, pynng.Req0(dial=ipc_address("control")) as req:
        fast_resends(req)
        req.send(b"hello")
        assert count_requests(rep, 0.5) > 1
    with pynng.Rep0(listen=ipc_address("r")) as rep:
        client = RequestSocket(ipc_address("r"), connect_timeout=5)
        try:
            assert client._socket.resend_time == -1  # infinite, on the socket
            fast_resends(client._socket)  # and each channel switches it off for its own context
            channel = client.channel()
            try:
                channel.send(plan(Kind.REQUEST, 1, {}), timeout=1)
                assert count_requests(rep, 0.5) == 1
            finally:
                channel.close()
        finally:
            client.close()


def test_stale_socket_file_is_replaced(short_dir: Path) -> None:
    path = short_dir / "stale.sock"
    leftover = socket.socket(socket.AF_UNIX)
    leftover.bind(str(path))  # a socket file nothing listens on, like after SIGKILL
    leftover.close()
    assert path.exists()
    server = ReplySocket(f"ipc://{path}")
    client = RequestSocket(server.address, connect_timeout=5)
    client.close()
    server.close()


def test_live_socket_is_not_stolen(pair: tuple[_Tracked, _Tracked]) -> None:
    server, client = pair
    with pytest.raises(TransportError):
        ReplySocket(server.address)
    client.channel().send(plan(Kind.REQUEST, 2, {}), timeout=1)  # the first server still receives
    assert decode(server.channel().recv(timeout=5)).request_id == 2


# -- the nng transport holds to the shared transport contract -------------------------------------


class _WithToken(NngTransport):
    """Puts the server's token into every request, as a :class:`nahual.Client` does (tcp needs one)."""

    def handle_request(self, request: Frame, timeout: float | None) -> Frame:
        meta = {**request.meta, "token": TOKEN}
        return super().handle_request(Frame(request.kind, request.request_id, meta, request.payload), timeout)


TOKEN = "s3cret"


class TestNngTransport(TransportTests):
    """:class:`NngTransport` against a server in this process, over ipc (shared memory) and tcp (with a token)."""

    @pytest.fixture(params=["ipc", "tcp"])
    def transport(self, request: pytest.FixtureRequest, ipc_address: Callable[[str], str]) -> Iterator[NngTransport]:
        tcp = request.param == "tcp"
        address = f"tcp://127.0.0.1:{free_tcp_port()}" if tcp else ipc_address("c")
        with nahual.Server(address, token=TOKEN if tcp else None, allow_module_models=True) as server:
            made = (_WithToken if tcp else NngTransport)(server.address, connect_timeout=5)
            try:
                yield made
            finally:
                made.close()

    def test_shared_memory_is_negotiated_inside_the_transport(self, transport: NngTransport) -> None:
        instance = echo_instance(transport)
        large = {"data": np.ones(MiB, np.float32), "params": {}}
        for _ in range(2):  # the first request offers a segment, the second uses them
            assert ask(transport, "process", large, instance=instance).meta == {"op": "process"}
        # over ipc the server confirmed it maps our segments; over tcp nothing was offered
        assert transport._shm is (True if transport.address.startswith("ipc://") else None)
