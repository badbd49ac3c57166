"""Tests of nahual._params and the Model's use of it: one declaration gives defaults, descriptions and checks."""

from __future__ import annotations

import math
from types import MappingProxyType

import numpy as np
import pytest

import nahual
from nahual import Contract, Model, Param
from nahual.errors import ConfigError, ParamError


class Smooth(Model):
    name = "smooth"
    contract = Contract(axes=("yx",), output="labels")
    param_spec = (
        Param("sigma", 1.0, "Gaussian smoothing in pixels", min=0, max=10),
        Param("size", 3, "window in pixels", min=1),
        Param("mode", "reflect", "border handling", choices=("reflect", "wrap")),
        Param("level", None, "fixed level", type=float),
        Param("names", None, "channel names", type=(list, tuple)),
        Param("fill", True, "fill holes"),
        Param("device", "cpu", "where to run", optional=True),
    )


def test_param_is_public_frozen_and_documented():
    assert nahual.Param is Param and "Param" in nahual.model.__all__
    with pytest.raises(AttributeError):
        Smooth.param_spec[0].default = 2.0  # type: ignore[misc]


def test_defaults_and_descriptions_are_derived_from_the_spec():
    assert dict(Smooth.defaults) == {
        "sigma": 1.0, "size": 3, "mode": "reflect", "level": None, "names": None, "fill": True, "device": "cpu",
    }  # fmt: skip
    with pytest.raises(TypeError):
        Smooth.defaults["sigma"] = 2.0  # type: ignore[index]  # read-only
    assert Smooth.contract.params == {
        "sigma": "Gaussian smoothing in pixels (float in [0, 10]; default 1.0)",
        "size": "window in pixels (int >= 1; default 3)",
        "mode": 'border handling (one of "reflect", "wrap"; default "reflect")',
        "level": "fixed level (float or null; default null)",
        "names": "channel names (list or tuple or null; default null)",
        "fill": "fill holes (bool; default true)",
        "device": 'where to run (str or null; default "cpu")',
    }
    assert Smooth.contract.axes == ("yx",) and Smooth.contract.output == "labels"
    assert Model.contract.params == {} and dict(Model.defaults) == {}


@pytest.mark.parametrize(
    "params",
    [
        {},
        {"sigma": 2},  # an int is a float
        {"sigma": np.float32(0.5), "size": np.int64(5)},
        {"sigma": 0, "size": 1, "mode": "wrap", "level": 600, "names": ["a", "b"], "fill": False, "device": None},
        {"names": ("a",), "level": None},
    ],
)
def test_values_inside_the_spec_are_accepted_as_given(params):
    assert Smooth.check_params(params) == params
    assert Smooth.check_params(params) is not params


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"sigmaa": 2}, "smooth: unknown param 'sigmaa' \\(did you mean 'sigma'\\?\\); known: sigma, size, mode,"),
        ({"zzz": 1, "aaa": 2}, "unknown param 'aaa', 'zzz'; known"),
        ({"sigma": "2"}, "smooth: param 'sigma' expects float in \\[0, 10\\], got \"2\" \\(str\\)"),
        ({"sigma": -0.5}, "param 'sigma' expects float in \\[0, 10\\], got -0.5"),
        ({"sigma": 11}, "param 'sigma' expects float in \\[0, 10\\], got 11 \\(int\\)"),
        ({"sigma": math.nan}, "param 'sigma' expects .*got NaN"),
        ({"sigma": math.inf}, "param 'sigma' expects .*got Infinity"),
        ({"sigma": True}, "param 'sigma' expects float .*got true \\(bool\\)"),
        ({"size": True}, "param 'size' expects int >= 1, got true \\(bool\\)"),
        ({"size": 2.0}, "param 'size' expects int >= 1, got 2.0 \\(float\\)"),
        ({"size": 0}, "param 'size' expects int >= 1, got 0"),
        ({"size": None}, "param 'size' expects int >= 1, got null"),
        ({"mode": "nearest"}, 'param \'mode\' expects one of "reflect", "wrap", got "nearest"'),
        ({"level": "high"}, "param 'level' expects float or null"),
        ({"names": "ab"}, "param 'names' expects list or tuple or null"),
        ({"fill": 1}, "param 'fill' expects bool, got 1 \\(int\\)"),
        ({"device": 0}, "param 'device' expects str or null, got 0"),
    ],
)
def test_values_outside_the_spec_are_a_param_error_naming_model_param_expected_and_found(params, message):
    with pytest.raises(ParamError, match=message) as caught:
        Smooth.check_params(params)
    assert "\n" not in str(caught.value)
    assert isinstance(caught.value, ConfigError) and isinstance(caught.value, TypeError)


def test_params_that_are_not_a_mapping_are_refused():
    with pytest.raises(ParamError, match="smooth: params must be a mapping of names to values, got list"):
        Smooth.check_params(["sigma"])  # type: ignore[arg-type]


def test_a_huge_wrong_value_is_quoted_short():
    with pytest.raises(ParamError) as caught:
        Smooth.check_params({"mode": "x" * 1_000_000})
    assert len(str(caught.value)) < 300 and str(caught.value).endswith("... (str)")


def test_load_and_merge_params_check_what_they_merge():
    model = Smooth()
    model.load(sigma=2)
    assert model.params == {**Smooth.defaults, "sigma": 2}
    assert model.merge_params({"size": 5}, model.params) == {**Smooth.defaults, "sigma": 2, "size": 5}
    assert model.merge_params({}) == dict(Smooth.defaults)
    with pytest.raises(ParamError, match="param 'size'"):
        model.merge_params({"size": -1}, model.params)
    with pytest.raises(ParamError, match="unknown param 'sizes'"):
        Smooth().load(sizes=3)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"name": "two words", "default": 1, "help": "x"}, "must be a Python identifier, got 'two words'"),
        ({"name": "n", "default": 1, "help": "x", "min": 2, "max": 1}, "param 'n': min 2 is above max 1"),
        ({"name": "n", "default": -1, "help": "x", "min": 0}, "param 'n': the default -1 is not int >= 0"),
        ({"name": "n", "default": "a", "help": "x", "choices": ("b", "c")}, 'the default "a" is not one of "b", "c"'),
        ({"name": "n", "default": 1, "help": "x", "type": str}, "the default 1 is not str"),
    ],
)
def test_a_spec_that_contradicts_itself_is_refused_when_declared(kwargs, message):
    with pytest.raises(ParamError, match=message):
        Param(**kwargs)


def test_a_model_declares_its_params_once():
    with pytest.raises(ParamError, match="declare parameters as param_spec"):

        class WithDefaults(Model):
            defaults = MappingProxyType({"sigma": 1.0})

    with pytest.raises(ParamError, match="Contract\\(params=...\\) is written from param_spec"):

        class WithTexts(Model):
            contract = Contract(params={"sigma": "smoothing (1.0)"})
            param_spec = (Param("sigma", 1.0, "smoothing"),)

    with pytest.raises(ParamError, match="Twice: param 'sigma' is declared twice"):

        class Twice(Model):
            param_spec = (Param("sigma", 1.0, "smoothing"), Param("sigma", 2.0, "again"))

    with pytest.raises(ParamError, match="NotParams: param_spec holds Param entries, got dict"):

        class NotParams(Model):
            param_spec = ({"name": "sigma"},)  # type: ignore[assignment]


def test_a_subclass_extends_its_parents_spec():
    class Sharper(Smooth):
        name = "sharper"
        param_spec = (*Smooth.param_spec, Param("amount", 1.0, "how much sharper", min=0))

    assert list(Sharper.contract.params) == [*Smooth.contract.params, "amount"]
    assert Sharper.defaults["amount"] == 1.0 and "amount" not in Smooth.defaults
    with pytest.raises(ParamError, match="sharper: param 'amount'"):
        Sharper.check_params({"amount": -1})
