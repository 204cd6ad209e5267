"""Rooms, participants and connection records: the contract (base) and its backends (memory, redis)."""
