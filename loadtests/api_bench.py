"""Server API publishes per second per replica (docs/benchmarks.md, "Server API").

    python -m loadtests.api_bench [--duration 5] [--concurrency 32] [--runs 3] [--modes embedded,redis]

Per run: a fresh gateway (embedded, or one replica over an ephemeral Redis), a room created
through the API, one WebSocket member that must receive every event, then `--concurrency`
publishers each sending `POST /api/v1/rooms/{id}/events` one after another for `--duration`
seconds: a new connection per request on the gateway port (modes `embedded`, `redis`), or one
keep-alive connection per publisher on API_PORT (modes `*-keepalive`). Reported: publishes/s (acked
200s ÷ window), the gateway's CPU per publish, and whether the member got every event in
order. The median of `--runs` runs per mode; every run in test-output/api-bench-<time>.json.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import statistics
import time
from typing import Any

import orjson
from websockets.asyncio.client import connect

from . import procstat
from .procs import HOST, OUTPUT, ROOT, GatewayProc, free_port
from .services import RedisServer

SECRET = "bench-secret-0123456789"


async def _post(port: int, path: str, body: bytes) -> tuple[int, bytes]:
    reader, writer = await asyncio.open_connection(HOST, port)
    try:
        writer.write(b"POST %s HTTP/1.1\r\nHost: bench\r\nAuthorization: Bearer %s\r\nContent-Type: application/json"
                     b"\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s"
                     % (path.encode(), SECRET.encode(), len(body), body))
        data = await reader.read()
    finally:
        writer.close()
    head, _, payload = data.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), payload


class KeepAlive:
    """One keep-alive connection to API_PORT: requests one after another on it."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.conn: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None

    async def post(self, path: str, body: bytes) -> tuple[int, bytes]:
        if self.conn is None:
            self.conn = await asyncio.open_connection(HOST, self.port)
        reader, writer = self.conn
        writer.write(b"POST %s HTTP/1.1\r\nHost: bench\r\nAuthorization: Bearer %s\r\n"
                     b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
                     % (path.encode(), SECRET.encode(), len(body), body))
        head = await reader.readuntil(b"\r\n\r\n")
        length = int(head.split(b"Content-Length: ", 1)[1].split(b"\r\n", 1)[0])
        return int(head.split(b" ", 2)[1]), await reader.readexactly(length)

    def close(self) -> None:
        if self.conn is not None:
            self.conn[1].close()


async def one_run(mode: str, duration: float, concurrency: int, redis_url: str | None) -> dict[str, Any]:
    env = {"SERVER_API_KEYS": f"bench={SECRET}", "API_RATE": "1000000"}
    keep_alive = mode.endswith("-keepalive")
    if keep_alive:
        env["API_PORT"] = str(free_port())
    if redis_url is not None:
        env["REDIS_URL"] = redis_url
    gw = GatewayProc(env, f"api-{mode}")
    gw.start()
    try:
        await gw.wait_ready()
        status, body = await _post(gw.port, "/api/v1/rooms", b'{"game_type":"bench"}')
        assert status == 201, (status, body)
        room_id = orjson.loads(body)["room"]["room_id"]
        path = f"/api/v1/rooms/{room_id}/events"
        seen: list[int] = []
        target = [0]  # the last acked seq, once the publishers are done
        all_seen = asyncio.Event()
        async with connect(f"ws://{HOST}:{gw.port}/ws", compression=None, ping_interval=None) as ws:
            await ws.send(orjson.dumps({"type": "hello", "id": 1, "device_id": "bench-member-1"}).decode())
            await ws.recv()
            await ws.send(orjson.dumps({"type": "join", "id": 2, "room_id": room_id}).decode())
            while orjson.loads(await ws.recv()).get("type") != "joined":
                pass

            async def member() -> None:
                async for raw in ws:
                    msg = orjson.loads(raw)
                    if msg.get("type") == "event" and msg.get("event_type") == "bench":
                        seen.append(msg["seq"])
                        if target[0] and msg["seq"] >= target[0]:
                            all_seen.set()

            reading = asyncio.get_running_loop().create_task(member())
            await gw.settle()
            acked: list[int] = []
            errors: list[int] = []
            payload = orjson.dumps({"event_type": "bench", "payload": {"pad": "x" * 200}})
            stop_at = time.monotonic() + duration

            async def publisher() -> None:
                conn = KeepAlive(int(env["API_PORT"])) if keep_alive else None
                try:
                    while time.monotonic() < stop_at:
                        if conn is not None:
                            code, answer = await conn.post(path, payload)
                        else:
                            code, answer = await _post(gw.port, path, payload)
                        if code == 200:
                            acked.append(orjson.loads(answer)["seq"])
                        else:
                            errors.append(code)
                finally:
                    if conn is not None:
                        conn.close()

            cpu0, t0 = procstat.cpu_seconds(gw.pid), time.monotonic()
            await asyncio.gather(*(publisher() for _ in range(concurrency)))
            window = time.monotonic() - t0
            cpu = procstat.cpu_seconds(gw.pid) - cpu0
            target[0] = max(acked, default=0)
            if seen and seen[-1] >= target[0]:
                all_seen.set()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(all_seen.wait(), 10)
            reading.cancel()
        return {
            "mode": mode, "publishes": len(acked), "errors": len(errors), "window_s": round(window, 3),
            "publishes_per_s": round(len(acked) / window, 1),
            "server_cpu_us_per_publish": round(cpu / max(1, len(acked)) * 1e6, 1),
            "member_got_all_in_order": seen == sorted(acked),
        }
    finally:
        await gw.stop()


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--duration", type=float, default=5.0)
    ap.add_argument("--concurrency", type=int, default=32)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--modes", default="embedded,redis,embedded-keepalive,redis-keepalive")
    args = ap.parse_args()
    results: list[dict[str, Any]] = []
    for mode in args.modes.split(","):
        redis = RedisServer().start() if mode.startswith("redis") else None
        try:
            for i in range(args.runs):
                r = await one_run(mode, args.duration, args.concurrency, redis.url if redis else None)
                r["run"] = i + 1
                results.append(r)
                print(json.dumps(r))
        finally:
            if redis is not None:
                redis.stop()
    print("\nmode                median publishes/s   median server CPU µs/publish   all delivered")
    for mode in args.modes.split(","):
        rs = [r for r in results if r["mode"] == mode]
        print(f"{mode:19s} {statistics.median(r['publishes_per_s'] for r in rs):>18.0f}   "
              f"{statistics.median(r['server_cpu_us_per_publish'] for r in rs):>28.0f}   "
              f"{all(r['member_got_all_in_order'] and not r['errors'] for r in rs)}")
    OUTPUT.mkdir(exist_ok=True)
    out = OUTPUT / f"api-bench-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.write_text(json.dumps({"args": vars(args), "machine": procstat.machine_info(ROOT), "loadavg": procstat.loadavg(), "runs": results}, indent=1))
    print(f"\n{out}")


if __name__ == "__main__":
    asyncio.run(main())
