-- Support for the history flusher: how far each room's events are persisted (so a
-- redelivered batch is applied exactly once), and functions that apply lifecycle
-- changes in event order (one statement shape, so a batch can be pipelined in order).

CREATE TABLE roomcast_flush_state (
    room_id  varchar(255) PRIMARY KEY,
    last_seq integer NOT NULL
);

-- A participant's stay: joined opens a row; disconnected/reconnected/left update the
-- device's open row (left_at IS NULL) in that room; room_closed closes all open rows.
CREATE FUNCTION roomcast_apply_participant(
    p_kind text, p_room varchar, p_device varchar, p_socket varchar, p_user uuid,
    p_role varchar, p_ts timestamp
) RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    IF p_kind = 'participant_joined' THEN
        INSERT INTO room_participants (room_id, socket_id, device_id, user_id, joined_at, role, status)
        VALUES (p_room, p_socket, p_device, p_user, p_ts, p_role, 'active')
        ON CONFLICT (room_id, device_id, joined_at) DO NOTHING;
    ELSIF p_kind = 'participant_left' THEN
        UPDATE room_participants SET status = 'left', left_at = p_ts
         WHERE room_id = p_room AND device_id = p_device AND left_at IS NULL;
    ELSIF p_kind = 'participant_disconnected' THEN
        UPDATE room_participants SET status = 'disconnected'
         WHERE room_id = p_room AND device_id = p_device AND left_at IS NULL;
    ELSIF p_kind = 'participant_reconnected' THEN
        UPDATE room_participants SET status = 'active', socket_id = COALESCE(p_socket, socket_id)
         WHERE room_id = p_room AND device_id = p_device AND left_at IS NULL;
    ELSIF p_kind = 'room_closed' THEN
        UPDATE room_participants SET status = 'left', left_at = p_ts
         WHERE room_id = p_room AND left_at IS NULL;
    END IF;
END $$;

-- A socket's lifecycle: connect inserts its row and updates the device's totals once
-- (only when the row is new, so a redelivered record counts nothing twice); disconnect
-- and timeout set the status and time of an active row.
CREATE FUNCTION roomcast_apply_connection(
    p_kind text, p_socket varchar, p_device varchar, p_user uuid, p_ts timestamp, p_status text,
    p_ip varchar, p_user_agent text, p_fingerprint varchar, p_metadata jsonb
) RETURNS void LANGUAGE plpgsql AS $$
DECLARE
    earlier integer;
BEGIN
    IF p_kind = 'connect' THEN
        SELECT total_connections INTO earlier FROM device_sessions WHERE device_id = p_device;
        INSERT INTO websocket_connections (socket_id, device_id, user_id, connected_at, last_heartbeat,
                                           reconnect_count, ip_address, user_agent, metadata, status)
        VALUES (p_socket, p_device, p_user, p_ts, p_ts, COALESCE(earlier, 0), p_ip, p_user_agent, p_metadata, 'active')
        ON CONFLICT (socket_id) DO NOTHING;
        IF FOUND THEN
            INSERT INTO device_sessions (device_id, user_id, first_seen, last_seen, total_connections,
                                         total_reconnections, browser_fingerprint, metadata)
            VALUES (p_device, p_user, p_ts, p_ts, 1, 0, p_fingerprint, p_metadata)
            ON CONFLICT (device_id) DO UPDATE SET
                user_id = COALESCE(EXCLUDED.user_id, device_sessions.user_id),
                first_seen = LEAST(device_sessions.first_seen, EXCLUDED.first_seen),
                last_seen = GREATEST(device_sessions.last_seen, EXCLUDED.last_seen),
                total_connections = device_sessions.total_connections + 1,
                total_reconnections = device_sessions.total_reconnections + 1,
                browser_fingerprint = COALESCE(EXCLUDED.browser_fingerprint, device_sessions.browser_fingerprint),
                metadata = COALESCE(EXCLUDED.metadata, device_sessions.metadata);
        END IF;
    ELSE
        UPDATE websocket_connections
           SET status = p_status::connection_status, disconnected_at = p_ts
         WHERE socket_id = p_socket AND status = 'active';
        UPDATE device_sessions SET last_seen = GREATEST(last_seen, p_ts) WHERE device_id = p_device;
    END IF;
END $$;
