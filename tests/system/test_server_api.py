"""The server API (/api/v1/...) against real gateway processes: embedded, and two replicas
over Redis. The backend is a service, not a participant: its events carry `from.service`,
its rooms have no host, its kicks and disconnects act on every replica."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Iterator
from typing import Any

import orjson
import pytest

from roomcast_client.admin import AdminClient, AdminError
from tests.harness import UNIT, Client, cluster, free_port, gateway, parse_metrics, unique

KEY_NAME = "quizmaster"
SECRET = "s3cret-for-the-quiz-backend"
OTHER = "other-key-with-16-chars-min"
ENV = {"SERVER_API_KEYS": f"{KEY_NAME}={SECRET},ops={OTHER}", "GATEWAY_LOG_EVENTS": "false"}


def raw_http(port: int, request: bytes) -> tuple[int, dict[str, Any] | None, str]:
    """One request as given, on a plain socket: (status, JSON body or None, head)."""
    with socket.create_connection(("127.0.0.1", port), timeout=5 * UNIT) as s:
        s.sendall(request)
        data = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    try:
        value = orjson.loads(body) if body else None
    except orjson.JSONDecodeError:
        value = None  # not the API (text)
    return status, value, head.decode("latin-1")


def get(port: int, path: str, auth: str | None) -> tuple[int, dict[str, Any] | None, str]:
    lines = [f"GET {path} HTTP/1.1", "Host: x", "Connection: close"]
    if auth is not None:
        lines.append(f"Authorization: {auth}")
    return raw_http(port, ("\r\n".join(lines) + "\r\n\r\n").encode())


@pytest.fixture(scope="module")
def embedded() -> Iterator[tuple[str, str, int]]:
    api_port = free_port()
    with gateway(dict(ENV, API_PORT=str(api_port))) as gw:
        yield gw.http, gw.url, api_port


@pytest.fixture(scope="module")
def two_replicas() -> Iterator[tuple[str, str, str, str]]:
    with cluster(n_gateways=2, n_coordinators=1, extra_env=ENV) as c:
        a, b = c.gateways
        yield a.http, a.url, b.http, b.url


def port_of(http: str) -> int:
    return int(http.rsplit(":", 1)[1])


@pytest.mark.parametrize("where", ["embedded", "two_replicas"])
def test_keys_are_required_and_compared(where: str, request: pytest.FixtureRequest) -> None:
    setup = request.getfixturevalue(where)
    ports = [port_of(setup[0])] + ([setup[2]] if where == "embedded" else [port_of(setup[2])])
    for port in ports:
        for auth in (None, "Bearer wrong-secret-of-some-length", f"Basic {SECRET}", f"Bearer {SECRET}x"):
            status, body, head = get(port, "/api/v1/rooms", auth)
            assert status == 401, (port, auth, status, body)
            assert body is not None and body["code"] == "unauthorized"
            assert "WWW-Authenticate: Bearer" in head
        status, body, _ = get(port, "/api/v1/rooms", f"Bearer {SECRET}")
        assert status == 200 and body is not None and "rooms" in body
        status, body, _ = get(port, "/api/v1/rooms", f"Bearer {OTHER}")
        assert status == 200
        status, body, _ = get(port, "/api/v1/nothing-here", f"Bearer {SECRET}")
        assert status == 404 and body is not None and body["code"] == "not_found"


def test_api_off_without_keys() -> None:
    with gateway({}) as gw:
        status, body, _ = get(gw.port, "/api/v1/rooms", f"Bearer {SECRET}")
        assert status == 404, (status, body)


def test_edge_limits_and_errors(embedded: tuple[str, str, int]) -> None:
    http, _, api_port = embedded
    port = port_of(http)
    big = b"x" * 70_000  # over MAX_FRAME_BYTES (64 KiB)
    status, body, _ = raw_http(port, b"POST /api/v1/rooms HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer "
                               + SECRET.encode() + b"\r\nContent-Length: %d\r\n\r\n" % len(big) + big)
    assert status == 413 and body is not None and body["code"] == "bad_request"
    status, body, _ = raw_http(api_port, b"POST /api/v1/rooms HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer "
                               + SECRET.encode() + b"\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n")
    assert status == 501 and body is not None
    bad = b'{"game_type": 5}'
    status, body, _ = raw_http(port, b"POST /api/v1/rooms HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer "
                               + SECRET.encode() + b"\r\nContent-Length: %d\r\n\r\n" % len(bad) + bad)
    assert status == 400 and body is not None and "game_type" in body["message"]

    async def run() -> None:
        api = AdminClient(http, SECRET)
        room = (await api.create_room("quiz"))["room"]
        rid = room["room_id"]
        with pytest.raises(AdminError) as err:
            await api.create_room("quiz", room_id=rid)
        assert (err.value.status, err.value.code) == (409, "conflict")
        with pytest.raises(AdminError) as err:
            await api.publish(rid, "participant_joined")
        assert (err.value.status, err.value.code) == (400, "bad_request")
        with pytest.raises(AdminError) as err:
            await api.get_room("no-such-room-" + unique())
        assert (err.value.status, err.value.code) == (404, "not_found")
        with pytest.raises(AdminError) as err:
            await api.disconnect("device-abcdefgh", code=1000)
        assert err.value.status == 400
        await api.close_room(rid)
        with pytest.raises(AdminError) as err:
            await api.publish(rid, "late")
        assert (err.value.status, err.value.code) == (409, "room_closed")

    asyncio.run(run())


def test_rate_limit_per_key() -> None:
    with gateway(dict(ENV, API_RATE="1")) as gw:
        statuses = [get(gw.port, "/api/v1/rooms", f"Bearer {SECRET}")[0] for _ in range(4)]
        assert statuses[:2] == [200, 200] and statuses[-1] == 429, statuses
        status, body, head = get(gw.port, "/api/v1/rooms", f"Bearer {SECRET}")
        assert status == 429 and body is not None and body["code"] == "rate_limited" and "Retry-After:" in head
        assert get(gw.port, "/api/v1/rooms", f"Bearer {OTHER}")[0] == 200  # another key has its own budget
        wrong = "Bearer a-wrong-secret-someone-tried"
        assert get(gw.port, "/api/v1/rooms", wrong)[0] == 401
        log = gw.log()
        assert SECRET not in log and OTHER not in log and "a-wrong-secret-someone-tried" not in log


def test_a_request_in_pieces_on_the_gateway_port(embedded: tuple[str, str, int]) -> None:
    """The gateway port tells an API request from a WebSocket handshake by its first bytes,
    however they are split; both still work byte by byte."""
    http, _, _ = embedded
    body = b'{"game_type": "pieces"}'
    request = (b"POST /api/v1/rooms HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + SECRET.encode()
               + b"\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
    with socket.create_connection(("127.0.0.1", port_of(http)), timeout=5 * UNIT) as s:
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for i in range(0, 40):  # the first 40 bytes one by one, then the rest
            s.sendall(request[i:i + 1])
            time.sleep(0.002)
        s.sendall(request[40:])
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    assert data.startswith(b"HTTP/1.1 201 "), data[:200]
    assert orjson.loads(data.partition(b"\r\n\r\n")[2])["room"]["game_type"] == "pieces"

    async def ws_in_pieces() -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port_of(http))
        handshake = (b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                     b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")
        for i in range(len(handshake)):
            writer.write(handshake[i:i + 1])
            await writer.drain()
            if i < 12:
                await asyncio.sleep(0.002)
        status = await asyncio.wait_for(reader.readuntil(b"\r\n"), 5 * UNIT)
        writer.close()
        assert status.startswith(b"HTTP/1.1 101 "), status

    asyncio.run(ws_in_pieces())


def _check_refs(node: Any, doc: dict[str, Any]) -> int:
    n = 0
    if isinstance(node, dict):
        ref = node.get("$ref")
        if isinstance(ref, str):
            target: Any = doc
            for part in ref.removeprefix("#/").split("/"):
                target = target[part]  # KeyError: a dangling reference
            n += 1
        for v in node.values():
            n += _check_refs(v, doc)
    elif isinstance(node, list):
        for v in node:
            n += _check_refs(v, doc)
    return n


def test_openapi_document(embedded: tuple[str, str, int]) -> None:
    http, _, api_port = embedded
    for port in (port_of(http), api_port):
        status, doc, head = get(port, "/api/v1/openapi.json", None)
        assert status == 200 and doc is not None and "application/json" in head
        assert doc["openapi"].startswith("3.1")
        ops = {(path, method) for path, item in doc["paths"].items() for method in item if method != "parameters"}
        assert ops >= {("/rooms", "post"), ("/rooms", "get"), ("/rooms/{room_id}", "get"),
                       ("/rooms/{room_id}", "patch"), ("/rooms/{room_id}/events", "post"),
                       ("/rooms/{room_id}/events", "get"), ("/rooms/{room_id}/close", "post"),
                       ("/rooms/{room_id}/participants/{device_id}", "delete"),
                       ("/devices/{device_id}/disconnect", "post"), ("/openapi.json", "get")}
        for path, item in doc["paths"].items():
            for method, op in item.items():
                if method == "parameters":
                    continue
                assert op["responses"], (path, method)
                names = {p["name"] for p in item.get("parameters", []) + op.get("parameters", []) if p["in"] == "path"}
                assert names == {seg[1:-1] for seg in path.split("/") if seg.startswith("{")}, path
        assert _check_refs(doc, doc) > 10
        assert doc["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer"
    try:
        from openapi_spec_validator import validate
    except ImportError:
        return
    validate(doc)


async def _scenario(api_a: AdminClient, api_b: AdminClient, ws_a: str, ws_b: str) -> None:
    game = unique("quiz")
    created = await api_a.create_room(game, max_players=2, game_data={"round": 0})
    room = created["room"]
    rid = room["room_id"]
    assert room["current_players"] == 0 and room["created_by"] == f"service:{KEY_NAME}" and created["epoch"]
    assert (await api_b.list_rooms(game_type=game))["rooms"][0]["room_id"] == rid
    dev_a, dev_b, dev_c = unique("dev-a"), unique("dev-b"), unique("dev-c")
    async with Client.open(ws_a) as a, Client.open(ws_b) as b, Client.open(ws_b) as c:
        await a.hello(dev_a)
        await b.hello(dev_b)
        await c.hello(dev_c)
        assert (await a.request({"type": "join", "room_id": rid}))["type"] == "joined"
        joined = await b.request({"type": "join", "room_id": rid})
        assert joined["type"] == "joined" and {p["device_id"] for p in joined["participants"]} == {dev_a, dev_b}
        # The service holds no seat: two players fill max_players 2.
        full = await c.request({"type": "join", "room_id": rid})
        assert full["type"] == "error" and full["code"] == "room_full"
        assert (await c.request({"type": "join", "room_id": rid, "role": "spectator"}))["type"] == "joined"
        info = await api_a.get_room(rid)
        assert {p["device_id"]: p["role"] for p in info["participants"]} == {
            dev_a: "player", dev_b: "player", dev_c: "spectator"}
        assert info["room"]["current_players"] == 2

        # A publish through B reaches members on both replicas, from the service.
        key = unique("ask-1").replace(".", "_")
        seq = await api_b.publish(rid, "question", action="ask", payload={"q": "2+2?"}, idempotency_key=key)
        for cl in (a, b, c):
            ev = await cl.expect(type="event", room_id=rid, event_type="question")
            assert ev["seq"] == seq and ev["payload"] == {"q": "2+2?"} and ev["action"] == "ask"
            assert ev["from"] == {"service": KEY_NAME, "socket_id": None, "device_id": None, "user_id": None}
        # The same idempotency key again, through the other replica: the first seq, no second event.
        assert await api_a.publish(rid, "question", action="ask", payload={"q": "2+2?"}, idempotency_key=key) == seq
        with pytest.raises(AdminError) as bad_key:
            await api_a.publish(rid, "question", idempotency_key="not a key!")
        assert (bad_key.value.status, bad_key.value.code) == (400, "bad_request")
        # Players answer; only the service may change the room (there is no host).
        ans = await a.request({"type": "event", "room_id": rid, "event_type": "answer", "payload": {"a": 4}})
        assert ans["type"] == "ack"
        refused = await b.request({"type": "update_room", "room_id": rid, "status": "in_progress"})
        assert refused["type"] == "error" and refused["code"] == "forbidden"
        up = await api_a.update_room(rid, status="in_progress", patch={"round": 1})
        ev = await b.expect(type="event", room_id=rid, event_type="state_change")
        assert ev["seq"] == up and ev["payload"] == {"status": "in_progress", "patch": {"round": 1}}
        assert ev["from"]["service"] == KEY_NAME
        assert (await api_b.get_room(rid))["room"]["game_data"] == {"round": 1}

        # Kick B's device (its socket is on replica B) through replica A.
        kicked = await api_a.kick(rid, dev_b)
        for cl in (a, b):
            ev = await cl.expect(type="event", room_id=rid, event_type="participant_left")
            assert ev["seq"] == kicked and ev["payload"]["device_id"] == dev_b
            assert ev["payload"]["reason"] == "kicked" and ev["from"]["service"] == KEY_NAME
        after = await b.request({"type": "event", "room_id": rid, "event_type": "answer", "payload": {"a": 5}})
        assert after["type"] == "error" and after["code"] == "not_member", after
        with pytest.raises(AdminError) as err:
            await api_b.kick(rid, dev_b)
        assert (err.value.status, err.value.code) == (404, "not_member")
        # Nobody inherits a host role in a service room: players come and go, no host_changed.
        last = await api_b.publish(rid, "tick")
        seen_a = [m for m in await a.drain() if m.get("type") == "event"]
        assert [m["seq"] for m in seen_a][-1] == last
        assert all(m["event_type"] != "host_changed" for m in seen_a)
        seen_b = [m for m in await b.drain() if m.get("type") == "event" and m.get("seq", 0) > kicked]
        assert seen_b == [], seen_b  # B's socket left the room on its replica

        # History read matches what A saw (after its join).
        first_seen = min(m["seq"] for m in seen_a) if seen_a else last
        page = await api_b.events(rid, since=0, limit=1000)
        assert page["head"] == last
        assert [e["seq"] for e in page["events"]] == list(range(1, last + 1))
        # The publish sent twice with one idempotency key made one event.
        assert [e["seq"] for e in page["events"] if e["event_type"] == "question"] == [seq]
        by_seq = {e["seq"]: e for e in page["events"]}
        for m in seen_a:
            assert by_seq[m["seq"]] == m
        part = await api_a.events(rid, since=first_seen, limit=2)
        assert [e["seq"] for e in part["events"]] == [first_seen + 1, first_seen + 2]

        # Disconnect C's device, with a socket on each replica, through replica A: both see the code.
        async with Client.open(ws_a) as c2:
            await c2.hello(dev_c)
            closed = await api_a.disconnect(dev_c, code=4321, reason="bye")
            assert closed == 2
            assert await c.closed() == 4321
            assert await c2.closed() == 4321
        assert await api_b.disconnect(dev_c) == 0
        assert (await a.request({"type": "ping"}))["type"] == "pong"  # other devices' sockets stay

        seq_close = await api_b.close_room(rid)
        ev = await a.expect(type="event", room_id=rid, event_type="room_closed")
        assert ev["seq"] == seq_close and ev["from"]["service"] == KEY_NAME
        assert (await api_a.get_room(rid))["room"]["status"] == "closed"


def test_backend_flow_embedded(embedded: tuple[str, str, int]) -> None:
    http, url, api_port = embedded
    # The gateway port, and API_PORT, serve the same API.
    asyncio.run(_scenario(AdminClient(http, SECRET), AdminClient(f"http://127.0.0.1:{api_port}", SECRET), url, url))


def test_backend_flow_two_replicas(two_replicas: tuple[str, str, str, str]) -> None:
    http_a, url_a, http_b, url_b = two_replicas
    asyncio.run(_scenario(AdminClient(http_a, SECRET), AdminClient(http_b, SECRET), url_a, url_b))


def test_request_metrics(embedded: tuple[str, str, int]) -> None:
    http, _, _ = embedded
    assert get(port_of(http), "/api/v1/rooms", None)[0] == 401
    assert get(port_of(http), "/api/v1/rooms", f"Bearer {SECRET}")[0] == 200
    with socket.create_connection(("127.0.0.1", port_of(http))) as s:
        s.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    metrics = parse_metrics(data.partition(b"\r\n\r\n")[2].decode())
    assert metrics['roomcast_api_requests_total{route="GET /api/v1/rooms",status="200"}'] >= 1
    assert metrics['roomcast_api_requests_total{route="GET /api/v1/rooms",status="401"}'] >= 1


def test_quiz_example_runs_a_whole_game() -> None:
    """docs/server-api.md's server-authoritative quiz (examples/quiz_backend.py) plays to the end."""
    import subprocess
    import sys

    from tests.harness import ROOT

    with gateway(ENV) as gw:
        out = subprocess.run(
            [sys.executable, str(ROOT / "examples" / "quiz_backend.py"), "--gateway", gw.http, "--secret", SECRET,
             "--players", "2", "--round-seconds", str(0.5 * UNIT)],
            capture_output=True, text=True, timeout=60 * UNIT, cwd=ROOT)
        assert out.returncode == 0, out.stderr[-3000:]
        assert "round 3:" in out.stdout and "final scores:" in out.stdout, out.stdout


def test_history_read_reaches_back_into_postgres() -> None:
    """Embedded with history: the room keeps only ROOM_HISTORY_MAXLEN events, the rest is read
    from Postgres, and the page is exactly what a member received."""
    from tests.harness import PostgresServer

    pg = PostgresServer().init()
    try:
        dsn = pg.create_database(unique("api").replace("-", "_"))
        env = dict(ENV, DATABASE_URL=dsn, ROOM_HISTORY_MAXLEN="10", HISTORY_FLUSH_INTERVAL="50")
        with gateway(env) as gw:

            async def run() -> None:
                api = AdminClient(gw.http, SECRET)
                rid = (await api.create_room("quiz"))["room"]["room_id"]
                async with Client.open(gw.url) as member:
                    await member.hello(unique("dev-h"))
                    assert (await member.request({"type": "join", "room_id": rid}))["type"] == "joined"
                    for i in range(40):
                        await api.publish(rid, "tick", payload={"i": i})
                    seen = await member.events(rid, 41)  # its own participant_joined, then 40 ticks
                assert [e["seq"] for e in seen] == list(range(1, 42))
                # Until the flusher has written them, the old events are only in the outbox.
                for _ in range(int(100 * UNIT)):
                    page = await api.events(rid, since=0, limit=1000)
                    if len(page["events"]) == 42:  # + the member's participant_disconnected
                        break
                    await asyncio.sleep(0.1)
                assert page["head"] == 42
                assert page["events"][:41] == seen
                part = await api.events(rid, since=5, limit=3)
                assert part["events"] == seen[5:8]

            asyncio.run(run())
    finally:
        pg.destroy()


def test_a_bad_keys_file_stops_start_up_without_showing_a_secret(tmp_path: Any) -> None:
    import subprocess
    import sys

    from tests.harness import ROOT, gateway_env

    keys = tmp_path / "keys"
    keys.write_text("quiz=tooshort-1\n")
    for env in ({"SERVER_API_KEYS_FILE": str(keys)}, {"SERVER_API_KEYS_FILE": str(tmp_path / "missing")},
                {"SERVER_API_KEYS": "quiz=tooshort-1"}):
        out = subprocess.run([sys.executable, "-m", "gateway"], env=gateway_env(env | {"GATEWAY_PORT": "0"}),
                             capture_output=True, text=True, timeout=30 * UNIT, cwd=ROOT)
        assert out.returncode == 2, (env, out.stderr[-2000:])
        assert "SERVER_API_KEYS" in out.stderr and "tooshort-1" not in out.stderr, out.stderr


def test_api_port_keeps_connections_alive(embedded: tuple[str, str, int]) -> None:
    """API_PORT answers HTTP/1.1 requests on one connection, pipelined ones in order, until
    `Connection: close`; the gateway port answers one request and closes."""
    http, _, api_port = embedded

    def req(path: str, close: bool = False) -> bytes:
        return (f"GET {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {SECRET}\r\n"
                + ("Connection: close\r\n" if close else "") + "\r\n").encode()

    async def run() -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", api_port)

        async def answer() -> tuple[int, bytes, bytes]:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5 * UNIT)
            length = int(head.split(b"Content-Length: ", 1)[1].split(b"\r\n", 1)[0])
            return int(head.split(b" ", 2)[1]), head, await reader.readexactly(length)

        writer.write(req("/api/v1/rooms") + req("/api/v1/rooms/nope-" + unique()))  # pipelined
        first, second = await answer(), await answer()
        assert first[0] == 200 and b"Connection: keep-alive" in first[1]
        assert second[0] == 404 and orjson.loads(second[2])["code"] == "not_found"
        writer.write(req("/api/v1/rooms", close=True))
        third = await answer()
        assert third[0] == 200 and b"Connection: close" in third[1]
        assert await asyncio.wait_for(reader.read(), 5 * UNIT) == b""  # closed after it
        writer.close()

    asyncio.run(run())
    status, _, head = get(port_of(http), "/api/v1/rooms", f"Bearer {SECRET}")
    assert status == 200 and "Connection: close" in head


def test_admin_client_keep_alive_reuses_its_connection(embedded: tuple[str, str, int]) -> None:
    _, _, api_port = embedded

    async def run() -> None:
        async with AdminClient(f"http://127.0.0.1:{api_port}", SECRET, keep_alive=True) as api:
            rid = (await api.create_room("keepalive"))["room"]["room_id"]
            [(_, _, conn)] = api._idle
            seqs = [await api.publish(rid, "tick", payload={"i": i}) for i in range(20)]
            assert seqs == list(range(1, 21))
            assert [w for _, _, w in api._idle] == [conn]  # the same connection all along
            many = await asyncio.gather(*(api.publish(rid, "tock") for _ in range(5)))
            assert sorted(many) == list(range(21, 26)) and 1 <= len(api._idle) <= 5
            assert (await api.events(rid, since=20))["head"] == 25
        assert api._idle == []

    asyncio.run(run())
