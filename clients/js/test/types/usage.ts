// Compiled (not run) by `npm run typecheck` against roomcast.d.ts: the API as the docs show it.
import RoomcastDefault, {
  backoffDelay,
  closePolicy,
  mergePatch,
  type ConnectionState,
  type Room,
  RoomcastClient,
  RoomcastError,
  type RoomEvent,
  type RoomSnapshot,
  type Welcome,
} from "../../src/roomcast.js";

declare const someStorage: Storage;

async function demo(): Promise<void> {
  const client = new RoomcastClient({
    url: "wss://game.example/ws",
    urls: ["wss://a.example/ws", "wss://b.example/ws"],
    deviceId: "device-demo-0001",
    storage: someStorage,
    token: () => Promise.resolve("jwt"),
    requestTimeoutMs: 5000,
    maxQueue: 100,
    backoff: { initialMs: 250, maxMs: 10_000 },
    WebSocket,
  });
  client
    .on("welcome", (w: Welcome) => console.log(w.node, w.reconnect_count, w.rooms.map((r) => r.seq)))
    .on("open", () => {})
    .on("close", ({ code, reason, willReconnect }) => console.log(code, reason, willReconnect))
    .on("reconnecting", ({ attempt, delayMs }) => console.log(attempt + delayMs))
    .on("error", (err) => console.log(err.message))
    .on("state", (s: ConnectionState) => console.log(s))
    .on("room", (r: Room) => console.log(r.id));
  const welcome: Welcome = await client.connect();
  console.log(welcome.heartbeat_interval_ms);

  const room: Room = await client.createRoom({ gameType: "trivia", roomId: "abc", maxPlayers: 8, gameData: { round: 0 }, password: "pw" });
  const joined: Room = await client.join("abc", { role: "spectator", password: "pw" });
  room.on("event", (e: RoomEvent) => console.log(e.seq, e.event_type, e.payload, e.from?.device_id));
  room.on("reset", (snapshot: RoomSnapshot) => console.log(snapshot.game_data));
  room.on("closed", (e) => console.log(e.seq, e.reason));
  const id: string = room.id;
  const role: "host" | "player" | "spectator" = room.role;
  const seq: number = room.seq;
  const epoch: string | null = room.epoch;
  const status = room.state.status;
  const players: number = room.participants.length;
  console.log(id, role, seq, epoch, status, players, joined.ended);
  const s1: number = await room.send("answer", { choice: "B" }, "submit");
  const s2: number = await room.update({ status: "in_progress", patch: { round: 1 } });
  const s3: number = await room.close();
  await joined.leave();
  for await (const e of room.events()) console.log(e.seq);
  const rooms: RoomSnapshot[] = await client.listRooms({ gameType: "trivia", status: "waiting", limit: 10 });
  console.log(s1, s2, s3, rooms.length, client.rooms.get("abc")?.seq, client.state, client.deviceId);
  try {
    await room.send("x");
  } catch (err) {
    if (err instanceof RoomcastError) console.log(err.code, err.retryAfterMs, err.closeCode);
  }
  client.close();
  console.log(closePolicy(1001), backoffDelay("busy", 0, { initialMs: 1, maxMs: 2 }), mergePatch({}, { a: 1 }));
  console.log(new RoomcastDefault({ url: "ws://x" }).state);

  // @ts-expect-error: "host" cannot be asked for
  await client.join("abc", { role: "host" });
  // @ts-expect-error: closing goes through room.close()
  await room.update({ status: "closed" });
  // @ts-expect-error: unknown event name
  client.on("message", () => {});
}

void demo;
