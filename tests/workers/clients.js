// Opens `count` consecutive npm socket.io-client connections to a server started by
// tests/workers/test_workers.py (polling first, then the upgrade to websocket), each
// joining `session` and waiting for the ack, and prints one JSON line: the Engine.IO
// sid of each connection and its transport once the upgrade settled.
//
//   node tests/workers/clients.js <url> <session id> <count>
//
// Bounded by the deadline below; on expiry it prints {"error": "timeout", ...} and
// exits non-zero.

"use strict";

const { io } = require("socket.io-client");

const [url, session, countText] = process.argv.slice(2);
const count = Number(countText);
const done = [];

const deadline = setTimeout(() => finish({ error: "timeout", done }, 2), 90000);

function finish(result, code = 0) {
  clearTimeout(deadline);
  process.stdout.write(JSON.stringify(result) + "\n");
  process.exit(code);
}

function once(emitter, event) {
  return new Promise((resolve, reject) => {
    emitter.once(event, (...args) => resolve(args));
    emitter.once("connect_error", (error) => reject(error));
  });
}

async function one() {
  const socket = io(url, { forceNew: true, reconnection: false });
  await once(socket, "connect");
  const engine = socket.io.engine;
  if (engine.transport.name !== "websocket") {
    await once(engine, "upgrade");
  }
  const ack = await socket.timeout(5000).emitWithAck("join_chat", { session_id: session });
  if (ack.status !== "joined") {
    throw new Error("join refused: " + JSON.stringify(ack));
  }
  done.push({ sid: engine.id, transport: engine.transport.name });
  socket.disconnect();
}

(async () => {
  for (let i = 0; i < count; i++) {
    await one();
  }
  finish({ done });
})().catch((error) => finish({ error: String(error), done }, 1));
