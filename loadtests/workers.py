"""Client processes of the benchmark, started by bench.py with multiprocessing (spawn).

Each runs its own uvloop and many lean sockets, and talks to the orchestrator over a
multiprocessing Pipe that the event loop watches with `add_reader`, so control messages
never block the sockets. Every wait has a timeout and a worker exits when its parent goes.

- `members_main`: fan-out receivers. Connect, hello, join one room, report "ready", then
  count bench events until every socket has seen `bench_end` (or the parent says "stop"),
  and report per-socket stats plus the raw latency samples (ns, array "q"). With
  `spec["joins"]` (cluster phase) each socket has its own room, gateway port and `group`
  label; latencies are then kept per group and each socket's stats carry its room, port
  and group.
- `conns_main`: connect-rate and idle-memory clients. Wait for "go", connect + hello + join
  their (device, room) pairs with bounded concurrency, report timings, then hold the idle
  sockets open (reading and discarding) until "stop".
"""

from __future__ import annotations

import asyncio
import os
import time
import traceback
from array import array
from multiprocessing.connection import Connection
from typing import Any

from .wsclient import Conn, Member, open_conn


class Control:
    """The orchestrator's Pipe, readable without blocking the event loop."""

    def __init__(self, conn: Connection) -> None:
        self.conn = conn

    async def recv(self, timeout: float | None = None) -> Any:
        if not self.conn.poll():
            loop = asyncio.get_running_loop()
            ready: asyncio.Future[None] = loop.create_future()
            fd = self.conn.fileno()
            loop.add_reader(fd, lambda: ready.done() or ready.set_result(None))
            try:
                await asyncio.wait_for(ready, timeout)
            finally:
                loop.remove_reader(fd)
        os.set_blocking(self.conn.fileno(), True)  # add_reader made it non-blocking
        return self.conn.recv()

    async def expect(self, kind: str, timeout: float) -> dict[str, Any]:
        """The next message, which must be `(kind, payload)`; a worker's error is raised."""
        msg = await self.recv(timeout)
        if msg[0] == "error":
            raise RuntimeError(f"client process failed:\n{msg[1]}")
        if msg[0] != kind:
            raise RuntimeError(f"expected {kind!r} from a client process, got {msg[0]!r}")
        payload: dict[str, Any] = msg[1]
        return payload

    def send(self, kind: str, payload: Any = None) -> None:
        # A pending recv() keeps the fd registered (and non-blocking) with the loop; a large
        # message must still go out whole, so write it in blocking mode.
        os.set_blocking(self.conn.fileno(), True)
        self.conn.send((kind, payload))


def _run(main: Any, conn: Connection, spec: dict[str, Any]) -> None:
    import uvloop

    ctl = Control(conn)
    try:
        uvloop.run(main(ctl, spec))
    except (EOFError, BrokenPipeError):
        pass  # the orchestrator is gone
    except BaseException:
        try:
            ctl.send("error", traceback.format_exc())
        except OSError:
            pass
        raise


# ---------------------------------------------------------------- fan-out receivers


def members_main(conn: Connection, spec: dict[str, Any]) -> None:
    _run(_members, conn, spec)


async def _members(ctl: Control, spec: dict[str, Any]) -> None:
    # (device_id, room_id, port, group) per socket; the single-room form is one group "".
    joins: list[tuple[str, str, int, str]] = [tuple(j) for j in spec["joins"]] if "joins" in spec else \
        [(d, spec["room_id"], spec["port"], "") for d in spec["devices"]]
    host = spec["host"]
    latencies: dict[str, array[int]] = {}
    members: list[tuple[Member, str, int, str]] = []
    gate = asyncio.Semaphore(spec["concurrency"])

    async def join(device_id: str, room_id: str, port: int, group: str) -> None:
        async with gate:
            lat = latencies.setdefault(group, array("q"))
            m: Member = await open_conn(host, port, Member, latencies=lat)
            members.append((m, room_id, port, group))
            await m.hello(device_id)
            joined = await m.join(room_id)
            m.last_seq = m.last_seq or joined["seq"]  # events may precede the reply

    await asyncio.wait_for(asyncio.gather(*(join(*j) for j in joins)), spec["setup_timeout"])
    cpu0 = time.process_time()
    ctl.send("ready", {"sockets": len(members)})

    everyone = asyncio.gather(*(m.done for m, *_ in members))
    stop = asyncio.ensure_future(ctl.recv())
    await asyncio.wait({everyone, stop}, timeout=spec["run_timeout"], return_when=asyncio.FIRST_COMPLETED)
    cpu = time.process_time() - cpu0
    if "joins" in spec:
        sockets = [m.stats() | {"room_id": r, "port": p, "group": g} for m, r, p, g in members]
        lat_out: Any = {g: a.tobytes() for g, a in latencies.items()}
    else:
        sockets = [m.stats() for m, *_ in members]
        lat_out = latencies.get("", array("q")).tobytes()
    ctl.send("result", {"sockets": sockets, "cpu_s": cpu, "latencies": lat_out})
    if not stop.done():
        await asyncio.wait({stop}, timeout=60)  # "exit"
    stop.cancel()
    everyone.cancel()
    for m, *_ in members:
        m.abort()


# ---------------------------------------------------------------- connect rate and idle sockets


def conns_main(conn: Connection, spec: dict[str, Any]) -> None:
    _run(_conns, conn, spec)


async def _conns(ctl: Control, spec: dict[str, Any]) -> None:
    host, port = spec["host"], spec["port"]
    conns: list[Conn] = []
    errors: list[str] = []
    took: array[int] = array("q")
    gate = asyncio.Semaphore(spec["concurrency"])

    async def one(device_id: str, room_id: str) -> None:
        async with gate:
            t = time.monotonic_ns()
            try:
                c: Conn = await open_conn(host, port, Conn)
                conns.append(c)
                await c.hello(device_id)
                await c.join(room_id)
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
    ctl.send("joined", {
        "ok": len(took), "errors": errors[:20], "n_errors": len(errors), "t0": t0, "t1": t1,
        "took": took.tobytes(), "cpu_s": time.process_time() - cpu0,
    })
    await ctl.expect("stop", spec["hold_timeout"])
    for c in conns:
        c.abort()
    ctl.send("stopped", {})
