"""Our client of the earlier nahual's model servers: their wire behind the transport seam.

Layer: client, above the nng transport. A server of the earlier public nahual
(0.0.x: a ``server.py`` around its ``responder``, on an ``ipc://`` or tcp
address) is named by the address with ``nahual0+`` in front, wherever an
address is accepted (``Client``, ``nahual apply --server``, the workflow's
``models.NAME.server``)::

    nahual0+ipc:///tmp/cellpose0.ipc
    nahual0+ipc:///tmp/dino.ipc?model=dinov2
    nahual0+tcp://127.0.0.1:5120?model=embeddings&setup=skip

``model=`` names a known upstream model or a layout (:mod:`nahual._legacy_layouts`;
default: the model name given to ``load``, else the generic ``array``);
``setup=skip`` sends no setup dict (the server keeps the setup it has).
:class:`LegacyTransport` turns each protocol v1 request of a
:class:`~nahual.Client` into an earlier-wire exchange, so that a
:class:`~nahual.ModelHandle` and the streaming layer work unchanged:

- ``load`` sends the params as the setup dict and returns a handle whose
  contract is the layout's; ``process`` sends the payload in the layout's
  array and turns the reply into our result (labels, tracks, embeddings);
- ``{}`` and ``!`` replies become :class:`~nahual.errors.RemoteError` with
  whatever the server said, except ``{}`` to a setup: a 0.0.8 server answers
  every setup after its first one so (it ignores it), which is what every
  consumer but the first of a run gets; a setup that did fail shows at the
  first array, which such a server then answers ``{}`` too;
- every call has its timeout, and nng's resend is off, so a slow model never
  runs twice;
- a payload the wire cannot carry is refused before sending
  (:func:`nahual._legacy_wire.check_array`).
"""

from __future__ import annotations

import urllib.parse
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .. import _legacy_wire as wire
from .._legacy_layouts import KNOWN_MODELS, LAYOUTS, Layout, layout_named
from .._nng import check_address
from .._nng_transport import NngTransport
from .._protocol import Frame, Kind
from ..errors import ConfigError, ParamError, ProtocolError, RemoteError

if TYPE_CHECKING:
    from .._legacy_wire import LegacyMessage

__all__ = ["SCHEME", "LegacyAddress", "LegacyTransport", "is_legacy_address", "parse_legacy_address"]

#: What marks an address as an earlier-wire server's.
SCHEME = "nahual0+"
#: How ``info`` names the wire.
WIRE = "nahual 0.0.x (the earlier wire)"
#: What a 0.0.8 server's ``{}`` means, for the error.
EMPTY_REPLY = (
    "the server replied {}, which nahual 0.0.8 servers send when a call fails, or when their setup failed "
    "(their log says why)"
)


@dataclass(frozen=True)
class LegacyAddress:
    """An earlier-wire server's address, parsed: the nng address, the layout's name and whether to set up."""

    target: str
    model: str | None = None
    setup: bool = True


def is_legacy_address(address: str) -> bool:
    """Whether ``address`` names an earlier-wire server (``nahual0+ipc://...``)."""
    return address.startswith(SCHEME)


def parse_legacy_address(address: str) -> LegacyAddress:
    """Split ``nahual0+ADDRESS[?model=NAME&setup=skip]``.

    Raises
    ------
    ConfigError
        For another scheme, an unknown option, model or setup value, or an address nng cannot dial.
    """
    if not is_legacy_address(address):
        raise ConfigError(f"an earlier-wire server's address starts with {SCHEME}, got {address!r}")
    target, _, query = address[len(SCHEME) :].partition("?")
    try:
        options = dict(urllib.parse.parse_qsl(query, strict_parsing=True)) if query else {}
    except ValueError:
        raise ConfigError(f"options of {address!r} are written ?model=NAME&setup=skip") from None
    unknown = sorted(set(options) - {"model", "setup"})
    if unknown:
        raise ConfigError(f"unknown option {unknown[0]!r} in {address!r}; the options are model and setup")
    model = options.get("model")
    if model is not None and model not in KNOWN_MODELS and model not in LAYOUTS:
        known = ", ".join([*KNOWN_MODELS, *LAYOUTS])
        raise ConfigError(f"model={model!r} in {address!r} is neither a known upstream model nor a layout: {known}")
    if options.get("setup", "send") not in ("send", "skip"):
        raise ConfigError(f"setup= in {address!r} is send or skip, got {options['setup']!r}")
    check_address(target)
    return LegacyAddress(target, model, options.get("setup", "send") == "send")


class LegacyTransport(NngTransport):
    """Protocol v1 requests answered by an earlier-wire server, over one nng Req0 socket (resends off).

    Parameters
    ----------
    address : str
        ``nahual0+`` and the server's address, with its options (:func:`parse_legacy_address`).
    connect_timeout, allow_foreign_socket, describe_loss
        As for :class:`~nahual.client.NngTransport`.
    """

    def _dial_target(self, address: str) -> str:
        """Dial the server behind ``nahual0+``; the options set whether to send a setup and the first layout."""
        self._server = parse_legacy_address(address)
        self._layout: Layout = layout_named(self._server.model or "array")
        self._setup_reply: dict[str, Any] | None = None
        return self._server.target

    def handle_request(self, request: Frame, timeout: float | None) -> Frame:
        """Answer one v1 request through the earlier wire; what the server said wrong is an error frame."""
        operation = str(request.meta.get("op", ""))
        try:
            payload = self._answer(operation, request, timeout)
        except RemoteError as exc:
            meta = {"type": exc.remote_type, "message": exc.remote_message, "traceback": ""}
            return Frame(Kind.ERROR, request.request_id, {**meta, "op": operation, "request_id": request.request_id})
        return Frame(Kind.REPLY, request.request_id, {"op": operation}, payload)

    def _answer(self, operation: str, request: Frame, timeout: float | None) -> Any:
        if operation == "ping":  # the earlier wire has none: the connection is what can be checked
            return {"pong": True, "wire": WIRE}
        if operation == "info":
            return {"wire": WIRE, "address": self.address, "layout": self._layout.name, "setup": self._setup_reply}
        if operation == "load":
            return self._load(str(request.meta.get("model", "")), request.payload, timeout)
        if operation == "process":
            return self._process(request.payload, timeout)
        if operation == "unload":
            return {"unloaded": request.meta.get("instance")}
        if operation == "shutdown":
            raise ProtocolError(f"{self.address} speaks the earlier wire, which cannot stop a server: stop its process")
        raise ProtocolError(f"the earlier wire has no {operation!r} operation")

    def _load(self, model: str, params: Any, timeout: float | None) -> dict[str, Any]:
        """Send the setup dict; the handle's contract is the layout of the address's model, else of ``model``."""
        params = dict(params or {})
        self._layout = layout_named(self._server.model or model)
        if self._server.setup:
            reply = self._exchange(wire.encode_dict(params), timeout)
            if not isinstance(reply, dict):
                raise ProtocolError(f"the server answered its setup with a {type(reply).__name__}, not a dict")
            self._setup_reply = reply  # {}: set up before (0.0.8 ignores later setups), or failed: arrays tell
        return {"instance": self.address, "model": model, "params": params, "contract": self._layout.contract.to_dict()}

    def _process(self, body: Any, timeout: float | None) -> Any:
        data = body.get("data") if isinstance(body, dict) else body
        if isinstance(body, dict) and body.get("params"):
            raise ParamError(
                f"the earlier wire has no per-call params, got {sorted(body['params'])}: give them at load"
            )
        message = wire.encode_array(self._layout.to_upstream(data), "the request")  # refused here: nothing sent
        reply = self._exchange(message, timeout)
        if isinstance(reply, dict) and not reply:
            raise RemoteError("EmptyReply", EMPTY_REPLY, operation="process")
        return self._layout.from_upstream(reply, data)

    def _exchange(self, message: LegacyMessage, timeout: float | None) -> Any:
        """Send one message and return the decoded reply (an array or a dict); ``!`` raises RemoteError."""
        with self._channel_in_use() as channel:
            channel.send(message, timeout)
            buffer = channel.recv(timeout)
        kind = wire.message_kind(buffer)
        if kind == "error":
            error, stage = wire.decode_error(buffer)
            raise RemoteError("UpstreamError", f"{error} (stage: {stage})" if stage else error)
        if kind == "setup":
            return wire.decode_dict(buffer)
        if kind != "array":
            raise ProtocolError(f"the server answered a {kind} message, which this client does not ask for")
        return wire.decode_array(buffer)
