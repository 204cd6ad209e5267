"""Room events across replicas: the contract (base) and its backends (memory, redis)."""
