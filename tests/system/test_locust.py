"""The Locust scenario (loadtests/locustfile.py) against a local cluster of two gateways.

A short, bounded headless run: `locust` is a subprocess (it monkey-patches the process with
gevent, so it is never imported here). Its users are spread over both replicas, share rooms
across them, drop and resume; any error reply, unexpected close, seq gap or failed resume is a
Locust failure, so the run must end with exit code 0 and an empty failure table.
"""

from __future__ import annotations

import csv
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from tests.harness import OUTPUT, ROOT, UNIT, cluster

# The `test` extra installs the `load` extra (locust, websocket-client): no skip here.
pytestmark = pytest.mark.system

LOCUSTFILE = ROOT / "loadtests" / "locustfile.py"
USERS = 20
RUN_SECONDS = 15


def run_locust(urls: list[str], prefix: Path, extra_env: dict[str, str] | None = None,
               locustfile: Path = LOCUSTFILE, cwd: Path = ROOT, users: int = USERS,
               run_seconds: int = RUN_SECONDS) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LOCUST_", "ROOMCAST_")) and k != "PYTHONPATH"}
    env["ROOMCAST_HOSTS"] = ",".join(urls)  # users round-robin over both replicas
    env.update(extra_env or {})
    cmd = [
        sys.executable, "-m", "locust", "-f", str(locustfile), "--headless",
        "-u", str(users), "-r", "10", "-t", f"{run_seconds}s",
        "--room-size", "4", "--event-rate", "2", "--ping-interval", "2",
        "--reconnect-prob", "0.05",  # about 15 drops + resumes in the run
        "--session-seconds", "6",  # each user leaves and enters a new room about twice
        "--reply-timeout", str(5 * UNIT),
        "--csv", str(prefix), "--exit-code-on-error", "1", "--only-summary",
    ]
    with open(f"{prefix}.log", "w") as log:
        return subprocess.run(cmd, env=env, cwd=cwd, stdout=log, stderr=subprocess.STDOUT, text=True,
                              timeout=run_seconds + 60 * UNIT)


def read_rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def configmap_files() -> list[str]:
    """The files loadtests/kustomization.yaml puts into the ConfigMap the Locust pods mount."""
    doc = yaml.safe_load((ROOT / "loadtests" / "kustomization.yaml").read_text(encoding="utf-8"))
    (gen,) = [g for g in doc["configMapGenerator"] if g["name"] == "roomcast-locustfile"]
    return list(gen["files"])


def test_locust_scenario_against_two_replicas() -> None:
    OUTPUT.mkdir(exist_ok=True)
    prefix = OUTPUT / f"locust-{time.strftime('%Y%m%d-%H%M%S')}"
    with cluster(2, 1) as c:
        result = run_locust([g.url for g in c.gateways], prefix)
        opened = [g.metrics().get("roomcast_connections_opened_total", 0.0) for g in c.gateways]
    log = Path(f"{prefix}.log").read_text(errors="replace")
    assert result.returncode == 0, f"locust exited {result.returncode}:\n{log[-6000:]}"

    stats = {(r["Type"], r["Name"]): r for r in read_rows(Path(f"{prefix}_stats.csv"))}
    failures = read_rows(Path(f"{prefix}_failures.csv"))
    exceptions = read_rows(Path(f"{prefix}_exceptions.csv"))
    assert not failures, failures
    assert not exceptions, exceptions
    assert all(int(r["Failure Count"]) == 0 for r in stats.values()), stats

    def count(rtype: str, name: str) -> int:
        row = stats.get((rtype, name))
        return int(row["Request Count"]) if row else 0

    for name in ("connect", "hello", "join", "create_room", "event", "ping", "leave", "rejoin"):
        assert count("WS", name) > 0, (name, sorted(stats))
    assert count("WS", "hello") >= USERS
    # Every event reaches the other three members of its room, across replicas.
    events, deliveries = count("WS", "event"), count("DELIVERY", "event")
    assert deliveries >= events > 0, (events, deliveries)
    delivery = stats[("DELIVERY", "event")]
    assert float(delivery["Average Response Time"]) > 0, delivery
    assert delivery["99%"] not in ("", "N/A"), delivery
    # Both replicas served sockets (round-robin, and resumes move to the other one).
    assert all(n > 0 for n in opened), opened


def test_locust_scenario_from_the_configmap_files(tmp_path: Path) -> None:
    """As in deploy/k8s/loadtest: only the ConfigMap's files, in a directory of their own (the
    pods' /locust), and Locust started from another working directory. The locustfile's
    helper modules must be among those files and found next to it."""
    mount = tmp_path / "locust"
    mount.mkdir()
    for name in configmap_files():
        shutil.copy(ROOT / "loadtests" / name, mount / name)
    OUTPUT.mkdir(exist_ok=True)
    prefix = OUTPUT / f"locust-cm-{time.strftime('%Y%m%d-%H%M%S')}"
    users = 8
    with cluster(2, 1) as c:
        result = run_locust([g.url for g in c.gateways], prefix, locustfile=mount / "locustfile.py", cwd=tmp_path,
                            users=users, run_seconds=8)
    log = Path(f"{prefix}.log").read_text(errors="replace")
    assert result.returncode == 0, f"locust exited {result.returncode}:\n{log[-6000:]}"
    stats = {(r["Type"], r["Name"]): r for r in read_rows(Path(f"{prefix}_stats.csv"))}
    assert not read_rows(Path(f"{prefix}_failures.csv"))
    assert not read_rows(Path(f"{prefix}_exceptions.csv"))
    assert int(stats[("WS", "hello")]["Request Count"]) >= users, sorted(stats)
    events = int(stats[("WS", "event")]["Request Count"])
    assert int(stats[("DELIVERY", "event")]["Request Count"]) >= events > 0
