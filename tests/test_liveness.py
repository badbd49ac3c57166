"""Liveness: a dead server is noticed at once, a busy one still answers health checks, none outlives its parent.

Each test reproduces a fault of issue 17 (items 6, 8 and 9) with real server
processes: requests in flight when a server dies fail within a second (naming
the exit signal and the log when nahual launched it); ``ping``, ``info`` and
``shutdown`` are answered while every worker waits on one model; a server
whose parent is gone exits within seconds even while a model call runs.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from concurrent.futures import Future
from pathlib import Path

import numpy as np
import pytest
from conftest import Served, alive, subprocess_env, wait_until

import nahual
from nahual.errors import TransportError
from nahual.launcher import launch

COUNTER = "models_for_tests:Counter"


def calls(log: Path) -> int:
    """How many ``Counter`` calls have started (each writes its line before sleeping)."""
    return len(log.read_text().splitlines()) if log.exists() else 0


def failures_within(futures: list[Future], seconds: float) -> list[BaseException]:
    """The exceptions of ``futures``, each of which must fail within ``seconds`` from now."""
    start = time.monotonic()
    errors = []
    for future in futures:
        error = future.exception(timeout=max(0.0, start + seconds - time.monotonic()))
        assert error is not None, f"a request succeeded: {future.result()!r}"
        errors.append(error)
    assert time.monotonic() - start < seconds
    return errors


def test_every_request_in_flight_fails_at_once_when_the_server_is_killed(echo_server: Served, tmp_path: Path) -> None:
    log = tmp_path / "calls"
    with nahual.Client(echo_server.address, timeout=nahual.Timeout(connect=10, request=60)) as client:
        handles = [client.load(COUNTER, log=str(log), replica=i) for i in range(4)]
        futures = [handle.submit({}, delay_s=5) for handle in handles]
        wait_until(lambda: calls(log) == 4, what="four sleeping requests")
        echo_server.check_clean = False
        echo_server.process.kill()
        errors = failures_within(futures, 2.0)
    assert all(isinstance(error, TransportError) for error in errors), errors
    assert all(echo_server.address in str(error) for error in errors)


def test_requests_not_yet_sent_fail_too_when_the_server_dies(
    echo_server: Served, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Large messages queue in the client while the server does not read; nng fails only the first."""
    monkeypatch.setenv("NAHUAL_SHM", "0")  # every byte through nng's stream, which the stopped server fills
    with nahual.Client(echo_server.address, timeout=nahual.Timeout(connect=10, request=60)) as client:
        echo = client.load("echo")
        echo_server.check_clean = False
        os.kill(echo_server.process.pid, signal.SIGSTOP)
        futures = [echo.submit(np.zeros(16 << 20, np.uint8)) for _ in range(4)]
        wait_until(lambda: client.transport._inflight == 4, what="four requests in flight")
        echo_server.process.kill()
        errors = failures_within(futures, 2.0)
    assert all(type(error) is TransportError for error in errors), errors
    assert all("the server closed the connection or died" in str(error) for error in errors)


def test_a_launched_server_that_dies_is_named_with_its_signal_and_log(
    short_dir: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("NAHUAL_RUNTIME_DIR", str(short_dir / "rt"))
    monkeypatch.delenv("NAHUAL_TOKEN", raising=False)
    monkeypatch.setenv("PYTHONPATH", subprocess_env()["PYTHONPATH"])  # the server imports models_for_tests
    log = tmp_path / "calls"
    limits = nahual.Timeout(connect=10, request=60, startup=30)
    with launch("current", timeout=limits, allow_module_models=True) as server:
        with server.client() as client:
            handles = [client.load(COUNTER, log=str(log), replica=i) for i in range(4)]
            futures = [handle.submit({}, delay_s=5) for handle in handles]
            wait_until(lambda: calls(log) == 4, what="four sleeping requests")
            os.kill(server.pid, signal.SIGKILL)
            errors = failures_within(futures, 2.0)
    for error in errors:
        assert isinstance(error, TransportError), repr(error)
        assert f"server pid {server.pid} was killed by SIGKILL" in str(error)
        assert str(server.log_path) in str(error)


def test_health_checks_answer_while_every_worker_waits_on_one_model(echo_server: Served, tmp_path: Path) -> None:
    log = tmp_path / "calls"
    with nahual.Client(echo_server.address, timeout=nahual.Timeout(connect=10, request=60)) as client:
        counter = client.load(COUNTER, log=str(log))
        queued = [counter.submit({}, delay_s=3) for _ in range(8)]  # 8 = the server's workers
        wait_until(lambda: calls(log) == 1, what="the first request to run")
        for check in (client.ping, client.info, client.ping):
            start = time.monotonic()
            check(timeout=2)
            assert time.monotonic() - start < 0.5, f"{check.__name__} waited behind the model"
        start = time.monotonic()
        client.shutdown(timeout=2)
        assert time.monotonic() - start < 0.5
        failures_within(queued, 6.0)  # the running call ends (3 s), the queued ones are dropped
    assert echo_server.process.wait(timeout=10) == 0
    assert calls(log) == 1


def test_a_server_whose_parent_dies_exits_even_while_a_model_call_runs(
    serve: Callable[..., Served], tmp_path: Path
) -> None:
    parent = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE)
    try:
        served = serve("--parent", str(parent.pid))
        log = tmp_path / "calls"
        with nahual.Client(served.address, timeout=nahual.Timeout(connect=10, request=60)) as client:
            running = client.load(COUNTER, log=str(log)).submit({}, delay_s=25)
            wait_until(lambda: calls(log) == 1, what="the long request to run")
            parent.stdin.close()
            parent.wait(timeout=15)
            gone = time.monotonic()
            assert served.process.wait(timeout=10) == 0
            assert time.monotonic() - gone < 3.0, "the server outlived its parent by more than 3 s"
            assert isinstance(running.exception(timeout=5), TransportError)  # abandoned: no reply
        assert not served.ready_file.exists()
        assert served.socket_path is not None and not served.socket_path.exists()
        assert not alive(served.process.pid)
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait()
