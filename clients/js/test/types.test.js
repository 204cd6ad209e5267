// roomcast.d.ts and roomcast.js agree: every declared export, class member and option exists at
// run time, and every public run-time member is declared. (tsc checks the .d.ts itself:
// `npm run typecheck`.)
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import test from "node:test";

import * as mod from "../src/roomcast.js";

const dts = readFileSync(new URL("../src/roomcast.d.ts", import.meta.url), "utf8");

/** The body of `declare class Name { ... }` in the .d.ts. */
function classBody(name) {
  const start = dts.indexOf(`export declare class ${name} `);
  assert.ok(start >= 0, `class ${name} declared`);
  const open = dts.indexOf("{", start);
  let depth = 0;
  for (let i = open; i < dts.length; i++) {
    if (dts[i] === "{") depth++;
    else if (dts[i] === "}" && --depth === 0) return dts.slice(open + 1, i);
  }
  throw new Error("unbalanced");
}

/** Member names declared at the top level of a class body. */
function declaredMembers(body) {
  const names = new Set();
  let depth = 0;
  for (const line of body.split("\n")) {
    const trimmed = line.trim();
    if (depth === 0 && !trimmed.startsWith("//") && !trimmed.startsWith("*") && !trimmed.startsWith("/**")) {
      const m = trimmed.match(/^(?:private\s+)?(?:readonly\s+)?(constructor|[A-Za-z_]\w*)\s*[<(:?]/);
      if (m && m[1] !== "constructor" && !trimmed.startsWith("private")) names.add(m[1]);
    }
    for (const ch of trimmed) {
      if (ch === "{" || ch === "(") depth++;
      else if (ch === "}" || ch === ")") depth--;
    }
  }
  return names;
}

/** Public run-time members of an instance: own fields and prototype methods/getters, no `_` names. */
function runtimeMembers(instance) {
  const names = new Set(Object.keys(instance).filter((k) => !k.startsWith("_")));
  for (let proto = Object.getPrototypeOf(instance); proto && proto !== Object.prototype; proto = Object.getPrototypeOf(proto)) {
    for (const k of Object.getOwnPropertyNames(proto)) if (k !== "constructor" && !k.startsWith("_")) names.add(k);
  }
  return names;
}

class NoSocket {}

test("every export of roomcast.js is declared in roomcast.d.ts and the other way round", () => {
  const declared = new Set([...dts.matchAll(/export declare (?:const|class|function) (\w+)/g)].map((m) => m[1]));
  declared.add("default");
  assert.deepEqual(new Set(Object.keys(mod)), declared);
  assert.equal(mod.default, mod.RoomcastClient);
});

test("RoomcastClient members match the declaration", () => {
  const client = new mod.RoomcastClient({ url: "ws://x/ws", deviceId: "device-types-01", storage: null, WebSocket: NoSocket });
  assert.deepEqual(runtimeMembers(client), declaredMembers(classBody("RoomcastClient")));
});

test("Room members match the declaration", () => {
  const client = new mod.RoomcastClient({ url: "ws://x/ws", deviceId: "device-types-01", storage: null, WebSocket: NoSocket });
  const room = new mod.Room(client, { room_id: "r1", seq: 0 }, { role: "player", seq: 0 });
  assert.deepEqual(runtimeMembers(room), declaredMembers(classBody("Room")));
});

test("RoomcastError members match the declaration", () => {
  const err = new mod.RoomcastError("x", "y");
  const declared = declaredMembers(classBody("RoomcastError"));
  for (const name of declared) assert.ok(name in err, name);
  // `name` and `message` are declared by Error itself
  assert.deepEqual(new Set(Object.keys(err).filter((k) => !k.startsWith("_") && k !== "name")), declared);
});

test("every option the client reads is declared in RoomcastClientOptions", () => {
  const src = readFileSync(new URL("../src/roomcast.js", import.meta.url), "utf8");
  const used = new Set([...src.matchAll(/options\.(\w+)/g)].map((m) => m[1]));
  const start = dts.indexOf("export interface RoomcastClientOptions");
  const body = dts.slice(start, dts.indexOf("\n}\n", start));
  const declared = new Set([...body.matchAll(/^\s{2}(\w+)\?:/gm)].map((m) => m[1]));
  assert.deepEqual(used, declared);
});

test("the event names the client emits are the declared ones", () => {
  const src = readFileSync(new URL("../src/roomcast.js", import.meta.url), "utf8");
  const emitted = new Set([...src.matchAll(/_emit\("(\w+)"/g)].map((m) => m[1]));
  const names = (iface) => {
    const start = dts.indexOf(`export interface ${iface}`);
    const body = dts.slice(start, dts.indexOf("\n}\n", start));
    return [...body.matchAll(/^\s{2}(\w+): \(/gm)].map((m) => m[1]);
  };
  assert.deepEqual(emitted, new Set([...names("ClientEvents"), ...names("RoomEvents")]));
});
