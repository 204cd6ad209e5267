"""Settings: read once at start from environment variables into a frozen `Settings`.

Each setting is declared once in `SPECS` (variable, type, default, help); the configuration
table of docs/configuration.md, `gateway --help` and the command-line flags all come from it.
Nothing deeper in the code reads `os.environ` (design invariant 7).
"""

from __future__ import annotations

import argparse
import base64
import dataclasses
import ipaddress
import os
import re
import socket
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any


class SettingsError(ValueError):
    """A bad value; `str()` is a one-line message naming the variable."""

    def __init__(self, var: str, value: str, why: str) -> None:
        super().__init__(f"invalid {var}={value!r}: {why}")
        self.var = var


def _int(lo: int, hi: int, unit: str = "") -> Callable[[str], int]:
    def conv(raw: str) -> int:
        try:
            value = int(raw.strip().replace("_", ""))
        except ValueError:
            raise ValueError(f"must be an integer{unit}") from None
        if not lo <= value <= hi:
            raise ValueError(f"must be between {lo} and {hi}{unit}")
        return value

    conv.unit = "ms" if unit == MS else ""  # type: ignore[attr-defined]  # read by Spec.unit
    return conv


def _float(lo: float, hi: float) -> Callable[[str], float]:
    def conv(raw: str) -> float:
        try:
            value = float(raw)
        except ValueError:
            raise ValueError("must be a number") from None
        if not lo <= value <= hi:
            raise ValueError(f"must be between {lo:g} and {hi:g}")
        return value

    return conv


def _bool(raw: str) -> bool:
    low = raw.strip().lower()
    if low in ("1", "true", "yes", "on"):
        return True
    if low in ("0", "false", "no", "off", ""):
        return False
    raise ValueError("must be true or false")


def _str(raw: str) -> str:
    return raw


def _opt_str(raw: str) -> str | None:
    return raw or None


def _opt_http_url(raw: str) -> str | None:
    if not raw:
        return None
    if not re.fullmatch(r"https?://[^/\s]+(/\S*)?", raw):
        raise ValueError("must be an http:// or https:// URL")
    return raw


_NODE_RE = re.compile(r"[A-Za-z0-9._-]{1,64}")


def _node_id(raw: str) -> str:
    if not _NODE_RE.fullmatch(raw):
        raise ValueError("must be 1-64 characters of [A-Za-z0-9._-]")
    return raw


def _csv(raw: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in raw.split(",") if part.strip())


def _choice(*options: str) -> Callable[[str], str]:
    def conv(raw: str) -> str:
        value = raw.strip().lower()
        if value not in options:
            raise ValueError(f"must be one of {', '.join(options)}")
        return value

    return conv


JWT_ALGORITHMS = ("HS256", "RS256", "ES256")


def _jwt_algorithms(raw: str) -> tuple[str, ...]:
    out: list[str] = []
    for part in _csv(raw):
        alg = part.upper()
        if alg == "NONE":
            raise ValueError("`none` (unsigned tokens) is never accepted")
        if alg not in JWT_ALGORITHMS:
            raise ValueError(f"{part!r} is not one of {', '.join(JWT_ALGORITHMS)}")
        if alg not in out:
            out.append(alg)
    return tuple(out)


def _jwks_url(raw: str) -> str | None:
    url = raw.strip()
    if not url:
        return None
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    if parts.scheme not in ("https", "http") or not parts.hostname:
        raise ValueError("must be an https:// (or http://) URL with a host")
    return url


def _log_level(raw: str) -> str:
    level = raw.strip().upper()
    if level not in ("DEBUG", "INFO", "WARNING", "ERROR"):
        raise ValueError("must be DEBUG, INFO, WARNING or ERROR")
    return level


def _default_node_id() -> str:
    host = re.sub(r"[^A-Za-z0-9._-]", "-", socket.gethostname())[:48] or "node"
    return f"{host}-{os.getpid()}"


API_KEY_NAME_RE = re.compile(r"[A-Za-z0-9._-]{1,64}")
MIN_API_SECRET = 16


def parse_api_keys(entries: Sequence[str]) -> dict[str, str]:
    """`name=secret` entries -> {name: secret}. The error never includes a secret."""
    keys: dict[str, str] = {}
    for i, entry in enumerate(entries, 1):
        name, sep, secret = entry.strip().partition("=")
        name, secret = name.strip(), secret.strip()
        if not sep or not API_KEY_NAME_RE.fullmatch(name):
            raise ValueError(f"entry {i} must be `name=secret`, the name 1-64 characters of [A-Za-z0-9._-]")
        if len(secret) < MIN_API_SECRET or any(c in secret for c in " ,\t"):
            raise ValueError(f"the secret of key {name!r} must be {MIN_API_SECRET}+ characters, no spaces or commas")
        if name in keys:
            raise ValueError(f"key {name!r} is given twice")
        keys[name] = secret
    return keys


@dataclass(frozen=True, slots=True)
class Spec:
    field: str
    env: str
    conv: Callable[[str], Any]
    default: Any
    help: str
    flag: str | None = None

    @property
    def unit(self) -> str:
        """`ms` for a duration (declared with the MS marker), else empty."""
        return str(getattr(self.conv, "unit", ""))


MS = " (milliseconds)"
SPECS: tuple[Spec, ...] = (
    Spec("host", "GATEWAY_HOST", _str, "127.0.0.1", "Address to listen on (0.0.0.0 in containers).", "--host"),
    Spec("port", "GATEWAY_PORT", _int(0, 65535), 8765, "Port for WebSocket (/ws) and HTTP (/healthz, /readyz, /metrics).", "--port"),
    Spec("node_id", "NODE_ID", _node_id, None, "This replica's name in welcome.node, logs and metrics. Default: hostname-pid.", "--node-id"),
    Spec("metrics_port", "METRICS_PORT", _int(0, 65535), 0, "Serve /metrics on this separate port too; 0 = only on the main port.", "--metrics-port"),
    Spec("heartbeat_timeout_ms", "WEBSOCKET_HEARTBEAT_TIMEOUT", _int(100, 86_400_000, MS), 60_000, "Silence after which a socket is closed with 4002 and marked `timeout`.", "--heartbeat-timeout"),
    Spec("heartbeat_interval_ms", "WEBSOCKET_HEARTBEAT_INTERVAL", _int(50, 86_400_000, MS), None, "Ping interval told to clients in welcome; must be below the timeout. Default: min(25000, timeout*5/12).", "--heartbeat-interval"),
    Spec("room_ttl_ms", "WEBSOCKET_ROOM_TTL", _int(1000, 30 * 86_400_000, MS), 3_600_000, "How long a closed room's state is kept after it closes.", "--room-ttl"),
    Spec("log_events", "WEBSOCKET_LOG_EVENTS", _bool, False, "Log every room event (verbose; for debugging).", "--log-events"),
    Spec("drain_window_ms", "DRAIN_WINDOW", _int(0, 3_600_000, MS), 0, "On SIGTERM, close sockets with 1012 spread over this window (rolling updates); 0 = close all at once with 1001.", "--drain-window"),
    Spec("connection_ttl_ms", "WEBSOCKET_CONNECTION_TTL", _int(1000, 30 * 86_400_000, MS), 300_000, "How long a device's connection record outlives its last socket (reconnect_count window).", None),
    Spec("hello_timeout_ms", "HELLO_TIMEOUT", _int(100, 600_000, MS), 10_000, "Time a new socket has to send a valid hello before close 4001.", "--hello-timeout"),
    Spec("max_frame_bytes", "MAX_FRAME_BYTES", _int(1024, 16 * 1024 * 1024), 65_536, "Largest client frame accepted; larger closes with 1009.", None),
    Spec("max_send_buffer_bytes", "MAX_SEND_BUFFER", _int(4096, 256 * 1024 * 1024), 1_048_576, "Per-socket outgoing buffer bound; a client that lets it overflow is closed with 4009.", None),
    Spec("rate_messages", "RATE_MESSAGES_PER_SEC", _float(1, 1_000_000), 100.0, "Sustained messages per second allowed per socket (token bucket refill).", None),
    Spec("rate_burst", "RATE_MESSAGES_BURST", _int(1, 1_000_000), 200, "Burst of messages allowed per socket (token bucket size).", None),
    Spec("max_connections", "MAX_CONNECTIONS", _int(0, 10_000_000), 20_000, "Sockets per replica; beyond it new sockets are closed with 1013. 0 = no limit.", "--max-connections"),
    Spec("max_connections_per_device", "MAX_CONNECTIONS_PER_DEVICE", _int(1, 10_000), 8, "Open sockets per device_id; beyond it the new socket is closed with 4008.", None),
    Spec("max_rooms_per_connection", "MAX_ROOMS_PER_CONNECTION", _int(1, 10_000), 100, "Rooms one socket may be in at once.", None),
    Spec("room_history", "ROOM_HISTORY_MAXLEN", _int(10, 10_000_000), 1000, "Events kept per room for `join` with `since` (Redis Stream MAXLEN in cluster mode).", None),
    Spec("room_history_bytes", "ROOM_HISTORY_MAX_BYTES", _int(65_536, 1 << 30), 131_072, "Bytes of event frames kept per room for `join` with `since` (the oldest go first; the newest event is always kept). With Postgres only events already persisted go (replays then read them from Postgres).", None),
    Spec("history_bytes_total", "HISTORY_MAX_BYTES_TOTAL", _int(1_048_576, 1 << 40), 134_217_728, "Embedded gateway: bytes of kept history over all rooms (frames + 128 per event); beyond, the oldest events of any room go first. (Cluster: ROOM_HISTORY_MAX_BYTES x MAX_ROOMS.)", None),
    Spec("max_rooms", "MAX_ROOMS", _int(1, 10_000_000), 10_000, "Rooms that may exist at once (open, or closed and kept for WEBSOCKET_ROOM_TTL): per embedded gateway, per Redis in cluster mode. Beyond: `unavailable`.", None),
    Spec("idempotency_window_ms", "IDEMPOTENCY_WINDOW", _int(1000, 86_400_000, MS), 600_000, "An `event` (or API publish) whose `idempotency_key` was used in the same room within this window is not applied again: it gets the first seq.", None),
    Spec("idempotency_max_keys", "IDEMPOTENCY_KEYS_PER_ROOM", _int(1, 1_000_000), 1000, "Most idempotency keys a room remembers, the newest (about 300 bytes each, in Redis or in memory: 300 KB per room at the cap); at high rates this, not IDEMPOTENCY_WINDOW, bounds how long a resend is recognised (1000 keys at 10 keyed events/s: 100 s).", None),
    Spec("max_game_data_bytes", "MAX_GAME_DATA_BYTES", _int(2, 1_048_576), 32_768, "Largest encoded game_data a room may hold (after a patch too).", None),
    Spec("default_max_players", "DEFAULT_MAX_PLAYERS", _int(1, 10_000), 16, "max_players of a room created without one.", None),
    Spec("participant_prune_ms", "PARTICIPANT_PRUNE_AFTER", _int(1000, 30 * 86_400_000, MS), 300_000, "A disconnected participant is removed (`participant_left`, reason `pruned`) after this.", None),
    Spec("serve_static", "SERVE_DEMO", _bool, True, "Serve the browser client at /lib/roomcast.js and the trivia demo at /demo/.", None),
    Spec("allowed_origins", "ALLOWED_ORIGINS", _csv, (), "Comma-separated Origin allow-list for browser handshakes; empty = any origin. Others are closed with 1008.", None),
    Spec("jwt_secret", "AUTH_JWT_SECRET", _opt_str, None, "HS256 secret for hello.token (a JWT whose `sub` becomes user_id). With no secret and no public key, tokens are refused.", None),
    Spec("jwt_public_key_file", "AUTH_JWT_PUBLIC_KEY_FILE", _opt_str, None, "PEM public key (or certificate) for RS256 (RSA, 2048+ bits) or ES256 (P-256) tokens; read once at start.", None),
    Spec("jwt_jwks_file", "AUTH_JWT_JWKS_FILE", _opt_str, None, "JSON Web Key Set file (RSA and EC P-256 signing keys, chosen by the token's `kid`); read once at start.", None),
    Spec("jwt_algorithms", "AUTH_JWT_ALGORITHMS", _jwt_algorithms, (), "Token algorithms accepted, of HS256, RS256, ES256 (`none` never). Default: HS256 with a secret, plus RS256/ES256 for the configured keys.", None),
    Spec("jwt_audience", "AUTH_JWT_AUDIENCE", _opt_str, None, "Required `aud` of tokens, if set.", None),
    Spec("jwt_issuer", "AUTH_JWT_ISSUER", _opt_str, None, "Required `iss` of tokens, if set (e.g. https://<project>.supabase.co/auth/v1); a token without it or from another issuer is `unauthorized`.", None),
    Spec("jwt_jwks_url", "AUTH_JWT_JWKS_URL", _jwks_url, None, "JSON Web Key Set fetched over HTTPS (e.g. Supabase's /auth/v1/.well-known/jwks.json): RSA and EC P-256 keys, cached, re-fetched for an unknown `kid`; combines with the key files and the secret.", None),
    Spec("jwt_jwks_cache_ms", "AUTH_JWT_JWKS_CACHE_TTL", _int(1000, 30 * 86_400_000, MS), 600_000, "How long keys fetched from AUTH_JWT_JWKS_URL are used before they are fetched again.", None),
    Spec("jwt_jwks_min_interval_ms", "AUTH_JWT_JWKS_MIN_INTERVAL", _int(100, 86_400_000, MS), 10_000, "Least time between two fetches of AUTH_JWT_JWKS_URL (per replica), however many tokens with unknown `kid`s arrive.", None),
    Spec("jwt_jwks_timeout_ms", "AUTH_JWT_JWKS_TIMEOUT", _int(100, 60_000, MS), 5_000, "Time a fetch of AUTH_JWT_JWKS_URL may take; a hello waiting on a failed fetch gets `unavailable`.", None),
    Spec("require_auth", "REQUIRE_AUTH", _bool, False, "Refuse hello without a valid token (`unauthorized`). Needs a secret or a public key.", None),
    Spec("backend_connect_url", "BACKEND_CONNECT_URL", _opt_http_url, None, "Your backend's connect webhook: every hello is POSTed to it ({device_id, user_id, ...}) and refused (`unauthorized`) unless it answers {\"allow\": true}. See docs/security.md.", None),
    Spec("backend_join_url", "BACKEND_JOIN_URL", _opt_http_url, None, "Your backend's join webhook: every join and create_room is POSTed to it ({device_id, user_id, room_id, role, ...}) and refused (`forbidden`) unless it allows it.", None),
    Spec("backend_webhook_secret", "BACKEND_WEBHOOK_SECRET", _opt_str, None, "Sent as `Authorization: Bearer <secret>` with every webhook call, so the backend knows the gateway.", None),
    Spec("backend_timeout_ms", "BACKEND_TIMEOUT_MS", _int(50, 60_000, MS), 2000, "A webhook call not answered within this fails closed: the hello or join gets `unavailable`.", None),
    Spec("redis_url", "REDIS_URL", _opt_str, None, "Redis for cluster mode: redis://[:password@]host:port/db, or rediss://… for TLS with redis-py's query parameters (ssl_ca_certs=<file>, ssl_cert_reqs=required|optional|none, ssl_check_hostname=true|false, ssl_certfile, ssl_keyfile). May name any one node of a Redis Cluster: cluster mode is detected from the server and the other nodes discovered (docs/redis-layout.md). Unset = embedded single node.", "--redis-url"),
    Spec("redis_batch_window_ms", "REDIS_BATCH_WINDOW", _int(0, 50, MS), 0, "Cluster mode: how long the gateway lets a Redis batch gather commands after the first one before sending it (0 = only those of the same loop tick). A few ms put several events into one round trip at low rates, which costs Redis and the gateway fewer wakeups per event (docs/benchmarks.md) and adds up to this much latency to every command.", None),
    Spec("redis_pubsub_url", "REDIS_PUBSUB_URL", _opt_str, None, "Redis for the pub/sub subscription, if not REDIS_URL (e.g. a separate instance); same URL forms, TLS included.", None),
    Spec("database_url", "DATABASE_URL", _opt_str, None, "Postgres for history and analytics (postgresql://user@host:port/db). Unset = no history.", "--database-url"),
    Spec("auto_migrate", "AUTO_MIGRATE", _bool, True, "Apply schema migrations at start (embedded gateway, coordinator). Set false where a migration Job runs them.", None),
    Spec("history_batch_rows", "HISTORY_BATCH_ROWS", _int(1, 100_000), 1000, "Most rows the flusher writes per batch.", None),
    Spec("history_flush_ms", "HISTORY_FLUSH_INTERVAL", _int(10, 600_000, MS), 200, "How long the flusher lets a partial batch fill before writing it.", None),
    Spec("heartbeat_flush_ms", "HEARTBEAT_FLUSH_INTERVAL", _int(100, 3_600_000, MS), 10_000, "How often websocket_connections.last_heartbeat is updated from presence, in one batch.", None),
    Spec("connection_retention_days", "CONNECTION_RETENTION_DAYS", _int(1, 36_500), 30, "Connection rows older than this are moved to websocket_connections_archive by the cleanup job.", None),
    Spec("abandoned_room_ms", "ABANDONED_ROOM_AFTER", _int(1000, 30 * 86_400_000, MS), 3_600_000, "A room with no connected member and no event for this long is closed by the cleanup job.", None),
    Spec("cleanup_interval_ms", "CLEANUP_INTERVAL", _int(100, 86_400_000, MS), 60_000, "How often the cleanup jobs run.", None),
    Spec("node_ttl_ms", "NODE_TTL", _int(1000, 3_600_000, MS), 10_000, "A replica's registration (ws:node:{id}) expires this long after its last refresh.", None),
    Spec("pubsub_probe_ms", "PUBSUB_PROBE_INTERVAL", _int(100, 600_000, MS), 1000, "How often a replica checks its pub/sub subscription by publishing to itself.", None),
    Spec("pubsub_probe_timeout_ms", "PUBSUB_PROBE_TIMEOUT", _int(100, 600_000, MS), 3000, "A probe not seen within this rebuilds the subscription.", None),
    Spec("coordinator_host", "COORDINATOR_HOST", _str, "127.0.0.1", "Address the coordinator's HTTP endpoints listen on (0.0.0.0 in containers).", None),
    Spec("coordinator_port", "COORDINATOR_PORT", _int(0, 65535), 8780, "Coordinator HTTP port (/healthz, /readyz, /metrics).", None),
    Spec("lease_ttl_ms", "COORDINATOR_LEASE_TTL", _int(500, 600_000, MS), 5000, "Coordinator leader lease; a standby takes over within about this long.", None),
    Spec("reaper_interval_ms", "REAPER_INTERVAL", _int(50, 600_000, MS), 1000, "How often the coordinator looks for timed-out sockets and participants to prune.", None),
    # -- security and abuse resistance (docs/security.md)
    Spec("device_token_secret", "DEVICE_TOKEN_SECRET", _opt_str, None, "Turns device tokens on: welcome.device_token (random, given once to a new device id) proves the id belongs to its holder; the key of the stored token hashes.", None),
    Spec("require_device_token", "REQUIRE_DEVICE_TOKEN", _bool, False, "A known device must present its device_token in hello (stops device-id takeover). Needs DEVICE_TOKEN_SECRET.", None),
    Spec("device_token_ttl_ms", "DEVICE_TOKEN_TTL", _int(60_000, 3650 * 86_400_000, MS), 2_592_000_000, "How long a device token's hash is kept in Redis (or memory) after its last use (30 days); with Postgres it is also kept there, for good.", None),
    Spec("trusted_proxies", "TRUSTED_PROXIES", _csv, (), "Comma-separated proxy addresses/CIDRs whose X-Forwarded-For is believed for the client address.", None),
    Spec("connect_rate_per_address", "CONNECT_RATE_PER_ADDRESS", _float(0.01, 1_000_000), 20.0, "New sockets per second per client address, cluster-wide (burst 5x); beyond: close 4008.", None),
    Spec("connect_rate_per_device", "CONNECT_RATE_PER_DEVICE", _float(0.01, 1_000_000), 2.0, "Hellos per second per device, cluster-wide (burst 10); beyond: close 4008.", None),
    Spec("room_create_rate", "ROOM_CREATE_RATE", _float(0.001, 1_000_000), 0.5, "Rooms created per second per user (or device), cluster-wide (burst 10).", None),
    Spec("list_rooms_rate", "LIST_ROOMS_RATE", _float(0.01, 1_000_000), 2.0, "`list_rooms` per second allowed per device, cluster-wide (token bucket refill); beyond it `rate_limited` with `retry_after_ms`.", None),
    Spec("list_rooms_burst", "LIST_ROOMS_BURST", _int(1, 1_000_000), 10, "Burst of `list_rooms` allowed per device (token bucket size).", None),
    Spec("join_rate", "JOIN_RATE", _float(0.01, 1_000_000), 5.0, "Joins per second per device, cluster-wide (burst 20).", None),
    Spec("password_fail_rate", "PASSWORD_FAIL_RATE", _float(0.001, 1000), 0.1, "Wrong room passwords allowed per second per device (burst 5); then `rate_limited`.", None),
    Spec("room_password_fail_rate", "ROOM_PASSWORD_FAIL_RATE", _float(0.001, 1000), 0.5, "Wrong passwords per second per room from all devices (burst 20); then `rate_limited`.", None),
    Spec("max_rooms_per_device", "MAX_ROOMS_PER_DEVICE", _int(1, 100_000), 50, "Rooms one device may be a participant of at once.", None),
    Spec("max_rooms_per_address", "MAX_ROOMS_PER_ADDRESS", _int(1, 1_000_000), 100, "Rooms created from one client address that still exist (open, or closed and kept), cluster-wide. Beyond: `forbidden`.", None),
    Spec("max_rooms_per_user", "MAX_ROOMS_PER_USER", _int(1, 1_000_000), 100, "Rooms created by one user (token `sub`; anonymous: its device) that still exist, cluster-wide. Beyond: `forbidden`.", None),
    Spec("max_participants_per_room", "MAX_PARTICIPANTS_PER_ROOM", _int(1, 1_000_000), 1000, "Participants (players, host and spectators) one room may hold.", None),
    Spec("max_payload_depth", "MAX_PAYLOAD_DEPTH", _int(1, 256), 16, "Deepest nesting of objects/arrays accepted in payload, game_data, patch and metadata.", None),
    Spec("max_metadata_entries", "MAX_METADATA_ENTRIES", _int(1, 10_000), 64, "Most entries in hello.metadata (every key, value and array element counts one); beyond: `bad_request`.", None),
    Spec("max_metadata_bytes", "MAX_METADATA_BYTES", _int(64, 1_048_576), 4096, "Largest hello.metadata as stored (JSON after each value became its 51-character keyed hash); beyond: `bad_request`.", None),
    Spec("privacy_hash_key", "PRIVACY_HASH_KEY", _opt_str, None, "Key for keyed hashes of fingerprints, device info and (IP_STORAGE=hash) addresses. Unset: a random key per process.", None),
    Spec("privacy_encryption_keys", "PRIVACY_ENCRYPTION_KEYS", _csv, (), "AES-256-GCM keys for user agents at rest: 'kid:base64key,...', first encrypts, all decrypt (rotation).", None),
    Spec("ip_storage", "IP_STORAGE", _choice("truncate", "hash", "full", "none"), "truncate", "How client addresses are stored: truncate (/24, /48), hash, full or none.", None),
    Spec("user_agent_storage", "USER_AGENT_STORAGE", _choice("encrypt", "drop", "clear"), "encrypt", "encrypt (needs PRIVACY_ENCRYPTION_KEYS, else dropped), drop, or clear (not recommended).", None),
    Spec("personal_data_retention_days", "PERSONAL_DATA_RETENTION_DAYS", _int(1, 36_500), 90, "Personal fields (address, user agent, fingerprint, device info) older than this are erased by the cleanup job.", None),
    Spec("log_level", "LOG_LEVEL", _log_level, "INFO", "DEBUG, INFO, WARNING or ERROR.", "--log-level"),
    Spec("api_port", "API_PORT", _int(0, 65535), 0, "Serve the server API (/api/v1/...) on this separate port too; 0 = only on the main port.", "--api-port"),
    Spec("server_api_keys", "SERVER_API_KEYS", _csv, (), "Server API keys: comma-separated `name=secret` pairs (secrets of 16+ characters). No keys (and no SERVER_API_KEYS_FILE) = the API is off. Keep it in a Secret.", None),
    Spec("server_api_keys_file", "SERVER_API_KEYS_FILE", _opt_str, None, "A file of `name=secret` lines (or comma-separated), read at start, added to SERVER_API_KEYS.", None),
    Spec("api_rate", "API_RATE", _float(0.1, 1_000_000), 1000.0, "Server API requests per second per key, cluster-wide (burst: 2 seconds' worth); beyond it 429 `rate_limited`.", None),
)


@dataclass(frozen=True, slots=True)
class Settings:
    host: str = "127.0.0.1"
    port: int = 8765
    node_id: str = ""
    metrics_port: int = 0
    heartbeat_timeout_ms: int = 60_000
    heartbeat_interval_ms: int = 25_000
    room_ttl_ms: int = 3_600_000
    log_events: bool = False
    drain_window_ms: int = 0
    connection_ttl_ms: int = 300_000
    hello_timeout_ms: int = 10_000
    max_frame_bytes: int = 65_536
    max_send_buffer_bytes: int = 1_048_576
    rate_messages: float = 100.0
    rate_burst: int = 200
    max_connections: int = 20_000
    max_connections_per_device: int = 8
    max_rooms_per_connection: int = 100
    room_history: int = 1000
    room_history_bytes: int = 131_072
    history_bytes_total: int = 134_217_728
    max_rooms: int = 10_000
    idempotency_window_ms: int = 600_000
    idempotency_max_keys: int = 1000
    max_game_data_bytes: int = 32_768
    default_max_players: int = 16
    participant_prune_ms: int = 300_000
    serve_static: bool = True
    allowed_origins: tuple[str, ...] = ()
    jwt_secret: str | None = None
    jwt_public_key_file: str | None = None
    jwt_jwks_file: str | None = None
    jwt_algorithms: tuple[str, ...] = ()
    jwt_audience: str | None = None
    jwt_issuer: str | None = None
    jwt_jwks_url: str | None = None
    jwt_jwks_cache_ms: int = 600_000
    jwt_jwks_min_interval_ms: int = 10_000
    jwt_jwks_timeout_ms: int = 5_000
    require_auth: bool = False
    backend_connect_url: str | None = None
    backend_join_url: str | None = None
    backend_webhook_secret: str | None = None
    backend_timeout_ms: int = 2000
    redis_url: str | None = None
    redis_pubsub_url: str | None = None
    redis_batch_window_ms: int = 0
    database_url: str | None = None
    auto_migrate: bool = True
    history_batch_rows: int = 1000
    history_flush_ms: int = 200
    heartbeat_flush_ms: int = 10_000
    connection_retention_days: int = 30
    abandoned_room_ms: int = 3_600_000
    cleanup_interval_ms: int = 60_000
    node_ttl_ms: int = 10_000
    pubsub_probe_ms: int = 1000
    pubsub_probe_timeout_ms: int = 3000
    coordinator_host: str = "127.0.0.1"
    coordinator_port: int = 8780
    lease_ttl_ms: int = 5000
    reaper_interval_ms: int = 1000
    device_token_secret: str | None = None
    require_device_token: bool = False
    device_token_ttl_ms: int = 2_592_000_000
    trusted_proxies: tuple[str, ...] = ()
    connect_rate_per_address: float = 20.0
    connect_rate_per_device: float = 2.0
    room_create_rate: float = 0.5
    join_rate: float = 5.0
    list_rooms_rate: float = 2.0
    list_rooms_burst: int = 10
    password_fail_rate: float = 0.1
    room_password_fail_rate: float = 0.5
    max_rooms_per_device: int = 50
    max_rooms_per_address: int = 100
    max_rooms_per_user: int = 100
    max_participants_per_room: int = 1000
    max_payload_depth: int = 16
    max_metadata_entries: int = 64
    max_metadata_bytes: int = 4096
    privacy_hash_key: str | None = None
    privacy_encryption_keys: tuple[str, ...] = ()
    ip_storage: str = "truncate"
    user_agent_storage: str = "encrypt"
    personal_data_retention_days: int = 90
    log_level: str = "INFO"
    api_port: int = 0
    server_api_keys: tuple[str, ...] = dataclasses.field(default=(), repr=False)  # secrets: never in a repr or log
    server_api_keys_file: str | None = None
    api_rate: float = 1000.0

    @classmethod
    def load(cls, env: Mapping[str, str], overrides: Mapping[str, str] | None = None) -> Settings:
        """Build settings from `env`, with `overrides` (field -> raw text, from flags) winning.

        Raises SettingsError naming the variable on the first bad value.
        """
        values: dict[str, Any] = {}
        raw_seen: dict[str, str] = {}
        for spec in SPECS:
            raw = None
            if overrides and overrides.get(spec.field) is not None:
                raw = overrides[spec.field]
            elif spec.env in env:
                raw = env[spec.env]
            if raw is None:
                values[spec.field] = spec.default
                continue
            try:
                values[spec.field] = spec.conv(raw)
            except ValueError as exc:
                raise SettingsError(spec.env, raw, str(exc)) from None
            raw_seen[spec.field] = raw
        if values["node_id"] is None:
            values["node_id"] = _default_node_id()
        timeout = values["heartbeat_timeout_ms"]
        if values["heartbeat_interval_ms"] is None:
            values["heartbeat_interval_ms"] = max(50, min(25_000, timeout * 5 // 12))
        elif values["heartbeat_interval_ms"] >= timeout:
            raise SettingsError(
                "WEBSOCKET_HEARTBEAT_INTERVAL",
                raw_seen["heartbeat_interval_ms"],
                f"must be below WEBSOCKET_HEARTBEAT_TIMEOUT ({timeout})",
            )
        if values["require_device_token"] and not values["device_token_secret"]:
            raise SettingsError("REQUIRE_DEVICE_TOKEN", raw_seen.get("require_device_token", "true"),
                                "needs DEVICE_TOKEN_SECRET")
        for cidr in values["trusted_proxies"]:
            try:
                ipaddress.ip_network(cidr, strict=False)
            except ValueError:
                raise SettingsError("TRUSTED_PROXIES", raw_seen["trusted_proxies"], f"{cidr!r} is not an address or CIDR") from None
        for entry in values["privacy_encryption_keys"]:
            kid, _, key = entry.partition(":")
            try:
                ok = bool(kid) and len(base64.b64decode(key, validate=True)) == 32
            except ValueError:
                ok = False
            if not ok:
                raise SettingsError("PRIVACY_ENCRYPTION_KEYS", "<hidden>", "each entry must be 'kid:<base64 of 32 bytes>'")
        try:
            parse_api_keys(values["server_api_keys"])
        except ValueError as exc:  # the value holds secrets: never echo it
            raise SettingsError("SERVER_API_KEYS", "<hidden>", str(exc)) from None
        has_key_file = bool(values["jwt_public_key_file"] or values["jwt_jwks_file"] or values["jwt_jwks_url"])
        if "HS256" in values["jwt_algorithms"] and not values["jwt_secret"]:
            raise SettingsError("AUTH_JWT_ALGORITHMS", raw_seen["jwt_algorithms"], "HS256 needs AUTH_JWT_SECRET")
        if {"RS256", "ES256"} & set(values["jwt_algorithms"]) and not has_key_file:
            raise SettingsError("AUTH_JWT_ALGORITHMS", raw_seen["jwt_algorithms"],
                                "RS256 and ES256 need AUTH_JWT_PUBLIC_KEY_FILE, AUTH_JWT_JWKS_FILE or AUTH_JWT_JWKS_URL")
        if values["require_auth"] and not (values["jwt_secret"] or has_key_file):
            raise SettingsError("REQUIRE_AUTH", raw_seen.get("require_auth", "true"),
                                "needs AUTH_JWT_SECRET, AUTH_JWT_PUBLIC_KEY_FILE, AUTH_JWT_JWKS_FILE or AUTH_JWT_JWKS_URL")
        return cls(**values)

    def replace(self, **changes: Any) -> Settings:
        return dataclasses.replace(self, **changes)


def add_arguments(parser: argparse.ArgumentParser, specs: Sequence[Spec] = SPECS) -> None:
    """Add a flag for each setting that has one; flags override the environment."""
    for spec in specs:
        if spec.flag is None:
            continue
        if spec.conv is _bool:
            parser.add_argument(spec.flag, dest=spec.field, action="store_const", const="true",
                                default=None, help=f"{spec.help} [env {spec.env}]")
        else:
            unit = f", in {spec.unit}" if spec.unit else ""
            parser.add_argument(spec.flag, dest=spec.field, metavar=spec.env, default=None,
                                help=f"{spec.help} [env {spec.env}{unit}]")


def environment_help(specs: Sequence[Spec] = SPECS) -> str:
    """A plain-text list of every variable, its default and meaning (for --help)."""
    lines = ["environment variables (flags above override them; every duration is in milliseconds, ms):"]
    for spec in specs:
        unit = f" {spec.unit}" if spec.unit else ""
        if spec.default in (None, ()):
            default = f" (in {spec.unit})" if spec.unit else ""
        else:
            default = f" (default {spec.default}{unit})"
        lines.append(f"  {spec.env}{default}\n      {spec.help}")
    return "\n".join(lines)


def markdown_table(specs: Sequence[Spec] = SPECS) -> str:
    """The configuration table of docs/configuration.md, generated from SPECS."""
    rows = ["| Variable | Flag | Default | Unit | Meaning |", "|---|---|---|---|---|"]
    for spec in specs:
        default = "—" if spec.default in (None, ()) else f"`{spec.default}`"
        flag = f"`{spec.flag}`" if spec.flag else "—"
        unit = spec.unit or "—"
        rows.append(f"| `{spec.env}` | {flag} | {default} | {unit} | {spec.help} |")
    return "\n".join(rows)
