"""Server side of nahual: the request handler and the serving loop around it.

Layer: server, above the transport. :class:`RequestHandler` answers one
encoded request with one reply and knows nothing of sockets;
:class:`Server` feeds it from an nng socket (``nahual serve``), and
:class:`~nahual.client.InProcessTransport` feeds it from this process.
"""

from ._handler import RequestHandler
from ._info import package_versions
from ._serving import Server

__all__ = ["RequestHandler", "Server", "package_versions"]
