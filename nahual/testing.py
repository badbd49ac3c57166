"""Contract tests every nahual model passes: subclass :class:`ModelTests` in the model's test module.

Layer: test support, beside the model author API. It imports pytest, and
``import nahual`` never imports it. As with ``zarr.testing.store.StoreTests``,
a subclass names the model and gives one valid payload; it gets for free the
tests of wrong input, of unknown and ill-typed params (at check, load and
call time), of the contract's JSON round trip, of defaults and descriptions
coming from the param spec, and of a read-only payload left untouched::

    import numpy as np
    from nahual.testing import ModelTests
    from mypackage.blur import Blur

    class TestBlur(ModelTests):
        model_class = Blur
        load_params = {"device": "cpu"}      # optional

        def make_payload(self):
            return {"image": np.ones((2, 32, 32), np.float32), "axes": "cyx"}

The model must check its params with ``Model.load``/``merge_params`` before it
reads the payload, and keep its merged load params in ``self.params``.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any, ClassVar

import numpy as np
import pytest

from .errors import ContractError, ParamError
from .model import Contract, Model, Param

__all__ = ["ModelTests"]

#: A param name no model declares.
UNKNOWN = "not_a_param"

#: Axis orders tried when a test needs one the model refuses.
AXIS_ORDERS = ("yx", "xy", "zyx", "cyx", "tyx", "yxc", "czyx", "tzyx", "tcyx", "zcyx", "tczyx", "ctzyx")


def wrong_values(param: Param) -> list[Any]:
    """Values ``param`` must refuse: a wrong type, bool for an int, NaN, None, a non-choice, out of range."""
    values: list[Any] = []
    types = param.types
    if types:
        candidates = (("text", str), (2.5, float), (["x"], list))
        values += [candidate for candidate, kind in candidates if kind not in types][:1]
        values += [True] if int in types and bool not in types else []
        values += [float("nan")] if float in types else []
    values += [] if param.nullable else [None]
    values += [f"not {param.choices[0]}"] if param.choices and isinstance(param.choices[0], str) else []
    values += [] if param.min is None else [param.min - 1]
    values += [] if param.max is None else [param.max + 1]
    return values


class ModelTests:
    """Tests every model inherits; a subclass sets :attr:`model_class` and :meth:`make_payload`.

    Attributes
    ----------
    model_class : type of Model
        The model under test.
    load_params : dict
        Params for ``load`` (e.g. a small weights file); empty by default.
    accepts_any_payload : bool
        True for a model that takes any payload (``echo``): skips the wrong-input tests.
    """

    model_class: ClassVar[type[Model]]
    load_params: ClassVar[dict[str, Any]] = {}
    accepts_any_payload: ClassVar[bool] = False

    def make_payload(self) -> dict[str, Any]:
        """A fresh, valid payload of numpy arrays the model processes quickly."""
        raise NotImplementedError(f"{type(self).__name__} must define make_payload()")

    @pytest.fixture(scope="class")
    def model(self) -> Iterator[Model]:
        """One loaded instance for the tests of the class (loading may be slow)."""
        instance = self.model_class()
        instance.load(**self.load_params)
        yield instance
        instance.close()

    @property
    def contract(self) -> Contract:
        """The contract of the model under test."""
        return self.model_class.contract

    def _checked_payload(self) -> tuple[dict[str, Any], str]:
        """A valid payload with its axes; skips the test for a model that takes anything."""
        if self.accepts_any_payload:
            pytest.skip(f"{self.model_class.__name__} accepts any payload")
        payload = self.make_payload()
        return payload, self.contract.read_payload(payload)[1]

    # -- declaration --------------------------------------------------------------
    def test_declares_a_name_and_its_packages(self) -> None:
        assert self.model_class.name, "a model needs a registry name"
        assert isinstance(self.model_class.packages, tuple)
        assert all(isinstance(package, str) for package in self.model_class.packages)

    def test_contract_survives_its_json_round_trip(self) -> None:
        assert Contract.from_dict(json.loads(json.dumps(self.contract.to_dict()))) == self.contract

    def test_defaults_are_the_specs_defaults_and_pass_it(self) -> None:
        defaults = dict(self.model_class.defaults)
        assert defaults == {param.name: param.default for param in self.model_class.param_spec}
        assert self.model_class.check_params(defaults) == defaults
        json.dumps(defaults)  # params travel as JSON: this raises for anything else

    def test_param_descriptions_come_from_the_spec(self) -> None:
        described = self.contract.params
        assert list(described) == [param.name for param in self.model_class.param_spec]
        for param in self.model_class.param_spec:
            assert described[param.name] == param.describe()
            assert described[param.name].startswith(param.help)
            assert f"default {json.dumps(param.default)}" in described[param.name]

    # -- processing ---------------------------------------------------------------
    def test_a_valid_payload_is_processed(self, model: Model) -> None:
        assert isinstance(model.process(self.make_payload()), dict)

    def test_the_loaded_params_are_the_defaults_updated_with_the_load_params(self, model: Model) -> None:
        assert model.params == {**self.model_class.defaults, **self.load_params}

    def test_a_read_only_payload_is_processed_and_left_unchanged(self, model: Model) -> None:
        payload = self.make_payload()
        arrays = {key: value for key, value in payload.items() if isinstance(value, np.ndarray)}
        assert arrays, "make_payload() must hold numpy arrays"
        before = {key: array.copy() for key, array in arrays.items()}
        for array in arrays.values():
            array.setflags(write=False)
        keys = set(payload)
        model.process(payload)
        assert set(payload) == keys
        for key, array in arrays.items():
            assert payload[key] is array and np.array_equal(array, before[key]), key

    # -- wrong input ----------------------------------------------------------------
    def test_a_payload_that_is_not_a_dict_is_a_contract_error(self, model: Model) -> None:
        payload, _ = self._checked_payload()
        for wrong in ([payload[self.contract.inputs[0]]], payload[self.contract.inputs[0]], "image", None):
            with pytest.raises(ContractError, match="payload keys"):
                model.process(wrong)

    def test_a_payload_without_an_input_is_a_contract_error(self, model: Model) -> None:
        for key in self.contract.inputs:
            payload, _ = self._checked_payload()
            del payload[key]
            with pytest.raises(ContractError, match=key):
                model.process(payload)

    def test_axes_the_model_does_not_take_are_a_contract_error(self, model: Model) -> None:
        payload, axes = self._checked_payload()
        if not self.contract.axes:
            pytest.skip("the contract takes any axes")
        refused = [order for order in AXIS_ORDERS if len(order) == len(axes) and order not in self.contract.axes]
        wrong = refused[0] if refused else axes[::-1]
        for value in (wrong, 3):
            with pytest.raises(ContractError, match="axes"):
                model.process({**payload, "axes": value})

    def test_an_input_of_the_wrong_ndim_is_a_contract_error(self, model: Model) -> None:
        payload, axes = self._checked_payload()
        first = self.contract.inputs[0]
        with pytest.raises(ContractError, match=f"{len(axes)}-d"):
            model.process({**payload, "axes": axes, first: np.asarray(payload[first])[np.newaxis]})

    def test_labels_of_another_shape_than_the_image_are_a_contract_error(self, model: Model) -> None:
        payload, axes = self._checked_payload()
        if self.contract.inputs[0] == "labels" or "labels" not in self.contract.inputs:
            pytest.skip("the model does not take labels beside an image")
        with pytest.raises(ContractError, match="labels of shape"):
            model.process({**payload, "axes": axes, "labels": np.asarray(payload["labels"])[..., :-1]})

    # -- params ---------------------------------------------------------------------
    def test_an_unknown_param_is_refused_without_loading(self) -> None:
        with pytest.raises(ParamError, match=UNKNOWN):
            self.model_class.check_params({UNKNOWN: 1})

    def test_an_unknown_param_is_refused_at_load(self) -> None:
        with pytest.raises(ParamError, match=UNKNOWN):
            self.model_class().load(**self.load_params, **{UNKNOWN: 1})

    def test_an_unknown_param_is_refused_at_process(self, model: Model) -> None:
        with pytest.raises(ParamError, match=UNKNOWN):
            model.process(self.make_payload(), **{UNKNOWN: 1})

    def test_values_outside_a_params_spec_are_refused_at_check_load_and_process(self, model: Model) -> None:
        for param in self.model_class.param_spec:
            for value in wrong_values(param):
                params = {param.name: value}
                with pytest.raises(ParamError, match=f"param '{param.name}' expects"):
                    self.model_class.check_params(params)
                with pytest.raises(ParamError, match=f"param '{param.name}' expects"):
                    self.model_class().load(**{**self.load_params, **params})
                with pytest.raises(ParamError, match=f"param '{param.name}' expects"):
                    model.process(self.make_payload(), **params)
