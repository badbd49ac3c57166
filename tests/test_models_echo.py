"""Tests of the ``echo`` model, in process: it returns its payload itself, after its delay."""

from __future__ import annotations

import time

import numpy as np

from nahual.models.echo import Echo
from nahual.testing import ModelTests


class TestEcho(ModelTests):
    model_class = Echo
    accepts_any_payload = True

    def make_payload(self) -> dict:
        return {"image": np.arange(12, dtype=np.float32).reshape(3, 4), "note": "any JSON value"}


def test_the_payload_comes_back_as_the_same_object():
    model = Echo()
    model.load()
    payload = {"image": np.zeros(3), "nested": [1, {"a": None}]}
    assert model.process(payload) is payload
    assert model.process([1, 2]) == [1, 2]


def test_a_call_delay_overrides_the_load_delay():
    model = Echo()
    model.load(delay_s=0.2)
    start = time.monotonic()
    model.process(None, delay_s=0)
    assert time.monotonic() - start < 0.15
    start = time.monotonic()
    model.process(None)
    assert time.monotonic() - start >= 0.2
