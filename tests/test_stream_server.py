"""The server path: real ``nahual serve`` processes, several at once, one dying midway."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading

import numpy as np
import pytest

zarr = pytest.importorskip("zarr")

from conftest import subprocess_env, wait_until  # noqa: E402
from stream_models import Blobs  # noqa: E402
from test_stream_resume import labels_of  # noqa: E402
from test_stream_stitch import blobs  # noqa: E402

from nahual import Client, Timeout  # noqa: E402
from nahual.errors import BlockError, RemoteError, TransportError  # noqa: E402
from nahual.stream import LocalModel, StreamOptions, Worker, apply, write_image  # noqa: E402
from nahual.stream._resume import RunState  # noqa: E402

MODEL = "stream_models:Blobs"
TILE = StreamOptions(tile="y=64,x=64", halo=16)
LIMITS = Timeout(connect=5.0, request=3.0, startup=30.0)


@pytest.fixture
def image(tmp_path):
    return write_image(tmp_path / "img.zarr", blobs((2, 192, 192), 64, seed=8), "tyx", chunks=(1, 64, 64))


@pytest.fixture
def local_result(image):
    with LocalModel(Blobs, {"delay_s": 0.02}) as model:
        apply(model, image, "local", TILE, progress=False)
    return labels_of(image, "local")


def test_two_servers_share_the_blocks_and_match_local(serve, image, local_result):
    servers = [serve(), serve()]
    with Client(servers[0].address, timeout=LIMITS) as a, Client(servers[1].address, timeout=LIMITS) as b:
        workers = [Worker(c.load(MODEL, delay_s=0.02), c.address, info=c.info()) for c in (a, b)]
        result = apply(workers, image, "remote", TILE.replace(inflight=4), progress=False)
    assert result["processed"] == 18
    assert all(w.used > 0 for w in workers), [w.used for w in workers]
    assert np.array_equal(labels_of(image, "remote"), local_result)
    provenance = zarr.open_group(f"{image}/labels/remote", mode="r").attrs["nahual"]
    assert provenance["server"] and provenance["model"] == MODEL


def test_a_dying_server_stops_the_run_naming_block_and_server(serve, image):
    served = serve()
    served.check_clean = False
    state = RunState(str(image), "seg")
    with Client(served.address, timeout=LIMITS) as client:
        handle = client.load(MODEL, delay_s=0.05)
        outcome: dict = {}
        thread = threading.Thread(target=lambda: outcome.update(error=_run(handle, image)))
        thread.start()
        wait_until(lambda: len(state.finished()) >= 3, timeout=30, what="three finished blocks")
        os.kill(served.process.pid, signal.SIGKILL)
        thread.join(60)
    error = outcome["error"]
    assert isinstance(error, BlockError) and isinstance(error.__cause__, TransportError), repr(error)
    assert error.block.startswith("block ") and error.worker == served.address
    assert str(error).startswith(f"{error.block} failed on {served.address}: ")
    assert 3 <= len(state.finished()) < 18  # what was finished is recorded


def _run(handle, image):
    try:
        apply(handle, image, "seg", TILE, progress=False)
    except Exception as exc:
        return exc
    return None


def test_retries_reconnect_to_a_restarted_server(serve, image, local_result):
    first = serve()
    first.check_clean = False
    address = first.address
    clients: list[Client] = []

    def reopen():
        for client in clients:
            client.close()
        socket_file = first.socket_path
        if socket_file is not None and socket_file.exists():
            socket_file.unlink()
        serve(address=address)
        clients.append(Client(address, timeout=LIMITS))
        return clients[-1].load(MODEL, delay_s=0.02)

    clients.append(Client(address, timeout=LIMITS))
    worker = Worker(clients[0].load(MODEL, delay_s=0.02), address, reopen=reopen)
    state = RunState(str(image), "seg")
    killer = threading.Thread(
        target=lambda: (
            wait_until(lambda: len(state.finished()) >= 2, timeout=30, what="two blocks"),
            os.kill(first.process.pid, signal.SIGKILL),
        )
    )
    killer.start()
    try:
        result = apply(worker, image, "seg", TILE.replace(retries=2), progress=False)
    finally:
        killer.join(30)
        for client in clients:
            client.close()
    assert result["processed"] == 18 and len(clients) == 2
    assert np.array_equal(labels_of(image, "seg"), local_result)


def test_a_model_error_names_the_block_and_server(serve, image):
    served = serve()
    with Client(served.address, timeout=LIMITS) as client:
        handle = client.load("models_for_tests:Fail")
        with pytest.raises(
            BlockError, match=rf"block 0 \(t=0 y=0:64 x=0:64\) failed on {served.address}: .*boom"
        ) as info:
            apply(handle, image, "seg", TILE, kind="labels", progress=False)
    error = info.value
    assert (error.block, error.worker) == ("block 0 (t=0 y=0:64 x=0:64)", served.address)
    assert isinstance(error.__cause__, RemoteError) and error.__cause__.remote_type.endswith("ValueError")


@pytest.mark.slow
def test_cli_launches_its_own_server(image, local_result):
    command = [
        sys.executable,
        "-m",
        "nahual",
        "apply",
        str(image),
        "seg",
        "--env",
        "current",
        "--model",
        MODEL,
        "--params",
        '{"delay_s": 0.02}',
        "--tile",
        "y=64,x=64",
        "--halo",
        "16",
        "--quiet",
        "--inflight",
        "3",
    ]
    done = subprocess.run(command, env=subprocess_env(), capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "18 blocks processed" in done.stderr
    assert np.array_equal(labels_of(image, "seg"), local_result)


@pytest.mark.slow
def test_retries_relaunch_a_server_nahual_launched(image, local_result, monkeypatch):
    from nahual.stream._connect import connect_workers

    for key, value in subprocess_env().items():
        monkeypatch.setenv(key, value)  # the launched server must find stream_models
    state = RunState(str(image), "seg")
    with connect_workers(MODEL, {"delay_s": 0.02}, env="current", timeout=10) as workers:
        remote = workers[0].reopen.__self__  # the launched server behind the worker
        first_pid = remote.server.pid
        killer = threading.Thread(
            target=lambda: (
                wait_until(lambda: len(state.finished()) >= 2, timeout=30, what="two blocks"),
                os.kill(first_pid, signal.SIGKILL),
            )
        )
        killer.start()
        result = apply(workers, image, "seg", TILE.replace(retries=2), progress=False)
        killer.join(30)
        assert remote.server.pid != first_pid  # relaunched
    assert result["processed"] == 18
    assert np.array_equal(labels_of(image, "seg"), local_result)
