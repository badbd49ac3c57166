"""Server-side batching and thread-safe instances: what a server does with ``max_batch`` and ``concurrency``.

Most checks drive a :class:`~nahual.server.RequestHandler` through an
in-process client (the same code a server runs); the last ones start real
``nahual serve`` processes. Models: ``tests/batch_models.py``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from batch_models import Overlap, Recorder
from conftest import Served, wait_until

import nahual
from nahual import Contract, Model
from nahual.client import InProcessTransport
from nahual.errors import ContractError, RemoteError
from nahual.server import RequestHandler

RECORDER = "batch_models:Recorder"


@pytest.fixture
def handler() -> Iterator[RequestHandler]:
    made = RequestHandler(models={"recorder": Recorder, "overlap": Overlap})
    yield made
    made.close()


@pytest.fixture
def client(handler: RequestHandler) -> Iterator[nahual.Client]:
    with nahual.Client(transport=InProcessTransport(handler, workers=16), timeout=20) as connected:
        yield connected


def calls(log: Path) -> list[dict[str, Any]]:
    """The model calls a Recorder logged (its close left out)."""
    lines = [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []
    return [line for line in lines if "end" in line]


def submit_values(handle: nahual.ModelHandle, values: range, **params: Any) -> list[Any]:
    futures = [handle.submit({"value": value}, **params) for value in values]
    return [future.result(timeout=20) for future in futures]


def errors_of(futures: list[Any]) -> list[str]:
    """Each future's RemoteError type, or "" for a result."""
    kinds = []
    for future in futures:
        try:
            future.result(timeout=20)
            kinds.append("")
        except RemoteError as exc:
            kinds.append(exc.remote_type)
    return kinds


# -- batches ------------------------------------------------------------------------------------


def test_concurrent_requests_form_full_batches_and_each_gets_its_own_result(
    client: nahual.Client, tmp_path: Path
) -> None:
    log = tmp_path / "calls"
    recorder = client.load("recorder", log=str(log), scale=10)  # 4 per batch, waits 5 s for a full one
    results = submit_values(recorder, range(8))
    assert [r["value"] for r in results] == [v * 10 for v in range(8)]
    made = calls(log)
    assert [len(call["values"]) for call in made] == [4, 4]
    for value, result in zip(range(8), results, strict=True):
        assert value in result["batch"]  # the batch it came back from holds it
    assert sorted(v for call in made for v in call["values"]) == list(range(8))
    assert [(i["held"], i["calls"]) for i in client.info()["instances"]] == [(0, 2)]


def test_a_batch_never_exceeds_max_batch_and_a_short_one_runs_after_the_wait(
    client: nahual.Client, tmp_path: Path
) -> None:
    log = tmp_path / "calls"
    recorder = client.load("recorder", log=str(log), max_batch=3, batch_wait_ms=500)
    results = submit_values(recorder, range(10))
    assert [r["value"] for r in results] == list(range(10))
    sizes = [len(call["values"]) for call in calls(log)]
    assert max(sizes) == 3 and sum(sizes) == 10 and len(sizes) >= 4


def test_requests_with_other_call_params_never_share_a_batch(client: nahual.Client, tmp_path: Path) -> None:
    log = tmp_path / "calls"
    recorder = client.load("recorder", log=str(log))
    futures = [recorder.submit({"value": v}, scale=1 + v % 2) for v in range(8)]
    assert [f.result(timeout=20)["value"] for f in futures] == [v * (1 + v % 2) for v in range(8)]
    made = calls(log)
    assert len(made) == 2
    for call in made:
        assert {1 + v % 2 for v in call["values"]} == {call["scale"]}


def test_a_model_that_does_not_declare_batching_gets_one_call_per_request(
    client: nahual.Client, tmp_path: Path
) -> None:
    log = tmp_path / "calls"
    recorder = client.load("recorder", log=str(log), max_batch=1, delay_s=0.02)
    assert recorder.contract.max_batch == 1
    submit_values(recorder, range(6))
    made = calls(log)
    assert [len(call["values"]) for call in made] == [1] * 6
    assert max_overlap([(c["start"], c["end"]) for c in made]) == 1  # and one at a time


# -- errors stay per request -------------------------------------------------------------------


def test_an_exception_as_a_result_fails_only_its_own_request(client: nahual.Client, tmp_path: Path) -> None:
    log = tmp_path / "calls"
    recorder = client.load("recorder", log=str(log))
    futures = [recorder.submit({"value": v, "fail": "item" if v == 2 else None}) for v in range(4)]
    assert errors_of(futures) == ["", "", "ValueError", ""]
    assert [len(call["values"]) for call in calls(log)] == [4]  # not run again


def test_a_batch_that_raises_runs_again_one_by_one_so_a_bad_payload_fails_alone(
    client: nahual.Client, tmp_path: Path
) -> None:
    log = tmp_path / "calls"
    recorder = client.load("recorder", log=str(log))
    futures = [recorder.submit({"value": v, "fail": "batch" if v == 1 else None}) for v in range(4)]
    assert errors_of(futures) == ["", "ValueError", "", ""]
    assert [r.result()["batch"] for i, r in enumerate(futures) if i != 1] == [[0], [2], [3]]
    assert [len(call["values"]) for call in calls(log)] == [4, 1, 1, 1, 1]


def test_a_result_list_of_the_wrong_length_fails_every_member(client: nahual.Client, tmp_path: Path) -> None:
    recorder = client.load("recorder", short=True, max_batch=2)
    futures = [recorder.submit({"value": v}) for v in range(2)]
    assert errors_of(futures) == ["ContractError", "ContractError"]
    with pytest.raises(RemoteError, match="process_batch must return a list of 2, got 1 results"):
        futures[0].result()


def test_call_params_the_model_does_not_take_fail_before_joining_a_batch(client: nahual.Client, tmp_path: Path) -> None:
    log = tmp_path / "calls"
    recorder = client.load("recorder", log=str(log), max_batch=2)
    bad = recorder.submit({"value": 0}, scael=2)
    good = [recorder.submit({"value": v}) for v in (1, 2)]
    assert errors_of([bad, *good]) == ["ParamError", "", ""]
    # one batch of the two good requests; two receiver threads may take them in either order
    assert [sorted(call["values"]) for call in calls(log)] == [[1, 2]]


# -- deadlines and unloading -------------------------------------------------------------------


@pytest.mark.parametrize("max_batch", [1, 2], ids=["direct", "batched"])
def test_a_request_past_its_deadline_is_dropped_without_running(
    client: nahual.Client, tmp_path: Path, max_batch: int
) -> None:
    log = tmp_path / "calls"
    recorder = client.load("recorder", log=str(log), max_batch=max_batch, batch_wait_ms=0, delay_s=0.5)
    running = recorder.submit({"value": 0})
    wait_until(lambda: began(log), what="the first call to start")
    late = _submit(client, recorder, {"value": 1}, deadline_s=0.05)  # waits 0.5 s behind the first
    patient = _submit(client, recorder, {"value": 2}, deadline_s=30)
    assert errors_of([running, late, patient]) == ["", "TimeoutError", ""]
    with pytest.raises(RemoteError, match="dropped before it ran"):
        late.result()
    assert [call["values"] for call in calls(log)] == [[0], [2]]


def began(log: Path) -> list[list[int]]:
    """The batches a Recorder started, in order."""
    lines = [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []
    return [line["began"] for line in lines if "began" in line]


def requests_held(handle: nahual.ModelHandle) -> int:
    """Requests the handle's instance holds (running or waiting), as ``info`` says."""
    return next(i["held"] for i in handle.client.info()["instances"] if i["id"] == handle.instance_id)


def _submit(client: nahual.Client, handle: nahual.ModelHandle, data: Any, **meta: Any) -> Any:
    return client.submit("process", {"data": data, "params": {}}, instance=handle.instance_id, **meta)


def test_unloading_lets_the_running_batch_finish_and_turns_the_queued_requests_away(
    client: nahual.Client, tmp_path: Path
) -> None:
    log = tmp_path / "calls"
    recorder = client.load("recorder", log=str(log), max_batch=2, batch_wait_ms=0, delay_s=0.5)
    running = recorder.submit({"value": 0})
    wait_until(lambda: began(log), what="the first call to start")
    queued = [recorder.submit({"value": v}) for v in (1, 2)]
    wait_until(lambda: requests_held(recorder) == 3, what="the requests to queue behind the first")
    recorder.unload()  # returns once the running batch is done and the model closed
    assert errors_of([running, *queued]) == ["", "InstanceError", "InstanceError"]
    with pytest.raises(RemoteError, match="was unloaded while this request waited"):
        queued[0].result()
    lines = [json.loads(line) for line in log.read_text().splitlines()]
    assert began(log) == [[0]] and [c["values"] for c in calls(log)] == [[0]]  # never run
    assert lines[-1]["closed"] >= calls(log)[0]["end"]  # closed after the running batch


# -- thread-safe instances ---------------------------------------------------------------------


def max_overlap(intervals: list[tuple[float, float]]) -> int:
    """The most intervals open at one moment (an end and a start at the same instant do not overlap)."""
    events = sorted([(end, -1) for _, end in intervals] + [(start, 1) for start, _ in intervals])
    most = open_now = 0
    for _, step in events:
        open_now += step
        most = max(most, open_now)
    return most


def test_a_thread_safe_model_runs_up_to_its_concurrency_on_one_instance(client: nahual.Client) -> None:
    overlap = client.load("overlap", concurrency=2, meet=2)  # each call waits until two are inside
    assert overlap.contract.concurrency == 2
    futures = [overlap.submit({}) for _ in range(6)]
    intervals = [(r["start"], r["end"]) for r in (f.result(timeout=20) for f in futures)]
    assert max_overlap(intervals) == 2
    assert [i["id"] for i in client.info()["instances"]] == [overlap.instance_id]  # one loaded copy


def test_a_thread_safe_batching_model_runs_up_to_its_concurrency_in_batches(
    client: nahual.Client, tmp_path: Path
) -> None:
    log = tmp_path / "calls"
    recorder = client.load("recorder", log=str(log), max_batch=2, batch_wait_ms=0, delay_s=0.3, concurrency=2)
    assert [r["value"] for r in submit_values(recorder, range(6))] == list(range(6))
    made = calls(log)
    assert max(len(c["values"]) for c in made) <= 2
    assert max_overlap([(c["start"], c["end"]) for c in made]) == 2


def test_a_model_that_does_not_say_it_is_thread_safe_runs_one_call_at_a_time(client: nahual.Client) -> None:
    overlap = client.load("overlap", delay_s=0.02)
    futures = [overlap.submit({}) for _ in range(6)]
    assert max_overlap([(r["start"], r["end"]) for r in (f.result(timeout=20) for f in futures)]) == 1


@pytest.mark.parametrize("concurrency", [1, 2])
def test_an_instance_is_called_only_from_its_own_runner_threads(client: nahual.Client, concurrency: int) -> None:
    # 16 request threads take the requests in turn; the model sees only its instance's runners
    overlap = client.load("overlap", concurrency=concurrency, delay_s=0.01)
    futures = [overlap.submit({}) for _ in range(12)]
    threads = {f.result(timeout=20)["thread"] for f in futures}
    assert len(threads) == concurrency
    assert all(name.startswith(f"nahual-model-{overlap.instance_id}-") for name in threads)


# -- the contract ------------------------------------------------------------------------------


def test_batching_and_concurrency_round_trip_through_json_and_default_for_old_servers() -> None:
    contract = Contract(output="labels", max_batch=16, batch_wait_ms=2.5, concurrency=3)
    again = Contract.from_dict(json.loads(json.dumps(contract.to_dict())))
    assert again == contract and again.to_dict()["max_batch"] == 16
    old = {k: v for k, v in contract.to_dict().items() if k not in ("max_batch", "batch_wait_ms", "concurrency")}
    assert Contract.from_dict(old) == Contract(output="labels")
    assert Contract().max_batch == 1 and Contract().concurrency == 1  # off by default


@pytest.mark.parametrize(
    ("field", "value"),
    [("max_batch", 0), ("max_batch", True), ("max_batch", 2.0), ("concurrency", 0), ("concurrency", "2"),
     ("batch_wait_ms", -1), ("batch_wait_ms", math.nan), ("batch_wait_ms", math.inf), ("batch_wait_ms", "5")],
)  # fmt: skip
def test_a_contract_refuses_bad_batching_values(field: str, value: object) -> None:
    with pytest.raises(ContractError, match=f"contract {field} must be"):
        Contract(**{field: value})


def test_a_batching_contract_needs_process_batch() -> None:
    with pytest.raises(ContractError, match="needs a process_batch method"):

        class NoBatch(Model):  # defining the class is the test
            contract = Contract(max_batch=4)

            def process(self, payload: Any, **params: Any) -> Any:
                return payload


class LateBatch(Model):
    """Sets ``max_batch`` in its load, without a ``process_batch``."""

    name = "late_batch"

    def load(self, **params: Any) -> None:
        super().load(**params)
        self.contract = Contract(max_batch=2)


def test_a_load_that_asks_for_batches_without_process_batch_fails_and_leaves_nothing() -> None:
    handler = RequestHandler(models={"late_batch": LateBatch})
    with pytest.raises(ContractError, match="late_batch: contract max_batch 2 needs a process_batch"):
        handler.load("late_batch")
    assert handler.info()["instances"] == []
    handler.close()


def test_echo_batches_when_loaded_so_and_its_reply_and_info_say_it(client: nahual.Client) -> None:
    echo = client.load("echo", max_batch=4, batch_wait_ms=5000, delay_s=0.01)
    assert echo.contract.max_batch == 4 and echo.contract.batch_wait_ms == 5000
    futures = [echo.submit({"i": i}) for i in range(4)]  # one full batch: no wait
    assert [f.result(timeout=20) for f in futures] == [{"i": i} for i in range(4)]
    assert client.info()["models"]["echo"]["contract"]["max_batch"] == 1  # the class's: off by default


# -- real server processes ---------------------------------------------------------------------


def test_a_served_model_batches_requests_of_several_clients(serve: Any, tmp_path: Path) -> None:
    log = tmp_path / "calls"
    served: Served = serve("--workers", "16")
    with nahual.Client(served.address, timeout=20) as first, nahual.Client(served.address, timeout=20) as second:
        mine = first.load(RECORDER, log=str(log), max_batch=8)
        theirs = second.load(RECORDER, log=str(log), max_batch=8)
        assert mine.instance_id == theirs.instance_id
        futures = [handle.submit({"value": v}) for v in range(4) for handle in (mine, theirs)]
        results = [f.result(timeout=20) for f in futures]
    assert [r["value"] for r in results] == [v for v in range(4) for _ in (0, 1)]
    assert [sorted(call["values"]) for call in calls(log)] == [[0, 0, 1, 1, 2, 2, 3, 3]]


def test_a_served_batching_model_stops_at_once_with_requests_queued(serve: Any, tmp_path: Path) -> None:
    log = tmp_path / "calls"
    served: Served = serve("--workers", "16")
    with nahual.Client(served.address, timeout=20) as client:
        recorder = client.load(RECORDER, log=str(log), max_batch=8, batch_wait_ms=600_000)
        futures = [recorder.submit({"value": v}) for v in range(3)]  # a batch waiting 10 minutes to fill
        wait_until(lambda: requests_held(recorder) == 3, what="the requests to queue")
        assert served.stop(timeout=15) == 0  # SIGTERM: the queued requests are turned away, not awaited
        for future in futures:
            with pytest.raises(nahual.NahualError):
                future.result(timeout=20)
    assert calls(log) == [] and "closed" in log.read_text()
