"""Attacks on servers and clients, reproduced (issue 17: items 1, 2, 3, 5 and 12).

Each test runs the attack or the fault that was found against real sockets and
processes: two clients seeded alike, a hostile working directory, module
references sent by a peer, loopback tcp without a token, ipc sockets under
``umask 0`` or squatted by another user, an oversized message before
authentication, tracebacks sent to strangers and a token with a lone
surrogate (``serve --token-file`` and the ``--token`` warning are in
``test_cli_server.py``). ``docs/security.md`` says what each one protects.
"""

from __future__ import annotations

import json
import os
import random
import stat
import subprocess
import sys
import threading
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pynng
import pytest
from conftest import Served, free_tcp_port, subprocess_env, wait_until

import nahual
from nahual import _protocol as protocol
from nahual._protocol import Kind
from nahual.client import InProcessTransport
from nahual.errors import AuthError, ConfigError, RemoteError, TransportError
from nahual.launcher import launch
from nahual.launcher._api import serve_args
from nahual.server import RequestHandler

MiB = 1 << 20
#: The uid of ``nobody``: "another user" when the tests run as root.
NOBODY = 65534
as_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root to act as another user")


@pytest.fixture
def runtime(short_dir: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A private runtime directory for launched servers, and no token in the environment."""
    monkeypatch.setenv("NAHUAL_RUNTIME_DIR", str(short_dir / "rt"))
    monkeypatch.delenv("NAHUAL_TOKEN", raising=False)
    return short_dir / "rt"


def hostile_directory(root: Path, marker: Path, names: list[str]) -> Path:
    """A world-writable directory where another user left modules named ``names`` that record their import."""
    directory = root / "shared"
    directory.mkdir()
    directory.chmod(0o777)
    record = f"open({str(marker)!r}, 'a').write(__name__ + '\\n')\n"
    for name in names:
        if name == "nahual":
            (directory / "nahual").mkdir()
            (directory / "nahual" / "__init__.py").write_text(record + "raise SystemExit(3)\n")
        else:
            (directory / f"{name}.py").write_text(record)
    return directory


# -- 1. replies go to their own caller ------------------------------------------------------------

SEEDED_CLIENT = """
import json, os, random, sys, time
import nahual

address, tag, ready, go = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
open(ready, "w").close()
deadline = time.monotonic() + 30
while not os.path.exists(go) and time.monotonic() < deadline:
    time.sleep(0.005)
random.seed(0)  # as analysis scripts do: the client's request ids must not follow it
with nahual.Client(address, timeout=30) as client:
    echo = client.load("echo")
    futures = [echo.submit({"tag": tag, "i": i}, delay_s=0.02) for i in range(40)]
    wrong = [i for i, f in enumerate(futures) if f.result() != {"tag": tag, "i": i}]
print(json.dumps(wrong))
"""


def test_two_clients_seeded_alike_never_get_each_others_replies(echo_server: Served, tmp_path: Path) -> None:
    go = tmp_path / "go"
    clients = [
        subprocess.Popen(
            [sys.executable, "-c", SEEDED_CLIENT, echo_server.address, str(tag), str(tmp_path / f"r{tag}"), str(go)],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=subprocess_env(),
        )
        for tag in (1, 2)
    ]
    try:
        wait_until(lambda: all((tmp_path / f"r{tag}").exists() for tag in (1, 2)), 30, "both clients to start")
        go.touch()
        outputs = [client.communicate(timeout=60)[0] for client in clients]
    finally:
        for client in clients:
            client.kill()
            client.wait()
    assert [client.returncode for client in clients] == [0, 0], outputs
    assert [json.loads(output.splitlines()[-1]) for output in outputs] == [[], []]


def raw_request(address: str, request_id: int, payload: object, instance: str) -> pynng.Req0:
    """A plain Req0 that sends one process request with a chosen request id."""
    sock = pynng.Req0(dial=address, recv_timeout=20_000, send_timeout=5_000, resend_time=-1)
    body = {"data": payload, "params": {"delay_s": 0.3}}
    sock.send(bytes(protocol.encode(Kind.REQUEST, request_id, {"op": "process", "instance": instance}, body)))
    return sock


def test_the_same_request_id_from_two_connections_runs_twice(echo_server: Served) -> None:
    with nahual.Client(echo_server.address, timeout=10) as client:
        instance = client.load("echo").instance_id
    sockets = [raw_request(echo_server.address, 42, name, instance) for name in ("first", "second")]
    try:
        replies = [protocol.decode(sock.recv()) for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()
    assert [(reply.kind, reply.payload) for reply in replies] == [(Kind.REPLY, "first"), (Kind.REPLY, "second")]


def test_request_ids_do_not_follow_the_global_random_seed() -> None:
    starts = []
    for _ in range(2):
        random.seed(0)
        with nahual.Client(transport=InProcessTransport(RequestHandler())) as client:
            starts.append(next(client._ids))
    assert starts[0] != starts[1]


# -- 2. no code from another user ----------------------------------------------------------------


def test_a_launched_server_imports_nothing_from_its_working_directory(
    runtime: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    marker = tmp_path / "imported"
    monkeypatch.chdir(hostile_directory(tmp_path, marker, ["nahual", "models_for_tests"]))
    with launch("current", preload="echo", timeout=30) as server, server.client() as client:
        assert client.load("echo")("x") == "x"
    assert not marker.exists(), marker.read_text()


def test_serve_drops_its_working_directory_from_the_import_path(serve: Callable[..., Served], tmp_path: Path) -> None:
    marker = tmp_path / "imported"
    served = serve(cwd=hostile_directory(tmp_path, marker, ["models_for_tests"]))
    with nahual.Client(served.address, timeout=10) as client:
        assert client.load("models_for_tests:Counter")({})["calls"] == 1  # the module on PYTHONPATH
    assert not marker.exists(), marker.read_text()


@pytest.fixture
def sneaky(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A module ``sneaky_module`` on sys.path whose import creates the returned file."""
    marker = tmp_path / "sneaky-imported"
    (tmp_path / "sneaky_module.py").write_text(
        f"open({str(marker)!r}, 'w').close()\nfrom models_for_tests import Counter\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    yield marker
    sys.modules.pop("sneaky_module", None)


def test_module_references_from_peers_are_refused_by_default(sneaky: Path) -> None:
    with nahual.Server(f"inproc://{uuid.uuid4().hex}") as server, nahual.Client(server.address, timeout=10) as client:
        with pytest.raises(RemoteError, match="--allow-module-models") as caught:
            client.load("sneaky_module:Counter")
        assert caught.value.remote_type == "ConfigError"
        assert not sneaky.exists() and "sneaky_module" not in sys.modules  # refused before importing
        assert client.load("echo")("x") == "x"  # entry points always load
        server.load("models_for_tests:Counter")  # the owner's own preload is trusted...
        assert client.load("models_for_tests:Counter", delay_s=0.001)({})["calls"] == 1  # ...and then its class


def test_module_references_load_only_model_classes_when_allowed(sneaky: Path) -> None:
    address = f"inproc://{uuid.uuid4().hex}"
    with nahual.Server(address, allow_module_models=True) as server, nahual.Client(address, timeout=10) as client:
        assert client.load("sneaky_module:Counter")({})["calls"] == 1
        assert sneaky.exists()
        with pytest.raises(RemoteError, match="json:JSONDecoder is not a subclass of nahual.Model"):
            client.load("json:JSONDecoder")
        assert server.state.value == "open"


def test_nahual_serve_refuses_module_references_without_the_flag(serve: Callable[..., Served]) -> None:
    served = serve(allow_module_models=False)
    with nahual.Client(served.address, timeout=10) as client:
        with pytest.raises(RemoteError, match="--allow-module-models"):
            client.load("models_for_tests:Counter")
        assert client.load("echo")(1) == 1


def test_launch_passes_the_module_flag_on() -> None:
    assert "--allow-module-models" in serve_args("ipc://x", allow_module_models=True)
    assert "--allow-module-models" not in serve_args("ipc://x")


def test_tcp_needs_a_token_even_on_loopback() -> None:
    with pytest.raises(ConfigError, match="requires a token"):
        nahual.Server(f"tcp://127.0.0.1:{free_tcp_port()}")


def test_launch_gives_a_tcp_server_a_token_of_its_own(runtime: Path) -> None:
    address = f"tcp://127.0.0.1:{free_tcp_port()}"
    with launch("current", address=address, timeout=30) as server:
        assert server.token and server.token not in " ".join(server.argv)
        with server.client() as client:
            assert client.ping() > 0
        with nahual.Client(address, timeout=10, token="") as stranger, pytest.raises(AuthError):
            stranger.ping()


# -- 3. ipc sockets: private, and the client checks whose they are --------------------------------


def test_ipc_sockets_are_private_whatever_the_umask(short_dir: Path) -> None:
    path = short_dir / "open.sock"
    old = os.umask(0)
    try:
        with nahual.Server(f"ipc://{path}"):
            mode = stat.S_IMODE(path.stat().st_mode)
    finally:
        os.umask(old)
    assert mode == 0o600


@as_root
def test_a_client_refuses_a_socket_file_of_another_user(short_dir: Path) -> None:
    path = short_dir / "theirs.sock"
    with nahual.Server(f"ipc://{path}") as server:
        os.chown(path, NOBODY, NOBODY)
        with pytest.raises(TransportError, match=f"belongs to uid {NOBODY}, not to you"):
            nahual.Client(server.address, timeout=5)
        with nahual.Client(server.address, timeout=5, allow_foreign_socket=True) as client:
            assert client.ping() > 0


SQUATTER = """
import os, sys
import nahual.server
os.setgid(int(sys.argv[2]))
os.setuid(int(sys.argv[2]))
server = nahual.server.Server(sys.argv[1]).start()
open(sys.argv[3], "w").close()
sys.stdin.read()
server.close()
"""


@as_root
def test_a_client_refuses_a_server_of_another_user_that_appears_later(short_dir: Path) -> None:
    """Another user binds the path first (a shared temporary directory) after the client began dialing."""
    short_dir.chmod(0o755)
    shared = short_dir / "tmp"
    shared.mkdir()
    shared.chmod(0o1777)
    address = f"ipc://{shared / 'nahual.sock'}"
    errors: list[BaseException] = []

    def connect() -> None:
        try:
            nahual.Client(address, timeout=20).close()
        except BaseException as exc:
            errors.append(exc)

    dialer = threading.Thread(target=connect)
    dialer.start()  # the socket does not exist yet: the client dials in the background
    ready = shared / "squatting"
    squatter = subprocess.Popen(
        [sys.executable, "-c", SQUATTER, address, str(NOBODY), str(ready)], stdin=subprocess.PIPE, env=subprocess_env()
    )
    try:
        dialer.join(timeout=30)
    finally:
        squatter.communicate(timeout=15)
    assert ready.exists(), "the squatter never listened: the test proves nothing"
    assert len(errors) == 1 and isinstance(errors[0], TransportError), errors
    assert f"peer runs as uid {NOBODY}" in str(errors[0])


# -- 5. no buffering before authentication --------------------------------------------------------


def peak_rss(pid: int) -> int:
    """The peak resident set size of ``pid``, in bytes (``VmHWM``)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmHWM for pid {pid}")


def test_an_oversized_message_is_dropped_before_it_is_buffered(serve: Callable[..., Served]) -> None:
    served = serve(
        "--max-message-bytes", str(MiB), address=f"tcp://127.0.0.1:{free_tcp_port()}", env={"NAHUAL_TOKEN": "s3cret"}
    )
    before = peak_rss(served.process.pid)
    huge = protocol.encode(Kind.REQUEST, 1, {"op": "ping", "token": "wrong"}, np.zeros(64 * MiB, np.uint8))
    dropped = threading.Event()
    with pynng.Req0(recv_timeout=20_000, send_timeout=20_000, resend_time=-1) as sock:
        sock.add_post_pipe_remove_cb(lambda _pipe: dropped.set())
        sock.dial(served.address, block=True)
        sock.send(bytes(huge))
        assert dropped.wait(20), "the server kept the connection: it read the whole message"
    with nahual.Client(served.address, timeout=10, token="s3cret") as client:
        assert client.ping() > 0
    assert peak_rss(served.process.pid) - before < 32 * MiB


def test_max_message_bytes_must_be_positive() -> None:
    with pytest.raises(ConfigError, match="max_message_bytes must be a positive number of bytes or None"):
        nahual.Server("inproc://m", max_message_bytes=0)


# -- 12. tokens: not in ps, no tracebacks for strangers, any string ------------------------------


@pytest.fixture
def guarded() -> Iterator[RequestHandler]:
    handler = RequestHandler(token="s3cret")
    yield handler
    handler.close()


def reply_to(handler: RequestHandler, message: bytes | bytearray) -> protocol.Frame:
    plan = handler.handle(message)
    buffer = bytearray(plan.nbytes)
    plan.write_into(buffer)
    return protocol.decode(buffer)


@pytest.mark.parametrize(
    "meta",
    [{"op": "ping"}, {"op": "ping", "token": "wrong"}, {"op": "dance"}, {"op": "load", "model": "/etc:x"}],
    ids=["no-token", "wrong-token", "unknown-op", "load"],
)
def test_strangers_learn_nothing_but_the_refusal(guarded: RequestHandler, meta: dict) -> None:
    frame = reply_to(guarded, protocol.encode(Kind.REQUEST, 7, meta))
    assert frame.kind == Kind.ERROR
    assert (frame.meta["type"], frame.meta["message"], frame.meta["traceback"]) == (
        "AuthError",
        "missing or wrong token",
        "",
    )


def test_a_malformed_request_to_a_guarded_server_has_no_traceback(guarded: RequestHandler) -> None:
    frame = reply_to(guarded, b"GET / HTTP/1.1\r\n\r\n")
    assert frame.meta["type"] == "ProtocolError" and frame.meta["traceback"] == ""


def test_a_refused_client_sees_one_line(serve: Callable[..., Served]) -> None:
    served = serve(address=f"tcp://127.0.0.1:{free_tcp_port()}", env={"NAHUAL_TOKEN": "s3cret"})
    with nahual.Client(served.address, timeout=10, token="wrong") as client, pytest.raises(AuthError) as caught:
        client.load("echo")
    assert str(caught.value) == "AuthError in 'load': missing or wrong token"
    assert caught.value.remote_traceback == ""


def test_a_token_with_a_lone_surrogate_is_refused_not_a_crash(guarded: RequestHandler) -> None:
    with nahual.Client(transport=InProcessTransport(guarded), token="\ud800") as client:
        with pytest.raises(AuthError, match="missing or wrong token"):
            client.ping()


def test_a_server_token_with_a_lone_surrogate_still_works() -> None:
    """``os.environ`` turns bytes that are not UTF-8 into lone surrogates (``\\udcff``)."""
    handler = RequestHandler(token="s3\udcff")
    try:
        with nahual.Client(transport=InProcessTransport(handler), token="s3\udcff") as client:
            assert client.ping() > 0
        with nahual.Client(transport=InProcessTransport(handler), token="s3") as client:
            with pytest.raises(AuthError):
                client.ping()
    finally:
        handler.close()
