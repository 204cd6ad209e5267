"""Batch Redis commands: calls made in the same loop tick go out as one pipeline (with
REDIS_BATCH_WINDOW, those of the next few ms too: one round trip and one Redis wakeup for
several events at low rates, at the cost of that much latency).

Calls are executed in the order they were made, one pipeline in flight at a time, so a
socket's requests keep their order while many sockets share each round trip
(conventions 8). A connection failure fails every call of the batch with `unavailable`.

Redis Cluster: before its first batch the batcher asks the server whether it is a cluster
node (roomcast/redis/client.py); if so every batch goes through redis-py's cluster
pipeline, which splits it per node (one pipeline per primary, sent concurrently) and
follows MOVED/ASK/TRYAGAIN; scripts are loaded on every primary. `spread` is then the
number of buckets the global keys are spread over (keys.SPREAD), 0 on one Redis.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import zlib
from collections.abc import Callable
from typing import Any

from redis.asyncio import Redis, RedisCluster
from redis.asyncio.client import Pipeline
from redis.asyncio.cluster import ClusterPipeline
from redis.exceptions import (
    ClusterDownError,
    NoScriptError,
    RedisError,
    ResponseError,
    SlotNotCoveredError,
    TryAgainError,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from roomcast.errors import ErrorCode, GatewayError
from roomcast.redis import keys
from roomcast.redis import scripts as lua
from roomcast.redis.batch_lean import LeanConnection
from roomcast.redis.client import is_cluster, key_slot, make_cluster_client
from roomcast.redis.client_redirects import Redirects, follow
from roomcast.redis.resp import encode_command

log = logging.getLogger("roomcast.redis")

Op = Callable[[Pipeline], Any]
UNAVAILABLE = "redis unavailable; retry"
_DOWN = (RedisConnectionError, RedisTimeoutError, ClusterDownError, OSError)


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

    def __init__(self, batcher: Batcher, script: Script, rest: tuple[Any, ...]) -> None:
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


class Batcher:
    def __init__(self, client: Redis, max_batch: int = 512, window_ms: int = 0) -> None:
        self.single = client
        # The client batches go through: `single`, or the RedisCluster made by detect().
        self.client: Any = client
        self.cluster: bool | None = None  # not known until detect()
        self._stale_map = False  # a node failed: refresh the slot map (at most every 0.25 s)
        self._next_refresh = 0.0
        self.spread = 0
        self.max_batch = max_batch
        # REDIS_BATCH_WINDOW: an idle batcher waits this long after the first call before sending,
        # so calls of the next few ms share its round trip (0: only those of the same loop tick).
        # Only the first batch after idle waits: what queues while a batch is in flight goes
        # out as soon as it is back, as without a window.
        self.window = window_ms / 1000
        self._queue: list[tuple[Op, asyncio.Future[Any]]] = []
        self._running = False
        self.batches = 0
        self.commands = 0
        self.retried = 0  # commands sent again after a refresh (_retry_not_run)
        self.on_batch: Callable[[int, float], None] | None = None
        self.scripts: list[Script] = []
        self.redirects = Redirects()  # MOVED/ASK replies by node (cluster mode; read by the metrics)
        # Batches of script calls and plain commands only (Raw, RawCommand), on one Redis, go
        # out on this connection (batch_lean.py).
        url = getattr(client, "url", "")
        self.lean: LeanConnection | None = LeanConnection(url) if url and LeanConnection.usable(url) else None
        # Whether the server has Redis Functions (FUNCTION LOAD/FCALL): not known until load_scripts().
        self.functions: bool | None = None

    def register(self, source: str) -> Script:
        script = Script(source)
        self.scripts.append(script)
        return script

    async def detect(self) -> bool:
        """Ask the server once whether it is a Redis Cluster node; switch to the cluster client
        if so. True in cluster mode. Raises (and asks again next time) if Redis is down."""
        if self.cluster is None:
            if await is_cluster(self.single):
                url = getattr(self.single, "url", "")
                if not url:
                    raise RedisError("a Redis Cluster needs a client made by make_client(url)")
                client = make_cluster_client(url, self.redirects)
                try:
                    await client.initialize()  # discovers the nodes and the slot map
                except BaseException:
                    await client.aclose()
                    raise
                self.client = client
                self.redirects.seed([node.name for node in client.get_primaries()])
                self.spread = keys.SPREAD
                self.cluster = True
                log.info("Redis Cluster mode: %d primaries", len(self.client.get_primaries()))
            else:
                self.cluster = False
                kw = self.single.connection_pool.connection_kwargs  # never redirects: exported at 0
                self.redirects.seed([f"{kw.get('host', '?')}:{kw.get('port', '?')}"])
        return self.cluster

    def bucket(self, entity: str) -> int | None:
        """The bucket of a global key an entity's entry goes to (None on one Redis: one key)."""
        if not self.spread:
            return None
        return zlib.crc32(entity.encode()) % self.spread

    def buckets(self) -> list[int | None]:
        """Every bucket of a spread key: readers enumerate these ([None] on one Redis)."""
        return list(range(self.spread)) if self.spread else [None]

    def across(self, name: str, verb: str, *args: Any, **kwargs: Any) -> asyncio.Future[list[Any]]:
        """One command on every bucket of spread key `name`, queued now (one batch): the replies."""
        return asyncio.gather(*(self.call(cmd(verb, keys.spread(name, b), *args, **kwargs)) for b in self.buckets()))

    async def load_scripts(self) -> None:
        """Load every registered script (as a function library, or for EVALSHA on a Redis
        without Functions). On a cluster redis-py sends FUNCTION LOAD / SCRIPT LOAD to every
        primary; functions are also replicated, so a promoted replica has them."""
        await self.detect()
        for script in list(self.scripts):
            if self.functions is not False:
                try:
                    await self.client.function_load(script.library, replace=True)
                    self.functions = True
                    continue
                except ResponseError as exc:
                    # The first load tells: an unknown command (before Redis 7) or one this user
                    # may not run (NOPERM: some managed Redis restrict FUNCTION) means EVALSHA.
                    if self.functions:
                        raise
                    log.info("Redis Functions unavailable (%s): scripts run by EVALSHA", exc)
                    self.functions = False
            await self.client.script_load(script.source)

    async def aclose(self) -> None:
        if self.lean is not None:
            self.lean.close()
        if self.client is not self.single:
            await self.client.aclose()
        await self.single.aclose()

    def call(self, op: Op) -> asyncio.Future[Any]:
        """Queue one command (added to the pipeline by `op`); the future gets its result."""
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._queue.append((op, fut))
        if not self._running:
            self._running = True
            asyncio.get_running_loop().create_task(self._drain())
        return fut

    def eval(self, script: Script, keys: list[str], args: list[Any]) -> asyncio.Future[Any]:
        """Queue one script run (FCALL, or EVALSHA without Functions); the future gets its reply."""
        # The raw command: redis-py blocks `evalsha` in cluster pipelines (it routes EVALSHA by its keys).
        return self.call(Raw(self, script, (len(keys), *keys, *args)))

    async def _drain(self) -> None:
        try:
            await asyncio.sleep(self.window)  # let this tick's callers (and the window's) join the batch
            while self._queue:
                batch = self._queue[: self.max_batch]
                del self._queue[: self.max_batch]
                await self._run(batch)
        finally:
            self._running = False

    async def _execute(self, batch: list[tuple[Op, asyncio.Future[Any]]]) -> list[Any]:
        if self.cluster:
            return await self._retry_not_run(batch, await self._execute_per_node(batch))
        if self.lean is not None and all(type(op) in _LEAN_OPS for op, _ in batch):
            return await self.lean.execute([encode_command(*op.args) for op, _ in batch])  # type: ignore[attr-defined]
        pipe = self.client.pipeline(transaction=False)
        for op, _ in batch:
            op(pipe)
        results: list[Any] = await pipe.execute(raise_on_error=False)
        return results

    async def _execute_per_node(self, batch: list[tuple[Op, asyncio.Future[Any]]]) -> list[Any]:
        """A Redis Cluster: one pipeline per primary, sent concurrently; a node that is down
        (or failing over) fails only its own commands (`unavailable`), not the batch's others.
        The commands are recorded by a cluster pipeline, then grouped by their slot's node."""
        client = self.client
        now = asyncio.get_running_loop().time()
        if (client._initialize or self._stale_map) and now >= self._next_refresh:
            # Refresh the slot map from a live node (after a node failed: until its replica
            # takes over, its slots fail fast). Not client.initialize(): that also asks COMMAND
            # of the first primary of the map, which may be the dead one.
            self._next_refresh = now + 0.25
            await client.nodes_manager.initialize()
            client._initialize = self._stale_map = False
        recorder = client.pipeline(transaction=False)
        for op, _ in batch:
            op(recorder)
        queued = list(recorder._execution_strategy._command_queue)
        await recorder.reset()
        if len(queued) != len(batch):
            raise RedisError("an op must add exactly one command")
        groups: dict[str, list[int]] = {}
        nodes: dict[str, Any] = {}
        for i, command in enumerate(queued):
            name = "*"  # not in the slot map now: sent anywhere, redirected (MOVED) from there
            verb = str(command.args[0]).upper()
            try:
                # Keyless: PUBLISH to its channel's slot owner, PING to the heartbeat's (ws:nodes).
                # FCALL by its first key here: redis-py would ask the server (COMMAND GETKEYS) each time.
                slot = (key_slot(command.args[1]) if verb == "PUBLISH" else key_slot(keys.NODES) if verb == "PING"
                        else key_slot(command.args[3]) if verb == "FCALL" and int(command.args[2]) > 0
                        else await client._determine_slot(*command.args))
                node = client.nodes_manager.get_node_from_slot(slot)
                name, nodes[node.name] = node.name, node
            except SlotNotCoveredError:
                pass
            groups.setdefault(name, []).append(i)

        async def run(name: str, indexes: list[int]) -> list[Any]:
            pipe = client.pipeline(transaction=False)
            for i in indexes:
                kwargs = dict(queued[i].kwargs)
                # FCALL too: to the node found above (a MOVED reply is followed by redis-py).
                if name in nodes and ("target_nodes" in kwargs or queued[i].args[0] == "FCALL"):
                    kwargs["target_nodes"] = nodes[name]
                pipe.execute_command(*queued[i].args, **kwargs)
            try:
                out: list[Any] = await pipe.execute(raise_on_error=False, allow_redirections=False)
                return await follow(client, [queued[i] for i in indexes], out)  # MOVED/ASK/TRYAGAIN
            except Exception as exc:  # this node's commands only (a dead node: `unavailable` below)
                log.debug("redis node batch of %d failed: %s", len(indexes), exc)
                self._stale_map = self._stale_map or isinstance(exc, _DOWN)
                return [exc] * len(indexes)

        results: list[Any] = [None] * len(batch)
        replies = await asyncio.gather(*(run(name, indexes) for name, indexes in groups.items()))
        for indexes, reply in zip(groups.values(), replies, strict=True):
            for i, r in zip(indexes, reply, strict=True):
                results[i] = r
        return results

    async def _retry_not_run(self, batch: list[tuple[Op, asyncio.Future[Any]]], results: list[Any]) -> list[Any]:
        """A Redis Cluster after a failover: the slot map may still name the dead primary, so a
        command for its slots fails although its replica has taken over. Commands known not to
        have run (the node refused the connection or timed out connecting: nothing was sent; or
        it answered CLUSTERDOWN) are sent once more after a slot-map refresh, when one is due,
        so the client does not see that `unavailable`. Nothing that may have run is resent (a
        timeout or a connection lost after sending: the client's own retry, with its
        idempotency key, decides). MOVED and ASK are followed by redis-py itself."""
        again = [i for i, r in enumerate(results) if _not_run(r)]
        if not again or asyncio.get_running_loop().time() < self._next_refresh:
            return results
        self._stale_map = True
        log.debug("redis: %d commands not run on a dead node; refreshing the slot map and retrying once", len(again))
        for i, r in zip(again, await self._execute_per_node([batch[i] for i in again]), strict=True):
            results[i] = r
        self.retried += len(again)
        return results

    async def _run(self, batch: list[tuple[Op, asyncio.Future[Any]]]) -> None:
        loop = asyncio.get_running_loop()
        started = loop.time()
        try:
            if self.cluster is None:
                await self.detect()
            results = await self._execute(batch)
            missing = [i for i, r in enumerate(results) if _forgotten(r)]
            if missing:
                # Redis restarted (or flushed its functions) and forgot our scripts: load them
                # and rerun those calls (nothing of a call that was not found has run).
                await self.load_scripts()
                again = await self._execute([batch[i] for i in missing])
                for i, r in zip(missing, again, strict=True):
                    results[i] = r
        except _DOWN as exc:
            # Not a warning: the owner of the connection (gateway, coordinator) logs the outage once.
            log.debug("redis batch of %d failed: %s", len(batch), exc)
            for _, fut in batch:
                if not fut.done():
                    fut.set_exception(GatewayError(ErrorCode.UNAVAILABLE, UNAVAILABLE))
                    fut.exception()  # fire-and-forget calls (index updates) need not be awaited
            return
        except Exception as exc:  # RedisError, or a command the pipeline refused: fail this batch only
            for _, fut in batch:
                if not fut.done():
                    fut.set_exception(exc)
                    fut.exception()
            return
        self.batches += 1
        self.commands += len(batch)
        if self.on_batch is not None:
            self.on_batch(len(batch), loop.time() - started)
        for (_, fut), result in zip(batch, results, strict=True):
            if fut.done():
                continue
            if isinstance(result, (*_DOWN, TryAgainError, SlotNotCoveredError)):
                # A shard failing over (or a slot moving) outlasted redis-py's retries: retryable.
                fut.set_exception(GatewayError(ErrorCode.UNAVAILABLE, UNAVAILABLE))
                fut.exception()
            elif isinstance(result, Exception):
                fut.set_exception(result)
                if not isinstance(result, ResponseError):
                    fut.exception()
            else:
                fut.set_result(result)
