"""Lifecycle states shared by the client, its transports and the server.

Layer: the bottom, beside the errors (stdlib only). Each of them goes
UNOPENED → OPEN → CLOSED once: closing is idempotent, and opening a closed
one raises :class:`~nahual.errors.StateError` instead of half-working.
"""

from __future__ import annotations

import enum

__all__ = ["State"]


class State(enum.Enum):
    """Where a client, a transport or a server is in its life."""

    UNOPENED = "unopened"
    OPEN = "open"
    CLOSED = "closed"
