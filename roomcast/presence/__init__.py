"""Socket heartbeats: the contract (base) and its backends (memory, redis)."""
