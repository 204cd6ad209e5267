"""Data privacy: nothing sensitive at rest in clear, export, erasure, retention."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import pytest
import redis

from roomcast.history.base import device_uuid
from tests.harness import (
    REDIS_KINDS,
    ROOT,
    UNIT,
    Client,
    Cluster,
    PostgresServer,
    RedisClusterServer,
    RedisServer,
    _pg_bin,
    cluster,
    redis_of_kind,
    unique,
)

pytestmark = pytest.mark.system

UA = "Mozilla/5.0 (SecretBrowser/7.7; HiddenOS)"
FINGERPRINT = "fp-SECRET-8c1d7"
MODEL = "Pixel-SECRET-9"
KEY = base64.b64encode(b"k" * 32).decode()


@pytest.fixture(scope="module")
def pg() -> Iterator[PostgresServer]:
    server = PostgresServer().init()
    try:
        yield server
    finally:
        server.destroy()


def dump_postgres(pg: PostgresServer, db: str) -> str:
    out = subprocess.run([_pg_bin("pg_dump"), "--data-only", pg.dsn(db)], capture_output=True, text=True,
                         timeout=60, check=True)
    return out.stdout


def dump_redis(server: RedisServer | RedisClusterServer) -> bytes:
    """Every key and value in Redis (on a Redis Cluster: of every primary)."""
    ports = [n.port for n in server.primary_nodes()] if isinstance(server, RedisClusterServer) else [server.port]
    return b"\n".join(_dump(port) for port in ports)


def _dump(port: int) -> bytes:
    r = redis.Redis(port=port)
    parts: list[bytes] = []
    for key in r.scan_iter(count=1000):
        parts.append(key)
        kind = r.type(key)
        if kind == b"string":
            parts.append(r.get(key) or b"")
        elif kind == b"hash":
            for k, v in r.hgetall(key).items():
                parts += [k, v]
        elif kind == b"set":
            parts += list(r.smembers(key))
        elif kind == b"zset":
            parts += [m for m, _ in r.zrange(key, 0, -1, withscores=True)]
        elif kind == b"stream":
            for _, fields in r.xrange(key):
                for k, v in fields.items():
                    parts += [k, v]
    return b"\n".join(parts)


def coordinator(c: Cluster, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "coordinator", *args], env=c.env, cwd=ROOT, capture_output=True,
                          text=True, timeout=60)


async def wait_rows(pg: PostgresServer, db: str, sql: str, expected: int, timeout: float = 15 * UNIT) -> None:
    deadline = time.monotonic() + timeout
    while int(pg.psql(db, sql) or 0) != expected:
        assert time.monotonic() < deadline, f"{sql} never reached {expected}"
        await asyncio.sleep(0.1)


@pytest.mark.parametrize("kind", REDIS_KINDS)
async def test_nothing_sensitive_in_clear_and_forget_device_leaves_no_trace(pg: PostgresServer, kind: str) -> None:
    db = unique("privacy").replace("-", "_")
    dsn = pg.create_database(db)
    env = {"DATABASE_URL": dsn, "PRIVACY_HASH_KEY": "pepper-for-tests", "PRIVACY_ENCRYPTION_KEYS": f"k1:{KEY}",
           "IP_STORAGE": "truncate", "HISTORY_FLUSH_INTERVAL": "50", "CLEANUP_INTERVAL": "300",
           "HEARTBEAT_FLUSH_INTERVAL": "300", "DEVICE_TOKEN_SECRET": "privacy-test-device-secret"}
    with redis_of_kind(kind) as server, cluster(2, 1, env, redis=server) as c:
        gone, stays = unique("gone"), unique("stays")
        room = unique("priv")
        headers = {"User-Agent": UA}
        async with Client.open(c.gateways[0].url, additional_headers=headers) as a, \
                Client.open(c.gateways[1].url, additional_headers=headers) as b:
            await a.hello(gone, fingerprint=FINGERPRINT, metadata={"model": MODEL, "screen": [1080, 2400]})
            await b.hello(stays, fingerprint=FINGERPRINT + "b", metadata={"model": MODEL})
            await a.request({"type": "create_room", "room_id": room, "game_type": "trivia",
                             "game_data": {"players": {gone: 0, stays: 0}}})
            await b.request({"type": "join", "room_id": room})
            for i in range(3):
                await a.request({"type": "event", "room_id": room, "event_type": "answer", "payload": {"by": gone,
                                                                                                        "i": i}})
                await b.request({"type": "event", "room_id": room, "event_type": "answer", "payload": {"i": i}})
        await wait_rows(pg, db, "SELECT count(*) FROM websocket_connections WHERE disconnected_at IS NOT NULL", 2)
        await wait_rows(pg, db, "SELECT count(*) FROM game_events", 2 + 6 + 2)

        # 1. At rest, nothing sensitive in clear: no raw user agent, fingerprint, device info or full address.
        pg_text = dump_postgres(pg, db)
        redis_bytes = dump_redis(c.redis)
        for secret in (UA, "SecretBrowser", FINGERPRINT, MODEL, "127.0.0.1"):
            assert secret not in pg_text, f"{secret!r} stored in Postgres"
            assert secret.encode() not in redis_bytes, f"{secret!r} stored in Redis"
        row = pg.psql(db, f"SELECT ip_address, user_agent FROM websocket_connections WHERE device_id = '{stays}'")
        ip, ua = row.split("|")
        assert ip == "127.0.0.0" and ua.startswith("v1:k1:")  # truncated address, AES-GCM with its key id
        assert pg.psql(db, f"SELECT browser_fingerprint FROM device_sessions WHERE device_id = '{stays}'"
                       ).startswith("h1:")

        # 2. Export: everything about a device, the user agent readable with the key.
        out = coordinator(c, "export-device", stays)
        assert out.returncode == 0, out.stderr
        exported: dict[str, Any] = json.loads(out.stdout)
        assert exported["device_session"][0]["device_id"] == stays
        assert [conn["user_agent_decrypted"] for conn in exported["connections"]] == [UA]
        assert [e["event_type"] for e in exported["events_sent"]].count("answer") == 3
        assert exported["participations"][0]["room_id"] == room

        # 3. Erasure: the device is gone from both stores; the room's history keeps its shape.
        events_before = pg.psql(db, "SELECT count(*) FROM game_events")
        out = coordinator(c, "forget-device", gone)
        assert out.returncode == 0, out.stderr
        assert json.loads(out.stdout)["forgotten"] == gone
        pg_text = dump_postgres(pg, db)
        redis_bytes = dump_redis(c.redis)
        for trace in (gone, str(device_uuid(gone))):
            assert trace not in pg_text, f"{trace} left in Postgres"
            assert trace.encode() not in redis_bytes, f"{trace} left in Redis"
        assert pg.psql(db, "SELECT count(*) FROM game_events") == events_before
        assert stays in pg_text and stays.encode() in redis_bytes  # only that device was erased
        assert pg.psql(db, f"SELECT count(*) FROM device_sessions WHERE device_id = '{stays}'") == "1"

        # 4. Retention: personal fields of old rows are erased by the cleanup job.
        pg.psql(db, "UPDATE websocket_connections SET connected_at = connected_at - interval '400 days'")
        pg.psql(db, "UPDATE device_sessions SET last_seen = last_seen - interval '400 days'")
        await wait_rows(pg, db, "SELECT count(*) FROM websocket_connections WHERE ip_address IS NOT NULL "
                        "OR user_agent IS NOT NULL OR metadata IS NOT NULL", 0)
        # Rows that old are archived (> CONNECTION_RETENTION_DAYS), and stripped there too.
        await wait_rows(pg, db, "SELECT count(*) FROM websocket_connections", 0)
        assert int(pg.psql(db, "SELECT count(*) FROM websocket_connections_archive")) >= 1
        await wait_rows(pg, db, "SELECT count(*) FROM websocket_connections_archive WHERE ip_address IS NOT NULL "
                        "OR user_agent IS NOT NULL OR metadata IS NOT NULL", 0)
        await wait_rows(pg, db, "SELECT count(*) FROM device_sessions WHERE browser_fingerprint IS NOT NULL", 0)


def test_forget_device_refuses_a_malformed_id() -> None:
    env = dict(os.environ, DATABASE_URL="postgresql://nobody@127.0.0.1:1/none")
    out = subprocess.run([sys.executable, "-m", "coordinator", "forget-device", "bad id!"], env=env, cwd=ROOT,
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 2 and "DEVICE_ID" in out.stderr
