"""Handshake over real sockets: hello/welcome, errors before and during hello, subprotocol, JWT."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from gateway.auth import sign_hs256
from tests.harness import Client, GatewayProcess, gateway, unique

SECRET = "integration-secret-7f3a"
AUDIENCE = "roomcast-tests"


async def test_welcome_fields(gw: GatewayProcess) -> None:
    device = unique("dev-welcome")
    async with Client.open(gw.url) as c:
        welcome = await c.hello(device)
    assert welcome["type"] == "welcome"
    assert isinstance(welcome["socket_id"], str) and welcome["socket_id"]
    assert welcome["device_id"] == device
    assert welcome["user_id"] is None
    assert welcome["reconnect_count"] == 0
    assert welcome["heartbeat_interval_ms"] == 25_000
    assert welcome["heartbeat_timeout_ms"] == 60_000
    assert welcome["heartbeat_interval_ms"] < welcome["heartbeat_timeout_ms"]
    assert isinstance(welcome["node"], str) and welcome["node"]
    assert welcome["rooms"] == []


async def test_welcome_without_id_has_no_re(gw: GatewayProcess) -> None:
    async with Client.open(gw.url) as c:
        await c.send({"type": "hello", "device_id": unique("dev-noid")})
        welcome = await c.expect(type="welcome")
    assert "re" not in welcome


async def test_socket_ids_are_distinct(gw: GatewayProcess) -> None:
    device = unique("dev-sid")
    async with Client.open(gw.url) as a, Client.open(gw.url) as b:
        wa = await a.hello(device)
        wb = await b.hello(device)
    assert wa["socket_id"] != wb["socket_id"]


async def test_reconnect_count_counts_earlier_connections(gw: GatewayProcess) -> None:
    device = unique("dev-recount")
    counts = []
    for _ in range(3):
        async with Client.open(gw.url) as c:
            counts.append((await c.hello(device))["reconnect_count"])
    # Two sockets open at once both count as connections of the device.
    async with Client.open(gw.url) as a, Client.open(gw.url) as b:
        counts.append((await a.hello(device))["reconnect_count"])
        counts.append((await b.hello(device))["reconnect_count"])
    assert counts == [0, 1, 2, 3, 4]
    # Another device starts from zero.
    async with Client.open(gw.url) as c:
        assert (await c.hello(unique("dev-recount-other")))["reconnect_count"] == 0


async def test_welcome_lists_rooms_device_is_still_in(gw: GatewayProcess) -> None:
    device = unique("dev-rooms")
    hosted, watched, left, closed = (unique("room") for _ in range(4))
    async with Client.open(gw.url) as other:
        await other.hello(unique("dev-rooms-other"))
        for room in (watched, left, closed):
            assert (await other.request({"type": "create_room", "room_id": room, "game_type": "t"}))[
                "type"] == "room_created"
        async with Client.open(gw.url) as c:
            await c.hello(device)
            assert (await c.request({"type": "create_room", "room_id": hosted, "game_type": "t"}))[
                "type"] == "room_created"
            assert (await c.request({"type": "join", "room_id": watched, "role": "spectator"}))["role"] == "spectator"
            assert (await c.request({"type": "join", "room_id": left}))["type"] == "joined"
            assert (await c.request({"type": "join", "room_id": closed}))["type"] == "joined"
            assert (await c.request({"type": "leave", "room_id": left}))["type"] == "left"
            assert (await other.request({"type": "join", "room_id": hosted}))["type"] == "joined"
            assert (await other.request({"type": "close_room", "room_id": closed}))["type"] == "ack"
        # The socket is gone: `other` sees the device disconnect from the two rooms it still holds.
        seqs = {}
        for room in (hosted, watched):
            ev = await other.expect(type="event", room_id=room, event_type="participant_disconnected")
            assert ev["payload"]["device_id"] == device
            seqs[room] = ev["seq"]
        async with Client.open(gw.url) as again:
            welcome = await again.hello(device)
    assert welcome["reconnect_count"] == 1
    rooms = {r["room_id"]: r for r in welcome["rooms"]}
    assert rooms == {
        hosted: {"room_id": hosted, "role": "host", "seq": seqs[hosted]},
        watched: {"room_id": watched, "role": "spectator", "seq": seqs[watched]},
    }


async def test_messages_before_hello_get_hello_required(gw: GatewayProcess) -> None:
    async with Client.open(gw.url) as c:
        for msg in (
            {"type": "ping", "id": 7},
            {"type": "join", "room_id": "lobby", "id": "j-1"},
            {"type": "create_room", "game_type": "t", "id": 8},
            {"type": "list_rooms", "id": 9},
        ):
            reply = await c.request(msg)
            assert reply["type"] == "error" and reply["code"] == "hello_required", reply
            assert isinstance(reply["message"], str) and reply["message"]
        # Same with the caller's own id (request() replaces it; check `re` echoes a string id).
        await c.send({"type": "event", "room_id": "r", "event_type": "x", "id": "before-hello"})
        reply = await c.expect(re="before-hello")
        assert reply["code"] == "hello_required"
        # The socket stayed open: hello still works on it.
        welcome = await c.hello(unique("dev-late"))
        assert welcome["reconnect_count"] == 0


@pytest.mark.parametrize(
    "hello",
    [
        {"type": "hello"},
        {"type": "hello", "device_id": "short"},
        {"type": "hello", "device_id": "x" * 129},
        {"type": "hello", "device_id": "bad device id"},
        {"type": "hello", "device_id": "device/with/slash"},
        {"type": "hello", "device_id": 12345678},
        {"type": "hello", "device_id": "device-ok-1", "metadata": [1, 2]},
        {"type": "hello", "device_id": "device-ok-1", "metadata": "text"},
        {"type": "hello", "device_id": "device-ok-1", "fingerprint": 5},
        {"type": "hello", "device_id": "device-ok-1", "fingerprint": "f" * 256},
        {"type": "hello", "device_id": "device-ok-1", "token": ""},
        {"type": "hello", "device_id": "device-ok-1", "token": 42},
    ],
)
async def test_invalid_hello_is_bad_request_and_socket_stays_open(gw: GatewayProcess, hello: dict[str, Any]) -> None:
    async with Client.open(gw.url) as c:
        reply = await c.request(hello)
        assert reply["type"] == "error" and reply["code"] == "bad_request", reply
        # Still not welcomed ...
        assert (await c.request({"type": "ping"}))["code"] == "hello_required"
        # ... but still open.
        await c.hello(unique("dev-after-bad"))
        assert (await c.request({"type": "ping"}))["type"] == "pong"


async def test_valid_hello_fields_at_limits(gw: GatewayProcess) -> None:
    async with Client.open(gw.url) as c:
        device = "A.b_c:d-" + "9" * 120  # 128 characters of every allowed class
        welcome = await c.hello(device, fingerprint="f" * 255, metadata={"ua": "test", "n": [1, 2]})
        assert welcome["device_id"] == device
    async with Client.open(gw.url) as c:
        assert (await c.hello("12345678"))["device_id"] == "12345678"


async def test_second_hello_is_bad_request(gw: GatewayProcess) -> None:
    device = unique("dev-twice")
    async with Client.open(gw.url) as c:
        first = await c.hello(device)
        reply = await c.request({"type": "hello", "device_id": unique("dev-other")})
        assert reply["type"] == "error" and reply["code"] == "bad_request"
        # The first identity stands: a room created now is created by the first device.
        created = await c.request({"type": "create_room", "game_type": "t"})
        assert created["room"]["created_by"] == device
        assert (await c.request({"type": "ping"}))["type"] == "pong"
    assert first["device_id"] == device


async def test_pong_carries_server_time(gw: GatewayProcess) -> None:
    async with Client.open(gw.url) as c:
        await c.hello(unique("dev-pong"))
        before = int(time.time() * 1000)
        pong = await c.request({"type": "ping"})
        after = int(time.time() * 1000)
    assert pong["type"] == "pong"
    assert isinstance(pong["t"], int)
    assert before - 5_000 <= pong["t"] <= after + 5_000  # same host clock; generous skew bound


@pytest.mark.parametrize(
    ("offered", "selected"),
    [
        (["roomcast.v1"], "roomcast.v1"),
        (["other.v9", "roomcast.v1"], "roomcast.v1"),
        (None, None),
        (["other.v9"], None),
    ],
)
async def test_subprotocol(gw: GatewayProcess, offered: list[str] | None, selected: str | None) -> None:
    kwargs: dict[str, Any] = {} if offered is None else {"subprotocols": offered}
    async with Client.open(gw.url, **kwargs) as c:
        assert c.ws.subprotocol == selected
        assert (await c.hello(unique("dev-subp")))["type"] == "welcome"


async def test_token_refused_without_secret(gw: GatewayProcess) -> None:
    token = sign_hs256({"sub": str(uuid.uuid4())}, SECRET)
    async with Client.open(gw.url) as c:
        reply = await c.request({"type": "hello", "device_id": unique("dev-tok"), "token": token})
        assert reply["type"] == "error" and reply["code"] == "unauthorized"
        welcome = await c.hello(unique("dev-tok"))  # still open; anonymous hello works
        assert welcome["user_id"] is None


# ---------------------------------------------------------------- a gateway with JWT auth


@pytest.fixture(scope="module")
def auth_gw() -> Iterator[GatewayProcess]:
    with gateway({
        "AUTH_JWT_SECRET": SECRET,
        "AUTH_JWT_AUDIENCE": AUDIENCE,
        "NODE_ID": "node-auth-1",
        "WEBSOCKET_HEARTBEAT_TIMEOUT": "30000",
        "WEBSOCKET_HEARTBEAT_INTERVAL": "10000",
    }) as g:
        yield g


@pytest.fixture(scope="module")
def required_gw() -> Iterator[GatewayProcess]:
    with gateway({"AUTH_JWT_SECRET": SECRET, "REQUIRE_AUTH": "true"}) as g:
        yield g


def _token(sub: str | None = None, secret: str = SECRET, **claims: Any) -> str:
    body: dict[str, Any] = {"sub": sub or str(uuid.uuid4()), "aud": AUDIENCE, "exp": int(time.time()) + 600}
    body.update(claims)
    return sign_hs256(body, secret)


async def test_valid_token_gives_user_id(auth_gw: GatewayProcess) -> None:
    user = str(uuid.uuid4())
    async with Client.open(auth_gw.url) as c:
        welcome = await c.hello(unique("dev-jwt"), token=_token(user))
        assert welcome["user_id"] == user
        assert welcome["node"] == "node-auth-1"
        assert welcome["heartbeat_timeout_ms"] == 30_000
        assert welcome["heartbeat_interval_ms"] == 10_000
        # The user id travels with the device's events.
        room = (await c.request({"type": "create_room", "game_type": "t"}))["room"]["room_id"]
        ack = await c.request({"type": "event", "room_id": room, "event_type": "hi"})
        ev = await c.expect(type="event", seq=ack["seq"])
        assert ev["from"]["user_id"] == user


async def test_audience_list_containing_ours_is_accepted(auth_gw: GatewayProcess) -> None:
    user = str(uuid.uuid4())
    async with Client.open(auth_gw.url) as c:
        welcome = await c.hello(unique("dev-jwt"), token=_token(user, aud=["other", AUDIENCE]))
    assert welcome["user_id"] == user


async def test_anonymous_hello_allowed_when_auth_not_required(auth_gw: GatewayProcess) -> None:
    async with Client.open(auth_gw.url) as c:
        assert (await c.hello(unique("dev-anon")))["user_id"] is None


@pytest.mark.parametrize(
    "token",
    [
        pytest.param(lambda: _token(secret="not-the-secret"), id="forged"),
        pytest.param(lambda: _token(exp=int(time.time()) - 3600), id="expired"),
        pytest.param(lambda: _token(aud="someone-else"), id="wrong-audience"),
        pytest.param(lambda: _token(aud=None), id="no-audience"),
        pytest.param(lambda: _token(nbf=int(time.time()) + 3600), id="not-yet-valid"),
        pytest.param(lambda: _token(sub="not-a-uuid"), id="sub-not-uuid"),
        pytest.param(lambda: "not.a.jwt", id="garbage"),
        pytest.param(lambda: _token()[:-4] + "AAAA", id="tampered-signature"),
    ],
)
async def test_bad_token_is_unauthorized_and_socket_stays_open(auth_gw: GatewayProcess, token: Any) -> None:
    device = unique("dev-badjwt")
    async with Client.open(auth_gw.url) as c:
        reply = await c.request({"type": "hello", "device_id": device, "token": token()})
        assert reply["type"] == "error" and reply["code"] == "unauthorized", reply
        assert (await c.request({"type": "ping"}))["code"] == "hello_required"
        user = str(uuid.uuid4())
        welcome = await c.hello(device, token=_token(user))
    assert welcome["user_id"] == user
    # A refused hello is not a connection of the device.
    assert welcome["reconnect_count"] == 0


async def test_require_auth_refuses_hello_without_token(required_gw: GatewayProcess) -> None:
    async with Client.open(required_gw.url) as c:
        reply = await c.request({"type": "hello", "device_id": unique("dev-req")})
        assert reply["type"] == "error" and reply["code"] == "unauthorized"
        user = str(uuid.uuid4())
        # No AUTH_JWT_AUDIENCE on this gateway: any (or no) audience is fine.
        welcome = await c.hello(unique("dev-req"), token=sign_hs256({"sub": user}, SECRET))
    assert welcome["user_id"] == user
