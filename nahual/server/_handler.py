"""The request handler: one received message in, exactly one reply out, with no socket.

Layer: server, above the transport interface. :class:`RequestHandler` decodes
a request, checks its token, runs it once per connection and request id (a
resend waits for the first run), and dispatches it to the model instances it
holds. It never raises: every failure becomes an error reply naming the
exception, the operation and the request id, with the server's traceback only
for peers that passed the token check (``docs/security.md``). The serving loop (:mod:`._serving`) feeds it
from nng sockets; :class:`~nahual._inprocess.InProcessTransport` feeds it
directly, so a local run goes through the very same code as a served one.
Instances run one request at a time unless their contract says otherwise
(``concurrency``, ``max_batch``: :mod:`._calls`), and different instances run
concurrently; at most ``max_instances`` are kept (:mod:`._instances`: the
least recently used idle one is unloaded first).
"""

from __future__ import annotations

import hmac
import os
import threading
import time
import traceback
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any

from .._protocol import Kind, read_envelope
from .._transport import PLAIN
from ..errors import AuthError, ConfigError, NahualError, ProtocolError
from ..registry import is_module_reference, missing_packages, resolve_model
from ._calls import digest
from ._info import describe_server
from ._instances import MAX_INSTANCES, Instance, InstanceTable
from ._once import OncePerKey

if TYPE_CHECKING:
    from .._protocol import Frame, MessagePlan
    from .._transport import Codec
    from ..model import Model

__all__ = ["RequestHandler"]

#: How long an answered request id is remembered, to drop late resends.
ANSWERED_TTL_S = 5.0

_Reply = tuple[int, dict[str, Any], Any]
#: A request's identity: the connection it came on and the id its client chose.
_RequestKey = tuple[int, int]


class RequestHandler:
    """Answers protocol v1 requests for the models of this environment (thread-safe).

    Parameters
    ----------
    token : str, optional
        Shared secret every request must carry (None: no check).
    models : mapping of str to Model subclass, optional
        Classes loadable by these names besides the registry's (an in-process
        run of a class that is not registered).
    allow_module_models : bool
        Let ``load`` requests name any ``module:Class``: whoever can send a
        request can then make this process import a module of its choosing
        from its import path. Off by default: requests load only registered
        models, ``models`` and classes this process loaded itself
        (:meth:`load`, e.g. ``--preload``).
    on_shutdown : callable, optional
        Called by a ``shutdown`` request, after which the reply still goes out;
        without it ``shutdown`` answers ``{"stopping": false}``.
    max_instances : int
        Instances kept loaded at most: loading another unloads the idle one
        used least recently, and is refused while every one runs a request.

    Raises
    ------
    ConfigError
        When ``max_instances`` is not a positive integer.
    """

    def __init__(
        self,
        *,
        token: str | None = None,
        models: Mapping[str, type[Model]] | None = None,
        on_shutdown: Callable[[], None] | None = None,
        allow_module_models: bool = False,
        max_instances: int = MAX_INSTANCES,
    ) -> None:
        self._token = None if token is None else _token_bytes(token)
        self._models = dict(models or {})
        self._allow_module_models = allow_module_models
        self._on_shutdown = on_shutdown
        self._instances = InstanceTable(max_instances)
        self._models_lock = threading.Lock()
        #: Classes the registry resolved, by name: resolving reads every entry point (tens of ms).
        self._resolved: dict[str, type[Model]] = {}
        self._once: OncePerKey[_RequestKey, _Reply] = OncePerKey(ANSWERED_TTL_S, _remember_answered, _refuse_resend)

    # -- one message ---------------------------------------------------------------------
    def handle(self, buffer: Any, codec: Codec = PLAIN, peer: int = 0) -> MessagePlan:
        """Answer one received message with exactly one reply (never raises).

        Parameters
        ----------
        buffer : buffer
            The received message.
        codec : Codec
            How to decode it and plan the reply (a transport's out-of-band
            buffers live there; :data:`~nahual._transport.PLAIN` has none).
        peer : int
            The connection it came on (an nng pipe id): request ids are chosen
            by each client, so a request runs once per connection and id.
        """
        request_id, operation = 0, ""
        trusted = self._token is None  # only peers that passed the token check see server tracebacks
        try:
            _kind, request_id, _ = read_envelope(buffer)
            frame = codec.decode(buffer)
            if frame.kind != Kind.REQUEST:
                raise ProtocolError(f"expected a request (kind {Kind.REQUEST}), got kind {frame.kind}")
            operation = str(frame.meta.get("op", ""))
            self._authorize(frame.meta)
            trusted = True
            kind, meta, payload = self._run_once(frame, operation, peer)
        except Exception as exc:  # every failure becomes an error reply
            kind, meta, payload = Kind.ERROR, _error_meta(exc, operation, request_id, trusted), None
        try:
            return codec.plan(kind, request_id, meta, payload)
        except (TypeError, ValueError) as exc:  # a result the protocol cannot carry
            return PLAIN.plan(Kind.ERROR, request_id, _error_meta(exc, operation, request_id), None)

    def refuse(self, buffer: Any, codec: Codec, error: Exception) -> MessagePlan:
        """Answer a received message with ``error`` without running it (never raises).

        For a serving loop that holds as many requests as it may: the client
        gets the error at once instead of waiting for a slot.
        """
        request_id, operation = 0, ""
        try:
            _kind, request_id, _ = read_envelope(buffer)
            operation = str(codec.decode(buffer).meta.get("op", ""))
        except Exception:  # a message that cannot be read is refused all the same
            pass
        return PLAIN.plan(Kind.ERROR, request_id, _error_meta(error, operation, request_id, trusted=False), None)

    def _authorize(self, meta: dict[str, Any]) -> None:
        if self._token is None:
            return
        given = meta.get("token")
        if not isinstance(given, str) or not hmac.compare_digest(_token_bytes(given), self._token):
            raise AuthError("AuthError", "missing or wrong token")

    def _run_once(self, frame: Frame, operation: str, peer: int) -> _Reply:
        return self._once.run((peer, frame.request_id), lambda: self._reply(frame, operation))

    def _reply(self, frame: Frame, operation: str) -> _Reply:
        """The request's reply, or its error reply (never raises)."""
        try:
            return (Kind.REPLY, {"op": operation}, self._dispatch(operation, frame))
        except Exception as exc:
            return (Kind.ERROR, _error_meta(exc, operation, frame.request_id), None)

    def _dispatch(self, operation: str, frame: Frame) -> Any:
        handlers = {
            "ping": lambda: {"pong": True, "pid": os.getpid()},
            "info": self.info,
            "load": lambda: self._load_request(frame),
            "process": lambda: self._process(frame),
            "unload": lambda: self.unload(_instance_id(frame.meta)),
            "shutdown": self._shutdown,
        }
        if operation not in handlers:
            raise ProtocolError(f"unknown operation {operation!r}; expected one of {', '.join(handlers)}")
        return handlers[operation]()

    def _shutdown(self) -> dict[str, Any]:
        if self._on_shutdown is None:
            return {"stopping": False}
        self._on_shutdown()
        return {"stopping": True}

    # -- operations ----------------------------------------------------------------------
    def info(self) -> dict[str, Any]:
        """What this server is: versions, models (runnable here or not, and why) and instances loaded."""
        with self._models_lock:
            models = dict(self._models)
        return describe_server(models, self._instances.describe())

    def _load_request(self, frame: Frame) -> dict[str, Any]:
        model = frame.meta.get("model")
        params = frame.payload if frame.payload is not None else {}
        if not isinstance(model, str) or not isinstance(params, dict):
            raise ProtocolError("load needs meta 'model' (str) and a dict payload of params")
        if model not in self._models and is_module_reference(model) and not self._allow_module_models:
            raise ConfigError(
                f"model {model!r} is a module:Class reference, which this server does not load for requests; "
                "load a registered model, or start the server with --allow-module-models"
            )
        return self.load(model, params, int(frame.meta.get("replica", 0)))

    def load(self, model: str, params: dict[str, Any] | None = None, replica: int = 0) -> dict[str, Any]:
        """Load a model (once per distinct model, params and replica) and describe the instance.

        This process's own call: a ``module:Class`` always loads here, and
        ``load`` requests may name that class from then on.

        Raises
        ------
        ConfigError
            When the model is unknown, or its packages are missing in this environment.
        InstanceError
            When ``max_instances`` are loaded and every one is running a request.
        """
        params = dict(params or {})
        key = digest([model, params, replica])
        with self._instances.loading(key):
            instance = self._instances.find(key)
            if instance is None:
                cls = self._model_class(model)
                missing = missing_packages(cls)
                if missing:
                    raise ConfigError(f"model {model!r} cannot run here: missing packages {', '.join(missing)}")
                for evicted in self._instances.reserve(model):
                    _close(evicted)
                try:
                    obj = cls()
                    obj.load(**params)
                    cls.check_contract(obj.contract)  # load may set the instance's own contract
                except BaseException:
                    self._instances.unreserve()
                    raise
                instance = self._instances.add(key, model, cls.name or model, params, obj)
                if is_module_reference(model):  # loaded by this process or as allowed: requests may name it now
                    with self._models_lock:
                        self._models.setdefault(model, cls)
        return {
            "instance": instance.id,
            "model": model,
            "params": instance.params,
            "contract": instance.obj.contract.to_dict(),  # a model's load may set its own (a halo from its params)
        }

    def _model_class(self, model: str) -> type[Model]:
        """The class ``model`` names (resolved once; raises :class:`ConfigError` when unknown)."""
        with self._models_lock:
            cls = self._models.get(model) or self._resolved.get(model)
        if cls is None:
            cls = resolve_model(model)
            with self._models_lock:
                self._resolved[model] = cls
        return cls

    def _process(self, frame: Frame) -> Any:
        payload = frame.payload if isinstance(frame.payload, dict) else {}
        params = payload.get("params") or {}
        deadline = _deadline(frame.meta)
        with self._instances.use(_instance_id(frame.meta)) as instance:
            return instance.calls.run(payload.get("data"), params, deadline)

    def unload(self, instance_id: str) -> dict[str, Any]:
        """Remove an instance, once its running request (if any) is done, and close its model.

        Raises
        ------
        InstanceError
            When no instance of that id is loaded.
        """
        _close(self._instances.remove(instance_id))
        return {"unloaded": instance_id}

    def close(self) -> None:
        """Unload every instance (idempotent); requests waiting for one are answered with an error, not run."""
        for instance in self._instances.clear():
            _close(instance)


def _close(instance: Instance) -> None:
    """Close an instance's model once its running calls (if any) are done; its waiting requests fail."""
    instance.calls.close()
    instance.obj.close()


def _remember_answered(_reply: _Reply | None, _remembered: Iterable[Any]) -> bool:
    """An answered request id is remembered, not its reply: a resend is refused, not answered again."""
    return True


def _refuse_resend(key: _RequestKey, _answered: bool) -> _Reply:
    raise ProtocolError(f"request {key[1]} was already answered (a resend)")


def _deadline(meta: dict[str, Any]) -> float | None:
    """When a request's ``deadline_s`` (seconds its client waits, from now) runs out; None without one."""
    seconds = meta.get("deadline_s")
    if seconds is None:
        return None
    if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or not seconds >= 0:
        raise ProtocolError(f"meta 'deadline_s' must be a number of seconds >= 0, got {seconds!r}")
    return time.monotonic() + seconds


def _instance_id(meta: dict[str, Any]) -> str:
    instance = meta.get("instance")
    if not isinstance(instance, str):
        raise ProtocolError("this operation needs meta 'instance' (str)")
    return instance


def _token_bytes(token: str) -> bytes:
    """A token's bytes for comparison; lone surrogates (``os.environ``'s undecodable bytes) are kept, not refused."""
    return token.encode("utf-8", "surrogatepass")


def _error_meta(exc: BaseException, operation: str, request_id: int, trusted: bool = True) -> dict[str, Any]:
    """The meta of an error reply; only a ``trusted`` peer (token checked) gets the server's traceback."""
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
        "traceback": "".join(traceback.format_exception(exc)) if trusted else "",
        "op": operation,
        "request_id": request_id,
    }
