"""SQL migrations, applied in file-name order by `coordinator migrate` (roomcast/history/migrate.py).

The same files are shipped for the Supabase CLI under supabase/migrations/.
"""
