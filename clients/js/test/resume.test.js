// Resume after a reconnect: rejoin with since/epoch, ordering, dedupe, reset, the send queue,
// requests whose reply was lost with the socket.
import assert from "node:assert/strict";
import test from "node:test";

import { RoomcastClient } from "../src/roomcast.js";
import { ev, FakeGateway, roomObj, sleep, until } from "../test-support/fake-ws.js";
import { answerResume, DEVICE, inRoom } from "../test-support/unit-helpers.js";

test("live events: in seq order, each once (duplicates and out-of-order arrivals)", async () => {
  const { client, sock, seqs } = await inRoom("r1", 5);
  sock.deliver(ev("r1", 4)); // before the join: dropped
  sock.deliver(ev("r1", 5)); // = joined.seq: dropped
  sock.deliver(ev("r1", 7)); // ahead of a gap: held
  sock.deliver(ev("r1", 6));
  sock.deliver(ev("r1", 6));
  sock.deliver(ev("r1", 8));
  sock.deliver(ev("r1", 7));
  sock.deliver(ev("other", 9)); // a room we are not in
  await until(() => seqs().length === 3);
  await sleep(5);
  assert.deepEqual(seqs(), [6, 7, 8]);
  client.close();
});

test("reconnect: hello with the same device id, rejoin with since/epoch, replay delivered once in order", async () => {
  const { gw, client, sock, room, seqs } = await inRoom("r1", 5);
  sock.deliver(ev("r1", 6));
  await until(() => seqs().length === 1);
  sock.drop(1006);
  const sock2 = await gw.socket(1);
  assert.equal((await sock2.nextType("hello")).device_id, DEVICE);
  const join = await sock2.next((m) => m.type === "join");
  assert.equal(join.room_id, "r1");
  assert.equal(join.since, 6);
  assert.equal(join.epoch, "e1");
  assert.equal(join.role, "player");
  // replay arrives before the joined reply, with duplicates, out of order
  sock2.deliver(ev("r1", 8));
  sock2.deliver(ev("r1", 6));
  sock2.deliver(ev("r1", 7));
  sock2.reply(join, { type: "joined", room: roomObj("r1", 8), participants: [], seq: 8, epoch: "e1", role: "player", recovered: true });
  sock2.deliver(ev("r1", 8));
  sock2.deliver(ev("r1", 9, "participant_reconnected", { device_id: DEVICE, role: "player" }));
  await until(() => seqs().length === 4);
  assert.deepEqual(seqs(), [6, 7, 8, 9]);
  assert.equal(room.seq, 9);
  client.close();
});

test("every room is rejoined: own rooms and welcome.rooms; unknown listed rooms are joined and announced", async () => {
  const { gw, client, sock } = await inRoom("r1", 5);
  const announced = [];
  client.on("room", (r) => announced.push(r));
  gw.nextWelcome = () => ({ rooms: [{ room_id: "r1", role: "player", seq: 9 }, { room_id: "r2", role: "spectator", seq: 3 }] });
  sock.drop(4002, "heartbeat timeout");
  const sock2 = await gw.socket(1);
  const joins = [await sock2.nextType("join"), await sock2.nextType("join")];
  const byRoom = Object.fromEntries(joins.map((j) => [j.room_id, j]));
  assert.equal(byRoom.r1.since, 5);
  assert.equal(byRoom.r2.since, undefined, "a room we have no seq for is joined fresh");
  assert.equal(byRoom.r2.role, "spectator");
  sock2.reply(byRoom.r2, { type: "joined", room: roomObj("r2", 3), participants: [], seq: 3, epoch: "e2", role: "spectator", recovered: false });
  sock2.reply(byRoom.r1, { type: "joined", room: roomObj("r1", 5), participants: [], seq: 5, epoch: "e1", role: "player", recovered: true });
  await until(() => announced.length === 1);
  assert.equal(announced[0].id, "r2");
  assert.equal(announced[0].role, "spectator");
  assert.deepEqual([...client.rooms.keys()].sort(), ["r1", "r2"]);
  client.close();
});

test("recovered false: reset with the snapshot, then carry on from joined.seq", async () => {
  const { gw, client, sock, room, seqs } = await inRoom("r1", 5);
  const resets = [];
  room.on("reset", (s) => resets.push(s));
  sock.drop(1012);
  const sock2 = await gw.socket(1);
  const join = await sock2.nextType("join");
  sock2.deliver(ev("r1", 41)); // a live event racing the reply
  sock2.reply(join, {
    type: "joined",
    room: roomObj("r1", 40, { status: "in_progress", game_data: { round: 3 } }),
    participants: [{ device_id: DEVICE, user_id: null, role: "player", status: "active", joined_at: 9 }],
    seq: 40,
    epoch: "e9",
    role: "player",
    recovered: false,
  });
  sock2.deliver(ev("r1", 39)); // older than the snapshot: dropped
  await until(() => seqs().length === 1);
  assert.equal(resets.length, 1);
  assert.equal(resets[0].status, "in_progress");
  assert.deepEqual(resets[0].game_data, { round: 3 });
  assert.deepEqual(seqs(), [41]);
  assert.equal(room.epoch, "e9");
  assert.equal(room.seq, 41);
  assert.equal(room.participants.length, 1);
  client.close();
});

test("offline queue: sends wait (bounded by maxQueue) and go after the resume, in order", async () => {
  const { gw, client, sock, room } = await inRoom("r1", 5, { maxQueue: 3, backoff: { initialMs: 30, maxMs: 60 } });
  sock.drop(1006);
  const sends = [room.send("a", { i: 1 }), room.send("b", { i: 2 }), room.send("c", { i: 3 })];
  await assert.rejects(room.send("d"), (e) => e.code === "queue_full");
  const sock2 = await gw.socket(1);
  await answerResume(sock2, "r1", { seq: 5 });
  const frames = [await sock2.nextType("event"), await sock2.nextType("event"), await sock2.nextType("event")];
  assert.deepEqual(frames.map((f) => f.event_type), ["a", "b", "c"]);
  frames.forEach((f, i) => sock2.reply(f, { type: "ack", seq: 6 + i }));
  assert.deepEqual(await Promise.all(sends), [6, 7, 8]);
  client.close();
});

test("queued room requests wait for that room's resume, not just for the welcome", async () => {
  const { gw, client, sock, room } = await inRoom("r1", 5);
  sock.drop(1006);
  const p = room.send("a");
  const sock2 = await gw.socket(1);
  const join = await sock2.nextType("join");
  await sleep(20);
  assert.equal(sock2.frames("event").length, 0, "not before joined");
  sock2.reply(join, { type: "joined", room: roomObj("r1", 7), participants: [], seq: 7, epoch: "e1", role: "player", recovered: true });
  await sleep(20);
  assert.equal(sock2.frames("event").length, 0, "not before the replay reached joined.seq");
  sock2.deliver(ev("r1", 6));
  sock2.deliver(ev("r1", 7));
  const frame = await sock2.nextType("event");
  sock2.reply(frame, { type: "ack", seq: 8 });
  assert.equal(await p, 8);
  client.close();
});

test("a send whose ack was lost: found in the replay (same socket id and content) -> not sent again", async () => {
  const { gw, client, sock, room } = await inRoom("r1", 5);
  const p = room.send("answer", { choice: "B", q: 1 }, "submit");
  await sock.nextType("event");
  const oldSocket = sock.socketId;
  sock.drop(1006); // the gateway applied it as seq 6, but the ack never came
  const sock2 = await gw.socket(1);
  await answerResume(sock2, "r1", { seq: 6 });
  const from = { socket_id: oldSocket, device_id: DEVICE, user_id: null };
  sock2.deliver({ ...ev("r1", 6, "answer", { q: 1, choice: "B" }, from), action: "submit" }); // key order differs
  assert.equal(await p, 6);
  await sleep(20);
  assert.equal(sock2.frames("event").length, 0, "not sent twice");
  client.close();
});

test("a send lost with the socket and absent from the replay is sent again after the resume", async () => {
  const { gw, client, sock, room } = await inRoom("r1", 5);
  const p1 = room.send("answer", { q: 1 });
  const p2 = room.send("answer", { q: 2 });
  await sock.nextType("event");
  await sock.nextType("event");
  const oldSocket = sock.socketId;
  sock.drop(1006); // q:1 was applied as seq 6, q:2 never reached the gateway
  const sock2 = await gw.socket(1);
  await answerResume(sock2, "r1", { seq: 7 });
  sock2.deliver(ev("r1", 6, "answer", { q: 1 }, { socket_id: oldSocket, device_id: DEVICE, user_id: null }));
  await sleep(10);
  assert.equal(sock2.frames("event").length, 0, "waits until the replay reached joined.seq");
  sock2.deliver(ev("r1", 7, "other", {}, { socket_id: "someone", device_id: "device-x-0001", user_id: null }));
  const again = await sock2.nextType("event");
  assert.deepEqual(again.payload, { q: 2 });
  sock2.reply(again, { type: "ack", seq: 8 });
  assert.equal(await p1, 6);
  assert.equal(await p2, 8);
  client.close();
});

test("every send carries its own idempotency_key, and a resend carries the same one", async () => {
  const { gw, client, sock, room } = await inRoom("r1", 5);
  const p1 = room.send("answer", { q: 1 });
  const p2 = room.send("answer", { q: 1 }); // the same content: still another send, another key
  const f1 = await sock.nextType("event");
  const f2 = await sock.nextType("event");
  assert.match(f1.idempotency_key, /^[A-Za-z0-9]{22}$/);
  assert.match(f2.idempotency_key, /^[A-Za-z0-9]{22}$/);
  assert.notEqual(f1.idempotency_key, f2.idempotency_key);
  sock.reply(f1, { type: "ack", seq: 6 });
  assert.equal(await p1, 6);
  const oldSocket = sock.socketId;
  sock.drop(1006); // f2's ack is lost (and f2 never reached the gateway)
  const sock2 = await gw.socket(1);
  await answerResume(sock2, "r1", { seq: 6 });
  // the replay: p1's event (acked already, so it is not taken for f2 despite the same content)
  sock2.deliver(ev("r1", 6, "answer", { q: 1 }, { socket_id: oldSocket, device_id: DEVICE, user_id: null }));
  const again = await sock2.nextType("event");
  assert.equal(again.idempotency_key, f2.idempotency_key);
  sock2.reply(again, { type: "ack", seq: 7 });
  assert.equal(await p2, 7);
  client.close();
});

test("the old race: a send the old replica applies after the resume is sent again with its key and resolves once", async () => {
  const { gw, client, sock, room, seqs } = await inRoom("r1", 5);
  const p = room.send("answer", { q: 1 });
  const first = await sock.nextType("event");
  const oldSocket = sock.socketId;
  sock.drop(1006); // the network dropped the link; the old replica has the frame but applies it late
  const sock2 = await gw.socket(1);
  await answerResume(sock2, "r1", { seq: 5 }); // nothing to replay: not applied yet as far as the join saw
  const again = await sock2.nextType("event");
  assert.ok(first.idempotency_key);
  assert.equal(again.idempotency_key, first.idempotency_key, "resent with the same key");
  // The old replica applies the first send (seq 6) meanwhile; the gateway acks the resend with
  // that first seq (the key was used) and makes no second event.
  sock2.deliver(ev("r1", 6, "answer", { q: 1 }, { socket_id: oldSocket, device_id: DEVICE, user_id: null }));
  sock2.reply(again, { type: "ack", seq: 6 });
  assert.equal(await p, 6);
  await until(() => seqs().length === 1);
  await sleep(20);
  assert.deepEqual(seqs(), [6]);
  assert.equal(sock2.frames("event").length, 1, "sent again once, not more");
  client.close();
});

test("a send lost with the socket when the room cannot be replayed is sent again with its key (same epoch)", async () => {
  const { gw, client, sock, room } = await inRoom("r1", 5);
  const p = room.send("answer", { q: 1 });
  const first = await sock.nextType("event");
  sock.drop(1006);
  const sock2 = await gw.socket(1);
  await answerResume(sock2, "r1", { seq: 50, recovered: false }); // epoch e1: the gateway still knows the key
  const again = await sock2.nextType("event");
  assert.equal(again.idempotency_key, first.idempotency_key);
  sock2.reply(again, { type: "ack", seq: 49 }); // it had been applied: the first seq
  assert.equal(await p, 49);
  client.close();
});

test("a send lost with the socket when the room came back under a new epoch rejects with code disconnected", async () => {
  const { gw, client, sock, room } = await inRoom("r1", 5);
  const p = room.send("answer", { q: 1 });
  await sock.nextType("event");
  sock.drop(1006);
  const sock2 = await gw.socket(1);
  await answerResume(sock2, "r1", { seq: 50, recovered: false, epoch: "e2" }); // rebuilt: its keys are gone
  await assert.rejects(p, (e) => e.code === "disconnected");
  await sleep(20);
  assert.equal(sock2.frames("event").length, 0);
  client.close();
});

test("an ack that comes before its own event: the event is not mistaken for a later send", async () => {
  const { client, sock, room, seqs } = await inRoom("r1", 5);
  const me = { socket_id: sock.socketId, device_id: DEVICE, user_id: null };
  const p1 = room.send("tick");
  const p2 = room.send("tick");
  const f1 = await sock.nextType("event");
  const f2 = await sock.nextType("event");
  sock.reply(f1, { type: "ack", seq: 6 });
  sock.deliver(ev("r1", 6, "tick", null, me));
  sock.deliver(ev("r1", 7, "tick", null, me)); // event before its ack
  assert.equal(await p1, 6);
  assert.equal(await p2, 7);
  sock.reply(f2, { type: "ack", seq: 7 });
  await until(() => seqs().length === 2);
  assert.deepEqual(seqs(), [6, 7]);
  client.close();
});

test("a room found closed or gone on resume ends with a closed stand-in; its queued sends fail", async () => {
  const { gw, client, sock, room } = await inRoom("r1", 5);
  const closed = [];
  room.on("closed", (e) => closed.push(e));
  sock.drop(1012);
  const p = room.send("late");
  const sock2 = await gw.socket(1);
  const join = await sock2.nextType("join");
  sock2.reply(join, { type: "error", code: "not_found", message: "no room 'r1'" });
  await assert.rejects(p, (e) => e.code === "not_found");
  assert.equal(closed.length, 1);
  assert.equal(closed[0].reason, "not_found");
  assert.equal(closed[0].seq, null);
  assert.equal(room.ended, true);
  assert.equal(client.rooms.has("r1"), false);
  client.close();
});

test("a gap that does not fill is replayed: join with since on the same socket", async () => {
  const { client, sock, seqs } = await inRoom("r1", 5, { gapTimeoutMs: 30 });
  sock.deliver(ev("r1", 6));
  sock.deliver(ev("r1", 8)); // 7 is missing
  const join = await sock.nextType("join", 2000);
  assert.equal(join.since, 6);
  assert.equal(join.epoch, "e1");
  sock.reply(join, { type: "joined", room: roomObj("r1", 8), participants: [], seq: 8, epoch: "e1", role: "player", recovered: true });
  sock.deliver(ev("r1", 7));
  sock.deliver(ev("r1", 8));
  await until(() => seqs().length === 3);
  assert.deepEqual(seqs(), [6, 7, 8]);
  client.close();
});

test("leave in flight when the socket drops: done if welcome.rooms no longer lists the room", async () => {
  const { gw, client, sock, room } = await inRoom("r1", 5);
  const p = room.leave();
  await sock.nextType("leave");
  sock.drop(1006);
  await gw.socket(1);
  await p;
  assert.equal(room.ended, true);
  assert.equal(gw.sockets[1].frames("join").length, 0, "not rejoined");
  client.close();
});

test("leave: left reply ends the room; later sends are refused", async () => {
  const { client, sock, room } = await inRoom("r1", 5);
  const it = room.events();
  const p = room.leave();
  const req = await sock.nextType("leave");
  sock.reply(req, { type: "left", room_id: "r1" });
  await p;
  assert.equal(room.ended, true);
  assert.deepEqual(await it.next(), { value: undefined, done: true });
  await assert.rejects(room.send("x"), (e) => e.code === "not_member");
  client.close();
});

test("the app's join with a password is not merged with the automatic rejoin of a listed room", async () => {
  const { gw, client, sock } = await inRoom("r1", 5);
  const announced = [];
  client.on("room", (r) => announced.push(r));
  gw.nextWelcome = () => ({ rooms: [{ room_id: "secret", role: "player", seq: 3 }] });
  sock.drop(1006);
  const sock2 = await gw.socket(1);
  const auto = await sock2.next((m) => m.type === "join" && m.room_id === "secret");
  assert.equal(auto.password, undefined);
  const mine = client.join("secret", { password: "pw-1" });
  const own = await sock2.next((m) => m.type === "join" && m.room_id === "secret");
  assert.equal(own.password, "pw-1");
  sock2.reply(auto, { type: "error", code: "forbidden", message: "this room needs a password" });
  sock2.reply(own, { type: "joined", room: roomObj("secret", 3), participants: [], seq: 3, epoch: "s", role: "player", recovered: false });
  const room = await mine;
  assert.equal(room.id, "secret");
  assert.equal(announced.length, 0);
  assert.equal(client.rooms.get("secret"), room);
  // later resumes carry the password
  gw.nextWelcome = undefined;
  sock2.drop(1006);
  const sock3 = await gw.socket(2);
  const resume = await sock3.next((m) => m.type === "join" && m.room_id === "secret");
  assert.equal(resume.password, "pw-1");
  assert.equal(resume.since, 3);
  client.close();
});

test("join() right after connect() shares the rejoin of a room listed in welcome.rooms (a page reload)", async () => {
  const gw = new FakeGateway({ welcome: { rooms: [{ room_id: "quiz-9", role: "host", seq: 12 }] } });
  const client = new RoomcastClient({ url: "ws://x/ws", deviceId: DEVICE, storage: null, WebSocket: gw.WebSocket });
  const announced = [];
  client.on("room", (r) => announced.push(r));
  await client.connect();
  const p = client.join("quiz-9", { role: "player" });
  const sock = gw.last;
  const auto = await sock.nextType("join");
  assert.equal(auto.role, undefined, "a host asks for no role");
  sock.reply(auto, { type: "joined", room: roomObj("quiz-9", 12), participants: [], seq: 12, epoch: "e", role: "host", recovered: false });
  const room = await p;
  assert.equal(room.role, "host");
  assert.equal(sock.frames("join").length, 1, "one join only");
  assert.deepEqual(announced, [room]);
  client.close();
});

test("close 1009: in-flight requests absent from the replay fail with too_large instead of going again", async () => {
  const { gw, client, sock, room } = await inRoom("r1", 5);
  const small = room.send("a", { n: 1 });
  const big = room.send("b", { blob: "x".repeat(1000) });
  await sock.nextType("event");
  await sock.nextType("event");
  const from = { socket_id: sock.socketId, device_id: DEVICE, user_id: null };
  sock.drop(1009, "frame too big"); // a gateway with a smaller MAX_FRAME_BYTES
  const sock2 = await gw.socket(1);
  await answerResume(sock2, "r1", { seq: 6 });
  sock2.deliver(ev("r1", 6, "a", { n: 1 }, from));
  assert.equal(await small, 6);
  await assert.rejects(big, (e) => e.code === "too_large");
  await sleep(20);
  assert.equal(sock2.frames("event").length, 0);
  client.close();
});
