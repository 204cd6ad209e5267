"""roomcast shared core: the wire protocol, settings, error vocabulary and room model.

Everything here is pure (no sockets, no asyncio, no Redis or Postgres) so that the
gateway, the coordinator and the clients can all import it without pulling in I/O.
"""

__version__ = "0.1.0"
PROTOCOL_VERSION = 1
SUBPROTOCOL = "roomcast.v1"
