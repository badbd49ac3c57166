"""Workers for a run: handles on running servers, on servers nahual launches, or in-process.

Zarr streaming layer. Each :class:`Worker` gets a ``reopen`` that reconnects
to its server (and relaunches it first when nahual launched it and it died),
so that ``apply(..., retries=N)`` can carry on after a server failure; a
relaunched instance keeps its GPUs.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from .._config import Timeout
from ..errors import ConfigError, NahualError
from ._local import LocalModel
from ._runner import Worker

__all__ = ["connect_workers"]

#: Seconds a launched server has to answer the ping that decides whether to relaunch it.
PING_TIMEOUT = 5.0


class _Remote:
    """One server address: a client, a handle, and how to get fresh ones."""

    def __init__(
        self,
        model: str,
        params: dict[str, Any],
        timeout: Timeout,
        address: str | None = None,
        env: str | None = None,
        devices: str | None = None,
    ) -> None:
        self.model, self.params, self.timeout, self.env, self.devices = model, params, timeout, env, devices
        self.server: Any = None
        self.client: Any = None
        self.address = address
        if env is not None:
            self._launch()

    def _launch(self) -> None:
        from ..launcher import launch

        self.server = launch(
            self.env, preload=self.model, params=self.params, timeout=self.timeout, devices=self.devices
        )
        self.address = self.server.address

    def handle(self) -> Any:
        """Connect (again) and load the model; relaunch a launched server that has exited."""
        from ..client import Client

        if self.client is not None:
            with contextlib.suppress(NahualError, OSError):
                self.client.close()
        if self.server is not None and not self._answers():
            with contextlib.suppress(NahualError, OSError):
                self.server.stop()
            self._launch()
        # A launched server's client names its exit signal and log should it die mid-request.
        self.client = Client(self.address, timeout=self.timeout) if self.server is None else self.server.client()
        return self.client.load(self.model, **self.params)

    def _answers(self) -> bool:
        """Whether the launched server still runs and answers a ping (a hung one gets relaunched)."""
        from ..client import Client

        if self.server.returncode is not None:
            return False
        try:
            with Client(self.address, timeout=Timeout(connect=PING_TIMEOUT, request=PING_TIMEOUT)) as probe:
                probe.ping()
            return True
        except (NahualError, OSError):
            return False

    def info(self) -> dict[str, Any]:
        """The server's ``info`` (versions), for provenance."""
        try:
            return dict(self.client.info())
        except (NahualError, OSError):
            return {}

    def close(self) -> None:
        """Close the client and stop a launched server."""
        if self.client is not None:
            with contextlib.suppress(NahualError, OSError):
                self.client.close()
        if self.server is not None:
            self.server.stop()


def _launch_all(model: str, params: dict[str, Any], limits: Timeout, env: str, instances: int) -> list[_Remote]:
    """Launch ``instances`` servers at once, each with its share of the GPUs; all stopped if one fails."""
    from ..launcher import spread_devices

    with ThreadPoolExecutor(instances, thread_name_prefix="nahual-launch") as pool:
        launched = [pool.submit(_Remote, model, params, limits, env=env, devices=d) for d in spread_devices(instances)]
    failed = next((f.exception() for f in launched if f.exception() is not None), None)
    if failed is not None:
        for future in launched:
            if future.exception() is None:
                future.result().close()
        raise failed
    return [future.result() for future in launched]


@contextlib.contextmanager
def connect_workers(
    model: str,
    params: dict[str, Any] | None = None,
    *,
    servers: Sequence[str] = (),
    env: str | None = None,
    instances: int = 1,
    local: bool = False,
    timeout: float | None = 600.0,
) -> Iterator[list[Worker]]:
    """Workers for ``model``: in-process, on the given servers, or on ``instances`` launched servers.

    Parameters
    ----------
    model : str
        Registry name or ``module:Class``.
    params : dict, optional
        Load params.
    servers : sequence of str
        Addresses of running servers (one worker each).
    env : str, optional
        Environment spec to launch servers in when no ``servers`` are given.
    instances : int
        Servers to launch in ``env``, each with its own share of the GPUs listed in
        ``$NAHUAL_GPUS`` or ``$CUDA_VISIBLE_DEVICES`` (:func:`~nahual.launcher.spread_devices`).
    local : bool
        Run the model in this process instead.
    timeout : float or None
        Seconds a request may take (None: forever).

    Yields
    ------
    list of Worker
        Closed (and launched servers stopped) on exit.
    """
    params = dict(params or {})
    if local:
        with LocalModel(model, params, timeout=Timeout(connect=None, request=timeout, startup=None)) as handle:
            yield [Worker(handle, "local", info=handle.info())]
        return
    if servers and env:
        raise ConfigError("give either --server or --env, not both")
    if instances < 1:
        raise ConfigError(f"--instances must be >= 1, got {instances}")
    limits = Timeout(connect=5.0, request=timeout, startup=120.0)
    remotes: list[_Remote] = []
    try:
        if servers:
            remotes = [_Remote(model, params, limits, address=a) for a in servers]
        else:
            if env is None:
                from ..catalog import default_env

                env = default_env(model)
            remotes = _launch_all(model, params, limits, env, instances)
        workers = []
        for remote in remotes:
            handle = remote.handle()
            workers.append(Worker(handle, remote.address or "?", reopen=remote.handle, info=remote.info()))
        yield workers
    finally:
        for remote in remotes:
            remote.close()
