// The client against a live cluster: two gateway replicas, Redis, a coordinator (see
// test-support/cluster.js for who starts it). Tests run in order; the last one kills replica gw-0.
import assert from "node:assert/strict";
import { after, before, test } from "node:test";

import { RoomcastClient } from "../../src/roomcast.js";
import { getCluster, nodeWebSocket, testWebSocket } from "../../test-support/cluster.js";
import { sleep, until } from "../../test-support/fake-ws.js";

let cluster;
let WS;
let kind;
const clients = [];
let counter = 0;

const uid = (prefix) => `${prefix}-${process.pid}-${Date.now().toString(36)}-${++counter}`;

before(async () => {
  ({ WebSocket: WS, kind } = await nodeWebSocket());
  cluster = await getCluster();
});

after(async () => {
  for (const c of clients) c.close();
  await cluster?.close();
});

function client(opts = {}) {
  const c = new RoomcastClient({
    urls: cluster.urls,
    storage: null,
    deviceId: uid("dev"),
    WebSocket: WS,
    requestTimeoutMs: 5000,
    backoff: { initialMs: 50, maxMs: 400 },
    ...opts,
  });
  clients.push(c);
  return c;
}

/** Record a room's events; check they come once each, in seq order, without gaps. */
function record(room) {
  const events = [];
  room.on("event", (e) => {
    const last = events.at(-1);
    if (last) assert.equal(e.seq, last.seq + 1, `seq ${e.seq} after ${last.seq}: gap or duplicate`);
    events.push(e);
  });
  return events;
}

/** Send `tick` events from `room` every `everyMs` until stopped; resolves with their seqs. */
function ticker(room, everyMs) {
  let running = true;
  const seqs = [];
  const done = (async () => {
    for (let n = 0; running; n++) {
      seqs.push(await room.send("tick", { n }));
      await sleep(everyMs);
    }
    return seqs;
  })();
  return { stop: () => ((running = false), done) };
}

const ofType = (events, type) => events.filter((e) => e.event_type === type);

test("two replicas: create on one, join on the other, events and state in order", async () => {
  const [a, b] = cluster.urls;
  const host = client({ urls: [a] });
  const player = client({ urls: [b] });
  const [wa, wb] = await Promise.all([host.connect(), player.connect()]);
  assert.notEqual(wa.node, wb.node);
  const roomId = uid("room");
  const hostRoom = await host.createRoom({ gameType: "trivia-js", roomId, gameData: { round: 0, scores: {} } });
  assert.equal(hostRoom.role, "host");
  assert.match(hostRoom.epoch, /.+/);
  const hostEvents = record(hostRoom);
  const playerRoom = await player.join(roomId);
  const playerEvents = record(playerRoom);
  assert.equal(playerRoom.epoch, hostRoom.epoch);
  assert.equal(await playerRoom.send("answer", { choice: "B" }, "submit"), 3);
  await hostRoom.update({ status: "in_progress", patch: { round: 1, scores: { [player.deviceId]: 10 } } });
  await hostRoom.update({ patch: { scores: { [player.deviceId]: null, x: 1 } } });
  await until(() => playerEvents.length === 4 && hostEvents.length === 5, 5000, "events on both sides");
  assert.deepEqual(hostEvents.map((e) => e.event_type), ["participant_joined", "participant_joined", "answer", "state_change", "state_change"]);
  assert.deepEqual(playerRoom.state.game_data, { round: 1, scores: { x: 1 } });
  assert.deepEqual(hostRoom.state.game_data, playerRoom.state.game_data);
  assert.equal(playerRoom.state.status, "in_progress");
  assert.equal(playerRoom.state.current_players, 2);
  const listed = await player.listRooms({ gameType: "trivia-js" });
  assert.ok(listed.some((r) => r.room_id === roomId));
  const closed = new Promise((r) => playerRoom.on("closed", r));
  await hostRoom.close();
  assert.equal((await closed).event_type, "room_closed");
  host.close();
  player.close();
});

test("resume after a dropped socket: the gateway closes the silent socket with 4002; nothing lost, nothing twice", async () => {
  const [a, b] = cluster.urls;
  const host = client({ urls: [b] });
  const ctl = testWebSocket(WS, kind);
  const player = client({ urls: [a, b], WebSocket: ctl.WebSocket });
  await Promise.all([host.connect(), player.connect()]);
  const roomId = uid("drop");
  const hostRoom = await host.createRoom({ gameType: "quiz", roomId });
  const hostEvents = record(hostRoom);
  const playerRoom = await player.join(roomId);
  const playerEvents = record(playerRoom);
  const closes = [];
  player.on("close", (c) => closes.push(c));
  const ticks = ticker(hostRoom, 15);
  await until(() => ofType(playerEvents, "tick").length >= 5, 5000, "first ticks");

  ctl.muted = true; // the uplink goes silent: no ping, no request reaches the gateway
  const lost = playerRoom.send("answer", { q: "during-silence" }); // sent into the void
  await until(() => closes.length === 1, 6000, "close 4002");
  assert.equal(closes[0].code, 4002);
  assert.equal(closes[0].willReconnect, true);
  ctl.muted = false;
  await until(() => player.state === "open", 5000, "reconnected");
  const lostSeq = await lost; // sent again after the resume: the gateway never had it
  await sleep(100);
  const sent = await ticks.stop();
  const last = sent.at(-1);
  await until(() => playerRoom.seq >= last, 5000, "player caught up");

  const tickNs = ofType(playerEvents, "tick").map((e) => e.payload.n);
  assert.deepEqual(tickNs, [...Array(sent.length).keys()], "every tick once, in order");
  assert.equal(playerEvents.find((e) => e.seq === lostSeq)?.payload?.q, "during-silence");
  await until(() => ofType(hostEvents, "answer").length === 1, 3000, "the silent send arrived");
  await sleep(100);
  assert.equal(ofType(hostEvents, "answer").length, 1, "the silent send arrived once");
  assert.ok(ofType(hostEvents, "participant_disconnected").some((e) => e.payload.reason === "timeout"));
  host.close();
  player.close();
});

test("a lost ack whose event the replay no longer has: sent again on the other replica with its key, applied once", async () => {
  const [a, b] = cluster.urls;
  const host = client({ urls: [b] });
  const ctl = testWebSocket(WS, kind);
  const player = client({ urls: [a, b], WebSocket: ctl.WebSocket });
  await Promise.all([host.connect(), player.connect()]);
  const roomId = uid("idem");
  const hostRoom = await host.createRoom({ gameType: "quiz", roomId });
  const hostEvents = record(hostRoom);
  const playerRoom = await player.join(roomId);
  const resets = [];
  playerRoom.on("reset", (snapshot) => resets.push(snapshot));
  ctl.deafen(); // from now on the player hears nothing on this socket: its ack will be lost
  const sending = playerRoom.send("answer", { q: 1 });
  await until(() => ofType(hostEvents, "answer").length === 1, 5000, "the gateway applied it");
  const applied = ofType(hostEvents, "answer")[0].seq;
  // More than ROOM_HISTORY_MAX_BYTES (128 KB) after it: the resume cannot replay it (recovered:
  // false, same epoch), so only the idempotency key can tell the gateway it was applied.
  const big = "x".repeat(60000);
  for (let n = 0; n < 4; n++) await hostRoom.send("blob", { n, big });
  ctl.instances.at(-1).close(); // the socket goes; the client reconnects to the other replica
  assert.equal(await sending, applied, "acked with the seq of the first, applied send");
  assert.equal(resets.length, 1, "the resume was not recovered (the case under test)");
  const after = await hostRoom.send("after");
  await until(() => playerRoom.seq >= after, 5000, "player caught up");
  await sleep(100);
  assert.equal(ofType(hostEvents, "answer").length, 1, "applied once");
  host.close();
  player.close();
});

test("offline send queue: sends made while disconnected wait (bounded) and go once the room is resumed", async () => {
  const [a, b] = cluster.urls;
  const host = client({ urls: [b] });
  const ctl = testWebSocket(WS, kind);
  const player = client({ urls: [a, b], WebSocket: ctl.WebSocket, maxQueue: 5 });
  await Promise.all([host.connect(), player.connect()]);
  const roomId = uid("queue");
  const hostRoom = await host.createRoom({ gameType: "quiz", roomId });
  const hostEvents = record(hostRoom);
  const playerRoom = await player.join(roomId);
  record(playerRoom);
  const reconnecting = [];
  player.on("reconnecting", (r) => reconnecting.push(r));

  ctl.blocked = true; // new sockets cannot connect
  ctl.instances.at(-1).close(3000, "network lost"); // the current one goes
  await until(() => player.state === "reconnecting", 2000);
  const sends = [1, 2, 3, 4, 5].map((i) => playerRoom.send("answer", { i }));
  await assert.rejects(playerRoom.send("answer", { i: 6 }), (e) => e.code === "queue_full");
  await until(() => reconnecting.length >= 3, 5000, "failed reconnects");
  assert.equal(ofType(hostEvents, "answer").length, 0);

  ctl.blocked = false;
  const seqs = await Promise.all(sends);
  assert.deepEqual(seqs, [...seqs].sort((x, y) => x - y));
  await until(() => ofType(hostEvents, "answer").length === 5, 3000);
  assert.deepEqual(ofType(hostEvents, "answer").map((e) => e.payload.i), [1, 2, 3, 4, 5]);
  assert.deepEqual(ofType(hostEvents, "answer").map((e) => e.seq), seqs);
  host.close();
  player.close();
});

test("close 1008: a browser Origin not in ALLOWED_ORIGINS; no reconnect", async () => {
  const evil = testWebSocket(WS, kind, { origin: "https://evil.example" });
  const c = client({ WebSocket: evil.WebSocket });
  const closes = [];
  const errors = [];
  c.on("close", (x) => closes.push(x));
  c.on("error", (e) => errors.push(e));
  await assert.rejects(c.connect(), (e) => e.code === "policy_violation" && e.closeCode === 1008);
  assert.equal(c.state, "closed");
  assert.deepEqual(closes, [{ code: 1008, reason: "origin not allowed", willReconnect: false }]);
  assert.equal(errors.length, 1);
  await sleep(300);
  assert.equal(evil.instances.length, 1, "never retried");

  const good = testWebSocket(WS, kind, { origin: "http://roomcast.test" });
  const ok = client({ WebSocket: good.WebSocket });
  assert.equal((await ok.connect()).type, "welcome");
  ok.close();
});

test("close 4008: a device over MAX_CONNECTIONS_PER_DEVICE backs off, and gets in once a socket is freed", async () => {
  const deviceId = uid("crowd");
  const first = client({ deviceId });
  await first.connect();
  // REQUIRE_DEVICE_TOKEN: other sockets of a known device id must show its token
  const deviceToken = first.deviceToken;
  assert.match(deviceToken, /.+/);
  const three = [first, client({ deviceId, deviceToken }), client({ deviceId, deviceToken })];
  await Promise.all(three.map((c) => c.connect()));
  const fourth = client({ deviceId, deviceToken, backoff: { initialMs: 50, maxMs: 2000 } });
  const closes = [];
  const reconnecting = [];
  fourth.on("close", (x) => closes.push(x));
  fourth.on("reconnecting", (r) => reconnecting.push(r));
  const connected = fourth.connect();
  await until(() => reconnecting.length >= 1, 5000, "first 4008");
  assert.deepEqual(closes[0], { code: 4008, reason: "too many connections for this device", willReconnect: true });
  assert.ok(reconnecting[0].delayMs >= 200, `busy delay ${reconnecting[0].delayMs} >= 4 * initialMs`);
  three[0].close();
  const welcome = await connected;
  assert.equal(welcome.device_id, deviceId);
  for (const c of [...three, fourth]) c.close();
});

test("REQUIRE_DEVICE_TOKEN: a known device id without its token is refused (unauthorized, no retry)", async () => {
  const owner = client();
  await owner.connect();
  const thief = client({ deviceId: owner.deviceId });
  thief.on("error", () => {});
  await assert.rejects(thief.connect(), (e) => e.code === "unauthorized");
  assert.equal(thief.state, "closed");
  owner.close();
});

test("close 1013: a full replica makes the client back off; it gets in when sockets go", async () => {
  const b = cluster.urls[1];
  // fill replica b with bare sockets until it refuses one with 1013
  const fillers = [];
  for (let i = 0; i < 200; i++) {
    const ws = new WS(b);
    const code = await new Promise((resolve) => {
      ws.onopen = () => setTimeout(() => resolve("open"), 20);
      ws.onclose = (e) => resolve(e.code);
      ws.onerror = () => {};
    });
    if (code === 1013) break;
    assert.equal(code, "open");
    fillers.push(ws);
  }
  assert.ok(fillers.length > 0 && fillers.length < 200);
  const c = client({ urls: [b], backoff: { initialMs: 50, maxMs: 1000 } });
  const closes = [];
  const reconnecting = [];
  c.on("close", (x) => closes.push(x));
  c.on("reconnecting", (r) => reconnecting.push(r));
  const connected = c.connect();
  await until(() => reconnecting.length >= 1, 5000, "1013");
  assert.equal(closes[0].code, 1013);
  assert.ok(reconnecting[0].delayMs >= 200, `busy delay ${reconnecting[0].delayMs}`);
  for (const ws of fillers) ws.close();
  assert.equal((await connected).type, "welcome");
  c.close();
});

test("resume after a replica is killed: the client moves to the other replica with every event once", async () => {
  const [a, b] = cluster.urls;
  const host = client({ urls: [b] });
  const player = client({ urls: [a, b] });
  const [, welcome] = await Promise.all([host.connect(), player.connect()]);
  const victim = welcome.node;
  assert.equal(victim, cluster.nodes[0], "the player is on replica A");
  const roomId = uid("kill");
  const hostRoom = await host.createRoom({ gameType: "quiz", roomId });
  const hostEvents = record(hostRoom);
  const playerRoom = await player.join(roomId);
  const playerEvents = record(playerRoom);
  const closes = [];
  player.on("close", (c) => closes.push(c));
  const ticks = ticker(hostRoom, 10);
  await until(() => ofType(playerEvents, "tick").length >= 5, 5000, "first ticks");

  await cluster.kill(victim); // SIGKILL replica A
  await until(() => closes.length >= 1, 10000, "the socket to A ends");
  const outage = [1, 2, 3].map((i) => playerRoom.send("answer", { i })); // queued or in flight
  await until(() => player.state === "open", 10000, "reconnected");
  assert.notEqual(player.welcome.node, victim);
  assert.equal(player.welcome.device_id, player.deviceId);
  const seqs = await Promise.all(outage);
  await sleep(100);
  const sent = await ticks.stop();
  await until(() => playerRoom.seq >= sent.at(-1), 5000, "player caught up");

  assert.deepEqual(ofType(playerEvents, "tick").map((e) => e.payload.n), [...Array(sent.length).keys()], "every tick once, in order");
  await until(() => ofType(hostEvents, "answer").length >= 3, 3000);
  await sleep(100);
  assert.deepEqual(ofType(hostEvents, "answer").map((e) => e.payload.i), [1, 2, 3], "the outage sends, once each");
  assert.deepEqual(ofType(hostEvents, "answer").map((e) => e.seq), seqs);
  host.close();
  player.close();
});
