"""The in-process transport: the shared transport contract, with a request handler and no socket."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from transport_contract import TransportTests

from nahual.client import InProcessTransport
from nahual.errors import ConfigError
from nahual.server import RequestHandler


class TestInProcessTransport(TransportTests):
    """:class:`InProcessTransport` around a :class:`RequestHandler` of this process."""

    @pytest.fixture
    def transport(self) -> Iterator[InProcessTransport]:
        handler = RequestHandler()
        made = InProcessTransport(handler)
        try:
            yield made
        finally:
            made.close()
            handler.close()


def test_workers_must_be_positive() -> None:
    with pytest.raises(ConfigError, match="workers must be at least 1"):
        InProcessTransport(RequestHandler(), workers=0)


def test_the_name_is_the_address() -> None:
    with InProcessTransport(RequestHandler(), name="debug") as transport:
        assert transport.address == "debug" and repr(transport) == "InProcessTransport('debug', open)"
