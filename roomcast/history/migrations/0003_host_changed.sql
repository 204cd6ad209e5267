-- The host hand-over (event `host_changed`) makes the successor's open stay a `host` stay.
CREATE OR REPLACE FUNCTION roomcast_apply_participant(
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
    ELSIF p_kind = 'host_changed' THEN
        UPDATE room_participants SET role = 'host'
         WHERE room_id = p_room AND device_id = p_device AND left_at IS NULL;
    ELSIF p_kind = 'room_closed' THEN
        UPDATE room_participants SET status = 'left', left_at = p_ts
         WHERE room_id = p_room AND left_at IS NULL;
    END IF;
END $$;
