"""The earlier nahual wire on our server: old clients (``nahual.process.dispatch_setup_process``) served unchanged.

Layer: server, beside :mod:`._handler`. ``nahual serve --legacy-wire`` answers
both wires on one address: :class:`WireSwitch` looks at a message's first
bytes (protocol v1 starts with its magic, ``b"NHWL"``, which no earlier-wire
message can) and hands v1 to the :class:`~nahual.server.RequestHandler`, the
rest to a :class:`LegacyResponder` (``docs/protocol.md``, *The earlier wire*):

- a setup dict loads an instance (of ``--preload``'s model, or the one its
  ``nahual_model`` key names) with the preload's params updated by the dict;
  the same params give the same instance, so aliby's setup for every position
  loads nothing; the server's array messages then go to the last one set up;
- an array is laid out for the model as the upstream servers take it
  (:mod:`nahual._legacy_layouts`) and answered in the upstream reply layout;
- a shared-memory request reads its array from the client's segment
  (:mod:`._legacy_shm`), on ipc only;
- a message the same connection sends again while the first is still
  running (nng's resend, after 60 s), or within :data:`ANSWERED_TTL_S` after
  it was answered (a resend already on its way), gets the first one's reply
  instead of running the model again;
- every failure is answered ``!`` + JSON ``{"error": ..., "stage": ...}``,
  never ``{}``.

Both kinds of request run through the request handler itself (a
:class:`_FrameCodec` hands it a request already decoded and keeps its reply
unencoded), so tokens, instances, batching and errors are those of protocol v1.
"""

from __future__ import annotations

import hashlib
import ipaddress
import itertools
import secrets
import threading
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import numpy as np

from .. import _legacy_wire as wire
from .._legacy_layouts import layout_of
from .._protocol import ENVELOPE, MAGIC, VERSION, Frame, Kind
from ..errors import ConfigError, NahualError, ProtocolError, RemoteError
from ..model import Contract
from ..registry import is_module_reference, resolve_model
from ._legacy_shm import serve_shm
from ._once import OncePerKey

if TYPE_CHECKING:
    from .._legacy_wire import LegacyMessage
    from .._transport import Codec
    from ._handler import RequestHandler

__all__ = ["SETUP_MODEL_KEY", "LegacyResponder", "WireSwitch", "check_legacy_address"]

#: The key of a setup dict that names which of our models to set up (any other key is a load param).
SETUP_MODEL_KEY = "nahual_model"
#: Setup keys of the upstream servers, renamed to our params (DINOv2's torch.hub names).
RENAMED = {"model_name": "model", "repo_or_dir": "repo"}
#: Setup keys of the upstream servers that mean nothing here: our models always load their
#: pretrained weights and choose their device themselves. Dropped, and listed in the reply.
IGNORED = ("gpu", "pretrained")
#: Seconds a reply is kept for a copy of its request that arrives late (a resend sent as the reply left).
ANSWERED_TTL_S = 2.0
#: Bytes of replies kept so at most; a larger reply is not kept.
ANSWERED_BYTES = 64 << 20
#: A message's identity: the connection it came on and a digest of its bytes (the earlier wire has no ids).
_MessageKey = tuple[int, bytes]
#: Stages named in error replies, as the upstream servers name them.
LOADING, PROCESSING, SHARED = "Model loading", "Data processing", "Shared-memory data processing"


class LegacyResponder:
    """Answers earlier-wire messages with the models of a request handler (thread-safe).

    Parameters
    ----------
    handler : RequestHandler
        What runs the requests.
    address : str
        The server's address: shared-memory requests are served on ``ipc://`` only.
    token : str, optional
        The server's token: the earlier wire carries none, so its requests are
        given it (``docs/security.md``: the earlier wire is served on ipc and
        loopback only).
    """

    def __init__(self, handler: RequestHandler, address: str, token: str | None = None) -> None:
        self._handler = handler
        self._ipc = address.startswith("ipc://")
        self._token = token
        # Ids of a random prefix, as a client's: the handler tells requests apart by connection and id.
        self._ids = itertools.count(secrets.randbits(40) << 20)
        self._lock = threading.Lock()
        #: The model and params of ``--preload``, and of the last setup (what array messages run on).
        self._preloaded: tuple[str, dict[str, Any]] | None = None
        self._current: tuple[str, dict[str, Any]] | None = None
        self._once: OncePerKey[_MessageKey, LegacyMessage] = OncePerKey(ANSWERED_TTL_S, _reply_to_keep, _kept_reply)
        self._defaults: dict[str, dict[str, Any]] = {}

    def preloaded(self, model: str, params: dict[str, Any]) -> None:
        """Note a model loaded before serving: setups and array messages use the first one by default."""
        with self._lock:
            if self._preloaded is None:
                self._preloaded = (model, dict(params))

    # -- one message ---------------------------------------------------------------------
    def handle(self, buffer: Any, peer: int = 0) -> LegacyMessage:
        """Answer one earlier-wire message with exactly one reply (never raises).

        A message the same connection sends again while its first copy runs,
        or just after (a resend), gets the first copy's reply: the model runs once.
        """
        key = (peer, hashlib.blake2b(buffer, digest_size=16).digest())
        return self._once.run(key, lambda: self._answer(buffer, peer))

    def _answer(self, buffer: Any, peer: int) -> LegacyMessage:
        kind = wire.message_kind(buffer)
        stage = {"setup": LOADING, "shm": SHARED}.get(kind, PROCESSING)
        try:
            if kind == "setup":
                return wire.encode_dict(self._setup(wire.decode_dict(buffer), peer))
            if kind == "shm":
                return serve_shm(buffer, self._ipc, lambda array: self._process(array, peer))
            if kind != "array":
                raise ProtocolError(f"a {kind} message is no request of the earlier nahual wire")
            reply = self._process(wire.decode_array(buffer), peer)
            return wire.encode_dict(reply) if isinstance(reply, dict) else wire.encode_array(reply, "the reply")
        except Exception as exc:  # every failure becomes an error reply
            return wire.encode_error(_describe(exc), stage)

    def refuse(self, buffer: Any, error: Exception) -> LegacyMessage:
        """Answer a message with ``error`` without running it (a server that holds all the requests it may)."""
        return wire.encode_error(_describe(error), PROCESSING)

    # -- setup and process ---------------------------------------------------------------
    def _setup(self, setup: dict[str, Any], peer: int) -> dict[str, Any]:
        """Load (or find) the instance a setup dict names; array messages go to it from now on."""
        params = dict(setup)
        named = params.pop(SETUP_MODEL_KEY, None)
        if named is not None and not isinstance(named, str):
            raise ProtocolError(f"setup key {SETUP_MODEL_KEY!r} names a model (str), got {named!r}")
        with self._lock:
            preloaded = self._preloaded
        if named is None and preloaded is None:
            raise ProtocolError(
                f"this server has no default model: start it with --preload MODEL, or name one in the setup "
                f"dict's {SETUP_MODEL_KEY!r} key"
            )
        model = named or preloaded[0]
        ignored = [key for key in IGNORED if params.pop(key, None) is not None]
        own = {RENAMED.get(key, key): _device(key, value) for key, value in params.items()}
        base = preloaded[1] if preloaded is not None and preloaded[0] == model else {}
        merged = {**self._layout_defaults(model), **base, **own}
        loaded = self._load(model, merged, peer)
        with self._lock:
            self._current = (model, merged)
        reply = {"model": model, "instance": loaded["instance"], "params": loaded["params"], "wire": "nahual 0.0.x"}
        return {**reply, "ignored": ignored} if ignored else reply

    def _process(self, array: np.ndarray, peer: int) -> Any:
        """Run an old client's array on the instance set up last, in the upstream layout of its model."""
        with self._lock:
            current = self._current or self._preloaded
        if current is None:
            raise ProtocolError("no model is set up: send a setup dict first (or start the server with --preload)")
        loaded = self._load(*current, peer)  # the same instance (or a reload after it was evicted)
        contract = Contract.from_dict(loaded["contract"])

        def run(payload: Any) -> Any:
            meta = {"op": "process", "instance": loaded["instance"]}
            return self._request(meta, {"data": payload, "params": {}}, peer)

        return layout_of(contract).serve(array, contract, run)

    def _load(self, model: str, params: dict[str, Any], peer: int) -> dict[str, Any]:
        return self._request({"op": "load", "model": model, "replica": 0}, params, peer)

    def _request(self, meta: dict[str, Any], payload: Any, peer: int) -> Any:
        """Run one request through the handler, as if it came on protocol v1; its error raises RemoteError."""
        request_id = next(self._ids)
        if self._token is not None:
            meta = {**meta, "token": self._token}
        codec = _FrameCodec(Frame(Kind.REQUEST, request_id, meta, payload))
        envelope = ENVELOPE.pack(MAGIC, VERSION, Kind.REQUEST, 0, request_id, 0, 0)
        reply: Frame = self._handler.handle(envelope, codec, peer)  # type: ignore[assignment]
        if reply.kind == Kind.ERROR:
            raise RemoteError(str(reply.meta.get("type", "Error")), str(reply.meta.get("message", "")))
        return reply.payload

    def _layout_defaults(self, model: str) -> dict[str, Any]:
        """The load params a registered model gets for its layout (DINO: one embedding per frame, triplets).

        Only registered models are looked up: resolving a ``module:Class`` imports its module.
        """
        if model not in self._defaults:
            defaults: dict[str, Any] = {}
            if not is_module_reference(model):
                try:
                    cls = resolve_model(model)
                except NahualError:
                    cls = None  # the load says why
                if cls is not None:
                    names = {param.name for param in cls.param_spec}
                    defaults = {k: v for k, v in layout_of(cls.contract).load_defaults.items() if k in names}
            self._defaults[model] = defaults
        return dict(self._defaults[model])


class _FrameCodec:
    """Gives :meth:`RequestHandler.handle` a request already decoded, and keeps its reply as a :class:`Frame`."""

    def __init__(self, frame: Frame) -> None:
        self._frame = frame

    def decode(self, buffer: Any) -> Frame:
        """The request frame (the buffer is only its envelope)."""
        return self._frame

    def plan(self, kind: int, request_id: int, meta: dict[str, Any], payload: Any) -> Frame:
        """The reply, unencoded: arrays stay what the model returned."""
        return Frame(kind, request_id, meta, payload)


def check_legacy_address(address: str) -> None:
    """Raise :class:`ConfigError` unless the earlier wire may be served at ``address``: ipc, or tcp on loopback.

    The earlier wire has no token: anyone who reaches the address can use the
    models, so it is served only where the machine's own users alone can.
    """
    if address.startswith(("ipc://", "inproc://")):
        return
    scheme, _, rest = address.partition("://")
    host = rest.rpartition(":")[0].strip("[]")
    try:
        loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    if scheme not in ("tcp", "tcp4", "tcp6") or not loopback:
        raise ConfigError(
            f"the earlier nahual wire has no authentication: serve it on ipc:// or tcp on loopback "
            f"(tcp://127.0.0.1:PORT), not on {address}"
        )


class WireSwitch:
    """Both wires on one server: v1 messages to the request handler, the others to the legacy responder."""

    def __init__(self, handler: RequestHandler, legacy: LegacyResponder) -> None:
        self.handler = handler
        self.legacy = legacy

    def handle(self, buffer: Any, codec: Codec, peer: int = 0) -> Any:
        """Answer one message of either wire (never raises)."""
        if wire.message_kind(buffer) == "v1":
            return self.handler.handle(buffer, codec, peer)
        return self.legacy.handle(buffer, peer)

    def refuse(self, buffer: Any, codec: Codec, error: Exception) -> Any:
        """Refuse one message of either wire without running it."""
        if wire.message_kind(buffer) == "v1":
            return self.handler.refuse(buffer, codec, error)
        return self.legacy.refuse(buffer, error)


def _device(key: str, value: Any) -> Any:
    """An upstream ``device`` (a GPU index) as our device param (``cuda:N``); any other value as it is."""
    if key == "device" and isinstance(value, int) and not isinstance(value, bool):
        return f"cuda:{value}"
    return value


def _describe(exc: BaseException) -> str:
    """One line for an error reply: what failed on our side, as a client of v1 would read it."""
    if isinstance(exc, RemoteError):
        return f"{exc.remote_type}: {exc.remote_message}"
    return f"{type(exc).__name__}: {exc}"


def _reply_to_keep(reply: LegacyMessage | None, kept: Iterable[LegacyMessage]) -> LegacyMessage | None:
    """A reply is kept for late copies of its message while all kept stay within :data:`ANSWERED_BYTES`."""
    if reply is not None and sum(other.nbytes for other in kept) + reply.nbytes <= ANSWERED_BYTES:
        return reply
    return None


def _kept_reply(_key: _MessageKey, reply: LegacyMessage) -> LegacyMessage:
    """A late copy of a message gets the reply its first copy got."""
    return reply
