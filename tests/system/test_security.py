"""Security controls over real processes: each control works, and each bypass fails.

Most tests run against one cluster (Redis, a coordinator and two gateway replicas) whose
limits are set tight through the environment, so that every cluster-wide budget can be
spent by alternating between the replicas and shown to be shared (a per-replica budget
would admit twice the burst) and to recover after the advertised wait.

The bucket bounds are exact up to the refill during the test: a bucket of `burst` tokens
refilled at `rate` per second admits between `burst` and `burst + rate * elapsed` requests,
and never the `2 * burst` two unshared buckets would.

The gateways trust 127.0.0.1 as a proxy (TRUSTED_PROXIES), so each test gives its sockets
their own client address in X-Forwarded-For: the per-address connect budget of one test
does not leak into another. A gateway that does not trust its peer ignores the header
(test_spoofed_forwarded_for_does_not_escape_the_address_limit).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import hmac
import random
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from websockets.exceptions import ConnectionClosed

from gateway.auth import public_jwk, sign, sign_hs256
from tests.harness import UNIT, Client, Cluster, GatewayProcess, cluster, gateway, unique

pytestmark = pytest.mark.system

SECRET = "security-test-hs256-secret"
AUDIENCE = "roomcast-security"
ORIGIN = "https://play.example.com"
RSA_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
RSA_OTHER = rsa.generate_private_key(public_exponent=65537, key_size=2048)
EC_KEY = ec.generate_private_key(ec.SECP256R1())
EC_OTHER = ec.generate_private_key(ec.SECP256R1())

# Tight limits (bursts are fixed in the code: address 5x rate, device 10, create 10,
# join 20, password 5 per device and 20 per room).
ADDRESS_RATE, ADDRESS_BURST = 1.0, 5
DEVICE_RATE, DEVICE_BURST = 1.0, 10
CREATE_RATE, CREATE_BURST = 1.0, 10
JOIN_RATE, JOIN_BURST = 1.0, 20
PW_RATE, PW_BURST = 0.5, 5
ROOM_PW_RATE, ROOM_PW_BURST = 0.5, 20
MAX_ROOMS_PER_DEVICE = 4
MAX_PARTICIPANTS = 4
MAX_DEPTH = 4


def cluster_env(jwks_path: Path) -> dict[str, str]:
    return {
        "AUTH_JWT_SECRET": SECRET,
        "AUTH_JWT_JWKS_FILE": str(jwks_path),
        "AUTH_JWT_AUDIENCE": AUDIENCE,
        "DEVICE_TOKEN_SECRET": "security-test-device-secret",
        "REQUIRE_DEVICE_TOKEN": "true",
        "ALLOWED_ORIGINS": ORIGIN,
        "TRUSTED_PROXIES": "127.0.0.1",
        "CONNECT_RATE_PER_ADDRESS": str(ADDRESS_RATE),
        "CONNECT_RATE_PER_DEVICE": str(DEVICE_RATE),
        "ROOM_CREATE_RATE": str(CREATE_RATE),
        "JOIN_RATE": str(JOIN_RATE),
        "PASSWORD_FAIL_RATE": str(PW_RATE),
        "ROOM_PASSWORD_FAIL_RATE": str(ROOM_PW_RATE),
        "MAX_ROOMS_PER_DEVICE": str(MAX_ROOMS_PER_DEVICE),
        "MAX_PARTICIPANTS_PER_ROOM": str(MAX_PARTICIPANTS),
        "MAX_PAYLOAD_DEPTH": str(MAX_DEPTH),
    }


@pytest.fixture(scope="module")
def sec(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    jwks = tmp_path_factory.mktemp("keys") / "jwks.json"
    jwks.write_bytes(orjson.dumps({"keys": [public_jwk(RSA_KEY.public_key(), "rsa-1"),
                                            public_jwk(EC_KEY.public_key(), "ec-1")]}))
    with cluster(2, 1, cluster_env(jwks)) as c:
        yield c
    for g in c.gateways:
        assert "Traceback" not in g.log(), g.log()[-3000:]


# ---------------------------------------------------------------- helpers


def new_address() -> str:
    return f"10.{random.randrange(256)}.{random.randrange(256)}.{random.randrange(1, 255)}"


@contextlib.asynccontextmanager
async def open_client(g: GatewayProcess, address: str | None = None, **kwargs: Any) -> AsyncIterator[Client]:
    """A socket through the (trusted) loopback proxy, as client `address` (fresh by default)."""
    headers = {"X-Forwarded-For": address or new_address()}
    async with Client.open(g.url, additional_headers=headers, **kwargs) as c:
        yield c


async def say_hello(g: GatewayProcess, device: str, address: str | None = None, **extra: Any) -> dict[str, Any] | int:
    """Open a socket and send hello: the reply (welcome or error), or the close code."""
    async with open_client(g, address) as c:
        try:
            await c.send({"type": "hello", "id": "h", "device_id": device, **extra})
            return await c.expect(re="h")
        except ConnectionClosed as exc:
            return exc.rcvd.code if exc.rcvd is not None else -1


def within_budget(n: int, burst: int, rate: float, started: float) -> bool:
    """`n` admitted by one shared bucket: at least the burst, at most burst + refill."""
    elapsed = time.monotonic() - started
    return burst <= n <= burst + int(rate * elapsed)


async def create(c: Client, **fields: Any) -> dict[str, Any]:
    return await c.request({"type": "create_room", "game_type": "sec", **fields})


async def created(c: Client, **fields: Any) -> str:
    reply = await create(c, **fields)
    assert reply["type"] == "room_created", reply
    return str(reply["room"]["room_id"])


async def joined(c: Client, room_id: str, **fields: Any) -> dict[str, Any]:
    reply = await c.request({"type": "join", "room_id": room_id, **fields})
    assert reply["type"] == "joined", reply
    return reply


def error_code(reply: dict[str, Any]) -> str | None:
    return reply.get("code") if reply.get("type") == "error" else None


def tok(sub: str, alg: str = "HS256", key: Any = None, kid: str | None = None, **claims: Any) -> str:
    body: dict[str, Any] = {"sub": sub, "aud": AUDIENCE, "exp": int(time.time()) + 600, **claims}
    if alg == "HS256":
        return sign_hs256(body, key or SECRET)
    return sign(body, alg, key, kid)


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


# ================================================================ identity


def bad_tokens(user: str) -> list[tuple[str, str]]:
    rsa_pem = RSA_KEY.public_key().public_bytes(serialization.Encoding.PEM,
                                                serialization.PublicFormat.SubjectPublicKeyInfo)
    head = b64(orjson.dumps({"alg": "HS256", "typ": "JWT"}))
    body = b64(orjson.dumps({"sub": user, "aud": AUDIENCE, "exp": int(time.time()) + 600}))
    confused = f"{head}.{body}.{b64(hmac.new(rsa_pem, f'{head}.{body}'.encode(), hashlib.sha256).digest())}"
    good_rs = tok(user, "RS256", RSA_KEY, "rsa-1")
    rs_head, _, rs_sig = good_rs.split(".")
    other = str(uuid.uuid4())
    forged_claims = f"{rs_head}.{b64(orjson.dumps({'sub': other, 'aud': AUDIENCE}))}.{rs_sig}"
    none_head = b64(orjson.dumps({"alg": "none", "typ": "JWT"}))
    return [
        ("HS256 forged (other secret)", tok(user, key="not-the-secret")),
        ("HS256 expired", tok(user, exp=int(time.time()) - 3600)),
        ("HS256 wrong audience", tok(user, aud="another-app")),
        ("RS256 forged (other key, our kid)", tok(user, "RS256", RSA_OTHER, "rsa-1")),
        ("RS256 claims swapped under a good signature", forged_claims),
        ("RS256 expired", tok(user, "RS256", RSA_KEY, "rsa-1", exp=int(time.time()) - 3600)),
        ("RS256 wrong audience", tok(user, "RS256", RSA_KEY, "rsa-1", aud="another-app")),
        ("ES256 forged", tok(user, "ES256", EC_OTHER, "ec-1")),
        ("unknown kid", tok(user, "RS256", RSA_KEY, "rsa-9")),
        ("alg none", f"{none_head}.{body}."),
        ("alg confusion: HS256 keyed with the RSA public key", confused),
    ]


async def test_bad_tokens_are_unauthorized_and_give_no_identity(sec: Cluster) -> None:
    user = str(uuid.uuid4())
    for i, g in enumerate(sec.gateways):
        async with open_client(g) as c:
            device = unique(f"dev-tok{i}")
            for name, token in bad_tokens(user):
                reply = await c.request({"type": "hello", "device_id": device, "token": token})
                assert error_code(reply) == "unauthorized", (name, reply)
                assert "user_id" not in reply
                # Still no identity on the socket: nothing but hello is served.
                assert error_code(await c.request({"type": "list_rooms"})) == "hello_required", name
            welcome = await c.hello(device)  # anonymous, since no token was accepted
            assert welcome["user_id"] is None
            room = await created(c)
            ack = await c.request({"type": "event", "room_id": room, "event_type": "hi"})
            event = await c.expect(type="event", seq=ack["seq"])
            assert event["from"]["user_id"] is None


@pytest.mark.parametrize(("alg", "key", "kid"), [("HS256", None, None), ("RS256", RSA_KEY, "rsa-1"),
                                                 ("ES256", EC_KEY, "ec-1")])
async def test_good_tokens_give_their_subject_on_every_replica(sec: Cluster, alg: str, key: Any,
                                                               kid: str | None) -> None:
    user = str(uuid.uuid4())
    for g in sec.gateways:
        async with open_client(g) as c:
            welcome = await c.hello(unique("dev-good"), token=tok(user, alg, key, kid))
            assert welcome["user_id"] == user


# ---------------------------------------------------------------- device ids


async def test_copied_device_id_without_its_device_token_is_refused(sec: Cluster) -> None:
    gw0, gw1 = sec.gateways
    device = unique("dev-victim")
    async with open_client(gw0) as real:
        welcome = await real.hello(device)
        token = welcome["device_token"]
        assert isinstance(token, str) and len(token) >= 32
        room = await created(real)
        await real.drain()
        other_token = (await say_hello(gw1, unique("dev-other")))["device_token"]  # type: ignore[index]
        async with open_client(gw1) as impostor:
            for label, extra in [("no token", {}), ("wrong token", {"device_token": "A" * 32}),
                                 ("another device's token", {"device_token": other_token}),
                                 ("truncated token", {"device_token": token[:-2]})]:
                reply = await impostor.request({"type": "hello", "device_id": device, **extra})
                assert error_code(reply) == "unauthorized", (label, reply)
                assert "rooms" not in reply  # the device's rooms are not shown
            # Without a welcome the impostor cannot act in the device's room.
            for msg in ({"type": "event", "room_id": room, "event_type": "x"},
                        {"type": "join", "room_id": room, "since": 0},
                        {"type": "close_room", "room_id": room}):
                assert error_code(await impostor.request(msg)) == "hello_required"
            # The room saw nothing of it.
            assert [m for m in await real.drain() if m.get("type") == "event"] == []
            # With the device token it is the device: it sees its rooms (on the other replica).
            welcome2 = await impostor.hello(device, device_token=token)
            assert [r["room_id"] for r in welcome2["rooms"]] == [room]
    # A brand-new device needs no token, and gets one.
    fresh = await say_hello(gw1, unique("dev-fresh"))
    assert isinstance(fresh, dict) and fresh["type"] == "welcome" and fresh["device_token"]


# ---------------------------------------------------------------- origin (CSWSH)


@pytest.mark.parametrize("origin", ["https://evil.example", "http://play.example.com", "null",
                                    "https://play.example.com.evil.example", "https://play.example.com:8443"])
async def test_foreign_origin_closes_1008_on_every_replica(sec: Cluster, origin: str) -> None:
    for g in sec.gateways:
        async with open_client(g, origin=origin) as c:
            assert await c.closed() == 1008
            assert not c.inbox
        async with open_client(g, origin=ORIGIN) as c:
            assert (await c.hello(unique("dev-origin")))["type"] == "welcome"


# ================================================================ roles and membership


async def test_only_the_host_may_update_or_close_and_spectators_may_not_send(sec: Cluster) -> None:
    gw0, gw1 = sec.gateways
    async with (open_client(gw0) as host, open_client(gw1) as p1, open_client(gw0) as p2,
                open_client(gw1) as spec):
        for c, name in ((host, "host"), (p1, "p1"), (p2, "p2"), (spec, "spec")):
            await c.hello(unique(f"dev-{name}"))
        room = await created(host, max_players=3)
        await joined(p1, room)
        await asyncio.sleep(0.01)  # not synchronisation: p1's joined_at (ms) must be strictly earlier than p2's
        await joined(p2, room)
        assert (await joined(spec, room, role="spectator"))["role"] == "spectator"
        for c, who in ((spec, "spectator"), (p1, "player"), (p2, "player")):
            for msg in ({"type": "update_room", "room_id": room, "status": "in_progress"},
                        {"type": "update_room", "room_id": room, "patch": {"winner": who}},
                        {"type": "close_room", "room_id": room}):
                assert error_code(await c.request(msg)) == "forbidden", (who, msg)
        # A spectator may watch, not play, unless the room allows it.
        assert error_code(await spec.request({"type": "event", "room_id": room, "event_type": "move"})) == "forbidden"
        assert (await p1.request({"type": "event", "room_id": room, "event_type": "move"}))["type"] == "ack"
        open_room = await created(host, spectators_can_send=True)
        await joined(spec, open_room, role="spectator")
        assert (await spec.request({"type": "event", "room_id": open_room, "event_type": "cheer"}))["type"] == "ack"
        # The host leaves: the longest-present player (p1) becomes host, on every replica.
        assert (await host.request({"type": "leave", "room_id": room}))["type"] == "left"
        p1_device = p1.welcome["device_id"]  # type: ignore[index]
        for c in (p1, p2, spec):
            changed = await c.expect(type="event", room_id=room, event_type="host_changed")
            assert changed["payload"]["device_id"] == p1_device
            assert changed["payload"]["role"] == "host"
        assert (await p1.request({"type": "update_room", "room_id": room, "status": "in_progress"}))["type"] == "ack"
        assert error_code(await p2.request({"type": "update_room", "room_id": room, "status": "waiting"})) == "forbidden"
        # The old host is nobody in the room now.
        assert error_code(await host.request({"type": "close_room", "room_id": room})) == "not_member"
        assert (await p1.request({"type": "close_room", "room_id": room}))["type"] == "ack"


async def test_non_member_cannot_send_or_replay(sec: Cluster) -> None:
    gw0, gw1 = sec.gateways
    async with open_client(gw0) as owner, open_client(gw1) as outsider, open_client(gw1) as former:
        await owner.hello(unique("dev-owner"))
        await outsider.hello(unique("dev-outsider"))
        await former.hello(unique("dev-former"))
        public = await created(owner)
        private = await created(owner, password="correct horse")
        for room in (public, private):
            await owner.request({"type": "event", "room_id": room, "event_type": "secret", "payload": {"k": room}})
        await joined(former, public)
        assert (await former.request({"type": "leave", "room_id": public}))["type"] == "left"
        for c in (outsider, former):
            for room in (public, private):
                for msg in ({"type": "event", "room_id": room, "event_type": "x"},
                            {"type": "update_room", "room_id": room, "status": "completed"},
                            {"type": "close_room", "room_id": room}):
                    assert error_code(await c.request(msg)) == "not_member", msg
                assert error_code(await c.request({"type": "leave", "room_id": room})) == "not_member"
            # Replaying the password room's history needs the password.
            for extra in ({}, {"password": "wrong"}):
                reply = await c.request({"type": "join", "room_id": private, "since": 0, **extra})
                assert error_code(reply) == "forbidden", reply
        # Not a single event of either room reached a non-member (the former member's own
        # join and leave came while it was one).
        for c in (outsider, former):
            leaked = [m for m in await c.drain(0.3 * UNIT) if m.get("type") == "event"
                      and (m["room_id"] == private or m.get("event_type") == "secret")]
            assert leaked == []


# ================================================================ brute force and rate limits


async def test_password_brute_force_per_device_is_limited_across_replicas(sec: Cluster) -> None:
    gw0, gw1 = sec.gateways
    async with open_client(gw0) as owner, open_client(gw0) as a0, open_client(gw1) as a1:
        await owner.hello(unique("dev-pwowner"))
        room = await created(owner, password="right-password")
        attacker = unique("dev-attacker")
        w = await a0.hello(attacker)
        await a1.hello(attacker, device_token=w["device_token"])
        # Right passwords cost nothing: more of them than the burst of failures.
        for i in range(PW_BURST + 1):
            await joined((a0, a1)[i % 2], room, password="right-password")
        started, failures, limited = time.monotonic(), 0, None
        for i in range(PW_BURST * 2):
            reply = await (a0, a1)[i % 2].request({"type": "join", "room_id": room, "password": f"guess-{i}"})
            if error_code(reply) == "rate_limited":
                limited = reply
                break
            assert error_code(reply) == "forbidden", reply
            failures += 1
        assert limited is not None and within_budget(failures, PW_BURST, PW_RATE, started), failures
        assert 0 < limited["retry_after_ms"] <= 1000 / PW_RATE
        # While the budget is spent even the right password is not checked.
        reply = await a1.request({"type": "join", "room_id": room, "password": "right-password"})
        assert error_code(reply) == "rate_limited", reply
        # Other devices are not locked out by this device's failures.
        async with open_client(gw1) as friend:
            await friend.hello(unique("dev-friend"))
            await joined(friend, room, password="right-password")
        await asyncio.sleep(reply["retry_after_ms"] / 1000 + 0.05)
        await joined(a0, room, password="right-password")


async def test_concurrent_guesses_cannot_outrun_the_password_budget(sec: Cluster) -> None:
    """Guesses sent all at once, over many sockets on both replicas, are checked no more
    often than the budget allows: its token is taken before the (slow) password check."""
    gw0, gw1 = sec.gateways
    async with open_client(gw0) as owner:
        await owner.hello(unique("dev-pwowner"))
        room = await created(owner, password="right-password")
        attacker = unique("dev-swarm")
        async with contextlib.AsyncExitStack() as stack:
            sockets = [await stack.enter_async_context(open_client((gw0, gw1)[i % 2])) for i in range(8)]
            token = (await sockets[0].hello(attacker))["device_token"]
            for s in sockets[1:]:
                await s.hello(attacker, device_token=token)
            started = time.monotonic()
            for i, s in enumerate(sockets):  # every guess is in flight before any reply is read
                for j in range(2):
                    await s.send({"type": "join", "id": f"g{j}", "room_id": room, "password": f"guess-{i}-{j}"})
            replies = [await s.expect(re=f"g{j}") for s in sockets for j in range(2)]
        codes = [error_code(r) for r in replies]
        assert set(codes) == {"forbidden", "rate_limited"}, codes
        assert codes.count("forbidden") <= PW_BURST + int(PW_RATE * (time.monotonic() - started)), codes


async def test_password_brute_force_per_room_is_limited_across_replicas(sec: Cluster) -> None:
    """Rotating device ids does not help: the room has its own budget of failures."""
    gw0, gw1 = sec.gateways
    async with open_client(gw0) as owner:
        await owner.hello(unique("dev-roomowner"))
        room = await created(owner, password="right-password")
        other_room = await created(owner, password="other-password")
        started, failures, limited = time.monotonic(), 0, None
        per_device = PW_BURST - 1  # stay under each device's own budget
        for d in range(ROOM_PW_BURST):
            async with open_client((gw0, gw1)[d % 2]) as c:
                await c.hello(unique("dev-rotate"))
                for i in range(per_device):
                    reply = await c.request({"type": "join", "room_id": room, "password": f"g{d}-{i}"})
                    if error_code(reply) == "rate_limited":
                        limited = reply
                        break
                    assert error_code(reply) == "forbidden", reply
                    failures += 1
            if limited:
                break
        assert limited is not None and within_budget(failures, ROOM_PW_BURST, ROOM_PW_RATE, started), failures
        async with open_client(gw1) as fresh:
            await fresh.hello(unique("dev-fresh"))
            # A device that never failed is refused too: the room's budget is spent...
            reply = await fresh.request({"type": "join", "room_id": room, "password": "right-password"})
            assert error_code(reply) == "rate_limited" and reply["retry_after_ms"] > 0, reply
            # ...but only this room's.
            await joined(fresh, other_room, password="other-password")
            await asyncio.sleep(reply["retry_after_ms"] / 1000 + 0.05)
            await joined(fresh, room, password="right-password")


async def test_connect_rate_per_address_is_shared_and_recovers(sec: Cluster) -> None:
    address = new_address()
    started, admitted, code = time.monotonic(), 0, None
    for i in range(ADDRESS_BURST * 2 + 2):
        reply = await say_hello(sec.gateways[i % 2], unique("dev-addr"), address)
        if isinstance(reply, int):
            code = reply
            break
        assert reply["type"] == "welcome", reply
        admitted += 1
    assert code == 4008
    assert within_budget(admitted, ADDRESS_BURST, ADDRESS_RATE, started), admitted
    # Another address is not affected; this one recovers after 1/rate seconds.
    assert isinstance(await say_hello(sec.gateways[0], unique("dev-addr"), new_address()), dict)
    await asyncio.sleep(1 / ADDRESS_RATE + 0.1)
    assert isinstance(await say_hello(sec.gateways[1], unique("dev-addr"), address), dict)


async def test_connect_rate_per_device_is_shared_and_recovers(sec: Cluster) -> None:
    device = unique("dev-flappy")
    first = await say_hello(sec.gateways[0], device)
    assert isinstance(first, dict)
    token = first["device_token"]
    started, admitted, code = time.monotonic(), 1, None
    for i in range(1, DEVICE_BURST * 2 + 2):
        reply = await say_hello(sec.gateways[i % 2], device, device_token=token)
        if isinstance(reply, int):
            code = reply
            break
        assert reply["type"] == "welcome", reply
        admitted += 1
    assert code == 4008
    assert within_budget(admitted, DEVICE_BURST, DEVICE_RATE, started), admitted
    assert isinstance(await say_hello(sec.gateways[0], unique("dev-other")), dict)
    await asyncio.sleep(1 / DEVICE_RATE + 0.1)
    again = await say_hello(sec.gateways[1], device, device_token=token)
    assert isinstance(again, dict) and again["type"] == "welcome"


async def spend_create_budget(sockets: list[Client]) -> tuple[int, dict[str, Any]]:
    """Create (and close) rooms round-robin over `sockets` until `rate_limited`."""
    started, made = time.monotonic(), 0
    for i in range(CREATE_BURST * 2 + 2):
        c = sockets[i % len(sockets)]
        reply = await create(c)
        if error_code(reply) == "rate_limited":
            assert within_budget(made, CREATE_BURST, CREATE_RATE, started), made
            return made, reply
        assert reply["type"] == "room_created", reply
        made += 1
        # Close it at once, so MAX_ROOMS_PER_DEVICE is not what stops us.
        assert (await c.request({"type": "close_room", "room_id": reply["room"]["room_id"]}))["type"] == "ack"
    raise AssertionError("room creation was never rate limited")


async def test_room_creation_rate_per_user_is_shared_and_recovers(sec: Cluster) -> None:
    gw0, gw1 = sec.gateways
    user = str(uuid.uuid4())
    async with open_client(gw0) as phone, open_client(gw1) as laptop, open_client(gw1) as stranger:
        # Two devices of one user, on two replicas: one budget.
        await phone.hello(unique("dev-phone"), token=tok(user))
        await laptop.hello(unique("dev-laptop"), token=tok(user, "RS256", RSA_KEY, "rsa-1"))
        await stranger.hello(unique("dev-stranger"))
        _, limited = await spend_create_budget([phone, laptop])
        assert 0 < limited["retry_after_ms"] <= 1000 / CREATE_RATE
        assert error_code(await create(phone)) == "rate_limited"
        await created(stranger)  # someone else is not affected
        await asyncio.sleep(limited["retry_after_ms"] / 1000 + 0.05)
        await created(laptop)


async def test_room_creation_rate_per_device_is_shared_and_recovers(sec: Cluster) -> None:
    gw0, gw1 = sec.gateways
    device = unique("dev-creator")
    async with open_client(gw0) as a, open_client(gw1) as b:
        token = (await a.hello(device))["device_token"]
        await b.hello(device, device_token=token)
        _, limited = await spend_create_budget([a, b])
        await asyncio.sleep(limited["retry_after_ms"] / 1000 + 0.05)
        await created(b)


async def test_join_rate_per_device_is_shared_and_recovers(sec: Cluster) -> None:
    gw0, gw1 = sec.gateways
    async with open_client(gw0) as host, open_client(gw0) as a, open_client(gw1) as b:
        await host.hello(unique("dev-jhost"))
        room = await created(host)
        device = unique("dev-joiner")
        token = (await a.hello(device))["device_token"]
        await b.hello(device, device_token=token)
        started, joins, limited = time.monotonic(), 0, None
        for i in range(JOIN_BURST * 2 + 2):
            reply = await (a, b)[i % 2].request({"type": "join", "room_id": room})
            if error_code(reply) == "rate_limited":
                limited = reply
                break
            assert reply["type"] == "joined", reply
            joins += 1
        assert limited is not None and within_budget(joins, JOIN_BURST, JOIN_RATE, started), joins
        async with open_client(gw1) as other:
            await other.hello(unique("dev-otherjoiner"))
            await joined(other, room)
        await asyncio.sleep(limited["retry_after_ms"] / 1000 + 0.05)
        await joined(b, room)


# ================================================================ caps


async def test_max_rooms_per_device_counts_across_replicas_and_allows_resume(sec: Cluster) -> None:
    gw0, gw1 = sec.gateways
    device = unique("dev-collector")
    async with open_client(gw0) as host:
        await host.hello(unique("dev-roomhost"))
        others = [await created(host) for _ in range(MAX_ROOMS_PER_DEVICE)]
        async with open_client(gw0) as a, open_client(gw1) as b:
            token = (await a.hello(device))["device_token"]
            await b.hello(device, device_token=token)
            mine = [await created(a), await created(b)]
            for room in others[: MAX_ROOMS_PER_DEVICE - 2]:
                await joined((a, b)[len(mine) % 2], room)
                mine.append(room)
            assert len(mine) == MAX_ROOMS_PER_DEVICE
            last = others[-1]
            assert error_code(await a.request({"type": "join", "room_id": last})) == "forbidden"
            assert error_code(await b.request({"type": "join", "room_id": last})) == "forbidden"
            assert error_code(await create(b)) == "forbidden"
        # At the cap, the device reconnects and resumes every room it is in (on either replica).
        async with open_client(gw1) as again:
            welcome = await again.hello(device, device_token=token)
            assert sorted(r["room_id"] for r in welcome["rooms"]) == sorted(mine)
            for room in mine:
                await joined(again, room, since=0)
            assert error_code(await again.request({"type": "join", "room_id": last})) == "forbidden"
            assert (await again.request({"type": "leave", "room_id": mine[-1]}))["type"] == "left"
            await joined(again, last)


async def test_joins_that_fail_do_not_count_for_the_device_rooms_cap(sec: Cluster) -> None:
    """A join puts the room in the device's rooms in the same Redis batch as the join itself;
    a join the room refuses (full, closed) takes it back: refused joins, however many, never
    use up the device's MAX_ROOMS_PER_DEVICE."""
    gw0, gw1 = sec.gateways
    async with open_client(gw0) as host, open_client(gw1) as filler, \
            open_client(gw0) as a, open_client(gw1) as b:
        await host.hello(unique("dev-caphost"))
        await filler.hello(unique("dev-filler"))
        full = await created(host, max_players=2)
        await joined(filler, full)
        closed = await created(host)
        assert (await host.request({"type": "close_room", "room_id": closed}))["type"] in ("ack", "left")
        spare = []
        for _ in range(MAX_ROOMS_PER_DEVICE):  # each by a host of its own (a host is in its rooms too)
            async with open_client(gw1) as other:
                await other.hello(unique("dev-sparehost"))
                spare.append(await created(other))
        device = unique("dev-refused")
        token = (await a.hello(device))["device_token"]
        await b.hello(device, device_token=token)
        for room in spare[: MAX_ROOMS_PER_DEVICE - 1]:
            await joined(a, room)
        for c in (a, b, a, b):  # one room short of the cap: each refusal would otherwise fill it
            assert error_code(await c.request({"type": "join", "room_id": full})) == "room_full"
            assert error_code(await c.request({"type": "join", "room_id": closed})) in ("room_closed", "not_found")
        await joined(b, spare[-1])  # the last room the cap allows
        assert error_code(await a.request({"type": "join", "room_id": full})) in ("forbidden", "room_full")
        async with open_client(gw0) as again:
            welcome = await again.hello(device, device_token=token)
            assert sorted(r["room_id"] for r in welcome["rooms"]) == sorted(spare)


async def test_max_participants_per_room_counts_spectators(sec: Cluster) -> None:
    gw0, gw1 = sec.gateways
    async with contextlib.AsyncExitStack() as stack:
        host = await stack.enter_async_context(open_client(gw0))
        await host.hello(unique("dev-phost"))
        room = await created(host, max_players=2)
        members = []
        for i, role in enumerate(["player", "spectator", "spectator"]):
            c = await stack.enter_async_context(open_client((gw0, gw1)[i % 2]))
            await c.hello(unique(f"dev-{role}"))
            await joined(c, room, role=role)
            members.append(c)
        for g in (gw0, gw1):
            late = await stack.enter_async_context(open_client(g))
            await late.hello(unique("dev-late"))
            reply = await late.request({"type": "join", "room_id": room, "role": "spectator"})
            assert error_code(reply) == "room_full", reply
        # A place frees up when someone leaves.
        assert (await members[-1].request({"type": "leave", "room_id": room}))["type"] == "left"
        await joined(late, room, role="spectator")


def nested(depth: int) -> dict[str, Any]:
    value: dict[str, Any] = {}
    for _ in range(depth - 1):
        value = {"n": value}
    return value


async def test_payload_depth_limit(sec: Cluster) -> None:
    async with open_client(sec.gateways[1]) as c:
        deep, ok = nested(MAX_DEPTH + 1), nested(MAX_DEPTH)
        reply = await c.request({"type": "hello", "device_id": unique("dev-deep"), "metadata": deep})
        assert error_code(reply) == "bad_request", reply
        await c.hello(unique("dev-deep"), metadata=ok)
        assert error_code(await create(c, game_data=deep)) == "bad_request"
        room = await created(c, game_data=ok)
        for msg in ({"type": "event", "room_id": room, "event_type": "e", "payload": deep},
                    {"type": "event", "room_id": room, "event_type": "e", "payload": {"list": [[[[1]]]]}},
                    {"type": "update_room", "room_id": room, "patch": deep}):
            assert error_code(await c.request(msg)) == "bad_request", msg
        assert (await c.request({"type": "event", "room_id": room, "event_type": "e", "payload": ok}))["type"] == "ack"
        assert (await c.request({"type": "update_room", "room_id": room, "patch": ok}))["type"] == "ack"


# ================================================================ controls on their own gateways


async def test_connections_per_device_are_counted_cluster_wide() -> None:
    with cluster(2, 1, {"MAX_CONNECTIONS_PER_DEVICE": "1"}) as c:
        gw0, gw1 = c.gateways
        device = unique("dev-single")
        async with Client.open(gw0.url) as first:
            await first.hello(device)
            # The second socket is on another replica, where this device has no socket yet.
            assert await say_hello(gw1, device) == 4008
            assert (await first.request({"type": "ping"}))["type"] == "pong"
        # Once the first is gone, the count comes back down everywhere.
        for _ in range(50):
            reply = await say_hello(gw1, device)
            if isinstance(reply, dict):
                break
            await asyncio.sleep(0.05)
        assert isinstance(reply, dict) and reply["type"] == "welcome", reply


async def test_spoofed_forwarded_for_does_not_escape_the_address_limit() -> None:
    """Without TRUSTED_PROXIES the peer address counts, whatever X-Forwarded-For says."""
    with gateway({"CONNECT_RATE_PER_ADDRESS": str(ADDRESS_RATE)}) as g:
        started, admitted, code = time.monotonic(), 0, None
        for _ in range(ADDRESS_BURST * 2 + 2):
            reply = await say_hello(g, unique("dev-spoof"), new_address())  # a new "address" each time
            if isinstance(reply, int):
                code = reply
                break
            admitted += 1
        assert code == 4008 and within_budget(admitted, ADDRESS_BURST, ADDRESS_RATE, started), admitted


async def test_per_socket_message_rate_limits_and_recovers() -> None:
    with gateway({"RATE_MESSAGES_PER_SEC": "5", "RATE_MESSAGES_BURST": "5"}) as g:
        async with Client.open(g.url) as c, Client.open(g.url) as neighbour:
            await c.hello(unique("dev-chatty"))  # 1 token
            for i in range(10):
                await c.send({"type": "ping", "id": i})
            replies = [await c.expect(re=i) for i in range(10)]
            codes = [r["type"] if r["type"] != "error" else r["code"] for r in replies]
            assert codes.count("pong") in (4, 5) and codes.count("rate_limited") >= 5, codes
            limited = next(r for r in replies if r["type"] == "error")
            assert 0 < limited["retry_after_ms"] <= 200
            # Per socket: the neighbour has its own bucket.
            await neighbour.hello(unique("dev-quiet"))
            assert (await neighbour.request({"type": "ping"}))["type"] == "pong"
            await asyncio.sleep(0.25)
            assert (await c.request({"type": "ping"}))["type"] == "pong"
