"""One run per request: a copy of a request that is running, or was just answered, does not run the model again.

Layer: server, below :mod:`._handler` and :mod:`._legacy`. nng resends a
request whose reply is slow, and a resend may also arrive just after the
reply left; both wires key their requests (connection and request id, or
connection and message digest) and run each key once through
:class:`OncePerKey`. What is remembered of an answered request, and what a
late copy gets from it, is each wire's own: protocol v1 refuses it, the
earlier wire sends the same reply again.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Hashable, Iterator
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

__all__ = ["OncePerKey"]

K = TypeVar("K", bound=Hashable)
R = TypeVar("R")


@dataclass
class _Pending:
    """A request being answered; copies of it wait for its reply instead of running again."""

    done: threading.Event = field(default_factory=threading.Event)
    reply: Any = None


class OncePerKey(Generic[K, R]):
    """Runs each key's answer once; copies wait for it, and late copies get what is remembered (thread-safe).

    Parameters
    ----------
    ttl_s : float
        Seconds an answered key is remembered.
    remember : callable
        ``remember(reply, remembered)`` -> what to keep of a reply (None: forget
        the key), given an iterator over what is kept of the other answered keys
        (walked only by a ``remember`` that needs it: a request costs the same
        however many keys are remembered).
    repeat : callable
        ``repeat(key, kept)`` -> the reply to a copy that arrives after its key
        was answered (it may raise instead).
    """

    def __init__(
        self,
        ttl_s: float,
        remember: Callable[[R | None, Iterator[Any]], Any],
        repeat: Callable[[K, Any], R],
    ) -> None:
        self._ttl_s = ttl_s
        self._remember = remember
        self._repeat = repeat
        self._lock = threading.Lock()
        self._pending: dict[K, _Pending] = {}
        #: Answered keys in the order they were answered, so the expired ones are the first.
        self._answered: dict[K, tuple[float, Any]] = {}

    def run(self, key: K, answer: Callable[[], R]) -> R:
        """The reply to ``key``: ``answer()`` for its first copy, that reply for copies that arrive meanwhile."""
        with self._lock:
            self._expire(time.monotonic())
            if key in self._answered:
                return self._repeat(key, self._answered[key][1])
            pending = self._pending.get(key)
            owner = pending is None
            if owner:
                pending = self._pending[key] = _Pending()
        if not owner:
            pending.done.wait()
            return pending.reply
        try:
            pending.reply = answer()
        finally:
            with self._lock:
                del self._pending[key]
                kept = self._remember(pending.reply, (kept for _, kept in self._answered.values()))
                if kept is not None:
                    self._answered[key] = (time.monotonic(), kept)
            pending.done.set()
        return pending.reply

    def _expire(self, now: float) -> None:
        """Forget the keys answered over ``ttl_s`` ago (under the lock)."""
        while self._answered:
            key, (answered, _) = next(iter(self._answered.items()))
            if now - answered < self._ttl_s:
                return
            del self._answered[key]
