"""All Prometheus metrics of the gateway, on an injectable registry.

Label values are bounded (message types, error codes, close codes): never room or
device ids. Hot-path label children are bound once in __init__.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from roomcast.errors import CloseCode, ErrorCode
from roomcast.protocol import MESSAGE_TYPES

OUT_TYPES = (
    "welcome", "pong", "room_created", "joined", "left", "ack", "rooms", "error", "event",
)


class Metrics:
    def __init__(self, registry: CollectorRegistry | None = None, node_id: str = "") -> None:
        self.registry = registry or CollectorRegistry()
        # Called before each scrape, to set gauges that are cheaper to compute on demand.
        self.before_scrape: list[Callable[[], None]] = []
        r = self.registry
        self.connections = Gauge("roomcast_connections", "Open WebSocket connections on this replica.", registry=r)
        self.connections_opened = Counter(
            "roomcast_connections_opened", "WebSocket connections accepted.", registry=r)
        self.connections_closed = Counter(
            "roomcast_connections_closed", "WebSocket connections ended, by close code.", ["code"], registry=r)
        self.rooms = Gauge("roomcast_rooms", "Rooms known to this replica's store, by status.", ["status"], registry=r)
        self.local_rooms = Gauge(
            "roomcast_local_rooms", "Rooms with at least one member on this replica.", registry=r)
        self.messages_in = Counter(
            "roomcast_messages_in", "Client messages received, by type.", ["type"], registry=r)
        self.messages_out = Counter(
            "roomcast_messages_out", "Server messages sent, by type (events count each delivery).",
            ["type"], registry=r)
        self.errors = Counter("roomcast_errors", "Error replies sent, by code.", ["code"], registry=r)
        # Embedded mode runs the cleanup jobs itself (the coordinator has the same counter).
        self.cleanup = Counter("roomcast_cleanup_actions", "What the cleanup jobs did, by action.", ["action"],
                               registry=r)
        self.fanout_latency = Histogram(
            "roomcast_fanout_latency_seconds",
            "Time from an event reaching this replica (or being published on it) to the last local write.",
            buckets=(0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0),
            registry=r,
        )
        self.slow_closes = Counter(
            "roomcast_slow_consumer_closes", "Sockets closed with 4009 because their buffer overflowed.",
            registry=r)
        self.rate_limited = Counter(
            "roomcast_rate_limited", "Requests refused by a rate limit, by limit.", ["limit"], registry=r)
        self.heartbeat_timeouts = Counter(
            "roomcast_heartbeat_timeouts", "Sockets closed with 4002 after heartbeat silence.", registry=r)
        self.backend_up = Gauge(
            "roomcast_backend_up", "1 while the shared backend (Redis in cluster mode) is reachable.", registry=r)
        self.backend_up.set(1)
        self.pubsub_reconnects = Counter(
            "roomcast_pubsub_reconnects", "Times the Redis pub/sub subscription was lost or found silent and rebuilt.",
            registry=r)
        self.redis_rtt = Histogram(
            "roomcast_redis_rtt_seconds", "Round trip of this replica's periodic Redis ping.",
            buckets=(0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5, 1.0), registry=r)
        # Per Redis shard (label: the slot range the shard served when first seen, e.g. "0-5460"; a
        # single Redis is "0-16383"): as many values as the cluster has shards, never per node address.
        self.pubsub_shard_connected = Gauge(
            "roomcast_pubsub_shard_connected",
            "1 while this replica's pub/sub subscriber connection to the shard's primary is up, by shard.",
            ["shard"], registry=r)
        self.pubsub_shard_resubscribes = Counter(
            "roomcast_pubsub_shard_resubscribes",
            "Rooms resubscribed on a shard after a reconnect, failover or slot move (then repaired), by shard.",
            ["shard"], registry=r)
        self.gap_repairs = Counter(
            "roomcast_gap_repairs",
            "Gap repairs of a room's live events from its stream, by result: repaired; retry (a read "
            "failed and is tried again); closed (the gap could not be filled: its members were closed "
            "with 1012 to resume with since).", ["result"], registry=r)
        for result in ("repaired", "retry", "closed"):
            self.gap_repairs.labels(result)  # exported at 0 from the start
        self.pubsub_shard_failovers = Counter(
            "roomcast_pubsub_shard_failovers",
            "Times this replica saw another node take over a shard's slots (a replica promoted), by shard.",
            ["shard"], registry=r)
        self.redis_shard_up = Gauge(
            "roomcast_redis_shard_up",
            "1 while the shard's primary answers this replica's commands (its per-second check), by shard "
            "(Redis Cluster only). /readyz lists the same.", ["shard"], registry=r)
        self._shard_totals: dict[str, tuple[int, int]] = {}
        self.pubsub_lag = Histogram(
            "roomcast_pubsub_lag_seconds", "Time from an event's creation (its ts) to its fan-out on this replica.",
            buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 5.0), registry=r)
        self.drain_remaining = Gauge(
            "roomcast_drain_remaining", "Sockets still to be closed by a drain in progress (0 when not draining).",
            registry=r)
        self.draining = Gauge("roomcast_draining", "1 while this replica is draining.", registry=r)
        self.replicas = Gauge("roomcast_cluster_replicas", "Gateway replicas this replica sees registered.",
                              registry=r)
        self.participants = Gauge("roomcast_local_participants", "Room memberships held by sockets on this replica.",
                                  registry=r)
        self.rooms_by_type = Gauge(
            "roomcast_rooms_by_game_type", "Open rooms by game type (the 20 most common; the rest as 'other').",
            ["game_type"], registry=r)
        self.rooms_by_game_type_seen: set[str] = set()
        self.webhook_calls = Counter(
            "roomcast_webhook_calls", "Backend webhook calls (BACKEND_CONNECT_URL, BACKEND_JOIN_URL), by hook and "
            "outcome: allow, deny, timeout, error (unreachable, cut off), bad_answer (not 200 or not a valid body).",
            ["hook", "outcome"], registry=r)
        self.webhook_seconds = Histogram(
            "roomcast_webhook_seconds", "Time of a backend webhook call, by hook (timeouts included).", ["hook"],
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0), registry=r)
        for hook in ("connect", "join"):  # exported at 0 from the start, for rate() and alerts
            for outcome in ("allow", "deny", "timeout", "error", "bad_answer"):
                self.webhook_calls.labels(hook, outcome)
        self.ready = Gauge("roomcast_ready", "1 while this replica accepts new sockets.", registry=r)
        self.info = Gauge("roomcast_node_info", "Constant 1, labelled with this replica's node id.", ["node"],
                          registry=r)
        self.info.labels(node_id or "unknown").set(1)
        # The server API (gateway/api.py); `route` is the endpoint's template, never an id.
        self.api_requests = Counter("roomcast_api_requests", "Server API requests, by route and HTTP status.",
                                    ["route", "status"], registry=r)
        self.api_latency = Histogram("roomcast_api_request_seconds", "Server API request handling time, by route.",
                                     ["route"], registry=r,
                                     buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5))
        # Bind hot-path children once.
        self.in_by_type = {t: self.messages_in.labels(t) for t in MESSAGE_TYPES}
        self.in_invalid = self.messages_in.labels("invalid")
        self.out_by_type = {t: self.messages_out.labels(t) for t in OUT_TYPES}
        self.out_event = self.out_by_type["event"]
        self.errors_by_code = {c.value: self.errors.labels(c.value) for c in ErrorCode}
        # Exported at 0 from the start, so rate() has data before the first refusal (node.py's limits).
        self.rate_limited_by = {k: self.rate_limited.labels(k) for k in (
            "messages", "connections_per_device", "connect_address", "connect_device", "room_create", "join",
            "password_device", "password_room")}
        self.closed_by_code = {int(c): self.connections_closed.labels(str(int(c))) for c in CloseCode}
        self.closed_other = self.connections_closed.labels("other")

    def closed(self, code: int | None) -> None:
        self.closed_by_code.get(code or 0, self.closed_other).inc()

    def refresh(self) -> None:
        for hook in self.before_scrape:
            hook()

    def observe_shards(self, stats: list[tuple[str, bool, int, int]]) -> None:
        """The bus's per-shard state (RedisBus.shard_stats: label, connected, resubscribes, failovers)."""
        for gone in set(self._shard_totals) - {label for label, *_ in stats}:
            # A shard the bus closed (its slots went to another): no stale "down" for the alert.
            with contextlib.suppress(KeyError):
                self.pubsub_shard_connected.remove(gone)
        for label, connected, resubscribes, failovers in stats:
            self.pubsub_shard_connected.labels(label).set(1 if connected else 0)
            seen_resub, seen_fo = self._shard_totals.get(label, (0, 0))
            self.pubsub_shard_resubscribes.labels(label).inc(max(0, resubscribes - seen_resub))
            self.pubsub_shard_failovers.labels(label).inc(max(0, failovers - seen_fo))
            self._shard_totals[label] = (max(seen_resub, resubscribes), max(seen_fo, failovers))
