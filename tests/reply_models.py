"""A model that writes its result into a reply buffer (``nahual.reply_array``), loaded as ``reply_models:Filled``.

Also :func:`mapped_file`, which both the model (in the server) and the tests
(in the client) use to tell which file, if any, an array's memory belongs to.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

import nahual
from nahual import Contract, Model, Param

__all__ = ["Filled", "mapped_file"]


def mapped_file(array: np.ndarray) -> str:
    """The base name of the file this process maps at ``array``'s first byte ("" for private memory)."""
    address = array.__array_interface__["data"][0]
    for line in Path("/proc/self/maps").read_text().splitlines():
        fields = line.split(None, 5)
        low, high = (int(part, 16) for part in fields[0].split("-"))
        if low <= address < high and len(fields) == 6 and fields[5].startswith("/"):
            return os.path.basename(fields[5].removesuffix(" (deleted)"))
    return ""


class Filled(Model):
    """Returns ``{"out": a, "file": f}``: ``n`` float32 items of ``value`` written into a reply array.

    ``view`` picks what is returned: the whole array, its first half
    (``head``), all but its first item (``shifted``, not aligned) or every
    other item (``strided``). ``file`` is where the model's array lives in the
    server. ``keep`` keeps the array after returning it (as a batch whose
    parts go to several replies does): no later reply may be written there.
    """

    name = "filled"
    contract = Contract(output="array")
    param_spec = (
        Param("n", 1 << 20, "float32 items", min=0),
        Param("value", 0.0, "the value of every item"),
        Param("view", "whole", "what part of the array to return", choices=("whole", "head", "shifted", "strided")),
        Param("keep", False, "keep the array after returning it"),
    )

    def load(self, **params: Any) -> None:
        super().load(**params)
        self.kept: list[np.ndarray] = []

    def process(self, payload: Any, **params: Any) -> Any:
        p = self.merge_params(params, self.params)
        out = nahual.reply_array((p["n"],), np.float32)
        out[:] = p["value"]
        views = {"whole": out, "head": out[: p["n"] // 2], "shifted": out[1:], "strided": out[::2]}
        if p["keep"]:
            self.kept.append(out)
        return {"out": views[p["view"]], "file": mapped_file(out), "writeable": bool(out.flags.writeable)}
