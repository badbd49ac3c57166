"""How process requests reach one loaded model: one call at a time, several at once, or in batches.

Layer: server (no sockets, no protocol). Every instance gets one of these
from its contract (:func:`calls_for`):

- :class:`DirectCalls` runs each request as its own ``process`` call, at most
  ``concurrency`` at once (1 unless the model says it is thread-safe);
- :class:`BatchedCalls` (``max_batch`` above 1) queues the requests, and
  ``concurrency`` runner threads each take the oldest one with every queued
  request of equal call params, up to ``max_batch``, as soon as the batch is
  full or ``batch_wait_ms`` has passed since its first request arrived or the
  runner became free, whichever is later; they call ``process_batch`` once
  and hand each request its own result.

A request that waits past its deadline is dropped before it runs (a
:class:`~nahual.errors.TimeoutError`: its client no longer waits), and one
that waits while the instance is unloaded is answered with an
:class:`~nahual.errors.InstanceError` and not run. :meth:`close` lets the
running calls finish and turns the waiting requests away at once.
"""

from __future__ import annotations

import abc
import hashlib
import json
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import ContractError, InstanceError, TimeoutError

if TYPE_CHECKING:
    from ..model import Model

__all__ = ["BatchedCalls", "Calls", "DirectCalls", "calls_for", "digest"]


def digest(value: Any) -> str:
    """A digest of JSON values and numpy arrays: what tells instances, and batches, apart."""

    def default(item: Any) -> str:
        if isinstance(item, np.ndarray):
            return f"{item.dtype.str}{item.shape}:{hashlib.sha256(item.tobytes()).hexdigest()}"
        raise TypeError(type(item).__name__)

    text = json.dumps(value, sort_keys=True, default=default)
    return hashlib.sha256(text.encode()).hexdigest()  # json.dumps writes ASCII only


class Calls(abc.ABC):
    """The calls of one instance: :meth:`run` per request, :meth:`stop` and :meth:`close` once.

    Parameters
    ----------
    instance_id : str
        For messages.
    model : Model
        The loaded model.
    """

    def __init__(self, instance_id: str, model: Model) -> None:
        self.instance_id = instance_id
        self.model = model
        self._cond = threading.Condition()
        self._closing = False
        #: Model calls made so far (``info``): requests over calls is the mean batch size.
        self.made = 0

    @property
    def closing(self) -> bool:
        """True once :meth:`stop` ran: requests still waiting are turned away, new ones refused."""
        return self._closing

    @abc.abstractmethod
    def run(self, payload: Any, params: dict[str, Any], deadline: float | None = None) -> Any:
        """Answer one request: the model's result for ``payload``, or its exception raised.

        Parameters
        ----------
        payload : Any
            The request's ``data``.
        params : dict
            Its call params.
        deadline : float, optional
            ``time.monotonic()`` past which the request is dropped before it runs.

        Raises
        ------
        InstanceError
            When the instance was unloaded while the request waited.
        TimeoutError
            When the request waited past its deadline.
        """

    def stop(self) -> None:
        """Refuse new requests and wake the waiting ones, which fail (does not block)."""
        with self._cond:
            self._closing = True
            self._cond.notify_all()

    @abc.abstractmethod
    def close(self) -> None:
        """:meth:`stop`, then wait for the calls that run (idempotent)."""

    def _refusal(self) -> InstanceError:
        return InstanceError(f"instance {self.instance_id!r} was unloaded while this request waited for it")


def _expired(deadline: float | None, arrived: float) -> TimeoutError | None:
    now = time.monotonic()
    if deadline is None or now <= deadline:
        return None
    return TimeoutError(
        f"request dropped before it ran: it waited {now - arrived:.3f} s for the model, "
        f"past its deadline_s of {deadline - arrived:.3f} s"
    )


class DirectCalls(Calls):
    """One ``process`` call per request, ``concurrency`` at once at most."""

    def __init__(self, instance_id: str, model: Model, concurrency: int = 1) -> None:
        super().__init__(instance_id, model)
        self.concurrency = concurrency
        self._running = 0

    def run(self, payload: Any, params: dict[str, Any], deadline: float | None = None) -> Any:
        """One ``process`` call, once fewer than ``concurrency`` run (see :meth:`Calls.run`)."""
        arrived = time.monotonic()
        with self._cond:
            while self._running >= self.concurrency and not self._closing:
                self._cond.wait()
            if self._closing:
                raise self._refusal()
            if (late := _expired(deadline, arrived)) is not None:
                raise late
            self._running += 1
            self.made += 1
        try:
            return self.model.process(payload, **params)
        finally:
            with self._cond:
                self._running -= 1
                self._cond.notify_all()

    def close(self) -> None:
        """Turn the waiting requests away, then wait for the running calls."""
        self.stop()
        with self._cond:
            while self._running:
                self._cond.wait()


@dataclass(eq=False)  # members are told apart by identity: payloads hold arrays
class _Member:
    """One request inside a batched instance's queue; its worker thread waits on ``done``."""

    payload: Any
    params: dict[str, Any]
    group: str
    deadline: float | None
    arrived: float = field(default_factory=time.monotonic)
    done: threading.Event = field(default_factory=threading.Event)
    result: Any = None
    error: BaseException | None = None

    def settle(self, result: Any = None, error: BaseException | None = None) -> None:
        self.result, self.error = result, error
        self.done.set()


class BatchedCalls(Calls):
    """Concurrent requests gathered into ``process_batch`` calls, run by ``concurrency`` threads.

    Parameters
    ----------
    instance_id, model
        As :class:`Calls`.
    max_batch : int
        Requests per call at most.
    wait_s : float
        Seconds a batch that is not full waits for more requests.
    concurrency : int
        Batches run at once (one runner thread each).
    """

    def __init__(self, instance_id: str, model: Model, max_batch: int, wait_s: float, concurrency: int = 1) -> None:
        super().__init__(instance_id, model)
        self.max_batch = max_batch
        self.wait_s = wait_s
        self._queue: list[_Member] = []
        self._runners = [
            threading.Thread(target=self._serve, name=f"nahual-batch-{instance_id}-{index}", daemon=True)
            for index in range(concurrency)
        ]
        for runner in self._runners:
            runner.start()

    def run(self, payload: Any, params: dict[str, Any], deadline: float | None = None) -> Any:
        """Queue the request and wait for its share of a batch with equal call params (see :meth:`Calls.run`).

        Raises
        ------
        ParamError
            For call params the model does not take: checked here, so that
            they never join a batch.
        """
        self.model.check_params(params)
        member = _Member(payload, params, digest(params), deadline)
        with self._cond:
            if self._closing:
                raise self._refusal()
            self._queue.append(member)
            self._cond.notify_all()
        member.done.wait()
        if member.error is not None:
            raise member.error
        return member.result

    def close(self) -> None:
        """Turn the queued requests away, then wait for the running batches."""
        self.stop()
        for runner in self._runners:
            runner.join()

    # -- runner threads ------------------------------------------------------------------
    def _serve(self) -> None:
        while (batch := self._next_batch()) is not None:
            try:
                self._run(batch)
            except BaseException as exc:  # SystemExit and the like from the model: nobody is left waiting
                for member in batch:
                    if not member.done.is_set():
                        member.settle(error=exc)

    def _next_batch(self) -> list[_Member] | None:
        """The next batch to run, once it is due; None when closing (the queue is turned away)."""
        free_since = time.monotonic()
        with self._cond:
            while True:
                if self._closing:
                    for member in self._queue:
                        member.settle(error=self._refusal())
                    self._queue.clear()
                    return None
                self._drop_expired()
                if not self._queue:
                    self._cond.wait()
                    continue
                head = self._queue[0]
                mates = [m for m in self._queue if m.group == head.group][: self.max_batch]
                left = max(head.arrived, free_since) + self.wait_s - time.monotonic()
                if len(mates) >= self.max_batch or left <= 0:
                    self._queue = [m for m in self._queue if m not in mates]
                    return mates
                self._cond.wait(left)

    def _drop_expired(self) -> None:
        kept = []
        for member in self._queue:
            late = _expired(member.deadline, member.arrived)
            if late is None:
                kept.append(member)
            else:
                member.settle(error=late)
        self._queue = kept

    def _run(self, members: list[_Member]) -> None:
        """One ``process_batch`` call; when it raises, each member again on its own."""
        with self._cond:
            self.made += 1
        try:
            results = self.model.process_batch([m.payload for m in members], **members[0].params)
        except Exception as exc:
            if len(members) == 1:
                members[0].settle(error=exc)
            else:
                for member in members:
                    self._run([member])
            return
        if not isinstance(results, Sequence) or isinstance(results, (str, bytes)) or len(results) != len(members):
            found = f"{len(results)} results" if isinstance(results, Sequence) else type(results).__name__
            for member in members:  # an exception each: each is raised in its own worker thread
                member.settle(error=ContractError(f"process_batch must return a list of {len(members)}, got {found}"))
            return
        for member, result in zip(members, results, strict=True):
            if isinstance(result, Exception):
                member.settle(error=result)
            else:
                member.settle(result)


def calls_for(instance_id: str, model: Model) -> Calls:
    """The calls an instance's contract asks for: batched when ``max_batch`` is above 1."""
    contract = model.contract
    if contract.max_batch > 1:
        return BatchedCalls(instance_id, model, contract.max_batch, contract.batch_wait_ms / 1000, contract.concurrency)
    return DirectCalls(instance_id, model, contract.concurrency)
