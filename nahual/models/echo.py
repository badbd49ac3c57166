"""The built-in ``echo`` model: returns its input unchanged (tests and benchmarks)."""

from __future__ import annotations

import time
from typing import Any

from ..model import Contract, Model

__all__ = ["Echo"]


class Echo(Model):
    """Return the payload as received, after sleeping ``delay_s`` seconds."""

    name = "echo"
    contract = Contract(output="array", params={"delay_s": "seconds to sleep before answering (0)"})

    def load(self, delay_s: float = 0.0) -> None:
        self.delay_s = float(delay_s)

    def process(self, payload: Any, delay_s: float | None = None) -> Any:
        time.sleep(self.delay_s if delay_s is None else float(delay_s))
        return payload
