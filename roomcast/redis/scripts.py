"""Lua scripts: each room operation is one atomic step on the room's keys (one hash slot).

`emit` gives the next seq, appends the frame to the room's stream (entry id `<seq>-0`,
trimmed exactly to ROOM_HISTORY_MAXLEN events and ROOM_HISTORY_MAX_BYTES bytes) and publishes it to the room's channel in the same step, so replay
and live delivery always agree (design invariant 2). Frames are built by concatenation:
`{"type":"event","room_id":R,"seq":N,` + tail, where the tail is either made by the
gateway (`protocol.event_tail`) or, for participant events, by `ptail` below, which must
produce the same shape (a contract test compares the two).

Room keys: KEYS[1] room hash, KEYS[2] members hash, KEYS[3] participants set,
KEYS[4] stream. Member values are "role|status|sockets|user_id|joined_at"; no field
can contain "|" (roles are fixed words, ids are validated by the protocol). `sockets` is
the comma-separated list of the device's sockets that joined the room and are still in it
(socket ids never contain "," or "|"); the participant is `active` while it is not empty,
and a socket acts in a room only while it is in that list. A participant that leaves is
removed from the members hash (its history is in the stream / Postgres).
Every script returns a table whose first element is 'ok' or 'err' (then an error code).

Idempotency keys (design invariant 11): KEYS[5] hash key -> seq, KEYS[6] zset key -> first
use (ms). `emit_once` below is the one place that decides whether a key was used: any
script that emits on behalf of a sender (PUBLISH; a server API publish too) calls it with the
room's six keys (RedisStore.room_keys), so the check and the seq are one atomic step.
"""

from __future__ import annotations

PRELUDE = r"""
local function mparse(v)
  return string.match(v, '^([^|]*)|([^|]*)|([^|]*)|([^|]*)|([^|]*)$')
end
local function mfmt(role, status, sock, user, joined)
  return role .. '|' .. status .. '|' .. sock .. '|' .. user .. '|' .. joined
end
-- `h`: the room hash's seq, hbytes and flushed (HMGET), read by the caller with what else it
-- needs of the hash (PUBLISH: one HMGET per event). One read and one write of the room hash per
-- event (seq, updated_at and the stream's byte total `hbytes` together), instead of an
-- HINCRBY/HSET each: each command a script calls costs Redis about as much again around it
-- (docs/benchmarks.md, "Redis cost per event (issue 13)").
local function emit_h(h, room_id, tail, now, maxlen)
  local seq = tonumber(h[1] or '0') + 1
  local frame = '{"type":"event","room_id":"' .. room_id .. '","seq":' .. seq .. ',' .. tail
  redis.call('XADD', KEYS[4], seq .. '-0', 'f', frame)
  if maxlen == '0' then  -- '0': no trimming here at all
    redis.call('HSET', KEYS[1], 'seq', seq, 'updated_at', now)
  else
    -- maxlen is "<events>:<bytes>" (or "<events>"): drop the oldest entries, exactly, until
    -- both hold; the newest is always kept. `hbytes` is the frames' total in the stream.
    local most, most_bytes = string.match(maxlen, '^(%d+):(%d+)$')
    most, most_bytes = tonumber(most or maxlen), tonumber(most_bytes or '0')
    local kept = tonumber(h[2] or '0') + #frame
    local n = redis.call('XLEN', KEYS[4])
    -- History mode ("0:<bytes>"): only events Postgres holds (seq <= `flushed`, which the
    -- flusher sets) may go, and none by count (the flusher keeps its own count).
    local flushed = math.huge
    if most == 0 then flushed = tonumber(h[3] or '0') end
    while n > 1 and ((most > 0 and n > most) or (most_bytes > 0 and kept > most_bytes)) do
      local old = redis.call('XRANGE', KEYS[4], '-', '+', 'COUNT', 1)[1]
      if tonumber(string.match(old[1], '^(%d+)')) > flushed then break end
      redis.call('XDEL', KEYS[4], old[1])
      kept = kept - #(old[2][2] or '')
      n = n - 1
    end
    if n == 1 then kept = #frame end  -- resync after any drift
    redis.call('HSET', KEYS[1], 'seq', seq, 'updated_at', now, 'hbytes', kept)
  end
  redis.call('SPUBLISH', 'ws:room:{' .. room_id .. '}:events', frame)
  return seq
end
local function emit(room_id, tail, now, maxlen)
  return emit_h(redis.call('HMGET', KEYS[1], 'seq', 'hbytes', 'flushed'), room_id, tail, now, maxlen)
end
-- Idempotency (KEYS[5] hash key -> seq, KEYS[6] zset key -> first use in ms). A key used
-- within `window` ms returns its first seq and emits nothing. Each keyed emit first drops
-- up to 8 expired keys (so the set follows the rate), then, at `cap` keys, the oldest ones:
-- the room's keys are then those of the last `cap` keyed events (the documented memory
-- bound); both keys expire `window` after the last keyed emit. ikey '' = no key.
local function idem_seen(ikey, now, window)
  if ikey == '' then return nil end
  local at = redis.call('ZSCORE', KEYS[6], ikey)
  if at and tonumber(at) > tonumber(now) - tonumber(window) then
    return tonumber(redis.call('HGET', KEYS[5], ikey))
  end
  return nil
end
local function idem_note(ikey, seq, now, window, cap)
  local old = redis.call('ZRANGEBYSCORE', KEYS[6], '-inf', tonumber(now) - tonumber(window), 'LIMIT', 0, 8)
  if #old > 0 then
    redis.call('ZREM', KEYS[6], unpack(old))
    redis.call('HDEL', KEYS[5], unpack(old))
  end
  local over = redis.call('ZCARD', KEYS[6]) - tonumber(cap) + 1
  if over > 0 then
    local popped = redis.call('ZPOPMIN', KEYS[6], math.min(over, 64))
    for i = 1, #popped, 2 do redis.call('HDEL', KEYS[5], popped[i]) end
  end
  redis.call('HSET', KEYS[5], ikey, seq)
  redis.call('ZADD', KEYS[6], now, ikey)
  redis.call('PEXPIRE', KEYS[5], window)
  redis.call('PEXPIRE', KEYS[6], window)
end
-- emit, unless `ikey` was used within the window: returns (seq, 1 if it was a duplicate).
-- `h` (optional): as for emit_h, already read by the caller.
local function emit_once(room_id, tail, now, maxlen, ikey, window, cap, h)
  local seen = idem_seen(ikey, now, window)
  if seen then return seen, 1 end
  local seq
  if h then seq = emit_h(h, room_id, tail, now, maxlen) else seq = emit(room_id, tail, now, maxlen) end
  if ikey ~= '' then idem_note(ikey, seq, now, window, cap) end
  return seq, 0
end
local function ptail(kind, device, role, reason, sender, now)
  local payload = '{"device_id":"' .. device .. '","role":"' .. role .. '"'
  if reason ~= '' then payload = payload .. ',"reason":"' .. reason .. '"' end
  return '"event_type":"' .. kind .. '","action":null,"payload":' .. payload .. '},"from":'
    .. sender .. ',"ts":' .. now .. '}'
end
-- After a room's last event: mark it closed, every participant left; returns their devices.
-- `status_at_close` keeps the status it had (history keeps a completed game `completed`).
local function close_room(now, ttl)
  local before = redis.call('HGET', KEYS[1], 'status') or ''
  redis.call('HSET', KEYS[1], 'status', 'closed', 'closed_at', now, 'players', 0, 'occupants', 0,
    'status_at_close', before)
  local devices = {}
  local all = redis.call('HGETALL', KEYS[2])
  for i = 1, #all, 2 do
    local mr, ms, msock, mu, mj = mparse(all[i + 1])
    if ms ~= 'left' then
      redis.call('HSET', KEYS[2], all[i], mfmt(mr, 'left', msock, mu, mj))
      devices[#devices + 1] = all[i]
    end
  end
  redis.call('DEL', KEYS[3])
  if KEYS[6] then redis.call('DEL', KEYS[5], KEYS[6]) end  -- no event follows: no key to remember
  if ttl ~= '0' then  -- history mode passes '0': the flusher expires the room once persisted
    for i = 1, 4 do redis.call('PEXPIRE', KEYS[i], ttl) end
  end
  return devices
end
local function open_room()
  local st = redis.call('HGET', KEYS[1], 'status')
  if not st then return nil, 'not_found' end
  if st == 'closed' then return nil, 'room_closed' end
  return st, nil
end
"""

# A member's joined sockets: "a,b,c" (see the module docstring).
SOCKETS = r"""
local function has_sock(socks, s)
  return string.find(',' .. socks .. ',', ',' .. s .. ',', 1, true) ~= nil
end
local function add_sock(socks, s)
  if socks == '' then return s end
  return socks .. ',' .. s
end
local function del_sock(socks, s)
  local out = {}
  for x in string.gmatch(socks, '[^,]+') do
    if x ~= s then out[#out + 1] = x end
  end
  return table.concat(out, ',')
end
"""

# A token bucket (roomcast/limits: `take_tokens` line by line, compared with it by a contract
# test): take_bucket(key, rate (tokens/s), burst, now_ms, cost) -> 0 if taken, else ms to wait.
# The bucket hash {tokens, at} expires once full again. roomcast.limits.redis.BUCKET runs it
# alone; CONNECT and ADMIT_JOIN take a device's bucket (keys.device_limit) in their own step.
TAKE_BUCKET = r"""
local function take_bucket(key, rate, burst, now, cost)
  rate, burst, now, cost = tonumber(rate), tonumber(burst), tonumber(now), tonumber(cost)
  local v = redis.call('HMGET', key, 'tokens', 'at')
  local tokens, at = tonumber(v[1]), tonumber(v[2])
  if not tokens then tokens, at = burst, now end
  tokens = math.min(burst, tokens + math.max(0, now - at) * rate / 1000)
  local wait = 0
  if cost == 0 then  -- a peek: would one token be available?
    if tokens < 1 then wait = math.max(1, math.ceil((1 - tokens) * 1000 / rate)) end
  elseif cost < 0 then  -- a refund: give tokens back, up to the burst
    tokens = math.min(burst, tokens - cost)
  elseif tokens >= cost then tokens = tokens - cost else wait = math.max(1, math.ceil((cost - tokens) * 1000 / rate)) end
  redis.call('HSET', key, 'tokens', tostring(tokens), 'at', now)
  redis.call('PEXPIRE', key, math.ceil((burst - tokens) * 1000 / rate) + 1000)
  return wait
end
"""

# A hello's connection record, in one step on the device's slot. KEYS[1] connection hash,
# KEYS[2] device rooms set, then KEYS[3] the device's connect bucket if ARGV[5] (rate) is not
# '', then, if ARGV[7] (the device id) is not '', the socket key and the presence set: on a
# single Redis they are written in this same step; on a Redis Cluster they are in other slots
# and follow in the next batch, once this one has counted the socket.
# ARGV: socket now user status rate('' = no bucket) burst device('' = socket key and presence later).
# Returns {wait} when the bucket is short (nothing else is changed), else
# {0, connections (this one included), open sockets (this one included), room ids}.
CONNECT = TAKE_BUCKET + r"""
local k = 3
if ARGV[5] ~= '' then
  local wait = take_bucket(KEYS[3], ARGV[5], ARGV[6], ARGV[2], 1)
  if wait > 0 then return {wait} end
  k = 4
end
local count = redis.call('HINCRBY', KEYS[1], 'connections', 1)
local sockets = redis.call('HINCRBY', KEYS[1], 'sockets', 1)
redis.call('HSET', KEYS[1], 'socket_id', ARGV[1], 'connected_at', ARGV[2], 'last_heartbeat', ARGV[2],
  'user_id', ARGV[3], 'status', ARGV[4])
redis.call('PERSIST', KEYS[1])
if ARGV[7] ~= '' then
  redis.call('SET', KEYS[k], ARGV[7])
  redis.call('ZADD', KEYS[k + 1], ARGV[2], ARGV[1])
end
return {0, count, sockets, redis.call('SMEMBERS', KEYS[2])}
"""

# What a join needs to know of its device before it goes ahead, in one step on the device's
# slot: take the device's join bucket, then count the device's rooms other than the one
# joined. KEYS[1] device rooms set, KEYS[2] the device's join bucket. ARGV: room_id('' =
# count every room) rate burst now count('1'/'0'). Returns {wait, rooms} (rooms -1: not counted).
ADMIT_JOIN = TAKE_BUCKET + r"""
local wait = take_bucket(KEYS[2], ARGV[2], ARGV[3], ARGV[4], 1)
if wait > 0 or ARGV[5] ~= '1' then return {wait, -1} end
local n = redis.call('SCARD', KEYS[1])
if ARGV[1] ~= '' then n = n - redis.call('SISMEMBER', KEYS[1], ARGV[1]) end
return {0, n}
"""

def split_prelude(source: str) -> tuple[str, str]:
    """(helpers, body) of a script: the helper functions it starts with (PRELUDE, SOCKETS) and
    the rest. A Redis Function library defines the helpers once, at load, and runs the body per
    call (roomcast/redis/batch.py, Script); EVALSHA runs the whole source."""
    for helpers in (PRELUDE + SOCKETS, PRELUDE, TAKE_BUCKET):
        if source.startswith(helpers):
            return helpers, source[len(helpers):]
    return "", source


# ARGV: room_id game_type max_players game_data now device socket user sender password_hash epoch maxlen
#       spectator_events('1'/'0')   (maxlen '0' = do not trim: history mode)
CREATE = PRELUDE + r"""
local room_id, now, device = ARGV[1], ARGV[5], ARGV[6]
if redis.call('EXISTS', KEYS[1]) == 1 then return {'err', 'conflict'} end
redis.call('DEL', KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6])
redis.call('HSET', KEYS[1], 'room_id', room_id, 'game_type', ARGV[2], 'status', 'waiting',
  'max_players', ARGV[3], 'game_data', ARGV[4], 'created_at', now, 'created_by', device,
  'password_hash', ARGV[10], 'epoch', ARGV[11], 'seq', 0, 'players', 1, 'gd_ver', 0, 'updated_at', now,
  'creator_user', ARGV[8], 'spectator_events', ARGV[13], 'occupants', 1)
redis.call('HSET', KEYS[2], device, mfmt('host', 'active', ARGV[7], ARGV[8], now))
redis.call('SADD', KEYS[3], ARGV[7])
emit(room_id, ptail('participant_joined', device, 'host', '', ARGV[9], now), now, ARGV[12])
return {'ok', 0, ARGV[11], 'host', 0, redis.call('HGETALL', KEYS[1]), redis.call('HGETALL', KEYS[2]), {}}
"""

# ARGV: room_id device socket user role since(-1) epoch('') now sender maxlen max_participants replay_chunk
# Returns {'ok', head, epoch, role, recovered, room, members, replay, first kept, rest, was a
# participant already (1/0: a fresh join has no entry in the prune queue to take out)}.
JOIN = PRELUDE + SOCKETS + r"""
local room_id, device, sock, user, role = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5]
local since, want_epoch, now, sender, maxlen = tonumber(ARGV[6]), ARGV[7], ARGV[8], ARGV[9], ARGV[10]
local _, err = open_room()
if err then return {'err', err} end
local head = tonumber(redis.call('HGET', KEYS[1], 'seq'))
-- Only the replay's first events (COUNT chunk) are read here, before this join adds its
-- own event (that XADD may trim the stream); the gateway reads the rest in chunks of the
-- same size. recovered: -1 no replay, 0 some events after `since` are no longer kept, 1
-- every one is. rest: the last seq read here if the replay goes on, else -1.
local epoch = redis.call('HGET', KEYS[1], 'epoch')
local recovered, first, replay, rest = -1, head + 1, {}, -1
if since >= 0 and since <= head and (want_epoch == '' or want_epoch == epoch) then
  recovered = 1
  if since < head then
    local e = redis.call('XRANGE', KEYS[4], (since + 1) .. '-0', head .. '-0', 'COUNT', tonumber(ARGV[12]))
    if #e > 0 then first = tonumber(string.match(e[1][1], '^(%d+)')) end
    if first ~= since + 1 then recovered = 0 end
    if recovered == 1 or since == 0 then
      for i, x in ipairs(e) do replay[i] = x[2][2] end
      if #e > 0 then
        local last = tonumber(string.match(e[#e][1], '^(%d+)'))
        if last < head then rest = last end
      end
    end
  end
end
local v = redis.call('HGET', KEYS[2], device)
local r, st, socks, _u, joined
if v then r, st, socks, _u, joined = mparse(v) end
if v and st ~= 'left' then
  role = r
  if not has_sock(socks, sock) then
    redis.call('HSET', KEYS[2], device, mfmt(r, 'active', add_sock(socks, sock), user, joined))
    redis.call('SADD', KEYS[3], sock)
    -- back after a drop, or a new socket (it may replace one not yet known to be lost)
    emit(room_id, ptail('participant_reconnected', device, r, '', sender, now), now, maxlen)
  elseif st ~= 'active' then
    redis.call('HSET', KEYS[2], device, mfmt(r, 'active', socks, user, joined))
  end
else
  if tonumber(redis.call('HGET', KEYS[1], 'occupants') or '0') >= tonumber(ARGV[11]) then
    return {'err', 'room_full'}
  end
  if role ~= 'spectator' then
    local players = tonumber(redis.call('HGET', KEYS[1], 'players'))
    if players >= tonumber(redis.call('HGET', KEYS[1], 'max_players')) then
      return {'err', 'room_full'}
    end
    redis.call('HINCRBY', KEYS[1], 'players', 1)
  end
  redis.call('HINCRBY', KEYS[1], 'occupants', 1)
  redis.call('HDEL', KEYS[2], device)
  redis.call('HSET', KEYS[2], device, mfmt(role, 'active', sock, user, now))
  redis.call('SADD', KEYS[3], sock)
  emit(room_id, ptail('participant_joined', device, role, '', sender, now), now, maxlen)
end
return {'ok', head, epoch, role, recovered, redis.call('HGETALL', KEYS[1]), redis.call('HGETALL', KEYS[2]), replay,
  first, rest, (v and st ~= 'left') and 1 or 0}
"""

# ARGV: room_id device now sender reason maxlen only_if_disconnected(0/1) socket('' = the device)
# A socket's leave takes that socket out of the room; the participant leaves with its last
# joined socket (or when pruned: socket ''). Returns {'ok', 1} when the participant left.
LEAVE = PRELUDE + SOCKETS + r"""
local room_id, device, now, sender, reason, maxlen = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6]
local st = redis.call('HGET', KEYS[1], 'status')
if not st then return {'err', 'not_found'} end
local v = redis.call('HGET', KEYS[2], device)
if not v then return {'err', 'not_member'} end
local r, pst, socks, user, joined = mparse(v)
if pst == 'left' then return {'err', 'not_member'} end
if ARGV[7] == '1' and pst ~= 'disconnected' then return {'ok', 0} end
local sock = ARGV[8] or ''
if sock ~= '' then
  if not has_sock(socks, sock) then return {'err', 'not_member'} end
  redis.call('SREM', KEYS[3], sock)
  local rest = del_sock(socks, sock)
  if rest ~= '' then
    redis.call('HSET', KEYS[2], device, mfmt(r, pst, rest, user, joined))
    return {'ok', 0}
  end
end
for s in string.gmatch(socks, '[^,]+') do redis.call('SREM', KEYS[3], s) end
redis.call('HDEL', KEYS[2], device)
redis.call('HINCRBY', KEYS[1], 'occupants', -1)
if r ~= 'spectator' then redis.call('HINCRBY', KEYS[1], 'players', -1) end
if st ~= 'closed' then
  emit(room_id, ptail('participant_left', device, r, reason, sender, now), now, maxlen)
  if r == 'host' then
    -- Hand the room over: the longest-present player, active ones first.
    local best, best_rank, best_v
    local all = redis.call('HGETALL', KEYS[2])
    for i = 1, #all, 2 do
      local mr, ms, msock, mu, mj = mparse(all[i + 1])
      if ms ~= 'left' and mr == 'player' then
        local rank = (ms == 'active' and 0 or 1e15) + tonumber(mj)
        if not best_rank or rank < best_rank then best, best_rank, best_v = all[i], rank, {msock, ms, mu, mj} end
      end
    end
    if best then
      redis.call('HSET', KEYS[2], best, mfmt('host', best_v[2], best_v[1], best_v[3], best_v[4]))
      emit(room_id, ptail('host_changed', best, 'host', 'host_left', 'null', now), now, maxlen)
    end
  end
end
return {'ok', 1}
"""

# ARGV: room_id device tail now maxlen socket idempotency_key('') window_ms max_keys
# Returns {'ok', seq, duplicate(0/1)}.
PUBLISH = PRELUDE + SOCKETS + r"""
-- The room hash is read once: open_room's status, the spectator rule and emit's fields.
local h = redis.call('HMGET', KEYS[1], 'status', 'spectator_events', 'seq', 'hbytes', 'flushed')
if not h[1] then return {'err', 'not_found'} end
if h[1] == 'closed' then return {'err', 'room_closed'} end
local v = redis.call('HGET', KEYS[2], ARGV[2])
if not v then return {'err', 'not_member'} end
local _r, pst, socks = mparse(v)
if pst == 'left' or not has_sock(socks, ARGV[6]) then return {'err', 'not_member'} end
if string.sub(v, 1, 10) == 'spectator|' and h[2] ~= '1' then
  return {'err', 'forbidden_spectator'}
end
local seq, dup = emit_once(ARGV[1], ARGV[3], ARGV[4], ARGV[5], ARGV[7] or '', ARGV[8] or '0', ARGV[9] or '1',
  {h[3], h[4], h[5]})
return {'ok', seq, dup}
"""

# ARGV: room_id device tail now maxlen status('') game_data('') expected_gd_ver max_game_data_bytes socket
# Returns {'ok', seq, status before}.
UPDATE = PRELUDE + SOCKETS + r"""
local old_status, err = open_room()
if err then return {'err', err} end
local v = redis.call('HGET', KEYS[2], ARGV[2])
if not v then return {'err', 'not_member'} end
local r, pst, socks = mparse(v)
if pst == 'left' or not has_sock(socks, ARGV[10]) then return {'err', 'not_member'} end
if r ~= 'host' then return {'err', 'forbidden'} end
if ARGV[7] ~= '' then
  if redis.call('HGET', KEYS[1], 'gd_ver') ~= ARGV[8] then return {'err', 'retry'} end
  -- the size is checked here, after the room and the caller, as the memory store does
  if #ARGV[7] > tonumber(ARGV[9]) then return {'err', 'bad_request'} end
  redis.call('HSET', KEYS[1], 'game_data', ARGV[7])
  redis.call('HINCRBY', KEYS[1], 'gd_ver', 1)
end
if ARGV[6] ~= '' then redis.call('HSET', KEYS[1], 'status', ARGV[6]) end
return {'ok', emit(ARGV[1], ARGV[3], ARGV[4], ARGV[5]), old_status}
"""

# ARGV: room_id device tail now maxlen ttl_ms socket
CLOSE = PRELUDE + SOCKETS + r"""
local room_id, device, now, ttl = ARGV[1], ARGV[2], ARGV[4], ARGV[6]
local _, err = open_room()
if err then return {'err', err} end
local v = redis.call('HGET', KEYS[2], device)
if not v then return {'err', 'not_member'} end
local r, pst, socks = mparse(v)
if pst == 'left' or not has_sock(socks, ARGV[7]) then return {'err', 'not_member'} end
if r ~= 'host' then return {'err', 'forbidden'} end
local seq = emit(room_id, ARGV[3], now, ARGV[5])
return {'ok', seq, close_room(now, ttl)}
"""

# ARGV: room_id device socket now reason maxlen
# The socket leaves the room's list; the participant goes `disconnected` with its last one.
DISCONNECT = PRELUDE + SOCKETS + r"""
local room_id, device, sock, now = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local st = redis.call('HGET', KEYS[1], 'status')
if not st or st == 'closed' then return {'ok', 0} end
local v = redis.call('HGET', KEYS[2], device)
if not v then return {'ok', 0} end
local r, pst, socks, mu, mj = mparse(v)
if pst == 'left' or not has_sock(socks, sock) then return {'ok', 0} end
redis.call('SREM', KEYS[3], sock)
local rest = del_sock(socks, sock)
if rest ~= '' or pst ~= 'active' then
  redis.call('HSET', KEYS[2], device, mfmt(r, pst, rest, mu, mj))
  return {'ok', 0}
end
redis.call('HSET', KEYS[2], device, mfmt(r, 'disconnected', '', mu, mj))
emit(room_id, ptail('participant_disconnected', device, r, ARGV[5], 'null', now), now, ARGV[6])
return {'ok', 1}
"""

# Refresh a lease only if we hold it. KEYS[1] lease; ARGV: holder ttl_ms
LEASE_RENEW = r"""
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
return 0
"""

# Close a room on the server's own behalf (cleanup job: abandoned rooms), only if it has
# had no event since `idle_before` and no member is connected (a quiet lobby whose players
# are online is not abandoned; the last one to go emits participant_disconnected, so the
# room then closes `idle_before` after that). ARGV: room_id now maxlen ttl_ms idle_before tail
CLOSE_IDLE = PRELUDE + r"""
local room_id, now, maxlen, ttl = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local st = redis.call('HGET', KEYS[1], 'status')
if not st or st == 'closed' then return {'ok', 0, {}} end
if tonumber(redis.call('HGET', KEYS[1], 'updated_at')) >= tonumber(ARGV[5]) then return {'ok', 0, {}} end
local all = redis.call('HVALS', KEYS[2])
for i = 1, #all do
  local _r, ms = mparse(all[i])
  if ms == 'active' then return {'ok', 0, {}} end
end
local seq = emit(room_id, ARGV[6], now, maxlen)
return {'ok', seq, close_room(now, ttl)}
"""

# Rebuild a room Redis lost from its history in Postgres: seq continues after the last
# persisted event, under a new epoch; every participant comes back `disconnected`; the
# room keeps its password hash (ARGV[13], '' = no password; the caller refuses to restore
# a room whose hash history does not know).
# ARGV: room_id game_type status max_players game_data created_at created_by creator_user
#       seq epoch now players password_hash, then (device, member value) pairs
RESTORE = r"""
if redis.call('EXISTS', KEYS[1]) == 1 then return {'ok', 0} end
if not ARGV[13] then return {'err', 'bad_request'} end
redis.call('DEL', KEYS[2], KEYS[3], KEYS[4])
redis.call('HSET', KEYS[1], 'room_id', ARGV[1], 'game_type', ARGV[2], 'status', ARGV[3],
  'max_players', ARGV[4], 'game_data', ARGV[5], 'created_at', ARGV[6], 'created_by', ARGV[7],
  'creator_user', ARGV[8], 'password_hash', ARGV[13], 'epoch', ARGV[10], 'seq', ARGV[9], 'players', ARGV[12],
  'gd_ver', 0, 'updated_at', ARGV[11], 'restored_at', ARGV[11], 'occupants', (#ARGV - 13) / 2)
for i = 14, #ARGV, 2 do redis.call('HSET', KEYS[2], ARGV[i], ARGV[i + 1]) end
return {'ok', 1}
"""

# A device token's hash (keys.device_token), set (new '' = deleted) only if the key holds
# `old` ('' = absent), so of two hellos racing for a new device id (or two rotations)
# exactly one wins. KEYS[1] token key; ARGV: new_hash('') old_hash('') ttl_ms
DEVICE_TOKEN_SET = r"""
local cur = redis.call('GET', KEYS[1])
if (ARGV[2] == '' and cur) or (ARGV[2] ~= '' and cur ~= ARGV[2]) then return 0 end
if ARGV[1] == '' then redis.call('DEL', KEYS[1]) else redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[3]) end
return 1
"""

# The flusher's trim (history mode) once Postgres holds a room's events up to `persisted`:
# note it in the room hash (`flushed`, read by emit's byte trim) and delete the entries
# before `min_seq`, keeping the room's `hbytes` right. KEYS[1] room hash, KEYS[2] stream;
# ARGV: min_seq persisted
TRIM_PERSISTED = r"""
local min_seq, persisted = tonumber(ARGV[1]), tonumber(ARGV[2])
if redis.call('EXISTS', KEYS[1]) == 0 then  -- the room's state is gone: no hash to keep right
  redis.call('XTRIM', KEYS[2], 'MINID', min_seq .. '-0')
  return 0
end
if persisted > tonumber(redis.call('HGET', KEYS[1], 'flushed') or '0') then
  redis.call('HSET', KEYS[1], 'flushed', persisted)
end
local freed = 0
if min_seq > 1 then
  while true do
    local old = redis.call('XRANGE', KEYS[2], '-', (min_seq - 1) .. '-0', 'COUNT', 100)
    if #old == 0 then break end
    local ids = {}
    for i, e in ipairs(old) do
      ids[i] = e[1]
      freed = freed + #(e[2][2] or '')
    end
    redis.call('XDEL', KEYS[2], unpack(ids))
  end
end
if freed > 0 and redis.call('HEXISTS', KEYS[1], 'hbytes') == 1 then
  redis.call('HINCRBY', KEYS[1], 'hbytes', -freed)
end
return freed
"""

# ---- the server API: a service (an API key's name) acts on rooms without being a member.

# A room owned by a service: no member, no host, no event (seq 0).
# ARGV: room_id game_type max_players game_data now created_by password_hash epoch spectator_events
SVC_CREATE = r"""
if redis.call('EXISTS', KEYS[1]) == 1 then return {'err', 'conflict'} end
redis.call('DEL', KEYS[2], KEYS[3], KEYS[4])
redis.call('HSET', KEYS[1], 'room_id', ARGV[1], 'game_type', ARGV[2], 'status', 'waiting',
  'max_players', ARGV[3], 'game_data', ARGV[4], 'created_at', ARGV[5], 'created_by', ARGV[6],
  'password_hash', ARGV[7], 'epoch', ARGV[8], 'seq', 0, 'players', 0, 'gd_ver', 0, 'updated_at', ARGV[5],
  'creator_user', '', 'spectator_events', ARGV[9], 'occupants', 0)
return {'ok', 0, ARGV[8], '', -1, redis.call('HGETALL', KEYS[1]), {}, {}}
"""

# The room hash and its members, in one step. Returns {'ok', room pairs, member pairs}.
ROOM_READ = r"""
if redis.call('EXISTS', KEYS[1]) == 0 then return {'err', 'not_found'} end
return {'ok', redis.call('HGETALL', KEYS[1]), redis.call('HGETALL', KEYS[2])}
"""

# ARGV: room_id tail now maxlen idempotency_key('') window_ms max_keys  -> {'ok', seq, dup}
SVC_PUBLISH = PRELUDE + r"""
local _, err = open_room()
if err then return {'err', err} end
local seq, dup = emit_once(ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5] or '', ARGV[6] or '0', ARGV[7] or '1')
return {'ok', seq, dup}
"""

# ARGV: room_id tail now maxlen status('') game_data('') expected_gd_ver max_game_data_bytes
# Returns {'ok', seq, status before}.
SVC_UPDATE = PRELUDE + r"""
local old_status, err = open_room()
if err then return {'err', err} end
if ARGV[6] ~= '' then
  if redis.call('HGET', KEYS[1], 'gd_ver') ~= ARGV[7] then return {'err', 'retry'} end
  if #ARGV[6] > tonumber(ARGV[8]) then return {'err', 'bad_request'} end
  redis.call('HSET', KEYS[1], 'game_data', ARGV[6])
  redis.call('HINCRBY', KEYS[1], 'gd_ver', 1)
end
if ARGV[5] ~= '' then redis.call('HSET', KEYS[1], 'status', ARGV[5]) end
return {'ok', emit(ARGV[1], ARGV[2], ARGV[3], ARGV[4]), old_status}
"""

# ARGV: room_id tail now maxlen ttl_ms. Returns {'ok', seq, devices that left}.
SVC_CLOSE = PRELUDE + r"""
local _, err = open_room()
if err then return {'err', err} end
local seq = emit(ARGV[1], ARGV[2], ARGV[3], ARGV[4])
return {'ok', seq, close_room(ARGV[3], ARGV[5])}
"""

# A participant leaves with every socket it has there: `participant_left` (reason
# `kicked`), then, if it was the host of a player-owned room, `host_changed`.
# ARGV: room_id device now sender maxlen. Returns {'ok', seq of participant_left}.
KICK = PRELUDE + r"""
local room_id, device, now, sender, maxlen = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5]
local _, err = open_room()
if err then return {'err', err} end
local v = redis.call('HGET', KEYS[2], device)
if not v then return {'err', 'not_member'} end
local r, pst, socks = mparse(v)
if pst == 'left' then return {'err', 'not_member'} end
for s in string.gmatch(socks, '[^,]+') do redis.call('SREM', KEYS[3], s) end
redis.call('HDEL', KEYS[2], device)
redis.call('HINCRBY', KEYS[1], 'occupants', -1)
if r ~= 'spectator' then redis.call('HINCRBY', KEYS[1], 'players', -1) end
local seq = emit(room_id, ptail('participant_left', device, r, 'kicked', sender, now), now, maxlen)
if r == 'host' then
  local best, best_rank, best_v
  local all = redis.call('HGETALL', KEYS[2])
  for i = 1, #all, 2 do
    local mr, ms, msock, mu, mj = mparse(all[i + 1])
    if ms ~= 'left' and mr == 'player' then
      local rank = (ms == 'active' and 0 or 1e15) + tonumber(mj)
      if not best_rank or rank < best_rank then best, best_rank, best_v = all[i], rank, {msock, ms, mu, mj} end
    end
  end
  if best then
    redis.call('HSET', KEYS[2], best, mfmt('host', best_v[2], best_v[1], best_v[3], best_v[4]))
    emit(room_id, ptail('host_changed', best, 'host', 'host_left', 'null', now), now, maxlen)
  end
end
return {'ok', seq}
"""
