"""``LocalModel``: run a model in this process behind the same interface as a client's model handle.

Zarr streaming layer. Used by ``nahual apply --local`` (debugging, and the
baseline of ``benchmarks/stream.py``): one instance, ``load`` once, ``process``
in one worker thread so that reading and writing overlap with the model as they
do with a server.
"""

from __future__ import annotations

from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from ..model import Contract, Model

__all__ = ["LocalModel", "resolve_model"]


def resolve_model(name: str | type[Model]) -> type[Model]:
    """A model class from a class, a registry name or ``module:Class``."""
    if isinstance(name, type):
        return name
    from ..registry import resolve_model as registry_resolve

    return registry_resolve(name)


class LocalModel:
    """A model loaded in this process, with a model handle's ``submit``.

    Parameters
    ----------
    model : str or type of Model
        The model class, its registry name or ``module:Class``.
    params : dict, optional
        Load params.
    """

    def __init__(self, model: str | type[Model], params: dict[str, Any] | None = None) -> None:
        cls = resolve_model(model)
        self.params: dict[str, Any] = dict(params or {})
        self.model: str = model if isinstance(model, str) else cls.name or cls.__name__
        self.contract: Contract = cls.contract
        self._instance = cls()
        self._instance.load(**self.params)
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"nahual-local-{self.model}")

    def submit(self, payload: Any, **params: Any) -> Future:
        """Run ``process`` in the worker thread; the future holds the result or the exception."""
        return self._pool.submit(self._instance.process, payload, **params)

    def __call__(self, payload: Any, **params: Any) -> Any:
        """Process one payload and wait for the result."""
        return self.submit(payload, **params).result()

    def info(self) -> dict[str, Any]:
        """What a server's ``info`` would say about this in-process model."""
        return {"local": True, "model": self.model, "contract": self.contract.to_dict()}

    def close(self) -> None:
        """Stop the worker thread and release the model."""
        self._pool.shutdown(wait=True)
        self._instance.close()

    def __enter__(self) -> LocalModel:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
