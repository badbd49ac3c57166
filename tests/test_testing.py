"""Tests of nahual.testing: ModelTests passes a model that keeps its contract and catches ones that break it."""

from __future__ import annotations

import subprocess
import sys

import pytest

from nahual.testing import ModelTests

pytest_plugins = ["pytester"]

MODELS = '''
import numpy as np
from nahual import Contract, Model, Param
from nahual.testing import ModelTests


class Bright(Model):
    """Keeps its contract: labels of the pixels above ``level``."""

    name = "bright"
    contract = Contract(axes=("yx", "cyx"), inputs=("image",), output="labels")
    param_spec = (Param("level", 0.5, "pixels above it are objects", min=0), Param("invert", False, "dark objects"))

    def process(self, payload, **params):
        p = self.merge_params(params, self.params)
        arrays, axes = self.contract.read_payload(payload)
        image = arrays["image"] if axes == "yx" else arrays["image"][0]
        return {"labels": ((image < p["level"]) if p["invert"] else (image > p["level"])).astype(np.uint32)}


class InPlace(Bright):
    """Writes its result into the payload's array."""

    name = "in-place"

    def process(self, payload, **params):
        arrays, _ = self.contract.read_payload(payload)
        arrays["image"][...] = 0
        return {"labels": arrays["image"].astype(np.uint32)}


class Lax(Bright):
    """Ignores the params it is given and never checks the payload."""

    name = "lax"

    def load(self, **params):
        self.params = dict(self.defaults)

    def process(self, payload, **params):
        return {"labels": np.zeros((4, 4), np.uint32)}


class TestBright(ModelTests):
    model_class = Bright
    load_params = {"level": 0.25}

    def make_payload(self):
        return {"image": np.linspace(0, 1, 64, dtype=np.float32).reshape(8, 8), "axes": "yx"}


class TestInPlace(TestBright):
    model_class = InPlace


class TestLax(TestBright):
    model_class = Lax
'''


def outcomes(pytester: pytest.Pytester, cls: str) -> dict[str, str]:
    """Test name -> outcome of the generated test class ``cls``."""
    pytester.makepyfile(test_generated=MODELS)
    reports = pytester.inline_run("-p", "no:cacheprovider", "-k", cls).getreports("pytest_runtest_logreport")
    results: dict[str, str] = {}
    for report in reports:
        name = report.nodeid.rsplit("::", 1)[1]
        if report.when == "call" or report.outcome != "passed":
            results[name] = report.outcome
    return results


def contract_tests() -> set[str]:
    """Every test ModelTests gives."""
    return {name for name in dir(ModelTests) if name.startswith("test_")}


def test_a_model_that_keeps_its_contract_passes_every_test(pytester):
    results = outcomes(pytester, "TestBright")
    assert set(results) == contract_tests()
    assert {name for name, outcome in results.items() if outcome != "passed"} == {
        "test_labels_of_another_shape_than_the_image_are_a_contract_error"  # skipped: no labels input
    }


def test_a_model_that_writes_into_its_payload_fails_the_read_only_test(pytester):
    results = outcomes(pytester, "TestInPlace")
    failed = {name for name, outcome in results.items() if outcome == "failed"}
    assert "test_a_read_only_payload_is_processed_and_left_unchanged" in failed
    assert "test_contract_survives_its_json_round_trip" not in failed


def test_a_model_that_ignores_params_and_payload_checks_fails_those_tests(pytester):
    failed = {name for name, outcome in outcomes(pytester, "TestLax").items() if outcome == "failed"}
    assert failed == {
        "test_the_loaded_params_are_the_defaults_updated_with_the_load_params",
        "test_an_unknown_param_is_refused_at_load",
        "test_an_unknown_param_is_refused_at_process",
        "test_values_outside_a_params_spec_are_refused_at_check_load_and_process",
        "test_a_payload_that_is_not_a_dict_is_a_contract_error",
        "test_a_payload_without_an_input_is_a_contract_error",
        "test_axes_the_model_does_not_take_are_a_contract_error",
        "test_an_input_of_the_wrong_ndim_is_a_contract_error",
    }


def test_importing_nahual_does_not_import_the_test_support_or_pytest():
    code = "import sys, nahual, nahual.model; print('nahual.testing' in sys.modules, 'pytest' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60)
    assert out.stdout.split() == ["False", "False"]
