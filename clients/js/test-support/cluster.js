// The live gateway cluster for the integration tests, and a WebSocket implementation for Node.
//
// With ROOMCAST_URLS set (tests/system/test_js_client.py started the cluster), `kill(node)`
// prints `ROOMCAST_KILL <node>`: the pytest side kills that gateway when it reads the line.
// Without it (plain `node --test clients/js/test/`), the cluster is started here through
// `python -m tests.js_cluster` and killed through its stdin.
import { spawn } from "node:child_process";
import { existsSync } from "node:fs";
import { dirname, join, resolve } from "node:path";
import { createInterface } from "node:readline";
import { fileURLToPath } from "node:url";

const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), "../../..");

function python() {
  if (process.env.ROOMCAST_PYTHON) return process.env.ROOMCAST_PYTHON;
  const venv = resolve(ROOT, process.env.ROOMCAST_VENV ?? ".venv");
  const bin = join(venv, "bin", "python");
  return existsSync(bin) ? bin : "python3";
}

/** @returns {Promise<{urls: string[], nodes: string[], kill: (node: string) => Promise<void>, close: () => Promise<void>}>} */
export async function getCluster() {
  if (process.env.ROOMCAST_URLS) {
    const urls = process.env.ROOMCAST_URLS.split(",");
    const nodes = (process.env.ROOMCAST_NODES ?? urls.map((_, i) => `gw-${i}`).join(",")).split(",");
    return {
      urls,
      nodes,
      kill: async (node) => {
        console.log(`ROOMCAST_KILL ${node}`);
      },
      close: async () => {},
    };
  }
  const child = spawn(python(), ["-m", "tests.js_cluster"], { cwd: ROOT, stdio: ["pipe", "pipe", "inherit"] });
  const lines = createInterface({ input: child.stdout });
  const waiting = [];
  const seen = [];
  lines.on("line", (line) => {
    const w = waiting.findIndex((x) => x.match(line));
    if (w >= 0) waiting.splice(w, 1)[0].resolve(line);
    else seen.push(line);
  });
  const exited = new Promise((r) => child.on("exit", (code) => r(code)));
  const nextLine = (match, timeoutMs) =>
    new Promise((resolve, reject) => {
      const i = seen.findIndex(match);
      if (i >= 0) return resolve(seen.splice(i, 1)[0]);
      const timer = setTimeout(() => reject(new Error(`tests.js_cluster: no line within ${timeoutMs} ms`)), timeoutMs);
      waiting.push({ match, resolve: (l) => (clearTimeout(timer), resolve(l)) });
      exited.then((code) => reject(new Error(`tests.js_cluster exited with ${code}`)));
    });
  const first = await nextLine((l) => l.startsWith("{"), 60000);
  const { urls, nodes } = JSON.parse(first);
  return {
    urls,
    nodes,
    kill: async (node) => {
      child.stdin.write(`kill ${node}\n`);
      await nextLine((l) => l === `killed ${node}`, 15000);
    },
    close: async () => {
      child.stdin.end();
      const timer = setTimeout(() => child.kill("SIGTERM"), 20000);
      await exited;
      clearTimeout(timer);
    },
  };
}

/**
 * The WebSocket class for Node: the built-in one (Node 22+, or Node 20.10+ with
 * --experimental-websocket), else the `ws` package (a devDependency, tests only).
 * @returns {Promise<{WebSocket: any, kind: "builtin" | "ws"}>}
 */
export async function nodeWebSocket() {
  if (typeof globalThis.WebSocket === "function") return { WebSocket: globalThis.WebSocket, kind: "builtin" };
  try {
    const { default: WebSocket } = await import("ws");
    return { WebSocket, kind: "ws" };
  } catch (err) {
    throw new Error(
      "no WebSocket in this Node: run with --experimental-websocket (Node 20.10+) or `npm ci` in clients/js for the ws package",
      { cause: err },
    );
  }
}

/**
 * A WebSocket class for the tests: sends an Origin header if asked (like a browser), keeps its
 * instances, can go silent on the uplink (`muted`), stop hearing the gateway (`deafen()`: its
 * sockets so far), and can refuse to connect (`blocked`).
 */
export function testWebSocket(base, kind, { origin } = {}) {
  const ctl = { instances: [], muted: false, blocked: false };
  class TestWebSocket extends base {
    constructor(url, protocols) {
      const target = ctl.blocked ? "ws://127.0.0.1:9/ws" : url; // nothing listens on port 9
      if (!origin) super(target, protocols);
      else if (kind === "builtin") super(target, { protocols, headers: { Origin: origin } });
      else super(target, protocols, { origin });
      ctl.instances.push(this);
    }

    send(data) {
      if (!ctl.muted) super.send(data);
    }

    // A deafened socket drops every message from the gateway from then on (a lost ack…);
    // sockets made later hear again.
    set onmessage(fn) {
      super.onmessage = typeof fn === "function" ? (ev) => {
        if (!this.deaf) fn(ev);
      } : fn;
    }

    get onmessage() {
      return super.onmessage;
    }
  }
  ctl.deafen = () => {
    for (const ws of ctl.instances) ws.deaf = true;
  };
  ctl.WebSocket = TestWebSocket;
  return ctl;
}
