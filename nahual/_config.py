"""Timeouts shared by the client, the launcher and the streaming layer."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["DEFAULT_TIMEOUT", "Timeout", "parse_timeout"]


@dataclass(frozen=True)
class Timeout:
    """Finite time limits, in seconds; ``None`` means wait forever.

    Parameters
    ----------
    connect : float or None
        How long to wait for a dial to succeed.
    request : float or None
        How long to wait for the reply to one request.
    startup : float or None
        How long a launched server may take to answer its first ping.
    """

    connect: float | None = 5.0
    request: float | None = 60.0
    startup: float | None = 60.0


DEFAULT_TIMEOUT = Timeout()


def parse_timeout(value: Timeout | float | None) -> Timeout:
    """Turn a ``Timeout``, a number of seconds (for every limit) or ``None`` into a ``Timeout``."""
    if isinstance(value, Timeout):
        return value
    if value is None:
        return Timeout(None, None, None)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
        raise ValueError(f"timeout must be a positive number of seconds, a Timeout or None, got {value!r}")
    return Timeout(float(value), float(value), float(value))
