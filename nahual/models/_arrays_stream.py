"""Read a pickle stream of dicts, lists and numpy arrays without ``pickle``: nothing it names can run.

Layer: model zoo support (numpy and the stdlib). Cellpose saves its size
models with ``np.save`` of a dict, which numpy writes as a pickle; loading that
with ``pickle`` (``np.load(allow_pickle=True)``) runs whatever the file names.
:func:`read_arrays_stream` parses the opcodes with :mod:`pickletools` (which
only disassembles) and builds the value itself, knowing the few opcodes such
files use (protocols 3 and 4; ``np.save`` writes 3) and numpy's four reconstruction names;
anything else is a ``ValueError``.
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["read_arrays_stream"]


#: The only callables a stream may name (numpy's array and scalar reconstruction).
_GLOBALS = {
    **{(module, "_reconstruct"): "array" for module in ("numpy.core.multiarray", "numpy._core.multiarray")},
    **{(module, "scalar"): "scalar" for module in ("numpy.core.multiarray", "numpy._core.multiarray")},
    ("numpy", "ndarray"): "ndarray",
    ("numpy", "dtype"): "dtype",
}
_PUSH = {"SHORT_BINUNICODE", "BINUNICODE", "BINUNICODE8", "SHORT_BINBYTES", "BINBYTES", "BINBYTES8",
         "SHORT_BINSTRING", "BINSTRING", "BININT", "BININT1", "BININT2", "BINFLOAT"}  # fmt: skip
_CONSTANTS = {"NONE": None, "NEWTRUE": True, "NEWFALSE": False, "EMPTY_TUPLE": ()}


class _Array:
    """An array under construction: ``_reconstruct`` makes it, ``BUILD`` gives it its data."""

    value: Any = None

    def build(self, state: tuple) -> None:
        _version, shape, dtype, fortran, raw = state
        if dtype.hasobject:
            self.value = np.array(raw, dtype=object).reshape(shape)
        else:
            raw = raw.encode("latin-1") if isinstance(raw, str) else raw
            self.value = np.frombuffer(raw, dtype).reshape(shape, order="F" if fortran else "C").copy()


def _reduce(function: str, args: tuple) -> Any:
    if function == "array":
        return _Array()
    if function == "dtype":
        return np.dtype(args[0])
    if function == "scalar":
        dtype, raw = args
        return np.frombuffer(raw.encode("latin-1") if isinstance(raw, str) else raw, dtype)[0]
    raise ValueError(f"{function} cannot be called")


def _resolved(value: Any) -> Any:
    if isinstance(value, _Array):
        value = value.value
    if isinstance(value, np.ndarray) and value.dtype.hasobject:
        return _resolved(value.item()) if value.ndim == 0 else [_resolved(v) for v in value.ravel()]
    if isinstance(value, dict):
        return {key: _resolved(item) for key, item in value.items()}
    return value


def read_arrays_stream(stream: bytes) -> Any:
    """The value of a pickle stream holding dicts, lists and numpy arrays, built without ``pickle``.

    ``pickletools.genops`` only parses opcodes; this stack machine knows a
    dozen of them and the four numpy names in :data:`_GLOBALS`, so no code
    named by the file can run.
    """
    import pickletools

    stack: list[Any] = []
    marks: list[int] = []
    memo: dict[int, Any] = {}

    def since_mark() -> list[Any]:
        items = stack[marks.pop() :]
        del stack[len(stack) - len(items) :]
        return items

    for opcode, arg, _pos in pickletools.genops(stream):
        name = opcode.name
        if name in ("PROTO", "FRAME"):
            continue
        if name == "STOP":
            return _resolved(stack.pop())
        if name in _PUSH:
            stack.append(arg)
        elif name in _CONSTANTS:
            stack.append(_CONSTANTS[name])
        elif name in ("MEMOIZE", "BINPUT", "LONG_BINPUT"):
            memo[len(memo) if name == "MEMOIZE" else arg] = stack[-1]
        elif name in ("BINGET", "LONG_BINGET"):
            stack.append(memo[arg])
        elif name == "MARK":
            marks.append(len(stack))
        elif name in ("TUPLE1", "TUPLE2", "TUPLE3"):
            count = int(name[-1])
            stack[-count:] = [tuple(stack[-count:])]
        elif name == "TUPLE":
            stack.append(tuple(since_mark()))
        elif name in ("EMPTY_LIST", "EMPTY_DICT"):
            stack.append([] if name == "EMPTY_LIST" else {})
        elif name in ("APPEND", "APPENDS"):
            items = [stack.pop()] if name == "APPEND" else since_mark()
            stack[-1].extend(items)
        elif name == "SETITEM":
            key, value = stack[-2:]
            del stack[-2:]
            stack[-1][key] = value
        elif name == "SETITEMS":
            items = since_mark()
            stack[-1].update(zip(items[::2], items[1::2]))
        elif name in ("STACK_GLOBAL", "GLOBAL"):
            key = tuple(arg.split(" ", 1)) if name == "GLOBAL" else tuple(stack[-2:])
            if name == "STACK_GLOBAL":
                del stack[-2:]
            if key not in _GLOBALS:
                raise ValueError(f"it holds {'.'.join(key)}; only numpy arrays are read")
            stack.append(_GLOBALS[key])
        elif name == "REDUCE":
            args = stack.pop()
            stack[-1] = _reduce(stack[-1], args)
        elif name == "BUILD":
            state = stack.pop()
            if isinstance(stack[-1], _Array):
                stack[-1].build(state)
        else:
            raise ValueError(f"pickle opcode {name} is not read")
    raise ValueError("the stream ends without STOP")
