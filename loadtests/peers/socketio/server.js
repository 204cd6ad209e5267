// Socket.IO 4 with @socket.io/redis-adapter (the `redis` client): a peer for
// `python -m loadtests.peers`. The same room workload as roomcast's:
//   connect (namespace "/", auth {device_id}) = hello; "join" (with an ack) puts the socket in a
//   room; "publish" (room, data) emits "event" (room, data) to every socket of the room on
//   every process, the sender included, through the Redis adapter.
// GET /readyz answers 200 once Redis is connected. Binds GATEWAY_HOST:GATEWAY_PORT (127.0.0.1).
"use strict";
const http = require("node:http");
const { Server } = require("socket.io");
const { createAdapter } = require("@socket.io/redis-adapter");
const { createClient } = require("redis");

const host = process.env.GATEWAY_HOST || "127.0.0.1";
const port = Number(process.env.GATEWAY_PORT);
const redisUrl = process.env.REDIS_URL;

async function main() {
  const pub = createClient({ url: redisUrl });
  const sub = pub.duplicate();
  pub.on("error", (err) => console.error("redis pub:", err.message));
  sub.on("error", (err) => console.error("redis sub:", err.message));
  await Promise.all([pub.connect(), sub.connect()]);

  const httpServer = http.createServer((req, res) => {
    res.writeHead(req.url === "/readyz" ? 200 : 404, { "Content-Type": "text/plain" });
    res.end(req.url === "/readyz" ? "ok\n" : "not found\n");
  });
  const io = new Server(httpServer, {
    transports: ["websocket"],
    serveClient: false,
    adapter: createAdapter(pub, sub),
    pingInterval: 25000,
    pingTimeout: 600000,
  });
  io.on("connection", (socket) => {
    socket.on("join", (room, ack) => {
      socket.join(String(room));
      if (typeof ack === "function") ack("ok");
    });
    socket.on("publish", (room, data) => {
      io.to(String(room)).emit("event", room, data);
    });
  });
  httpServer.listen(port, host);
  const stop = () => {
    io.close();
    Promise.allSettled([pub.quit(), sub.quit()]).then(() => process.exit(0));
    setTimeout(() => process.exit(0), 2000).unref();
  };
  process.on("SIGTERM", stop);
  process.on("SIGINT", stop);
}

main().catch((err) => {
  console.error(err);
  process.exit(1);
});
