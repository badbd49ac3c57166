"""``apply``: stream a Zarr input through one or more model handles; ``finish``: complete outputs.

Zarr streaming layer. Blocks are read ahead in two threads while up to
``inflight`` requests run on the workers (least busy first); results are
written behind in two other threads as they complete, each block recorded
when its output is whole, so that the model never waits for this process.
A resumed run checks each block it would skip against its recorded digests
and does the damaged ones again. A failing block stops the run after the
requests already in flight are written, unless the worker can reconnect and
``retries`` allows another try; the run then raises one
:class:`~nahual.errors.BlockError` naming the block and the worker, chained
to the original error.
"""

from __future__ import annotations

import builtins
import os
import queue
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
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
#: Threads that read and decode blocks ahead of the requests.
READERS = 2
#: Threads that encode and write results (each block recorded once its data is written).
WRITERS = 2


@dataclass
class Worker:
    """A model handle with a name for messages and, optionally, a way to reconnect.

    Parameters
    ----------
    handle : Handle
        Anything with ``.contract``, ``.model``, ``.params`` and ``.submit(payload) -> Future``.
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

    def submit(self, payload: dict[str, Any]) -> Future:
        """Send one payload; counts the request as in flight."""
        future = self.handle.submit(payload)
        self.busy += 1
        self.used += 1
        return future

    def reconnect(self, failed: Handle) -> None:
        """Replace the handle by a fresh one from ``reopen``, unless ``failed`` was replaced already."""
        if self.reopen is None:
            raise ConfigError(f"worker {self.name} cannot reconnect")
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


def _reason(exc: BaseException) -> str:
    """What went wrong, for a :class:`BlockError`: nahual's own message, or the foreign error's type and message."""
    return str(exc) if isinstance(exc, NahualError) else f"{type(exc).__name__}: {exc}"


@dataclass
class _Request:
    """A block in flight: what was sent, to which worker, on which of its handles, and how often."""

    block: Block
    payload: dict[str, Any]
    worker: Worker
    handle: Handle
    tries: int


class _Pipeline:
    """Reads ahead, keeps ``inflight`` requests busy, writes results behind, all at once.

    The window: at most ``inflight`` blocks read ahead (on :data:`READERS`
    threads), ``inflight`` requests in flight, and results being written (on
    :data:`WRITERS` threads) that bring requests and writes together to at most
    ``2 * inflight``. So a run holds at most ``3 * inflight`` blocks, whatever
    the size of the store, and a slow writer holds back new requests instead of
    piling up results. This thread only dispatches: every future it starts
    reports to one queue when done, and it takes whatever finishes first from
    there (``concurrent.futures.wait`` would put a waiter on each future in
    flight at every step: 0.3 ms a step, a fifth of a 256² block's dispatch).
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
        self.reads: deque[tuple[Block, Future]] = deque()
        self.pending: dict[Future, _Request] = {}
        self.writes: dict[Future, tuple[Block, str]] = {}
        self.done: queue.SimpleQueue[Future] = queue.SimpleQueue()
        self.error: BlockError | None = None
        self._cause: BaseException | None = None
        self._failed_at = -1

    def _fail(self, exc: BaseException, block: Block, worker: str) -> None:
        """Keep the failure of the earliest block (the order requests fail in is not deterministic)."""
        if self.error is None or block.index < self._failed_at:
            self.error = BlockError(self.job.plan.describe(block), worker, _reason(exc))
            self._cause, self._failed_at = exc, block.index

    def _pick(self) -> Worker:
        return min(self.workers, key=lambda w: (w.busy, w.used))

    def _room(self) -> bool:
        """Whether another request may start: the window is not full."""
        busy = len(self.pending)
        return self.error is None and busy < self.inflight and busy + len(self.writes) < 2 * self.inflight

    def _send(self, block: Block, payload: dict[str, Any], worker: Worker, tries: int) -> None:
        handle = worker.handle
        try:
            future = worker.submit(payload)
        except Exception as exc:
            self._fail(exc, block, worker.name)
            return
        self.pending[future] = _Request(block, payload, worker, handle, tries)
        future.add_done_callback(self.done.put)

    def _send_reads(self) -> None:
        """Send the blocks read so far, in order, while the window has room."""
        while self.reads and self.reads[0][1].done() and self._room():
            block, read = self.reads.popleft()
            try:
                payload = read.result()
            except Exception as exc:
                self._fail(exc, block, READER)
                return
            self._send(block, payload, self._pick(), 0)

    def _collect(self, future: Future, writers: ThreadPoolExecutor) -> None:
        """A request finished: hand its result to a writer, or retry, or record the failure."""
        request = self.pending.pop(future)
        block, worker = request.block, request.worker
        worker.busy -= 1
        exc = future.exception()
        if exc is None:
            write = writers.submit(self.job.sink.write, block, future.result())
            self.writes[write] = (block, worker.name)
            write.add_done_callback(self.done.put)
        elif self.error is None and request.handle is not worker.handle:
            self._send(block, request.payload, worker, request.tries)  # its handle was replaced meanwhile
        elif _retryable(exc) and request.tries < self.retries and worker.reopen is not None and self.error is None:
            try:
                worker.reconnect(request.handle)
            except Exception as again:
                self._fail(again, block, worker.name)
                return
            self._send(block, request.payload, worker, request.tries + 1)
        else:
            self._fail(exc, block, worker.name)

    def _written(self, future: Future) -> None:
        """A block's result is written and recorded (or failed to be)."""
        block, worker = self.writes.pop(future)
        exc = future.exception()
        if exc is None:
            self.progress.advance()
        else:
            self._fail(exc, block, worker)

    def _step(self, todo: Iterator[Block], readers: ThreadPoolExecutor, writers: ThreadPoolExecutor) -> bool:
        """Top up the reads, send what is read, then handle whatever finishes first; False once all is done."""
        while self.error is None and len(self.reads) < self.inflight and (b := next(todo, None)) is not None:
            read = readers.submit(self.reader, b)
            self.reads.append((b, read))
            read.add_done_callback(self.done.put)
        self._send_reads()
        if not self.pending and not self.writes and not (self.reads and self._room()):
            return False
        future = self.done.get()
        if future in self.pending:
            self._collect(future, writers)
        elif future in self.writes:
            self._written(future)
        return True  # a read, sent at the next step once it is the first

    def run(self, blocks: Iterable[Block]) -> None:
        """Process ``blocks``; raises the earliest block's failure after writing what finished."""
        todo = iter(blocks)
        with (
            ThreadPoolExecutor(READERS, thread_name_prefix="nahual-read") as readers,
            ThreadPoolExecutor(WRITERS, thread_name_prefix="nahual-write") as writers,
        ):
            try:
                while self._step(todo, readers, writers):
                    pass
            finally:
                for _, read in self.reads:
                    read.cancel()
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
    reader = BlockReader(job.contract, job.plan, todo, job.image, job.labels, ahead=options.inflight, scale=spatial)
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
