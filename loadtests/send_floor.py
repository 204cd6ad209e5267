"""The kernel's floor under a fan-out delivery: CPU per `send` of one small WebSocket frame to one
of many loopback TCP sockets, with no gateway logic at all (issue 14's ≤ 10 µs per delivery).

    python -m loadtests.send_floor [--sockets 500] [--rate 50000] [--seconds 3] [--bytes 130]

A sender process paces `rate` frames/s round-robin over `sockets` connections (the fan-out
workload's 25 members x 10 rooms x 2 gateways is 500 sockets and 50,000 deliveries/s at 1,000
events/s); a receiver process reads them with epoll, as the benchmark clients do. Reported: the
sender's CPU (utime + stime, `/proc`) per frame, for two ways of writing:

- `send`: `socket.send` in a plain loop, one syscall per frame (what a C gateway would pay);
- `uvloop`: `transport.write` on uvloop transports, the path roomcast's sessions use.

On loopback the sender's syscall also runs the receiver's TCP receive path (softirq) and its
wake-up, so this is the least a gateway that makes one write per delivery can cost; every
per-delivery figure of docs/benchmarks.md sits on top of it. Bounded: `seconds` of sending.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing as mp
import os
import selectors
import socket
import sys
import time
from collections.abc import Callable
from multiprocessing.connection import Connection

HOST = "127.0.0.1"


def cpu_s(pid: int) -> float:
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def receiver(port: int, n: int, conn: Connection, seconds: float) -> None:
    """Connect n sockets, then read everything until the sender is done (bounded)."""
    socks = [socket.create_connection((HOST, port)) for _ in range(n)]
    sel = selectors.DefaultSelector()
    for s in socks:
        s.setblocking(False)
        sel.register(s, selectors.EVENT_READ)
    conn.send("connected")
    got = 0
    deadline = time.monotonic() + seconds + 30
    while time.monotonic() < deadline:
        if conn.poll():
            break
        for key, _ in sel.select(0.05):
            try:
                got += len(key.fileobj.recv(65536))  # type: ignore[union-attr]
            except BlockingIOError:
                pass
    conn.send(got)


def run(mode: str, n: int, rate: float, seconds: float, size: int) -> dict[str, float]:
    srv = socket.socket()
    srv.bind((HOST, 0))
    srv.listen(n)
    parent, child = mp.Pipe()
    proc = mp.get_context("spawn").Process(target=receiver, args=(srv.getsockname()[1], n, child, seconds))
    proc.start()
    try:
        conns = []
        for _ in range(n):
            c, _addr = srv.accept()
            c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            c.setblocking(False)
            conns.append(c)
        if not parent.poll(60) or parent.recv() != "connected":
            raise RuntimeError("receiver did not connect")
        # A text frame of `size` bytes in all (server frames are not masked).
        body = b"x" * (size - 4)
        frame = b"\x81\x7e" + len(body).to_bytes(2, "big") + body
        batch = max(1, n // 10)  # one tick's writes: a tenth of the sockets, like one room's members
        ticks = rate / batch
        total = int(rate * seconds)
        sent, cpu = _write_paced(mode, conns, frame, batch, ticks, total)
        parent.send("done")
        got = parent.recv() if parent.poll(30) else -1
        return {"frames": sent, "cpu_us_per_frame": cpu / max(1, sent) * 1e6,
                "received_frames": got / len(frame) if got >= 0 else -1}
    finally:
        proc.join(30)
        if proc.is_alive():
            proc.kill()
        srv.close()


def _write_paced(mode: str, conns: list[socket.socket], frame: bytes, batch: int, ticks: float,
                 total: int) -> tuple[int, float]:
    """`total` frames, `batch` per tick at `ticks` per second, round-robin over the sockets, by
    `socket.send` or by uvloop transports' `write` (the same loop and pacing for both):
    the frames sent and the process' CPU seconds meanwhile."""
    import uvloop

    async def main() -> tuple[int, float]:
        loop = asyncio.get_running_loop()
        transports: list[asyncio.Transport] = []
        writes: list[Callable[[bytes], object]]
        if mode == "send":
            writes = [c.send for c in conns]
        else:
            for c in conns:
                t, _ = await loop.connect_accepted_socket(asyncio.Protocol, c)
                transports.append(t)
            writes = [t.write for t in transports]
        pid = os.getpid()
        c0 = cpu_s(pid)
        start = time.monotonic()
        sent = i = 0
        while sent < total:
            for _ in range(batch):
                writes[i](frame)
                i = (i + 1) % len(writes)
            sent += batch
            await asyncio.sleep(max(0.0, start + sent / batch / ticks - time.monotonic()))
        cpu = cpu_s(pid) - c0
        for t in transports:
            t.abort()
        return sent, cpu

    return uvloop.run(main())


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sockets", type=int, default=500)
    ap.add_argument("--rate", type=float, default=50_000.0, help="frames/s over all sockets")
    ap.add_argument("--seconds", type=float, default=3.0)
    ap.add_argument("--bytes", type=int, default=130, help="frame size (a ~100-byte event's frame is ~130-190)")
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args(argv)
    if not 1 <= args.sockets <= 5000 or not 0 < args.seconds <= 60 or not 8 <= args.bytes <= 65_000:
        ap.error("--sockets 1..5000, --seconds ≤ 60, --bytes 8..65000")
    print(f"send_floor: {args.sockets} sockets, {args.rate:g} frames/s, {args.bytes} B, {args.seconds:g} s; "
          f"load average {os.getloadavg()[0]:.2f}", file=sys.stderr)
    for mode in ("send", "uvloop"):
        runs = [run(mode, args.sockets, args.rate, args.seconds, args.bytes) for _ in range(args.repeat)]
        per = sorted(r["cpu_us_per_frame"] for r in runs)
        print(f"{mode:7s} sender CPU µs per frame: median {per[len(per) // 2]:.2f} "
              f"(runs {', '.join(f'{p:.2f}' for p in per)}); frames {runs[0]['frames']}, "
              f"received {runs[0]['received_frames']:.0f}")
    print(f"load average after {os.getloadavg()[0]:.2f}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
