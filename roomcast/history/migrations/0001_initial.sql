-- roomcast history and analytics schema: the five tables of
-- requirements/websocket-database-requirements.md, with every column, type, enum and
-- index listed there, plus the unique constraints that make the flusher's writes
-- idempotent (natural keys; design invariant 5). Times are UTC `timestamp`, as listed.

CREATE TYPE connection_status AS ENUM ('active', 'disconnected', 'timeout');
CREATE TYPE room_status AS ENUM ('active', 'waiting', 'in_progress', 'completed', 'closed');
CREATE TYPE participant_status AS ENUM ('active', 'disconnected', 'left');

CREATE TABLE websocket_connections (
    id              uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    socket_id       varchar(255) NOT NULL,
    device_id       varchar(255) NOT NULL,
    user_id         uuid,
    connected_at    timestamp NOT NULL,
    disconnected_at timestamp,
    last_heartbeat  timestamp,
    reconnect_count integer NOT NULL DEFAULT 0,
    ip_address      varchar(45),
    user_agent      text,
    metadata        jsonb,
    status          connection_status NOT NULL DEFAULT 'active',
    CONSTRAINT websocket_connections_socket_id_key UNIQUE (socket_id)
);
CREATE INDEX websocket_connections_device_id_idx ON websocket_connections (device_id);
CREATE INDEX websocket_connections_user_id_idx ON websocket_connections (user_id);
CREATE INDEX websocket_connections_status_idx ON websocket_connections (status);
CREATE INDEX websocket_connections_connected_at_idx ON websocket_connections (connected_at);

CREATE TABLE game_rooms (
    id              uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    room_id         varchar(255) NOT NULL,
    created_at      timestamp NOT NULL,
    updated_at      timestamp NOT NULL,
    closed_at       timestamp,
    created_by      uuid,
    game_type       varchar(100) NOT NULL,
    game_data       jsonb NOT NULL DEFAULT '{}'::jsonb,
    status          room_status NOT NULL DEFAULT 'waiting',
    max_players     integer NOT NULL,
    current_players integer NOT NULL DEFAULT 0,
    CONSTRAINT game_rooms_room_id_key UNIQUE (room_id)
);
CREATE INDEX game_rooms_status_idx ON game_rooms (status);
CREATE INDEX game_rooms_game_type_idx ON game_rooms (game_type);
CREATE INDEX game_rooms_created_at_idx ON game_rooms (created_at);

CREATE TABLE room_participants (
    id        uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    room_id   varchar(255) NOT NULL REFERENCES game_rooms (room_id) ON DELETE CASCADE,
    socket_id varchar(255),
    device_id varchar(255) NOT NULL,
    user_id   uuid,
    joined_at timestamp NOT NULL,
    left_at   timestamp,
    role      varchar(50) NOT NULL,
    status    participant_status NOT NULL DEFAULT 'active',
    -- one row per stay of a device in a room
    CONSTRAINT room_participants_stay_key UNIQUE (room_id, device_id, joined_at)
);
CREATE INDEX room_participants_room_id_idx ON room_participants (room_id);
CREATE INDEX room_participants_device_id_idx ON room_participants (device_id);
CREATE INDEX room_participants_socket_id_idx ON room_participants (socket_id);
CREATE INDEX room_participants_status_idx ON room_participants (status);

CREATE TABLE game_events (
    id              uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    room_id         varchar(255) NOT NULL,
    event_type      varchar(100) NOT NULL,
    socket_id       varchar(255),
    device_id       varchar(255),
    user_id         uuid,
    "timestamp"     timestamp NOT NULL,
    action          varchar(255),
    payload         jsonb,
    sequence_number integer NOT NULL,
    CONSTRAINT game_events_room_seq_key UNIQUE (room_id, sequence_number)
);
CREATE INDEX game_events_room_id_idx ON game_events (room_id);
CREATE INDEX game_events_timestamp_idx ON game_events ("timestamp");
CREATE INDEX game_events_event_type_idx ON game_events (event_type);
CREATE INDEX game_events_sequence_number_idx ON game_events (sequence_number);

CREATE TABLE device_sessions (
    id                  uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    device_id           varchar(255) NOT NULL,
    user_id             uuid,
    first_seen          timestamp NOT NULL,
    last_seen           timestamp NOT NULL,
    total_connections   integer NOT NULL DEFAULT 0,
    total_reconnections integer NOT NULL DEFAULT 0,
    browser_fingerprint varchar(255),
    metadata            jsonb,
    CONSTRAINT device_sessions_device_id_key UNIQUE (device_id)
);
CREATE INDEX device_sessions_user_id_idx ON device_sessions (user_id);
CREATE INDEX device_sessions_last_seen_idx ON device_sessions (last_seen);
