"""Model parameters declared once: :class:`Param`, and the checks every model's params go through.

Layer: model author API (stdlib only). A model lists its parameters as a tuple
of :class:`Param`; its defaults, the descriptions ``info`` sends and ``nahual
models`` prints, and the validation of load and call params are all derived
from that one declaration, so they cannot drift apart.
"""

from __future__ import annotations

import json
import math
import numbers
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from .errors import ParamError

__all__ = ["Param", "check_params", "describe_params"]


@dataclass(frozen=True)
class Param:
    """One model parameter: its name, default, meaning and the values it takes.

    Parameters
    ----------
    name : str
        The keyword ``load`` and ``process`` take (a Python identifier).
    default : Any
        The value used when the caller gives none; must fit the rest of the spec.
    help : str
        One line saying what it does. The type, choices, range and default are
        appended by :meth:`describe`: do not restate them here.
    type : type or tuple of type, optional
        Accepted types; by default the type of ``default`` (any value when the
        default is None). An ``int`` is accepted for a ``float`` but a ``bool``
        is never an ``int``; NaN and infinities are refused.
    choices : tuple, optional
        The only values accepted.
    min, max : float, optional
        Inclusive bounds of a number.
    optional : bool
        Whether None is accepted; always true when the default is None.

    Raises
    ------
    ParamError
        When the declaration contradicts itself (a default outside its own spec).
    """

    name: str
    default: Any
    help: str
    type: type | tuple[type, ...] | None = None
    choices: tuple[Any, ...] | None = None
    min: float | None = None
    max: float | None = None
    optional: bool = False

    def __post_init__(self) -> None:
        if not self.name.isidentifier():
            raise ParamError(f"a param name must be a Python identifier, got {self.name!r}")
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ParamError(f"param {self.name!r}: min {self.min} is above max {self.max}")
        if not self.fits(self.default):
            raise ParamError(f"param {self.name!r}: the default {_show(self.default)} is not {self.expects}")

    @property
    def types(self) -> tuple[type, ...]:
        """The accepted types; empty means any."""
        if self.type is None:
            return () if self.default is None else (type(self.default),)
        return self.type if isinstance(self.type, tuple) else (self.type,)

    @property
    def nullable(self) -> bool:
        """Whether None is accepted."""
        return self.optional or self.default is None

    @property
    def expects(self) -> str:
        """What the param takes, in words (``float >= 0``, ``one of "otsu", "li"``)."""
        if self.choices is not None:
            text = "one of " + ", ".join(_show(choice) for choice in self.choices)
        else:
            text = " or ".join(t.__name__ for t in self.types) or "any value"
            if self.min is not None and self.max is not None:
                text += f" in [{_show(self.min)}, {_show(self.max)}]"
            elif self.min is not None:
                text += f" >= {_show(self.min)}"
            elif self.max is not None:
                text += f" <= {_show(self.max)}"
        return text + (" or null" if self.nullable and self.types else "")

    def describe(self) -> str:
        """The one-line description ``info`` sends: the help, what the param takes and its default."""
        return f"{self.help} ({self.expects}; default {_show(self.default)})"

    def fits(self, value: Any) -> bool:
        """Whether ``value`` is one this param accepts."""
        if value is None:
            return self.nullable
        if self.types and not _is_instance(value, self.types):
            return False
        if self.choices is not None and value not in self.choices:
            return False
        if isinstance(value, numbers.Real) and not isinstance(value, bool):
            if not math.isfinite(value):
                return False
            if (self.min is not None and value < self.min) or (self.max is not None and value > self.max):
                return False
        return True


def _is_instance(value: Any, types: tuple[type, ...]) -> bool:
    """``isinstance`` with the numeric rules of :class:`Param`: int fits float, bool fits only bool."""
    if isinstance(value, bool):
        return bool in types
    if float in types and isinstance(value, numbers.Real):
        return True
    if int in types and isinstance(value, numbers.Integral):
        return True
    return isinstance(value, types)


#: Characters of a value an error message quotes at most (a 1 MB param must not make a 1 MB message).
_SHOW_MAX = 80


def _show(value: Any) -> str:
    """A value as the user writes it in JSON or YAML (``1.0``, ``"otsu"``, ``true``, ``null``), shortened."""
    text = json.dumps(value, default=repr)
    return text if len(text) <= _SHOW_MAX else f"{text[: _SHOW_MAX - 3]}..."


def describe_params(owner: str, spec: tuple[Param, ...]) -> dict[str, str]:
    """Name -> description of every param of ``spec``, in declaration order.

    Raises
    ------
    ParamError
        When an entry is not a :class:`Param` or two share a name.
    """
    descriptions: dict[str, str] = {}
    for param in spec:
        if not isinstance(param, Param):
            raise ParamError(f"{owner}: param_spec holds Param entries, got {type(param).__name__} {param!r}")
        if param.name in descriptions:
            raise ParamError(f"{owner}: param {param.name!r} is declared twice")
        descriptions[param.name] = param.describe()
    return descriptions


def check_params(owner: str, spec: tuple[Param, ...], params: Mapping[str, Any]) -> dict[str, Any]:
    """``params`` as a new dict, after checking each against ``spec``.

    Parameters
    ----------
    owner : str
        The model's name, for the messages.
    spec : tuple of Param
        The model's declared params.
    params : mapping
        Names to values, as given by a caller or a config file.

    Raises
    ------
    ParamError
        Naming the model, the param, what was expected and what was found: for
        a name outside ``spec`` (with the closest known name) or a value the
        param does not take.
    """
    if not isinstance(params, Mapping):
        raise ParamError(f"{owner}: params must be a mapping of names to values, got {type(params).__name__}")
    by_name = {param.name: param for param in spec}
    unknown = sorted((str(name) for name in params if name not in by_name), key=str)
    if unknown:
        import difflib  # only on this error path: imports stay light for ``nahual serve``

        close = difflib.get_close_matches(unknown[0], by_name, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        known = ", ".join(by_name) or "none"
        raise ParamError(f"{owner}: unknown param {', '.join(map(repr, unknown))}{hint}; known: {known}")
    for name, value in params.items():
        param = by_name[name]
        if not param.fits(value):
            raise ParamError(
                f"{owner}: param {name!r} expects {param.expects}, got {_show(value)} ({type(value).__name__})"
            )
    return dict(params)
