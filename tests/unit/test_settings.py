"""roomcast.settings: environment variables, read once into a frozen Settings."""

from __future__ import annotations

import argparse
import dataclasses
import re
import subprocess
import sys
from typing import Any

import pytest

from roomcast.settings import SPECS, Settings, SettingsError, add_arguments, environment_help, markdown_table

SPEC_BY_ENV = {spec.env: spec for spec in SPECS}


def load(**env: str) -> Settings:
    return Settings.load(env)


# ---------------------------------------------------------------- defaults


def test_defaults() -> None:
    s = Settings.load({})
    assert s.host == "127.0.0.1"
    assert s.port == 8765
    assert s.heartbeat_timeout_ms == 60_000
    assert s.heartbeat_interval_ms == 25_000
    assert s.room_ttl_ms == 3_600_000
    assert s.log_events is False
    assert s.max_frame_bytes == 65_536
    assert s.rate_messages == 100.0
    assert s.rate_burst == 200
    assert s.allowed_origins == ()
    assert s.jwt_secret is None
    assert s.require_auth is False
    assert s.log_level == "INFO"
    assert re.fullmatch(r"[A-Za-z0-9._-]{1,64}", s.node_id)


@pytest.mark.parametrize("spec", [s for s in SPECS if s.default is not None], ids=lambda s: s.env)
def test_spec_default_is_loaded_and_matches_dataclass(spec: Any) -> None:
    assert getattr(Settings.load({}), spec.field) == spec.default
    assert Settings.__dataclass_fields__[spec.field].default == spec.default


def test_every_setting_has_exactly_one_spec() -> None:
    fields = [f.name for f in dataclasses.fields(Settings)]
    assert sorted(fields) == sorted(spec.field for spec in SPECS)
    assert len({spec.env for spec in SPECS}) == len(SPECS)


def test_protocol_limits_allow_the_documented_rate() -> None:
    # protocol.md: default limits never refuse 50 messages per second with bursts of 100.
    s = Settings.load({})
    assert s.rate_messages >= 50
    assert s.rate_burst >= 100


def test_load_reads_only_the_given_mapping(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GATEWAY_PORT", "1234")
    assert Settings.load({}).port == 8765


def test_settings_are_frozen() -> None:
    s = Settings.load({})
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.port = 1  # type: ignore[misc]
    assert s.replace(port=1).port == 1
    assert s.port == 8765


# ---------------------------------------------------------------- parsing each variable

PARSED: list[tuple[str, str, str, Any]] = [
    ("GATEWAY_HOST", "0.0.0.0", "host", "0.0.0.0"),
    ("GATEWAY_PORT", "9000", "port", 9000),
    ("GATEWAY_PORT", " 9_001 ", "port", 9001),
    ("GATEWAY_PORT", "0", "port", 0),
    ("NODE_ID", "gw-1.eu_west", "node_id", "gw-1.eu_west"),
    ("METRICS_PORT", "9100", "metrics_port", 9100),
    ("WEBSOCKET_HEARTBEAT_TIMEOUT", "30000", "heartbeat_timeout_ms", 30_000),
    ("WEBSOCKET_HEARTBEAT_INTERVAL", "1000", "heartbeat_interval_ms", 1000),
    ("WEBSOCKET_ROOM_TTL", "60000", "room_ttl_ms", 60_000),
    ("WEBSOCKET_LOG_EVENTS", "1", "log_events", True),
    ("WEBSOCKET_LOG_EVENTS", "TRUE", "log_events", True),
    ("WEBSOCKET_LOG_EVENTS", "yes", "log_events", True),
    ("WEBSOCKET_LOG_EVENTS", " on ", "log_events", True),
    ("WEBSOCKET_LOG_EVENTS", "0", "log_events", False),
    ("WEBSOCKET_LOG_EVENTS", "off", "log_events", False),
    ("WEBSOCKET_LOG_EVENTS", "", "log_events", False),
    ("DRAIN_WINDOW", "20000", "drain_window_ms", 20_000),
    ("SERVE_DEMO", "false", "serve_static", False),
    ("WEBSOCKET_CONNECTION_TTL", "5000", "connection_ttl_ms", 5000),
    ("HELLO_TIMEOUT", "2500", "hello_timeout_ms", 2500),
    ("MAX_FRAME_BYTES", "1024", "max_frame_bytes", 1024),
    ("MAX_SEND_BUFFER", "65536", "max_send_buffer_bytes", 65_536),
    ("RATE_MESSAGES_PER_SEC", "2.5", "rate_messages", 2.5),
    ("RATE_MESSAGES_PER_SEC", "1000000", "rate_messages", 1_000_000.0),
    ("RATE_MESSAGES_BURST", "7", "rate_burst", 7),
    ("MAX_CONNECTIONS", "0", "max_connections", 0),
    ("MAX_CONNECTIONS_PER_DEVICE", "3", "max_connections_per_device", 3),
    ("MAX_ROOMS_PER_CONNECTION", "10", "max_rooms_per_connection", 10),
    ("ROOM_HISTORY_MAXLEN", "10", "room_history", 10),
    ("MAX_GAME_DATA_BYTES", "4096", "max_game_data_bytes", 4096),
    ("DEFAULT_MAX_PLAYERS", "4", "default_max_players", 4),
    ("PARTICIPANT_PRUNE_AFTER", "1000", "participant_prune_ms", 1000),
    ("ALLOWED_ORIGINS", "https://a.example, https://b.example,,", "allowed_origins",
     ("https://a.example", "https://b.example")),
    ("ALLOWED_ORIGINS", "", "allowed_origins", ()),
    ("AUTH_JWT_SECRET", "s3cret", "jwt_secret", "s3cret"),
    ("AUTH_JWT_SECRET", "", "jwt_secret", None),
    ("AUTH_JWT_PUBLIC_KEY_FILE", "/etc/roomcast/jwt.pem", "jwt_public_key_file", "/etc/roomcast/jwt.pem"),
    ("AUTH_JWT_PUBLIC_KEY_FILE", "", "jwt_public_key_file", None),
    ("AUTH_JWT_JWKS_FILE", "/etc/roomcast/jwks.json", "jwt_jwks_file", "/etc/roomcast/jwks.json"),
    ("AUTH_JWT_JWKS_FILE", "", "jwt_jwks_file", None),
    ("AUTH_JWT_ALGORITHMS", "", "jwt_algorithms", ()),
    ("AUTH_JWT_AUDIENCE", "roomcast", "jwt_audience", "roomcast"),
    ("AUTH_JWT_AUDIENCE", "", "jwt_audience", None),
    ("AUTH_JWT_ISSUER", "https://ref.supabase.co/auth/v1", "jwt_issuer", "https://ref.supabase.co/auth/v1"),
    ("AUTH_JWT_ISSUER", "", "jwt_issuer", None),
    ("AUTH_JWT_JWKS_URL", "https://ref.supabase.co/auth/v1/.well-known/jwks.json", "jwt_jwks_url",
     "https://ref.supabase.co/auth/v1/.well-known/jwks.json"),
    ("AUTH_JWT_JWKS_URL", " http://auth:9999/jwks ", "jwt_jwks_url", "http://auth:9999/jwks"),
    ("AUTH_JWT_JWKS_URL", "", "jwt_jwks_url", None),
    ("AUTH_JWT_JWKS_CACHE_TTL", "60000", "jwt_jwks_cache_ms", 60_000),
    ("AUTH_JWT_JWKS_MIN_INTERVAL", "1000", "jwt_jwks_min_interval_ms", 1000),
    ("AUTH_JWT_JWKS_TIMEOUT", "2000", "jwt_jwks_timeout_ms", 2000),
    ("REQUIRE_AUTH", "false", "require_auth", False),
    ("REDIS_URL", "redis://localhost:6379/0", "redis_url", "redis://localhost:6379/0"),
    ("REDIS_URL", "", "redis_url", None),
    ("REDIS_PUBSUB_URL", "redis://pubsub:6379/0", "redis_pubsub_url", "redis://pubsub:6379/0"),
    ("REDIS_BATCH_WINDOW", "2", "redis_batch_window_ms", 2),
    ("NODE_TTL", "2000", "node_ttl_ms", 2000),
    ("PUBSUB_PROBE_INTERVAL", "500", "pubsub_probe_ms", 500),
    ("PUBSUB_PROBE_TIMEOUT", "700", "pubsub_probe_timeout_ms", 700),
    ("COORDINATOR_HOST", "0.0.0.0", "coordinator_host", "0.0.0.0"),
    ("COORDINATOR_PORT", "8781", "coordinator_port", 8781),
    ("COORDINATOR_LEASE_TTL", "1500", "lease_ttl_ms", 1500),
    ("REAPER_INTERVAL", "250", "reaper_interval_ms", 250),
    ("DATABASE_URL", "postgresql://u@db:5432/rc", "database_url", "postgresql://u@db:5432/rc"),
    ("DATABASE_URL", "", "database_url", None),
    ("AUTO_MIGRATE", "false", "auto_migrate", False),
    ("HISTORY_BATCH_ROWS", "250", "history_batch_rows", 250),
    ("HISTORY_FLUSH_INTERVAL", "50", "history_flush_ms", 50),
    ("HEARTBEAT_FLUSH_INTERVAL", "2000", "heartbeat_flush_ms", 2000),
    ("CONNECTION_RETENTION_DAYS", "7", "connection_retention_days", 7),
    ("ABANDONED_ROOM_AFTER", "60000", "abandoned_room_ms", 60_000),
    ("CLEANUP_INTERVAL", "5000", "cleanup_interval_ms", 5000),
    ("DEVICE_TOKEN_SECRET", "k", "device_token_secret", "k"),
    ("REQUIRE_DEVICE_TOKEN", "false", "require_device_token", False),
    ("DEVICE_TOKEN_TTL", "86400000", "device_token_ttl_ms", 86_400_000),
    ("TRUSTED_PROXIES", "10.0.0.0/8, 127.0.0.1", "trusted_proxies", ("10.0.0.0/8", "127.0.0.1")),
    ("CONNECT_RATE_PER_ADDRESS", "5", "connect_rate_per_address", 5.0),
    ("CONNECT_RATE_PER_DEVICE", "1.5", "connect_rate_per_device", 1.5),
    ("ROOM_CREATE_RATE", "2", "room_create_rate", 2.0),
    ("JOIN_RATE", "3", "join_rate", 3.0),
    ("LIST_ROOMS_RATE", "0.5", "list_rooms_rate", 0.5),
    ("LIST_ROOMS_BURST", "3", "list_rooms_burst", 3),
    ("PASSWORD_FAIL_RATE", "0.5", "password_fail_rate", 0.5),
    ("ROOM_PASSWORD_FAIL_RATE", "1", "room_password_fail_rate", 1.0),
    ("MAX_ROOMS_PER_DEVICE", "3", "max_rooms_per_device", 3),
    ("MAX_ROOMS_PER_ADDRESS", "7", "max_rooms_per_address", 7),
    ("MAX_ROOMS_PER_USER", "9", "max_rooms_per_user", 9),
    ("MAX_ROOMS", "500", "max_rooms", 500),
    ("ROOM_HISTORY_MAX_BYTES", "100000", "room_history_bytes", 100_000),
    ("HISTORY_MAX_BYTES_TOTAL", "2000000", "history_bytes_total", 2_000_000),
    ("MAX_PARTICIPANTS_PER_ROOM", "10", "max_participants_per_room", 10),
    ("MAX_PAYLOAD_DEPTH", "4", "max_payload_depth", 4),
    ("MAX_METADATA_ENTRIES", "10", "max_metadata_entries", 10),
    ("MAX_METADATA_BYTES", "1000", "max_metadata_bytes", 1000),
    ("PRIVACY_HASH_KEY", "pepper", "privacy_hash_key", "pepper"),
    ("PRIVACY_ENCRYPTION_KEYS", "k1:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=", "privacy_encryption_keys",
     ("k1:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=",)),
    ("IP_STORAGE", "hash", "ip_storage", "hash"),
    ("USER_AGENT_STORAGE", "drop", "user_agent_storage", "drop"),
    ("PERSONAL_DATA_RETENTION_DAYS", "30", "personal_data_retention_days", 30),
    ("LOG_LEVEL", "debug", "log_level", "DEBUG"),
    ("IDEMPOTENCY_WINDOW", "60000", "idempotency_window_ms", 60_000),
    ("IDEMPOTENCY_KEYS_PER_ROOM", "500", "idempotency_max_keys", 500),
    ("BACKEND_CONNECT_URL", "http://127.0.0.1:9000/connect", "backend_connect_url", "http://127.0.0.1:9000/connect"),
    ("BACKEND_JOIN_URL", "https://backend.example/join?x=1", "backend_join_url", "https://backend.example/join?x=1"),
    ("BACKEND_WEBHOOK_SECRET", "s3cret", "backend_webhook_secret", "s3cret"),
    ("BACKEND_TIMEOUT_MS", "500", "backend_timeout_ms", 500),
    ("LOG_LEVEL", " Warning ", "log_level", "WARNING"),
    ("API_PORT", "9100", "api_port", 9100),
    ("SERVER_API_KEYS", "quiz=0123456789abcdef, ops=fedcba9876543210", "server_api_keys",
     ("quiz=0123456789abcdef", "ops=fedcba9876543210")),
    ("SERVER_API_KEYS_FILE", "/run/secrets/api-keys", "server_api_keys_file", "/run/secrets/api-keys"),
    ("API_RATE", "50", "api_rate", 50.0),
]


def test_every_variable_has_a_parse_case() -> None:
    assert {spec.env for spec in SPECS} == {env for env, _, _, _ in PARSED}


@pytest.mark.parametrize(("env", "raw", "field", "expected"), PARSED, ids=lambda v: v if isinstance(v, str) else "")
def test_variable_is_parsed(env: str, raw: str, field: str, expected: Any) -> None:
    assert SPEC_BY_ENV[env].field == field
    value = getattr(Settings.load({env: raw}), field)
    assert value == expected
    assert type(value) is type(expected)


@pytest.mark.parametrize("spec", [s for s in SPECS if s.default is not None], ids=lambda s: s.env)
def test_default_written_out_parses_back(spec: Any) -> None:
    raw = ",".join(spec.default) if isinstance(spec.default, tuple) else str(spec.default)
    assert getattr(Settings.load({spec.env: raw}), spec.field) == spec.default


BAD: list[tuple[str, str]] = [
    ("GATEWAY_PORT", "abc"),
    ("GATEWAY_PORT", "65536"),
    ("REDIS_BATCH_WINDOW", "51"),
    ("GATEWAY_PORT", "-1"),
    ("GATEWAY_PORT", "80.5"),
    ("GATEWAY_PORT", ""),
    ("NODE_ID", "has space"),
    ("NODE_ID", ""),
    ("NODE_ID", "n" * 65),
    ("METRICS_PORT", "http"),
    ("WEBSOCKET_HEARTBEAT_TIMEOUT", "99"),
    ("WEBSOCKET_HEARTBEAT_TIMEOUT", "60s"),
    ("WEBSOCKET_HEARTBEAT_INTERVAL", "49"),
    ("WEBSOCKET_ROOM_TTL", "999"),
    ("WEBSOCKET_LOG_EVENTS", "maybe"),
    ("WEBSOCKET_LOG_EVENTS", "2"),
    ("HELLO_TIMEOUT", "600001"),
    ("MAX_FRAME_BYTES", "1023"),
    ("MAX_SEND_BUFFER", "1k"),
    ("RATE_MESSAGES_PER_SEC", "fast"),
    ("RATE_MESSAGES_PER_SEC", "0.5"),
    ("RATE_MESSAGES_PER_SEC", "nan"),
    ("RATE_MESSAGES_PER_SEC", "inf"),
    ("RATE_MESSAGES_BURST", "0"),
    ("MAX_CONNECTIONS_PER_DEVICE", "0"),
    ("ROOM_HISTORY_MAXLEN", "9"),
    ("MAX_GAME_DATA_BYTES", "1"),
    ("DEFAULT_MAX_PLAYERS", "10001"),
    ("PARTICIPANT_PRUNE_AFTER", "10"),
    ("REQUIRE_AUTH", "sometimes"),
    ("AUTH_JWT_ALGORITHMS", "none"),
    ("AUTH_JWT_ALGORITHMS", "RS256,none"),
    ("AUTH_JWT_ALGORITHMS", "HS512"),
    ("AUTH_JWT_ALGORITHMS", "PS256"),
    ("AUTH_JWT_JWKS_URL", "file:///etc/jwks.json"),
    ("AUTH_JWT_JWKS_URL", "https://"),
    ("AUTH_JWT_JWKS_URL", "auth.example/jwks.json"),
    ("AUTH_JWT_JWKS_MIN_INTERVAL", "0"),
    ("AUTH_JWT_JWKS_TIMEOUT", "0"),
    ("NODE_TTL", "999"),
    ("COORDINATOR_LEASE_TTL", "0"),
    ("LOG_LEVEL", "TRACE"),
    ("API_PORT", "70000"),
    ("API_RATE", "0"),
    ("LOG_LEVEL", ""),
    ("IDEMPOTENCY_WINDOW", "999"),
    ("IDEMPOTENCY_KEYS_PER_ROOM", "0"),
    ("BACKEND_JOIN_URL", "ftp://backend/join"),
    ("BACKEND_CONNECT_URL", "backend:9000"),
    ("BACKEND_TIMEOUT_MS", "10"),
]


@pytest.mark.parametrize(("env", "raw"), BAD)
def test_bad_value_names_the_variable(env: str, raw: str) -> None:
    with pytest.raises(SettingsError) as info:
        Settings.load({env: raw})
    assert info.value.var == env
    message = str(info.value)
    assert env in message
    assert repr(raw) in message
    assert "\n" not in message
    assert isinstance(info.value, ValueError)


def test_first_bad_value_is_reported_among_good_ones() -> None:
    with pytest.raises(SettingsError) as info:
        load(GATEWAY_PORT="9000", ROOM_HISTORY_MAXLEN="nope", LOG_LEVEL="DEBUG")
    assert info.value.var == "ROOM_HISTORY_MAXLEN"


# ---------------------------------------------------------------- heartbeat


@pytest.mark.parametrize(
    ("timeout", "interval"),
    [("60000", 25_000), ("120000", 25_000), ("12000", 5000), ("1200", 500), ("100", 50), ("119", 50)],
)
def test_default_heartbeat_interval_is_derived_from_timeout(timeout: str, interval: int) -> None:
    s = load(WEBSOCKET_HEARTBEAT_TIMEOUT=timeout)
    assert s.heartbeat_interval_ms == interval
    assert s.heartbeat_interval_ms < s.heartbeat_timeout_ms


@pytest.mark.parametrize(("timeout", "interval"), [("60000", "60000"), ("60000", "70000"), ("1000", "1000")])
def test_heartbeat_interval_must_be_below_timeout(timeout: str, interval: str) -> None:
    with pytest.raises(SettingsError) as info:
        load(WEBSOCKET_HEARTBEAT_TIMEOUT=timeout, WEBSOCKET_HEARTBEAT_INTERVAL=interval)
    assert info.value.var == "WEBSOCKET_HEARTBEAT_INTERVAL"
    assert "WEBSOCKET_HEARTBEAT_TIMEOUT" in str(info.value)


def test_heartbeat_interval_just_below_timeout_is_accepted() -> None:
    s = load(WEBSOCKET_HEARTBEAT_TIMEOUT="1000", WEBSOCKET_HEARTBEAT_INTERVAL="999")
    assert (s.heartbeat_timeout_ms, s.heartbeat_interval_ms) == (1000, 999)


# ---------------------------------------------------------------- flags


def test_overrides_win_over_env() -> None:
    env = {"GATEWAY_PORT": "9000", "LOG_LEVEL": "ERROR", "GATEWAY_HOST": "0.0.0.0"}
    s = Settings.load(env, {"port": "9001", "log_level": "debug", "host": None})  # type: ignore[dict-item]
    assert (s.port, s.log_level, s.host) == (9001, "DEBUG", "0.0.0.0")


def test_bad_override_names_the_variable() -> None:
    with pytest.raises(SettingsError) as info:
        Settings.load({"GATEWAY_PORT": "9000"}, {"port": "nope"})
    assert info.value.var == "GATEWAY_PORT"


def test_command_line_flags_override_env() -> None:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args(["--port", "9002", "--log-events", "--heartbeat-timeout", "10000"])
    s = Settings.load({"GATEWAY_PORT": "9000", "WEBSOCKET_LOG_EVENTS": "false"}, vars(args))
    assert s.port == 9002
    assert s.log_events is True
    assert s.heartbeat_timeout_ms == 10_000
    assert s.heartbeat_interval_ms == 10_000 * 5 // 12


def test_flags_not_given_leave_env_alone() -> None:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    s = Settings.load({"GATEWAY_PORT": "9000", "WEBSOCKET_LOG_EVENTS": "true"}, vars(parser.parse_args([])))
    assert (s.port, s.log_events) == (9000, True)


# ---------------------------------------------------------------- auth


@pytest.mark.parametrize("env", [{"REQUIRE_AUTH": "true"}, {"REQUIRE_AUTH": "1", "AUTH_JWT_SECRET": ""},
                                 {"REQUIRE_AUTH": "1", "AUTH_JWT_JWKS_FILE": "", "AUTH_JWT_PUBLIC_KEY_FILE": ""}])
def test_require_auth_needs_a_verifier(env: dict[str, str]) -> None:
    with pytest.raises(SettingsError) as info:
        Settings.load(env)
    assert info.value.var == "REQUIRE_AUTH"
    assert "AUTH_JWT_SECRET" in str(info.value)
    assert "AUTH_JWT_JWKS_FILE" in str(info.value)


def test_require_auth_with_secret() -> None:
    s = load(REQUIRE_AUTH="yes", AUTH_JWT_SECRET="k")
    assert (s.require_auth, s.jwt_secret) == (True, "k")


@pytest.mark.parametrize("env", [{"AUTH_JWT_PUBLIC_KEY_FILE": "/k.pem"}, {"AUTH_JWT_JWKS_FILE": "/jwks.json"}])
def test_require_auth_accepts_a_public_key_verifier(env: dict[str, str]) -> None:
    s = Settings.load({"REQUIRE_AUTH": "true", **env})
    assert s.require_auth is True
    assert s.jwt_secret is None


@pytest.mark.parametrize(
    ("raw", "expected"),
    [("HS256", ("HS256",)), ("rs256, ES256", ("RS256", "ES256")), ("ES256,RS256,ES256", ("ES256", "RS256")),
     ("HS256,RS256,ES256", ("HS256", "RS256", "ES256"))],
)
def test_jwt_algorithms_are_parsed(raw: str, expected: tuple[str, ...]) -> None:
    s = load(AUTH_JWT_ALGORITHMS=raw, AUTH_JWT_SECRET="k", AUTH_JWT_JWKS_FILE="/jwks.json")
    assert s.jwt_algorithms == expected


def test_jwt_algorithm_none_is_refused_by_name() -> None:
    with pytest.raises(SettingsError) as info:
        load(AUTH_JWT_ALGORITHMS="none", AUTH_JWT_SECRET="k")
    assert info.value.var == "AUTH_JWT_ALGORITHMS"
    assert "never accepted" in str(info.value)


@pytest.mark.parametrize(
    ("env", "needs"),
    [({"AUTH_JWT_ALGORITHMS": "HS256", "AUTH_JWT_JWKS_FILE": "/jwks.json"}, "AUTH_JWT_SECRET"),
     ({"AUTH_JWT_ALGORITHMS": "RS256", "AUTH_JWT_SECRET": "k"}, "AUTH_JWT_PUBLIC_KEY_FILE"),
     ({"AUTH_JWT_ALGORITHMS": "HS256,ES256", "AUTH_JWT_SECRET": "k"}, "AUTH_JWT_JWKS_FILE")],
)
def test_jwt_algorithms_need_their_key_material(env: dict[str, str], needs: str) -> None:
    with pytest.raises(SettingsError) as info:
        Settings.load(env)
    assert info.value.var == "AUTH_JWT_ALGORITHMS"
    assert needs in str(info.value)


# ---------------------------------------------------------------- documentation


def test_markdown_table_lists_every_variable() -> None:
    table = markdown_table()
    lines = table.splitlines()
    assert len(lines) == len(SPECS) + 2
    for spec, line in zip(SPECS, lines[2:], strict=True):
        assert line.startswith(f"| `{spec.env}` |")
        if spec.flag:
            assert f"`{spec.flag}`" in line


def test_environment_help_lists_every_variable() -> None:
    text = environment_help()
    for spec in SPECS:
        assert re.search(rf"^  {re.escape(spec.env)}\b", text, re.MULTILINE), spec.env


def test_every_duration_is_marked_ms() -> None:
    durations = [spec for spec in SPECS if spec.field.endswith("_ms")]
    assert durations
    for spec in SPECS:
        assert spec.unit == ("ms" if spec in durations else ""), spec.env


def test_help_says_durations_are_in_ms() -> None:
    text = environment_help()
    assert "every duration is in milliseconds" in text
    for spec in SPECS:
        if spec.unit == "ms":
            assert re.search(rf"^  {re.escape(spec.env)} \((default \d+ ms|in ms)\)$", text, re.MULTILINE), spec.env
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    flags = parser.format_help()
    for spec in SPECS:
        if spec.flag and spec.unit == "ms":
            assert re.search(rf"\[env\s+{re.escape(spec.env)},\s+in\s+ms\]", flags), spec.env


def test_gateway_and_coordinator_help_say_ms() -> None:
    for command in ("gateway", "coordinator"):
        out = subprocess.run([sys.executable, "-m", command, "--help"], capture_output=True, text=True,
                             timeout=30, check=True).stdout
        assert "every duration is in milliseconds" in out, command
        assert re.search(r"^  \w+ \(default \d+ ms\)$", out, re.MULTILINE), command


@pytest.mark.parametrize("raw", ["nameonly", "quiz=short", "bad name=0123456789abcdef",
                                 "a=0123456789abcdef,a=fedcba9876543210"])
def test_bad_api_keys_are_refused(raw: str) -> None:
    with pytest.raises(SettingsError) as info:
        Settings.load({"SERVER_API_KEYS": raw})
    assert info.value.var == "SERVER_API_KEYS" and raw not in str(info.value)


def test_api_key_secrets_are_never_shown() -> None:
    """A bad SERVER_API_KEYS is reported without its secrets, and settings never print them."""
    with pytest.raises(SettingsError) as info:
        Settings.load({"SERVER_API_KEYS": "quiz=0123456789abcdef,bad=short-secret"})
    assert "0123456789abcdef" not in str(info.value) and "short-secret" not in str(info.value)
    settings = Settings.load({"SERVER_API_KEYS": "quiz=0123456789abcdef"})
    assert "0123456789abcdef" not in repr(settings)
