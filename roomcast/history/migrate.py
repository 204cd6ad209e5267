"""Apply the SQL migrations in roomcast/history/migrations/ once each, safely under concurrency.

Every run takes a session-level advisory lock, so two `coordinator migrate` processes
started together apply each file exactly once: the second waits, then finds nothing to
do. Each migration runs in its own transaction together with its row in
`roomcast_migrations` (version, name, checksum, applied_at). A file whose checksum no
longer matches what ran is refused: migrations are append-only.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from importlib import resources

import asyncpg

log = logging.getLogger("roomcast.migrate")
LOCK_KEY = 0x726F6F6D63617374  # "roomcast"


@dataclass(frozen=True)
class Migration:
    version: str
    name: str
    sql: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()


class MigrationError(RuntimeError):
    pass


def migrations() -> list[Migration]:
    out = []
    for entry in sorted(resources.files("roomcast.history.migrations").iterdir(), key=lambda e: e.name):
        if entry.name.endswith(".sql"):
            version, _, rest = entry.name.partition("_")
            out.append(Migration(version, rest.removesuffix(".sql"), entry.read_text()))
    return out


async def migrate(dsn: str) -> list[str]:
    """Apply pending migrations; return the versions applied by this call."""
    conn = await asyncpg.connect(dsn)
    applied_now: list[str] = []
    try:
        await conn.execute("SELECT pg_advisory_lock($1)", LOCK_KEY)
        try:
            await conn.execute(
                """CREATE TABLE IF NOT EXISTS roomcast_migrations (
                       version    text PRIMARY KEY,
                       name       text NOT NULL,
                       checksum   text NOT NULL,
                       applied_at timestamp NOT NULL DEFAULT (now() AT TIME ZONE 'utc'))"""
            )
            done = {r["version"]: r["checksum"] for r in await conn.fetch(
                "SELECT version, checksum FROM roomcast_migrations")}
            for m in migrations():
                if m.version in done:
                    if done[m.version] != m.checksum:
                        raise MigrationError(f"migration {m.version}_{m.name} changed after it was applied")
                    continue
                async with conn.transaction():
                    await conn.execute(m.sql)
                    await conn.execute(
                        "INSERT INTO roomcast_migrations (version, name, checksum) VALUES ($1, $2, $3)",
                        m.version, m.name, m.checksum)
                log.info("applied migration %s_%s", m.version, m.name)
                applied_now.append(m.version)
        finally:
            await conn.execute("SELECT pg_advisory_unlock($1)", LOCK_KEY)
    finally:
        await conn.close()
    return applied_now
