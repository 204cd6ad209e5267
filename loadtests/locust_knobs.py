"""The knobs of the Locust scenario (loadtests/locustfile.py) and the gateway URLs they name.

KNOBS lists every option with its environment variable and default (the table at the top of
locustfile.py); the locustfile registers them as Locust command-line options, and Settings
reads them back per user: from Locust's parsed options (on workers: the master's values) or,
for an option Locust did not parse, from the environment.

Like the locustfile, this module needs only the standard library: it sits next to the
locustfile and is imported by plain name (`import locust_knobs`), because Locust loads a
locustfile by path with the file's own directory on sys.path, and the Kubernetes ConfigMap
(loadtests/kustomization.yaml) ships it next to the locustfile.
"""

from __future__ import annotations

import ipaddress
import os
from typing import Any
from urllib.parse import urlsplit, urlunsplit

DEFAULT_HOST = "ws://127.0.0.1:8765/ws"

# (attribute, option, environment variable, type, default, help)
KNOBS: tuple[tuple[str, str, str, type, Any, str], ...] = (
    ("room_size", "--room-size", "ROOMCAST_ROOM_SIZE", int, 4,
     "Users per room (consecutive users of one Locust process share a room)."),
    ("event_rate", "--event-rate", "ROOMCAST_EVENT_RATE", float, 1.0,
     "Game events (answers/moves) per second per user; 0 = only heartbeats."),
    ("reconnect_prob", "--reconnect-prob", "ROOMCAST_RECONNECT_PROB", float, 0.01,
     "Chance per second that a user drops its socket and resumes with since+epoch."),
    ("ping_interval", "--ping-interval", "ROOMCAST_PING_INTERVAL", float, 5.0,
     "Seconds between protocol pings; 0 = welcome.heartbeat_interval_ms."),
    ("session_seconds", "--session-seconds", "ROOMCAST_SESSION_SECONDS", float, 60.0,
     "Length of one game; then the user leaves and enters its group's next room."),
    ("payload_bytes", "--payload-bytes", "ROOMCAST_PAYLOAD_BYTES", int, 0,
     "Padding added to each event payload, in bytes."),
    ("reply_timeout", "--reply-timeout", "ROOMCAST_REPLY_TIMEOUT", float, 10.0,
     "Seconds to wait for a reply before counting a failure."),
    ("roomcast_hosts", "--roomcast-hosts", "ROOMCAST_HOSTS", str, "",
     "Comma-separated gateway URLs (ws://host:port[/ws]); overrides --host."),
    ("forwarded_for", "--forwarded-for", "ROOMCAST_FORWARDED_FOR", str, "",
     "A network (e.g. 10.77.0.0/16): each user sends X-Forwarded-For with its own address in it. "
     "Only gateways whose TRUSTED_PROXIES include the load generator believe it."),
)



class Settings:
    """The knobs, from Locust's parsed options (master's values on workers) or the environment."""

    def __init__(self, options: Any) -> None:
        for attr, _option, env, typ, default, _help in KNOBS:
            value = getattr(options, attr, None) if options is not None else None
            if value is None or value == "":
                value = os.environ.get(env, default)
            setattr(self, attr, typ(value))  # the web UI hands values back as strings
        self.room_size: int = max(1, self.room_size)
        self.event_rate: float = max(0.0, self.event_rate)
        self.reconnect_prob: float = max(0.0, self.reconnect_prob)
        self.ping_interval: float = max(0.0, self.ping_interval)
        self.session_seconds: float = max(1.0, self.session_seconds)
        self.payload_bytes: int = max(0, self.payload_bytes)
        self.reply_timeout: float = max(0.1, self.reply_timeout)
        self.roomcast_hosts: str = self.roomcast_hosts
        self.forwarded_for: str = self.forwarded_for


def ws_url(url: str) -> str:
    """`host:port`, `ws://host:port`, `http://host:port/ws`… -> `ws://host:port/ws`."""
    url = url.strip()
    if "://" not in url:
        url = "ws://" + url
    parts = urlsplit(url)
    scheme = {"http": "ws", "https": "wss"}.get(parts.scheme, parts.scheme)
    path = parts.path if parts.path not in ("", "/") else "/ws"
    return urlunsplit((scheme, parts.netloc, path, parts.query, ""))


def gateway_urls(settings: Settings, host: str | None) -> list[str]:
    raw = settings.roomcast_hosts or host or DEFAULT_HOST
    urls = [ws_url(u) for u in raw.split(",") if u.strip()]
    return urls or [DEFAULT_HOST]


def forwarded_for(network: str, number: int) -> list[str]:
    """The X-Forwarded-For header of user `number`: one address of `network` per user."""
    if not network:
        return []
    net = ipaddress.ip_network(network, strict=False)
    hosts = max(1, net.num_addresses - 2)
    return [f"X-Forwarded-For: {net.network_address + 1 + number % hosts}"]

