"""The request handler on its own: no socket, driven through an in-process client.

What a server does with a request is decided here; ``test_server.py`` checks
the serving loop around it (sockets, workers, signals).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pytest
from conftest import wait_until

import nahual
from nahual import Contract, Model
from nahual import _protocol as protocol
from nahual._protocol import Kind
from nahual.client import InProcessTransport
from nahual.errors import ConfigError, InstanceError, RemoteError
from nahual.server import RequestHandler
from nahual.server._instances import InstanceTable


class Needy(Model):
    """A model whose package is not installed anywhere."""

    name = "needy"
    packages: ClassVar[tuple[str, ...]] = ("nahual-no-such-distribution",)
    contract = Contract(output="array")
    loads: ClassVar[int] = 0

    def load(self, **params: Any) -> None:
        Needy.loads += 1


class Doubler(Model):
    """Doubles an array: a class loadable by name only through ``RequestHandler(models=...)``."""

    name = "doubler"
    contract = Contract(output="array")

    def process(self, payload: Any, **params: Any) -> Any:
        return np.asarray(payload) * 2


@pytest.fixture
def handler() -> Iterator[RequestHandler]:
    made = RequestHandler(models={"needy": Needy, "doubler": Doubler})
    yield made
    made.close()


@pytest.fixture
def client(handler: RequestHandler) -> Iterator[nahual.Client]:
    with nahual.Client(transport=InProcessTransport(handler), timeout=10) as connected:
        yield connected


def test_info_lists_a_model_with_missing_packages_as_unavailable(client: nahual.Client) -> None:
    models = client.info()["models"]
    assert models["needy"]["unavailable"] == "missing packages: nahual-no-such-distribution"
    assert models["needy"]["contract"]["output"] == "array"  # still described
    assert models["needy"]["packages"] == {"nahual-no-such-distribution": None}
    assert "unavailable" not in models["echo"] and "unavailable" not in models["doubler"]


def test_loading_a_model_with_missing_packages_fails_at_once(handler: RequestHandler, client: nahual.Client) -> None:
    before = Needy.loads
    with pytest.raises(RemoteError) as caught:
        client.load("needy")
    assert caught.value.remote_type == "ConfigError" and caught.value.operation == "load"
    assert caught.value.remote_message == "model 'needy' cannot run here: missing packages nahual-no-such-distribution"
    with pytest.raises(ConfigError, match="missing packages nahual-no-such-distribution"):
        handler.load("needy")
    assert Needy.loads == before  # refused before the model was made
    assert client.info()["instances"] == []


def test_extra_classes_load_by_name(client: nahual.Client) -> None:
    doubler = client.load("doubler")
    assert doubler.model == "doubler" and doubler.instance_id.startswith("doubler-")
    np.testing.assert_array_equal(doubler(np.arange(4)), np.arange(4) * 2)


def test_unknown_instances_raise_instance_error(handler: RequestHandler, client: nahual.Client) -> None:
    with pytest.raises(InstanceError, match="no instance 'x' is loaded"):
        handler.unload("x")
    with pytest.raises(RemoteError, match="no instance 'x'") as caught:
        client.request("process", {"data": 1}, instance="x")
    assert caught.value.remote_type == "InstanceError"


def test_shutdown_without_a_serving_loop_stops_nothing(client: nahual.Client) -> None:
    assert client.request("shutdown") == {"stopping": False}
    assert client.ping() > 0


def test_shutdown_calls_the_serving_loop_back() -> None:
    calls: list[int] = []
    handler = RequestHandler(on_shutdown=lambda: calls.append(1))
    with nahual.Client(transport=InProcessTransport(handler), timeout=10) as client:
        assert client.request("shutdown") == {"stopping": True}
    assert calls == [1]


def test_the_model_sees_read_only_arrays_as_behind_a_server(client: nahual.Client) -> None:
    echo = client.load("echo")
    sent = np.arange(6.0)
    back = echo({"a": sent})["a"]
    assert not back.flags.writeable and not np.shares_memory(back, sent)
    np.testing.assert_array_equal(back, sent)


def test_close_unloads_every_instance(handler: RequestHandler, client: nahual.Client) -> None:
    client.load("echo")
    client.load("doubler")
    handler.close()
    handler.close()
    assert client.info()["instances"] == []


def test_handle_never_raises_and_keeps_the_request_id(handler: RequestHandler) -> None:
    plan = handler.handle(protocol.encode(Kind.REQUEST, 41, {"op": "process", "instance": "gone"}, {"data": 1}))
    buffer = bytearray(plan.nbytes)
    plan.write_into(buffer)
    frame = protocol.decode(buffer)
    assert frame.kind == Kind.ERROR and frame.request_id == 41 and frame.meta["type"] == "InstanceError"


class Closing(Model):
    """Counts the instances closed."""

    name = "closing"
    contract = Contract(output="array")
    closed: ClassVar[int] = 0

    def close(self) -> None:
        Closing.closed += 1


def test_an_evicted_instance_is_closed() -> None:
    handler = RequestHandler(models={"closing": Closing}, max_instances=1)
    before = Closing.closed
    first = handler.load("closing")["instance"]
    second = handler.load("closing", replica=1)["instance"]
    assert Closing.closed == before + 1 and [i["id"] for i in handler.info()["instances"]] == [second]
    with pytest.raises(InstanceError, match=f"no instance '{first}' is loaded .*1 were unloaded"):
        handler.unload(first)
    handler.close()
    assert Closing.closed == before + 2


def test_requests_waiting_for_an_unloaded_instance_fail_without_running(tmp_path: Path) -> None:
    log = tmp_path / "calls"
    handler = RequestHandler(allow_module_models=True)
    with nahual.Client(transport=InProcessTransport(handler), timeout=10) as client:
        counter = client.load("models_for_tests:Counter", log=str(log))
        futures = [counter.submit({}, delay_s=0.5) for _ in range(3)]
        wait_until(lambda: log.exists() and log.read_text().count("\n") == 1, what="the first request to run")
        counter.unload()  # waits for the running request only
        assert futures[0].result(timeout=10)["calls"] == 1
        for future in futures[1:]:  # waiting for it, or not there yet: never run on a closed model
            with pytest.raises(RemoteError, match="was unloaded while this request waited|is loaded") as caught:
                future.result(timeout=10)
            assert caught.value.remote_type == "InstanceError"
    assert log.read_text().count("\n") == 1


def test_an_instance_taken_out_of_the_table_turns_away_its_waiting_users() -> None:
    table = InstanceTable(max_instances=1)
    table.reserve("doubler")
    first = table.add("a", "doubler", "doubler", {}, Doubler())
    with table.use(first.id):
        with pytest.raises(InstanceError, match=r"all 1 instances \(max_instances\) are running"):
            table.reserve("doubler")
        assert not first.closing  # a busy instance is never evicted
    assert table.reserve("doubler") == [first] and first.closing  # idle now: evicted
    second = table.add("b", "doubler", "doubler", {}, Doubler())
    with table.use(second.id) as instance:
        assert table.remove(second.id) is instance and instance.closing  # users check it under its lock
    with pytest.raises(InstanceError, match="no instance 'doubler-2' is loaded"):
        table.remove(second.id)
