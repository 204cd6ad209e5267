// roomcast browser client: protocol v1 (docs/protocol.md) over a WebSocket.
// An ES module with no dependencies. Types: roomcast.d.ts next to this file.
//
// What it does for the app:
//  - hello/welcome with a device id kept in localStorage, ping every heartbeat_interval_ms,
//    and a dead-link check (no frame from the gateway for heartbeat_timeout_ms);
//  - requests matched to replies by `id`/`re`, with timeouts;
//  - reconnects on its own (close-code policy of protocol section 9; exponential backoff with
//    full jitter; next URL of `urls` on every new socket), rejoins every room with
//    `since`/`epoch`, and delivers every event of a room once, in seq order;
//  - sends made while offline wait in a bounded queue; every send carries an
//    `idempotency_key` (128 random bits), so a send whose reply was lost with the socket is
//    simply sent again with the same key: the gateway applies it once and acks the first seq.
//    (A send found in the replay, same socket id and content, is settled without resending;
//    update/close, which have no key in the protocol, rely on that alone.)

export const VERSION = "0.1.0";
export const SUBPROTOCOL = "roomcast.v1";
export const DEVICE_ID_KEY = "roomcast.device_id";
export const DEVICE_TOKEN_KEY = "roomcast.device_token";

const DEVICE_ID_RE = /^[A-Za-z0-9._:-]{8,128}$/;
const ROOM_ID_RE = /^[A-Za-z0-9_-]{1,64}$/;
const STATUSES = ["active", "waiting", "in_progress", "completed"];
/** Event types only the server makes. */
export const RESERVED_EVENT_TYPES = Object.freeze([
  "participant_joined",
  "participant_reconnected",
  "participant_disconnected",
  "participant_left",
  "state_change",
  "room_closed",
  "host_changed",
]);
const RESERVED = new Set(RESERVED_EVENT_TYPES);
/** Error replies after which a room cannot be resumed: it is over for this device. */
const ROOM_GONE = new Set(["not_found", "room_closed", "forbidden", "room_full"]);
/** Close code the client uses when it gives up on a socket itself (dead link, no welcome). */
export const CLIENT_GAVE_UP = 4000;
const NOW_JITTER_MS = 100;
const ERROR_CLOSE_GRACE_MS = 200;
const MAX_ORPHANS = 1000;

/**
 * An Error with a machine-readable `code`: the gateway's error code (`not_found`,
 * `rate_limited`…) or one of the client's own (`timeout`, `closed`, `disconnected`,
 * `queue_full`, `too_large`, `bad_request`, `policy_violation`).
 */
export class RoomcastError extends Error {
  /**
   * @param {string} code
   * @param {string} message
   * @param {{retryAfterMs?: number, closeCode?: number, reply?: any}} [extra]
   */
  constructor(code, message, extra = {}) {
    super(message);
    this.name = "RoomcastError";
    /** @type {string} */
    this.code = code;
    /** @type {number | undefined} */
    this.retryAfterMs = extra.retryAfterMs;
    /** @type {number | undefined} */
    this.closeCode = extra.closeCode;
    /** @type {any} */
    this.reply = extra.reply;
  }
}

// ------------------------------------------------------------------ pure helpers

/**
 * What to do after a socket closed with `code` (protocol section 9):
 * "now" (reconnect at once), "busy" (back off from a longer first delay),
 * "never" (do not reconnect), or "backoff".
 * @param {number} code
 * @returns {"now" | "busy" | "never" | "backoff"}
 */
export function closePolicy(code) {
  switch (code) {
    case 1001: // the gateway is shutting down: any other replica takes us
    case 1012: // service restart / room state lost
    case 4009: // we read too slowly: resume at once
      return "now";
    case 1013: // replica full
    case 4008: // too many sockets for this device
      return "busy";
    case 1008: // origin refused: nothing changes by retrying
      return "never";
    default: // 1000, 1006, 1011, 4001, 4002, 1009, 4000 and anything else
      return "backoff";
  }
}

/**
 * The delay before reconnect attempt `attempt` (0 = first retry after a working connection).
 * backoff: full jitter, uniform in [0, min(maxMs, initialMs * 2^attempt)).
 * busy:    ceiling = min(maxMs, initialMs * 8 * 2^attempt), uniform in [ceiling/2, ceiling)
 *          (so the first delay is at least 4 * initialMs).
 * now:     attempt 0: uniform in [0, min(100, initialMs)); later attempts as backoff.
 * @param {"now" | "busy" | "backoff"} policy
 * @param {number} attempt
 * @param {{initialMs: number, maxMs: number}} backoff
 * @param {() => number} [random]
 */
export function backoffDelay(policy, attempt, backoff, random = Math.random) {
  const { initialMs, maxMs } = backoff;
  const r = Math.min(Math.max(random(), 0), 0.999999);
  if (policy === "now" && attempt === 0) return Math.floor(r * Math.min(NOW_JITTER_MS, initialMs));
  if (policy === "busy") {
    const ceiling = Math.min(maxMs, initialMs * 8 * 2 ** Math.min(attempt, 30));
    return Math.floor(ceiling / 2 + (r * ceiling) / 2);
  }
  const ceiling = Math.min(maxMs, initialMs * 2 ** Math.min(attempt, 30));
  return Math.floor(r * ceiling);
}

/** @param {unknown} v @returns {v is Record<string, any>} */
function isObject(v) {
  return v !== null && typeof v === "object" && !Array.isArray(v);
}

/** @param {Record<string, any>} obj @param {string} key @param {any} value */
function setOwn(obj, key, value) {
  if (key === "__proto__") Object.defineProperty(obj, key, { value, enumerable: true, writable: true, configurable: true });
  else obj[key] = value;
}

/** A deep copy of a JSON value. @param {any} v @returns {any} */
function cloneJson(v) {
  if (Array.isArray(v)) return v.map(cloneJson);
  if (isObject(v)) {
    const out = {};
    for (const [k, x] of Object.entries(v)) setOwn(out, k, cloneJson(x));
    return out;
  }
  return v;
}

/**
 * JSON Merge Patch (RFC 7386): returns a new value; `target` is not modified.
 * A member set to null deletes that key, objects merge, anything else replaces.
 * @param {any} target
 * @param {any} patch
 * @returns {any}
 */
export function mergePatch(target, patch) {
  if (!isObject(patch)) return cloneJson(patch);
  const out = isObject(target) ? { ...target } : {};
  for (const [key, value] of Object.entries(patch)) {
    if (value === null) delete out[key];
    else setOwn(out, key, mergePatch(out[key], value));
  }
  return out;
}

/** JSON with object keys sorted, to compare payloads whatever their key order. @param {any} v @returns {string} */
function canonical(v) {
  if (Array.isArray(v)) return "[" + v.map(canonical).join(",") + "]";
  if (isObject(v)) {
    return "{" + Object.keys(v).sort().map((k) => JSON.stringify(k) + ":" + canonical(v[k])).join(",") + "}";
  }
  return JSON.stringify(v === undefined ? null : v);
}

/** The content key of an event, to match it with a request we sent. @param {any} ev @returns {string | null} */
function eventKey(ev) {
  if (ev.event_type === "state_change") return "s|" + canonical(ev.payload);
  if (ev.event_type === "room_closed") return "c|";
  if (RESERVED.has(ev.event_type)) return null;
  return "e|" + JSON.stringify(ev.event_type) + "|" + JSON.stringify(ev.action ?? null) + "|" + canonical(ev.payload);
}

/** @param {number} n @param {() => number} random */
function randomId(n, random) {
  const alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
  const bytes = new Uint8Array(n);
  const c = /** @type {any} */ (globalThis).crypto;
  if (c && typeof c.getRandomValues === "function") c.getRandomValues(bytes);
  else for (let i = 0; i < n; i++) bytes[i] = Math.floor(random() * 256);
  let out = "";
  for (let i = 0; i < n; i++) out += alphabet[bytes[i] % alphabet.length];
  return out;
}

/** The device id kept in `storage` under "roomcast.device_id", made and stored on first use.
 * @param {any} storage @param {() => number} [random] @returns {string} */
export function loadDeviceId(storage, random = Math.random) {
  if (storage) {
    try {
      const stored = storage.getItem(DEVICE_ID_KEY);
      if (typeof stored === "string" && DEVICE_ID_RE.test(stored)) return stored;
    } catch {
      // storage refused (privacy mode, sandboxed frame): fall through to a fresh id
    }
  }
  const id = "rc-" + randomId(22, random);
  if (storage) {
    try {
      storage.setItem(DEVICE_ID_KEY, id);
    } catch {
      // not persisted: this page keeps the id for its lifetime only
    }
  }
  return id;
}

/** @param {any} storage @param {string} key @returns {string | null} */
function readStorage(storage, key) {
  try {
    const v = storage ? storage.getItem(key) : null;
    return typeof v === "string" && v.length > 0 && v.length <= 128 ? v : null;
  } catch {
    return null;
  }
}

function defaultStorage() {
  try {
    return /** @type {any} */ (globalThis).localStorage ?? null;
  } catch {
    return null;
  }
}

/** @param {string} s */
function utf8Length(s) {
  let n = 0;
  for (let i = 0; i < s.length; i++) {
    const c = s.charCodeAt(i);
    if (c < 0x80) n += 1;
    else if (c < 0x800) n += 2;
    else if (c >= 0xd800 && c <= 0xdbff && i + 1 < s.length) {
      n += 4;
      i++;
    } else n += 3;
  }
  return n;
}

function bad(/** @type {string} */ message) {
  return new RoomcastError("bad_request", message);
}

// ------------------------------------------------------------------ events

class Emitter {
  constructor() {
    /** @type {Map<string, Set<Function>>} */
    this._handlers = new Map();
  }

  /** @param {string} name @param {Function} cb */
  on(name, cb) {
    if (typeof cb !== "function") throw new TypeError("listener must be a function");
    let set = this._handlers.get(name);
    if (!set) this._handlers.set(name, (set = new Set()));
    set.add(cb);
    return this;
  }

  /** @param {string} name @param {Function} cb */
  off(name, cb) {
    this._handlers.get(name)?.delete(cb);
    return this;
  }

  /** @param {string} name @param {Function} cb */
  once(name, cb) {
    const wrapper = (/** @type {any[]} */ ...args) => {
      this.off(name, wrapper);
      cb(...args);
    };
    return this.on(name, wrapper);
  }

  /** @param {string} name @param {any[]} args */
  _emit(name, ...args) {
    const set = this._handlers.get(name);
    if (!set || set.size === 0) return false;
    for (const cb of [...set]) {
      try {
        cb(...args);
      } catch (err) {
        this._listenerFailed(name, err);
      }
    }
    return true;
  }

  /** @param {string} name @param {unknown} err */
  _listenerFailed(name, err) {
    console.error(`roomcast: a "${name}" listener threw`, err);
  }
}

// ------------------------------------------------------------------ room

/**
 * One room this client is in. Made by `client.createRoom()`, `client.join()`, or by a
 * reconnect that finds the device still in a room (`client.on("room", …)`).
 */
export class Room extends Emitter {
  /**
   * @param {RoomcastClient} client
   * @param {any} snapshot the room object
   * @param {{role: string, epoch?: string | null, seq: number, participants?: any[], password?: string, held?: boolean}} init
   */
  constructor(client, snapshot, init) {
    super();
    this._client = client;
    /** @type {string} */
    this.id = snapshot.room_id;
    /** @type {string} */
    this.role = init.role;
    /** @type {string | null} */
    this.epoch = init.epoch ?? null;
    /** The seq of the last event delivered to the app. @type {number} */
    this.seq = init.seq;
    /** The latest room object (game_data kept current with state_change patches). @type {any} */
    this.state = { ...snapshot, seq: init.seq };
    /** @type {any[]} */
    this.participants = init.participants ? [...init.participants] : [];
    this._password = init.password;
    this._lastAccepted = init.seq; // highest seq taken for delivery (dedupe, `since`)
    /** @type {Map<number, any>} */
    this._buffer = new Map(); // events ahead of a gap, or that came while (re)joining
    /** @type {any[]} */
    this._deliverQueue = [];
    this._held = !!init.held; // a new room waits one macrotask so the app can add listeners
    this._pumping = false;
    /** @type {any[]} mutating requests sent but not yet answered, in send order */
    this._inflight = [];
    /** @type {Set<number>} seqs acked before their event arrived */
    this._acked = new Set();
    this._joinedGen = -1; // socket generation the room is joined on
    this._ready = false; // joined and resumed: queued room requests may go
    this._joining = false;
    /** @type {number | null} */
    this._resumeTarget = null;
    this._leaving = false;
    /** @type {string | null} */
    this._ended = null;
    /** @type {any} */
    this._gapTimer = null;
    /** @type {any} */
    this._retryTimer = null;
    this._retries = 0;
    /** @type {Set<{push: (ev: any) => void, end: () => void}>} */
    this._iterators = new Set();
  }

  /** True once the room was closed, left, or lost. */
  get ended() {
    return this._ended !== null;
  }

  /**
   * Send an event to the room. Resolves with its seq. While disconnected the request waits
   * in the client's queue (at most `maxQueue`) and goes out after the room is resumed.
   * @param {string} eventType
   * @param {Record<string, any> | null} [payload]
   * @param {string} [action]
   * @returns {Promise<number>}
   */
  send(eventType, payload, action) {
    if (typeof eventType !== "string" || eventType.length < 1 || eventType.length > 100) {
      return Promise.reject(bad("eventType must be a string of 1-100 characters"));
    }
    if (RESERVED.has(eventType)) return Promise.reject(bad(`event type '${eventType}' is reserved for the server`));
    if (payload !== undefined && payload !== null && !isObject(payload)) {
      return Promise.reject(bad("payload must be a JSON object"));
    }
    if (action !== undefined && action !== null && (typeof action !== "string" || action.length > 255)) {
      return Promise.reject(bad("action must be a string of at most 255 characters"));
    }
    /** @type {any} */
    const msg = { type: "event", room_id: this.id, event_type: eventType };
    if (action !== undefined && action !== null) msg.action = action;
    if (payload !== undefined && payload !== null) msg.payload = cloneJson(payload); // later changes by the app do not leak in
    // The same key goes with every resend of this send: the gateway applies it once.
    msg.idempotency_key = randomId(22, this._client._random);
    const key = "e|" + JSON.stringify(eventType) + "|" + JSON.stringify(msg.action ?? null) + "|" + canonical(msg.payload ?? null);
    return this._client._call(msg, { kind: "event", room: this, key, onReply: (m) => m.seq });
  }

  /**
   * Host only: change the status and/or patch game_data (JSON Merge Patch). Resolves with the
   * seq of the resulting state_change event.
   * @param {{status?: string, patch?: Record<string, any>}} change
   * @returns {Promise<number>}
   */
  update(change = {}) {
    const { status, patch } = change;
    if (status === undefined && patch === undefined) return Promise.reject(bad("update needs status or patch"));
    if (status !== undefined && !STATUSES.includes(status)) {
      return Promise.reject(bad(`status must be one of ${STATUSES.join(", ")} (use close() to close)`));
    }
    if (patch !== undefined && !isObject(patch)) return Promise.reject(bad("patch must be a JSON object"));
    /** @type {any} */
    const msg = { type: "update_room", room_id: this.id };
    /** @type {any} */
    const payload = {};
    if (status !== undefined) msg.status = payload.status = status;
    if (patch !== undefined) msg.patch = payload.patch = cloneJson(patch);
    return this._client._call(msg, { kind: "update", room: this, key: "s|" + canonical(payload), onReply: (m) => m.seq });
  }

  /** Host only: close the room for everyone. Resolves with the seq of room_closed. @returns {Promise<number>} */
  close() {
    return this._client._call({ type: "close_room", room_id: this.id }, { kind: "close", room: this, key: "c|", onReply: (m) => m.seq });
  }

  /** Leave the room (the device gives up its place). @returns {Promise<void>} */
  leave() {
    if (this._ended) return Promise.resolve();
    this._leaving = true;
    return this._client._call({ type: "leave", room_id: this.id }, {
      kind: "leave",
      room: this,
      onReply: () => {
        this._end("left", null);
      },
      onError: (err) => {
        if (err.code === "not_member" || err.code === "not_found") {
          this._end("left", null);
          return true;
        }
        return false;
      },
    });
  }

  /**
   * The room's events as an async iterator, from now on; it ends when the room ends.
   * @returns {AsyncIterableIterator<any>}
   */
  events() {
    /** @type {any[]} */
    const queue = [];
    /** @type {((r: IteratorResult<any>) => void) | null} */
    let waiting = null;
    let done = this._ended !== null;
    const sub = {
      push: (/** @type {any} */ ev) => {
        if (done) return;
        if (waiting) {
          const w = waiting;
          waiting = null;
          w({ value: ev, done: false });
        } else queue.push(ev);
      },
      end: () => {
        done = true;
        this._iterators.delete(sub);
        if (waiting) {
          const w = waiting;
          waiting = null;
          w({ value: undefined, done: true });
        }
      },
    };
    if (!done) this._iterators.add(sub);
    /** @type {AsyncIterableIterator<any>} */
    const it = {
      next: () => {
        if (queue.length) return Promise.resolve({ value: queue.shift(), done: false });
        if (done) return Promise.resolve({ value: undefined, done: true });
        return new Promise((resolve) => (waiting = resolve));
      },
      return: () => {
        queue.length = 0;
        sub.end();
        return Promise.resolve({ value: undefined, done: true });
      },
      [Symbol.asyncIterator]() {
        return it;
      },
    };
    return it;
  }

  /** @param {string} name @param {unknown} err */
  _listenerFailed(name, err) {
    this._client._listenerFailed(`room ${name}`, err);
  }

  // ---------------------------------------------------------------- event intake

  /** An event frame for this room arrived. @param {any} ev */
  _receive(ev) {
    if (this._ended || typeof ev.seq !== "number") return;
    if (ev.seq <= this._lastAccepted) return; // a duplicate
    if (this._joining || ev.seq !== this._lastAccepted + 1) {
      this._buffer.set(ev.seq, ev);
      if (!this._joining) this._armGapTimer();
      return;
    }
    this._take(ev);
    this._drainBuffer();
  }

  _drainBuffer() {
    for (const seq of [...this._buffer.keys()]) if (seq <= this._lastAccepted) this._buffer.delete(seq);
    for (;;) {
      const next = this._buffer.get(this._lastAccepted + 1);
      if (!next) break;
      this._buffer.delete(next.seq);
      this._take(next);
      if (this._ended) return;
    }
    if (this._buffer.size > 0 && !this._joining) this._armGapTimer();
    else this._clearGapTimer();
  }

  /** Take the next event in order. @param {any} ev */
  _take(ev) {
    this._lastAccepted = ev.seq;
    if (this._acked.delete(ev.seq)) {
      // its request was acked already
    } else if (this._inflight.length && ev.from && ev.from.socket_id) {
      const key = eventKey(ev);
      const i = key === null ? -1 : this._inflight.findIndex((op) => op.socketId === ev.from.socket_id && op.key === key);
      if (i >= 0) {
        const [op] = this._inflight.splice(i, 1);
        op.matched = true;
        this._client._settle(op, null, ev.seq);
      }
    }
    this._deliverQueue.push({ kind: "event", ev });
    if (this._resumeTarget !== null && this._lastAccepted >= this._resumeTarget) this._completeResume();
    this._pump();
  }

  _pump() {
    if (this._held || this._pumping) return;
    this._pumping = true;
    try {
      while (this._deliverQueue.length) {
        const item = this._deliverQueue.shift();
        if (item.kind === "reset") {
          this.seq = item.joined.seq;
          this.state = { ...item.joined.room, seq: item.joined.seq };
          this.participants = [...(item.joined.participants ?? [])];
          this._emit("reset", this.state);
        } else this._deliver(item.ev);
      }
    } finally {
      this._pumping = false;
    }
  }

  _release() {
    this._held = false;
    this._pump();
  }

  /** @param {any} ev */
  _deliver(ev) {
    this.seq = ev.seq;
    this._apply(ev);
    this._emit("event", ev);
    for (const it of [...this._iterators]) it.push(ev);
    if (ev.event_type === "room_closed") this._end("room_closed", ev);
  }

  /** Keep state and participants current. @param {any} ev */
  _apply(ev) {
    const state = { ...this.state, seq: ev.seq };
    const p = ev.payload ?? {};
    switch (ev.event_type) {
      case "state_change":
        if (p.status !== undefined) state.status = p.status;
        if (p.patch !== undefined) state.game_data = mergePatch(state.game_data ?? {}, p.patch);
        break;
      case "participant_joined": {
        const others = this.participants.filter((x) => x.device_id !== p.device_id);
        const had = others.length !== this.participants.length;
        this.participants = [
          ...others,
          { device_id: p.device_id, user_id: ev.from?.user_id ?? null, role: p.role, status: "active", joined_at: ev.ts },
        ];
        if (!had && p.role !== "spectator" && typeof state.current_players === "number") state.current_players += 1;
        if (p.device_id === this._client.deviceId && p.role) this.role = p.role;
        break;
      }
      case "participant_reconnected":
      case "participant_disconnected": {
        const status = ev.event_type === "participant_reconnected" ? "active" : "disconnected";
        this.participants = this.participants.map((x) => (x.device_id === p.device_id ? { ...x, status } : x));
        break;
      }
      case "participant_left": {
        const before = this.participants.length;
        this.participants = this.participants.filter((x) => x.device_id !== p.device_id);
        if (before !== this.participants.length && p.role !== "spectator" && typeof state.current_players === "number") {
          state.current_players = Math.max(0, state.current_players - 1);
        }
        break;
      }
      case "host_changed":
        this.participants = this.participants.map((x) => (x.device_id === p.device_id ? { ...x, role: "host" } : x));
        if (p.device_id === this._client.deviceId) this.role = "host";
        break;
      case "room_closed":
        state.status = "closed";
        state.current_players = 0;
        this.participants = [];
        break;
      default:
    }
    this.state = state;
  }

  _armGapTimer() {
    if (this._gapTimer || this._ended) return;
    this._gapTimer = setTimeout(() => {
      this._gapTimer = null;
      // A missing seq that does not come: ask for the replay on this socket.
      if (this._buffer.size && !this._joining && this._joinedGen === this._client._gen && this._client._welcomed) {
        this._rejoin("resync");
      }
    }, this._client._gapTimeoutMs);
  }

  _clearGapTimer() {
    if (this._gapTimer) clearTimeout(this._gapTimer);
    this._gapTimer = null;
  }

  // ---------------------------------------------------------------- joins and resume

  /**
   * Join again on the current socket: "resume" after a reconnect, "resync" after a gap.
   * @param {"resume" | "resync"} why
   */
  _rejoin(why) {
    const client = this._client;
    const gen = client._gen;
    this._joining = true;
    this._ready = false;
    this._clearGapTimer();
    /** @type {any} */
    const msg = { type: "join", room_id: this.id, since: this._lastAccepted };
    if (this.epoch) msg.epoch = this.epoch;
    if (this.role === "player" || this.role === "spectator") msg.role = this.role;
    if (this._password !== undefined) msg.password = this._password;
    client
      ._call(msg, { kind: "resume", room: this, priority: true, onReply: (m) => this._onRejoined(m, gen) })
      .catch((/** @type {RoomcastError} */ err) => {
        if (this._ended || gen !== client._gen || !client._welcomed) return; // a new socket resumes again
        if (ROOM_GONE.has(err.code)) {
          this._end(err.code, null);
          return;
        }
        // unavailable, internal, timeout: try again on this socket after a backoff delay
        const delay = backoffDelay("backoff", Math.min(this._retries++, 6), client._backoff, client._random);
        this._retryTimer = setTimeout(() => {
          this._retryTimer = null;
          if (!this._ended && gen === client._gen && client._welcomed) this._rejoin(why);
        }, Math.max(delay, 50));
      });
  }

  /** @param {any} m the joined reply @param {number} gen */
  _onRejoined(m, gen) {
    if (this._ended || gen !== this._client._gen) return;
    this._joining = false;
    this._retries = 0;
    this._joinedGen = gen;
    const previousEpoch = this.epoch ?? null;
    this.epoch = m.epoch ?? this.epoch;
    if (m.role) this.role = m.role;
    const sameEpoch = previousEpoch !== null && m.epoch === previousEpoch;
    if (m.recovered) {
      this._resumeTarget = m.seq;
      this._drainBuffer();
      if (this._resumeTarget !== null && this._lastAccepted >= this._resumeTarget) this._completeResume();
      return;
    }
    // Not recoverable: the app reloads from the snapshot; carry on from joined.seq.
    this._lastAccepted = m.seq;
    this._acked.clear();
    this._deliverQueue = this._deliverQueue.filter((item) => item.kind !== "event" || item.ev.seq > m.seq);
    this._deliverQueue.push({ kind: "reset", joined: m });
    for (const op of [...this._inflight]) {
      if (op.gen !== gen) {
        this._dropInflight(op);
        if (op.settled) continue;
        if (sameEpoch && op.msg.idempotency_key && !op.tooLarge) {
          // Same room, same epoch: the gateway still knows the key, so sending it again is
          // safe (applied once, acked with the first seq if it was applied already).
          this._client._requeue(op);
          continue;
        }
        this._client._settle(op, new RoomcastError("disconnected",
          "the connection was lost before the reply and the room could not be replayed: the request may or may not have taken effect"));
      }
    }
    this._resumeTarget = null;
    this._ready = true;
    this._pump();
    this._drainBuffer();
    this._client._flush();
  }

  /** Every event up to joined.seq of a resume is in: requests the gateway never got go again. */
  _completeResume() {
    this._resumeTarget = null;
    const gen = this._client._gen;
    const again = this._inflight.filter((op) => op.gen !== gen);
    for (const op of again) {
      this._dropInflight(op);
      if (op.settled) continue;
      if (op.tooLarge) {
        this._client._settle(op, new RoomcastError("too_large", "the gateway closed the socket with 1009 (frame too large) and did not apply this request"));
      } else this._client._requeue(op);
    }
    this._ready = true;
    this._client._flush();
  }

  /** @param {any} op */
  _dropInflight(op) {
    const i = this._inflight.indexOf(op);
    if (i >= 0) this._inflight.splice(i, 1);
  }

  /**
   * The room is over for this client.
   * @param {string} reason "left", "room_closed", or the error code that refused the resume
   * @param {any} ev the room_closed event, if there is one
   */
  _end(reason, ev) {
    if (this._ended) return;
    this._ended = reason;
    this._ready = false;
    this._clearGapTimer();
    if (this._retryTimer) clearTimeout(this._retryTimer);
    const client = this._client;
    if (client.rooms.get(this.id) === this) client.rooms.delete(this.id);
    client._orphans.delete(this.id);
    const err =
      reason === "left"
        ? new RoomcastError("not_member", `left room '${this.id}'`)
        : new RoomcastError(reason, `room '${this.id}' is over (${reason})`);
    for (const op of [...this._inflight]) {
      this._dropInflight(op);
      if (op.kind === "close" && reason === "room_closed" && ev) client._settle(op, null, ev.seq);
      else client._settle(op, err);
    }
    client._dropRoomOps(this, err);
    for (const it of [...this._iterators]) it.end();
    if (reason !== "left") {
      const closed = ev ?? {
        type: "event",
        room_id: this.id,
        seq: null,
        event_type: "room_closed",
        action: null,
        payload: null,
        from: null,
        ts: Date.now(),
        reason,
      };
      if (!ev) this.state = { ...this.state, status: reason === "room_closed" ? "closed" : this.state.status };
      this._emit("closed", closed);
    }
  }
}

// ------------------------------------------------------------------ client

/**
 * A connection to a roomcast gateway (or several replicas: `urls`), kept open on its own.
 */
export class RoomcastClient extends Emitter {
  /** @param {import("./roomcast").RoomcastClientOptions} [options] */
  constructor(options = /** @type {any} */ ({})) {
    super();
    const urls = [];
    if (options.url) urls.push(String(options.url));
    for (const u of options.urls ?? []) if (!urls.includes(String(u))) urls.push(String(u));
    if (urls.length === 0) throw new TypeError("RoomcastClient needs `url` or `urls`");
    /** @type {string[]} */
    this.urls = urls;
    /** @type {any} */
    this._WebSocket = options.WebSocket ?? /** @type {any} */ (globalThis).WebSocket;
    if (typeof this._WebSocket !== "function") {
      throw new TypeError("no WebSocket implementation: pass options.WebSocket");
    }
    this._random = options.random ?? Math.random;
    const storage = options.storage !== undefined ? options.storage : defaultStorage();
    /** @type {string} */
    this.deviceId = options.deviceId ?? loadDeviceId(storage, this._random);
    if (!DEVICE_ID_RE.test(this.deviceId)) throw new TypeError("deviceId must be 8-128 characters of [A-Za-z0-9._:-]");
    // The device token (welcome.device_token) goes with the id: kept where the id is kept.
    this._tokenStorage = options.deviceId === undefined ? storage : null;
    /** welcome.device_token, sent in every later hello. @type {string | null} */
    this.deviceToken = options.deviceToken ?? readStorage(this._tokenStorage, DEVICE_TOKEN_KEY);
    this._token = options.token;
    this._metadata = options.metadata;
    this.requestTimeoutMs = options.requestTimeoutMs ?? 10000;
    this.maxQueue = options.maxQueue ?? 1000;
    this._backoff = { initialMs: 500, maxMs: 30000, ...(options.backoff ?? {}) };
    this._maxInFlight = options.maxInFlight ?? 64;
    this._maxFrameBytes = options.maxFrameBytes ?? 65536;
    this._gapTimeoutMs = options.gapTimeoutMs ?? 3000;

    /** @type {"connecting" | "open" | "reconnecting" | "closed"} */
    this.state = "closed";
    /** The last welcome message. @type {any} */
    this.welcome = null;
    /** @type {string | null} */
    this.socketId = null;
    /** Rooms this client is in, by id. @type {Map<string, Room>} */
    this.rooms = new Map();

    /** @type {any} */
    this._ws = null;
    this._gen = 0;
    this._welcomed = false;
    this._urlIndex = -1;
    this._attempt = 0;
    this._stopped = true; // close() was called (or never connected): no reconnects
    /** @type {any} */
    this._retryTimer = null;
    /** @type {any} */
    this._handshakeTimer = null;
    /** @type {any} */
    this._heartbeatTimer = null;
    this._lastReceived = 0;
    this._nextId = 1;
    this._opSeq = 0;
    this._prioritySeq = 0;
    /** @type {any[]} requests not sent yet, in order */
    this._outbox = [];
    /** @type {Map<number, any>} requests sent on the current socket, by id */
    this._pending = new Map();
    this._inFlight = 0;
    this._pausedUntil = 0;
    /** @type {any} */
    this._flushTimer = null;
    /** @type {{resolve: (w: any) => void, reject: (e: Error) => void}[]} */
    this._waiters = [];
    /** @type {Map<string, Promise<Room>>} the app's joins in progress */
    this._joins = new Map();
    /** @type {Map<string, Promise<Room | undefined>>} rooms of welcome.rooms being joined again */
    this._adopting = new Map();
    /** @type {Map<string, any[]>} events of rooms we are about to get a Room for */
    this._orphans = new Map();
  }

  // ---------------------------------------------------------------- public API

  /** Open the connection; resolves with the welcome message. @returns {Promise<any>} */
  connect() {
    if (this.state === "open" && this._welcomed) return Promise.resolve(this.welcome);
    const p = new Promise((resolve, reject) => this._waiters.push({ resolve, reject }));
    if (this._stopped) {
      this._stopped = false;
      this._attempt = 0;
      this._setState("connecting");
      this._openSocket();
    }
    return p;
  }

  /** Close the connection for good (no reconnect). Rooms are not left: connect() again resumes them. */
  close() {
    const wasStopped = this._stopped && !this._ws;
    this._stopped = true;
    if (this._retryTimer) clearTimeout(this._retryTimer);
    this._retryTimer = null;
    if (this._ws) {
      const ws = this._detach();
      try {
        ws.close(1000, "client closed");
      } catch {
        // already closing
      }
      this._socketEnded(1000, "client closed");
    } else if (!wasStopped) {
      this._shutdown(new RoomcastError("closed", "the client was closed"));
    }
  }

  /**
   * Create a room; this device joins it as host.
   * @param {{gameType: string, roomId?: string, maxPlayers?: number, gameData?: Record<string, any>, password?: string, spectatorsCanSend?: boolean}} opts
   * @returns {Promise<Room>}
   */
  createRoom(opts = /** @type {any} */ ({})) {
    const { gameType, roomId, maxPlayers, gameData, password, spectatorsCanSend } = opts;
    if (typeof gameType !== "string" || gameType.length < 1 || gameType.length > 100) {
      return Promise.reject(bad("gameType must be a string of 1-100 characters"));
    }
    if (roomId !== undefined && (typeof roomId !== "string" || !ROOM_ID_RE.test(roomId))) {
      return Promise.reject(bad("roomId must be 1-64 characters of [A-Za-z0-9_-]"));
    }
    if (gameData !== undefined && !isObject(gameData)) return Promise.reject(bad("gameData must be a JSON object"));
    /** @type {any} */
    const msg = { type: "create_room", game_type: gameType };
    if (roomId !== undefined) msg.room_id = roomId;
    if (maxPlayers !== undefined) msg.max_players = maxPlayers;
    if (gameData !== undefined) msg.game_data = gameData;
    if (password !== undefined) msg.password = password;
    if (spectatorsCanSend !== undefined) msg.spectators_can_send = spectatorsCanSend;
    return this._call(msg, {
      kind: "create",
      onReply: async (m) => {
        const room = new Room(this, m.room, { role: "host", seq: m.room.seq ?? 0, password, held: true });
        room._joinedGen = this._gen;
        room._ready = true;
        this._adoptRoom(room);
        // room_created has no epoch: a join on this same socket gives it (and makes no event).
        try {
          const joined = await this._call({ type: "join", room_id: room.id }, { kind: "epoch" });
          if (!room._ended && !room.epoch) room.epoch = joined.epoch;
        } catch {
          // the next resume join tells the epoch
        }
        this._releaseSoon(room);
        return room;
      },
    });
  }

  /**
   * Join a room (or get the Room this client is already in).
   * @param {string} roomId
   * @param {{role?: "player" | "spectator", password?: string}} [opts]
   * @returns {Promise<Room>}
   */
  join(roomId, opts = {}) {
    if (typeof roomId !== "string" || !ROOM_ID_RE.test(roomId)) {
      return Promise.reject(bad("roomId must be 1-64 characters of [A-Za-z0-9_-]"));
    }
    const existing = this.rooms.get(roomId);
    if (existing && !existing._ended) return Promise.resolve(existing);
    const pending = this._joins.get(roomId);
    if (pending) return pending;
    const adopting = this._adopting.get(roomId);
    if (adopting && opts.password === undefined) {
      // the rejoin of a room listed in welcome.rooms is under way: use it
      return adopting.then((room) => room ?? this.join(roomId, opts));
    }
    /** @type {any} */
    const msg = { type: "join", room_id: roomId };
    if (opts.role !== undefined) msg.role = opts.role;
    if (opts.password !== undefined) msg.password = opts.password;
    const p = this._call(msg, {
      kind: "join",
      onReply: (m) => {
        const known = this.rooms.get(roomId);
        const room = this._roomFromJoined(m, opts.password, true);
        if (room !== known) this._releaseSoon(room);
        return room;
      },
    });
    this._joins.set(roomId, p);
    const forget = () => {
      if (this._joins.get(roomId) === p) this._joins.delete(roomId);
    };
    p.then(forget, forget);
    return p;
  }

  /**
   * Rooms open to join (rooms with a password are never listed).
   * @param {{gameType?: string, status?: string, limit?: number}} [opts]
   * @returns {Promise<any[]>}
   */
  listRooms(opts = {}) {
    /** @type {any} */
    const msg = { type: "list_rooms" };
    if (opts.gameType !== undefined) msg.game_type = opts.gameType;
    if (opts.status !== undefined) msg.status = opts.status;
    if (opts.limit !== undefined) msg.limit = opts.limit;
    return this._call(msg, { kind: "list", onReply: (m) => m.rooms });
  }

  /** @param {string} name @param {unknown} err */
  _listenerFailed(name, err) {
    if (name !== "error" && this._handlers.get("error")?.size) this._emit("error", err);
    else console.error(`roomcast: a "${name}" listener threw`, err);
  }

  // ---------------------------------------------------------------- requests

  /**
   * Queue a request; it goes out when the socket (and for room requests, the room) is ready.
   * @param {any} msg
   * @param {{kind: string, room?: Room, key?: string, priority?: boolean,
   *          onReply?: (m: any) => any, onError?: (e: RoomcastError) => boolean}} opts
   * @returns {Promise<any>}
   */
  _call(msg, opts) {
    return new Promise((resolve, reject) => {
      const op = {
        n: opts.priority ? Number.MIN_SAFE_INTEGER + ++this._prioritySeq : ++this._opSeq,
        msg,
        kind: opts.kind,
        room: opts.room ?? null,
        key: opts.key ?? null,
        onReply: opts.onReply ?? ((/** @type {any} */ m) => m),
        onError: opts.onError ?? null,
        priority: !!opts.priority,
        resolve,
        reject,
        id: 0,
        gen: 0,
        socketId: /** @type {string | null} */ (null),
        timer: /** @type {any} */ (null),
        settled: false,
        timedOut: false,
        matched: false,
      };
      if (this._stopped) return reject(new RoomcastError("closed", "not connected: call connect() first"));
      if (op.room && op.room._ended && op.kind !== "resume") {
        return reject(op.room._ended === "left"
          ? new RoomcastError("not_member", `left room '${op.room.id}'`)
          : new RoomcastError(op.room._ended, `room '${op.room.id}' is over (${op.room._ended})`));
      }
      const size = utf8Length(JSON.stringify({ ...msg, id: 9007199254740991 }));
      if (size > this._maxFrameBytes) {
        return reject(new RoomcastError("too_large", `the message would be ${size} bytes, over the ${this._maxFrameBytes}-byte frame limit`));
      }
      if (!op.priority && this._outbox.length >= this.maxQueue) {
        return reject(new RoomcastError("queue_full", `${this._outbox.length} requests are already waiting (maxQueue)`));
      }
      this._insert(op);
      this._flush();
    });
  }

  /** @param {any} op */
  _insert(op) {
    let i = this._outbox.length;
    while (i > 0 && this._outbox[i - 1].n > op.n) i--;
    this._outbox.splice(i, 0, op);
  }

  /** A request that must go again (lost with a socket, or rate limited). @param {any} op */
  _requeue(op) {
    if (op.settled) return;
    if (op.timer) clearTimeout(op.timer);
    op.timer = null;
    op.id = 0;
    op.socketId = null;
    this._insert(op);
    this._flush();
  }

  /** @param {any} op */
  _isReady(op) {
    if (!op.room || op.kind === "resume") return true;
    return op.room._ready && op.room._joinedGen === this._gen;
  }

  _flush() {
    if (!this._welcomed || !this._ws) return;
    const now = Date.now();
    if (this._pausedUntil > now) {
      if (!this._flushTimer) {
        this._flushTimer = setTimeout(() => {
          this._flushTimer = null;
          this._flush();
        }, this._pausedUntil - now);
      }
      return;
    }
    for (let i = 0; i < this._outbox.length && this._inFlight < this._maxInFlight; ) {
      const op = this._outbox[i];
      if (op.settled) {
        this._outbox.splice(i, 1);
        continue;
      }
      if (!this._isReady(op)) {
        i++;
        continue;
      }
      this._outbox.splice(i, 1);
      this._transmit(op);
    }
  }

  /** @param {any} op */
  _transmit(op) {
    op.id = this._nextId++;
    op.gen = this._gen;
    op.socketId = this.socketId;
    op.timedOut = false;
    this._pending.set(op.id, op);
    this._inFlight++;
    if (op.room && op.key) op.room._inflight.push(op);
    op.timer = setTimeout(() => {
      op.timer = null;
      if (op.timedOut || this._pending.get(op.id) !== op) return;
      op.timedOut = true;
      this._inFlight--;
      this._settle(op, new RoomcastError("timeout", `no reply to ${op.msg.type} within ${this.requestTimeoutMs} ms`));
      this._flush();
    }, this.requestTimeoutMs);
    this._sendFrame({ ...op.msg, id: op.id });
  }

  /** @param {any} op @param {Error | null} err @param {any} [value] */
  _settle(op, err, value) {
    if (op.settled) return;
    op.settled = true;
    if (op.timer) clearTimeout(op.timer);
    op.timer = null;
    if (err) op.reject(err);
    else op.resolve(value);
  }

  /** @param {any} msg */
  _onReply(msg) {
    const op = this._pending.get(msg.re);
    if (!op) return;
    this._pending.delete(msg.re);
    if (op.timer) clearTimeout(op.timer);
    op.timer = null;
    if (!op.timedOut) this._inFlight--;
    const room = op.room;
    if (room && op.key) room._dropInflight(op);
    if (msg.type === "error") {
      const err = new RoomcastError(msg.code ?? "internal", msg.message ?? "error", { retryAfterMs: msg.retry_after_ms, reply: msg });
      if (msg.code === "rate_limited" && !op.settled && op.kind !== "hello") {
        // The gateway dropped the message: send it again after retry_after_ms.
        const wait = typeof msg.retry_after_ms === "number" ? msg.retry_after_ms : 1000;
        this._pausedUntil = Math.max(this._pausedUntil, Date.now() + wait);
        this._requeue(op);
        return;
      }
      if (op.onError && !op.settled && op.onError(err)) {
        this._settle(op, null, undefined);
      } else this._settle(op, err);
      this._flush();
      return;
    }
    if (room && op.key && typeof msg.seq === "number" && !op.matched && msg.seq > room._lastAccepted) room._acked.add(msg.seq);
    if (!op.settled) {
      try {
        this._settle(op, null, op.onReply(msg));
      } catch (e) {
        this._settle(op, /** @type {Error} */ (e));
      }
    }
    this._flush();
  }

  /** @param {Room} room @param {RoomcastError} err */
  _dropRoomOps(room, err) {
    for (const op of [...this._outbox]) {
      if (op.room === room) {
        this._outbox.splice(this._outbox.indexOf(op), 1);
        if (op.kind === "leave") this._settle(op, null, undefined);
        else this._settle(op, err);
      }
    }
  }

  // ---------------------------------------------------------------- rooms

  /** @param {Room} room */
  _adoptRoom(room) {
    this.rooms.set(room.id, room);
    const early = this._orphans.get(room.id);
    this._orphans.delete(room.id);
    if (early) for (const ev of early) room._receive(ev);
  }

  /** @param {any} m joined reply @param {string | undefined} password @param {boolean} held */
  _roomFromJoined(m, password, held) {
    const existing = this.rooms.get(m.room.room_id);
    if (existing && !existing._ended) {
      // joined twice at once (the app's join and the rejoin of a room in welcome.rooms)
      if (password !== undefined) existing._password = password;
      return existing;
    }
    const room = new Room(this, m.room, {
      role: m.role ?? "player",
      epoch: m.epoch,
      seq: m.seq,
      participants: m.participants,
      password,
      held,
    });
    room._joinedGen = this._gen;
    room._ready = true;
    this._adoptRoom(room);
    return room;
  }

  /** Deliver a new room's events after the app had a chance to add listeners. @param {Room} room */
  _releaseSoon(room) {
    setTimeout(() => room._release(), 0);
  }

  /** welcome.rooms lists a room this client does not know (a page reload): join it. @param {any} entry */
  _adoptListed(entry) {
    const roomId = entry.room_id;
    /** @type {any} */
    const msg = { type: "join", room_id: roomId };
    if (entry.role === "player" || entry.role === "spectator") msg.role = entry.role;
    const p = this._call(msg, {
      kind: "join",
      priority: true,
      onReply: (m) => {
        const known = this.rooms.get(roomId);
        const room = this._roomFromJoined(m, undefined, true);
        if (room !== known) {
          this._emit("room", room);
          this._releaseSoon(room);
        }
        return room;
      },
    })
      .catch(() => undefined) // a failure (a password room, a full room): it stays out
      .finally(() => this._adopting.delete(roomId));
    this._adopting.set(roomId, p);
  }

  // ---------------------------------------------------------------- socket

  /** @param {"connecting" | "open" | "reconnecting" | "closed"} state */
  _setState(state) {
    if (this.state === state) return;
    this.state = state;
    this._emit("state", state);
  }

  _openSocket() {
    const gen = ++this._gen;
    this._urlIndex = (this._urlIndex + 1) % this.urls.length;
    const url = this.urls[this._urlIndex];
    this._welcomed = false;
    let ws;
    try {
      ws = new this._WebSocket(url, SUBPROTOCOL);
    } catch (err) {
      this._emit("error", err);
      this._ws = null;
      this._afterClose(1006, String(/** @type {any} */ (err)?.message ?? err));
      return;
    }
    this._ws = ws;
    ws.onopen = () => {
      if (gen === this._gen && this._ws === ws) this._sendHello(gen);
    };
    ws.onmessage = (/** @type {any} */ ev) => {
      if (gen === this._gen && this._ws === ws) this._onFrame(ev.data);
    };
    ws.onclose = (/** @type {any} */ ev) => {
      if (gen === this._gen && this._ws === ws) {
        this._detach();
        this._socketEnded(ev.code ?? 1006, ev.reason ?? "");
      }
    };
    ws.onerror = () => {
      // A close event follows in browsers; some implementations (Node 20's built-in
      // WebSocket on a refused connection) never send it: end the socket ourselves then.
      setTimeout(() => {
        if (gen === this._gen && this._ws === ws) {
          this._detach();
          try {
            ws.close();
          } catch {
            // nothing to close
          }
          this._socketEnded(1006, "connection failed");
        }
      }, ERROR_CLOSE_GRACE_MS);
    };
    this._handshakeTimer = setTimeout(() => {
      if (gen === this._gen && !this._welcomed) this._giveUp("no welcome in time");
    }, this.requestTimeoutMs);
  }

  /** Forget the current socket (its late events are ignored). */
  _detach() {
    const ws = this._ws;
    this._ws = null;
    if (ws) {
      // no-ops rather than null: some implementations (the `ws` package) throw on an
      // unhandled error event, e.g. when a socket that is still connecting is closed
      const noop = () => {};
      ws.onopen = ws.onmessage = ws.onerror = ws.onclose = noop;
    }
    return ws;
  }

  /** The client decides the socket is dead (no heartbeat reply, no welcome). @param {string} reason */
  _giveUp(reason) {
    const ws = this._detach();
    if (!ws) return;
    try {
      ws.close(CLIENT_GAVE_UP, reason);
    } catch {
      // closing anyway
    }
    this._socketEnded(CLIENT_GAVE_UP, reason);
  }

  /** @param {number} gen */
  async _sendHello(gen) {
    /** @type {any} */
    const msg = { type: "hello", device_id: this.deviceId };
    try {
      /** @type {any} */
      let token = this._token;
      if (typeof token === "function") token = await token();
      if (token) msg.token = token;
    } catch (err) {
      if (gen === this._gen) this._fatal(new RoomcastError("unauthorized", `the token function failed: ${err}`));
      return;
    }
    if (this.deviceToken) msg.device_token = this.deviceToken;
    if (this._metadata !== undefined) msg.metadata = this._metadata;
    if (gen !== this._gen || !this._ws) return;
    const id = this._nextId++;
    const op = {
      id,
      kind: "hello",
      msg,
      settled: false,
      timedOut: true, // not counted in the in-flight window
      timer: null,
      resolve: (/** @type {any} */ w) => this._onWelcome(w),
      reject: (/** @type {RoomcastError} */ err) => {
        if (gen !== this._gen || this._stopped) return;
        if (err.code === "rate_limited") {
          setTimeout(() => gen === this._gen && this._ws && this._sendHello(gen), err.retryAfterMs ?? 1000);
        } else if (err.code === "unavailable") {
          // The gateway's backend (Redis, or the game backend's connect webhook) cannot decide
          // now: a new socket after the usual backoff, not a refusal.
          this._giveUp(`hello not answered for now: ${err.message}`);
        } else if (err.code !== "disconnected") this._fatal(err);
      },
      onReply: (/** @type {any} */ m) => m,
      onError: null,
      room: null,
      key: null,
    };
    this._pending.set(id, op);
    this._sendFrame({ ...msg, id });
  }

  /** @param {any} w */
  _onWelcome(w) {
    if (this._handshakeTimer) clearTimeout(this._handshakeTimer);
    this._handshakeTimer = null;
    this._welcomed = true;
    this.welcome = w;
    this.socketId = w.socket_id;
    this._attempt = 0;
    if (typeof w.device_token === "string" && w.device_token !== this.deviceToken) {
      this.deviceToken = w.device_token;
      try {
        this._tokenStorage?.setItem(DEVICE_TOKEN_KEY, w.device_token);
      } catch {
        // kept in memory for this page's reconnects
      }
    }
    this._pausedUntil = 0;
    this._lastReceived = Date.now();
    this._startHeartbeat(w.heartbeat_interval_ms ?? 25000, w.heartbeat_timeout_ms ?? 60000);
    const listed = new Map((w.rooms ?? []).map((/** @type {any} */ r) => [r.room_id, r]));
    for (const room of [...this.rooms.values()]) {
      if (room._leaving && !listed.has(room.id)) {
        room._end("left", null); // the leave took effect before the socket went
        continue;
      }
      room._rejoin("resume");
    }
    for (const entry of listed.values()) {
      const id = entry.room_id;
      if (!this.rooms.has(id) && !this._joins.has(id) && !this._adopting.has(id)) this._adoptListed(entry);
    }
    this._emit("welcome", w);
    this._setState("open");
    this._emit("open");
    const waiters = this._waiters.splice(0);
    for (const waiter of waiters) waiter.resolve(w);
    this._flush();
  }

  /** @param {number} interval @param {number} timeout */
  _startHeartbeat(interval, timeout) {
    this._stopHeartbeat();
    const gen = this._gen;
    this._heartbeatTimer = setInterval(() => {
      if (gen !== this._gen || !this._ws) return this._stopHeartbeat();
      if (Date.now() - this._lastReceived > timeout) {
        this._giveUp("no frame from the gateway within heartbeat_timeout_ms");
        return;
      }
      this._sendFrame({ type: "ping" });
    }, Math.max(interval, 10));
  }

  _stopHeartbeat() {
    if (this._heartbeatTimer) clearInterval(this._heartbeatTimer);
    this._heartbeatTimer = null;
  }

  /** @param {any} msg */
  _sendFrame(msg) {
    try {
      this._ws.send(JSON.stringify(msg));
    } catch {
      // the socket is closing; its close event handles what was in flight
    }
  }

  /** @param {any} data */
  _onFrame(data) {
    this._lastReceived = Date.now();
    if (typeof data !== "string") return;
    let msg;
    try {
      msg = JSON.parse(data);
    } catch {
      this._emit("error", new RoomcastError("bad_frame", "the gateway sent a frame that is not JSON"));
      return;
    }
    if (!isObject(msg)) return;
    if (msg.type === "event") {
      const room = this.rooms.get(msg.room_id);
      if (room) room._receive(msg);
      else {
        // Events of a room whose created/joined reply has not come yet.
        let list = this._orphans.get(msg.room_id);
        if (!list) this._orphans.set(msg.room_id, (list = []));
        if (list.length < MAX_ORPHANS) list.push(msg);
      }
      return;
    }
    if (msg.re !== undefined && msg.re !== null) {
      this._onReply(msg);
      return;
    }
    if (msg.type === "error") {
      this._emit("error", new RoomcastError(msg.code ?? "internal", msg.message ?? "error", { reply: msg }));
    }
  }

  /**
   * The socket ended (closed by the gateway, the network, or us).
   * @param {number} code @param {string} reason
   */
  _socketEnded(code, reason) {
    this._welcomed = false;
    this._stopHeartbeat();
    if (this._handshakeTimer) clearTimeout(this._handshakeTimer);
    this._handshakeTimer = null;
    if (this._flushTimer) clearTimeout(this._flushTimer);
    this._flushTimer = null;
    this._orphans.clear();
    const lost = new RoomcastError("disconnected", "the connection was lost before the reply");
    for (const op of this._pending.values()) {
      if (op.timer) clearTimeout(op.timer);
      op.timer = null;
      if (op.settled || op.kind === "hello") continue;
      if (op.key && op.room && !op.room._ended) {
        // uncertain: settled by the resume. After a 1009 one of them was the frame the gateway
        // refused: those not found in the replay fail instead of going again.
        if (code === 1009) op.tooLarge = true;
        continue;
      }
      if (op.kind === "join" || op.kind === "list" || op.kind === "leave") this._requeue(op);
      else this._settle(op, lost); // create, epoch, resume
    }
    this._pending.clear();
    this._inFlight = 0;
    for (const room of this.rooms.values()) {
      room._ready = false;
      room._joinedGen = -1;
      room._joining = false;
      room._resumeTarget = null;
    }
    this._afterClose(code, reason);
  }

  /** Reconnect as the close code says, or stop. @param {number} code @param {string} reason */
  _afterClose(code, reason) {
    if (this._stopped) {
      this._emit("close", { code, reason, willReconnect: false });
      this._shutdown(new RoomcastError("closed", "the client was closed"));
      return;
    }
    const policy = closePolicy(code);
    if (policy === "never") {
      this._emit("close", { code, reason, willReconnect: false });
      this._fatal(new RoomcastError("policy_violation", `the gateway refused the connection (${code} ${reason})`, { closeCode: code }));
      return;
    }
    this._emit("close", { code, reason, willReconnect: true });
    const attempt = this._attempt++;
    const delayMs = backoffDelay(policy, attempt, this._backoff, this._random);
    this._setState("reconnecting");
    this._emit("reconnecting", { attempt, delayMs });
    this._retryTimer = setTimeout(() => {
      this._retryTimer = null;
      if (!this._stopped) this._openSocket();
    }, delayMs);
  }

  /** No reconnect: state closed, "error" emitted, everything waiting fails. @param {RoomcastError} err */
  _fatal(err) {
    this._stopped = true;
    if (this._retryTimer) clearTimeout(this._retryTimer);
    this._retryTimer = null;
    const ws = this._detach();
    if (ws) {
      try {
        ws.close(1000, "client gave up");
      } catch {
        // already closed
      }
      this._welcomed = false;
      this._emit("close", { code: 1000, reason: err.message, willReconnect: false });
    }
    this._setState("closed");
    this._emit("error", err);
    this._shutdown(err);
  }

  /** State closed; every waiting request and connect() fails with `err`. @param {RoomcastError} err */
  _shutdown(err) {
    this._setState("closed");
    this._stopHeartbeat();
    if (this._handshakeTimer) clearTimeout(this._handshakeTimer);
    this._handshakeTimer = null;
    if (this._flushTimer) clearTimeout(this._flushTimer);
    this._flushTimer = null;
    for (const w of this._waiters.splice(0)) w.reject(err);
    for (const op of this._outbox.splice(0)) this._settle(op, err);
    for (const op of this._pending.values()) this._settle(op, err);
    this._pending.clear();
    this._inFlight = 0;
    for (const room of this.rooms.values()) {
      for (const op of room._inflight.splice(0)) this._settle(op, err);
      room._ready = false;
      room._joinedGen = -1;
    }
  }
}

export default RoomcastClient;
