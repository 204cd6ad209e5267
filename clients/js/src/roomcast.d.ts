// Types of the roomcast browser client (roomcast.js). Protocol v1: docs/protocol.md.

export declare const VERSION: string;
/** The WebSocket subprotocol the client offers. */
export declare const SUBPROTOCOL: "roomcast.v1";
/** The storage key of the device id. */
export declare const DEVICE_ID_KEY: "roomcast.device_id";
/** The storage key of the device token (welcome.device_token), next to the device id. */
export declare const DEVICE_TOKEN_KEY: "roomcast.device_token";
/** Close code the client uses when it gives up on a socket itself (dead link, no welcome in time). */
export declare const CLIENT_GAVE_UP: 4000;
/** Event types only the gateway makes; `room.send` refuses them. */
export declare const RESERVED_EVENT_TYPES: readonly ServerEventType[];

export type ConnectionState = "connecting" | "open" | "reconnecting" | "closed";
export type Role = "host" | "player" | "spectator";
export type RoomStatus = "waiting" | "active" | "in_progress" | "completed" | "closed";
export type ServerEventType =
  | "participant_joined"
  | "participant_reconnected"
  | "participant_disconnected"
  | "participant_left"
  | "state_change"
  | "room_closed"
  | "host_changed";

export type JsonValue = string | number | boolean | null | JsonValue[] | { [key: string]: JsonValue };
export type JsonObject = { [key: string]: JsonValue };

/** A key-value store like `localStorage`. */
export interface StorageLike {
  getItem(key: string): string | null;
  setItem(key: string, value: string): void;
}

/** A constructor with the browser WebSocket's shape (the global one, `ws`, undici…). */
export interface WebSocketConstructor {
  new (url: string, protocols?: string | string[]): WebSocketLike;
}

export interface WebSocketLike {
  send(data: string): void;
  close(code?: number, reason?: string): void;
  onopen: ((ev: any) => void) | null;
  onmessage: ((ev: { data: any }) => void) | null;
  onclose: ((ev: { code: number; reason: string }) => void) | null;
  onerror: ((ev: any) => void) | null;
}

export interface BackoffOptions {
  /** First reconnect delay ceiling (full jitter: uniform in [0, initialMs)). Default 500. */
  initialMs?: number;
  /** Largest delay. Default 30000. */
  maxMs?: number;
}

export interface RoomcastClientOptions {
  /** Gateway URL, e.g. "wss://game.example/ws". `url` or `urls` is required. */
  url?: string;
  /** Several replicas: every new socket (each reconnect) tries the next one. `url`, if given, comes first. */
  urls?: string[];
  /** Default: read from `storage` under "roomcast.device_id", or made and stored there. 8-128 of [A-Za-z0-9._:-]. */
  deviceId?: string;
  /** Where the device id lives. Default `globalThis.localStorage` if present; `null` = keep it in memory only. */
  storage?: StorageLike | null;
  /** The device token the gateway gave this device id (welcome.device_token), sent in every hello.
   * Default: read from `storage` (when the device id comes from there too), then kept from each welcome. */
  deviceToken?: string;
  /** hello.token (a JWT); a function is called before every hello (refresh it there). */
  token?: string | (() => string | null | undefined | Promise<string | null | undefined>);
  /** hello.metadata. */
  metadata?: JsonObject;
  /** Reply timeout of every request, and the time a new socket has to be welcomed. Default 10000. */
  requestTimeoutMs?: number;
  /** Most requests waiting to be sent (while disconnected, or beyond maxInFlight). Beyond it they are refused with `queue_full`. Default 1000. */
  maxQueue?: number;
  backoff?: BackoffOptions;
  /** WebSocket implementation. Default `globalThis.WebSocket`. */
  WebSocket?: WebSocketConstructor | (new (url: string, protocols?: string | string[]) => any);
  /** Most requests sent and not yet answered at once. Default 64. */
  maxInFlight?: number;
  /** Largest frame the client sends; a bigger request is refused with `too_large` (the gateway would close with 1009). Default 65536. */
  maxFrameBytes?: number;
  /** How long a missing seq may be awaited before the room is replayed from the gateway. Default 3000. */
  gapTimeoutMs?: number;
  /** Random source in [0, 1) for the backoff jitter (tests). Default Math.random. */
  random?: () => number;
}

/** Who caused an event (null for events the gateway made on its own). */
export interface EventSource {
  /** Set only on events a game backend made through the server API: its API key's name (the other fields are null then). */
  service?: string;
  socket_id: string | null;
  device_id: string | null;
  user_id: string | null;
}

export interface RoomEvent<P = any> {
  type: "event";
  room_id: string;
  seq: number;
  event_type: string;
  action: string | null;
  payload: P | null;
  from: EventSource | null;
  ts: number;
}

/** What `room.on("closed")` gets: the room_closed event, or, when the room was found closed or
 * gone on a resume (so the event cannot be replayed), a stand-in with `seq: null` and `reason`. */
export interface RoomClosedEvent {
  type: "event";
  room_id: string;
  seq: number | null;
  event_type: "room_closed";
  action: null;
  /** null, or {reason: "abandoned"} when the gateway's cleanup job closed the room. */
  payload: null | { reason: string };
  from: EventSource | null;
  ts: number;
  /** Only on the stand-in: the error code of the refused resume (room_closed, not_found, forbidden, room_full). */
  reason?: string;
}

/** The room object of protocol section 5. */
export interface RoomSnapshot {
  room_id: string;
  game_type: string;
  status: RoomStatus;
  max_players: number;
  current_players: number;
  game_data: JsonObject;
  created_at: number;
  created_by: string;
  seq: number;
}

export interface Participant {
  device_id: string;
  user_id: string | null;
  role: Role;
  status: "active" | "disconnected";
  joined_at: number;
}

export interface WelcomeRoom {
  room_id: string;
  role: Role;
  seq: number;
}

export interface Welcome {
  type: "welcome";
  re?: string | number;
  socket_id: string;
  device_id: string;
  user_id: string | null;
  reconnect_count: number;
  heartbeat_interval_ms: number;
  heartbeat_timeout_ms: number;
  node: string;
  rooms: WelcomeRoom[];
  /** With DEVICE_TOKEN_SECRET on the gateway: proves this device id; the client sends it in later hellos. */
  device_token?: string;
}

export interface CloseInfo {
  code: number;
  reason: string;
  willReconnect: boolean;
}

export interface ReconnectInfo {
  /** 0 for the first retry after a working connection. */
  attempt: number;
  delayMs: number;
}

export interface ClientEvents {
  welcome: (welcome: Welcome) => void;
  open: () => void;
  close: (info: CloseInfo) => void;
  reconnecting: (info: ReconnectInfo) => void;
  error: (err: RoomcastError | Error) => void;
  state: (state: ConnectionState) => void;
  /** A room the device was still in was found on (re)connect (welcome.rooms) and joined. */
  room: (room: Room) => void;
}

export interface RoomEvents {
  event: (event: RoomEvent) => void;
  reset: (snapshot: RoomSnapshot) => void;
  closed: (event: RoomClosedEvent) => void;
}

export interface CreateRoomOptions {
  gameType: string;
  roomId?: string;
  maxPlayers?: number;
  gameData?: JsonObject;
  password?: string;
  /** create_room.spectators_can_send (extension): spectators may send events. Default false. */
  spectatorsCanSend?: boolean;
}

export interface JoinOptions {
  role?: "player" | "spectator";
  password?: string;
}

export interface ListRoomsOptions {
  gameType?: string;
  status?: RoomStatus;
  limit?: number;
}

export interface UpdateOptions {
  status?: Exclude<RoomStatus, "closed">;
  patch?: JsonObject;
}

/**
 * `code` is the gateway's error code (bad_request, not_found, conflict, room_full, room_closed,
 * not_member, forbidden, unauthorized, rate_limited, unavailable, internal…) or the client's:
 * timeout, closed, disconnected, queue_full, too_large, bad_request, policy_violation, bad_frame.
 */
export declare class RoomcastError extends Error {
  constructor(code: string, message: string, extra?: { retryAfterMs?: number; closeCode?: number; reply?: any });
  readonly code: string;
  /** With rate_limited. */
  readonly retryAfterMs: number | undefined;
  /** With policy_violation: the close code (1008). */
  readonly closeCode: number | undefined;
  /** The gateway's error message, when there is one. */
  readonly reply: any;
}

export declare class Room {
  private constructor();
  readonly id: string;
  readonly role: Role;
  /** The seq of the last event delivered to the app. */
  readonly seq: number;
  readonly epoch: string | null;
  /** The latest room object; game_data is kept current by applying state_change patches. */
  readonly state: RoomSnapshot;
  readonly participants: Participant[];
  /** True once the room was closed, left, or lost. */
  readonly ended: boolean;

  on<K extends keyof RoomEvents>(name: K, cb: RoomEvents[K]): this;
  off<K extends keyof RoomEvents>(name: K, cb: RoomEvents[K]): this;
  once<K extends keyof RoomEvents>(name: K, cb: RoomEvents[K]): this;

  /** Resolves with the event's seq. Queued while disconnected, sent after the room is resumed. */
  send(eventType: string, payload?: JsonObject | null, action?: string): Promise<number>;
  /** Host only. Resolves with the seq of the state_change event. */
  update(change: UpdateOptions): Promise<number>;
  /** Host only. Resolves with the seq of the room_closed event. */
  close(): Promise<number>;
  leave(): Promise<void>;
  /** The room's events from now on; ends when the room ends. */
  events(): AsyncIterableIterator<RoomEvent>;
}

export declare class RoomcastClient {
  constructor(options: RoomcastClientOptions);
  readonly urls: string[];
  readonly deviceId: string;
  /** welcome.device_token of this device, once known. */
  readonly deviceToken: string | null;
  readonly state: ConnectionState;
  /** The last welcome message (null before the first). */
  readonly welcome: Welcome | null;
  readonly socketId: string | null;
  /** The rooms this client is in. */
  readonly rooms: ReadonlyMap<string, Room>;
  requestTimeoutMs: number;
  maxQueue: number;

  on<K extends keyof ClientEvents>(name: K, cb: ClientEvents[K]): this;
  off<K extends keyof ClientEvents>(name: K, cb: ClientEvents[K]): this;
  once<K extends keyof ClientEvents>(name: K, cb: ClientEvents[K]): this;

  /** Resolves with the welcome of the first socket that gets one (reconnecting meanwhile). */
  connect(): Promise<Welcome>;
  /** No reconnect. Rooms are not left (connect() again resumes them). */
  close(): void;
  createRoom(options: CreateRoomOptions): Promise<Room>;
  join(roomId: string, options?: JoinOptions): Promise<Room>;
  listRooms(options?: ListRoomsOptions): Promise<RoomSnapshot[]>;
}

export declare function closePolicy(code: number): "now" | "busy" | "never" | "backoff";
export declare function backoffDelay(
  policy: "now" | "busy" | "backoff",
  attempt: number,
  backoff: { initialMs: number; maxMs: number },
  random?: () => number,
): number;
/** JSON Merge Patch (RFC 7386); returns a new value. */
export declare function mergePatch(target: any, patch: any): any;
/** The device id stored under "roomcast.device_id", made and stored on first use. */
export declare function loadDeviceId(storage: StorageLike | null | undefined, random?: () => number): string;

export default RoomcastClient;
