"""Tiny models for the server tests, loaded as ``models_for_tests:Counter`` (tests/ is on PYTHONPATH)."""

from __future__ import annotations

import os
import threading
import time
from typing import Any, ClassVar

from nahual import Contract, Model

__all__ = ["Counter", "Fail", "Unsendable"]


class Counter(Model):
    """Counts its loads and calls; ``log`` (a file path) records each call, even across processes.

    ``process`` returns ``{"calls": n, "loads": m, "pid": ..., "payload": payload}``
    after sleeping ``delay_s``.
    """

    name = "counter"
    contract = Contract(output="array", params={"delay_s": "seconds to sleep per call (0)"})
    loads: ClassVar[int] = 0
    _lock: ClassVar[threading.Lock] = threading.Lock()

    def load(self, log: str | None = None, delay_s: float = 0.0, load_delay_s: float = 0.0) -> None:
        time.sleep(load_delay_s)
        with Counter._lock:
            Counter.loads += 1
        self.log = log
        self.delay_s = delay_s
        self.calls = 0

    def process(self, payload: Any, delay_s: float | None = None) -> Any:
        self.calls += 1
        if self.log:
            with open(self.log, "a") as handle:
                handle.write(f"{os.getpid()} {self.calls}\n")
        time.sleep(self.delay_s if delay_s is None else delay_s)
        return {"calls": self.calls, "loads": Counter.loads, "pid": os.getpid(), "payload": payload}


class Fail(Model):
    """Raises ``ValueError`` with the payload's ``message`` on every call."""

    name = "fail"

    def process(self, payload: Any, **params: Any) -> Any:
        raise ValueError(payload.get("message", "boom") if isinstance(payload, dict) else "boom")


class Unsendable(Model):
    """Returns a value the protocol cannot carry (a set)."""

    name = "unsendable"

    def process(self, payload: Any, **params: Any) -> Any:
        return {"result": {1, 2}}
