"""``LocalModel``: a model in this process, reached through the same handler and client as a server's.

Zarr streaming layer. Used by ``nahual apply --local`` (debugging, and the
baseline of ``benchmarks/stream.py``). A :class:`LocalModel` is a real
:class:`~nahual.ModelHandle` on a :class:`~nahual.Client` whose transport is an
:class:`~nahual.client.InProcessTransport` around its own
:class:`~nahual.server.RequestHandler`: requests are encoded, answered and
decoded exactly as by a server, so local and served runs cannot drift apart.
The model runs in the transport's threads, so that reading and writing
overlap with it as they do with a server.
"""

from __future__ import annotations

from typing import Any

from .._config import Timeout
from ..client import Client, InProcessTransport, ModelHandle
from ..model import Model
from ..registry import resolve_model
from ..server import RequestHandler

__all__ = ["LocalModel"]


class LocalModel(ModelHandle):
    """A model loaded in this process, behind a real model handle (a context manager).

    Parameters
    ----------
    model : str or type of Model
        The model class, its registry name or ``module:Class``.
    params : dict, optional
        Load params.
    timeout : Timeout, float or None
        Limits of its client (default: none, as the model runs here).

    Raises
    ------
    ConfigError
        When the model is unknown.
    RemoteError
        When the model's ``load`` fails (as it would on a server).
    """

    def __init__(
        self, model: str | type[Model], params: dict[str, Any] | None = None, *, timeout: Timeout | float | None = None
    ) -> None:
        cls = model if isinstance(model, type) else resolve_model(model)
        name = model if isinstance(model, str) else cls.name or cls.__name__
        self._handler = RequestHandler(models={name: cls})
        client = Client(transport=InProcessTransport(self._handler), timeout=timeout)
        try:
            super().__init__(client, client.request("load", dict(params or {}), model=name, replica=0))
        except BaseException:
            self._release(client)
            raise

    def info(self) -> dict[str, Any]:
        """What a server's ``info`` says, for this process (provenance)."""
        return self.client.info()

    def close(self) -> None:
        """Stop the worker threads and release the model (idempotent)."""
        self._release(self.client)

    def _release(self, client: Client) -> None:
        client.close()
        self._handler.close()

    def __enter__(self) -> LocalModel:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
