"""The model server: hosts model instances and answers protocol v1 requests.

Layer: above the transport. ``nahual serve`` runs :meth:`Server.serve`.
Worker threads each own an nng context, so requests to different
instances run concurrently while each instance serves one request at a
time (models need not be thread-safe). Every request gets exactly one
reply: a result, or an error naming the exception, the operation and the
request id. A request id already running (an nng resend) is never run twice.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import os
import platform
import select
import signal
import sys
import threading
import time
import traceback
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from . import _protocol as protocol
from ._protocol import Kind
from ._shm import SegmentReader
from ._transport import Channel, ReplySocket, TransportError, ipc_path, is_loopback
from .errors import AuthError, ConfigError, NahualError, ProtocolError
from .model import Model
from .registry import available_models, resolve_model

__all__ = ["Server", "package_versions"]

#: How long an answered request id is remembered, to drop late resends.
ANSWERED_TTL_S = 5.0
CORE_PACKAGES = ("nahual", "numpy", "pynng")


def package_versions(names: tuple[str, ...]) -> dict[str, str | None]:
    """Installed versions of the given distributions (None where missing)."""
    from importlib.metadata import PackageNotFoundError, version  # slow import: only when asked

    versions: dict[str, str | None] = {}
    for name in names:
        try:
            versions[name] = version(name)
        except PackageNotFoundError:
            versions[name] = None
    return versions


def _params_key(model: str, params: dict[str, Any], replica: int) -> str:
    def default(value: Any) -> str:
        if isinstance(value, np.ndarray):
            return f"{value.dtype.str}{value.shape}:{hashlib.sha256(value.tobytes()).hexdigest()}"
        raise TypeError(type(value).__name__)

    return json.dumps([model, params, replica], sort_keys=True, default=default)


@dataclass
class _Instance:
    id: str
    model: str
    params: dict[str, Any]
    obj: Model
    lock: threading.Lock = field(default_factory=threading.Lock)


@dataclass
class _Pending:
    """A request in progress; duplicates wait for its reply instead of running again."""

    done: threading.Event = field(default_factory=threading.Event)
    reply: tuple[int, dict[str, Any], Any] = (Kind.REPLY, {}, None)


class Server:
    """A server for the models of this environment.

    Parameters
    ----------
    address : str
        ``ipc://PATH``, ``tcp://HOST:PORT`` or ``inproc://NAME``.
    token : str, optional
        Shared secret every request must carry; required to listen beyond loopback.
    workers : int
        Requests handled at once.
    """

    def __init__(self, address: str, *, token: str | None = None, workers: int = 8) -> None:
        if not is_loopback(address) and not token:
            raise ConfigError(f"listening on {address} (beyond this machine) requires --token or NAHUAL_TOKEN")
        if workers < 1:
            raise ConfigError(f"workers must be at least 1, got {workers}")
        self.address = address
        self._token = token
        self._workers_wanted = workers
        self._instances: dict[str, _Instance] = {}
        self._keys: dict[str, str] = {}
        self._instances_lock = threading.Lock()
        self._load_locks: dict[str, threading.Lock] = {}
        self._pending: dict[int, _Pending] = {}
        self._answered: dict[int, float] = {}
        self._pending_lock = threading.Lock()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._channels: list[Any] = []
        self._socket: ReplySocket | None = None
        self._counter = 0
        #: The channel of the worker thread running :meth:`handle` (its shared memory), if any.
        self._worker = threading.local()

    # -- lifecycle -------------------------------------------------------------------
    def start(self) -> Server:
        """Bind the socket and start the worker threads."""
        self._socket = ReplySocket(self.address)
        for index in range(self._workers_wanted):
            self._channels.append(self._socket.channel())
            thread = threading.Thread(target=self._work, args=(self._channels[-1],), name=f"nahual-worker-{index}")
            thread.daemon = True
            thread.start()
            self._threads.append(thread)
        return self

    def stop(self) -> None:
        """Ask the server to stop; :meth:`wait` then returns."""
        self._stop.set()

    def wait(self, timeout: float | None = None) -> bool:
        """Block until :meth:`stop` is called; True if it was."""
        return self._stop.wait(timeout)

    def close(self) -> None:
        """Stop listening, unload every instance and remove the ipc socket file (idempotent)."""
        self._stop_workers()
        if self._socket is not None:
            self._socket.close()
            self._socket = None
        self._unload_all()
        path = ipc_path(self.address)
        if path:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)

    def abandon(self) -> None:
        """Stop serving and unload every instance, but leave the socket (and its file) open.

        For a supervisor that removes the socket file itself and may look at it
        after stopping the server (Snakemake stats a service job's outputs). The
        process must then end with ``os._exit``: closing the socket, even by
        garbage collection at exit, removes its file.
        """
        self._stop_workers()
        if self._socket is not None:
            self._socket.close_shared_memory()
        self._unload_all()

    def _stop_workers(self) -> None:
        self._stop.set()
        # Close the workers' contexts and let the workers finish before closing the
        # socket: nng panics (use after free) when a context sends while its socket closes.
        for channel in self._channels:
            channel.close()
        for thread in self._threads:
            thread.join(timeout=5)

    def _unload_all(self) -> None:
        for instance in list(self._instances.values()):
            self._unload(instance.id)

    def __enter__(self) -> Server:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def serve(
        self, ready_file: str | None = None, parent_pid: int | None = None, leave_files_on_sigterm: bool = False
    ) -> bool:
        """Serve until SIGTERM, SIGINT, a ``shutdown`` request or the parent's death.

        The ready file is written only once the socket is bound and preloads are
        done, and removed with the socket file when serving ends; except after a
        SIGTERM with ``leave_files_on_sigterm``, where both stay for the supervisor
        that sent it (see :meth:`abandon`).

        Returns
        -------
        bool
            True when the files were left: the caller must then end the process with ``os._exit``.
        """
        terminated = threading.Event()

        def on_sigterm(*_: object) -> None:
            terminated.set()
            self.stop()

        signal.signal(signal.SIGTERM, on_sigterm)
        signal.signal(signal.SIGINT, lambda *_: self.stop())
        if parent_pid is not None:
            threading.Thread(target=self._watch_parent, args=(parent_pid,), daemon=True).start()
        try:
            if ready_file:
                _write_atomically(ready_file, json.dumps({"address": self.address, "pid": os.getpid()}))
            while not self.wait(0.5):
                pass
        finally:
            leave = leave_files_on_sigterm and terminated.is_set()
            if leave:
                self.abandon()
            else:
                if ready_file:
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(ready_file)
                self.close()
        return leave

    def _watch_parent(self, pid: int) -> None:
        try:
            fd = os.pidfd_open(pid)
        except (ProcessLookupError, OSError):
            self.stop()
            return
        with contextlib.closing(_FD(fd)):
            while not self._stop.is_set():
                if select.select([fd], [], [], 0.5)[0]:
                    self.stop()

    # -- request handling ------------------------------------------------------------
    def _work(self, channel: Any) -> None:
        try:
            while not self._stop.is_set():
                try:
                    buffer = channel.recv(timeout=None)
                except TransportError:
                    return  # socket closed: the server is stopping
                self._worker.channel = channel
                reply = self.handle(buffer)
                del buffer
                with contextlib.suppress(TransportError):
                    channel.send(reply, timeout=10.0)  # also releases the request's segments
        finally:
            channel.close()

    def handle(self, buffer: Any) -> protocol.MessagePlan:
        """Answer one received message with exactly one reply (never raises).

        In a worker thread on an ipc socket, request arrays may be views on the
        client's shared memory: valid until the reply is sent, so a model that
        keeps its inputs after ``process`` returns must copy them. Large reply
        arrays go into this server's own segments, never into the request's.
        """
        request_id, operation = 0, ""
        channel: Channel | None = getattr(self._worker, "channel", None)
        segments = channel.segments if channel is not None else None
        shares: bool | None = None
        try:
            _kind, request_id, _ = protocol.read_envelope(buffer)
            frame = protocol.decode(buffer, segments)
            shares = _shares_memory(frame.meta.get("shm"), segments)
            if frame.kind != Kind.REQUEST:
                raise ProtocolError(f"expected a request (kind {Kind.REQUEST}), got kind {frame.kind}")
            operation = str(frame.meta.get("op", ""))
            self._authorize(frame.meta)
            kind, meta, payload = self._run_once(frame, operation)
        except Exception as exc:  # every failure becomes an error reply
            kind, meta, payload = Kind.ERROR, _error_meta(exc, operation, request_id), None
        if shares is not None:
            meta = {**meta, "shm": shares}
        out_of_band = channel.writer if shares and channel is not None else None
        try:
            return protocol.plan(kind, request_id, meta, payload, out_of_band)
        except (TypeError, ValueError) as exc:
            return protocol.plan(Kind.ERROR, request_id, _error_meta(exc, operation, request_id))

    def _authorize(self, meta: dict[str, Any]) -> None:
        if self._token is None:
            return
        given = meta.get("token")
        if not isinstance(given, str) or not hmac.compare_digest(given.encode(), self._token.encode()):
            raise AuthError("AuthError", "missing or wrong token: pass the server's token (NAHUAL_TOKEN)")

    def _run_once(self, frame: protocol.Frame, operation: str) -> tuple[int, dict[str, Any], Any]:
        with self._pending_lock:
            now = time.monotonic()
            self._answered = {rid: t for rid, t in self._answered.items() if now - t < ANSWERED_TTL_S}
            if frame.request_id in self._answered:
                raise ProtocolError(f"request {frame.request_id} was already answered (a resend)")
            pending = self._pending.get(frame.request_id)
            owner = pending is None
            if owner:
                pending = self._pending[frame.request_id] = _Pending()
        if not owner:
            pending.done.wait()
            return pending.reply
        try:
            pending.reply = (Kind.REPLY, {"op": operation}, self._dispatch(operation, frame))
        except Exception as exc:
            pending.reply = (Kind.ERROR, _error_meta(exc, operation, frame.request_id), None)
        finally:
            with self._pending_lock:
                del self._pending[frame.request_id]
                self._answered[frame.request_id] = time.monotonic()
            pending.done.set()
        return pending.reply

    def _dispatch(self, operation: str, frame: protocol.Frame) -> Any:
        handlers = {
            "ping": lambda: {"pong": True, "pid": os.getpid()},
            "info": self.info,
            "load": lambda: self._load_request(frame),
            "process": lambda: self._process(frame),
            "unload": lambda: self._unload(_instance_id(frame.meta)),
            "shutdown": self._shutdown,
        }
        if operation not in handlers:
            raise ProtocolError(f"unknown operation {operation!r}; expected one of {', '.join(handlers)}")
        return handlers[operation]()

    def _shutdown(self) -> dict[str, Any]:
        # Stop after this reply has had time to leave.
        threading.Timer(0.05, self.stop).start()
        return {"stopping": True}

    # -- operations ------------------------------------------------------------------
    def info(self) -> dict[str, Any]:
        """What this server is: versions, models available and instances loaded."""
        models: dict[str, Any] = {}
        packages = set(CORE_PACKAGES)
        for name in available_models():
            try:
                cls = resolve_model(name)
            except ConfigError as exc:
                models[name] = {"error": str(exc)}
                continue
            packages.update(cls.packages)
            models[name] = {"contract": cls.contract.to_dict(), "packages": package_versions(cls.packages)}
        with self._instances_lock:
            instances = [{"id": i.id, "model": i.model, "params": i.params} for i in self._instances.values()]
        return {
            "protocol": protocol.VERSION,
            "nahual": package_versions(("nahual",))["nahual"],
            "python": platform.python_version(),
            "executable": sys.executable,
            "pid": os.getpid(),
            "packages": package_versions(tuple(sorted(packages))),
            "models": models,
            "instances": instances,
        }

    def _load_request(self, frame: protocol.Frame) -> dict[str, Any]:
        model = frame.meta.get("model")
        params = frame.payload if frame.payload is not None else {}
        if not isinstance(model, str) or not isinstance(params, dict):
            raise ProtocolError("load needs meta 'model' (str) and a dict payload of params")
        return self.load(model, params, int(frame.meta.get("replica", 0)))

    def load(self, model: str, params: dict[str, Any] | None = None, replica: int = 0) -> dict[str, Any]:
        """Load a model (once per distinct model, params and replica) and describe the instance."""
        params = dict(params or {})
        key = _params_key(model, params, replica)
        with self._instances_lock:
            lock = self._load_locks.setdefault(key, threading.Lock())
        with lock:
            instance = self._instances.get(self._keys.get(key, ""))
            if instance is None:
                cls = resolve_model(model)
                obj = cls()
                obj.load(**params)
                with self._instances_lock:
                    self._counter += 1
                    instance = _Instance(f"{cls.name or model}-{self._counter}", model, params, obj)
                    self._instances[instance.id] = instance
                    self._keys[key] = instance.id
        return {
            "instance": instance.id,
            "model": model,
            "params": instance.params,
            "contract": type(instance.obj).contract.to_dict(),
        }

    def _instance(self, instance_id: str) -> _Instance:
        with self._instances_lock:
            instance = self._instances.get(instance_id)
        if instance is None:
            loaded = ", ".join(self._instances) or "none"
            raise KeyError(f"no instance {instance_id!r} is loaded (loaded: {loaded})")
        return instance

    def _process(self, frame: protocol.Frame) -> Any:
        instance = self._instance(_instance_id(frame.meta))
        payload = frame.payload if isinstance(frame.payload, dict) else {}
        params = payload.get("params") or {}
        with instance.lock:
            return instance.obj.process(payload.get("data"), **params)

    def _unload(self, instance_id: str) -> dict[str, Any]:
        instance = self._instance(instance_id)
        with self._instances_lock:
            self._instances.pop(instance_id, None)
            self._keys = {k: v for k, v in self._keys.items() if v != instance_id}
        with instance.lock:
            instance.obj.close()
        return {"unloaded": instance_id}


def _shares_memory(offer: Any, segments: SegmentReader | None) -> bool | None:
    """Whether to answer through shared memory; None when the client did not ask.

    A client offers ``meta.shm``: the name of one of its segments until the server
    has confirmed it can open it, then ``true``. Replies go through shared memory
    only to clients that map it (same host, same ``/dev/shm``).
    """
    if offer is None or offer is False:
        return None
    if segments is None:
        return False
    if offer is True:
        return True
    return segments.probe(offer)


def _instance_id(meta: dict[str, Any]) -> str:
    instance = meta.get("instance")
    if not isinstance(instance, str):
        raise ProtocolError("this operation needs meta 'instance' (str)")
    return instance


def _error_meta(exc: BaseException, operation: str, request_id: int) -> dict[str, Any]:
    if isinstance(exc, AuthError):
        remote_type = "AuthError"
    elif isinstance(exc, NahualError):
        remote_type = type(exc).__name__
    else:
        remote_type = f"{type(exc).__module__}.{type(exc).__qualname__}".removeprefix("builtins.")
    message = exc.remote_message if isinstance(exc, AuthError) else str(exc)
    return {
        "type": remote_type,
        "message": message,
        "traceback": "".join(traceback.format_exception(exc)),
        "op": operation,
        "request_id": request_id,
    }


def _write_atomically(path: str, text: str) -> None:
    partial = f"{path}.partial-{os.getpid()}"
    with open(partial, "w") as handle:
        handle.write(text)
    os.replace(partial, path)


class _FD:
    """Closes a raw file descriptor (for ``contextlib.closing``)."""

    def __init__(self, fd: int) -> None:
        self.fd = fd

    def close(self) -> None:
        os.close(self.fd)
