"""roomcast coordinator: the work that must happen once per cluster.

It holds a Redis lease, so several replicas are safe (one active, the others standby),
and while active runs the reaper: sockets whose `ws:presence` heartbeat is older than
WEBSOCKET_HEARTBEAT_TIMEOUT become `timeout` (their participants `disconnected`), and
participants disconnected for longer than PARTICIPANT_PRUNE_AFTER are removed. It
imports the shared core (roomcast/), never the gateway's server.
"""
