"""``apply``: stream a Zarr input through one or more model handles; ``finish``: complete outputs.

Zarr streaming layer. Blocks are read ahead in two threads while up to
``inflight`` requests run on the workers (least busy first); results are
written in this thread as they complete, each block recorded when its output
is whole. A failing request stops the run after the requests already in
flight are written, with an error naming the block and the worker, unless the
worker can reconnect and ``retries`` allows another try.
"""

from __future__ import annotations

import builtins
import os
import traceback
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import Any

from ..errors import ConfigError, NahualError, RemoteError, TransportError
from ._jobs import Job, make_job, open_job
from ._plan import Block
from ._progress import Progress

__all__ = ["Worker", "apply", "finish"]


@dataclass
class Worker:
    """A model handle with a name for messages and, optionally, a way to reconnect.

    Parameters
    ----------
    handle : object
        Anything with ``.contract``, ``.model``, ``.params`` and ``.submit(payload) -> Future``.
    name : str
        The server address (or ``"local"``), used in error messages.
    reopen : callable, optional
        Returns a fresh handle after the old one failed (reconnects, relaunches).
    info : dict, optional
        The server's ``info``, recorded as provenance.
    """

    handle: Any
    name: str = "local"
    reopen: Callable[[], Any] | None = None
    info: dict[str, Any] | None = None
    busy: int = field(default=0, init=False)
    used: int = field(default=0, init=False)

    def submit(self, payload: dict[str, Any]) -> Future:
        """Send one payload; counts the request as in flight."""
        future = self.handle.submit(payload)
        self.busy += 1
        self.used += 1
        future.nahual_handle = self.handle  # type: ignore[attr-defined] - which handle it ran on
        return future

    def reconnect(self, failed: Any) -> None:
        """Replace the handle by a fresh one from ``reopen``, unless ``failed`` was replaced already."""
        if self.reopen is None:
            raise ConfigError(f"worker {self.name} cannot reconnect")
        if self.handle is failed:
            self.handle = self.reopen()


def _workers(model: Any) -> list[Worker]:
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


def _address(handle: Any) -> str:
    """The server address of a client's model handle, ``"local"`` for in-process models."""
    return str(getattr(getattr(handle, "client", None), "address", None) or "local")


def _retryable(exc: BaseException) -> bool:
    return isinstance(exc, (TransportError, builtins.TimeoutError, ConnectionError))


def _located(exc: BaseException, where: str, worker: Worker) -> NahualError:
    """The error of a failed block, naming the block and the worker."""
    prefix = f"{where} failed on {worker.name}"
    if isinstance(exc, RemoteError):
        return RemoteError(exc.remote_type, f"{prefix}: {exc.remote_message}", exc.remote_traceback, exc.operation)
    if isinstance(exc, NahualError):
        try:
            return type(exc)(f"{prefix}: {exc}")
        except TypeError:
            return NahualError(f"{prefix}: {exc}")
    if worker.handle is None:
        return NahualError(f"{prefix}: {type(exc).__name__}: {exc}")
    text = "".join(traceback.format_exception(exc))
    return RemoteError(type(exc).__name__, f"{prefix}: {exc}", text, "process")


class _Pipeline:
    """Reads ahead, keeps ``inflight`` requests busy, writes results as they come."""

    def __init__(self, job: Job, workers: list[Worker], inflight: int, retries: int, progress: Progress) -> None:
        self.job, self.workers, self.inflight, self.retries, self.progress = job, workers, inflight, retries, progress
        self.pending: dict[Future, tuple[Block, dict, Worker, int]] = {}
        self.error: NahualError | None = None
        self._failed_at = -1

    def _fail(self, exc: BaseException, block: Block, worker: Worker) -> None:
        """Keep the failure of the earliest block (the order requests fail in is not deterministic)."""
        if self.error is None or block.index < self._failed_at:
            self.error, self._failed_at = _located(exc, self.job.plan.describe(block), worker), block.index

    def _pick(self) -> Worker:
        return min(self.workers, key=lambda w: (w.busy, w.used))

    def _collect(self, future: Future) -> None:
        block, payload, worker, tries = self.pending.pop(future)
        worker.busy -= 1
        exc = future.exception()
        if exc is None:
            try:
                self.job.sink.write(block, future.result())
            except NahualError as err:
                self._fail(err, block, worker)
                return
            self.progress.advance()
        elif self.error is None and getattr(future, "nahual_handle", worker.handle) is not worker.handle:
            self._resend(block, payload, worker, tries, None)  # its handle was replaced meanwhile
        elif _retryable(exc) and tries < self.retries and worker.reopen is not None and self.error is None:
            self._resend(block, payload, worker, tries + 1, getattr(future, "nahual_handle", None))
        else:
            self._fail(exc, block, worker)

    def _resend(self, block: Block, payload: dict, worker: Worker, tries: int, failed: Any) -> None:
        """Send a block again, after reconnecting when its ``failed`` handle is still the worker's."""
        try:
            if failed is not None:
                worker.reconnect(failed)
            self.pending[worker.submit(payload)] = (block, payload, worker, tries)
        except Exception as again:
            self._fail(again, block, worker)

    def run(self, blocks: Iterable[Block]) -> None:
        """Process ``blocks``; raises the earliest block's failure after writing what finished."""
        todo = iter(blocks)
        reads: deque[tuple[Block, Future]] = deque()
        with ThreadPoolExecutor(max_workers=2, thread_name_prefix="nahual-read") as pool:
            try:
                while True:
                    while self.error is None and len(reads) < self.inflight and (b := next(todo, None)) is not None:
                        reads.append((b, pool.submit(self.job.payload, b)))
                    while self.error is None and reads and len(self.pending) < self.inflight:
                        block, read = reads.popleft()
                        try:
                            payload = read.result()
                        except (NahualError, OSError, ValueError) as exc:
                            self._fail(exc, block, Worker(None, "this process (reading the input)"))
                            break
                        worker = self._pick()
                        self.pending[worker.submit(payload)] = (block, payload, worker, 0)
                    if not self.pending:
                        break
                    done, _ = wait(list(self.pending), return_when=FIRST_COMPLETED)
                    for future in done:
                        self._collect(future)
            finally:
                for _, read in reads:
                    read.cancel()
        if self.error is not None:
            raise self.error


def apply(
    model: Any | Sequence[Any],
    input: str | os.PathLike,
    output: str,
    *,
    kind: str | None = None,
    axes: str | None = None,
    level: int = 0,
    labels: str | None = None,
    tile: str | dict[str, int] | None = "y=1024,x=1024",
    halo: int | None = None,
    channel: int | None = None,
    inflight: int = 4,
    shard: str | tuple[int, int] | None = None,
    retries: int = 0,
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
    kind : str, optional
        labels, tracks, features or embeddings; the model's declared output by default.
    axes : str, optional
        Axes of a plain array.
    level : int
        Resolution level.
    labels : str, optional
        Label image of ``input`` to send when the model takes labels and ``input`` is an image.
    tile : str or dict, optional
        ``"y=1024,x=1024"``; None or ``"none"`` for whole frames.
    halo : int, optional
        Context around tiles (the model's declared halo by default).
    channel : int, optional
        The channel to use when the model takes no channel axis.
    inflight : int
        Requests in flight at once, across all handles.
    shard : str or (int, int), optional
        ``"I/N"``: process only blocks whose index is I modulo N.
    retries : int
        Reconnects allowed per block after a transport failure (workers with ``reopen``).
    finalize : bool, optional
        Stitch/assemble at the end; by default when the run is not sharded.
    progress : bool
        Report progress on stderr.

    Returns
    -------
    dict
        ``blocks`` (in the plan), ``processed`` (this run), ``skipped`` (already done), ``final``
        (the completion summary, or None while other blocks remain).

    Raises
    ------
    ContractError, ConfigError
        Before the first request, when the model cannot take this input.
    RemoteError, TransportError
        When a block fails, naming the block and the server.
    """
    if inflight < 1:
        raise ConfigError(f"--inflight must be >= 1, got {inflight}")
    workers = _workers(model)
    info = next((w.info for w in workers if w.info is not None), None)
    job = make_job(
        workers[0].handle,
        input,
        output,
        kind=kind,
        axes=axes,
        level=level,
        labels=labels,
        tile=tile,
        halo=halo,
        channel=channel,
        shard=shard,
        info=info,
    )
    if job.state.final() is not None:
        return {"blocks": len(job.blocks), "processed": 0, "skipped": len(job.mine), "final": job.state.final()}
    done = job.state.finished()
    todo = [b for b in job.mine if b.index not in done]
    bar = Progress(len(todo), f"{output}", enabled=progress)
    _Pipeline(job, workers, inflight, retries, bar).run(todo)
    final = None
    if finalize if finalize is not None else job.shard[1] == 1:
        final = finish(job.target.image_path, output)
    return {"blocks": len(job.blocks), "processed": len(todo), "skipped": len(job.mine) - len(todo), "final": final}


def finish(image: str | os.PathLike, name: str) -> dict[str, Any]:
    """Complete an output once all its blocks are done (``nahual stitch``): stitch labels, assemble tables.

    Idempotent: finishing a finished output returns its summary.

    Raises
    ------
    ConfigError
        When the output was never started or blocks are missing (names how many, e.g. of unfinished shards).
    """
    job = open_job(os.fspath(image), name)
    if job.state.final() is not None:
        return job.state.final()
    missing = len(job.blocks) - len(job.state.finished() & {b.index for b in job.blocks})
    if missing:
        raise ConfigError(
            f"{missing} of {len(job.blocks)} blocks of {name!r} are not finished; run the missing shards first"
        )
    summary = job.sink.finalize(job.state.provenance())
    job.state.mark_final(summary)
    return summary
