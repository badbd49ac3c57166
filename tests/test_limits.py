"""Bounded memory: failed loads leave nothing, instances are capped, idle servers let go of shared memory.

Each test reproduces a fault of issue 17 (items 4 and 7): loads with distinct
or bad params used to pile up for good, and a server kept every client's
deleted shared-memory segments mapped after the clients had gone.
"""

from __future__ import annotations

import gc
import tracemalloc
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
from conftest import Served, wait_until

import nahual
from nahual import _shm
from nahual.client import InProcessTransport
from nahual.errors import ConfigError, RemoteError
from nahual.server import RequestHandler

COUNTER = "models_for_tests:Counter"
MiB = 1 << 20


@pytest.fixture
def client() -> Iterator[nahual.Client]:
    """An in-process client of a handler that keeps at most 4 instances."""
    handler = RequestHandler(max_instances=4, allow_module_models=True)
    with nahual.Client(transport=InProcessTransport(handler), timeout=30) as connected:
        yield connected
    handler.close()


def instances(client: nahual.Client) -> list[str]:
    return [entry["id"] for entry in client.info()["instances"]]


def test_failed_loads_with_large_params_leave_no_memory_behind() -> None:
    handler = RequestHandler()
    with nahual.Client(transport=InProcessTransport(handler), timeout=30) as client:
        client.ping()
        gc.collect()
        tracemalloc.start()
        try:
            before = tracemalloc.get_traced_memory()[0]
            for i in range(200):  # 1 MB of params each, all distinct, refused by the model
                with pytest.raises(RemoteError, match="unknown param 'junk'") as caught:
                    client.load("echo", junk=f"{i}-" + "x" * MiB)
                assert caught.value.remote_type == "ParamError"
            del caught
            gc.collect()
            grown = tracemalloc.get_traced_memory()[0] - before
        finally:
            tracemalloc.stop()
        assert grown < 4 * MiB, f"200 failed loads of 1 MB params kept {grown / MiB:.0f} MB"
        assert instances(client) == []
    handler.close()


def test_thousands_of_distinct_loads_keep_at_most_max_instances(client: nahual.Client) -> None:
    for i in range(2000):
        client.load("echo", delay_s=i / 1e6)
    loaded = client.info()["instances"]
    assert len(loaded) == 4  # the newest four
    assert sorted(entry["params"]["delay_s"] for entry in loaded) == [i / 1e6 for i in range(1996, 2000)]


def test_the_least_recently_used_instance_goes_first_and_says_so(client: nahual.Client) -> None:
    handles = [client.load("echo", delay_s=i / 1000) for i in range(4)]
    assert handles[0]("kept") == "kept"  # used last: now the most recent
    fifth = client.load("echo", delay_s=0.5)
    assert sorted(instances(client)) == sorted(h.instance_id for h in (handles[0], *handles[2:], fifth))
    with pytest.raises(RemoteError, match="no instance .* is loaded .*max_instances 4.*least recently used"):
        handles[1]("gone")
    again = client.load("echo", delay_s=1 / 1000)  # loading it again works (and evicts another)
    assert again("back") == "back" and again.instance_id != handles[1].instance_id


def test_busy_instances_are_never_evicted_and_a_full_server_refuses_the_load(
    client: nahual.Client, tmp_path: Path
) -> None:
    log = tmp_path / "calls"
    busy = [client.load(COUNTER, log=str(log), delay_s=0.01 * i) for i in range(4)]
    futures = [handle.submit({}, delay_s=2) for handle in busy]
    wait_until(lambda: log.exists() and len(log.read_text().splitlines()) == 4, what="four running requests")
    full = r"cannot load 'echo': all 4 instances \(max_instances\) are running"
    with pytest.raises(RemoteError, match=full) as caught:
        client.load("echo")
    assert caught.value.remote_type == "InstanceError"
    assert sorted(instances(client)) == sorted(handle.instance_id for handle in busy)
    assert [future.result(timeout=30)["calls"] for future in futures] == [1] * 4
    assert client.load("echo")("idle again") == "idle again"  # now one of them can go


def test_max_instances_must_be_positive() -> None:
    with pytest.raises(ConfigError, match="max_instances must be at least 1, got 0"):
        RequestHandler(max_instances=0)
    with pytest.raises(ConfigError, match="max_instances must be at least 1, got 0"):
        nahual.Server("inproc://limits", max_instances=0)


def test_serve_takes_max_instances(serve: Callable[..., Served]) -> None:
    served = serve("--max-instances", "2")
    with nahual.Client(served.address, timeout=10) as client:
        for i in range(5):
            client.load("echo", delay_s=i / 1000)
        assert len(client.info()["instances"]) == 2


def deleted_segments(pid: int) -> list[str]:
    """The deleted nahual segments process ``pid`` still maps (memory it pins)."""
    with open(f"/proc/{pid}/maps") as handle:
        lines = handle.read().splitlines()
    return sorted({line.split(None, 5)[-1] for line in lines if "/nahual-" in line and line.endswith("(deleted)")})


@pytest.mark.skipif(not _shm.shm_available(), reason="no writable /dev/shm")
def test_a_server_lets_go_of_the_segments_of_clients_that_left(echo_server: Served) -> None:
    pid = echo_server.process.pid
    for i in range(4):
        with nahual.Client(echo_server.address, timeout=60) as client:
            sent = np.full(100 * MiB, i, np.uint8)
            assert client.load("echo")(sent)[-1] == i
        del sent
    wait_until(lambda: not deleted_segments(pid), timeout=5, what="the server to unmap the clients' segments")
