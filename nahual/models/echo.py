"""The built-in ``echo`` model: returns its input unchanged (tests and benchmarks).

Layer: model zoo. Its ``delay_s`` is a fixed cost per call, so with
``max_batch`` above 1 (load params) it is the model whose throughput
batching multiplies (``benchmarks/batching.py``).
"""

from __future__ import annotations

import time
from dataclasses import replace
from typing import Any

from ..model import Contract, Model, Param

__all__ = ["Echo"]


class Echo(Model):
    """Return the payload as received, after sleeping ``delay_s`` seconds (once per call, batch or not)."""

    name = "echo"
    contract = Contract(output="array")
    param_spec = (
        Param("delay_s", 0.0, "seconds to sleep before answering (once per call)", min=0),
        Param("max_batch", 1, "requests answered in one call at most (load only; 1: no batching)", min=1),
        Param("batch_wait_ms", 5.0, "ms a batch that is not full waits for more requests (load only)", min=0),
    )

    def load(self, **params: Any) -> None:
        """Check and keep the params; ``max_batch`` and ``batch_wait_ms`` go into this instance's contract."""
        super().load(**params)
        self.contract = replace(
            type(self).contract, max_batch=self.params["max_batch"], batch_wait_ms=self.params["batch_wait_ms"]
        )

    def process(self, payload: Any, **params: Any) -> Any:
        """Sleep ``delay_s`` (the call's, else the load's), then return ``payload`` itself."""
        return self.process_batch([payload], **params)[0]

    def process_batch(self, payloads: list[Any], **params: Any) -> list[Any]:
        """Sleep ``delay_s`` once for the whole batch, then return the payloads themselves."""
        p = self.merge_params(params, self.params)
        if p["delay_s"]:  # even sleep(0) gives up the thread: it would show in transport benchmarks
            time.sleep(p["delay_s"])
        return list(payloads)
