"""roomcast gateway: the stateless WebSocket edge that speaks protocol v1."""
