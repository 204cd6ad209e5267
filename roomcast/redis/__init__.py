"""Talking to Redis: connections (client), the command batcher (batch), the key layout (keys), Lua scripts (scripts), RESP (resp)."""
