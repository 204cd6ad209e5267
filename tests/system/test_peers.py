"""The peers harness works end to end (`python -m loadtests.peers --quick --only fanout`): for each
target (roomcast, the minimal websockets + Redis gateway, Socket.IO 4 with its Redis adapter on
Node) two server processes and a Redis start, every member of every room receives every bench
message, in order, and the harness stops what it started. A smoke test of the harness, not a
performance check: no timing is asserted.

Needs redis-server, and Node ≥ 20 with npm (the machine's, or the venv's that `./dev test`
installs); the Socket.IO server's packages come from loadtests/peers/socketio/package-lock.json
(`npm ci`, so the npm registry must be reachable the first time)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import orjson
import pytest

from tests.harness import ROOT, UNIT

pytestmark = pytest.mark.system


def test_every_target_delivers_everything(tmp_path: Path) -> None:
    out = tmp_path / "peers.json"
    done = subprocess.run([sys.executable, "-m", "loadtests.peers", "--quick", "--only", "fanout", "--out", str(out)],
                          cwd=ROOT, capture_output=True, text=True, timeout=300 * UNIT)
    assert done.returncode == 0, f"exit {done.returncode}\n{done.stdout}\n{done.stderr[-3000:]}"
    report = orjson.loads(out.read_bytes())
    runs = report["runs"]["fanout"]
    assert sorted(runs) == ["minimal", "roomcast", "socketio"]
    for target, (run,) in runs.items():
        assert run["events_sent"] >= 100, target
        assert run["deliveries"] == run["deliveries_expected"] == run["events_sent"] * run["members"], target
        assert run["missing"] == run["extra"] == run["gaps"] == run["disorder"] == run["closed"] == 0, target
        assert run["ok"], target
    assert "| fan-out: server CPU µs/delivery (A+B) |" in done.stdout  # the table, with ratios
    assert "roomcast/socketio" in done.stdout


def test_roomcast_on_one_redis_and_on_a_redis_cluster(tmp_path: Path) -> None:
    """`--redis single,cluster`: roomcast on one Redis and on a 3 + 3 Redis Cluster, every delivery
    in both, Redis CPU per event summed over the primaries and per shard (slot range)."""
    out = tmp_path / "peers-cluster.json"
    done = subprocess.run([sys.executable, "-m", "loadtests.peers", "--quick", "--only", "fanout", "--targets",
                           "roomcast", "--redis", "single,cluster", "--out", str(out)],
                          cwd=ROOT, capture_output=True, text=True, timeout=300 * UNIT)
    assert done.returncode == 0, f"exit {done.returncode}\n{done.stdout}\n{done.stderr[-3000:]}"
    runs = orjson.loads(out.read_bytes())["runs"]["fanout"]
    assert sorted(runs) == ["roomcast", "roomcast+cluster"]
    for name, (run,) in runs.items():
        assert run["ok"] and run["missing"] == 0 and run["deliveries"] == run["deliveries_expected"], name
        assert run["redis_cpu_us_per_event"] > 0, name
    shards = runs["roomcast+cluster"][0]["redis_shards"]
    assert sorted(shards) == ["slots 0-5460", "slots 10923-16383", "slots 5461-10922"]
    assert sum(s["events"] for s in shards.values()) == runs["roomcast+cluster"][0]["events_sent"]
    assert runs["roomcast"][0]["redis_shards"].keys() == {"redis"}
    assert "| metric | roomcast+cluster | roomcast | roomcast+cluster/roomcast |" in done.stdout
    assert "Redis CPU per event by shard" in done.stdout
