from __future__ import annotations

from tests.harness import Client, GatewayProcess, http_get


async def test_create_join_event_roundtrip(gw: GatewayProcess) -> None:
    async with Client.open(gw.url) as a, Client.open(gw.url) as b:
        await a.hello("device-smoke-a")
        created = await a.request({"type": "create_room", "game_type": "trivia"})
        room_id = created["room"]["room_id"]
        await b.hello("device-smoke-b")
        joined = await b.request({"type": "join", "room_id": room_id})
        assert joined["type"] == "joined" and joined["seq"] == 1
        ack = await b.request({"type": "event", "room_id": room_id, "event_type": "answer", "payload": {"a": 1}})
        assert ack == {"type": "ack", "re": ack["re"], "seq": 3}
        got = await a.expect(type="event", seq=3)
        assert got["payload"] == {"a": 1} and got["from"]["device_id"] == "device-smoke-b"
    assert http_get(gw.http + "/healthz")[0] == 200
