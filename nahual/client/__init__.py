"""Client side of nahual: :class:`Client`, :class:`ModelHandle`, their transports, and seed-style model modules.

A :class:`Client` owns a :class:`Transport`: an :class:`NngTransport` to a
server's address, or an injected one such as :class:`InProcessTransport`,
which answers with a :class:`nahual.server.RequestHandler` in this process.
``nahual.client.<model>`` modules (``nahual.client.echo``) keep the call style
of earlier nahual releases: ``load_model(parameters, address=...)`` then
``process_data(data, address=...)``.
"""

from .._config import USE_CLIENT_DEFAULT
from .._inprocess import InProcessTransport
from .._nng_transport import NngTransport
from .._transport import Transport
from ._client import Client, ModelHandle

__all__ = ["USE_CLIENT_DEFAULT", "Client", "InProcessTransport", "ModelHandle", "NngTransport", "Transport"]
