"""History in Postgres: the contract (base), the sources (memory, redis), the flusher, the writer (postgres), reads, cleanup jobs and migrations."""
