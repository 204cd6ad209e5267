"""Locust scenario for roomcast: players in game rooms over WebSocket (protocol v1).

Self-contained on purpose: it needs only `locust` and `websocket-client` (the `load` extra of
pyproject.toml) and never imports roomcast, so it also runs from a Kubernetes ConfigMap.
Three files, side by side in loadtests/ (and in the ConfigMap, loadtests/kustomization.yaml):
  locustfile.py       the user (what a player does, the statistics) and Locust's event hooks
  locust_protocol.py  the protocol client: messages, one socket and its reader, RoomState
  locust_knobs.py     the knobs below (options / environment) and the gateway URLs
Locust imports a locustfile by path with its directory on sys.path, so the two helpers are
imported by plain name, from any working directory. Run it from these files, not with a
worker's `-f -` (that sends the locustfile alone).

What one simulated user (one browser tab / player) does
-------------------------------------------------------
1. Opens a WebSocket to a gateway and says `hello` with its own `device_id`.
2. Enters the room of its group: `--room-size` consecutive users of a Locust process share a
   room. The group's first user sends `create_room` and hosts it (`update_room` status
   `in_progress`, and `completed` at the end); the others `join` it, retrying `not_found` every
   half second until it exists (after `--reply-timeout` s a member creates it itself).
3. Sends a protocol `ping` every `--ping-interval` s (from its own greenlet) and game events
   (`answer`/`submit` and `move`/`step`, with its send time in the payload) at `--event-rate`
   per second, each waiting for its `ack`.
4. With probability `--reconnect-prob` per second it drops its socket without a close frame
   (like a phone losing the network), reconnects to the *next* gateway of the list, says
   `hello` again with the same device_id (the room must be listed in `welcome.rooms`) and
   resumes with `join {since, epoch}`: `recovered` must be true and the replayed events must
   continue its seq without a hole.
5. After `--session-seconds` it waits until the echoes of its own acked events arrived,
   `leave`s, looks at the lobby (`list_rooms`) and enters its group's next room.
   When Locust stops a user it leaves its room (best effort, not counted) and closes.

Every room event is checked on receipt: per room the seqs must go up by exactly one, across
reconnects too. A gateway that skips, repeats or reorders an event fails the run.

Locust statistics (Type / Name)
-------------------------------
  WS / connect        TCP connect + WebSocket upgrade
  WS / hello          hello -> welcome
  WS / join           join -> joined (first join of a room)
  WS / create_room    create_room -> room_created
  WS / rejoin         join {since, epoch} -> joined after a drop (the replay follows it)
  WS / event          event -> ack (time until the sender's ack)
  WS / ping           ping -> pong
  WS / update_room    update_room -> ack (hosts only)
  WS / leave          leave -> left
  WS / list_rooms     list_rooms -> rooms
  DELIVERY / event    end-to-end latency: user A's send time (wall clock, in the payload) to
                      user B's receipt of the broadcast event, for every other member B; events
                      replayed after a resume are not counted. Across machines it includes
                      their clock offset (keep workers NTP-synced); negative values count as 0.
Failures (they make `--exit-code-on-error 1` fail the run):
  any `error` reply (on the request's own row; the error code is the failure message),
  a reply timeout (`--reply-timeout`), WS / connection (a socket the gateway closed or lost),
  SEQ / gap, SEQ / order (a repeated or backward seq), SEQ / resume (`recovered: false`, or
  the room missing from `welcome.rooms`), SEQ / echo (an acked event never came back to its
  sender), WS / unsolicited error (an `error` that answers no pending request).

Knobs (command line option / environment variable, default)
------------------------------------------------------------
  --room-size        ROOMCAST_ROOM_SIZE        4     users per room (also the room's max_players)
  --event-rate       ROOMCAST_EVENT_RATE       1.0   game events per second per user (0: only pings)
  --reconnect-prob   ROOMCAST_RECONNECT_PROB   0.01  chance per second that a user drops and resumes
  --ping-interval    ROOMCAST_PING_INTERVAL    5     seconds between pings (0: welcome's heartbeat_interval_ms)
  --session-seconds  ROOMCAST_SESSION_SECONDS  60    one game; then leave and enter the group's next room
  --payload-bytes    ROOMCAST_PAYLOAD_BYTES    0     padding added to each event payload
  --reply-timeout    ROOMCAST_REPLY_TIMEOUT    10    seconds to wait for any reply
  --roomcast-hosts   ROOMCAST_HOSTS            ""    comma-separated gateway URLs; overrides --host
  --host             LOCUST_HOST               ws://127.0.0.1:8765   one URL (or a comma-separated list)
  --forwarded-for    ROOMCAST_FORWARDED_FOR    ""    a network such as 10.77.0.0/16: each user sends
                                                     X-Forwarded-For with an address of its own
  (no --run-time)    ROOMCAST_DEFAULT_RUN_SECONDS 300  headless runs without --run-time stop after this
A URL without a path gets `/ws`; http(s):// is read as ws(s)://. Users are spread round-robin
over the URLs, so the members of one room sit on different replicas, and a resume goes to the
next one. Ids are `lt-<process token>-…` (prefix: ROOMCAST_ID_PREFIX), unique per Locust process.

The gateway's own admission limits apply to the load generator like to anyone:
CONNECT_RATE_PER_ADDRESS (new sockets per second per client address, burst 5x) is the one a
big run from one machine meets first (close 4008, a failure here). Raise it on the gateways
under test, or put the generator in their TRUSTED_PROXIES and use --forwarded-for.
JOIN_RATE, ROOM_CREATE_RATE and CONNECT_RATE_PER_DEVICE are per device and not reached by the
default scenario.

Commands (always bound the run: -u users, -t time)
-------------------------------------------------
  # headless, one gateway
  locust -f loadtests/locustfile.py --headless -u 50 -r 10 -t 30s --host ws://127.0.0.1:8765
  # headless, two replicas, statistics as CSV, non-zero exit code on any failure
  ROOMCAST_HOSTS=ws://127.0.0.1:8765/ws,ws://127.0.0.1:8766/ws locust -f loadtests/locustfile.py \
      --headless -u 200 -r 20 -t 2m --room-size 8 --event-rate 2 --reconnect-prob 0.02 \
      --csv test-output/locust --exit-code-on-error 1
  # distributed: one master, N workers (same file; the master sends host and knobs to workers)
  locust -f loadtests/locustfile.py --master --headless --expect-workers 2 -u 1000 -r 50 -t 5m \
      --host ws://127.0.0.1:8765
  locust -f loadtests/locustfile.py --worker --master-host 127.0.0.1      # once per worker
Rooms are formed inside each worker process (a room never spans two workers).
"""

from __future__ import annotations

import itertools
import logging
import os
import random
import time
import uuid
from collections.abc import Callable
from typing import Any

import gevent
import locust_protocol as proto  # next to this file (see above)
from locust import User, events, task
from locust_knobs import KNOBS, Settings, forwarded_for, gateway_urls
from locust_protocol import (
    Connection,
    ConnectionClosed,
    ReplyTimeout,
    RoomState,
    SeqError,
    ServerError,
    UnexpectedClose,
)

log = logging.getLogger("roomcast.locust")

ID_PREFIX = os.environ.get("ROOMCAST_ID_PREFIX", "lt")
PROCESS_TOKEN = uuid.uuid4().hex[:8]  # one per Locust process: workers never share ids



@events.init_command_line_parser.add_listener
def _add_knobs(parser: Any) -> None:
    group = parser.add_argument_group("roomcast", "roomcast scenario (see the top of loadtests/locustfile.py)")
    for _attr, option, env, typ, default, help_ in KNOBS:
        group.add_argument(option, type=typ, default=default, env_var=env, help=help_)



@events.init.add_listener
def _bound_run_time(environment: Any, **_kwargs: Any) -> None:
    """A headless run without --run-time would run forever: give it a default bound."""
    opts = environment.parsed_options
    if opts is None or getattr(opts, "worker", False) or getattr(opts, "run_time", None):
        return
    if getattr(opts, "headless", False) or getattr(opts, "autostart", False):
        opts.run_time = int(float(os.environ.get("ROOMCAST_DEFAULT_RUN_SECONDS", "300")))
        log.warning("roomcast: no --run-time given: this run stops after %d s (ROOMCAST_DEFAULT_RUN_SECONDS)",
                    opts.run_time)


@events.test_start.add_listener
def _log_settings(environment: Any, **_kwargs: Any) -> None:
    s = Settings(environment.parsed_options)
    log.info("roomcast: gateways %s; room_size=%d event_rate=%g/s reconnect_prob=%g/s ping=%gs session=%gs",
             gateway_urls(s, environment.host), s.room_size, s.event_rate, s.reconnect_prob,
             s.ping_interval, s.session_seconds)



# ------------------------------------------------------------------ the user


class RoomcastUser(User):
    """A player: see the module docstring."""

    _numbers = itertools.count()

    def __init__(self, environment: Any) -> None:
        super().__init__(environment)
        self.settings = Settings(environment.parsed_options)
        self.urls = gateway_urls(self.settings, self.host)
        self.number = next(RoomcastUser._numbers)
        self.room_group = self.number // self.settings.room_size
        self.device_id = f"{ID_PREFIX}-{PROCESS_TOKEN}-u{self.number}"
        self.device_token: str | None = None
        self.headers = forwarded_for(self.settings.forwarded_for, self.number)
        self.connects = 0
        self.session = 0
        self.moves = 0
        self.conn: Connection | None = None
        self.room: RoomState | None = None
        self.ping_every = self.settings.ping_interval
        self.heartbeat: gevent.Greenlet | None = None
        self.last_tick = time.monotonic()

    def wait_time(self) -> float:
        rate = self.settings.event_rate
        return random.uniform(0.5, 1.5) / rate if rate > 0 else 1.0

    # -------------------------------------------------------------- statistics

    def fire(self, rtype: str, name: str, ms: float, size: int = 0, exc: BaseException | None = None) -> None:
        self.environment.events.request.fire(request_type=rtype, name=name, response_time=ms,
                                             response_length=size, exception=exc, context={})

    def fail(self, rtype: str, name: str, exc: BaseException) -> None:
        self.fire(rtype, name, 0.0, 0, exc)

    def request(self, name: str, msg: dict[str, Any], expect: str,
                hook: Callable[[dict[str, Any]], None] | None = None,
                allowed_errors: tuple[str, ...] = ()) -> dict[str, Any] | None:
        """One request/reply pair, recorded as WS/<name>. Returns the reply (an `error` whose code
        is in `allowed_errors` is returned unrecorded), or None when it failed."""
        conn = self.conn
        if conn is None or conn.dead:
            return None
        try:
            reply, ms, size = conn.call(msg, self.settings.reply_timeout, hook)
        except ReplyTimeout as exc:
            self.fail("WS", name, exc)
            return None
        except ConnectionClosed:
            return None  # reported once by on_connection_lost (or it was our own drop)
        if reply.get("type") == expect:
            self.fire("WS", name, ms, size)
            return reply
        if reply.get("type") == "error" and reply.get("code") in allowed_errors:
            return reply
        exc2 = ServerError(f"error {reply.get('code')}") if reply.get("type") == "error" \
            else ServerError(f"unexpected reply {reply.get('type')}")
        self.fire("WS", name, ms, size, exc2)
        return None

    # -------------------------------------------------------------- lifecycle

    def on_start(self) -> None:
        self.heartbeat = gevent.spawn(self._heartbeat)
        self.connect()

    def on_stop(self) -> None:
        if self.heartbeat is not None:
            self.heartbeat.kill(block=False)
        conn, room = self.conn, self.room
        self.conn = self.room = None
        if conn is None:
            return
        if room is not None and room.ready and not conn.dead:
            try:  # best effort and not counted: the run is ending around us
                conn.call(proto.leave(room.room_id), 2.0)
            except Exception:
                pass
        conn.close()

    def connect(self) -> bool:
        """Open a socket to the next gateway and say hello; False (already recorded) on failure."""
        url = self.urls[(self.number + self.connects) % len(self.urls)]
        self.connects += 1
        start = time.perf_counter()
        try:
            conn = Connection(self, url, self.settings.reply_timeout, self.headers)
        except Exception as exc:  # refused, handshake error, timeout…
            self.fire("WS", "connect", (time.perf_counter() - start) * 1000.0, 0, exc)
            return False
        self.fire("WS", "connect", (time.perf_counter() - start) * 1000.0)
        self.conn = conn
        welcome = self.request("hello", proto.hello(self.device_id, self.device_token), "welcome")
        if welcome is None:
            self.conn = None
            conn.close()
            return False
        conn.welcome = welcome
        self.device_token = welcome.get("device_token") or self.device_token
        if self.settings.ping_interval <= 0:
            self.ping_every = max(0.05, welcome.get("heartbeat_interval_ms", 25000) / 1000.0)
        return True

    def _heartbeat(self) -> None:
        while True:
            gevent.sleep(self.ping_every or 5.0)
            conn = self.conn
            if conn is not None and conn.welcome is not None and not conn.dead:
                self.request("ping", proto.ping(), "pong")

    # -------------------------------------------------------------- the game

    @task
    def play(self) -> None:
        now = time.monotonic()
        elapsed, self.last_tick = now - self.last_tick, now
        if self.conn is None or self.conn.dead:
            if not self.connect_and_resume():
                gevent.sleep(1.0)  # back off before the next try
            return
        if self.room is None:
            self.enter_room()
            return
        if now - self.room.started >= self.settings.session_seconds:
            self.end_session()
            return
        if random.random() < self.settings.reconnect_prob * elapsed:
            self.drop_and_resume()
            return
        if self.settings.event_rate > 0:
            self.send_move()

    def room_id(self) -> str:
        return f"{ID_PREFIX}-{PROCESS_TOKEN}-g{self.room_group}-s{self.session}"

    def enter_room(self) -> None:
        """The group's first user creates the room (and hosts it); the others join it, waiting
        for it to exist. If the creator is late or gone, a member creates it after a while."""
        room = RoomState(self.room_id())
        self.room = room
        size = self.settings.room_size
        reply: dict[str, Any] | None
        if self.number % self.settings.room_size == 0:
            reply = self.request("create_room", proto.create_room(room.room_id, size), "room_created",
                                 hook=self._created_hook(room), allowed_errors=("conflict",))
        else:
            deadline = time.monotonic() + self.settings.reply_timeout
            while True:
                reply = self.request("join", proto.join(room.room_id), "joined",
                                     hook=self._joined_hook(room, since=None), allowed_errors=("not_found",))
                if reply is None or reply.get("type") != "error" or time.monotonic() >= deadline:
                    break
                gevent.sleep(random.uniform(0.3, 0.6))  # not created yet (JOIN_RATE allows 5/s)
            if reply is not None and reply.get("type") == "error":
                reply = self.request("create_room", proto.create_room(room.room_id, size), "room_created",
                                     hook=self._created_hook(room), allowed_errors=("conflict",))
        if reply is not None and reply.get("type") == "error":  # created meanwhile by another member
            reply = self.request("join", proto.join(room.room_id), "joined", hook=self._joined_hook(room, since=None))
        if reply is None:
            if self.room is room:
                self.room = None
            if self.conn is not None and not self.conn.dead:
                self.session += 1  # refused (recorded): do not hammer that room
            return
        if room.role == "host":
            self.update_room(room, "in_progress")

    def _joined_hook(self, room: RoomState, since: int | None) -> Callable[[dict[str, Any]], None]:
        def hook(msg: dict[str, Any]) -> None:
            if msg.get("type") != "joined":
                return
            room.role = msg.get("role", room.role)
            room.epoch = msg.get("epoch", room.epoch)
            head = int(msg["seq"])
            room.last_join = f"since={since} head={head} recovered={msg.get('recovered')} early={len(room.early)}"
            if since is None or not msg.get("recovered"):
                room.last_seq = head  # first join, or nothing to replay: start at the head
            room.replay_until = head
            self._flush(room)

        return hook

    def _created_hook(self, room: RoomState) -> Callable[[dict[str, Any]], None]:
        def hook(msg: dict[str, Any]) -> None:
            if msg.get("type") != "room_created":
                return
            room.role = "host"
            room.last_seq = room.replay_until = int(msg["room"]["seq"])
            self._flush(room)

        return hook

    def _flush(self, room: RoomState) -> None:
        room.ready = True
        early, room.early = room.early, []
        for msg, size in early:
            self.check_event(room, msg, size)

    def send_move(self) -> None:
        room = self.room
        assert room is not None
        self.moves += 1
        payload: dict[str, Any] = {"sent_ms": time.time() * 1000.0, "n": self.moves}
        if random.random() < 0.5:
            event_type, action = "answer", "submit"
            payload.update(question=self.moves // 3, choice=random.choice("ABCD"))
        else:
            event_type, action = "move", "step"
            payload.update(x=random.randint(0, 99), y=random.randint(0, 99))
        if self.settings.payload_bytes:
            payload["pad"] = "x" * self.settings.payload_bytes
        reply = self.request("event", proto.event(room.room_id, event_type, action, payload), "ack")
        if reply is not None:
            room.max_acked = max(room.max_acked, int(reply.get("seq", 0)))

    def update_room(self, room: RoomState, status: str) -> None:
        reply = self.request("update_room", proto.update_room(room.room_id, status, {"round": self.session}), "ack")
        if reply is not None:
            room.max_acked = max(room.max_acked, int(reply.get("seq", 0)))

    def end_session(self) -> None:
        room = self.room
        assert room is not None
        self._await_echoes(room)
        if room.role == "host":
            self.update_room(room, "completed")
            self._await_echoes(room)
        left = self.request("leave", proto.leave(room.room_id), "left")
        if left is None and (self.conn is None or self.conn.dead):
            return  # the socket went: resume the room first, leave on the next tick
        self.room = None
        self.session += 1
        self.request("list_rooms", proto.list_rooms(10), "rooms")

    def _await_echoes(self, room: RoomState) -> None:
        """Every event this user got an ack for must come back to it (the sender is a member too)."""
        deadline = time.monotonic() + self.settings.reply_timeout
        while room.last_seq < room.max_acked and time.monotonic() < deadline:
            if self.conn is None or self.conn.dead:
                return  # a resume will replay them
            gevent.sleep(0.02)
        if room.last_seq < room.max_acked:
            self.fail("SEQ", "echo", SeqError("acked event never delivered to its sender"))
            room.max_acked = room.last_seq

    # -------------------------------------------------------------- drop and resume

    def drop_and_resume(self) -> None:
        conn = self.conn
        self.conn = None
        if conn is not None:
            conn.drop()
        self.connect_and_resume()

    def connect_and_resume(self) -> bool:
        old = self.conn
        if old is not None:
            self.conn = None
            old.closing = True
            old.ws.shutdown()
        if not self.connect():
            return False
        room = self.room
        if room is None:
            return True
        assert self.conn is not None and self.conn.welcome is not None
        listed = {r.get("room_id") for r in self.conn.welcome.get("rooms", [])}
        if room.room_id not in listed:
            self.fail("SEQ", "resume", SeqError("room missing from welcome.rooms"))
        room.ready = False
        room.early = []
        since = room.last_seq
        reply = self.request("rejoin", proto.join(room.room_id, since, room.epoch), "joined",
                             hook=self._joined_hook(room, since=since))
        if reply is None:
            if self.conn is not None and not self.conn.dead:
                self.room = None  # refused (recorded): go on with the next room
                self.session += 1
            return False
        if not reply.get("recovered"):
            self.fail("SEQ", "resume", SeqError("join with since/epoch not recovered"))
        return True

    # -------------------------------------------------------------- from the reader greenlet

    def on_unsolicited(self, conn: Connection, msg: dict[str, Any], size: int) -> None:
        kind = msg.get("type")
        if kind == "event":
            room = self.room
            if conn is not self.conn or room is None or msg.get("room_id") != room.room_id:
                return  # a stale socket, or a room we left
            if not room.ready:
                room.early.append((msg, size))  # before its join reply: order them after it
                return
            self.check_event(room, msg, size)
        elif kind == "error" and "re" not in msg:
            self.fail("WS", "unsolicited error", ServerError(f"error {msg.get('code')}"))
        # a late reply to a timed-out request (already counted) or a pong without id: nothing to do

    def check_event(self, room: RoomState, msg: dict[str, Any], size: int) -> None:
        seq = int(msg["seq"])
        if seq <= room.last_seq:
            self.fail("SEQ", "order", SeqError("seq repeated or went backwards"))
            return
        if seq != room.last_seq + 1:
            self.fire("SEQ", "gap", 0.0, seq - room.last_seq - 1, SeqError("seq gap: events missing"))
            conn = self.conn
            log.warning("roomcast: seq gap for %s in %s: expected %d, got %d (%s, on %s; last join: %s)",
                        self.device_id, room.room_id, room.last_seq + 1, seq, msg.get("event_type"),
                        conn.welcome.get("node") if conn is not None and conn.welcome else "?", room.last_join)
        room.last_seq = seq
        if seq <= room.replay_until:
            return
        payload = msg.get("payload")
        sender = msg.get("from") or {}
        if isinstance(payload, dict) and "sent_ms" in payload and sender.get("device_id") != self.device_id:
            latency = time.time() * 1000.0 - float(payload["sent_ms"])
            self.fire("DELIVERY", "event", max(0.0, latency), size)

    def on_connection_lost(self, conn: Connection, code: int | None, error: BaseException | None) -> None:
        if conn is not self.conn:
            return
        if code is not None:
            self.fail("WS", "connection", UnexpectedClose(f"closed by the gateway with code {code}"))
        else:
            self.fail("WS", "connection", UnexpectedClose(f"socket lost: {type(error).__name__}"))
