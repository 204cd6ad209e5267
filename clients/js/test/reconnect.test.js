// Reconnecting: close-code policy, backoff with jitter, URL failover, heartbeat.
import assert from "node:assert/strict";
import test from "node:test";

import { backoffDelay, CLIENT_GAVE_UP, closePolicy, RoomcastClient } from "../src/roomcast.js";
import { FakeGateway, sleep, until } from "../test-support/fake-ws.js";
import { connected, DEVICE } from "../test-support/unit-helpers.js";

test("backoffDelay: full jitter within [0, min(maxMs, initialMs*2^attempt))", () => {
  const b = { initialMs: 100, maxMs: 1000 };
  for (let attempt = 0; attempt < 8; attempt++) {
    const ceiling = Math.min(1000, 100 * 2 ** attempt);
    assert.equal(backoffDelay("backoff", attempt, b, () => 0), 0);
    const hi = backoffDelay("backoff", attempt, b, () => 0.999999999);
    assert.ok(hi < ceiling && hi >= ceiling - 1, `attempt ${attempt}: ${hi} vs ${ceiling}`);
    for (let i = 0; i < 50; i++) {
      const d = backoffDelay("backoff", attempt, b);
      assert.ok(d >= 0 && d < ceiling);
    }
  }
  assert.ok(backoffDelay("backoff", 1000, b, () => 0.5) <= 1000, "huge attempts stay capped");
});

test("backoffDelay: busy starts higher (>= 4*initialMs), now is ~0 on attempt 0 only", () => {
  const b = { initialMs: 100, maxMs: 5000 };
  assert.equal(backoffDelay("busy", 0, b, () => 0), 400);
  assert.ok(backoffDelay("busy", 0, b, () => 0.9999) < 800);
  assert.equal(backoffDelay("busy", 1, b, () => 0), 800);
  assert.ok(backoffDelay("busy", 10, b, () => 0.9999) < 5000);
  assert.equal(backoffDelay("busy", 10, b, () => 0), 2500);
  assert.ok(backoffDelay("now", 0, b, () => 0.9999) < 100);
  assert.equal(backoffDelay("now", 0, b, () => 0), 0);
  assert.equal(backoffDelay("now", 2, b, () => 0.5), backoffDelay("backoff", 2, b, () => 0.5));
});

test("closePolicy maps every close code of protocol section 9", () => {
  for (const code of [1001, 1012, 4009]) assert.equal(closePolicy(code), "now", String(code));
  for (const code of [1013, 4008]) assert.equal(closePolicy(code), "busy", String(code));
  assert.equal(closePolicy(1008), "never");
  for (const code of [1000, 1006, 1009, 1011, 4001, 4002, CLIENT_GAVE_UP, 3000]) assert.equal(closePolicy(code), "backoff", String(code));
});

/** Drop the open socket with `code`; return the reconnecting info and the next socket. */
async function dropWith(code, clientOpts = {}) {
  const ctx = await connected({ backoff: { initialMs: 20, maxMs: 400 }, ...clientOpts });
  const closes = [];
  const reconnecting = [];
  const errors = [];
  ctx.client.on("close", (c) => closes.push(c));
  ctx.client.on("reconnecting", (r) => reconnecting.push(r));
  ctx.client.on("error", (e) => errors.push(e));
  ctx.sock.drop(code, "bye");
  return { ...ctx, closes, reconnecting, errors };
}

for (const code of [1001, 1012, 4009]) {
  test(`close ${code}: reconnect at once (attempt 0, delay < 100 ms) and resume`, async () => {
    const { gw, client, closes, reconnecting } = await dropWith(code, { backoff: { initialMs: 1000, maxMs: 5000 } });
    assert.deepEqual(closes, [{ code, reason: "bye", willReconnect: true }]);
    assert.equal(reconnecting[0].attempt, 0);
    assert.ok(reconnecting[0].delayMs < 100, `delay ${reconnecting[0].delayMs}`);
    assert.equal(client.state, "reconnecting");
    await gw.socket(1, 2000);
    await until(() => client.state === "open");
    client.close();
  });
}

for (const code of [1013, 4008]) {
  test(`close ${code}: back off from a longer first delay`, async () => {
    const { gw, client, reconnecting } = await dropWith(code, { backoff: { initialMs: 20, maxMs: 400 } });
    const { attempt, delayMs } = reconnecting[0];
    assert.equal(attempt, 0);
    assert.ok(delayMs >= 80 && delayMs < 160, `busy delay ${delayMs}`);
    await sleep(40);
    assert.equal(gw.sockets.length, 1, "not yet");
    await gw.socket(1, 2000);
    await until(() => client.state === "open");
    client.close();
  });
}

for (const code of [4002, 4001, 1006, 1011, 1000]) {
  test(`close ${code}: normal backoff (full jitter below initialMs)`, async () => {
    const { gw, client, reconnecting, closes } = await dropWith(code, { backoff: { initialMs: 30, maxMs: 400 } });
    assert.equal(closes[0].willReconnect, true);
    assert.equal(reconnecting[0].attempt, 0);
    assert.ok(reconnecting[0].delayMs < 30, `delay ${reconnecting[0].delayMs}`);
    await gw.socket(1, 2000);
    await until(() => client.state === "open");
    client.close();
  });
}

test("close 1008: no reconnect; state closed and an error event", async () => {
  const { gw, client, closes, reconnecting, errors } = await dropWith(1008);
  assert.deepEqual(closes, [{ code: 1008, reason: "bye", willReconnect: false }]);
  assert.equal(reconnecting.length, 0);
  assert.equal(client.state, "closed");
  assert.equal(errors.length, 1);
  assert.equal(errors[0].code, "policy_violation");
  assert.equal(errors[0].closeCode, 1008);
  await sleep(50);
  assert.equal(gw.sockets.length, 1);
});

test("close 1008 before the first welcome rejects connect()", async () => {
  const gw = new FakeGateway({ autoWelcome: false });
  const client = new RoomcastClient({ url: "ws://fake/ws", deviceId: DEVICE, storage: null, WebSocket: gw.WebSocket });
  client.on("error", () => {});
  const p = client.connect();
  (await gw.socket(0)).drop(1008, "origin not allowed");
  await assert.rejects(p, (e) => e.code === "policy_violation");
});

test("consecutive failures grow the attempt and the delay ceiling; a welcome resets them", async () => {
  const gw = new FakeGateway({ autoOpen: false });
  const draws = [];
  const client = new RoomcastClient({
    url: "ws://fake/ws",
    deviceId: DEVICE,
    storage: null,
    WebSocket: gw.WebSocket,
    backoff: { initialMs: 4, maxMs: 32 },
    random: () => {
      draws.push(1);
      return 0.999;
    },
  });
  const reconnecting = [];
  client.on("reconnecting", (r) => reconnecting.push(r));
  const p = client.connect();
  for (let i = 0; i < 6; i++) (await gw.socket(i, 2000)).drop(1006); // connection refused, 6 times
  const sock = await gw.socket(6, 2000);
  sock.open();
  await p;
  assert.deepEqual(reconnecting.map((r) => r.attempt), [0, 1, 2, 3, 4, 5]);
  assert.deepEqual(reconnecting.map((r) => r.delayMs), [3, 7, 15, 31, 31, 31]);
  assert.equal(client.state, "open");
  sock.drop(1006);
  assert.equal(reconnecting.at(-1).attempt, 0, "reset after the welcome");
  client.close();
});

test("urls: every new socket goes to the next URL", async () => {
  const gw = new FakeGateway();
  const client = new RoomcastClient({
    urls: ["ws://a/ws", "ws://b/ws", "ws://c/ws"],
    deviceId: DEVICE,
    storage: null,
    WebSocket: gw.WebSocket,
    backoff: { initialMs: 1, maxMs: 2 },
  });
  await client.connect();
  for (let i = 0; i < 3; i++) {
    gw.last.drop(1006);
    await gw.socket(i + 1);
    await until(() => client.state === "open");
  }
  assert.deepEqual(gw.sockets.map((s) => s.url), ["ws://a/ws", "ws://b/ws", "ws://c/ws", "ws://a/ws"]);
  client.close();
});

test("heartbeat: a ping every heartbeat_interval_ms after the welcome", async () => {
  const { client, sock } = await connected({}, { welcome: { heartbeat_interval_ms: 20, heartbeat_timeout_ms: 1000 } });
  const t0 = Date.now();
  await until(() => sock.frames("ping").length >= 3, 2000, "3 pings");
  const pings = sock.frames("ping").length;
  const elapsed = Date.now() - t0;
  assert.ok(elapsed >= 40, `3 pings took ${elapsed} ms: not one every 20 ms`);
  assert.ok(pings <= elapsed / 20 + 2, `${pings} pings in ${elapsed} ms`);
  client.close();
  await sleep(50);
  assert.equal(sock.frames("ping").length, pings, "no ping after close()");
});

test("heartbeat: no frame from the gateway for heartbeat_timeout_ms -> give up on the socket and reconnect", async () => {
  const { gw, client, sock } = await connected({}, { autoPong: false, welcome: { heartbeat_interval_ms: 10, heartbeat_timeout_ms: 50 } });
  const closes = [];
  client.on("close", (c) => closes.push(c));
  await until(() => closes.length === 1, 2000);
  assert.equal(closes[0].code, CLIENT_GAVE_UP);
  assert.equal(closes[0].willReconnect, true);
  assert.equal(sock.closedByClient.code, CLIENT_GAVE_UP);
  await gw.socket(1, 2000);
  client.close();
});

test("no welcome within requestTimeoutMs -> the socket is given up and another tried", async () => {
  const gw = new FakeGateway({ autoWelcome: false });
  const client = new RoomcastClient({
    url: "ws://fake/ws",
    deviceId: DEVICE,
    storage: null,
    WebSocket: gw.WebSocket,
    requestTimeoutMs: 40,
    backoff: { initialMs: 1, maxMs: 2 },
  });
  const p = client.connect();
  await gw.socket(1, 2000);
  assert.equal(gw.sockets[0].closedByClient.code, CLIENT_GAVE_UP);
  const sock = gw.sockets[1];
  const hello = await sock.nextType("hello");
  sock.reply(hello, gw.welcomeFor(sock, hello));
  await p;
  client.close();
});

test("an error event without a close event still ends the socket (treated as 1006)", async () => {
  const gw = new FakeGateway({ autoOpen: false });
  const client = new RoomcastClient({ url: "ws://fake/ws", deviceId: DEVICE, storage: null, WebSocket: gw.WebSocket, backoff: { initialMs: 1, maxMs: 2 } });
  const closes = [];
  client.on("close", (c) => closes.push(c));
  const p = client.connect();
  (await gw.socket(0)).errorOnly();
  const sock = await gw.socket(1, 2000);
  assert.deepEqual(closes, [{ code: 1006, reason: "connection failed", willReconnect: true }]);
  assert.equal(gw.sockets[0].closedByClient.code, undefined, "the stuck socket is closed too");
  sock.open();
  await p;
  client.close();
});
