// Room state (merge patch, participants), createRoom, the events() iterator, the device id.
import assert from "node:assert/strict";
import test from "node:test";

import { DEVICE_ID_KEY, DEVICE_TOKEN_KEY, loadDeviceId, mergePatch, RoomcastClient } from "../src/roomcast.js";
import { ev, FakeGateway, MemoryStorage, roomObj, until } from "../test-support/fake-ws.js";
import { connected, DEVICE, inRoom } from "../test-support/unit-helpers.js";

test("mergePatch follows RFC 7386 (its appendix examples) and does not modify the target", () => {
  const cases = [
    [{ a: "b" }, { a: "c" }, { a: "c" }],
    [{ a: "b" }, { b: "c" }, { a: "b", b: "c" }],
    [{ a: "b" }, { a: null }, {}],
    [{ a: "b", b: "c" }, { a: null }, { b: "c" }],
    [{ a: ["b"] }, { a: "c" }, { a: "c" }],
    [{ a: "c" }, { a: ["b"] }, { a: ["b"] }],
    [{ a: { b: "c" } }, { a: { b: "d", c: null } }, { a: { b: "d" } }],
    [{ a: [{ b: "c" }] }, { a: [1] }, { a: [1] }],
    [["a", "b"], ["c", "d"], ["c", "d"]],
    [{ a: "b" }, ["c"], ["c"]],
    [{ a: "foo" }, null, null],
    [{ a: "foo" }, "bar", "bar"],
    [{ e: null }, { a: 1 }, { e: null, a: 1 }],
    [[1, 2], { a: "b", c: null }, { a: "b" }],
    [{}, { a: { bb: { ccc: null } } }, { a: { bb: {} } }],
  ];
  for (const [target, patch, expected] of cases) {
    const before = JSON.stringify(target);
    assert.deepEqual(mergePatch(target, patch), expected, `${before} + ${JSON.stringify(patch)}`);
    assert.equal(JSON.stringify(target), before, "target unchanged");
  }
  const polluted = mergePatch({}, JSON.parse('{"__proto__": {"evil": 1}}'));
  assert.equal({}.evil, undefined);
  assert.deepEqual(Object.keys(polluted), ["__proto__"]);
});

test("state_change events keep room.state current (status and game_data merge patch)", async () => {
  const { client, sock, room } = await inRoom("r1", 5);
  const host = { socket_id: "h", device_id: "device-host-0001", user_id: null };
  const before = room.state;
  sock.deliver(ev("r1", 6, "state_change", { status: "in_progress", patch: { round: 1, scores: { a: 1, b: 2 } } }, host));
  sock.deliver(ev("r1", 7, "state_change", { patch: { round: 2, scores: { a: null, b: 5 } } }, host));
  await until(() => room.seq === 7);
  assert.equal(room.state.status, "in_progress");
  assert.deepEqual(room.state.game_data, { round: 2, scores: { b: 5 } });
  assert.equal(room.state.seq, 7);
  assert.deepEqual(before.game_data, {}, "earlier snapshots are not modified");
  client.close();
});

test("participant events keep room.participants and current_players current", async () => {
  const { client, sock, room } = await inRoom("r1", 5);
  const carol = { socket_id: "c", device_id: "device-carol-0003", user_id: null };
  sock.deliver(ev("r1", 6, "participant_joined", { device_id: "device-carol-0003", role: "player" }, carol));
  sock.deliver(ev("r1", 7, "participant_disconnected", { device_id: "device-carol-0003", role: "player", reason: "close" }));
  await until(() => room.seq === 7);
  assert.equal(room.state.current_players, 3);
  assert.equal(room.participants.find((p) => p.device_id === "device-carol-0003").status, "disconnected");
  sock.deliver(ev("r1", 8, "participant_reconnected", { device_id: "device-carol-0003", role: "player" }, carol));
  sock.deliver(ev("r1", 9, "participant_left", { device_id: "device-carol-0003", role: "player", reason: "leave" }, carol));
  sock.deliver(ev("r1", 10, "participant_joined", { device_id: "device-dave-0004", role: "spectator" }, null));
  await until(() => room.seq === 10);
  assert.equal(room.state.current_players, 2, "spectators do not count");
  assert.deepEqual(room.participants.map((p) => p.device_id).sort(), ["device-dave-0004", "device-host-0001", DEVICE]);
  client.close();
});

test("room_closed: delivered as an event, then closed; the iterator ends", async () => {
  const { client, sock, room, seqs } = await inRoom("r1", 5);
  const closed = [];
  room.on("closed", (e) => closed.push(e));
  const it = room.events();
  const got = [];
  const reading = (async () => {
    for await (const e of it) got.push(e.seq);
  })();
  sock.deliver(ev("r1", 6));
  sock.deliver(ev("r1", 7, "room_closed", null, { socket_id: "h", device_id: "device-host-0001", user_id: null }));
  await reading;
  assert.deepEqual(got, [6, 7]);
  assert.deepEqual(seqs(), [6, 7]);
  assert.equal(closed.length, 1);
  assert.equal(closed[0].seq, 7);
  assert.equal(room.state.status, "closed");
  assert.equal(room.ended, true);
  assert.equal(client.rooms.has("r1"), false);
  client.close();
});

test("events(): return() detaches the iterator", async () => {
  const { client, sock, room } = await inRoom("r1", 5);
  const it = room.events();
  sock.deliver(ev("r1", 6));
  assert.equal((await it.next()).value.seq, 6);
  await it.return();
  sock.deliver(ev("r1", 7));
  assert.deepEqual(await it.next(), { value: undefined, done: true });
  client.close();
});

test("createRoom: host role, the epoch from a same-socket join, and seq 1 reaches listeners added after the await", async () => {
  const { client, sock } = await connected();
  const p = client.createRoom({ gameType: "quiz", roomId: "quiz-1", maxPlayers: 4, gameData: { round: 0 }, password: "pw-123" });
  const req = await sock.nextType("create_room");
  assert.deepEqual(
    { game_type: req.game_type, room_id: req.room_id, max_players: req.max_players, game_data: req.game_data, password: req.password },
    { game_type: "quiz", room_id: "quiz-1", max_players: 4, game_data: { round: 0 }, password: "pw-123" },
  );
  const me = { socket_id: sock.socketId, device_id: DEVICE, user_id: null };
  // the creator's participant_joined may come before the reply
  sock.deliver(ev("quiz-1", 1, "participant_joined", { device_id: DEVICE, role: "host" }, me));
  sock.reply(req, { type: "room_created", room: roomObj("quiz-1", 0, { max_players: 4, game_data: { round: 0 } }) });
  const join = await sock.nextType("join");
  assert.deepEqual({ room_id: join.room_id, since: join.since }, { room_id: "quiz-1", since: undefined });
  sock.reply(join, { type: "joined", room: roomObj("quiz-1", 1), participants: [], seq: 1, epoch: "ep-1", role: "host", recovered: false });
  const room = await p;
  const seen = [];
  room.on("event", (e) => seen.push(e.seq));
  await until(() => seen.length === 1);
  assert.equal(room.role, "host");
  assert.equal(room.epoch, "ep-1");
  assert.equal(room.id, "quiz-1");
  assert.equal(room.participants[0].role, "host");
  assert.deepEqual(room.state.game_data, { round: 0 });
  client.close();
});

test("join() of a room the client is in returns the same Room; concurrent joins share one request", async () => {
  const { client, sock, room } = await inRoom("r1", 5);
  assert.equal(await client.join("r1"), room);
  const a = client.join("r2");
  const b = client.join("r2");
  const req = await sock.nextType("join");
  sock.reply(req, { type: "joined", room: roomObj("r2", 1), participants: [], seq: 1, epoch: "x", role: "player", recovered: false });
  assert.equal(await a, await b);
  assert.equal(sock.frames("join").length, 2); // r1 and r2, once each
  client.close();
});

test("device id: created once in storage and reused; invalid stored values replaced; broken storage tolerated", async () => {
  const storage = new MemoryStorage();
  const gw = new FakeGateway();
  const c1 = new RoomcastClient({ url: "ws://x/ws", storage, WebSocket: gw.WebSocket });
  assert.match(c1.deviceId, /^[A-Za-z0-9._:-]{8,128}$/);
  assert.equal(storage.getItem(DEVICE_ID_KEY), c1.deviceId);
  const c2 = new RoomcastClient({ url: "ws://x/ws", storage, WebSocket: gw.WebSocket });
  assert.equal(c2.deviceId, c1.deviceId);
  await c2.connect();
  assert.equal(gw.last.frames("hello")[0].device_id, c1.deviceId);
  c2.close();

  const bad = new MemoryStorage({ [DEVICE_ID_KEY]: "no spaces allowed" });
  const id = loadDeviceId(bad);
  assert.match(id, /^[A-Za-z0-9._:-]{8,128}$/);
  assert.equal(bad.getItem(DEVICE_ID_KEY), id);

  const throwing = { getItem: () => { throw new Error("SecurityError"); }, setItem: () => { throw new Error("QuotaExceeded"); } };
  assert.match(new RoomcastClient({ url: "ws://x/ws", storage: throwing, WebSocket: gw.WebSocket }).deviceId, /^rc-/);

  const explicit = new MemoryStorage();
  assert.equal(new RoomcastClient({ url: "ws://x/ws", deviceId: "given-device-01", storage: explicit, WebSocket: gw.WebSocket }).deviceId, "given-device-01");
  assert.equal(explicit.getItem(DEVICE_ID_KEY), null, "an explicit id is not stored");

  const ids = new Set(Array.from({ length: 50 }, () => loadDeviceId(null)));
  assert.equal(ids.size, 50);
});

test("the default storage is globalThis.localStorage, the default WebSocket globalThis.WebSocket", async () => {
  const gw = new FakeGateway();
  const storage = new MemoryStorage({ [DEVICE_ID_KEY]: "stored-device-42" });
  const saved = { ls: Object.getOwnPropertyDescriptor(globalThis, "localStorage"), ws: Object.getOwnPropertyDescriptor(globalThis, "WebSocket") };
  Object.defineProperty(globalThis, "localStorage", { value: storage, configurable: true, writable: true });
  Object.defineProperty(globalThis, "WebSocket", { value: gw.WebSocket, configurable: true, writable: true });
  try {
    const client = new RoomcastClient({ url: "ws://x/ws" });
    assert.equal(client.deviceId, "stored-device-42");
    await client.connect();
    assert.equal(gw.sockets.length, 1);
    client.close();
  } finally {
    for (const [name, desc] of [["localStorage", saved.ls], ["WebSocket", saved.ws]]) {
      if (desc) Object.defineProperty(globalThis, name, desc);
      else delete globalThis[name];
    }
  }
});

test("a throwing listener does not break delivery; it is reported on the error event", async () => {
  const { client, sock, room, seqs } = await inRoom("r1", 5);
  const errors = [];
  client.on("error", (e) => errors.push(e));
  room.on("event", () => {
    throw new Error("app bug");
  });
  sock.deliver(ev("r1", 6));
  sock.deliver(ev("r1", 7));
  await until(() => seqs().length === 2);
  assert.equal(errors.length, 2);
  assert.equal(errors[0].message, "app bug");
  client.close();
});

test("host_changed: the new host's role in participants, and room.role when it is this device", async () => {
  const { client, sock, room } = await inRoom("r1", 5);
  sock.deliver(ev("r1", 6, "participant_left", { device_id: "device-host-0001", role: "host", reason: "leave" }));
  sock.deliver(ev("r1", 7, "host_changed", { device_id: DEVICE, role: "host", reason: "host_left" }));
  await until(() => room.seq === 7);
  assert.equal(room.role, "host");
  assert.deepEqual(room.participants.map((p) => [p.device_id, p.role]), [[DEVICE, "host"]]);
  await assert.rejects(room.send("host_changed"), (e) => e.code === "bad_request");
  client.close();
});

test("device token: sent in every hello once a welcome gave it, and kept in storage next to the device id", async () => {
  const storage = new MemoryStorage();
  const gw = new FakeGateway({ welcome: { device_token: "tok-abc" } });
  const c1 = new RoomcastClient({ url: "ws://x/ws", storage, WebSocket: gw.WebSocket, backoff: { initialMs: 1, maxMs: 2 } });
  await c1.connect();
  assert.equal(gw.last.frames("hello")[0].device_token, undefined);
  assert.equal(c1.deviceToken, "tok-abc");
  assert.equal(storage.getItem(DEVICE_TOKEN_KEY), "tok-abc");
  gw.last.drop(1006);
  const sock = await gw.socket(1);
  assert.equal((await sock.nextType("hello")).device_token, "tok-abc");
  c1.close();
  const c2 = new RoomcastClient({ url: "ws://x/ws", storage, WebSocket: gw.WebSocket });
  await c2.connect();
  assert.equal(gw.last.frames("hello")[0].device_token, "tok-abc", "a reload sends it from the first hello");
  c2.close();
  const explicit = new RoomcastClient({ url: "ws://x/ws", deviceId: "device-explicit-1", storage, WebSocket: gw.WebSocket });
  assert.equal(explicit.deviceToken, null, "a stored token belongs to the stored id only");
});

test("createRoom passes spectatorsCanSend as spectators_can_send", async () => {
  const { client, sock } = await connected();
  client.createRoom({ gameType: "quiz", spectatorsCanSend: true }).catch(() => {});
  assert.equal((await sock.nextType("create_room")).spectators_can_send, true);
  client.close();
});
