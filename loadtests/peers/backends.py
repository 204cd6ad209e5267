"""The Redis of one peers run: a single `redis-server`, or a Redis Cluster (`--redis cluster`).

Both are ephemeral (loadtests/services.py), on free 127.0.0.1 ports, stopped by pid. The cluster
has `--shards` primaries with `--cluster-replicas` replicas each (3 + 3 by default, as in issue
13); the servers are given the URL of one node and find the others. Redis CPU is Redis' own (`INFO cpu`,
used_cpu_sys + used_cpu_user, µs resolution) per process: on a cluster summed over the primaries (each primary's CPU includes feeding its
replicas), and per shard, divided by the events of the rooms whose slot that shard owns.
"""

from __future__ import annotations

from typing import Any

from roomcast.redis import keys
from roomcast.redis.client import key_slot

from ..services import RedisClusterServer, RedisServer

KINDS = ("single", "cluster")


def commandstats(info: str) -> dict[str, dict[str, float]]:
    """`INFO commandstats` as {command: {calls, usec, usec_per_call}}."""
    out: dict[str, dict[str, float]] = {}
    for line in info.splitlines():
        if line.startswith("cmdstat_"):
            name, _, fields = line[len("cmdstat_"):].partition(":")
            kv = dict(f.split("=", 1) for f in fields.split(",") if "=" in f)
            out[name] = {k: float(kv[k]) for k in ("calls", "usec", "usec_per_call") if k in kv}
    return out


class PeersRedis:
    def __init__(self, kind: str, shards: int = 3, replicas: int = 1) -> None:
        if kind not in KINDS:
            raise ValueError(kind)
        self.kind = kind
        self.single: RedisServer | None = None
        self.cluster: RedisClusterServer | None = None
        self.shards, self.replicas = shards, replicas
        self.slots: list[tuple[int, int, int]] = []  # (first, last, primary port)
        self.primaries: dict[str, int] = {}  # shard label -> pid
        self.ports: dict[str, int] = {}
        self.replica_pids: list[int] = []

    def start(self) -> PeersRedis:
        if self.kind == "single":
            self.single = RedisServer().start()
            assert self.single.proc is not None
            self.primaries = {"redis": self.single.proc.pid}
            return self
        self.cluster = RedisClusterServer(primaries=self.shards, replicas=self.replicas).start()
        for node in self.cluster.primary_nodes():
            assert node.proc is not None
            ranges = []
            for line in node.cli("CLUSTER", "NODES").splitlines():
                f = line.split()
                if "myself" in f[2]:
                    for r in f[8:]:
                        lo, _, hi = r.partition("-")
                        if r[0] != "[":
                            ranges.append((int(lo), int(hi or lo)))
            # Labelled by its first slot range (as the gateway's shard metrics): the same in every
            # run (`redis-cli --cluster create` splits the slots alike), unlike the ports.
            label = "slots {}-{}".format(*min(ranges))
            self.primaries[label], self.ports[label] = node.proc.pid, node.port
            self.slots += [(lo, hi, node.port) for lo, hi in ranges]
        self.replica_pids = [n.proc.pid for n in self.cluster.nodes
                             if n.proc is not None and n.port not in self.ports.values()]
        return self

    @property
    def url(self) -> str:
        server = self.single or self.cluster
        assert server is not None
        return server.url

    def label(self) -> str:
        return "1 Redis" if self.kind == "single" else f"Redis Cluster {self.shards}+{self.shards * self.replicas}"

    def shard_of(self, room_id: str) -> str:
        """The shard label of the primary that owns the room's keys (their hash tag's slot)."""
        if self.kind == "single":
            return "redis"
        slot = key_slot(keys.room(room_id))
        for lo, hi, port in self.slots:
            if lo <= slot <= hi:
                return next(label for label, p in self.ports.items() if p == port)
        raise LookupError(room_id)

    def cpu(self) -> dict[str, float]:
        """CPU seconds so far of every process of `pids()` (same labels), from `INFO cpu`."""
        nodes = [self.single] if self.single is not None else list(self.cluster.nodes if self.cluster else [])
        by_port: dict[int, float] = {}
        for node in nodes:
            assert node is not None
            info = dict(line.split(":", 1) for line in node.cli("INFO", "cpu").splitlines() if ":" in line)
            by_port[node.port] = float(info["used_cpu_sys"]) + float(info["used_cpu_user"])
        if self.single is not None:
            return {"redis": by_port[self.single.port]}
        assert self.cluster is not None
        out = {label: by_port[port] for label, port in self.ports.items()}
        replicas = [n.port for n in self.cluster.nodes if n.proc is not None and n.port not in self.ports.values()]
        return out | {f"replica{i}": by_port[port] for i, port in enumerate(replicas)}

    def pids(self) -> dict[str, int]:
        """Every process to measure: each primary by its shard label ("redis" for a single Redis,
        "slots 0-5460" on a cluster), the replicas as `replica<i>`."""
        return self.primaries | {f"replica{i}": pid for i, pid in enumerate(self.replica_pids)}

    def report(self, cpu: dict[str, float], events_by_shard: dict[str, int]) -> dict[str, Any]:
        """Redis CPU per event over the primaries and per shard; the replicas' CPU besides."""
        events = sum(events_by_shard.values())
        primary_cpu = sum(cpu[k] for k in self.primaries)
        shards = {label: {"events": events_by_shard.get(label, 0), "cpu_s": cpu[label],
                          "cpu_us_per_event": cpu[label] * 1e6 / events_by_shard[label]
                          if events_by_shard.get(label) else float("nan")}
                  for label in self.primaries}
        return {"redis": self.label(), "redis_cpu_s": primary_cpu,
                "redis_cpu_us_per_event": primary_cpu * 1e6 / events if events else float("nan"),
                "redis_shards": shards,
                "redis_replicas_cpu_s": sum(v for k, v in cpu.items() if k.startswith("replica"))}

    def primary_nodes(self) -> list[Any]:
        """The primaries' servers (the one Redis, or each cluster primary)."""
        if self.single is not None:
            return [self.single]
        assert self.cluster is not None
        return [n for n in self.cluster.nodes if n.port in self.ports.values()]

    def reset_stats(self) -> None:
        """CONFIG RESETSTAT on every primary: `commandstats()` then covers only what follows."""
        for node in self.primary_nodes():
            node.cli("CONFIG", "RESETSTAT")

    def commandstats(self) -> dict[str, dict[str, float]]:
        """`INFO commandstats` summed over the primaries: {command: {calls, usec, usec_per_call}}."""
        total: dict[str, dict[str, float]] = {}
        for node in self.primary_nodes():
            for name, v in commandstats(node.cli("INFO", "commandstats")).items():
                t = total.setdefault(name, {"calls": 0.0, "usec": 0.0})
                t["calls"] += v.get("calls", 0.0)
                t["usec"] += v.get("usec", 0.0)
        for t in total.values():
            t["usec_per_call"] = round(t["usec"] / t["calls"], 2) if t["calls"] else 0.0
        return total

    def stop(self) -> None:
        if self.single is not None:
            self.single.stop()
        if self.cluster is not None:
            self.cluster.stop()
