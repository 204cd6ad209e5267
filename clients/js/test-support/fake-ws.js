// A scripted stand-in for the gateway: a WebSocket class to inject into RoomcastClient
// (options.WebSocket) and the server side of each socket, driven by the test. No network.

/** Resolve when `fn()` is truthy; fail after `timeoutMs`. */
export async function until(fn, timeoutMs = 2000, what = "condition") {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const v = fn();
    if (v) return v;
    if (Date.now() > deadline) throw new Error(`${what} not reached within ${timeoutMs} ms`);
    await sleep(2);
  }
}

export const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/** A plain in-memory Storage. */
export class MemoryStorage {
  constructor(init = {}) {
    this.map = new Map(Object.entries(init));
  }
  getItem(k) {
    return this.map.has(k) ? this.map.get(k) : null;
  }
  setItem(k, v) {
    this.map.set(k, String(v));
  }
}

let socketCounter = 0;

export class FakeSocket {
  constructor(server, url, protocols) {
    this.server = server;
    this.url = url;
    this.protocols = protocols;
    this.readyState = 0;
    this.socketId = `sock-${++socketCounter}`;
    /** frames the client sent, parsed */
    this.sent = [];
    this.closedByClient = null;
    this._waiters = [];
    this.onopen = this.onmessage = this.onclose = this.onerror = null;
  }

  // ---- the WebSocket API the client uses
  send(data) {
    if (this.readyState !== 1) throw new Error("InvalidStateError: socket not open");
    const msg = JSON.parse(data);
    this.sent.push(msg);
    for (const w of [...this._waiters]) {
      if (w.pred(msg)) {
        this._waiters.splice(this._waiters.indexOf(w), 1);
        w.resolve(msg);
      }
    }
    this.server._onFrame(this, msg);
  }

  close(code, reason) {
    if (this.readyState === 3) return;
    this.closedByClient = { code, reason };
    this.readyState = 3;
    setTimeout(() => this.onclose?.({ code: code ?? 1005, reason: reason ?? "", wasClean: true }), 0);
  }

  // ---- the server side, for tests
  open() {
    this.readyState = 1;
    this.onopen?.({});
  }

  deliver(msg) {
    if (this.readyState !== 1) throw new Error("socket not open");
    this.onmessage?.({ data: typeof msg === "string" ? msg : JSON.stringify(msg) });
  }

  /** The server (or the network) ends the socket. */
  drop(code = 1006, reason = "") {
    if (this.readyState === 3) return;
    this.readyState = 3;
    this.onerror?.({});
    this.onclose?.({ code, reason, wasClean: code !== 1006 });
  }

  /** An error event and no close event (Node 20's built-in WebSocket on a refused connection). */
  errorOnly() {
    this.onerror?.({});
  }

  /** The next frame the client sends (or already sent, not yet taken) matching `pred`. */
  next(pred = () => true, timeoutMs = 2000) {
    const idx = this.sent.findIndex((m) => !m.__taken && pred(m));
    if (idx >= 0) {
      this.sent[idx].__taken = true;
      return Promise.resolve(this.sent[idx]);
    }
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`no frame matching ${pred} within ${timeoutMs} ms; sent: ${JSON.stringify(this.sent)}`)), timeoutMs);
      this._waiters.push({
        pred: (m) => !m.__taken && pred(m),
        resolve: (m) => {
          clearTimeout(timer);
          m.__taken = true;
          resolve(m);
        },
      });
    });
  }

  nextType(type, timeoutMs) {
    return this.next((m) => m.type === type, timeoutMs);
  }

  /** Frames of `type` sent so far. */
  frames(type) {
    return this.sent.filter((m) => m.type === type);
  }

  /** Reply to a request frame. */
  reply(req, msg) {
    this.deliver({ ...msg, re: req.id });
  }
}

/**
 * The fake gateway. `server.WebSocket` is the class to inject. By default a new socket is
 * opened at once, its hello answered with a welcome and every ping with a pong.
 */
export class FakeGateway {
  constructor(opts = {}) {
    this.sockets = [];
    this.autoOpen = opts.autoOpen ?? true;
    this.autoWelcome = opts.autoWelcome ?? true;
    this.autoPong = opts.autoPong ?? true;
    this.welcomeExtra = opts.welcome ?? {};
    this.reconnectCount = 0;
    this._socketWaiters = [];
    const server = this;
    this.WebSocket = class FakeWebSocket extends FakeSocket {
      constructor(url, protocols) {
        super(server, url, protocols);
        server.sockets.push(this);
        for (const w of server._socketWaiters.splice(0)) w(this);
        if (server.autoOpen) setTimeout(() => this.readyState === 0 && this.open(), 0);
      }
    };
  }

  get last() {
    return this.sockets[this.sockets.length - 1];
  }

  /** The n-th socket (0-based), once the client made it. */
  async socket(n, timeoutMs = 2000) {
    await until(() => this.sockets.length > n, timeoutMs, `socket #${n}`);
    return this.sockets[n];
  }

  welcomeFor(sock, hello, extra = {}) {
    return {
      type: "welcome",
      socket_id: sock.socketId,
      device_id: hello.device_id,
      user_id: null,
      reconnect_count: this.reconnectCount++,
      heartbeat_interval_ms: 25000,
      heartbeat_timeout_ms: 60000,
      node: "fake-node",
      rooms: [],
      ...this.welcomeExtra,
      ...extra,
    };
  }

  _onFrame(sock, msg) {
    if (msg.type === "hello" && this.autoWelcome) {
      sock.hello = msg;
      const welcome = this.welcomeFor(sock, msg, typeof this.nextWelcome === "function" ? this.nextWelcome(sock) : {});
      setTimeout(() => sock.readyState === 1 && sock.reply(msg, welcome), 0);
    } else if (msg.type === "ping" && this.autoPong) {
      setTimeout(() => sock.readyState === 1 && sock.deliver({ type: "pong", ...(msg.id !== undefined ? { re: msg.id } : {}), t: Date.now() }), 0);
    }
  }
}

/** An event frame as the gateway sends it. */
export function ev(roomId, seq, eventType = "move", payload = { n: seq }, from = null, extra = {}) {
  return {
    type: "event",
    room_id: roomId,
    seq,
    event_type: eventType,
    action: null,
    payload,
    from,
    ts: 1795470000000 + seq,
    ...extra,
  };
}

/** A room object. */
export function roomObj(roomId, seq, extra = {}) {
  return {
    room_id: roomId,
    game_type: "quiz",
    status: "waiting",
    max_players: 16,
    current_players: 1,
    game_data: {},
    created_at: 1795470000000,
    created_by: "device-host-0001",
    seq,
    ...extra,
  };
}
