"""Argument parsing shared by the command modules."""

from __future__ import annotations

import json
from typing import Any

from ..errors import ConfigError

__all__ = ["parse_json_object"]


def parse_json_object(text: str, option: str = "--params") -> dict[str, Any]:
    """Parse an option's JSON object; anything else is a one-line :class:`ConfigError`."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{option} is not valid JSON ({exc.msg}): {text!r}") from None
    if not isinstance(value, dict):
        raise ConfigError(f"{option} must be a JSON object, got {type(value).__name__} {text!r}")
    return value
