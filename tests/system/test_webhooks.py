"""Backend webhooks (BACKEND_CONNECT_URL, BACKEND_JOIN_URL) against a real gateway process
and a real HTTP server started by the test (http.server on 127.0.0.1, in a thread): refusals
get `unauthorized` / `forbidden` with the backend's reason, an answer may set the user id and
the role, and a backend that does not answer in time (or answers wrongly) fails closed with
`unavailable`. Calls share pooled keep-alive connections and are counted by outcome."""

from __future__ import annotations

import contextlib
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from tests.harness import UNIT, Client, gateway, unique

SECRET = "hook-secret-123"
TIMEOUT_MS = int(600 * UNIT)
USER = "6f1c2a3b-4d5e-4f60-8a7b-9c0d1e2f3a4b"


class Backend:
    """The game's backend as the test scripts it: per device id, what each hook answers."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, dict[str, Any], str | None]] = []  # (path, body, Authorization)
        self.connections = 0
        self.flaky_calls = 0
        self.release = threading.Event()  # lets a "slow" answer go (at teardown)
        self.lock = threading.Lock()

    def answer(self, path: str, body: dict[str, Any]) -> tuple[int, bytes]:
        device = body.get("device_id", "")
        if "slow" in device:
            self.release.wait(20 * UNIT)  # far beyond BACKEND_TIMEOUT_MS; bounded all the same
            return 200, b'{"allow": true}'
        if "broken" in device:
            return 500, b"oops"
        if "flaky" in device:
            with self.lock:
                self.flaky_calls += 1
                if self.flaky_calls <= 2:
                    return 503, b"busy"  # the first two hellos: the backend is not up yet
        if "garbled" in device:
            return 200, b'{"allowed": "yes"}'
        if path == "/connect":
            if "banned" in device:
                return 200, b'{"allow": false, "reason": "this device is banned"}'
            if "known" in device:
                return 200, json.dumps({"allow": True, "user_id": USER}).encode()
            return 200, b'{"allow": true}'
        if "blocked" in device:
            return 200, b'{"allow": false, "reason": "not on the guest list of ' + body["room_id"].encode() + b'"}'
        if "watcher" in device:
            return 200, b'{"allow": true, "role": "spectator"}'
        return 200, b'{"allow": true}'


@contextlib.contextmanager
def backend_server() -> Iterator[tuple[Backend, str]]:
    backend = Backend()

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive: the gateway's pool may reuse the connection

        def setup(self) -> None:
            super().setup()
            with backend.lock:
                backend.connections += 1

        def do_POST(self) -> None:
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            with backend.lock:
                backend.calls.append((self.path, body, self.headers.get("Authorization")))
            status, reply = backend.answer(self.path, body)
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(reply)))
            self.end_headers()
            self.wfile.write(reply)

        def log_message(self, format: str, *args: Any) -> None:
            return None

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield backend, f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        backend.release.set()
        server.shutdown()
        server.server_close()
        thread.join(10 * UNIT)


@contextlib.contextmanager
def hooked_gateway(connect: bool = True, join: bool = True) -> Iterator[tuple[Any, Backend]]:
    with backend_server() as (backend, base):
        env = {"BACKEND_WEBHOOK_SECRET": SECRET, "BACKEND_TIMEOUT_MS": str(TIMEOUT_MS)}
        if connect:
            env["BACKEND_CONNECT_URL"] = base + "/connect"
        if join:
            env["BACKEND_JOIN_URL"] = base + "/join"
        with gateway(env) as gw:
            yield gw, backend


def calls_of(backend: Backend, path: str) -> list[dict[str, Any]]:
    return [body for p, body, _ in backend.calls if p == path]


async def test_the_join_webhook_refuses_one_device_and_allows_another() -> None:
    room = unique("hooked")
    with hooked_gateway(connect=False) as (gw, backend):
        async with Client.open(gw.url) as host, Client.open(gw.url) as guest, Client.open(gw.url) as gatecrasher:
            await host.hello(unique("dev-host"))
            created = await host.request({"type": "create_room", "room_id": room, "game_type": "quiz"})
            assert created["type"] == "room_created", created
            await guest.hello(unique("dev-guest"))
            joined = await guest.request({"type": "join", "room_id": room})
            assert joined["type"] == "joined" and joined["role"] == "player", joined
            crasher = unique("dev-blocked")
            await gatecrasher.hello(crasher)
            refused = await gatecrasher.request({"type": "join", "room_id": room})
            assert refused["type"] == "error" and refused["code"] == "forbidden", refused
            assert refused["message"] == f"not on the guest list of {room}"
            # Nothing happened in the room: no participant_joined for the refused device.
            events = [m for m in await host.drain(0.3 * UNIT) if m.get("type") == "event"]
            assert [e["payload"]["device_id"] for e in events if e["event_type"] == "participant_joined"] == [
                created["room"]["created_by"], joined["participants"][-1]["device_id"]]
            # A refused create_room makes no room.
            other = unique("hooked")
            nope = await gatecrasher.request({"type": "create_room", "room_id": other, "game_type": "quiz"})
            assert nope["type"] == "error" and nope["code"] == "forbidden", nope
            assert (await guest.request({"type": "join", "room_id": other}))["code"] == "not_found"
        joins = calls_of(backend, "/join")
        assert joins[0]["event"] == "create_room" and joins[0]["role"] == "host" and joins[0]["room_id"] == room
        assert joins[0]["game_type"] == "quiz"
        assert {"device_id", "user_id", "room_id", "role", "socket_id", "node"} <= set(joins[1])
        assert (joins[1]["event"], joins[1]["role"], joins[1]["room_id"]) == ("join", "player", room)
        assert {auth for _, _, auth in backend.calls} == {f"Bearer {SECRET}"}
        # Pooled: sequential calls share one keep-alive connection.
        assert len(backend.calls) >= 5 and backend.connections == 1, (len(backend.calls), backend.connections)
        m = gw.metrics()
        # allowed: the create_room, the guest's join, its join of the room that was not made
        assert m['roomcast_webhook_calls_total{hook="join",outcome="allow"}'] == 3
        assert m['roomcast_webhook_calls_total{hook="join",outcome="deny"}'] >= 2


async def test_the_join_webhook_can_set_the_role() -> None:
    room = unique("hooked")
    with hooked_gateway(connect=False) as (gw, _backend):
        async with Client.open(gw.url) as host, Client.open(gw.url) as watcher:
            await host.hello(unique("dev-host"))
            await host.request({"type": "create_room", "room_id": room, "game_type": "quiz", "max_players": 1})
            await watcher.hello(unique("dev-watcher"))
            # It asks to play in a full room; the backend makes it a spectator, who takes no seat.
            joined = await watcher.request({"type": "join", "room_id": room, "role": "player"})
            assert joined["type"] == "joined" and joined["role"] == "spectator", joined


async def test_the_connect_webhook_refuses_a_hello_and_can_set_the_user() -> None:
    with hooked_gateway(join=False) as (gw, backend):
        async with Client.open(gw.url) as banned:
            reply = await banned.request({"type": "hello", "device_id": unique("dev-banned")})
            assert reply["type"] == "error" and reply["code"] == "unauthorized", reply
            assert reply["message"] == "this device is banned"
            assert (await banned.request({"type": "ping"}))["type"] == "error"  # still not welcomed
        async with Client.open(gw.url) as known:
            welcome = await known.hello(unique("dev-known"), metadata={"app": "quiz"})
            assert welcome["user_id"] == USER
            room = unique("r")
            created = await known.request({"type": "create_room", "room_id": room, "game_type": "quiz"})
            first = await known.expect(type="event", room_id=room, seq=1)
            assert created["type"] == "room_created" and first["from"]["user_id"] == USER
        [call, _] = calls_of(backend, "/connect")
        assert call["event"] == "connect" and call["user_id"] is None and call["room_id"] is None
        assert call["device_id"].startswith("dev-banned") and call["ip"] == "127.0.0.1"
        m = gw.metrics()
        assert m['roomcast_webhook_calls_total{hook="connect",outcome="deny"}'] == 1
        assert m['roomcast_webhook_calls_total{hook="connect",outcome="allow"}'] == 1


async def test_a_webhook_that_does_not_answer_in_time_fails_closed() -> None:
    room = unique("hooked")
    with hooked_gateway() as (gw, _backend):
        async with Client.open(gw.url) as slow:
            reply = await slow.request({"type": "hello", "device_id": unique("dev-slow")}, timeout=10 * UNIT)
            assert reply["type"] == "error" and reply["code"] == "unavailable", reply
        async with Client.open(gw.url) as host, Client.open(gw.url) as broken, Client.open(gw.url) as garbled:
            await host.hello(unique("dev-host"))
            await host.request({"type": "create_room", "room_id": room, "game_type": "quiz"})
            # A backend that answers 500, or with a body that is no verdict, fails closed as well.
            for client, device in ((broken, "dev-broken"), (garbled, "dev-garbled")):
                reply = await client.request({"type": "hello", "device_id": unique(device)})
                assert reply["type"] == "error" and reply["code"] == "unavailable", reply
        m = gw.metrics()
        assert m['roomcast_webhook_calls_total{hook="connect",outcome="timeout"}'] == 1
        assert m['roomcast_webhook_calls_total{hook="connect",outcome="bad_answer"}'] == 2


async def test_a_join_webhook_that_does_not_answer_in_time_fails_closed() -> None:
    room = unique("hooked")
    with hooked_gateway(connect=False) as (gw, _backend):
        async with Client.open(gw.url) as host, Client.open(gw.url) as slow:
            await host.hello(unique("dev-host"))
            await host.request({"type": "create_room", "room_id": room, "game_type": "quiz"})
            await slow.hello(unique("dev-slow"))
            reply = await slow.request({"type": "join", "room_id": room}, timeout=10 * UNIT)
            assert reply["type"] == "error" and reply["code"] == "unavailable", reply
            # It is not in the room: its event there is refused.
            ev = await slow.request({"type": "event", "room_id": room, "event_type": "answer"})
            assert ev["code"] == "not_member"
        assert gw.metrics()['roomcast_webhook_calls_total{hook="join",outcome="timeout"}'] == 1


async def test_an_unreachable_backend_fails_closed() -> None:
    with backend_server() as (_backend, base):
        pass  # stopped: nothing listens on its port any more
    with gateway({"BACKEND_CONNECT_URL": base + "/connect", "BACKEND_TIMEOUT_MS": str(TIMEOUT_MS)}) as gw:
        async with Client.open(gw.url) as c:
            reply = await c.request({"type": "hello", "device_id": unique("dev-any")})
            assert reply["type"] == "error" and reply["code"] == "unavailable", reply
        assert gw.metrics()['roomcast_webhook_calls_total{hook="connect",outcome="error"}'] == 1


async def test_clients_retry_a_hello_the_backend_could_not_decide() -> None:
    """roomcast_client gets `unavailable` twice (the backend answers 503), gives those sockets
    up and connects with backoff instead of stopping: the third hello is welcomed."""
    from roomcast_client import RoomcastClient

    with hooked_gateway(join=False) as (gw, backend):
        client = RoomcastClient([gw.url], device_id=unique("dev-flaky"), backoff=(0.05 * UNIT, 0.2 * UNIT))
        try:
            welcome = await client.connect(timeout=10 * UNIT)
            assert welcome["type"] == "welcome" and client.state == "open"
        finally:
            await client.close()
        assert backend.flaky_calls == 3
