"""The built-in ``echo`` model: returns its input unchanged (tests and benchmarks).

Layer: model zoo.
"""

from __future__ import annotations

import time
from typing import Any

from ..model import Contract, Model, Param

__all__ = ["Echo"]


class Echo(Model):
    """Return the payload as received, after sleeping ``delay_s`` seconds."""

    name = "echo"
    contract = Contract(output="array")
    param_spec = (Param("delay_s", 0.0, "seconds to sleep before answering", min=0),)

    def process(self, payload: Any, **params: Any) -> Any:
        """Sleep ``delay_s`` (the call's, else the load's), then return ``payload`` itself."""
        delay = self.merge_params(params, self.params)["delay_s"]
        if delay:  # even sleep(0) gives up the thread: it would show in transport benchmarks
            time.sleep(delay)
        return payload
