"""Batch Redis commands: calls made in the same loop tick go out as one pipeline (with
REDIS_BATCH_WINDOW, those of the next few ms too: one round trip and one Redis wakeup for
several events at low rates, at the cost of that much latency).

One Redis: calls are executed in the order they were made, one pipeline in flight at a time,
so a socket's requests keep their order while many sockets share each round trip
(conventions 8). A connection failure fails every call of the batch with `unavailable`.

Redis Cluster: before its first batch the batcher asks the server whether it is a cluster
node (roomcast/redis/client.py); if so each batch is split by the primary that owns each
command's slot and every primary gets its own lane: one pipeline in flight per node, its
commands sent in call order, its futures resolved as soon as that node has answered. A node
that is slow or dead (a primary SIGKILLed or paused, until its replica takes over) delays only
its own commands: the next batches' commands for the other nodes go out while it hangs (no
head-of-line blocking across shards, issue 13); the slot-map refresh runs beside the lanes
too. A slot keeps its order across a slot-map change: while some of its commands are
unanswered on the old owner's lane, its later commands wait (parked) and then go to the new
owner, instead of overtaking them there. MOVED/ASK/TRYAGAIN are followed per node; scripts are loaded on every primary.
`spread` is then the number of buckets the global keys are spread over (keys.SPREAD), 0 on
one Redis. Commands for different slots never had an order between them beyond their batch.
"""

from __future__ import annotations

import asyncio
import logging
import zlib
from collections.abc import Awaitable, Callable
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import (
    AskError,
    ClusterDownError,
    RedisError,
    ResponseError,
    SlotNotCoveredError,
    TryAgainError,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from roomcast.errors import ErrorCode, GatewayError
from roomcast.redis import keys
from roomcast.redis.batch_lean import LeanConnection
from roomcast.redis.batch_ops import _LEAN_OPS, Op, Raw, RawCommand, Script, _forgotten, _not_run, cmd, raw
from roomcast.redis.client import is_cluster, key_slot, make_cluster_client
from roomcast.redis.client_redirects import Redirects, follow
from roomcast.redis.resp import encode_command

__all__ = ["Batcher", "Entry", "Op", "Raw", "RawCommand", "Script", "cmd", "raw"]  # the ops: batch_ops.py

log = logging.getLogger("roomcast.redis")

Entry = tuple[Op, "asyncio.Future[Any]"]
UNAVAILABLE = "redis unavailable; retry"
_DOWN = (RedisConnectionError, RedisTimeoutError, ClusterDownError, OSError)




class _Lane:
    """One cluster node's commands, in call order (op, future, recorded command, slot, the
    slot map they were routed by: Batcher._maps), and
    whether a task is sending them (one pipeline in flight per node)."""

    __slots__ = ("busy", "node", "queue")

    def __init__(self, node: Any) -> None:
        self.node = node  # the ClusterNode; None for commands whose slot is not in the map
        self.queue: list[tuple[Op, asyncio.Future[Any], Any, int | None, int]] = []
        self.busy = False


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
        self._queue: list[Entry] = []
        self._running = False
        # Cluster mode: a lane per node (_dispatch), and for each slot with commands queued or in
        # flight the lane they are on and how many.
        self._lanes: dict[str, _Lane] = {}
        self._slots: dict[int, tuple[str, int]] = {}
        # A slot's commands that wait for its earlier ones, still unanswered on the node that
        # owned it before the map changed (op, future, command, the new owner's name and node).
        self._parked: dict[int, list[tuple[Op, asyncio.Future[Any], Any, str, Any, int]]] = {}
        self._tasks: set[asyncio.Task[None]] = set()  # the lanes' pumps (a reference keeps them alive)
        self._refreshing: asyncio.Task[None] | None = None  # the slot-map refresh under way
        self._maps = 0  # slot-map refreshes done: a lane's commands remember the map they were routed by
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
        # Cluster mode: a lean connection per primary, used only by that node's lane (one
        # pipeline in flight per node), for its batches made only of Raw/RawCommand calls.
        self._lean_nodes: dict[str, LeanConnection] = {}
        # Whether the server has Redis Functions (FUNCTION LOAD/FCALL): not known until load_scripts().
        self.functions: bool | None = None

    @property
    def idle(self) -> bool:
        """Nothing queued, in flight on a node's lane, or parked: the next call starts a batch
        (and waits the window, if one is set)."""
        return not (self._running or self._queue or self._lanes or self._parked)

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
        if self._refreshing is not None:
            self._refreshing.cancel()
        if self.lean is not None:
            self.lean.close()
        for conn in self._lean_nodes.values():
            conn.close()
        self._lean_nodes.clear()
        if self.client is not self.single:
            await self.client.aclose()
        await self.single.aclose()

    def call(self, op: Op) -> asyncio.Future[Any]:
        """Queue one command (added to the pipeline by `op`); the future gets its result."""
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[Any] = loop.create_future()
        self._queue.append((op, fut))
        if not self._running:
            self._running = True
            if self.cluster is False and not self.window and self.lean is not None:
                loop.call_soon(self._flush)  # one Redis, no window: the fast path (`_flush`)
            else:
                asyncio.get_running_loop().create_task(self._drain())
        return fut

    def eval(self, script: Script, keys: list[str], args: list[Any]) -> asyncio.Future[Any]:
        """Queue one script run (FCALL, or EVALSHA without Functions); the future gets its reply."""
        # The raw command: redis-py blocks `evalsha` in cluster pipelines (it routes EVALSHA by its keys).
        return self.call(Raw(self, script, (len(keys), *keys, *args)))

    def _flush(self) -> None:
        """The fast path on one Redis without a window: this tick's calls go out on the lean
        connection from this callback, and the next batch from the reply's read callback
        (`_sent`), in call order, one batch in flight, as `_drain` does, but with no task, no
        `sleep(0)` and no `wait_for` per batch: the publishing gateway's CPU per event
        (docs/benchmarks.md, "Session 7"). Anything else (not connected yet, a batch that is not
        all script calls and raw commands, a forgotten script) is handed to `_drain`."""
        lean = self.lean
        proto = lean.ready() if lean is not None else None
        batch = self._queue[: self.max_batch]
        if proto is None or not all(type(op) in _LEAN_OPS for op, _ in batch):  # (`call`: one Redis)
            asyncio.get_running_loop().create_task(self._drain(wait=False))
            return
        del self._queue[: self.max_batch]
        started = asyncio.get_running_loop().time()
        try:
            commands = [encode_command(*op.args) for op, _ in batch]  # type: ignore[attr-defined]
        except Exception as exc:  # an argument Redis cannot take: as _run, this batch fails
            self._fail(batch, exc)
            self._next()
            return
        assert lean is not None
        lean.send(proto, commands, lambda out: self._sent(batch, started, out))

    def _sent(self, batch: list[Entry], started: float, out: list[Any] | Exception) -> None:
        """A fast-path batch's replies (or its failure), from the lean connection's read callback."""
        if isinstance(out, Exception):
            self._fail(batch, out)
        elif any(_forgotten(r) for r in out):
            # Redis forgot the scripts (a restart): `_drain` loads them, reruns those calls,
            # then sends what queued meanwhile, in order.
            asyncio.get_running_loop().create_task(self._rerun(batch, out, started))
            return
        else:
            self._resolve(batch, out, started)
        self._next()

    def _next(self) -> None:
        if self._queue:
            self._flush()
        else:
            self._running = False

    async def _rerun(self, batch: list[Entry], results: list[Any], started: float) -> None:
        try:
            results = await self._rerun_forgotten(batch, results)
        except Exception as exc:
            self._fail(batch, exc)
        else:
            self._resolve(batch, results, started)
        await self._drain(wait=False)

    async def _drain(self, wait: bool = True) -> None:
        try:
            # Let this tick's callers (and the window's) join the batch. In cluster mode the
            # batcher is idle only when no node's lane has commands queued or in flight: while
            # one has, what is queued there waits for it anyway, so no window is added.
            if wait:
                await asyncio.sleep(self.window if not self._lanes else 0)
            while self._queue:
                batch = self._queue[: self.max_batch]
                del self._queue[: self.max_batch]
                if self.cluster is None:
                    try:
                        await self.detect()
                    except Exception as exc:
                        self._fail(batch, exc)
                        continue
                if self.cluster:
                    # Hand each command to its node's lane and take the next batch at once: a
                    # lane whose node hangs holds only its own commands.
                    await self._dispatch(batch)
                else:
                    await self._run(batch, self._execute)
        finally:
            self._running = False

    async def _execute(self, batch: list[Entry]) -> list[Any]:
        if self.cluster:
            return await self._retry_not_run(batch, await self._execute_per_node(batch))
        if self.lean is not None and all(type(op) in _LEAN_OPS for op, _ in batch):
            return await self.lean.execute([encode_command(*op.args) for op, _ in batch])  # type: ignore[attr-defined]
        pipe = self.client.pipeline(transaction=False)
        for op, _ in batch:
            op(pipe)
        results: list[Any] = await pipe.execute(raise_on_error=False)
        return results

    def _start_refresh(self) -> asyncio.Task[None] | None:
        """The slot-map refresh under way, or one started now if one is due (a node failed:
        until its replica takes over, its slots fail fast; at most every 0.25 s), else None.
        It runs beside the lanes: a refresh that waits on a node that does not answer holds
        no other node's commands."""
        if self._refreshing is not None and not self._refreshing.done():
            return self._refreshing
        client = self.client
        now = asyncio.get_running_loop().time()
        if not (client._initialize or self._stale_map) or now < self._next_refresh:
            return None
        self._next_refresh = now + 0.25
        self._refreshing = asyncio.get_running_loop().create_task(self._refresh())
        return self._refreshing

    async def _refresh(self) -> None:
        # Not client.initialize(): that also asks COMMAND of the first primary of the map, which
        # may be the dead one. redis-py lets the pipelines in flight on a node finish before it
        # recycles that node's connections.
        try:
            await self.client.nodes_manager.initialize()
            self.client._initialize = self._stale_map = False
            self._maps += 1
        except Exception as exc:  # no node answered: the map stays; the next one due tries again
            log.debug("redis slot map refresh failed: %s", exc)

    async def _group(self, batch: list[Entry]) -> tuple[list[Any], list[str], dict[str, Any], list[int | None]]:
        """The batch's commands recorded by a cluster pipeline, and for each its node's name
        ("*": its slot is not in the map now: sent anywhere, redirected from there) and slot."""
        client = self.client
        recorder = client.pipeline(transaction=False)
        for op, _ in batch:
            op(recorder)
        queued = list(recorder._execution_strategy._command_queue)
        await recorder.reset()
        if len(queued) != len(batch):
            raise RedisError("an op must add exactly one command")
        names: list[str] = []
        nodes: dict[str, Any] = {}
        slots: list[int | None] = []
        for command in queued:
            name, slot = "*", None
            verb = str(command.args[0]).upper()
            try:
                # Keyless: PUBLISH to its channel's slot owner, PING to the heartbeat's (ws:nodes).
                # FCALL by its first key here: redis-py would ask the server (COMMAND GETKEYS) each time.
                found = (key_slot(command.args[1]) if verb == "PUBLISH" else key_slot(keys.NODES) if verb == "PING"
                         else key_slot(command.args[3]) if verb == "FCALL" and int(command.args[2]) > 0
                         else await client._determine_slot(*command.args))
                node = client.nodes_manager.get_node_from_slot(found)
                name, nodes[node.name], slot = node.name, node, found
            except SlotNotCoveredError:
                pass
            names.append(name)
            slots.append(slot)
        return queued, names, nodes, slots

    def _lean_node(self, node: Any) -> LeanConnection | None:
        """The lane's own lean connection to `node` (made on first use, with the cluster URL's
        credentials and TLS), or None without a lean connection (a URL it does not take; or
        `lean` set to None: every batch through redis-py, the A side of an A/B)."""
        if self.lean is None:
            return None
        conn = self._lean_nodes.get(node.name)
        if conn is None:
            url = self.single.url  # type: ignore[attr-defined]  # there is a lean connection: made from it
            conn = self._lean_nodes[node.name] = LeanConnection(url, host=node.host, port=int(node.port))
        return conn

    async def _send(self, node: Any, commands: list[Any], lean: bool = False) -> list[Any]:
        """One node's commands as one pipeline (`node` None: wherever redis-py routes them),
        their MOVED/ASK/TRYAGAIN followed. A failure fails these commands only. `lean`: the
        commands are all Raw/RawCommand calls and this is the node's lane (the only user of its
        lean connection): they go out on that connection instead of a redis-py pipeline."""
        client = self.client
        conn = self._lean_node(node) if lean and node is not None else None
        try:
            if conn is not None:
                out = await self._send_lean(conn, node, commands)
            else:
                pipe = client.pipeline(transaction=False)
                for command in commands:
                    kwargs = dict(command.kwargs)
                    # FCALL too: to the node found by _group (a MOVED reply is followed below).
                    if node is not None and ("target_nodes" in kwargs or command.args[0] == "FCALL"):
                        kwargs["target_nodes"] = node
                    pipe.execute_command(*command.args, **kwargs)
                out = await pipe.execute(raise_on_error=False, allow_redirections=False)
            return await follow(client, commands, out)  # MOVED/ASK/TRYAGAIN, through redis-py
        except Exception as exc:  # this node's commands only (a dead node: `unavailable` in _run)
            log.debug("redis node batch of %d failed: %s", len(commands), exc)
            self._stale_map = self._stale_map or isinstance(exc, _DOWN)
            return [exc] * len(commands)

    async def _send_lean(self, conn: LeanConnection, node: Any, commands: list[Any]) -> list[Any]:
        """The commands on the lane's lean connection; if that fails, the connection is dropped
        (the next batch makes it again; a node that left the cluster keeps no entry)."""
        try:
            return await conn.execute_like_redis_py([c.args for c in commands], self.redirects, node.name)
        except Exception:
            if self._lean_nodes.get(node.name) is conn:
                del self._lean_nodes[node.name]
                conn.close()
            raise

    async def _execute_per_node(self, batch: list[Entry]) -> list[Any]:
        """A Redis Cluster, outside the lanes (a retry after a refresh, a rerun after a
        reload): one pipeline per primary, sent concurrently, the results once all answered."""
        refresh = self._start_refresh()
        if refresh is not None:
            await asyncio.shield(refresh)  # these commands are sent by the refreshed map
        queued, names, nodes, _ = await self._group(batch)
        groups: dict[str, list[int]] = {}
        for i, name in enumerate(names):
            groups.setdefault(name, []).append(i)
        replies = await asyncio.gather(*(self._send(nodes.get(name), [queued[i] for i in indexes])
                                         for name, indexes in groups.items()))
        results: list[Any] = [None] * len(batch)
        for indexes, reply in zip(groups.values(), replies, strict=True):
            for i, r in zip(indexes, reply, strict=True):
                results[i] = r
        return results

    async def _dispatch(self, batch: list[Entry]) -> None:
        """A Redis Cluster: queue each command on its node's lane, in call order, and start
        the lanes that are idle. A slot whose owner changed in the map while some of its
        commands are unanswered on the old owner's lane parks its later commands until those
        are answered (then they go to the new owner), so they cannot overtake them there; a
        hot slot is not kept on the old lane for good."""
        self._start_refresh()  # not awaited: these commands go by the map as it is now
        try:
            routed = self._maps
            queued, names, nodes, slots = await self._group(batch)
        except Exception as exc:
            self._fail(batch, exc)
            return
        started: list[tuple[str, _Lane]] = []
        for (op, fut), command, name, slot in zip(batch, queued, names, slots, strict=True):
            if slot is not None:
                held = self._slots.get(slot)
                if held is not None and (held[0] != name or slot in self._parked):
                    # The slot's earlier commands are unanswered on another node (the map changed
                    # since): this one waits for them, then goes to the new owner (_release).
                    self._parked.setdefault(slot, []).append((op, fut, command, name, nodes.get(name), routed))
                    continue
                self._slots[slot] = (name, held[1] + 1 if held is not None else 1)
            self._enqueue(name, nodes.get(name), (op, fut, command, slot, routed), started)
        self._start_pumps(started)

    def _enqueue(self, name: str, node: Any, entry: tuple[Op, asyncio.Future[Any], Any, int | None, int],
                 started: list[tuple[str, _Lane]]) -> None:
        lane = self._lanes.get(name)
        if lane is None:
            lane = self._lanes[name] = _Lane(node)
        elif node is not None:
            lane.node = node  # the map's current object for this node
        lane.queue.append(entry)
        if not lane.busy:
            lane.busy = True
            started.append((name, lane))

    def _start_pumps(self, started: list[tuple[str, _Lane]]) -> None:
        loop = asyncio.get_running_loop()
        for name, lane in started:
            task = loop.create_task(self._pump(name, lane))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    def _release(self, slots: list[int | None]) -> None:
        """These commands are answered: a slot with none left unanswered lets its parked
        commands go, in call order, to the node the map named last."""
        started: list[tuple[str, _Lane]] = []
        for slot in slots:
            if slot is None:
                continue
            owner, count = self._slots[slot]
            if count > 1:
                self._slots[slot] = (owner, count - 1)
                continue
            del self._slots[slot]
            parked = self._parked.pop(slot, None)
            if parked:
                _, _, _, name, node, _ = parked[-1]
                self._slots[slot] = (name, len(parked))
                for op, fut, command, _, _, routed in parked:
                    self._enqueue(name, node, (op, fut, command, slot, routed), started)
        self._start_pumps(started)

    async def _pump(self, name: str, lane: _Lane) -> None:
        """Send one node's queued commands, one pipeline at a time, until its lane is empty;
        each pipeline's futures are resolved when it has answered."""
        try:
            while lane.queue:
                entries = lane.queue[: self.max_batch]
                del lane.queue[: self.max_batch]
                batch = [(op, fut) for op, fut, _, _, _ in entries]
                commands = [command for _, _, command, _, _ in entries]
                routed = min(m for *_, m in entries)  # the oldest map these were routed by
                lean = all(type(op) in _LEAN_OPS for op, _ in batch)

                async def first(batch: list[Entry], commands: list[Any] = commands, routed: int = routed,
                                lean: bool = lean) -> list[Any]:
                    return await self._retry_not_run(batch, await self._send(lane.node, commands, lean), routed)

                try:
                    await self._run(batch, first)
                finally:
                    self._release([slot for _, _, _, slot, _ in entries])
        finally:
            lane.busy = False
            if not lane.queue and self._lanes.get(name) is lane:
                del self._lanes[name]  # no lanes left behind for nodes that left the cluster

    async def _retry_not_run(self, batch: list[Entry], results: list[Any], routed: int | None = None) -> list[Any]:
        """A Redis Cluster after a failover: the slot map may still name the dead primary, so a
        command for its slots fails although its replica has taken over. Commands known not to
        have run (the node refused the connection or timed out connecting: nothing was sent; or
        it answered CLUSTERDOWN) are sent once more after a slot-map refresh (the one under way,
        or the next one, at most 0.25 s away; or none if the map was refreshed since these
        commands were `routed`: a lane routes by the map it has while a refresh runs beside
        it), so the client does not see that `unavailable`. Nothing that may have run is resent (a timeout or a
        connection lost after sending: the client's own retry, with its idempotency key,
        decides). MOVED and ASK are followed by redis-py itself."""
        again = [i for i, r in enumerate(results) if _not_run(r)]
        if not again:
            return results
        refreshing = self._refreshing is not None and not self._refreshing.done()
        wait = self._next_refresh - asyncio.get_running_loop().time()
        if not refreshing and not (routed is not None and self._maps > routed) and wait > 0:
            # Wait for the next refresh (at most 0.25 s away; the pub/sub side may already
            # have seen the promotion, and a gap repair read must not get `unavailable` from
            # our older map). Only this node's lane waits: no other node's commands do.
            await asyncio.sleep(wait)
        self._stale_map = True
        log.debug("redis: %d commands not run on a dead node; refreshing the slot map and retrying once", len(again))
        for i, r in zip(again, await self._execute_per_node([batch[i] for i in again]), strict=True):
            results[i] = r
        self.retried += len(again)
        return results

    @staticmethod
    def _fail(batch: list[Entry], exc: Exception) -> None:
        if isinstance(exc, _DOWN):
            # Not a warning: the owner of the connection (gateway, coordinator) logs the outage once.
            log.debug("redis batch of %d failed: %s", len(batch), exc)
            exc = GatewayError(ErrorCode.UNAVAILABLE, UNAVAILABLE)
        # Otherwise a RedisError, or a command the pipeline refused: fail this batch only.
        for _, fut in batch:
            if not fut.done():
                fut.set_exception(exc)
                fut.exception()  # fire-and-forget calls (index updates) need not be awaited

    async def _run(self, batch: list[Entry], execute: Callable[[list[Entry]], Awaitable[list[Any]]]) -> None:
        """Execute a batch (`execute`: one Redis, or one cluster node's lane) and resolve its futures."""
        started = asyncio.get_running_loop().time()
        try:
            results = await self._rerun_forgotten(batch, await execute(batch))
        except Exception as exc:
            self._fail(batch, exc)
            return
        self._resolve(batch, results, started)

    async def _rerun_forgotten(self, batch: list[Entry], results: list[Any]) -> list[Any]:
        missing = [i for i, r in enumerate(results) if _forgotten(r)]
        if missing:
            # Redis restarted (or flushed its functions) and forgot our scripts: load them
            # and rerun those calls (nothing of a call that was not found has run).
            await self.load_scripts()
            again = await self._execute([batch[i] for i in missing])
            for i, r in zip(missing, again, strict=True):
                results[i] = r
        return results

    def _resolve(self, batch: list[Entry], results: list[Any], started: float) -> None:
        """Give each call of a batch that ran its result (or its error, as `unavailable` where
        it is worth a retry)."""
        self.batches += 1
        self.commands += len(batch)
        if self.on_batch is not None:
            self.on_batch(len(batch), asyncio.get_running_loop().time() - started)
        for (_, fut), result in zip(batch, results, strict=True):
            if fut.done():
                continue
            if isinstance(result, (*_DOWN, TryAgainError, AskError, SlotNotCoveredError)):
                # A shard failing over (or a slot moving) outlasted the retries: retryable. A MOVED
                # or ASK (MovedError is an AskError) still there after follow's rounds did not run:
                # while a slot's owner is switched node by node, the old owner and the importing
                # node can send it back and forth.
                fut.set_exception(GatewayError(ErrorCode.UNAVAILABLE, UNAVAILABLE))
                fut.exception()
            elif isinstance(result, Exception):
                fut.set_exception(result)
                if not isinstance(result, ResponseError):
                    fut.exception()
            else:
                fut.set_result(result)
