"""Count the MOVED and ASK redirects a Redis Cluster sends us, by the node that sent them.

A redirect means the client's slot map was stale (MOVED: the slot has a new owner) or a slot is
being migrated (ASK: this key already left for the importing node). redis-py follows both; this
module only counts them, at no cost on the hot path: it hooks the parser's `parse_error`, which
redis-py (hiredis or its own RESP parser) calls only for an error reply, never for a normal one.
Every MOVED/ASK reply is counted once, with the address ("host:port") of the node that sent it,
whether it came back inside a pipeline or to a single command (redis-py resends a pipeline's
redirected commands one by one, so one stale command may see two replies).

`install(client, counts)` makes every connection of a `RedisCluster` (the nodes it knows now and
those it discovers later) parse with a counting parser.

`follow(client, commands, replies)` follows the redirects of a pipeline sent with
`allow_redirections=False`. Not redis-py's own resend: on ASK it sends ASKING and the command as
two pooled calls, which may take two connections (the ASKING is then lost, the importing node
answers MOVED back to the source, and the command loops until "TTL exhausted" while a slot
migrates). Here ASKING and the command go in one pipeline on one connection.
"""

from __future__ import annotations

import asyncio
from typing import Any

from redis.asyncio.cluster import PipelineCommand, RedisCluster
from redis.asyncio.connection import DefaultParser
from redis.exceptions import AskError, MovedError, TryAgainError


class Redirects:
    """Redirect replies seen, by (kind, node): kind is "moved" or "ask", node is "host:port"."""

    KINDS = ("moved", "ask")

    def __init__(self) -> None:
        self.counts: dict[tuple[str, str], int] = {}

    def seen(self, kind: str, node: str) -> None:
        key = (kind, node)
        self.counts[key] = self.counts.get(key, 0) + 1

    def seed(self, nodes: list[str]) -> None:
        """Export these nodes at 0 from the start (so rate() has data before the first redirect)."""
        for node in nodes:
            for kind in self.KINDS:
                self.counts.setdefault((kind, node), 0)


def counting_parser(counts: Redirects) -> type[Any]:
    """A subclass of redis-py's default parser that counts MOVED/ASK replies into `counts`."""

    class CountingParser(DefaultParser):  # type: ignore[valid-type,misc]
        node = "?"

        def on_connect(self, connection: Any) -> None:
            self.node = f"{connection.host}:{connection.port}"
            super().on_connect(connection)

        def parse_error(self, response: str) -> Exception:
            exc: Exception = super().parse_error(response)
            if isinstance(exc, MovedError):  # first: MovedError is a kind of AskError
                counts.seen("moved", self.node)
            elif isinstance(exc, AskError):
                counts.seen("ask", self.node)
            return exc

    return CountingParser


def install(client: RedisCluster, counts: Redirects) -> None:
    """Count the redirects of every connection `client` opens from now on (call before its
    first command). The nodes discovered later are made from the manager's kwargs, which carry
    the parser too."""
    parser = counting_parser(counts)
    manager: Any = client.nodes_manager
    manager.connection_kwargs["parser_class"] = parser
    for node in manager.startup_nodes.values():
        node.connection_kwargs["parser_class"] = parser


async def follow(client: RedisCluster, commands: list[Any], replies: list[Any], rounds: int = 5) -> list[Any]:
    """The replies of `commands` (recorded pipeline commands: `.args`, `.kwargs`) once their
    MOVED, ASK and TRYAGAIN replies are followed: MOVED updates the slot map and resends to the
    new owner, ASK sends ASKING + the command to the importing node, TRYAGAIN (a multi-key
    command while its slot's keys are split between two nodes) resends after 50 ms. At most
    `rounds` rounds; what is still a redirect after them stays in the replies (the caller's
    retryable error)."""
    replies = list(replies)
    manager: Any = client.nodes_manager
    for attempt in range(rounds):
        todo = [i for i, r in enumerate(replies) if isinstance(r, (AskError, TryAgainError))]
        if not todo:
            break
        if attempt and any(isinstance(replies[i], TryAgainError) for i in todo):
            await asyncio.sleep(0.05)
        groups: dict[tuple[str, bool], tuple[Any, list[int]]] = {}
        for i in todo:
            error, node, asking = replies[i], None, False
            if isinstance(error, MovedError):
                await manager.move_slot(error)
                node = manager.get_node_from_slot(error.slot_id)
            elif isinstance(error, AskError):
                node, asking = manager.get_node(host=error.host, port=error.port), True
            else:  # TRYAGAIN: the slot's owner again
                node = manager.get_node_from_slot(await client._determine_slot(*commands[i].args))
            if node is not None:
                groups.setdefault((node.name, asking), (node, []))[1].append(i)

        async def resend(node: Any, asking: bool, indexes: list[int]) -> None:
            sent: list[tuple[int, PipelineCommand]] = []
            batch: list[PipelineCommand] = []
            for i in indexes:
                if asking:
                    batch.append(PipelineCommand(len(batch), "ASKING"))
                kwargs = {k: v for k, v in commands[i].kwargs.items() if k != "target_nodes"}
                command = PipelineCommand(len(batch), *commands[i].args, **kwargs)
                batch.append(command)
                sent.append((i, command))
            try:
                await node.execute_pipeline(batch)
            except Exception as exc:  # the node is gone: the caller's unavailable
                for i, _ in sent:
                    replies[i] = exc
                return
            for i, command in sent:
                replies[i] = command.result

        await asyncio.gather(*(resend(node, asking, indexes) for (_, asking), (node, indexes) in groups.items()))
    return replies
