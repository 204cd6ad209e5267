"""The Batcher's ops: what a call adds to a batch (a redis-py command, a script run, a raw
command), and how a failed call's reply is read (did it run? was the script forgotten?).
roomcast/redis/batch.py re-exports them: `from roomcast.redis.batch import Batcher, cmd, raw`."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from typing import Any, Protocol

from redis.asyncio import RedisCluster
from redis.asyncio.client import Pipeline
from redis.asyncio.cluster import ClusterPipeline
from redis.exceptions import ClusterDownError, NoScriptError, ResponseError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from roomcast.redis import scripts as lua

Op = Callable[[Pipeline], Any]


class BatcherLike(Protocol):
    """What a Raw op reads of its Batcher (roomcast/redis/batch.py): whether the server has
    Redis Functions (None until the scripts are loaded)."""

    functions: bool | None


def _not_run(result: object) -> bool:
    """Whether a cluster command's failure proves it did not run: its node refused the
    connection or did not accept it in time (nothing was sent), or it answered CLUSTERDOWN."""
    if isinstance(result, ClusterDownError):
        return True
    if isinstance(result, RedisTimeoutError):
        return str(result) == "Timeout connecting to server"
    return isinstance(result, RedisConnectionError) and isinstance(result.__context__, OSError) \
        and " connecting to " in str(result)


def cmd(name: str, *args: Any, **kwargs: Any) -> Op:
    """An op that adds one named redis-py command to the pipeline."""
    if name in ("publish", "ping"):
        return lambda pipe: _keyless(pipe, name, *args)
    return lambda pipe: getattr(pipe, name)(*args, **kwargs)


def _keyless(pipe: Any, name: str, *args: Any) -> Any:
    """PUBLISH and PING: redis-py blocks these methods in cluster pipelines; there the raw
    command goes to the client's default node (a PUBLISH is broadcast to every node)."""
    if isinstance(pipe, ClusterPipeline):
        return pipe.execute_command(name.upper(), *args, target_nodes=RedisCluster.DEFAULT_NODE)
    return getattr(pipe, name)(*args)


class Script:
    """A Lua script, run as a Redis Function (FCALL) where the server has them (Redis >= 7),
    else by EVALSHA; loaded at start and again if Redis forgot it.

    Each script is its own function library, named after the hash of its source: the helper
    functions of its prelude (scripts.PRELUDE) are defined once when the library is loaded,
    not re-created by every call as in the EVALSHA form, and a library never clashes with
    another process's (the coordinator registers other scripts) or another version's."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.sha = hashlib.sha1(source.encode()).hexdigest()
        self.name = f"rc_{self.sha[:24]}"  # the library's and its one function's name
        helpers, body = lua.split_prelude(source)
        # The library keeps KEYS and ARGV as upvalues the helpers share; each call sets them
        # (Redis runs one function at a time), so the bodies are the same text in both forms.
        self.library = (f"#!lua name={self.name}\nlocal KEYS, ARGV\n{helpers}\n"
                        f"redis.register_function('{self.name}', function(keys, args)\n"
                        f"KEYS, ARGV = keys, args\n{body}\nend)\n")
        self.fcall_prefix = ("FCALL", self.name)
        self.evalsha_prefix = ("EVALSHA", self.sha)


def _forgotten(result: object) -> bool:
    """A call Redis could not run because it forgot the script or function (a restart, a
    FUNCTION FLUSH, a failover to a node that never had it): load again and rerun it."""
    if isinstance(result, NoScriptError):
        return True
    text = str(result) if isinstance(result, ResponseError) else ""
    return "Function not found" in text or text.startswith("NOSCRIPT")  # redis-py's / the lean reader's


class Raw:
    """An op that is one script call: the Batcher may send a batch made only of these on its
    lean connection (roomcast/redis/batch_lean.py) instead of through redis-py. FCALL or EVALSHA
    is chosen when the call is sent (a call queued before the first load, or rerun after a
    reload, takes the form the server turned out to have)."""

    __slots__ = ("batcher", "rest", "script")

    def __init__(self, batcher: BatcherLike, script: Script, rest: tuple[Any, ...]) -> None:
        self.batcher, self.script, self.rest = batcher, script, rest

    @property
    def args(self) -> tuple[Any, ...]:
        s = self.script
        return (*(s.fcall_prefix if self.batcher.functions else s.evalsha_prefix), *self.rest)

    def __call__(self, pipe: Any) -> Any:
        return pipe.execute_command(*self.args)


class RawCommand:
    """An op that is one plain command given as its RESP arguments, whose reply needs no
    decoding by redis-py (the value hiredis reads is what the caller uses: an integer, a bulk
    string or nil, an array of those; a status reply such as SET's OK is bytes here and True
    through redis-py, so callers must not read it). A batch made only of these and of script
    calls (Raw) goes out on the lean connection; through a redis-py pipeline (cluster mode,
    no lean connection) it is the same command, routed by its key as redis-py routes it."""

    __slots__ = ("args",)

    def __init__(self, *args: str | bytes | int | float) -> None:
        self.args = args

    def __call__(self, pipe: Any) -> Any:
        return pipe.execute_command(*self.args)


raw = RawCommand
_LEAN_OPS = (Raw, RawCommand)
