"""Tiny models for the server tests, loaded as ``models_for_tests:Counter`` (tests/ is on PYTHONPATH)."""

from __future__ import annotations

import importlib
import os
import threading
import time
from typing import Any, ClassVar

from nahual import Contract, Model, Param
from nahual.errors import ParamError

__all__ = ["Counter", "Fail", "NeedsPackage", "NeedsWeights", "OddSize", "Unsendable"]


class Counter(Model):
    """Counts its loads and calls; ``log`` (a file path) records each call, even across processes.

    ``process`` returns ``{"calls": n, "loads": m, "pid": ..., "payload": payload}``
    after sleeping ``delay_s``.
    """

    name = "counter"
    contract = Contract(output="array")
    param_spec = (
        Param("log", None, "file that gets one line per call", type=str),
        Param("delay_s", 0.0, "seconds to sleep per call", min=0),
        Param("load_delay_s", 0.0, "seconds to sleep in load", min=0),
    )
    loads: ClassVar[int] = 0
    _lock: ClassVar[threading.Lock] = threading.Lock()

    def load(self, **params: Any) -> None:
        super().load(**params)
        time.sleep(self.params["load_delay_s"])
        with Counter._lock:
            Counter.loads += 1
        self.calls = 0

    def process(self, payload: Any, **params: Any) -> Any:
        p = self.merge_params(params, self.params)
        self.calls += 1
        if p["log"]:
            with open(p["log"], "a") as handle:
                handle.write(f"{os.getpid()} {self.calls}\n")
        time.sleep(p["delay_s"])
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


#: Contract of the models below, which fail to start: labels models that a workflow step can name.
FAILS_TO_START = Contract(output="labels", axes=("cyx", "yx"), channels=1)


class OddSize(Model):
    """Refuses an even ``size`` at load, which its param spec lets through: params that pass
    ``check_params`` when a config is read, and fail when the server starts."""

    name = "odd_size"
    contract = FAILS_TO_START
    param_spec = (Param("size", 3, "an odd window in pixels", min=1),)

    def load(self, **params: Any) -> None:
        super().load(**params)
        if self.params["size"] % 2 == 0:
            raise ParamError(f"odd_size: size must be odd, got {self.params['size']}")


class NeedsPackage(Model):
    """Imports its package at load, as the adapters of deep models do; the package is installed nowhere."""

    name = "needs_package"
    contract = FAILS_TO_START

    def load(self, **params: Any) -> None:
        super().load(**params)
        importlib.import_module("nahual_absent_package")


class NeedsWeights(Model):
    """Reads its weights file at load: a missing file fails the start."""

    name = "needs_weights"
    contract = FAILS_TO_START
    param_spec = (Param("weights", "weights/needs_weights.bin", "the weights file", type=str),)

    def load(self, **params: Any) -> None:
        super().load(**params)
        with open(self.params["weights"], "rb") as handle:
            self.weights = handle.read()
