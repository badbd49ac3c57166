"""The model server: one reply per request, errors as replies, no double runs, lifecycle, auth.

Fast checks run a :class:`nahual.Server` in this process (``inproc://``); the
rest start real ``nahual serve`` processes through the ``serve`` fixture.
"""

from __future__ import annotations

import glob
import itertools
import json
import os
import signal
import socket
import struct
import subprocess
import sys
import threading
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pynng
import pytest
from conftest import Served, free_tcp_port, wait_until
from models_for_tests import Counter
from pynng import _nng

import nahual
from nahual import _protocol as protocol
from nahual._protocol import Kind
from nahual._state import State
from nahual.errors import AuthError, ConfigError, RemoteError, StateError
from nahual.server import _dispatch

COUNTER = "models_for_tests:Counter"
FAIL = "models_for_tests:Fail"
_ids = itertools.count(1000)


@pytest.fixture
def server() -> Iterator[nahual.Server]:
    with nahual.Server(f"inproc://{uuid.uuid4().hex}", allow_module_models=True) as running:
        yield running


@pytest.fixture
def client(server: nahual.Server) -> Iterator[nahual.Client]:
    with nahual.Client(server.address, timeout=10) as connected:
        yield connected


def request(operation: str, payload: object = None, request_id: int | None = None, **meta: object) -> bytes:
    return bytes(protocol.encode(Kind.REQUEST, request_id or next(_ids), {"op": operation, **meta}, payload))


def _written(message_plan: protocol.MessagePlan) -> bytearray:
    buffer = bytearray(message_plan.nbytes)
    message_plan.write_into(buffer)
    return buffer


def log_lines(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


# -- in-process ---------------------------------------------------------------------------------


def test_ping_and_info(client: nahual.Client) -> None:
    assert client.ping() > 0
    info = client.info()
    assert info["protocol"] == protocol.VERSION and info["pid"] == os.getpid()
    assert info["packages"]["numpy"] == np.__version__ and info["packages"]["pynng"]
    assert info["models"]["echo"]["contract"]["params"]["delay_s"]
    assert info["instances"] == []
    client.load("echo")
    assert [i["model"] for i in client.info()["instances"]] == ["echo"]


def test_model_exception_becomes_an_error_reply_and_the_server_keeps_serving(client: nahual.Client) -> None:
    failing = client.load(FAIL)
    with pytest.raises(RemoteError) as caught:
        failing({"message": "no cells found"})
    error = caught.value
    assert error.remote_type == "ValueError" and error.remote_message == "no cells found"
    assert error.operation == "process" and error.request_id > 0
    assert "models_for_tests.py" in error.remote_traceback and "raise ValueError" in error.remote_traceback
    assert str(error) == "ValueError in 'process': no cells found"
    assert client.ping() > 0
    np.testing.assert_array_equal(client.load("echo")(np.arange(3)), np.arange(3))


def test_unknown_model_lists_the_available_ones(client: nahual.Client) -> None:
    with pytest.raises(RemoteError, match="unknown model 'nope'.*echo") as caught:
        client.load("nope")
    assert caught.value.remote_type == "ConfigError" and caught.value.operation == "load"
    with pytest.raises(RemoteError, match="has no class"):
        client.load("models_for_tests:Missing")


def test_same_model_and_params_give_the_same_instance(client: nahual.Client) -> None:
    before = Counter.loads
    first = client.load(COUNTER, delay_s=0)
    assert client.load(COUNTER, delay_s=0).instance_id == first.instance_id
    assert Counter.loads == before + 1  # loaded once
    assert first({})["calls"] == 1 and first({})["calls"] == 2  # one object keeps its state
    assert client.load(COUNTER, delay_s=0.001).instance_id != first.instance_id
    assert client.load(COUNTER, delay_s=0, replica=1).instance_id != first.instance_id
    assert Counter.loads == before + 3


def test_concurrent_loads_of_one_model_load_it_once(server: nahual.Server) -> None:
    before = Counter.loads
    with nahual.Client(server.address, timeout=10) as client:
        futures = [client.submit("load", {"load_delay_s": 0.2}, model=COUNTER) for _ in range(4)]
        ids = {future.result()["instance"] for future in futures}
    assert len(ids) == 1 and Counter.loads == before + 1


def test_unload_then_process_is_a_clear_error(client: nahual.Client) -> None:
    echo = client.load("echo")
    echo.unload()
    with pytest.raises(RemoteError, match="no instance") as caught:
        echo({})
    assert caught.value.remote_type == "InstanceError"
    assert client.info()["instances"] == []


def test_unsendable_result_becomes_an_error_reply(client: nahual.Client) -> None:
    with pytest.raises(RemoteError, match="cannot send a set") as caught:
        client.load("models_for_tests:Unsendable")({})
    assert caught.value.remote_type == "PayloadError"
    assert client.ping() > 0


@pytest.mark.parametrize(
    "message, match",
    [
        (request("dance"), "unknown operation 'dance'"),
        (request("process"), "needs meta 'instance'"),
        (request("load", [1, 2], model="echo"), "dict payload"),
        (bytes(protocol.encode(Kind.REPLY, 5, {"op": "ping"})), "expected a request"),
        (b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n", "bad magic"),
        (b"", "shorter than"),
    ],
    ids=["unknown-op", "no-instance", "bad-load", "reply-kind", "http", "empty"],
)
def test_bad_requests_get_one_error_reply(server: nahual.Server, message: bytes, match: str) -> None:
    frame = protocol.decode(_written(server.handler.handle(message)))
    assert frame.kind == Kind.ERROR
    assert match in frame.meta["message"]
    assert set(frame.meta) >= {"type", "message", "traceback", "op", "request_id"}


def test_error_reply_carries_the_request_id_when_the_envelope_is_readable(server: nahual.Server) -> None:
    frame = protocol.decode(_written(server.handler.handle(request("dance", request_id=777))))
    assert frame.request_id == 777 and frame.meta["request_id"] == 777 and frame.meta["op"] == "dance"


def test_a_request_id_runs_once_even_when_received_twice(server: nahual.Server, tmp_path: Path) -> None:
    log = tmp_path / "calls"
    instance = server.load(COUNTER, {"log": str(log)})["instance"]
    message = request("process", {"data": {"n": 1}, "params": {"delay_s": 0.3}}, instance=instance)
    replies: list[protocol.Frame] = []
    answer = server.handler.handle
    threads = [threading.Thread(target=lambda: replies.append(protocol.decode(_written(answer(message)))))
               for _ in range(3)]  # fmt: skip
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert len(log_lines(log)) == 1
    assert [frame.kind for frame in replies] == [Kind.REPLY] * 3
    assert all(frame.payload["calls"] == 1 for frame in replies)
    late = protocol.decode(_written(server.handler.handle(message)))  # a resend after the answer
    assert late.kind == Kind.ERROR and "already answered" in late.meta["message"]
    assert len(log_lines(log)) == 1


def fast_resending_req(address: str, resend_ms: int = 300) -> pynng.Req0:
    """A plain Req0 that resends after ``resend_ms``, checked every 50 ms (nng's default tick is 1 s)."""
    sock = pynng.Req0(resend_time=resend_ms, recv_timeout=20_000, send_timeout=5_000)
    assert _nng.lib.nng_socket_set_ms(sock.socket, b"req:resend-tick", 50) == 0
    sock.dial(address, block=True)
    return sock


def test_nng_resends_of_a_slow_request_do_not_run_it_again(
    server: nahual.Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    log = tmp_path / "calls"
    instance = server.load(COUNTER, {"log": str(log)})["instance"]
    received = []
    handle = server.handler.handle
    monkeypatch.setattr(server.handler, "handle", lambda *args, **kw: received.append(1) or handle(*args, **kw))
    with fast_resending_req(server.address) as sock:
        sock.send(request("process", {"data": "slow", "params": {"delay_s": 1.2}}, instance=instance))
        reply = protocol.decode(sock.recv())
    assert reply.kind == Kind.REPLY and reply.payload["calls"] == 1
    assert len(received) > 1, "nng did not resend: the test proves nothing"
    assert len(log_lines(log)) == 1


def test_past_max_held_model_requests_are_refused_and_control_requests_still_answered(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(_dispatch, "MAX_HELD", 1)
    log = tmp_path / "calls"
    with nahual.Server(f"inproc://{uuid.uuid4().hex}", workers=1, allow_module_models=True) as server:
        with nahual.Client(server.address, timeout=10) as client:
            counter = client.load(COUNTER, log=str(log))
            held = counter.submit({}, delay_s=0.5)
            wait_until(lambda: len(log_lines(log)) == 1, what="the held request to run")
            with pytest.raises(RemoteError, match="holds 1 model requests already") as caught:
                counter({})
            assert caught.value.remote_type == "StateError" and caught.value.operation == "process"
            assert client.ping() > 0 and client.info()["instances"]
            assert held.result(timeout=10)["calls"] == 1
            wait_until(lambda: _answered(counter), what="room for a model request again")  # once its worker is back
    assert len(log_lines(log)) == 2


def _answered(handle: nahual.ModelHandle) -> bool:
    """Whether a process request was run (False when the server refused it as full)."""
    try:
        handle({})
    except RemoteError as exc:
        assert exc.remote_type == "StateError", exc
        return False
    return True


def test_shutdown_request_stops_the_server(server: nahual.Server, client: nahual.Client) -> None:
    client.shutdown()
    assert server.wait(timeout=10)


def test_close_removes_the_ipc_socket_file(short_dir: Path) -> None:
    path = short_dir / "x.sock"
    with nahual.Server(f"ipc://{path}") as running:
        assert path.exists()
        with nahual.Client(running.address, timeout=5) as client:
            client.ping()
    assert not path.exists()


def test_token_is_required_and_checked(server: nahual.Server) -> None:
    with nahual.Server(f"inproc://{uuid.uuid4().hex}", token="s3cret") as guarded:
        for token in (None, "wrong", ""):
            with nahual.Client(guarded.address, timeout=5, token=token) as client:
                with pytest.raises(AuthError, match="token") as caught:
                    client.ping()
                assert "s3cret" not in str(caught.value) + caught.value.remote_traceback
        with nahual.Client(guarded.address, timeout=5, token="s3cret") as client:
            assert client.ping() > 0


@pytest.mark.parametrize(
    "address",
    ["tcp://127.0.0.1:5999", "tcp://[::1]:5999", "tcp://0.0.0.0:5999", "tcp://192.168.0.1:5999", "tcp://*:5999"],
)
def test_tcp_needs_a_token_even_on_loopback(address: str) -> None:
    with pytest.raises(ConfigError, match="requires a token .*ipc is the transport without one"):
        nahual.Server(address)


def test_workers_must_be_positive() -> None:
    with pytest.raises(ConfigError, match="workers"):
        nahual.Server("inproc://w", workers=0)
    with pytest.raises(ConfigError, match="send_timeout must be a positive number"):
        nahual.Server("inproc://w", send_timeout=0)


def test_a_server_starts_once(short_dir: Path) -> None:
    server = nahual.Server(f"ipc://{short_dir / 'once.sock'}")
    assert "unopened" in repr(server)
    with pytest.raises(StateError, match="start"):
        server.serve()
    with server:
        with pytest.raises(StateError, match="is open; a server starts once"):
            server.start()
        with nahual.Client(server.address, timeout=5) as client:
            assert client.ping() > 0
    server.close()  # idempotent
    assert server.state is State.CLOSED and not (short_dir / "once.sock").exists()
    with pytest.raises(StateError, match="is closed; a server starts once"):
        server.start()
    assert not (short_dir / "once.sock").exists()  # nothing was bound again


def test_closing_a_server_that_never_started_leaves_the_address_alone(short_dir: Path) -> None:
    with nahual.Server(f"ipc://{short_dir / 'busy.sock'}") as running:
        idle = nahual.Server(running.address)
        idle.load("echo")
        idle.close()  # unloads, but must not unlink the running server's socket file
        assert idle.handler.info()["instances"] == []
        with nahual.Client(running.address, timeout=5) as client:
            assert client.ping() > 0


def raw_requests(address: str, messages: list[bytes]) -> socket.socket:
    """Send requests over a raw SP (nng's wire) tcp connection that never reads its replies."""
    host, port = address[len("tcp://") :].rsplit(":", 1)
    sock = socket.create_connection((host, int(port)), timeout=10)
    sock.sendall(b"\x00SP\x00" + struct.pack(">H", 0x30) + b"\x00\x00")  # SP header of a Req0 peer
    assert sock.recv(8)[:4] == b"\x00SP\x00"
    for index, message in enumerate(messages):
        body = struct.pack(">I", 0x8000_0000 | index + 1) + message  # Req0's request id, then the message
        sock.sendall(struct.pack(">Q", len(body)) + body)
    return sock


@pytest.mark.parametrize("send_timeout", [0.05, None], ids=["tiny", "forever"])
def test_a_reply_that_cannot_be_sent_frees_its_worker_after_the_send_timeout(send_timeout: float | None) -> None:
    """A client that stops reading fills the pipe: the next reply waits at most ``send_timeout``."""
    address = f"tcp://127.0.0.1:{free_tcp_port()}"
    with nahual.Server(address, token="s3cret", workers=1, send_timeout=send_timeout) as server:
        loaded = server.load("echo")
        instance = loaded["instance"]
        big = {"data": np.zeros(16 << 20, np.uint8), "params": {}}  # more than the kernel buffers
        stuck = raw_requests(address, [request("process", big, instance=instance, token="s3cret") for _ in range(3)])
        try:
            with nahual.Client(address, timeout=nahual.Timeout(connect=5, request=1.0), token="s3cret") as client:
                assert client.ping() > 0  # control requests never wait for a worker
                echo = nahual.ModelHandle(client, loaded)
                if send_timeout is None:  # the control: the only worker waits forever
                    with pytest.raises(nahual.TimeoutError):
                        echo("x")
                else:
                    assert echo("x") == "x"
        finally:
            stuck.close()


# -- real server processes -----------------------------------------------------------------------


def test_remote_errors_keep_the_server_process_alive(echo_server: Served) -> None:
    with nahual.Client(echo_server.address, timeout=10) as client:
        for _ in range(3):
            with pytest.raises(RemoteError, match="ValueError"):
                client.load(FAIL)({"message": "x"})
        assert client.load("echo")({"a": 1}) == {"a": 1}
    assert echo_server.process.poll() is None


def test_slow_request_runs_once_with_a_resending_raw_req0(echo_server: Served, tmp_path: Path) -> None:
    log = tmp_path / "calls"
    with nahual.Client(echo_server.address, timeout=10) as client:
        instance = client.load(COUNTER, log=str(log)).instance_id
    with fast_resending_req(echo_server.address) as sock:
        sock.send(request("process", {"data": 1, "params": {"delay_s": 1.2}}, instance=instance))
        reply = protocol.decode(sock.recv())
    assert reply.kind == Kind.REPLY and reply.payload["calls"] == 1
    assert len(log_lines(log)) == 1


def test_slow_request_runs_once_with_the_client(echo_server: Served, tmp_path: Path) -> None:
    log = tmp_path / "calls"
    with nahual.Client(echo_server.address, timeout=10) as client:
        counter = client.load(COUNTER, log=str(log))
        assert counter({}, delay_s=1.2)["calls"] == 1
        assert counter({})["calls"] == 2
    assert len(log_lines(log)) == 2


def test_several_instances_side_by_side(serve: Callable[..., Served]) -> None:
    servers = [serve() for _ in range(3)]
    pids = set()
    for served in servers:
        with nahual.Client(served.address, timeout=10) as client:
            pids.add(client.info()["pid"])
            assert client.load("echo")("x") == "x"
    assert pids == {served.process.pid for served in servers}


def test_ready_file_names_the_server_and_comes_after_preload(serve: Callable[..., Served]) -> None:
    served = serve("--preload", COUNTER, "--params", '{"load_delay_s": 0.3}')
    ready = json.loads(served.ready_file.read_text())
    assert ready == {"address": served.address, "pid": served.process.pid}
    assert served.socket_path is not None and served.socket_path.exists()
    with nahual.Client(served.address, timeout=10) as client:
        (instance,) = client.info()["instances"]  # loaded before the ready file appeared
    assert instance["model"] == COUNTER and instance["params"] == {"load_delay_s": 0.3}


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_signals_shut_down_gracefully(serve: Callable[..., Served], signum: int) -> None:
    served = serve()
    with nahual.Client(served.address, timeout=10) as client:
        client.load("echo")
    served.process.send_signal(signum)
    assert served.process.wait(timeout=15) == 0
    assert served.socket_path is not None and not served.socket_path.exists()
    assert not served.ready_file.exists()


def test_sigterm_can_leave_the_socket_and_ready_file_to_the_supervisor(serve: Callable[..., Served]) -> None:
    """Snakemake stats a service job's files after its SIGTERM, then removes them itself."""
    served = serve("--leave-files-on-sigterm")
    with nahual.Client(served.address, timeout=10) as client:
        big = np.arange(1 << 20, dtype=np.uint8)  # large enough for shared memory
        np.testing.assert_array_equal(client.load("echo")(big), big)
    served.process.send_signal(signal.SIGTERM)
    assert served.process.wait(timeout=15) == 0
    assert served.socket_path is not None and served.socket_path.exists()
    assert served.ready_file.exists()
    assert not glob.glob(f"/dev/shm/nahual-{served.process.pid}-*")  # its shared memory went
    served.socket_path.unlink()  # what the supervisor does
    served.ready_file.unlink()


def test_sigint_removes_the_files_even_when_sigterm_would_leave_them(serve: Callable[..., Served]) -> None:
    served = serve("--leave-files-on-sigterm")
    served.process.send_signal(signal.SIGINT)  # Ctrl-C: no supervisor will clean up
    assert served.process.wait(timeout=15) == 0
    assert served.socket_path is not None and not served.socket_path.exists()
    assert not served.ready_file.exists()


def test_a_killed_servers_socket_file_is_taken_over(serve: Callable[..., Served]) -> None:
    first = serve()
    first.check_clean = False
    first.process.kill()
    first.process.wait(timeout=15)
    assert first.socket_path is not None and first.socket_path.exists()  # SIGKILL leaves it behind
    second = serve(address=first.address)
    with nahual.Client(second.address, timeout=10) as client:
        assert client.info()["pid"] == second.process.pid


def test_auth_is_refused_on_tcp_without_the_token(serve: Callable[..., Served]) -> None:
    served = serve(address=f"tcp://127.0.0.1:{free_tcp_port()}", env={"NAHUAL_TOKEN": "s3cret"})
    with nahual.Client(served.address, timeout=10, token="") as client:
        with pytest.raises(AuthError, match="missing or wrong token"):
            client.ping()
        with pytest.raises(AuthError):
            client.load("echo")
    with nahual.Client(served.address, timeout=10, token="s3cret") as client:
        assert client.load("echo")([1, "a"]) == [1, "a"]


def test_server_exits_when_its_parent_dies(serve: Callable[..., Served]) -> None:
    parent = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE)
    try:
        served = serve("--parent", str(parent.pid))
        parent.stdin.close()  # the parent exits
        parent.wait(timeout=15)
        assert served.process.wait(timeout=15) == 0
        wait_until(lambda: not served.ready_file.exists(), what="ready file removal")
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait()
