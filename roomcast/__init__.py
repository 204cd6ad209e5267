"""roomcast shared core, imported by the gateway and the coordinator.

The protocol, settings, errors and room model modules are pure (no sockets, asyncio, Redis
or Postgres; tests/unit/test_purity.py checks it). The backends (memory, Redis, Postgres
history) and the limiter live beside them; nothing here imports the gateway or the
coordinator. The Python client is its own distribution (clients/python, `roomcast_client`).
"""

__version__ = "0.1.0"
PROTOCOL_VERSION = 1
SUBPROTOCOL = "roomcast.v1"
