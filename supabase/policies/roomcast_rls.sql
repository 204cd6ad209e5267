-- OPTIONAL Row Level Security for roomcast's tables on Supabase. Not a migration (so plain
-- Postgres deployments, which have no Supabase roles, are not affected): apply it yourself
-- after the migrations, and again after any later migration that adds a table, with
--
--   psql "$DATABASE_URL" -v ON_ERROR_STOP=1 -f supabase/policies/roomcast_rls.sql
--
-- It needs Supabase's roles (anon, authenticated, service_role) and auth.uid(), and can be
-- run any number of times. Who may do what, through the Data API (PostgREST) and Realtime:
--
--   service_role   everything (Supabase gives it BYPASSRLS; the policies say so explicitly)
--   authenticated  SELECT only, of its own rows (user_id = auth.uid()); game_rooms: the rooms
--                  it takes part in or created. game_rooms has no "private" flag to test:
--                  listing open rooms is the gateway's `list_rooms`. A room's password is
--                  never stored; its salted hash is, in roomcast_room_access (so a room Redis
--                  lost comes back with it), which, like websocket_connections_archive, only
--                  service_role may read.
--   anon           nothing: no privileges at all
--
-- The coordinator writes as the tables' owner (Supabase's `postgres` connection string),
-- which RLS does not restrict (no FORCE ROW LEVEL SECURITY here), or as service_role.
--
-- Without this file, Supabase's default privileges let anon and authenticated read and
-- write every row of these tables through the Data API (if the public schema is exposed).

BEGIN;

-- Every roomcast table (those that exist: roomcast_migrations is only made by
-- `coordinator migrate`, not by `supabase db push`): no privileges for anon or
-- authenticated, all for service_role, RLS on, a service_role policy.
DO $$
DECLARE
    t text;
BEGIN
    FOREACH t IN ARRAY ARRAY['websocket_connections', 'game_rooms', 'room_participants', 'game_events',
                             'device_sessions', 'roomcast_flush_state', 'roomcast_migrations',
                             'websocket_connections_archive', 'roomcast_room_access',
                             'roomcast_device_tokens'] LOOP
        IF to_regclass(t) IS NOT NULL THEN
            EXECUTE format('REVOKE ALL ON TABLE %I FROM PUBLIC, anon, authenticated', t);
            EXECUTE format('GRANT ALL ON TABLE %I TO service_role', t);
            EXECUTE format('ALTER TABLE %I ENABLE ROW LEVEL SECURITY', t);
            EXECUTE format('DROP POLICY IF EXISTS roomcast_service_role_all ON %I', t);
            EXECUTE format('CREATE POLICY roomcast_service_role_all ON %I FOR ALL TO service_role '
                           'USING (true) WITH CHECK (true)', t);
        END IF;
    END LOOP;
END $$;

-- The flusher's functions (roomcast_apply_*) would be callable as Data API RPCs: keep
-- them to service_role.
DO $$
DECLARE
    f regprocedure;
BEGIN
    FOR f IN SELECT p.oid::regprocedure FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
              WHERE p.proname LIKE 'roomcast\_%' AND n.nspname = ANY (current_schemas(false))
    LOOP
        EXECUTE format('REVOKE EXECUTE ON FUNCTION %s FROM PUBLIC, anon, authenticated', f);
        EXECUTE format('GRANT EXECUTE ON FUNCTION %s TO service_role', f);
    END LOOP;
END $$;

-- authenticated: read its own rows. `(SELECT auth.uid())` is evaluated once per query,
-- not per row (Supabase's advice for RLS performance).
GRANT SELECT ON TABLE websocket_connections, device_sessions, room_participants, game_events, game_rooms
    TO authenticated;

DROP POLICY IF EXISTS roomcast_own_rows ON websocket_connections;
CREATE POLICY roomcast_own_rows ON websocket_connections FOR SELECT TO authenticated
    USING (user_id = (SELECT auth.uid()));

DROP POLICY IF EXISTS roomcast_own_rows ON device_sessions;
CREATE POLICY roomcast_own_rows ON device_sessions FOR SELECT TO authenticated
    USING (user_id = (SELECT auth.uid()));

DROP POLICY IF EXISTS roomcast_own_rows ON room_participants;
CREATE POLICY roomcast_own_rows ON room_participants FOR SELECT TO authenticated
    USING (user_id = (SELECT auth.uid()));

DROP POLICY IF EXISTS roomcast_own_rows ON game_events;
CREATE POLICY roomcast_own_rows ON game_events FOR SELECT TO authenticated
    USING (user_id = (SELECT auth.uid()));

-- A room is visible to its creator (created_by is the creator's user_id when signed in) and
-- to everyone who has a room_participants row in it (read through that table's own policy).
DROP POLICY IF EXISTS roomcast_member_rooms ON game_rooms;
CREATE POLICY roomcast_member_rooms ON game_rooms FOR SELECT TO authenticated
    USING (created_by = (SELECT auth.uid())
           OR EXISTS (SELECT 1 FROM room_participants p
                       WHERE p.room_id = game_rooms.room_id AND p.user_id = (SELECT auth.uid())));

COMMIT;
