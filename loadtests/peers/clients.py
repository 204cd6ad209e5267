"""Client processes of `python -m loadtests.peers` (multiprocessing, spawn), one adapter per target
(loadtests/peers/adapters.py). Same control protocol as loadtests/workers.py; every wait bounded.

- `members_main`: connect, hello, join (device, room, port) triples; "ready"; then on
  ("expect", {"want": {room: n}, "timeout": s}) wait until every socket has received n bench
  messages of its room (or the timeout) and report "result"; abort the sockets on "exit".
- `conns_main`: on "go", connect + hello + join (device, room) pairs with bounded concurrency,
  report "joined" with timings, hold the idle sockets until "stop", then "stopped".
"""

from __future__ import annotations

import asyncio
import gc
import time
from array import array
from multiprocessing.connection import Connection
from typing import Any

from ..workers import Control, _run
from ..wsclient import open_conn
from .adapters import ADAPTERS, BenchSocket


def members_main(conn: Connection, spec: dict[str, Any]) -> None:
    _run(_members, conn, spec)


async def _members(ctl: Control, spec: dict[str, Any]) -> None:
    cls = ADAPTERS[spec["target"]]
    host = spec["host"]
    latencies: array[int] = array("q")
    socks: list[BenchSocket] = []
    gate = asyncio.Semaphore(spec["concurrency"])

    async def join(device_id: str, room: str, port: int) -> None:
        async with gate:
            s: BenchSocket = await open_conn(host, port, cls, latencies=latencies)
            socks.append(s)
            s.room = room
            await s.hello(device_id)
            await s.join(room)

    await asyncio.wait_for(asyncio.gather(*(join(*j) for j in spec["joins"])), spec["setup_timeout"])
    ctl.send("ready", {"sockets": len(socks)})
    # The clients are the instrument: a cyclic collection of their few hundred sockets' objects
    # (gen2: 10-40 ms here) stalls every read behind it and shows as the target's latency. So
    # what exists after the joins is frozen out of the collector and collection is off until
    # the result is sent (reference counting still frees what the window allocates; bounded by
    # run_timeout). Every target gets the same clients.
    gc.collect()
    gc.freeze()
    gc.disable()
    cpu0 = time.process_time()
    msg = await ctl.recv(spec["run_timeout"])
    if msg[0] == "expect":
        want: dict[str, int] = msg[1]["want"]
        deadline = time.monotonic() + msg[1]["timeout"]
        pending = socks
        while time.monotonic() < deadline:
            pending = [s for s in pending if s.count < want[s.room] and not s.closed.done()]
            if not pending:
                break
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.05)  # anything beyond the expected count shows up as `extra`
        stats = [s.stats() | {"want": want[s.room]} for s in socks]
        ctl.send("result", {
            "sockets": len(socks),
            "received": sum(s["count"] for s in stats),
            "missing": sum(max(0, s["want"] - s["count"]) for s in stats),
            "extra": sum(max(0, s["count"] - s["want"]) for s in stats),
            "gaps": sum(s["gaps"] for s in stats),
            "disorder": sum(s["disorder"] for s in stats),
            "closed": sum(s["closed"] for s in stats),
            "protocol_errors": sum(s["protocol_errors"] for s in stats),
            "last_at": max((s["last_at"] for s in stats), default=0),
            "cpu_s": time.process_time() - cpu0,
            "latencies": latencies.tobytes(),
        })
        gc.enable()
        await ctl.recv(60)  # "exit"
    for s in socks:
        s.abort()


def conns_main(conn: Connection, spec: dict[str, Any]) -> None:
    _run(_conns, conn, spec)


async def _conns(ctl: Control, spec: dict[str, Any]) -> None:
    cls = ADAPTERS[spec["target"]]
    host, port = spec["host"], spec["port"]
    socks: list[BenchSocket] = []
    errors: list[str] = []
    took: array[int] = array("q")
    gate = asyncio.Semaphore(spec["concurrency"])

    async def one(device_id: str, room: str) -> None:
        async with gate:
            t = time.monotonic_ns()
            try:
                s: BenchSocket = await open_conn(host, port, cls)
                socks.append(s)
                await s.hello(device_id)
                await s.join(room)
            except Exception as exc:
                errors.append(f"{type(exc).__name__}: {exc}")
                return
            took.append(time.monotonic_ns() - t)

    ctl.send("loaded", {})
    await ctl.expect("go", spec["setup_timeout"])
    cpu0 = time.process_time()
    t0 = time.monotonic_ns()
    try:
        await asyncio.wait_for(asyncio.gather(*(one(d, r) for d, r in spec["pairs"])), spec["run_timeout"])
    except TimeoutError:
        errors.append("timed out")
    t1 = time.monotonic_ns()
    ctl.send("joined", {"ok": len(took), "errors": errors[:10], "n_errors": len(errors), "t0": t0, "t1": t1,
                        "took": took.tobytes(), "cpu_s": time.process_time() - cpu0})
    await ctl.expect("stop", spec["hold_timeout"])
    for s in socks:
        s.abort()
    ctl.send("stopped", {})
