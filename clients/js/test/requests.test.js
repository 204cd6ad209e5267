// Requests and replies: id/re matching, timeouts, error codes, rate limits, validation.
import assert from "node:assert/strict";
import test from "node:test";

import { RoomcastClient, RoomcastError } from "../src/roomcast.js";
import { FakeGateway, roomObj, sleep, until } from "../test-support/fake-ws.js";
import { connected, DEVICE, inRoom } from "../test-support/unit-helpers.js";

test("hello carries the device id, token and metadata; connect resolves with the welcome", async () => {
  const gw = new FakeGateway();
  const client = new RoomcastClient({
    url: "ws://fake/ws",
    deviceId: DEVICE,
    storage: null,
    WebSocket: gw.WebSocket,
    token: async () => "tok-1",
    metadata: { app: "test" },
  });
  const states = [];
  client.on("state", (s) => states.push(s));
  const opened = [];
  client.on("open", () => opened.push(true));
  const welcome = await client.connect();
  const hello = gw.last.frames("hello")[0];
  assert.equal(hello.device_id, DEVICE);
  assert.equal(hello.token, "tok-1");
  assert.deepEqual(hello.metadata, { app: "test" });
  assert.equal(typeof hello.id, "number");
  assert.deepEqual(gw.last.protocols, "roomcast.v1");
  assert.equal(welcome.type, "welcome");
  assert.equal(client.socketId, gw.last.socketId);
  assert.deepEqual(states, ["connecting", "open"]);
  assert.equal(opened.length, 1);
  assert.equal(await client.connect(), welcome, "connect() when open resolves at once");
  client.close();
});

test("replies are matched by id, whatever their order", async () => {
  const { client, sock } = await connected();
  const a = client.listRooms({ gameType: "quiz" });
  const b = client.listRooms({ gameType: "trivia", limit: 5 });
  const reqA = await sock.nextType("list_rooms");
  const reqB = await sock.nextType("list_rooms");
  assert.notEqual(reqA.id, reqB.id);
  assert.deepEqual({ ...reqB, __taken: undefined, id: undefined }, { type: "list_rooms", game_type: "trivia", limit: 5, __taken: undefined, id: undefined });
  sock.reply(reqB, { type: "rooms", rooms: [roomObj("B", 1)] });
  sock.reply(reqA, { type: "rooms", rooms: [roomObj("A", 1)] });
  assert.equal((await a)[0].room_id, "A");
  assert.equal((await b)[0].room_id, "B");
  client.close();
});

test("an error reply rejects with a RoomcastError carrying the gateway's code", async () => {
  const { client, sock } = await connected();
  const p = client.join("nope");
  const req = await sock.nextType("join");
  sock.reply(req, { type: "error", code: "not_found", message: "no room 'nope'" });
  await assert.rejects(p, (err) => err instanceof RoomcastError && err.code === "not_found" && /no room/.test(err.message));
  client.close();
});

test("a request without a reply rejects with code timeout; a late reply is ignored", async () => {
  const { client, sock } = await connected({ requestTimeoutMs: 40 });
  const t0 = Date.now();
  const p = client.listRooms();
  const req = await sock.nextType("list_rooms");
  await assert.rejects(p, (err) => err.code === "timeout");
  assert.ok(Date.now() - t0 >= 35);
  sock.reply(req, { type: "rooms", rooms: [] }); // late: nothing breaks
  const q = client.listRooms();
  sock.reply(await sock.nextType("list_rooms"), { type: "rooms", rooms: [] });
  assert.deepEqual(await q, []);
  client.close();
});

test("rate_limited: the request goes again after retry_after_ms and then resolves", async () => {
  const { client, sock, room } = await inRoom();
  const p = room.send("answer", { choice: "B" });
  const first = await sock.nextType("event");
  const t0 = Date.now();
  sock.reply(first, { type: "error", code: "rate_limited", message: "too many messages", retry_after_ms: 40 });
  const second = await sock.nextType("event");
  assert.ok(Date.now() - t0 >= 35, "waited retry_after_ms");
  assert.notEqual(second.id, first.id);
  assert.deepEqual(second.payload, { choice: "B" });
  sock.reply(second, { type: "ack", seq: 6 });
  assert.equal(await p, 6);
  client.close();
});

test("uncorrelated server errors go to the client's error event", async () => {
  const { client, sock } = await connected();
  const errors = [];
  client.on("error", (e) => errors.push(e));
  sock.deliver({ type: "error", code: "bad_request", message: "malformed JSON" });
  assert.equal(errors.length, 1);
  assert.equal(errors[0].code, "bad_request");
  client.close();
});

test("client-side validation and the frame size limit", async () => {
  const { client, room, sock } = await inRoom();
  await assert.rejects(room.send("room_closed"), (e) => e.code === "bad_request");
  await assert.rejects(room.send(""), (e) => e.code === "bad_request");
  await assert.rejects(room.send("x", [1, 2]), (e) => e.code === "bad_request");
  await assert.rejects(room.update({}), (e) => e.code === "bad_request");
  await assert.rejects(room.update({ status: "closed" }), (e) => e.code === "bad_request");
  await assert.rejects(client.join("bad room!"), (e) => e.code === "bad_request");
  await assert.rejects(client.createRoom({}), (e) => e.code === "bad_request");
  await assert.rejects(room.send("x", { blob: "é".repeat(40000) }), (e) => e.code === "too_large");
  assert.equal(sock.frames("event").length, 0, "nothing invalid was sent");
  assert.throws(() => new RoomcastClient({ url: "ws://x", deviceId: "short", storage: null, WebSocket: class {} }), TypeError);
  assert.throws(() => new RoomcastClient({ deviceId: DEVICE, storage: null, WebSocket: class {} }), TypeError);
  client.close();
});

test("requests before connect() or after close() are refused with code closed", async () => {
  const gw = new FakeGateway();
  const client = new RoomcastClient({ url: "ws://fake/ws", deviceId: DEVICE, storage: null, WebSocket: gw.WebSocket });
  await assert.rejects(client.listRooms(), (e) => e.code === "closed");
  await client.connect();
  const pending = client.listRooms();
  await gw.last.nextType("list_rooms");
  client.close();
  await assert.rejects(pending, (e) => e.code === "closed");
  assert.equal(client.state, "closed");
  await assert.rejects(client.listRooms(), (e) => e.code === "closed");
  await sleep(30);
  assert.equal(gw.sockets.length, 1, "no reconnect after close()");
  assert.deepEqual(gw.last.closedByClient, { code: 1000, reason: "client closed" });
});

test("an unauthorized hello is fatal: error event, state closed, connect() rejects", async () => {
  const gw = new FakeGateway({ autoWelcome: false });
  const client = new RoomcastClient({ url: "ws://fake/ws", deviceId: DEVICE, storage: null, WebSocket: gw.WebSocket, token: "bad" });
  const errors = [];
  client.on("error", (e) => errors.push(e));
  const p = client.connect();
  const sock = await gw.socket(0);
  const hello = await sock.nextType("hello");
  sock.reply(hello, { type: "error", code: "unauthorized", message: "bad token signature" });
  await assert.rejects(p, (e) => e.code === "unauthorized");
  assert.equal(client.state, "closed");
  assert.equal(errors[0].code, "unauthorized");
  await sleep(30);
  assert.equal(gw.sockets.length, 1);
});

test("an unavailable hello (the gateway's backend or webhook cannot decide now) is retried on a new socket", async () => {
  const gw = new FakeGateway({ autoWelcome: false });
  const client = new RoomcastClient({ url: "ws://fake/ws", deviceId: DEVICE, storage: null, WebSocket: gw.WebSocket,
    backoff: { initialMs: 10, maxMs: 40 } });
  const errors = [];
  client.on("error", (e) => errors.push(e));
  const p = client.connect();
  const sock = await gw.socket(0);
  const hello = await sock.nextType("hello");
  sock.reply(hello, { type: "error", code: "unavailable", message: "the game backend did not answer in time; retry" });
  const sock2 = await gw.socket(1);
  const again = await sock2.nextType("hello");
  sock2.reply(again, gw.welcomeFor(sock2, again));
  assert.equal((await p).type, "welcome");
  assert.equal(client.state, "open");
  assert.deepEqual(errors, []);
  client.close();
});

test("a rate-limited hello is sent again on the same socket", async () => {
  const gw = new FakeGateway({ autoWelcome: false });
  const client = new RoomcastClient({ url: "ws://fake/ws", deviceId: DEVICE, storage: null, WebSocket: gw.WebSocket });
  const p = client.connect();
  const sock = await gw.socket(0);
  const hello = await sock.nextType("hello");
  sock.reply(hello, { type: "error", code: "rate_limited", message: "slow down", retry_after_ms: 20 });
  const again = await sock.nextType("hello");
  sock.reply(again, gw.welcomeFor(sock, again));
  assert.equal((await p).type, "welcome");
  assert.equal(gw.sockets.length, 1);
  client.close();
});

test("the in-flight window holds requests beyond maxInFlight until replies come", async () => {
  const { client, sock, room } = await inRoom("r1", 5, { maxInFlight: 2 });
  const sends = [room.send("a"), room.send("b"), room.send("c")];
  await until(() => sock.frames("event").length === 2);
  await sleep(10);
  assert.equal(sock.frames("event").length, 2);
  const [a] = sock.frames("event");
  sock.reply(a, { type: "ack", seq: 6 });
  await until(() => sock.frames("event").length === 3);
  const [, b, c] = sock.frames("event");
  sock.reply(b, { type: "ack", seq: 7 });
  sock.reply(c, { type: "ack", seq: 8 });
  assert.deepEqual(await Promise.all(sends), [6, 7, 8]);
  client.close();
});
