"""Rate limits (token buckets): the formula and contract (base) and its backends (memory, redis)."""
