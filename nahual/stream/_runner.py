"""``apply``: stream a Zarr input through one or more model handles; ``finish``: complete outputs.

Zarr streaming layer. Each block is read, sent, answered and written on one
thread (a lane); ``inflight`` lanes have a request in flight on the workers
(least busy first) while two more read the next blocks and write finished
ones, each block recorded when its output is whole, so that the model never
waits for this process.
A resumed run checks each block it would skip against its recorded digests
and does the damaged ones again. A failing block stops the run after the
requests already in flight are written, unless the worker can reconnect and
``retries`` allows another try; the run then raises one
:class:`~nahual.errors.BlockError` naming the block and the worker, chained
to the original error.
"""

from __future__ import annotations

import builtins
import contextlib
import os
import signal
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..errors import BlockError, ConfigError, NahualError, TransportError
from ._jobs import Handle, Job, make_job, open_job
from ._ome import output_group
from ._options import StreamOptions
from ._payload import BlockReader
from ._plan import Block
from ._progress import Progress
from ._resume import RunState

__all__ = ["Worker", "apply", "finish"]

#: The worker named by a block that failed while its input was read, before any request.
READER = "this process (reading the input)"
#: Lanes beyond ``inflight``: they read the next blocks and write the finished ones while the requests run.
SPARE_LANES = 2
#: Seconds between the checks of the thread waiting for the lanes (for a Ctrl-C delivered to another thread).
WAKE_S = 0.25


def lane_count(inflight: int) -> int:
    """The lanes of a run with ``inflight`` requests; each holds one block, so also the most blocks it holds."""
    return inflight + SPARE_LANES


@dataclass
class Worker:
    """A model handle with a name for messages and, optionally, a way to reconnect.

    Parameters
    ----------
    handle : Handle
        Anything with ``.contract``, ``.model``, ``.params`` and called as ``handle(payload) -> result``.
    name : str
        The server address (or ``"local"``), used in error messages.
    reopen : callable, optional
        Returns a fresh handle after the old one failed (reconnects, relaunches).
    info : dict, optional
        The server's ``info``, recorded as provenance.
    """

    handle: Handle
    name: str = "local"
    reopen: Callable[[], Handle] | None = None
    info: dict[str, Any] | None = None
    busy: int = field(default=0, init=False)
    used: int = field(default=0, init=False)
    _reconnecting: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False)

    def reconnect(self, failed: Handle) -> None:
        """Replace the handle by a fresh one from ``reopen``, unless ``failed`` was replaced already
        (lanes whose requests failed together reconnect once)."""
        if self.reopen is None:
            raise ConfigError(f"worker {self.name} cannot reconnect")
        with self._reconnecting:
            if self.handle is failed:
                self.handle = self.reopen()


def _workers(model: Handle | Worker | Sequence[Handle | Worker]) -> list[Worker]:
    items = model if isinstance(model, (list, tuple)) else [model]
    workers = [m if isinstance(m, Worker) else Worker(m, _address(m)) for m in items]
    if not workers:
        raise ConfigError("apply needs at least one model handle")
    for worker in workers:
        client = getattr(worker.handle, "client", None)
        if worker.info is None and client is not None:
            try:
                worker.info = dict(client.info())
            except (NahualError, OSError):
                worker.info = {}
    names = {w.handle.model for w in workers}
    if len(names) > 1:
        raise ConfigError(f"all handles must serve one model, got {sorted(names)}")
    return workers


def _address(handle: Handle) -> str:
    """The server address of a client's model handle, ``"local"`` for in-process models."""
    return str(getattr(getattr(handle, "client", None), "address", None) or "local")


def _retryable(exc: BaseException) -> bool:
    return isinstance(exc, (TransportError, builtins.TimeoutError, ConnectionError))


def _connection_lost(exc: BaseException) -> bool:
    """Whether ``exc`` says the worker's connection is gone (not merely that a request took too long)."""
    return isinstance(exc, (TransportError, ConnectionError)) and not isinstance(exc, builtins.TimeoutError)


def _reason(exc: BaseException) -> str:
    """What went wrong, for a :class:`BlockError`: nahual's own message, or the foreign error's type and message."""
    return str(exc) if isinstance(exc, NahualError) else f"{type(exc).__name__}: {exc}"


@contextlib.contextmanager
def _sigint_deferred() -> Iterator[None]:
    """Hold back a Ctrl-C that comes inside the ``with`` block until the block ends (in the main thread).

    A KeyboardInterrupt raised inside ``Thread.start`` can leave a thread
    running that its starter never learns of, and a run that waits for its
    lanes must know every one it started.
    """
    if threading.current_thread() is not threading.main_thread() or signal.getsignal(signal.SIGINT) is None:
        yield  # no KeyboardInterrupt here (Python handles signals in the main thread), or a handler not Python's
        return
    caught: list[int] = []
    previous = signal.signal(signal.SIGINT, lambda signum, _frame: caught.append(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
        if caught:
            signal.raise_signal(signal.SIGINT)  # to the handler it was meant for: KeyboardInterrupt, or the user's


class _Pipeline:
    """Runs each block on one lane, from its read to its write, with ``inflight`` requests at once.

    There are ``inflight + SPARE_LANES`` lanes (threads). Each takes the next
    block in plan order, reads it, waits for one of ``inflight`` request
    slots, asks the least busy worker and waits for the answer, then writes
    the result and records the block. So while ``inflight`` requests run,
    the spare lanes read the next blocks and write the finished ones: a run
    holds at most ``inflight + SPARE_LANES`` blocks, whatever the size of the
    store, and a slow writer holds back the reads instead of piling up
    results. A block stays on one thread: handing it between reader,
    dispatcher, client and writer threads cost about six thread wake-ups a
    block, and the lanes took a fifth off this process's CPU on 256² blocks.
    """

    def __init__(
        self,
        job: Job,
        reader: Callable[[Block], dict[str, Any]],
        workers: list[Worker],
        options: StreamOptions,
        progress: Progress,
    ) -> None:
        self.job, self.reader, self.workers, self.progress = job, reader, workers, progress
        self.inflight, self.retries = options.inflight, options.retries
        self.error: BlockError | None = None
        self._cause: BaseException | None = None
        self._failed_at = -1
        self._todo: Iterator[Block] = iter(())
        self._stopping = False
        self._lock = threading.Lock()
        self._slots = threading.BoundedSemaphore(self.inflight)
        self._ended = threading.Condition()  # notified as each lane ends
        self._live = 0  # lanes started and not ended
        #: The failure of each handle (by id) whose connection was lost for good in this run: a request sent
        #: on it would wait out its whole timeout for a reply that cannot come.
        self._lost: dict[int, BaseException] = {}

    def _fail(self, exc: BaseException, block: Block, worker: str) -> None:
        """Keep the failure of the earliest block (the order requests fail in is not deterministic)."""
        with self._lock:
            if self.error is None or block.index < self._failed_at:
                self.error = BlockError(self.job.plan.describe(block), worker, _reason(exc))
                self._cause, self._failed_at = exc, block.index

    def _abandoned(self, block: Block) -> bool:
        """Whether a block is not worth sending: the run is stopping (Ctrl-C), or a block before it failed
        (blocks are taken in plan order)."""
        with self._lock:  # the error and where it was are set together
            return self._stopping or (self.error is not None and self._failed_at < block.index)

    def _next(self) -> Block | None:
        """The next block to run, or None once all are taken or one failed."""
        with self._lock:
            return None if self.error is not None or self._stopping else next(self._todo, None)

    def _pick(self) -> Worker:
        """The least busy worker, counted busy until :meth:`_release`."""
        with self._lock:
            worker = min(self.workers, key=lambda w: (id(w.handle) in self._lost, w.busy, w.used))
            worker.busy += 1
            worker.used += 1
            return worker

    def _release(self, worker: Worker) -> None:
        with self._lock:
            worker.busy -= 1

    def _answer(self, block: Block, payload: dict[str, Any]) -> tuple[Any, Worker] | None:
        """One block's result and the worker that gave it, retrying on a fresh handle while ``retries`` allows;
        None when it failed (the failure recorded)."""
        worker, tries = self._pick(), 0
        try:
            while True:
                handle = worker.handle
                try:
                    if (lost := self._lost.get(id(handle))) is not None:
                        raise lost  # as if sent: fail, or reconnect while retries allow
                    return handle(payload), worker
                except Exception as exc:
                    if handle is not worker.handle:
                        continue  # another lane replaced the handle meanwhile: not a try of this block's
                    if not _retryable(exc) or tries >= self.retries or worker.reopen is None or self._abandoned(block):
                        if _connection_lost(exc):
                            self._lost[id(handle)] = exc
                        self._fail(exc, block, worker.name)
                        return None
                    tries += 1
                    try:
                        worker.reconnect(handle)
                    except Exception as again:
                        self._lost[id(handle)] = again  # the other lanes on it need not try as well
                        self._fail(again, block, worker.name)
                        return None
        finally:
            self._release(worker)

    def _run(self, block: Block) -> None:
        """Read, request and write one block (its failure recorded, never raised)."""
        try:
            payload = self.reader(block)
        except Exception as exc:
            self._fail(exc, block, READER)
            return
        with self._slots:
            answer = None if self._abandoned(block) else self._answer(block, payload)
        del payload  # freed before the write: the window holds one block's data per lane
        if answer is None:
            return
        result, worker = answer
        try:
            self.job.sink.write(block, result)
        except Exception as exc:
            self._fail(exc, block, worker.name)
            return
        with self._lock:
            self.progress.advance()

    def _lane(self) -> None:
        try:
            while (block := self._next()) is not None:
                self._run(block)
        finally:
            with self._ended:
                self._live -= 1
                self._ended.notify_all()

    def _wait_lanes(self) -> None:
        """Until every lane has ended.

        Not ``Thread.join``: a join that Ctrl-C interrupts marks its thread
        ended while it still runs (CPython before 3.13), so a run that joined
        its lanes raised with a block still being recorded. The timeout wakes
        this thread to see a Ctrl-C the kernel gave another thread.
        """
        with self._ended:
            while self._live:
                self._ended.wait(WAKE_S)

    def run(self, blocks: Iterable[Block]) -> None:
        """Process ``blocks``; raises the earliest block's failure after writing what finished."""
        self._todo = iter(blocks)
        try:
            with _sigint_deferred():
                for n in range(lane_count(self.inflight)):
                    threading.Thread(target=self._lane, name=f"nahual-lane_{n}", daemon=True).start()
                    with self._ended:
                        self._live += 1
            self._wait_lanes()
        except BaseException:  # Ctrl-C: no new block starts, those in flight are written (a second one leaves now)
            self._stopping = True
            self._wait_lanes()
            raise
        if self.error is not None:
            raise self.error from self._cause


def apply(
    model: Handle | Worker | Sequence[Handle | Worker],
    input: str | os.PathLike,
    output: str,
    options: StreamOptions | None = None,
    *,
    kind: str | None = None,
    axes: str | None = None,
    labels: str | None = None,
    finalize: bool | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Stream a Zarr image (or label image) through a model and write the output next to it.

    Parameters
    ----------
    model : handle, Worker or a sequence of them
        Model handles from ``Client.load`` or :class:`LocalModel`; several spread the blocks.
    input : str or path-like
        ``IMAGE``, ``IMAGE/labels/NAME`` or a plain array (with ``axes``).
    output : str
        Name of the output under ``labels/``, ``tracks/`` or ``tables/``.
    options : StreamOptions, optional
        Tile, halo, level, channel, inflight, shard and retries, whole; :class:`StreamOptions`
        defaults (one per field) when not given.
    kind : str, optional
        labels, tracks, features or embeddings; the model's declared output by default.
    axes : str, optional
        Axes of a plain array.
    labels : str, optional
        Label image of ``input`` to send when the model takes labels and ``input`` is an image.
    finalize : bool, optional
        Stitch/assemble at the end; by default when the run is not sharded.
    progress : bool
        Report progress on stderr.

    Returns
    -------
    dict
        ``blocks`` (in the plan), ``processed`` (this run), ``skipped`` (already done), ``redone``
        (finished blocks whose recorded data was damaged, processed again), ``final`` (the
        completion summary, or None while other blocks remain).

    Raises
    ------
    ContractError, ConfigError
        Before the first request, when the model cannot take this input or the options do not fit it.
    BlockError
        When a block fails, naming the block and the worker; raised ``from`` the original error
        (a ``RemoteError``, ``TransportError``, or the error reading the input or writing the output).
    """
    options = options or StreamOptions()
    workers = _workers(model)
    info = next((w.info for w in workers if w.info is not None), None)
    job = make_job(workers[0].handle, input, output, options, kind=kind, axes=axes, labels=labels, info=info)
    summary = {"blocks": len(job.blocks), "processed": 0, "skipped": len(job.mine), "redone": 0}
    if job.state.final() is not None:
        return {**summary, "final": job.state.final()}
    done = job.state.finished()
    damaged = [b.index for b in job.mine if b.index in done and job.sink.damage(b) is not None]
    for index in damaged:
        job.state.forget(index)
    todo = [b for b in job.mine if b.index not in done or b.index in damaged]
    bar = Progress(len(todo), f"{output}", enabled=progress)
    spatial = {a: float(s) for a, s in zip(job.plan.axes, job.sink.target.scale, strict=True) if a in "zyx"}
    ahead = lane_count(options.inflight)  # a lane reads its next block while the others' are in flight
    reader = BlockReader(job.contract, job.plan, todo, job.image, job.labels, ahead=ahead, scale=spatial)
    _Pipeline(job, reader, workers, options, bar).run(todo)
    final = None
    if finalize if finalize is not None else not options.sharded:
        final = finish(job.target.image_path, output)
    return {
        **summary,
        "processed": len(todo),
        "skipped": len(job.mine) - len(todo),
        "redone": len(damaged),
        "final": final,
    }


def finish(image: str | os.PathLike, name: str) -> dict[str, Any]:
    """Complete an output once all its blocks are done (``nahual stitch``): stitch labels, assemble tables.

    Idempotent: finishing a finished output returns its summary.

    Parameters
    ----------
    image : str or path-like
        The image group holding the output, or the input the run read (a plain array's outputs are in its group).
    name : str
        The output's name.

    Raises
    ------
    ConfigError
        When the output was never started or blocks are missing (names how many, e.g. of unfinished shards).
    BlockError
        When a finished block's recorded data is damaged (the same apply redoes it).
    """
    image_path = output_group(image)
    complete = RunState(image_path, name).final()
    if complete is not None:
        return complete
    job = open_job(image_path, name)
    missing = len(job.blocks) - len(job.state.finished() & {b.index for b in job.blocks})
    if missing:
        raise ConfigError(
            f"{missing} of {len(job.blocks)} blocks of {name!r} are not finished; run the missing shards first"
        )
    summary = job.sink.finalize(job.state.provenance())
    job.state.mark_final(summary)
    return summary
