"""roomcast and two peers (a minimal websockets + Redis gateway, Socket.IO 4 with its Redis
adapter) under the same workloads and client: `python -m loadtests.peers` (see run.py)."""
