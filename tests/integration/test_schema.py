"""The Postgres schema against the requirements, migrations (twice, concurrently, tampered),
the Supabase layout and its optional RLS policies, and `coordinator query` on known data.

One throwaway Postgres cluster for the module (tests.harness.PostgresServer, 127.0.0.1,
never the machine's own server); a fresh database per test.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import sys
import tomllib
import uuid
from collections import Counter, defaultdict
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from roomcast.history.migrate import LOCK_KEY, MigrationError, migrate, migrations
from roomcast.settings import SPECS
from tests.harness import ROOT, UNIT, PostgresServer, free_port, redis_server, wait_for

# Every migration shipped, in order (0001 and 0002 create the schema; later ones amend it).
VERSIONS = [m.version for m in migrations()]
assert VERSIONS[:2] == ["0001", "0002"]

SUPABASE = ROOT / "supabase"
SOURCE = ROOT / "roomcast" / "history" / "migrations"

# ---------------------------------------------------------------- the requirements, transcribed
#
# Copied by hand from /work/shared/requirements/websocket-database-requirements.md, section
# "Database Tables/Collections" (column | type | description), not generated from our SQL.
# "nullable" marks the columns whose description says they are nullable.

REQUIRED_COLUMNS: dict[str, list[tuple[str, str, str]]] = {
    "websocket_connections": [
        ("id", "UUID", "Primary key"),
        ("socket_id", "VARCHAR(255)", ""),
        ("device_id", "VARCHAR(255)", ""),
        ("user_id", "UUID", "nullable"),
        ("connected_at", "TIMESTAMP", ""),
        ("disconnected_at", "TIMESTAMP", "nullable"),
        ("last_heartbeat", "TIMESTAMP", ""),
        ("reconnect_count", "INTEGER", ""),
        ("ip_address", "VARCHAR(45)", ""),
        ("user_agent", "TEXT", ""),
        ("metadata", "JSONB", ""),
        ("status", "ENUM 'active', 'disconnected', 'timeout'", ""),
    ],
    "game_rooms": [
        ("id", "UUID", "Primary key"),
        ("room_id", "VARCHAR(255)", ""),
        ("created_at", "TIMESTAMP", ""),
        ("updated_at", "TIMESTAMP", ""),
        ("closed_at", "TIMESTAMP", "nullable"),
        ("created_by", "UUID", ""),
        ("game_type", "VARCHAR(100)", ""),
        ("game_data", "JSONB", ""),
        ("status", "ENUM 'active', 'waiting', 'in_progress', 'completed', 'closed'", ""),
        ("max_players", "INTEGER", ""),
        ("current_players", "INTEGER", ""),
    ],
    "room_participants": [
        ("id", "UUID", "Primary key"),
        ("room_id", "VARCHAR(255)", ""),
        ("socket_id", "VARCHAR(255)", ""),
        ("device_id", "VARCHAR(255)", ""),
        ("user_id", "UUID", "nullable"),
        ("joined_at", "TIMESTAMP", ""),
        ("left_at", "TIMESTAMP", "nullable"),
        ("role", "VARCHAR(50)", ""),
        ("status", "ENUM 'active', 'disconnected', 'left'", ""),
    ],
    "game_events": [
        ("id", "UUID", "Primary key"),
        ("room_id", "VARCHAR(255)", ""),
        ("event_type", "VARCHAR(100)", ""),
        ("socket_id", "VARCHAR(255)", ""),
        ("device_id", "VARCHAR(255)", ""),
        ("user_id", "UUID", "nullable"),
        ("timestamp", "TIMESTAMP", ""),
        ("action", "VARCHAR(255)", ""),
        ("payload", "JSONB", ""),
        ("sequence_number", "INTEGER", ""),
    ],
    "device_sessions": [
        ("id", "UUID", "Primary key"),
        ("device_id", "VARCHAR(255)", ""),
        ("user_id", "UUID", "nullable"),
        ("first_seen", "TIMESTAMP", ""),
        ("last_seen", "TIMESTAMP", ""),
        ("total_connections", "INTEGER", ""),
        ("total_reconnections", "INTEGER", ""),
        ("browser_fingerprint", "VARCHAR(255)", ""),
        ("metadata", "JSONB", ""),
    ],
}
# "Indexes:" of each table; "(unique)" ones listed again below.
REQUIRED_INDEXES: dict[str, list[str]] = {
    "websocket_connections": ["device_id", "user_id", "status", "connected_at"],
    "game_rooms": ["room_id", "status", "game_type", "created_at"],
    "room_participants": ["room_id", "device_id", "socket_id", "status"],
    "game_events": ["room_id", "timestamp", "event_type", "sequence_number"],
    "device_sessions": ["device_id", "user_id", "last_seen"],
}
REQUIRED_UNIQUE: dict[str, list[tuple[str, ...]]] = {
    "game_rooms": [("room_id",)],
    "device_sessions": [("device_id",)],
    # Not in the requirements: the natural keys that make the flusher's writes idempotent.
    "game_events": [("room_id", "sequence_number")],
    "websocket_connections": [("socket_id",)],
}
# "Queries Needed", verbatim but for `?` -> $1.
REQUIRED_QUERIES = [
    ("SELECT COUNT(*) as reconnect_count FROM websocket_connections "
     "WHERE device_id = $1 AND status = 'disconnected'", ["dev"]),
    ("SELECT * FROM websocket_connections WHERE status = 'active' ORDER BY connected_at DESC", []),
    ("SELECT * FROM game_rooms WHERE status = 'active' ORDER BY created_at DESC", []),
    ("SELECT * FROM room_participants WHERE room_id = $1 AND status = 'active'", ["room"]),
    ("""SELECT DATE(connected_at) as date, COUNT(*) as total_connections, COUNT(DISTINCT device_id) as unique_devices
        FROM websocket_connections WHERE connected_at > NOW() - INTERVAL '30 days'
        GROUP BY DATE(connected_at) ORDER BY date DESC""", []),
    ("""SELECT game_type, COUNT(*) as total_games,
               SUM(CASE WHEN status = 'completed' THEN 1 ELSE 0 END) as completed_games
        FROM game_rooms GROUP BY game_type""", []),
]


def catalog_type(doc_type: str) -> dict[str, Any]:
    """What information_schema.columns says for a type as the requirements write it."""
    if m := re.fullmatch(r"VARCHAR\((\d+)\)", doc_type):
        return {"data_type": "character varying", "max_length": int(m.group(1))}
    if doc_type.startswith("ENUM "):
        return {"data_type": "USER-DEFINED", "labels": re.findall(r"'([^']*)'", doc_type)}
    return {
        "UUID": {"data_type": "uuid", "udt_name": "uuid"},
        "TIMESTAMP": {"data_type": "timestamp without time zone"},
        "INTEGER": {"data_type": "integer"},
        "TEXT": {"data_type": "text"},
        "JSONB": {"data_type": "jsonb", "udt_name": "jsonb"},
    }[doc_type]


# ---------------------------------------------------------------- fixtures and helpers


@pytest.fixture(scope="module")
def pg() -> Iterator[PostgresServer]:
    server = PostgresServer().init()
    try:
        yield server
    finally:
        server.destroy()


@dataclass
class Database:
    name: str
    dsn: str
    server: PostgresServer


@pytest.fixture
def db(pg: PostgresServer) -> Database:
    name = f"t_{uuid.uuid4().hex[:12]}"
    return Database(name, pg.create_database(name), pg)


@pytest.fixture
async def conn(db: Database) -> AsyncIterator[asyncpg.Connection]:
    c = await asyncpg.connect(db.dsn)
    try:
        yield c
    finally:
        await c.close()


def cli_env(database_url: str | None) -> dict[str, str]:
    """The environment minus every roomcast setting and libpq variable, plus DATABASE_URL."""
    drop = {s.env for s in SPECS}
    env = {k: v for k, v in os.environ.items() if k not in drop and not k.startswith("PG")}
    env["LOG_LEVEL"] = "WARNING"
    if database_url is not None:
        env["DATABASE_URL"] = database_url
    return env


def coordinator(*args: str, database_url: str | None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "coordinator", *args], env=cli_env(database_url), cwd=ROOT,
                          capture_output=True, text=True, timeout=60 * UNIT)


async def acoordinator(*args: str, database_url: str | None) -> subprocess.CompletedProcess[str]:
    return await asyncio.to_thread(coordinator, *args, database_url=database_url)


async def query_json(dsn: str, *args: str) -> list[dict[str, Any]]:
    out = await acoordinator("query", *args, "--json", database_url=dsn)
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout)
    assert isinstance(data, list)
    return data


def one_line_error(out: subprocess.CompletedProcess[str], status: int) -> str:
    assert out.returncode == status, (out.returncode, out.stdout, out.stderr)
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1, out.stderr
    assert lines[0].startswith("coordinator: "), lines
    return lines[0]


def dead_dsn() -> str:
    return f"postgresql://postgres@127.0.0.1:{free_port()}/nothing"


async def schema_snapshot(conn: asyncpg.Connection) -> dict[str, Any]:
    """Everything a migration defines in `public` (minus the runner's own bookkeeping table)."""
    skip = "roomcast_migrations"
    columns = await conn.fetch(
        """SELECT table_name, column_name, ordinal_position, data_type, udt_name, character_maximum_length,
                  is_nullable, column_default
             FROM information_schema.columns WHERE table_schema = 'public' AND table_name <> $1
            ORDER BY table_name, ordinal_position""", skip)
    indexes = await conn.fetch(
        "SELECT tablename, indexname, indexdef FROM pg_indexes WHERE schemaname = 'public' AND tablename <> $1 "
        "ORDER BY 1, 2", skip)
    constraints = await conn.fetch(
        """SELECT c.conrelid::regclass::text AS tbl, c.conname, pg_get_constraintdef(c.oid) AS def
             FROM pg_constraint c JOIN pg_namespace n ON n.oid = c.connamespace
            WHERE n.nspname = 'public' AND c.conrelid::regclass::text <> $1 ORDER BY 1, 2""", skip)
    enums = await conn.fetch(
        """SELECT t.typname, array_agg(e.enumlabel ORDER BY e.enumsortorder) AS labels
             FROM pg_type t JOIN pg_enum e ON e.enumtypid = t.oid GROUP BY t.typname ORDER BY 1""")
    functions = await conn.fetch(
        """SELECT p.proname, pg_get_functiondef(p.oid) AS def FROM pg_proc p
             JOIN pg_namespace n ON n.oid = p.pronamespace WHERE n.nspname = 'public' ORDER BY 1""")
    return {name: [dict(r) for r in rows] for name, rows in
            [("columns", columns), ("indexes", indexes), ("constraints", constraints), ("enums", enums),
             ("functions", functions)]}


def psql_file(db: Database, path: Path, single_transaction: bool = True) -> None:
    args = ["psql", db.dsn, "-X", "-q", "-v", "ON_ERROR_STOP=1", "-f", str(path)]
    if single_transaction:
        args.insert(2, "--single-transaction")
    out = subprocess.run(args, capture_output=True, text=True, timeout=60 * UNIT, env=cli_env(None))
    assert out.returncode == 0, f"psql -f {path.name} failed:\n{out.stderr}"


# ---------------------------------------------------------------- the schema


async def test_migrated_schema_matches_the_requirements(db: Database, conn: asyncpg.Connection) -> None:
    assert await migrate(db.dsn) == VERSIONS
    for table, required in REQUIRED_COLUMNS.items():
        rows = await conn.fetch(
            """SELECT column_name, data_type, udt_name, character_maximum_length AS max_length, is_nullable
                 FROM information_schema.columns WHERE table_schema = 'public' AND table_name = $1""", table)
        actual = {r["column_name"]: r for r in rows}
        assert sorted(actual) == sorted(c for c, _, _ in required), f"{table}: columns differ from the requirements"
        for column, doc_type, note in required:
            row, want = actual[column], catalog_type(doc_type)
            where = f"{table}.{column} ({doc_type})"
            assert row["data_type"] == want["data_type"], (where, row["data_type"])
            if "max_length" in want:
                assert row["max_length"] == want["max_length"], (where, row["max_length"])
            if "udt_name" in want:
                assert row["udt_name"] == want["udt_name"], (where, row["udt_name"])
            if "labels" in want:
                labels = await conn.fetchval(
                    """SELECT array_agg(e.enumlabel ORDER BY e.enumsortorder) FROM pg_enum e
                         JOIN pg_type t ON t.oid = e.enumtypid WHERE t.typname = $1""", row["udt_name"])
                assert labels == want["labels"], (where, labels)
            if note == "nullable":
                assert row["is_nullable"] == "YES", f"{where} must be nullable"

    indexes = await conn.fetch(
        """SELECT t.relname AS tbl, i.relname AS name, ix.indisunique AS is_unique, ix.indisprimary AS is_primary,
                  ix.indpred IS NOT NULL AS partial,
                  array_agg(a.attname ORDER BY k.ord) AS columns
             FROM pg_index ix
             JOIN pg_class t ON t.oid = ix.indrelid
             JOIN pg_class i ON i.oid = ix.indexrelid
             JOIN pg_namespace n ON n.oid = t.relnamespace
             CROSS JOIN LATERAL unnest(ix.indkey::int2[]) WITH ORDINALITY AS k(attnum, ord)
             JOIN pg_attribute a ON a.attrelid = t.oid AND a.attnum = k.attnum
            WHERE n.nspname = 'public'
            GROUP BY t.relname, i.relname, ix.indisunique, ix.indisprimary, ix.indpred""")
    by_table: dict[str, list[asyncpg.Record]] = defaultdict(list)
    for ix in indexes:
        if not ix["partial"]:
            by_table[ix["tbl"]].append(ix)
    for table in REQUIRED_COLUMNS:
        assert any(ix["is_primary"] and list(ix["columns"]) == ["id"] for ix in by_table[table]), \
            f"{table}: id is not the primary key"
    for table, columns in REQUIRED_INDEXES.items():
        for column in columns:
            # An index helps lookups by a column only if that column leads it.
            assert any(ix["columns"][0] == column for ix in by_table[table]), f"no index led by {table}.{column}"
    for table, keys in REQUIRED_UNIQUE.items():
        for key in keys:
            assert any(ix["is_unique"] and tuple(ix["columns"]) == key for ix in by_table[table]), \
                f"{table}{key} is not unique"

    for sql, args in REQUIRED_QUERIES:  # the requirements' own queries run on this schema
        await conn.fetch(sql, *args)


async def test_0004_gives_completed_games_closed_before_it_their_status_back(
        db: Database, conn: asyncpg.Connection) -> None:
    links = supabase_migrations()
    v4 = next(i for i, link in enumerate(links) if link.name.endswith("_history_audit.sql"))
    for path in links[:v4]:
        psql_file(db, path)
    now = "(now() AT TIME ZONE 'utc')"
    # (room, status changes in order); every room was closed by the earlier code.
    games = {"won": ["in_progress", "completed"], "replayed": ["completed", "in_progress"], "never": [],
             "patched": ["completed"]}
    for room_id, changes in games.items():
        await conn.execute(f"""INSERT INTO game_rooms (room_id, created_at, updated_at, closed_at, game_type,
                                   max_players, status) VALUES ($1, {now}, {now}, {now}, 'quiz', 4, 'closed')""",
                           room_id)
        for seq, status in enumerate(changes, start=1):
            await conn.execute(f"""INSERT INTO game_events (room_id, event_type, "timestamp", payload, sequence_number)
                                   VALUES ($1, 'state_change', {now}, $2::jsonb, $3)""",
                               room_id, json.dumps({"status": status}), seq)
    # A later state_change without a status (a game_data patch) does not hide the completion.
    await conn.execute(f"""INSERT INTO game_events (room_id, event_type, "timestamp", payload, sequence_number)
                           VALUES ('patched', 'state_change', {now}, '{{"patch": {{"x": 1}}}}', 2)""")
    psql_file(db, links[v4])
    rows = {r["room_id"]: r["status"] for r in await conn.fetch("SELECT room_id, status::text AS status FROM game_rooms")}
    assert rows == {"won": "completed", "replayed": "closed", "never": "closed", "patched": "completed"}


async def test_apply_connection_drops_refused_sockets_and_keeps_device_metadata(
        db: Database, conn: asyncpg.Connection) -> None:
    await migrate(db.dsn)
    meta = json.dumps({"app": "quiz"})

    async def apply(kind: str, socket: str, meta_json: str | None, reconnects: int | None,
                    reason_status: str = "active") -> None:
        await conn.execute("SELECT roomcast_apply_connection($1, $2, 'dev-1', NULL, now()::timestamp, $3, NULL, "
                           "NULL, NULL, $4::jsonb, $5::int)", kind, socket, reason_status, meta_json, reconnects)

    await apply("connect", "s1", meta, 0)
    await apply("disconnect", "s1", None, None, "disconnected")
    await apply("connect", "s2", "{}", 1)  # a hello without metadata
    await apply("connect", "s3", None, 2)
    await apply("refused", "s3", None, None, "disconnected")  # refused after its connect was written
    await apply("refused", "s3", None, None, "disconnected")  # redelivered: nothing more
    rows = {r["socket_id"]: r["reconnect_count"] for r in await conn.fetch(
        "SELECT socket_id, reconnect_count FROM websocket_connections")}
    assert rows == {"s1": 0, "s2": 1}
    session = await conn.fetchrow("SELECT total_connections, total_reconnections, metadata::text AS metadata "
                                  "FROM device_sessions WHERE device_id = 'dev-1'")
    assert (session["total_connections"], session["total_reconnections"]) == (2, 1)
    assert json.loads(session["metadata"]) == {"app": "quiz"}
    # The 10-argument form (a coordinator not yet upgraded) follows the same rules.
    await conn.execute("SELECT roomcast_apply_connection('connect', 's4', 'dev-1', NULL, now()::timestamp, "
                       "'active', NULL, NULL, NULL, '{}'::jsonb)")
    assert await conn.fetchval("SELECT reconnect_count FROM websocket_connections WHERE socket_id = 's4'") == 2
    assert json.loads(await conn.fetchval("SELECT metadata::text FROM device_sessions")) == {"app": "quiz"}


async def test_migrating_twice_applies_nothing_the_second_time(db: Database, conn: asyncpg.Connection) -> None:
    assert await migrate(db.dsn) == VERSIONS
    before = await schema_snapshot(conn)
    assert await migrate(db.dsn) == []
    assert await schema_snapshot(conn) == before
    rows = await conn.fetch("SELECT version, name, checksum FROM roomcast_migrations ORDER BY version")
    assert [(r["version"], r["name"], r["checksum"]) for r in rows] == [
        (m.version, m.name, m.checksum) for m in migrations()]


async def test_concurrent_migrate_calls_apply_each_migration_once(db: Database, conn: asyncpg.Connection) -> None:
    results = await asyncio.gather(*(migrate(db.dsn) for _ in range(6)))
    assert sorted(v for applied in results for v in applied) == VERSIONS
    assert sum(1 for applied in results if applied) == 1  # the lock holder applies both; the rest wait
    assert await conn.fetchval("SELECT count(*) FROM roomcast_migrations") == len(VERSIONS)


async def test_concurrent_migrate_processes_apply_each_migration_once(db: Database,
                                                                     conn: asyncpg.Connection) -> None:
    # Hold the migration lock while four `coordinator migrate` processes start, so that all
    # four are provably waiting on it together; then let them race.
    await conn.execute("SELECT pg_advisory_lock($1)", LOCK_KEY)
    procs = [await asyncio.create_subprocess_exec(sys.executable, "-m", "coordinator", "migrate", env=cli_env(db.dsn),
                                                  cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
             for _ in range(4)]
    try:
        async def waiting() -> bool:
            n = await conn.fetchval(
                """SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted
                      AND database = (SELECT oid FROM pg_database WHERE datname = current_database())""")
            assert all(p.returncode is None for p in procs), "a migrate process exited early"
            return bool(n == 4)

        await wait_for(waiting, timeout=30 * UNIT, what="4 migrate processes waiting on the lock")
        await conn.execute("SELECT pg_advisory_unlock($1)", LOCK_KEY)
        outputs = [await asyncio.wait_for(p.communicate(), 60 * UNIT) for p in procs]
    finally:
        for p in procs:
            if p.returncode is None:
                p.kill()
                await p.wait()
    assert [p.returncode for p in procs] == [0, 0, 0, 0], outputs
    stdout = sorted(out.decode().strip() for out, _ in outputs)
    assert stdout == [f"applied: {', '.join(VERSIONS)}"] + ["schema up to date"] * 3, outputs
    rows = await conn.fetch("SELECT version FROM roomcast_migrations ORDER BY version")
    assert [r["version"] for r in rows] == VERSIONS


async def test_a_changed_migration_is_refused(db: Database, conn: asyncpg.Connection) -> None:
    await migrate(db.dsn)
    # As if 0001_initial.sql had been edited after it ran: the stored checksum no longer matches.
    await conn.execute("UPDATE roomcast_migrations SET checksum = 'edited' WHERE version = '0001'")
    with pytest.raises(MigrationError, match="0001_initial changed after it was applied"):
        await migrate(db.dsn)
    out = await acoordinator("migrate", database_url=db.dsn)
    assert "0001_initial changed after it was applied" in one_line_error(out, 2)


async def test_migrate_command(db: Database) -> None:
    out = await acoordinator("migrate", database_url=db.dsn)
    assert (out.returncode, out.stdout.strip()) == (0, f"applied: {', '.join(VERSIONS)}"), out.stderr
    out = await acoordinator("migrate", database_url=db.dsn)
    assert (out.returncode, out.stdout.strip()) == (0, "schema up to date"), out.stderr
    assert "DATABASE_URL" in one_line_error(await acoordinator("migrate", database_url=None), 2)
    assert "cannot reach Postgres" in one_line_error(await acoordinator("migrate", database_url=dead_dsn()), 1)


# ---------------------------------------------------------------- supabase layout


def supabase_migrations() -> list[Path]:
    return sorted((SUPABASE / "migrations").iterdir(), key=lambda p: p.name)


def test_supabase_migrations_are_links_to_the_roomcast_migrations() -> None:
    links = supabase_migrations()
    source = migrations()
    assert len(links) == len(source), "every roomcast migration needs exactly one supabase/migrations link"
    for link, m in zip(links, source, strict=True):
        match = re.fullmatch(r"(\d{14})_([a-z0-9_]+)\.sql", link.name)
        assert match, f"{link.name}: the Supabase CLI wants <14-digit timestamp>_<name>.sql"
        assert match.group(2) == m.name, (link.name, m.name)
        assert link.is_symlink(), f"{link.name} must be a symlink to roomcast/history/migrations, not a copy"
        target = os.readlink(link)
        assert not os.path.isabs(target), f"{link.name} -> {target} must be relative"
        assert link.resolve() == (SOURCE / f"{m.version}_{m.name}.sql").resolve(), (link.name, target)
        assert link.read_bytes() == (SOURCE / f"{m.version}_{m.name}.sql").read_bytes()
        assert link.read_text() == m.sql  # what importlib.resources gives `coordinator migrate`
    versions = [link.name[:14] for link in links]
    assert versions == sorted(set(versions)), "timestamps must be unique and in the roomcast order"
    config = tomllib.loads((SUPABASE / "config.toml").read_text())
    assert config["project_id"] and config["db"]["major_version"] >= 13
    rls = SUPABASE / "policies" / "roomcast_rls.sql"
    assert rls.is_file() and rls.parent.name != "migrations"


async def test_supabase_migrations_apply_with_psql_and_match_coordinator_migrate(
        db: Database, conn: asyncpg.Connection) -> None:
    for path in supabase_migrations():  # what `supabase db push` does: each file in order, one transaction each
        psql_file(db, path)
    pushed = await schema_snapshot(conn)
    other = Database(f"{db.name}_m", db.server.create_database(f"{db.name}_m"), db.server)
    await migrate(other.dsn)
    c2 = await asyncpg.connect(other.dsn)
    try:
        migrated = await schema_snapshot(c2)
    finally:
        await c2.close()
    assert pushed["columns"] and pushed["functions"]
    assert pushed == migrated
    # The optional policies also apply to a pushed schema (which has no roomcast_migrations table).
    await conn.execute(STUB_SUPABASE)
    psql_file(db, SUPABASE / "policies" / "roomcast_rls.sql", single_transaction=False)
    assert await conn.fetchval("SELECT count(*) FROM pg_tables WHERE schemaname = 'public' AND rowsecurity") >= 9
    # Every table the migrations make is covered (the archive and the room password hashes too).
    assert await conn.fetchval(
        "SELECT array_agg(tablename::text) FROM pg_tables WHERE schemaname = 'public' AND NOT rowsecurity") is None


def test_supabase_readme_repair_command_lists_every_migration() -> None:
    """The `migration repair` command of supabase/README.md marks every file as applied."""
    readme = (SUPABASE / "README.md").read_text()
    commands = re.findall(r"supabase migration repair --status applied((?: \d{14})+)", readme)
    assert len(commands) == 1, commands
    assert commands[0].split() == [link.name[:14] for link in supabase_migrations()]


async def test_coordinator_auto_migrate_on_a_pushed_schema_exits_1(db: Database) -> None:
    """What supabase/README.md says: AUTO_MIGRATE on a `supabase db push` schema stops the
    coordinator with status 1 (no retry loop)."""
    for path in supabase_migrations():
        psql_file(db, path)
    with redis_server() as redis:
        env = cli_env(db.dsn) | {"REDIS_URL": redis.url, "COORDINATOR_PORT": str(free_port()), "LOG_LEVEL": "INFO"}
        out = await asyncio.to_thread(subprocess.run, [sys.executable, "-m", "coordinator"], env=env, cwd=ROOT,
                                      capture_output=True, text=True, timeout=60 * UNIT)
    assert out.returncode == 1, (out.returncode, out.stderr[-2000:])
    assert "migrations failed" in out.stderr


# ---------------------------------------------------------------- row level security

STUB_SUPABASE = """
DO $$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'anon') THEN CREATE ROLE anon NOLOGIN NOINHERIT; END IF;
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'authenticated') THEN
        CREATE ROLE authenticated NOLOGIN NOINHERIT;
    END IF;
    -- Supabase's service_role has BYPASSRLS; this one has not, so only the policies let it in.
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'service_role') THEN
        CREATE ROLE service_role NOLOGIN NOINHERIT;
    END IF;
END $$;
CREATE SCHEMA auth;
CREATE FUNCTION auth.uid() RETURNS uuid LANGUAGE sql STABLE
    AS $$ SELECT nullif(current_setting('request.jwt.claim.sub', true), '')::uuid $$;
GRANT USAGE ON SCHEMA auth, public TO anon, authenticated, service_role;
-- Supabase's default privileges: new tables and functions in public are open to all three.
ALTER DEFAULT PRIVILEGES IN SCHEMA public GRANT ALL ON TABLES TO anon, authenticated, service_role;
ALTER DEFAULT PRIVILEGES IN SCHEMA public GRANT ALL ON FUNCTIONS TO anon, authenticated, service_role;
"""
SELECTS = {
    "websocket_connections": "SELECT socket_id FROM websocket_connections",
    "device_sessions": "SELECT device_id FROM device_sessions",
    "room_participants": "SELECT room_id || '/' || device_id FROM room_participants",
    "game_events": "SELECT room_id || '/' || sequence_number FROM game_events",
    "game_rooms": "SELECT room_id FROM game_rooms",
}
CALL_APPLY = ("SELECT roomcast_apply_connection('connect', 'sock-x', 'dev-x', NULL, now()::timestamp, 'active', "
              "NULL, NULL, NULL, NULL)")


async def as_role(conn: asyncpg.Connection, role: str | None, sub: uuid.UUID | None = None) -> dict[str, set[str]]:
    """What `role` (with auth.uid() = sub) reads from each table; RESET ROLE afterwards."""
    await conn.execute("RESET ROLE")
    await conn.execute("SELECT set_config('request.jwt.claim.sub', $1, false)", str(sub) if sub else "")
    if role:
        await conn.execute(f"SET ROLE {role}")
    try:
        return {table: {r[0] for r in await conn.fetch(sql)} for table, sql in SELECTS.items()}
    finally:
        await conn.execute("RESET ROLE")


async def test_rls_policies_restrict_supabase_roles(db: Database, conn: asyncpg.Connection) -> None:
    await conn.execute(STUB_SUPABASE)
    await migrate(db.dsn)
    alice, bob = uuid.uuid4(), uuid.uuid4()
    now = "(now() AT TIME ZONE 'utc')"
    await conn.execute(f"""INSERT INTO websocket_connections (socket_id, device_id, user_id, connected_at)
        VALUES ('s-alice', 'd-alice', $1, {now}), ('s-bob', 'd-bob', $2, {now}), ('s-anon', 'd-anon', NULL, {now})""",
                       alice, bob)
    await conn.execute(f"""INSERT INTO device_sessions (device_id, user_id, first_seen, last_seen)
        VALUES ('d-alice', $1, {now}, {now}), ('d-bob', $2, {now}, {now}), ('d-anon', NULL, {now}, {now})""",
                       alice, bob)
    await conn.execute(f"""INSERT INTO game_rooms (room_id, created_at, updated_at, created_by, game_type, max_players)
        VALUES ('r-alice', {now}, {now}, $1, 'quiz', 4), ('r-shared', {now}, {now}, $2, 'quiz', 4),
               ('r-bob', {now}, {now}, $2, 'quiz', 4), ('r-anon', {now}, {now}, gen_random_uuid(), 'quiz', 4)""",
                       alice, bob)
    await conn.execute(f"""INSERT INTO room_participants (room_id, device_id, user_id, joined_at, role)
        VALUES ('r-shared', 'd-alice', $1, {now}, 'player'), ('r-shared', 'd-bob', $2, {now}, 'host'),
               ('r-bob', 'd-bob', $2, {now}, 'host'), ('r-anon', 'd-anon', NULL, {now}, 'host')""", alice, bob)
    await conn.execute(f"""INSERT INTO game_events (room_id, event_type, user_id, "timestamp", sequence_number)
        VALUES ('r-shared', 'move', $1, {now}, 1), ('r-shared', 'move', $2, {now}, 2),
               ('r-bob', 'move', $2, {now}, 1), ('r-anon', 'move', NULL, {now}, 1)""", alice, bob)
    everything = await as_role(conn, None)
    assert {t: len(v) for t, v in everything.items()} == {
        "websocket_connections": 3, "device_sessions": 3, "room_participants": 4, "game_events": 4, "game_rooms": 4}

    # Why the file matters: with Supabase's default privileges and no RLS, anon reads everything.
    assert await as_role(conn, "anon") == everything

    rls = SUPABASE / "policies" / "roomcast_rls.sql"
    psql_file(db, rls, single_transaction=False)
    psql_file(db, rls, single_transaction=False)  # re-runnable

    assert await as_role(conn, "authenticated", alice) == {
        "websocket_connections": {"s-alice"},
        "device_sessions": {"d-alice"},
        "room_participants": {"r-shared/d-alice"},
        "game_events": {"r-shared/1"},
        "game_rooms": {"r-alice", "r-shared"},  # created it; takes part in it
    }
    assert await as_role(conn, "authenticated", bob) == {
        "websocket_connections": {"s-bob"},
        "device_sessions": {"d-bob"},
        "room_participants": {"r-shared/d-bob", "r-bob/d-bob"},
        "game_events": {"r-shared/2", "r-bob/1"},
        "game_rooms": {"r-shared", "r-bob"},
    }
    assert await as_role(conn, "authenticated", None) == {t: set() for t in SELECTS}  # no sub: nothing
    assert await as_role(conn, "service_role") == everything
    assert await as_role(conn, None) == everything  # the owner (the coordinator) is not restricted

    async def denied(role: str, sql: str) -> None:
        await conn.execute(f"SET ROLE {role}")
        try:
            with pytest.raises(asyncpg.InsufficientPrivilegeError):
                await conn.execute(sql)
        finally:
            await conn.execute("RESET ROLE")

    for sql in SELECTS.values():  # anon: no privileges at all, not merely no rows
        await denied("anon", sql)
    await conn.execute("SELECT set_config('request.jwt.claim.sub', $1, false)", str(alice))
    for role in ("anon", "authenticated"):
        await denied(role, "INSERT INTO game_rooms (room_id, created_at, updated_at, game_type, max_players) "
                           "VALUES ('r-new', now(), now(), 'quiz', 2)")
        await denied(role, "UPDATE websocket_connections SET status = 'timeout'")
        await denied(role, "DELETE FROM game_events")
        await denied(role, "SELECT * FROM roomcast_flush_state")
        await denied(role, "SELECT * FROM roomcast_room_access")  # password hashes: service_role only
        await denied(role, "SELECT * FROM websocket_connections_archive")
        await denied(role, CALL_APPLY)
    await conn.execute("SET ROLE service_role")
    try:
        await conn.execute(CALL_APPLY)
        await conn.execute("INSERT INTO game_rooms (room_id, created_at, updated_at, game_type, max_players) "
                           "VALUES ('r-new', now(), now(), 'quiz', 2)")
    finally:
        await conn.execute("RESET ROLE")
    assert await conn.fetchval("SELECT count(*) FROM websocket_connections WHERE socket_id = 'sock-x'") == 1


# ---------------------------------------------------------------- coordinator query

ago = timedelta  # the data below is placed relative to the moment it is inserted


# (socket_id, device_id, connected this long ago, status)
CONNECTIONS = [
    ("s01", "dev-a", ago(days=40), "disconnected"),  # outside the 30-day window
    ("s02", "dev-a", ago(days=30, hours=2), "disconnected"),  # just outside
    ("s03", "dev-a", ago(days=29, hours=22), "disconnected"),  # just inside
    ("s04", "dev-a", ago(days=3), "timeout"),
    ("s05", "dev-b", ago(days=3, minutes=5), "disconnected"),
    ("s06", "dev-a", ago(days=1), "disconnected"),
    ("s07", "dev-b", ago(days=1, hours=1), "active"),
    ("s08", "dev-c", ago(days=1, minutes=30), "disconnected"),
    ("s09", "dev-a", ago(minutes=10), "active"),
    ("s10", "dev-c", ago(minutes=5), "active"),
    ("s11", "dev-c", ago(minutes=20), "disconnected"),
]
# (room_id, game_type, status, created this long ago)
ROOMS = [
    ("quiz-1", "quiz", "completed", ago(hours=9)),
    ("quiz-2", "quiz", "completed", ago(hours=8)),
    ("quiz-3", "quiz", "active", ago(hours=7)),
    ("quiz-4", "quiz", "closed", ago(hours=6)),
    ("puzzle-1", "puzzle", "waiting", ago(hours=5)),
    ("puzzle-2", "puzzle", "in_progress", ago(hours=4)),
    ("puzzle-3", "puzzle", "completed", ago(hours=3)),
    ("trivia-1", "trivia", "active", ago(hours=2)),
]
# (room_id, device_id, role, status, joined this long ago)
PARTICIPANTS = [
    ("quiz-3", "alice", "host", "active", ago(hours=7)),
    ("quiz-3", "bob", "player", "active", ago(hours=6)),
    ("quiz-3", "carol", "player", "left", ago(hours=6, minutes=30)),
    ("quiz-3", "dave", "spectator", "disconnected", ago(hours=5)),
    ("trivia-1", "erin", "host", "active", ago(hours=2)),
]


async def seed(conn: asyncpg.Connection, now: datetime) -> None:
    for socket_id, device, age, status in CONNECTIONS:
        at = now - age
        await conn.execute(
            """INSERT INTO websocket_connections (socket_id, device_id, user_id, connected_at, disconnected_at,
                                                  last_heartbeat, ip_address, user_agent, metadata, status)
               VALUES ($1, $2, $3, $4, $5, $4, '127.0.0.1', 'pytest', $6::jsonb, $7)""",
            socket_id, device, uuid.uuid4() if device == "dev-c" else None, at,
            None if status == "active" else at + timedelta(minutes=1),
            json.dumps({"socket": socket_id, "tags": ["t"]}), status)
    await conn.execute(
        """INSERT INTO device_sessions (device_id, first_seen, last_seen, total_connections, total_reconnections)
           VALUES ('dev-a', $1, $2, 6, 5), ('dev-b', $1, $2, 2, 1)""", now - ago(days=40), now)
    for room_id, game_type, status, age in ROOMS:
        at = now - age
        await conn.execute(
            """INSERT INTO game_rooms (room_id, created_at, updated_at, closed_at, created_by, game_type, game_data,
                                       status, max_players, current_players)
               VALUES ($1, $2, $2, $3, $4, $5, $6::jsonb, $7, 8, 2)""",
            room_id, at, at if status == "closed" else None, uuid.uuid4(), game_type,
            json.dumps({"round": 1, "name": room_id}), status)
    for room_id, device, role, status, age in PARTICIPANTS:
        at = now - age
        await conn.execute(
            """INSERT INTO room_participants (room_id, socket_id, device_id, joined_at, left_at, role, status)
               VALUES ($1, $2, $3, $4, $5, $6, $7)""",
            room_id, f"sock-{device}", device, at, at + timedelta(minutes=1) if status == "left" else None, role,
            status)


def iso(at: datetime) -> str:
    return at.isoformat() + "Z"


@dataclass
class Seeded:
    dsn: str
    name: str
    now: datetime  # when the rows were inserted (UTC)


@pytest.fixture
async def seeded(db: Database, conn: asyncpg.Connection) -> Seeded:
    await migrate(db.dsn)
    now = datetime.now(UTC).replace(tzinfo=None, microsecond=0)
    await seed(conn, now)
    return Seeded(db.dsn, db.name, now)


async def test_query_reconnections(seeded: Seeded) -> None:
    assert await query_json(seeded.dsn, "reconnections", "dev-a") == [
        {"device_id": "dev-a", "reconnect_count": 4, "total_connections": 6, "total_reconnections": 5}]
    assert await query_json(seeded.dsn, "reconnections", "dev-c") == [
        {"device_id": "dev-c", "reconnect_count": 2, "total_connections": 3, "total_reconnections": None}]
    assert await query_json(seeded.dsn, "reconnections", "nobody") == [
        {"device_id": "nobody", "reconnect_count": 0, "total_connections": 0, "total_reconnections": None}]


async def test_query_active_connections(seeded: Seeded) -> None:
    rows = await query_json(seeded.dsn, "active-connections")
    assert [r["socket_id"] for r in rows] == ["s10", "s09", "s07"]  # newest first
    by_socket = {c[0]: c for c in CONNECTIONS}
    for r in rows:
        assert r["status"] == "active" and r["disconnected_at"] is None
        assert r["connected_at"] == iso(seeded.now - by_socket[r["socket_id"]][2])
        assert datetime.fromisoformat(r["connected_at"]).tzinfo is not None  # explicit UTC
        assert str(uuid.UUID(r["id"])) == r["id"]
        assert r["metadata"] == {"socket": r["socket_id"], "tags": ["t"]}  # jsonb as JSON, not a string
    assert rows[0]["user_id"] is not None and str(uuid.UUID(rows[0]["user_id"])) == rows[0]["user_id"]
    assert [r["socket_id"] for r in await query_json(seeded.dsn, "active-connections", "--limit", "2")] == [
        "s10", "s09"]


async def test_query_active_rooms(seeded: Seeded) -> None:
    rows = await query_json(seeded.dsn, "active-rooms")
    assert [r["room_id"] for r in rows] == ["trivia-1", "quiz-3"]  # status 'active' only, newest first
    assert rows[0]["game_data"] == {"round": 1, "name": "trivia-1"}
    assert rows[0]["created_at"] == iso(seeded.now - ago(hours=2))
    open_rooms = await query_json(seeded.dsn, "active-rooms", "--all-open")
    assert [r["room_id"] for r in open_rooms] == [
        "trivia-1", "puzzle-3", "puzzle-2", "puzzle-1", "quiz-3", "quiz-2", "quiz-1"]  # all but closed quiz-4
    assert Counter(r["status"] for r in open_rooms) == {"completed": 3, "active": 2, "waiting": 1, "in_progress": 1}


async def test_query_participants(seeded: Seeded) -> None:
    rows = await query_json(seeded.dsn, "participants", "quiz-3")
    assert [(r["device_id"], r["role"], r["status"]) for r in rows] == [
        ("alice", "host", "active"), ("bob", "player", "active")]
    assert rows[0]["joined_at"] == iso(seeded.now - ago(hours=7)) and rows[0]["left_at"] is None
    assert await query_json(seeded.dsn, "participants", "no-such-room") == []


def expected_daily(now: datetime, days: int) -> list[dict[str, Any]]:
    """The daily-stats rows for CONNECTIONS inserted at `now`, computed here in Python."""
    devices: dict[date, list[str]] = defaultdict(list)
    for _, device, age, _ in CONNECTIONS:
        if age < timedelta(days=days):
            devices[(now - age).date()].append(device)
    return [{"date": d.isoformat(), "total_connections": len(devs), "unique_devices": len(set(devs))}
            for d, devs in sorted(devices.items(), reverse=True)]


async def test_query_daily_stats(seeded: Seeded, conn: asyncpg.Connection) -> None:
    want = expected_daily(seeded.now, 30)
    assert sum(w["total_connections"] for w in want) == 9  # s03..s11
    assert await query_json(seeded.dsn, "daily-stats") == want
    assert await query_json(seeded.dsn, "daily-stats", "--days", "2") == expected_daily(seeded.now, 2)

    # connected_at holds UTC; a session TimeZone far from UTC must not move the window.
    await conn.execute(f'ALTER DATABASE "{seeded.name}" SET timezone TO \'Pacific/Kiritimati\'')  # UTC+14
    assert await query_json(seeded.dsn, "daily-stats") == want
    # ...as it does for the requirement's literal `connected_at > NOW() - INTERVAL '30 days'`:
    # s03 (29 days 22 hours ago) is read as 14 hours older and falls out.
    probe = await asyncpg.connect(seeded.dsn)
    try:
        literal = await probe.fetchval(
            "SELECT COUNT(*) FROM websocket_connections WHERE connected_at > NOW() - INTERVAL '30 days'")
    finally:
        await probe.close()
    assert literal == 8


async def test_query_completion_rate(seeded: Seeded) -> None:
    assert await query_json(seeded.dsn, "completion-rate") == [
        {"game_type": "puzzle", "total_games": 3, "completed_games": 1, "completion_rate": 0.3333},
        {"game_type": "quiz", "total_games": 4, "completed_games": 2, "completion_rate": 0.5},
        {"game_type": "trivia", "total_games": 1, "completed_games": 0, "completion_rate": 0.0},
    ]


async def test_query_table_output(seeded: Seeded) -> None:
    out = await acoordinator("query", "completion-rate", database_url=seeded.dsn)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0].split() == ["game_type", "total_games", "completed_games", "completion_rate"]
    assert set(lines[1].replace(" ", "")) == {"-"}
    assert [line.split() for line in lines[2:5]] == [
        ["puzzle", "3", "1", "0.3333"], ["quiz", "4", "2", "0.5"], ["trivia", "1", "0", "0.0"]]
    assert lines[5] == "(3 rows)"
    # Columns line up: every row starts each column where the header does.
    starts = [m.start() for m in re.finditer(r"\S+", lines[0])]
    for line in lines[2:5]:
        cells = list(re.finditer(r"\S+", line))
        assert cells[0].start() == starts[0] and all(c.end() == lines[0].find(h) + len(h) for c, h in
                                                     zip(cells[1:], lines[0].split()[1:], strict=True))

    out = await acoordinator("query", "participants", "nobody-here", database_url=seeded.dsn)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0].split()[:3] == ["id", "room_id", "socket_id"] and lines[-1] == "(0 rows)"

    out = await acoordinator("query", "reconnections", "dev-a", database_url=seeded.dsn)
    assert out.stdout.splitlines()[0].split() == [
        "device_id", "reconnect_count", "total_connections", "total_reconnections"]
    assert out.stdout.splitlines()[2].split() == ["dev-a", "4", "6", "5"]


async def test_query_errors(db: Database) -> None:
    assert "DATABASE_URL" in one_line_error(await acoordinator("query", "daily-stats", database_url=None), 2)
    assert "DATABASE_URL" in one_line_error(
        await acoordinator("query", "daily-stats", database_url="mysql://nope"), 2)
    assert "cannot connect to Postgres" in one_line_error(
        await acoordinator("query", "active-rooms", database_url=dead_dsn()), 1)
    # Reachable, but the schema was never migrated.
    assert "coordinator migrate" in one_line_error(
        await acoordinator("query", "completion-rate", database_url=db.dsn), 1)
    out = await acoordinator("query", database_url=db.dsn)  # no query name: a usage error
    assert out.returncode == 2 and "NAME" in out.stderr
    out = await acoordinator("query", "reconnections", database_url=db.dsn)  # DEVICE_ID missing
    assert out.returncode == 2 and "DEVICE_ID" in out.stderr
