"""The model instances a request handler holds: bounded, least recently used evicted first.

Layer: server (no sockets, no protocol). A server loads one instance per
distinct model, params and replica, so clients that vary a param (``delay_s``,
a threshold) would otherwise make instances without end. :class:`InstanceTable`
keeps at most ``max_instances``: loading one more first unloads the idle
instance used least recently; one that is running a request (or has requests
waiting for it) is never evicted, and when every instance is busy the load is
refused with :class:`~nahual.errors.InstanceError`. Loads of one key are
serialised by a lock that lives only while someone holds or waits for it, so
failed loads leave nothing behind (``docs/protocol.md``, *Limits*).
"""

from __future__ import annotations

import contextlib
import threading
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ..errors import ConfigError, InstanceError
from ._calls import Calls, calls_for

if TYPE_CHECKING:
    from ..model import Model

__all__ = ["MAX_INSTANCES", "Instance", "InstanceTable", "parse_max_instances"]

#: Instances a server keeps loaded by default (``nahual serve --max-instances``).
MAX_INSTANCES = 16


@dataclass
class Instance:
    """One loaded model and how requests reach it (:mod:`._calls`: one call at a time unless its contract says)."""

    id: str
    model: str
    params: dict[str, Any]
    obj: Model
    key: str
    #: Requests that hold it (running, or waiting for a call): it is not evicted while above 0.
    users: int = 0
    calls: Calls = field(init=False)

    def __post_init__(self) -> None:
        self.calls = calls_for(self.id, self.obj)

    @property
    def closing(self) -> bool:
        """Out of the table, to be closed: requests still waiting for a call must not run."""
        return self.calls.closing


@dataclass
class _LoadSlot:
    lock: threading.Lock = field(default_factory=threading.Lock)
    users: int = 0


def parse_max_instances(value: int) -> int:
    """A positive instance count.

    Raises
    ------
    ConfigError
        For zero, negative numbers, booleans and non-integers.
    """
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"max_instances must be at least 1, got {value!r}")
    return value


class InstanceTable:
    """Loaded instances by id and by load key, in least-recently-used order (thread-safe).

    Parameters
    ----------
    max_instances : int
        Instances kept at most; loading more evicts idle ones, least recently used first.
    """

    def __init__(self, max_instances: int = MAX_INSTANCES) -> None:
        self.max_instances = parse_max_instances(max_instances)
        self._lock = threading.Lock()
        self._by_id: OrderedDict[str, Instance] = OrderedDict()  # least recently used first
        self._by_key: dict[str, Instance] = {}
        self._loading: dict[str, _LoadSlot] = {}
        self._reserved = 0
        self._counter = 0
        self._evicted = 0

    @contextlib.contextmanager
    def loading(self, key: str) -> Iterator[None]:
        """Hold the load lock of ``key``: one load per key at a time, the lock dropped once unused."""
        with self._lock:
            slot = self._loading.setdefault(key, _LoadSlot())
            slot.users += 1
        try:
            with slot.lock:
                yield
        finally:
            with self._lock:
                slot.users -= 1
                if not slot.users:
                    del self._loading[key]

    def find(self, key: str) -> Instance | None:
        """The instance loaded for ``key`` (now the most recently used), or None."""
        with self._lock:
            instance = self._by_key.get(key)
            if instance is not None:
                self._by_id.move_to_end(instance.id)
            return instance

    def reserve(self, model: str) -> list[Instance]:
        """Make room for one more instance; returns those evicted for it (the caller closes them).

        Raises
        ------
        InstanceError
            When the table is full and every instance is running a request.
        """
        with self._lock:
            evicted = []
            while len(self._by_id) + self._reserved >= self.max_instances:
                idle = next((i for i in self._by_id.values() if not i.users), None)
                if idle is None:
                    break
                evicted.append(self._pop(idle.id))
                self._evicted += 1
            if len(self._by_id) + self._reserved >= self.max_instances:
                raise InstanceError(
                    f"cannot load {model!r}: all {self.max_instances} instances (max_instances) are running "
                    "requests; retry when one is done, unload one, or start the server with a larger --max-instances"
                )
            self._reserved += 1
            return evicted

    def add(self, key: str, model: str, name: str, params: dict[str, Any], obj: Model) -> Instance:
        """Record a loaded model in the room :meth:`reserve` made; returns its instance."""
        with self._lock:
            self._reserved -= 1
            self._counter += 1
            instance = Instance(f"{name}-{self._counter}", model, params, obj, key)
            self._by_id[instance.id] = instance
            self._by_key[key] = instance
            return instance

    def unreserve(self) -> None:
        """Give back the room of a load that failed."""
        with self._lock:
            self._reserved -= 1

    @contextlib.contextmanager
    def use(self, instance_id: str) -> Iterator[Instance]:
        """The instance ``instance_id``, marked busy (not evictable) while the block runs.

        Raises
        ------
        InstanceError
            When no instance of that id is loaded.
        """
        with self._lock:
            instance = self._get(instance_id)
            instance.users += 1
            self._by_id.move_to_end(instance_id)
        try:
            yield instance
        finally:
            with self._lock:
                instance.users -= 1

    def remove(self, instance_id: str) -> Instance:
        """Take an instance out of the table (the caller closes it).

        Raises
        ------
        InstanceError
            When no instance of that id is loaded.
        """
        with self._lock:
            self._get(instance_id)
            return self._pop(instance_id)

    def clear(self) -> list[Instance]:
        """Take every instance out of the table (the caller closes them)."""
        with self._lock:
            return [self._pop(instance_id) for instance_id in list(self._by_id)]

    def describe(self) -> list[dict[str, Any]]:
        """``info``'s list of instances: id, model, params, requests held now (running or waiting), calls made."""
        with self._lock:
            return [
                {"id": i.id, "model": i.model, "params": i.params, "held": i.users, "calls": i.calls.made}
                | ({"about": i.obj.contract.about} if i.obj.contract.about else {})
                for i in self._by_id.values()
            ]

    def _get(self, instance_id: str) -> Instance:
        instance = self._by_id.get(instance_id)
        if instance is None:
            loaded = ", ".join(self._by_id) or "none"
            evicted = (
                f"; {self._evicted} were unloaded to stay within max_instances {self.max_instances}, "
                "least recently used first: load the model again"
                if self._evicted
                else ""
            )
            raise InstanceError(f"no instance {instance_id!r} is loaded (loaded: {loaded}{evicted})")
        return instance

    def _pop(self, instance_id: str) -> Instance:
        instance = self._by_id.pop(instance_id)
        instance.calls.stop()
        if self._by_key.get(instance.key) is instance:
            del self._by_key[instance.key]
        return instance
