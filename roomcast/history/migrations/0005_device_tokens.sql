-- Device tokens (REQUIRE_DEVICE_TOKEN): a random secret given once, to the first hello of
-- an unknown device id. Only its hash is kept (SHA-256 keyed with DEVICE_TOKEN_SECRET),
-- here durably and in Redis (or the embedded gateway's memory) for DEVICE_TOKEN_TTL after
-- its last use. A device id stays known while it has a row here or in device_sessions.
-- Its own table, not a device_sessions column: the flusher inserts device_sessions rows
-- from connection records, after the hello that is given the token.
CREATE TABLE roomcast_device_tokens (
    device_id  varchar(255) PRIMARY KEY,
    token_hash varchar(64) NOT NULL,
    issued_at  timestamp NOT NULL DEFAULT (now() AT TIME ZONE 'utc')
);

-- Not for the Data API (Supabase grants new tables to anon and authenticated by default).
DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'anon') THEN
        REVOKE ALL ON TABLE roomcast_device_tokens FROM anon;
    END IF;
    IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'authenticated') THEN
        REVOKE ALL ON TABLE roomcast_device_tokens FROM authenticated;
    END IF;
    REVOKE ALL ON TABLE roomcast_device_tokens FROM PUBLIC;
END $$;
