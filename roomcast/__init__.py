"""roomcast shared core, imported by the gateway, the coordinator and the clients.

The protocol, settings, errors, room model and client state modules are pure (no sockets,
asyncio, Redis or Postgres; tests/unit/test_purity.py checks it). The backends (memory,
Redis, Postgres history), the limiter and the Python client live beside them; nothing
here imports the gateway or the coordinator.
"""

__version__ = "0.1.0"
PROTOCOL_VERSION = 1
SUBPROTOCOL = "roomcast.v1"
