"""Models for the batching and concurrency tests, loaded as ``batch_models:Recorder`` (tests/ is on PYTHONPATH)."""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

from nahual import Contract, Model, Param

__all__ = ["Overlap", "Recorder"]


class Recorder(Model):
    """Multiplies each payload's ``value`` by ``scale``; ``log`` gets one JSON line per call.

    A call writes ``{"began": [...]}`` as it starts and ``{"values": [...],
    "scale": s, "start": t, "end": t}`` as it ends: the batch's values, in the
    order the model received them; ``close`` writes ``{"closed": t}``. A payload with
    ``"fail": "item"`` gets a ValueError as its own result, one with
    ``"fail": "batch"`` makes the whole call raise, and ``short=True`` returns
    one result too few.
    """

    name = "recorder"
    contract = Contract(output="array", max_batch=4, batch_wait_ms=5000)
    param_spec = (
        Param("log", None, "file that gets one JSON line per call", type=str),
        Param("max_batch", 4, "requests per call at most", min=1),
        Param("batch_wait_ms", 5000.0, "ms a batch that is not full waits", min=0),
        Param("delay_s", 0.0, "seconds each call sleeps", min=0),
        Param("scale", 1, "factor of every value"),
        Param("short", False, "return one result too few"),
        Param("concurrency", 1, "batches at once", min=1),
    )

    def load(self, **params: Any) -> None:
        super().load(**params)
        calls = {key: self.params[key] for key in ("max_batch", "batch_wait_ms", "concurrency")}
        self.contract = replace(type(self).contract, **calls)
        self._log_lock = threading.Lock()
        self.closed_at: float | None = None

    def process(self, payload: Any, **params: Any) -> Any:
        return self.process_batch([payload], **params)[0]

    def process_batch(self, payloads: Sequence[Any], **params: Any) -> list[Any]:
        p = self.merge_params(params, self.params)
        start = time.monotonic()
        values = [payload["value"] for payload in payloads]
        self._record({"began": values})
        time.sleep(p["delay_s"])
        self._record({"values": values, "scale": p["scale"], "start": start, "end": time.monotonic()})
        if any(payload.get("fail") == "batch" for payload in payloads):
            raise ValueError("a payload asked the whole batch to fail")
        results = [
            ValueError(f"value {payload['value']} asked to fail alone")
            if payload.get("fail") == "item"
            else {"value": payload["value"] * p["scale"], "batch": values}
            for payload in payloads
        ]
        return results[:-1] if p["short"] else results

    def close(self) -> None:
        self._record({"closed": time.monotonic()})

    def _record(self, line: dict[str, Any]) -> None:
        if self.params["log"]:
            with self._log_lock, open(self.params["log"], "a") as handle:
                handle.write(json.dumps({**line, "pid": os.getpid()}) + "\n")


class Overlap(Model):
    """Returns when its call started and ended (``time.monotonic``), and the thread that made it.

    ``concurrency`` (load) goes into the instance's contract; with ``meet`` above
    1, each call waits (10 s at most) until ``meet`` calls are inside at once.
    """

    name = "overlap"
    contract = Contract(output="array")
    param_spec = (
        Param("concurrency", 1, "calls at once", min=1),
        Param("meet", 1, "calls that wait for each other inside process", min=1),
        Param("delay_s", 0.05, "seconds each call sleeps", min=0),
    )

    def load(self, **params: Any) -> None:
        super().load(**params)
        self.contract = replace(type(self).contract, concurrency=self.params["concurrency"])
        self._meeting = threading.Barrier(self.params["meet"], timeout=10) if self.params["meet"] > 1 else None

    def process(self, payload: Any, **params: Any) -> Any:
        start = time.monotonic()
        if self._meeting is not None:
            self._meeting.wait()
        time.sleep(self.params["delay_s"])
        return {"start": start, "end": time.monotonic(), "thread": threading.current_thread().name}
