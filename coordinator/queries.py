"""`coordinator query NAME`: the requirements' "Queries Needed", run against DATABASE_URL.

Each query is one read-only SQL statement, written next to the requirement it implements.
Its rows are printed as an aligned text table with a header, or with `--json` as a JSON
array of objects: timestamps as ISO-8601 in UTC with a trailing `Z` (the schema stores UTC
`timestamp`s), dates as `YYYY-MM-DD`, UUIDs as strings, jsonb columns as JSON values.

Exit status: 0 done; 1 the database could not be reached or the query failed (for
example the schema is not migrated); 2 a configuration error (DATABASE_URL missing or
malformed, bad arguments). Errors are one line on stderr.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any, TextIO

import asyncpg
import orjson

CONNECT_TIMEOUT = 10.0  # seconds; a blackholed host fails instead of hanging
TABLE_CELL_MAX = 60  # characters of one table cell; --json shows full values
OPEN_STATUSES = ("active", "waiting", "in_progress", "completed")  # every room_status but 'closed'

# The requirements' query text is quoted in each comment; where ours differs, the comment says why.

# "Get reconnection count for device":
#   SELECT COUNT(*) as reconnect_count FROM websocket_connections
#   WHERE device_id = ? AND status = 'disconnected';
# plus the device's connection rows of any status, and its lifetime device_sessions counter
# (connection rows older than CONNECTION_RETENTION_DAYS are deleted; device_sessions is kept).
SQL_RECONNECTIONS = """
SELECT $1::varchar AS device_id,
       (SELECT COUNT(*) FROM websocket_connections
         WHERE device_id = $1::varchar AND status = 'disconnected') AS reconnect_count,
       (SELECT COUNT(*) FROM websocket_connections WHERE device_id = $1::varchar) AS total_connections,
       (SELECT total_reconnections FROM device_sessions WHERE device_id = $1::varchar) AS total_reconnections
"""

# "Get active connections": SELECT * FROM websocket_connections WHERE status = 'active'
# ORDER BY connected_at DESC;   (LIMIT NULL is no limit)
SQL_ACTIVE_CONNECTIONS = """
SELECT * FROM websocket_connections
 WHERE status = 'active'
 ORDER BY connected_at DESC
 LIMIT $1::bigint
"""

# "Get active rooms": SELECT * FROM game_rooms WHERE status = 'active' ORDER BY created_at DESC;
SQL_ACTIVE_ROOMS = """
SELECT * FROM game_rooms
 WHERE status = 'active'
 ORDER BY created_at DESC
 LIMIT $1::bigint
"""
# --all-open: every room not closed yet, whatever its status (rooms take joins and events in
# all of them; new rooms start as 'waiting', so the requirement's query misses them). A room
# that closed after its game completed keeps status 'completed' (so the completion rate
# counts it): closed_at, not the status, says whether a room is closed.
SQL_OPEN_ROOMS = """
SELECT * FROM game_rooms
 WHERE closed_at IS NULL
 ORDER BY created_at DESC
 LIMIT $1::bigint
"""

# "Get room participants": SELECT * FROM room_participants WHERE room_id = ? AND status = 'active';
# (ordered by joined_at so the output is stable)
SQL_PARTICIPANTS = """
SELECT * FROM room_participants
 WHERE room_id = $1::varchar AND status = 'active'
 ORDER BY joined_at, device_id
"""

# "Daily connection stats":
#   SELECT DATE(connected_at) as date, COUNT(*) as total_connections,
#          COUNT(DISTINCT device_id) as unique_devices
#   FROM websocket_connections WHERE connected_at > NOW() - INTERVAL '30 days'
#   GROUP BY DATE(connected_at) ORDER BY date DESC;
# connected_at is a UTC `timestamp`, while NOW() is a timestamptz: comparing them converts
# connected_at with the session's TimeZone, which shifts the window by the UTC offset. The
# window is therefore measured from now() in UTC.
SQL_DAILY_STATS = """
SELECT DATE(connected_at) AS date,
       COUNT(*) AS total_connections,
       COUNT(DISTINCT device_id) AS unique_devices
  FROM websocket_connections
 WHERE connected_at > (now() AT TIME ZONE 'UTC') - make_interval(days => $1::int)
 GROUP BY DATE(connected_at)
 ORDER BY date DESC
"""

# "Game completion rate":
#   SELECT game_type, COUNT(*) as total_games,
#          SUM(CASE WHEN status = 'completed' THEN 1 ELSE 0 END) as completed_games
#   FROM game_rooms GROUP BY game_type;
# plus completion_rate = completed_games / total_games (0..1, 4 decimals), ordered by game_type.
# A completed game keeps status 'completed' after its room closes, so this counts it.
SQL_COMPLETION_RATE = """
SELECT game_type,
       COUNT(*) AS total_games,
       SUM(CASE WHEN status = 'completed' THEN 1 ELSE 0 END) AS completed_games,
       round(SUM(CASE WHEN status = 'completed' THEN 1 ELSE 0 END)::numeric / COUNT(*), 4) AS completion_rate
  FROM game_rooms
 GROUP BY game_type
 ORDER BY game_type
"""


@dataclass(frozen=True)
class Query:
    name: str
    summary: str  # one line, for the list of queries
    help: str  # the query's own --help
    sql: Callable[[argparse.Namespace], str]
    params: Callable[[argparse.Namespace], tuple[Any, ...]]
    add_arguments: Callable[[argparse.ArgumentParser], None]


def _no_arguments(parser: argparse.ArgumentParser) -> None:
    pass


def _device_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("query_device_id", metavar="DEVICE_ID", help="the device_id to count for")


def _room_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("query_room_id", metavar="ROOM_ID", help="the room_id whose participants to list")


def _positive(raw: str) -> int:
    try:
        value = int(raw)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{raw!r} is not an integer") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{raw!r} must be at least 1")
    return value


def _limit_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--limit", dest="query_limit", metavar="N", type=_positive, default=None,
                        help="print at most N rows (default: all)")


def _rooms_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--all-open", dest="query_all_open", action="store_true",
                        help="every room not closed (active, waiting, in_progress, completed), "
                             "not only status 'active'")
    _limit_argument(parser)


def _days_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--days", dest="query_days", metavar="N", type=_positive, default=30,
                        help="how many days back from now (UTC) to count (default 30)")


QUERIES: tuple[Query, ...] = (
    Query("reconnections", "reconnection count of a device",
          "reconnect_count of a device (its connections with status 'disconnected', as the requirements "
          "define it), its total_connections (connection rows of any status) and "
          "device_sessions.total_reconnections (lifetime; empty if the device is unknown)",
          lambda a: SQL_RECONNECTIONS, lambda a: (a.query_device_id,), _device_argument),
    Query("active-connections", "connections with status 'active'", "connections with status 'active', newest first",
          lambda a: SQL_ACTIVE_CONNECTIONS, lambda a: (a.query_limit,), _limit_argument),
    Query("active-rooms", "rooms with status 'active' (or every room not closed)",
          "rooms with status 'active', newest first (--all-open: every room not closed)",
          lambda a: SQL_OPEN_ROOMS if a.query_all_open else SQL_ACTIVE_ROOMS, lambda a: (a.query_limit,),
          _rooms_arguments),
    Query("participants", "active participants of a room", "participants of a room with status 'active'",
          lambda a: SQL_PARTICIPANTS, lambda a: (a.query_room_id,), _room_argument),
    Query("daily-stats", "connections and devices per day",
          "total_connections and unique_devices per UTC day over the last 30 days (--days), newest day first",
          lambda a: SQL_DAILY_STATS, lambda a: (a.query_days,), _days_argument),
    Query("completion-rate", "share of completed rooms per game_type",
          "rooms per game_type: total_games, completed_games (status 'completed') and "
          "completion_rate (completed_games / total_games)",
          lambda a: SQL_COMPLETION_RATE, lambda a: (), _no_arguments),
)
BY_NAME = {q.name: q for q in QUERIES}


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add `query NAME [args] [--json]` to the coordinator's subcommands.

    Every dest starts with `query_`: the coordinator passes all parsed arguments to
    Settings.load as overrides, so they must never share a name with a setting.
    """
    parser = sub.add_parser(
        "query", help="run an analytics query against DATABASE_URL and print the rows",
        description="Run one of the requirements' \"Queries Needed\" against DATABASE_URL (read-only) and print "
                    "an aligned table, or with --json a JSON array of objects (UTC ISO-8601 timestamps). Exit "
                    "status: 0 done, 1 database unreachable or query failed, 2 configuration error.")
    names = parser.add_subparsers(dest="query_name", metavar="NAME", required=True)
    for q in QUERIES:
        p = names.add_parser(q.name, help=q.summary, description=q.help)
        q.add_arguments(p)
        p.add_argument("--json", dest="query_json", action="store_true",
                       help="print a JSON array of objects instead of a table")


# ---------------------------------------------------------------- rendering (pure)


def jsonable(value: Any) -> Any:
    """A column value as plain JSON data: timestamps ISO-8601 UTC, UUIDs and dates as strings."""
    if isinstance(value, datetime):
        if value.tzinfo is not None:
            value = value.astimezone(UTC).replace(tzinfo=None)
        return value.isoformat() + "Z"
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, Decimal):
        return float(value)
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    if isinstance(value, str | int | float | bool) or value is None:
        return value
    return str(value)  # enum labels arrive as str; anything else prints as its text


def render_json(columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    data = [{c: jsonable(v) for c, v in zip(columns, row, strict=True)} for row in rows]
    return orjson.dumps(data, option=orjson.OPT_INDENT_2).decode()


def _cell(value: Any) -> str:
    value = jsonable(value)
    if value is None:
        return ""
    if isinstance(value, dict | list):
        text = orjson.dumps(value).decode()
    elif isinstance(value, bool):
        text = "true" if value else "false"
    else:
        text = str(value)
    text = text.replace("\n", " ")
    return text if len(text) <= TABLE_CELL_MAX else text[: TABLE_CELL_MAX - 1] + "…"


def _is_numeric(values: Sequence[Any]) -> bool:
    return bool(values) and all(isinstance(v, int | float | Decimal) and not isinstance(v, bool) for v in values)


def render_table(columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """An aligned plain-text table: header, rule, rows (numbers right-aligned), row count."""
    cells = [[_cell(v) for v in row] for row in rows]
    numeric = [_is_numeric([row[i] for row in rows if row[i] is not None]) for i in range(len(columns))]
    widths = [max([len(c), *(len(r[i]) for r in cells)]) for i, c in enumerate(columns)]

    def line(values: Sequence[str], right: Sequence[bool]) -> str:
        parts = [v.rjust(w) if r else v.ljust(w) for v, w, r in zip(values, widths, right, strict=True)]
        return "  ".join(parts).rstrip()

    out = [line(columns, [False] * len(columns)), "  ".join("-" * w for w in widths)]
    out += [line(r, numeric) for r in cells]
    out.append(f"({len(rows)} row{'' if len(rows) == 1 else 's'})")
    return "\n".join(out)


# ---------------------------------------------------------------- running


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text or type(exc).__name__


def _error(message: str, status: int, err: TextIO) -> int:
    print(f"coordinator: {message}", file=err)
    return status


async def connect(dsn: str) -> asyncpg.Connection:
    """Connect for one query; jsonb columns decode to JSON values.

    Raises ValueError for a malformed DSN; OSError, TimeoutError or asyncpg errors otherwise.
    """
    # statement_cache_size=0, and prepare + fetch in one transaction (see `fetch`): this also
    # works through a transaction-mode pooler (Supabase's port 6543).
    conn = await asyncpg.connect(dsn, timeout=CONNECT_TIMEOUT, statement_cache_size=0)
    try:
        await conn.set_type_codec("jsonb", schema="pg_catalog", encoder=lambda v: orjson.dumps(v).decode(),
                                  decoder=orjson.loads, format="text")
    except BaseException:
        await conn.close()
        raise
    return conn


async def fetch(conn: asyncpg.Connection, sql: str, params: Sequence[Any]) -> tuple[list[str], list[asyncpg.Record]]:
    """Run one statement in a read-only transaction; return its column names (known even
    when there are no rows, for the table header) and its rows."""
    async with conn.transaction(readonly=True):
        stmt = await conn.prepare(sql)
        columns = [a.name for a in stmt.get_attributes()]
        rows = await stmt.fetch(*params)
    return columns, rows


async def run(dsn: str, args: argparse.Namespace, out: TextIO | None = None, err: TextIO | None = None) -> int:
    """Run the query named by `args.query_name` and print it; return the exit status."""
    out = out or sys.stdout
    err = err or sys.stderr
    query = BY_NAME[args.query_name]
    try:
        conn = await connect(dsn)
    except ValueError as exc:  # includes asyncpg.ClientConfigurationError
        return _error(f"invalid DATABASE_URL: {_one_line(exc)}", 2, err)
    except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
        return _error(f"cannot connect to Postgres: {_one_line(exc)}", 1, err)
    try:
        columns, rows = await fetch(conn, query.sql(args), query.params(args))
    except asyncpg.UndefinedTableError as exc:
        return _error(f"{_one_line(exc)} (is the schema migrated? run `coordinator migrate`)", 1, err)
    except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
        return _error(f"query {query.name} failed: {_one_line(exc)}", 1, err)
    finally:
        with contextlib.suppress(OSError, TimeoutError, asyncpg.InterfaceError):
            await conn.close(timeout=CONNECT_TIMEOUT)
    text = render_json(columns, rows) if args.query_json else render_table(columns, rows)
    try:
        out.write(text + "\n")
        out.flush()
    except BrokenPipeError:  # `coordinator query ... | head`: stop quietly
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, out.fileno())
    return 0
