-- Fixes from the audit of the history against the requirements (issue 10).
--
-- 1. A room's password hash (never the password) is kept with the room, so a room Redis
--    lost can be rebuilt with it. It lives in its own table, not in game_rooms: the
--    requirements' columns stay exactly as listed, and the Supabase policies give no role
--    but service_role access to it. Every room flushed from now on has a row ('' = no
--    password). A room without a row (flushed before this migration) may have had a
--    password: it is never restored from history (see roomcast/store_redis.py).
CREATE TABLE roomcast_room_access (
    room_id       varchar(255) PRIMARY KEY REFERENCES game_rooms (room_id) ON DELETE CASCADE,
    password_hash text NOT NULL
);

-- 2. "Archive old connections (> 30 days)": rows move here (same columns, same keys),
--    then leave websocket_connections.
CREATE TABLE websocket_connections_archive (LIKE websocket_connections INCLUDING ALL);

-- 3. A game that completed stays `completed` when its room closes (closed_at says it
--    closed), so the requirements' "game completion rate" counts it. Rooms closed before
--    this migration whose last status change was to `completed` get that status back.
UPDATE game_rooms r SET status = 'completed'
 WHERE r.status = 'closed'
   AND (SELECT e.payload ->> 'status' FROM game_events e
         WHERE e.room_id = r.room_id AND e.event_type = 'state_change' AND e.payload ? 'status'
         ORDER BY e.sequence_number DESC LIMIT 1) = 'completed';

-- 4. A socket's lifecycle, amended:
--    - reconnect_count is the value the socket's `welcome` carried (p_reconnect: earlier
--      accepted connections of the device while its Redis record lived); without it (a
--      record written by an older gateway) the device's earlier connections, as before;
--    - a hello without metadata (NULL or {}) keeps the device's metadata;
--    - `refused` (a socket closed by a limit before its welcome, e.g. 4008) removes the
--      socket's row and takes it off the device's totals: it was never a connection.
CREATE FUNCTION roomcast_apply_connection(
    p_kind text, p_socket varchar, p_device varchar, p_user uuid, p_ts timestamp, p_status text,
    p_ip varchar, p_user_agent text, p_fingerprint varchar, p_metadata jsonb, p_reconnect integer
) RETURNS void LANGUAGE plpgsql AS $$
DECLARE
    earlier integer;
    meta jsonb := CASE WHEN p_metadata = '{}'::jsonb THEN NULL ELSE p_metadata END;
BEGIN
    IF p_kind = 'connect' THEN
        SELECT total_connections INTO earlier FROM device_sessions WHERE device_id = p_device;
        INSERT INTO websocket_connections (socket_id, device_id, user_id, connected_at, last_heartbeat,
                                           reconnect_count, ip_address, user_agent, metadata, status)
        VALUES (p_socket, p_device, p_user, p_ts, p_ts, COALESCE(p_reconnect, earlier, 0), p_ip, p_user_agent,
                p_metadata, 'active')
        ON CONFLICT (socket_id) DO NOTHING;
        IF FOUND THEN
            INSERT INTO device_sessions (device_id, user_id, first_seen, last_seen, total_connections,
                                         total_reconnections, browser_fingerprint, metadata)
            VALUES (p_device, p_user, p_ts, p_ts, 1, 0, p_fingerprint, meta)
            ON CONFLICT (device_id) DO UPDATE SET
                user_id = COALESCE(EXCLUDED.user_id, device_sessions.user_id),
                first_seen = LEAST(device_sessions.first_seen, EXCLUDED.first_seen),
                last_seen = GREATEST(device_sessions.last_seen, EXCLUDED.last_seen),
                total_connections = device_sessions.total_connections + 1,
                total_reconnections = device_sessions.total_reconnections + 1,
                browser_fingerprint = COALESCE(EXCLUDED.browser_fingerprint, device_sessions.browser_fingerprint),
                metadata = COALESCE(EXCLUDED.metadata, device_sessions.metadata);
        END IF;
    ELSIF p_kind = 'refused' THEN
        DELETE FROM websocket_connections WHERE socket_id = p_socket;
        IF FOUND THEN
            UPDATE device_sessions
               SET total_connections = greatest(total_connections - 1, 0),
                   total_reconnections = greatest(total_reconnections - 1, 0)
             WHERE device_id = p_device;
        END IF;
    ELSE
        UPDATE websocket_connections
           SET status = p_status::connection_status, disconnected_at = p_ts
         WHERE socket_id = p_socket AND status = 'active';
        UPDATE device_sessions SET last_seen = GREATEST(last_seen, p_ts) WHERE device_id = p_device;
    END IF;
END $$;

-- The earlier signature (still called by a coordinator not yet upgraded) applies the same rules.
CREATE OR REPLACE FUNCTION roomcast_apply_connection(
    p_kind text, p_socket varchar, p_device varchar, p_user uuid, p_ts timestamp, p_status text,
    p_ip varchar, p_user_agent text, p_fingerprint varchar, p_metadata jsonb
) RETURNS void LANGUAGE sql AS $$
    SELECT roomcast_apply_connection(p_kind, p_socket, p_device, p_user, p_ts, p_status, p_ip, p_user_agent,
                                     p_fingerprint, p_metadata, NULL::integer)
$$;
