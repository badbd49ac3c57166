"""The call style of earlier nahual releases, as a thin layer over :class:`Client`."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .._config import Timeout
from ._client import Client

__all__ = ["seed_api"]


def seed_api(model: str) -> tuple[Callable[..., dict[str, Any]], Callable[..., Any]]:
    """Build ``load_model`` and ``process_data`` functions for one model.

    ``load_model`` loads the model with ``parameters`` at ``address`` and
    remembers the instance; ``process_data`` sends data to the instance last
    loaded at that address (loading with default params if none was).
    """
    loaded: dict[str, dict[str, Any]] = {}

    def load_model(
        parameters: dict[str, Any] | None = None, address: str = "", timeout: Timeout | float | None = 60.0
    ) -> dict[str, Any]:
        """Load the model on the server at ``address``; returns the instance description."""
        with Client(address, timeout=timeout) as client:
            handle = client.load(model, **(parameters or {}))
        loaded[address] = dict(handle.params)
        return {"instance": handle.instance_id, "model": handle.model, "params": handle.params}

    def process_data(data: Any, address: str = "", timeout: Timeout | float | None = 60.0, **params: Any) -> Any:
        """Process ``data`` with the model loaded at ``address``; returns the decoded result."""
        with Client(address, timeout=timeout) as client:
            return client.load(model, **loaded.get(address, {}))(data, **params)

    load_model.__qualname__ = f"{model}.load_model"
    process_data.__qualname__ = f"{model}.process_data"
    return load_model, process_data
