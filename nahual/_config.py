"""Timeouts shared by the client, the server, the launcher and the streaming layer.

Layer: the bottom, beside the errors (stdlib only). Every blocking call of
the client takes ``timeout=``: seconds, ``None`` for no limit, or
:data:`USE_CLIENT_DEFAULT` (not passed: the client's own limit applies).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from .errors import ConfigError

__all__ = ["DEFAULT_TIMEOUT", "USE_CLIENT_DEFAULT", "Timeout", "UseClientDefault", "parse_seconds", "parse_timeout"]


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


class UseClientDefault(enum.Enum):
    """The type of :data:`USE_CLIENT_DEFAULT`: "no timeout given", which ``None`` (no limit) cannot say."""

    USE_CLIENT_DEFAULT = "USE_CLIENT_DEFAULT"

    def __repr__(self) -> str:
        return "USE_CLIENT_DEFAULT"


#: A call's ``timeout`` when none is passed: the client's ``Timeout.request`` applies.
USE_CLIENT_DEFAULT = UseClientDefault.USE_CLIENT_DEFAULT


def parse_seconds(value: float | None, what: str = "timeout") -> float | None:
    """A positive number of seconds as a float, or ``None`` (no limit).

    Raises
    ------
    ConfigError
        For zero, negative numbers, booleans and anything that is not a number.
    """
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise ConfigError(f"{what} must be a positive number of seconds or None, got {value!r}")
    return float(value)


def parse_timeout(value: Timeout | float | None) -> Timeout:
    """Turn a ``Timeout``, a number of seconds (for every limit) or ``None`` into a ``Timeout``.

    Raises
    ------
    ConfigError
        For anything else (zero, negative numbers, strings, booleans).
    """
    if isinstance(value, Timeout):
        return value
    try:
        seconds = parse_seconds(value)
    except ConfigError:
        raise ConfigError(f"timeout must be a positive number of seconds, a Timeout or None, got {value!r}") from None
    return Timeout(seconds, seconds, seconds)
