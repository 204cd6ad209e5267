// Shared set-up for the unit tests.
import { RoomcastClient } from "../src/roomcast.js";
import { FakeGateway, roomObj } from "./fake-ws.js";

export const DEVICE = "device-test-0001";

/** A client on a fake gateway, connected. */
export async function connected(clientOpts = {}, gatewayOpts = {}) {
  const gw = new FakeGateway(gatewayOpts);
  const client = new RoomcastClient({
    url: "ws://fake-a/ws",
    deviceId: DEVICE,
    storage: null,
    WebSocket: gw.WebSocket,
    requestTimeoutMs: 1000,
    backoff: { initialMs: 10, maxMs: 40 },
    ...clientOpts,
  });
  const welcome = await client.connect();
  return { gw, client, sock: gw.last, welcome };
}

/** A connected client that joined room `roomId` at head `seq` with epoch "e1". */
export async function inRoom(roomId = "r1", seq = 5, clientOpts = {}, gatewayOpts = {}) {
  const ctx = await connected(clientOpts, gatewayOpts);
  const p = ctx.client.join(roomId);
  const req = await ctx.sock.nextType("join");
  ctx.sock.reply(req, {
    type: "joined",
    room: roomObj(roomId, seq, { current_players: 2 }),
    participants: [
      { device_id: "device-host-0001", user_id: null, role: "host", status: "active", joined_at: 1 },
      { device_id: DEVICE, user_id: null, role: "player", status: "active", joined_at: 2 },
    ],
    seq,
    epoch: "e1",
    role: "player",
    recovered: false,
  });
  const room = await p;
  const events = [];
  room.on("event", (e) => events.push(e));
  return { ...ctx, room, events, seqs: () => events.map((e) => e.seq) };
}

/** Answer the resume join on `sock` and return the join frame. */
export async function answerResume(sock, roomId, { seq, recovered = true, epoch = "e1", room } = {}) {
  const req = await sock.next((m) => m.type === "join" && m.room_id === roomId);
  sock.reply(req, {
    type: "joined",
    room: room ?? roomObj(roomId, seq),
    participants: [],
    seq,
    epoch,
    role: "player",
    recovered,
  });
  return req;
}
