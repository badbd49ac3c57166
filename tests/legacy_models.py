"""Tiny array models for the earlier-wire tests, loaded as ``legacy_models:Slow`` (tests/ is on the import path)."""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from nahual import Contract, Model, Param

__all__ = ["AddOne", "Slow"]


class Slow(Model):
    """Appends a line to ``log`` on every call, sleeps ``delay_s``, returns the array it was given."""

    name = "slow"
    contract = Contract(output="array")
    param_spec = (
        Param("log", None, "file that gets one line per call", type=str),
        Param("delay_s", 0.0, "seconds to sleep per call", min=0),
    )

    def process(self, payload: Any, **params: Any) -> Any:
        if self.params["log"]:
            with open(self.params["log"], "a") as handle:
                handle.write("call\n")
        time.sleep(self.params["delay_s"])
        return payload


class AddOne(Model):
    """Returns its array plus one, as a new array (``scale`` times it, when given)."""

    name = "add_one"
    contract = Contract(output="array")
    param_spec = (Param("scale", 1, "factor applied after adding one", min=0),)

    def process(self, payload: Any, **params: Any) -> Any:
        return (np.asarray(payload) + 1) * self.params["scale"]
