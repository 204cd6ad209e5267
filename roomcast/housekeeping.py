"""Housekeeping that must happen once per deployment: the coordinator runs it for a cluster,
the embedded gateway for itself. One implementation for both, so they cannot drift:

- `migrate_when_reachable`: apply the schema migrations at start (AUTO_MIGRATE), retrying
  while Postgres is unreachable; a schema that cannot be migrated raises.
- `cleanup_pass`: the requirements' cleanup jobs ("close abandoned rooms", "archive old
  connections (> 30 days)", plus personal-data retention), counted per action.
- `room_counts` / `show_room_counts`: rooms by status and open rooms by game type, for the
  dashboards (bounded game-type labels).
- `stop_tasks`: cancel background tasks and wait for them, swallowing their ends.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable

import asyncpg
from prometheus_client import Gauge

from roomcast.history.jobs import archive_old_connections, strip_old_personal_data
from roomcast.history.migrate import migrate
from roomcast.history.postgres import TRANSIENT
from roomcast.metrics_util import set_bounded
from roomcast.protocol import ROOM_STATUSES
from roomcast.settings import Settings

log = logging.getLogger("roomcast.housekeeping")

# close_abandoned(idle_before_ms, now_ms) -> ids of the rooms it closed
CloseAbandoned = Callable[[int, int], Awaitable[list[str]]]
# count(action, n): what a job did (a metric)
Count = Callable[[str, int], None]


async def migrate_when_reachable(database_url: str) -> list[str]:
    """Apply pending migrations; return their versions. Retries (with backoff, up to 5 s
    apart) while Postgres is unreachable; any other failure propagates."""
    delay = 0.5
    while True:
        try:
            applied = await migrate(database_url)
        except TRANSIENT as exc:
            log.warning("postgres not ready for migrations (%s); retrying in %.1fs", exc, delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)
            continue
        if applied:
            log.info("applied migrations %s", ", ".join(applied))
        return applied


async def cleanup_pass(settings: Settings, now_ms: int, close_abandoned: CloseAbandoned,
                       pool: asyncpg.Pool | None, count: Count) -> None:
    """One run of the cleanup jobs. Rooms: close those with no connected member and no
    event for ABANDONED_ROOM_AFTER. With history (`pool`): archive connection rows older
    than CONNECTION_RETENTION_DAYS, strip personal fields older than
    PERSONAL_DATA_RETENTION_DAYS."""
    closed = await close_abandoned(now_ms - settings.abandoned_room_ms, now_ms)
    if closed:
        log.info("cleanup: closed %d abandoned rooms: %s", len(closed), ", ".join(closed[:20]))
        count("abandoned_rooms", len(closed))
    if pool is not None:
        count("old_connections", await archive_old_connections(pool, settings.connection_retention_days))
        count("personal_data", await strip_old_personal_data(pool, settings.personal_data_retention_days))


def room_counts(rooms: Iterable[tuple[str, str]]) -> tuple[dict[str, int], Counter[str]]:
    """From (status, game_type) of every room: rooms per status, open rooms per game type."""
    by_status = dict.fromkeys(ROOM_STATUSES, 0)
    open_by_type: Counter[str] = Counter()
    for status, game_type in rooms:
        by_status[status] = by_status.get(status, 0) + 1
        if status != "closed":
            open_by_type[game_type] += 1
    return by_status, open_by_type


def show_room_counts(rooms: Iterable[tuple[str, str]], by_status_gauge: Gauge, by_type_gauge: Gauge,
                     types_seen: set[str]) -> set[str]:
    """Set `roomcast_rooms{status}` and `roomcast_rooms_by_game_type{game_type}`; returns the
    game-type labels now in use (pass it back next time)."""
    by_status, open_by_type = room_counts(rooms)
    for status, n in by_status.items():
        by_status_gauge.labels(status).set(n)
    return set_bounded(by_type_gauge, open_by_type, types_seen)


async def stop_tasks(tasks: Iterable[asyncio.Task[object]]) -> None:
    """Cancel background tasks and wait until each has ended (however it ends)."""
    tasks = list(tasks)
    for task in tasks:
        task.cancel()
    for task in tasks:
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task
