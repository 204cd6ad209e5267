"""roomcast_client: the Python client of roomcast gateways (protocol v1).

    from roomcast_client import RoomcastClient

See README.md of the `roomcast-client` distribution. The names below are loaded on first
use, so that the pure modules (`roomcast_client.protocol`, `roomcast_client.state`) can be
imported without the asyncio and websockets half.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from .protocol import CLIENT_VERSION as __version__

if TYPE_CHECKING:
    from .client import RoomcastClient
    from .errors import RoomcastError
    from .room import Room, RoomEvents
    from .state import CLIENT_GAVE_UP

__all__ = ["CLIENT_GAVE_UP", "Room", "RoomEvents", "RoomcastClient", "RoomcastError", "__version__"]

_WHERE = {"RoomcastClient": ".client", "RoomcastError": ".errors", "Room": ".room", "RoomEvents": ".room",
          "CLIENT_GAVE_UP": ".state"}


def __getattr__(name: str) -> Any:
    where = _WHERE.get(name)
    if where is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(where, __name__), name)
    globals()[name] = value
    return value
