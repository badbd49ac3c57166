"""How process requests reach one loaded model: one call at a time, several at once, or in batches.

Layer: server (no sockets, no protocol). Every instance gets one of these
from its contract (:func:`calls_for`). Requests wait in the instance's queue
and the instance's own runner threads, ``concurrency`` of them (1 unless the
model says it is thread-safe), make the model calls:

- :class:`DirectCalls` runs each request as its own ``process`` call, oldest
  first;
- :class:`BatchedCalls` (``max_batch`` above 1) takes the oldest request with
  every queued request of equal call params, up to ``max_batch``, as soon as
  the batch is full or ``batch_wait_ms`` has passed since its first request
  arrived or the runner became free, whichever is later; it calls
  ``process_batch`` once and hands each request its own result.

A model is called from the same threads for its whole life, never from the
server's many request threads in turn: its temporaries come back from the same
allocator arena into a warm cache, and thread-bound state (an OpenMP team, a
framework's per-thread pools) is made once. Measured with the zoo's
``threshold`` on 256x256 tiles, 8 request threads taking turns made the model's
calls 9-23% slower than its own runner thread did (five interleaved rounds).
A request's context variables (where
:func:`nahual.reply_array` takes its arrays) go with it to the runner.

A request that waits past its deadline is dropped before it runs (a
:class:`~nahual.errors.TimeoutError`: its client no longer waits), and one
that waits while the instance is unloaded is answered with an
:class:`~nahual.errors.InstanceError` and not run. :meth:`Calls.close` lets
the running calls finish and turns the waiting requests away at once.
"""

from __future__ import annotations

import abc
import contextvars
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


@dataclass(eq=False)  # members are told apart by identity: payloads hold arrays
class _Member:
    """One request in an instance's queue; its request thread waits on ``done``."""

    payload: Any
    params: dict[str, Any]
    group: str
    deadline: float | None
    context: contextvars.Context = field(default_factory=contextvars.copy_context)
    arrived: float = field(default_factory=time.monotonic)
    done: threading.Event = field(default_factory=threading.Event)
    result: Any = None
    error: BaseException | None = None

    def settle(self, result: Any = None, error: BaseException | None = None) -> None:
        self.result, self.error = result, error
        self.done.set()


class Calls(abc.ABC):
    """The calls of one instance: :meth:`run` per request, :meth:`stop` and :meth:`close` once.

    Parameters
    ----------
    instance_id : str
        For messages and the runner threads' names.
    model : Model
        The loaded model.
    concurrency : int
        Model calls at once (one runner thread each).
    """

    def __init__(self, instance_id: str, model: Model, concurrency: int = 1) -> None:
        self.instance_id = instance_id
        self.model = model
        self._cond = threading.Condition()
        self._closing = False
        self._queue: list[_Member] = []
        #: Model calls made so far (``info``): requests over calls is the mean batch size.
        self.made = 0
        self._runners = [
            threading.Thread(target=self._serve, name=f"nahual-model-{instance_id}-{index}", daemon=True)
            for index in range(concurrency)
        ]
        for runner in self._runners:
            runner.start()

    @property
    def closing(self) -> bool:
        """True once :meth:`stop` ran: requests still waiting are turned away, new ones refused."""
        return self._closing

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
        member = _Member(payload, params, self._group(params), deadline)
        with self._cond:
            if self._closing:
                raise self._refusal()
            self._queue.append(member)
            self._cond.notify_all()
        member.done.wait()
        if member.error is not None:
            raise member.error
        return member.result

    def stop(self) -> None:
        """Refuse new requests and wake the waiting ones, which fail (does not block)."""
        with self._cond:
            self._closing = True
            self._cond.notify_all()

    def close(self) -> None:
        """:meth:`stop`, then wait for the calls that run (idempotent)."""
        self.stop()
        for runner in self._runners:
            runner.join()

    def _group(self, params: dict[str, Any]) -> str:
        """What a request shares with those it may be called with (nothing, unless batched)."""
        return ""

    @abc.abstractmethod
    def _take(self, free_since: float) -> tuple[list[_Member], float]:
        """The queued requests due for one call (under the lock), or none and the seconds until some are."""

    @abc.abstractmethod
    def _call(self, members: list[_Member]) -> None:
        """Make the model call for ``members`` and settle each of them."""

    def _counted(self) -> None:
        with self._cond:
            self.made += 1

    def _refusal(self) -> InstanceError:
        return InstanceError(f"instance {self.instance_id!r} was unloaded while this request waited for it")

    # -- runner threads ------------------------------------------------------------------
    def _serve(self) -> None:
        while (members := self._next()) is not None:
            self._call_settled(members)
            del members  # kept while the runner waits for the next call, they would pin their segments until then

    def _call_settled(self, members: list[_Member]) -> None:
        try:
            self._call(members)
        except BaseException as exc:  # SystemExit and the like from the model: nobody is left waiting
            for member in members:
                if not member.done.is_set():
                    member.settle(error=exc)

    def _next(self) -> list[_Member] | None:
        """The requests of the next call, once due; None when closing (the queue is turned away)."""
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
                members, left = self._take(free_since)
                if members:
                    self._queue = [m for m in self._queue if m not in members]
                    return members
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


def _expired(deadline: float | None, arrived: float) -> TimeoutError | None:
    now = time.monotonic()
    if deadline is None or now <= deadline:
        return None
    return TimeoutError(
        f"request dropped before it ran: it waited {now - arrived:.3f} s for the model, "
        f"past its deadline_s of {deadline - arrived:.3f} s"
    )


class DirectCalls(Calls):
    """One ``process`` call per request, oldest first, ``concurrency`` at once at most."""

    def _take(self, free_since: float) -> tuple[list[_Member], float]:
        return self._queue[:1], 0.0

    def _call(self, members: list[_Member]) -> None:
        (member,) = members
        self._counted()
        try:
            # in the request's context: reply_array takes its arrays from that request's reply
            result = member.context.run(self.model.process, member.payload, **member.params)
        except Exception as exc:
            member.settle(error=exc)
        else:
            member.settle(result)


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
        self.max_batch = max_batch
        self.wait_s = wait_s
        super().__init__(instance_id, model, concurrency)

    def _group(self, params: dict[str, Any]) -> str:
        """Equal call params; checked first, so that params the model does not take never join a batch.

        Raises
        ------
        ParamError
            For call params the model does not take.
        """
        self.model.check_params(params)
        return digest(params)

    def _take(self, free_since: float) -> tuple[list[_Member], float]:
        head = self._queue[0]
        mates = [m for m in self._queue if m.group == head.group][: self.max_batch]
        left = max(head.arrived, free_since) + self.wait_s - time.monotonic()
        return (mates, 0.0) if len(mates) >= self.max_batch or left <= 0 else ([], left)

    def _call(self, members: list[_Member]) -> None:
        """One ``process_batch`` call; when it raises, each member again on its own."""
        self._counted()
        try:
            results = self.model.process_batch([m.payload for m in members], **members[0].params)
        except Exception as exc:
            if len(members) == 1:
                members[0].settle(error=exc)
            else:
                for member in members:
                    self._call([member])
            return
        if not isinstance(results, Sequence) or isinstance(results, (str, bytes)) or len(results) != len(members):
            found = f"{len(results)} results" if isinstance(results, Sequence) else type(results).__name__
            for member in members:  # an exception each: each is raised in its own request thread
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
