"""A server-authoritative quiz: the backend asks and scores, the players only answer.

    SERVER_API_KEYS=quiz=change-me-to-16-chars-or-more python -m gateway &
    python examples/quiz_backend.py --gateway http://127.0.0.1:8765 --secret change-me-to-16-chars-or-more

The backend (this script's `quiz_master`, using roomcast_client.admin) creates a room it owns,
waits for the players, publishes each `question` (without the answer), collects `answer`
events from the room's history (GET .../events?since=), scores them itself (the first right
answer scores), publishes `scores` after each round, and closes the room at the end. Players
hold no authority: they cannot change the room (there is no host) and their claims about
scores mean nothing, the backend's events (`from.service`) are the truth.

The demo players here are bots on the WebSocket protocol (roomcast_client.RoomcastClient); in
a game they are the browsers or apps. Run with --players N (default 2).
"""

from __future__ import annotations

import argparse
import asyncio
import random
from typing import Any

from roomcast_client import RoomcastClient
from roomcast_client.admin import AdminClient

QUESTIONS = [
    ("How many sides has a hexagon?", ["5", "6", "8"], "6"),
    ("What is 7 x 6?", ["42", "36", "48"], "42"),
    ("Which planet is closest to the sun?", ["Venus", "Mercury", "Mars"], "Mercury"),
]


async def quiz_master(api: AdminClient, players: int, round_s: float) -> dict[str, int]:
    room = (await api.create_room("quiz", max_players=players, game_data={"round": 0}))["room"]
    room_id = room["room_id"]
    print(f"[backend] room {room_id} created; waiting for {players} players")
    for _ in range(600):  # up to 60 s
        if len((await api.get_room(room_id))["participants"]) >= players:
            break
        await asyncio.sleep(0.1)
    await api.update_room(room_id, status="in_progress")
    scores: dict[str, int] = {}
    for n, (text, choices, right) in enumerate(QUESTIONS, 1):
        asked = await api.publish(room_id, "question", payload={"round": n, "text": text, "choices": choices})
        await asyncio.sleep(round_s)
        closed_at = await api.publish(room_id, "round_over", payload={"round": n, "answer": right})
        # Every answer of the round is in the room's history between the two events.
        page = await api.events(room_id, since=asked, limit=1000)
        winner = None
        for ev in page["events"]:
            if ev["seq"] >= closed_at or ev["event_type"] != "answer" or ev["from"].get("device_id") is None:
                continue
            answer = (ev.get("payload") or {})
            if answer.get("round") == n and answer.get("choice") == right:
                winner = ev["from"]["device_id"]
                break  # the first right answer (lowest seq) wins the round
        if winner is not None:
            scores[winner] = scores.get(winner, 0) + 1
        await api.update_room(room_id, patch={"round": n, "scores": scores})
        await api.publish(room_id, "scores", payload={"round": n, "winner": winner, "scores": scores})
        print(f"[backend] round {n}: winner {winner}, scores {scores}")
    await api.close_room(room_id)
    return scores


async def player(url: str, name: str, rooms: asyncio.Queue[str]) -> None:
    async with RoomcastClient([url], device_id=f"quiz-player-{name}") as client:
        room_id = await rooms.get()
        await rooms.put(room_id)
        room = await client.join(room_id)
        async for ev in room.events():
            if ev["event_type"] == "question":
                q: dict[str, Any] = ev["payload"]
                await asyncio.sleep(random.uniform(0.05, 0.4))  # think
                await room.send("answer", {"round": q["round"], "choice": random.choice(q["choices"])})
            elif ev["event_type"] == "room_closed":
                break


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--gateway", default="http://127.0.0.1:8765")
    ap.add_argument("--secret", required=True)
    ap.add_argument("--players", type=int, default=2)
    ap.add_argument("--round-seconds", type=float, default=1.0)
    args = ap.parse_args()
    api = AdminClient(args.gateway, args.secret)
    ws_url = args.gateway.replace("http", "ws", 1).rstrip("/") + "/ws"
    rooms: asyncio.Queue[str] = asyncio.Queue()
    master = asyncio.create_task(quiz_master(api, args.players, args.round_seconds))
    # The players learn the room id out of band (a lobby, a link): here, from the backend's list.
    for _ in range(100):
        listed = (await api.list_rooms(game_type="quiz", status="waiting"))["rooms"]
        if listed:
            await rooms.put(listed[0]["room_id"])
            break
        await asyncio.sleep(0.05)
    bots = [asyncio.create_task(player(ws_url, str(i), rooms)) for i in range(args.players)]
    scores = await master
    await asyncio.gather(*bots)
    print(f"[backend] final scores: {scores}")


if __name__ == "__main__":
    asyncio.run(main())
