"""The client: against real server processes (calls, pipelining, timeouts, dead servers, seed style), and the
limits of every blocking call through an in-process transport."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import Served

import nahual
from nahual import Timeout
from nahual import _protocol as protocol
from nahual._state import State
from nahual._transport import PLAIN, Codec
from nahual.client import USE_CLIENT_DEFAULT, InProcessTransport, NngTransport
from nahual.errors import ConfigError, RemoteError, StateError, TransportError
from nahual.server import RequestHandler

COUNTER = "models_for_tests:Counter"


def test_load_and_call_echo_with_arrays(echo_server: Served) -> None:
    image = np.arange(4 * 70_000, dtype=">f4").reshape(4, 70_000)[::2, ::3]  # strided, big-endian
    payload = {"image": image, "labels": np.ones((2, 2), np.uint32), "axes": "yx", "n": [1, 2.5, None, True]}
    with nahual.Client(echo_server.address, timeout=10) as client:
        echo = client.load("echo")
        assert echo.model == "echo" and echo.contract.params["delay_s"]
        result = echo(payload)
    assert result["axes"] == "yx" and result["n"] == [1, 2.5, None, True]
    assert result["image"].dtype.str == ">f4" and result["labels"].dtype == np.uint32
    np.testing.assert_array_equal(result["image"], image)
    assert not result["image"].flags.writeable  # a view on the reply; copy to write


def test_large_array_round_trip(echo_server: Served) -> None:
    array = np.random.default_rng(0).random((64, 1024, 256), dtype=np.float32)  # 64 MiB
    with nahual.Client(echo_server.address, timeout=30) as client:
        np.testing.assert_array_equal(client.load("echo")(array), array)


def test_map_keeps_order_and_submit_returns_futures(echo_server: Served) -> None:
    arrays = [np.full((16, 16), i, np.int32) for i in range(20)]
    with nahual.Client(echo_server.address, timeout=10) as client:
        echo = client.load("echo")
        results = list(echo.map(arrays, inflight=4))
        future = echo.submit({"x": 1})
        assert future.result(timeout=10) == {"x": 1}
    assert [int(result[0, 0]) for result in results] == list(range(20))


def test_map_spreads_over_replicas_in_order(echo_server: Served) -> None:
    with nahual.Client(echo_server.address, timeout=10) as client:
        handles = [client.load(COUNTER, replica=r) for r in range(3)]
        futures = [handles[i % 3].submit(i) for i in range(12)]
        assert [f.result(timeout=10)["payload"] for f in futures] == list(range(12))


@pytest.mark.parametrize("inflight", [0, 65])
def test_map_refuses_bad_inflight(echo_server: Served, inflight: int) -> None:
    with nahual.Client(echo_server.address, timeout=10) as client, pytest.raises(ConfigError, match="inflight"):
        list(client.load("echo").map([1], inflight=inflight))


def test_map_raises_the_remote_error(echo_server: Served) -> None:
    with nahual.Client(echo_server.address, timeout=10) as client:
        failing = client.load("models_for_tests:Fail")
        with pytest.raises(RemoteError, match="ValueError"):
            list(failing.map([{"message": "x"}] * 3, inflight=2))


def test_request_timeout_fires_on_delay_and_the_client_recovers(echo_server: Served) -> None:
    with nahual.Client(echo_server.address, timeout=Timeout(connect=10, request=0.05)) as client:
        echo = nahual.ModelHandle(client, client.request("load", {}, timeout=10, model="echo"))
        with pytest.raises(nahual.TimeoutError, match="within 0.05 s") as caught:
            echo({"slow": True}, delay_s=1.0)
        assert isinstance(caught.value, TimeoutError)
        # The late reply to the timed-out request is never taken for the next one
        # (which waits for the instance, still busy with the slow call).
        assert client.request("ping", timeout=10)["pong"] is True
        fast = {"data": {"fast": 1}, "params": {"delay_s": 0}}
        assert client.request("process", fast, timeout=10, instance=echo.instance_id) == {"fast": 1}


def test_per_call_timeout_overrides_the_client_default(echo_server: Served) -> None:
    with nahual.Client(echo_server.address, timeout=10) as client:
        echo = client.load("echo")
        with pytest.raises(nahual.TimeoutError):
            client.request("process", {"data": 1, "params": {"delay_s": 1.0}}, timeout=0.05, instance=echo.instance_id)
        assert client.ping(timeout=10) > 0


def test_a_call_its_client_gave_up_on_is_never_run(echo_server: Served) -> None:
    with nahual.Client(echo_server.address, timeout=10) as client:
        echo = client.load("echo")
        slow = echo.submit({"slow": 1}, delay_s=2.0)  # holds the instance for two seconds
        while client.info()["instances"][0]["held"] == 0:  # until the server has it
            time.sleep(0.01)
        with pytest.raises(nahual.TimeoutError):
            echo({"late": 1}, timeout=0.2)  # waits behind it, past its deadline: the server drops it unrun
        assert slow.result(timeout=10) == {"slow": 1}
        (instance,) = client.info()["instances"]
        assert instance["calls"] == 1


def test_connect_timeout_to_a_missing_socket(short_dir: Path) -> None:
    with pytest.raises(nahual.TimeoutError, match="could not connect"):
        nahual.Client(f"ipc://{short_dir / 'nobody.sock'}", timeout=Timeout(connect=0.01, request=10))


def test_dead_server_gives_an_error_within_the_timeout(echo_server: Served) -> None:
    with nahual.Client(echo_server.address, timeout=Timeout(connect=10, request=0.5)) as client:
        client.ping(timeout=10)
        echo_server.check_clean = False
        echo_server.process.kill()
        echo_server.process.wait(timeout=15)
        with pytest.raises(TransportError):  # a timeout, or "connection reset" when nng noticed the death
            client.ping()
        with pytest.raises(TransportError):
            client.ping()


def test_server_dying_mid_request_gives_an_error(echo_server: Served) -> None:
    with nahual.Client(echo_server.address, timeout=Timeout(connect=10, request=1.0)) as client:
        echo = nahual.ModelHandle(client, client.request("load", {}, timeout=10, model="echo"))
        future = echo.submit({}, delay_s=30)
        echo_server.check_clean = False
        echo_server.process.kill()
        with pytest.raises(TransportError):  # the lost connection (test_liveness.py), or a timeout if sent after
            future.result(timeout=15)


def test_two_clients_at_once(echo_server: Served) -> None:
    results: dict[int, list] = {}

    def run(n: int) -> None:
        with nahual.Client(echo_server.address, timeout=10) as client:
            echo = client.load("echo")
            results[n] = [echo(np.full(1000, n * 100 + i)) for i in range(10)]

    threads = [threading.Thread(target=run, args=(n,)) for n in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert sorted(results) == [0, 1]
    for n, arrays in results.items():
        assert [int(a[0]) for a in arrays] == [n * 100 + i for i in range(10)]


def test_object_dtype_is_refused_before_sending(echo_server: Served, tmp_path: Path) -> None:
    log = tmp_path / "calls"
    with nahual.Client(echo_server.address, timeout=10) as client:
        counter = client.load(COUNTER, log=str(log))
        with pytest.raises(TypeError, match="cannot be sent"):
            counter({"image": np.array([object()], dtype=object)})
        with pytest.raises(TypeError):
            counter({"when": {1, 2}})
        assert counter({})["calls"] == 1  # nothing reached the model before
    assert len(log.read_text().splitlines()) == 1


def test_lifecycle_close_is_idempotent_and_reopen_raises(echo_server: Served) -> None:
    client = nahual.Client(echo_server.address, timeout=10)
    assert "open" in repr(client)
    client.close()
    client.close()
    assert "closed" in repr(client)
    with pytest.raises(StateError, match="closed"):
        client.open()
    with pytest.raises(StateError, match="closed"):
        client.ping()
    with pytest.raises(StateError, match="closed"):
        client.submit("ping")
    assert isinstance(client.transport, NngTransport) and client.transport.state is State.CLOSED


def test_shutdown_stops_the_server_process(echo_server: Served) -> None:
    with nahual.Client(echo_server.address, timeout=10) as client:
        client.shutdown()
    assert echo_server.process.wait(timeout=15) == 0
    assert echo_server.socket_path is not None and not echo_server.socket_path.exists()


def test_token_from_the_environment(serve: Callable[..., Served], monkeypatch: pytest.MonkeyPatch) -> None:
    served = serve("--token", "from-cli")
    monkeypatch.setenv("NAHUAL_TOKEN", "from-cli")
    with nahual.Client(served.address, timeout=10) as client:
        assert client.ping() > 0
    monkeypatch.setenv("NAHUAL_TOKEN", "other")
    with nahual.Client(served.address, timeout=10) as client, pytest.raises(nahual.AuthError):
        client.ping()


def test_seed_call_style(echo_server: Served) -> None:
    from nahual.client.echo import load_model, process_data

    described = load_model({"delay_s": 0}, address=echo_server.address)
    assert described["model"] == "echo" and described["params"] == {"delay_s": 0}
    image = np.arange(12, dtype=np.uint16).reshape(3, 4)
    np.testing.assert_array_equal(process_data(image, address=echo_server.address), image)
    with nahual.Client(echo_server.address, timeout=10) as client:
        assert [i["id"] for i in client.info()["instances"]] == [described["instance"]]  # no second load


# -- every blocking call takes timeout= (in-process: the limits, not the socket, are under test) ------


class SlowHandler:
    """A request handler that waits ``delay`` seconds before each answer."""

    def __init__(self, delay: float) -> None:
        self.delay = delay
        self.inner = RequestHandler(allow_module_models=True)
        self.gate = threading.Event()

    def handle(self, buffer: Any, codec: Codec = PLAIN) -> protocol.MessagePlan:
        self.gate.wait(self.delay)
        return self.inner.handle(buffer, codec)


@pytest.fixture
def slow() -> Iterator[tuple[nahual.Client, SlowHandler]]:
    handler = SlowHandler(0.0)
    with nahual.Client(transport=InProcessTransport(handler), timeout=Timeout(connect=None, request=30)) as client:
        yield client, handler
    handler.gate.set()
    handler.inner.close()


CALLS: dict[str, Callable[[nahual.Client, nahual.ModelHandle, Any], Any]] = {
    "ping": lambda client, echo, limit: client.ping(timeout=limit),
    "info": lambda client, echo, limit: client.info(timeout=limit),
    "load": lambda client, echo, limit: client.load("echo", replica=1, timeout=limit),
    "request": lambda client, echo, limit: client.request("ping", timeout=limit),
    "submit": lambda client, echo, limit: client.submit("ping", timeout=limit).result(),
    "call": lambda client, echo, limit: echo({"a": 1}, timeout=limit),
    "handle-submit": lambda client, echo, limit: echo.submit({"a": 1}, timeout=limit).result(),
    "map": lambda client, echo, limit: list(echo.map([1, 2], timeout=limit)),
    "unload": lambda client, echo, limit: echo.unload(timeout=limit),
    "shutdown": lambda client, echo, limit: client.shutdown(timeout=limit),
}


@pytest.mark.parametrize("call", list(CALLS))
def test_each_blocking_call_takes_a_timeout(slow: tuple[nahual.Client, SlowHandler], call: str) -> None:
    client, handler = slow
    echo = client.load("echo")
    handler.delay = 0.5
    with pytest.raises(nahual.TimeoutError, match="within 0.001 s"):
        CALLS[call](client, echo, 0.001)
    handler.delay = 0.05
    CALLS[call](client, echo, None)  # None: no limit


def test_calls_without_timeout_use_the_clients_request_limit() -> None:
    handler = SlowHandler(0.5)
    with nahual.Client(transport=InProcessTransport(handler), timeout=Timeout(connect=None, request=0.01)) as client:
        with pytest.raises(nahual.TimeoutError, match="within 0.01 s"):
            client.ping()
        with pytest.raises(nahual.TimeoutError, match="within 0.01 s"):
            client.ping(timeout=USE_CLIENT_DEFAULT)
        assert client.ping(timeout=5) > 0
    handler.gate.set()
    assert repr(USE_CLIENT_DEFAULT) == "USE_CLIENT_DEFAULT"


@pytest.mark.parametrize("limit", [0, -1, "5", True])
def test_bad_per_call_timeouts_are_config_errors(slow: tuple[nahual.Client, SlowHandler], limit: Any) -> None:
    client, _ = slow
    with pytest.raises(ConfigError, match="timeout must be a positive number"):
        client.ping(timeout=limit)
    with pytest.raises(ConfigError, match="timeout must be a positive number"):
        client.submit("ping", timeout=limit)


def test_timeout_is_never_a_model_param(slow: tuple[nahual.Client, SlowHandler], tmp_path: Path) -> None:
    client, _ = slow
    log = tmp_path / "calls"
    counter = client.load(COUNTER, log=str(log))
    assert counter({"x": 1}, timeout=5, delay_s=0)["payload"] == {"x": 1}  # Counter.process has no timeout param


def test_a_client_needs_an_address_or_a_transport() -> None:
    transport = InProcessTransport(RequestHandler())
    with pytest.raises(ConfigError, match="got both"):
        nahual.Client("ipc://nowhere.sock", transport=transport)
    with pytest.raises(ConfigError, match="got neither"):
        nahual.Client()
    with nahual.Client(transport=transport) as client:
        assert client.address == "local" and client.transport is transport
    assert transport.state is State.CLOSED  # the client owns its transport
