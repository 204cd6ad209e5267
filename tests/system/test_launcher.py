"""The local cluster launcher starts everything, serves across replicas, and stops all on Ctrl-C."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import time

import pytest

from tests.harness import ROOT, UNIT, Client, free_port, http_get, unique

pytestmark = pytest.mark.system


def _free_pair() -> int:
    """A port p such that p and p + 1 are both free right now."""
    import socket

    for _ in range(100):
        p = free_port()
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", p + 1))
            except OSError:
                continue
        return p
    raise RuntimeError("no two consecutive free ports")


async def _talk_across(port_a: int, port_b: int) -> None:
    room = unique("launch")
    async with Client.open(f"ws://127.0.0.1:{port_a}/ws") as a, Client.open(f"ws://127.0.0.1:{port_b}/ws") as b:
        await a.hello(unique("a"))
        await a.request({"type": "create_room", "room_id": room, "game_type": "g"})
        await b.hello(unique("b"))
        await b.request({"type": "join", "room_id": room})
        ack = await a.request({"type": "event", "room_id": room, "event_type": "hi"})
        assert (await b.expect(type="event", event_type="hi"))["seq"] == ack["seq"]


def test_launcher_runs_a_working_cluster_and_stops_it() -> None:
    port = _free_pair()
    redis_port, coord_port = free_port(), free_port()
    while {redis_port, coord_port} & {port, port + 1}:
        redis_port, coord_port = free_port(), free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "gateway.launcher", "--gateways", "2", "--port", str(port),
         "--redis-port", str(redis_port), "--coordinator-port", str(coord_port)],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    try:
        lines = []
        assert proc.stdout is not None
        deadline = time.monotonic() + 30 * UNIT
        while not any("Ctrl-C" in line for line in lines):
            assert time.monotonic() < deadline and proc.poll() is None, "".join(lines)
            lines.append(proc.stdout.readline())
        for p in (port, port + 1):
            while http_get(f"http://127.0.0.1:{p}/readyz")[0] != 200:
                assert time.monotonic() < deadline
                time.sleep(0.1)
        asyncio.run(_talk_across(port, port + 1))
    finally:
        proc.send_signal(signal.SIGINT)
        assert proc.wait(20 * UNIT) == 0
    for p in (port, port + 1, redis_port, coord_port):
        try:
            status, _ = http_get(f"http://127.0.0.1:{p}/healthz", 0.5)
        except OSError:
            continue
        raise AssertionError(f"something still answers on port {p} ({status})")
