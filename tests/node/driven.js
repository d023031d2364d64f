// The npm socket.io-client driven line by line by a test (tests/e2e/npm_client.py), so
// a test can hold it beside python-socketio clients and act on what each one saw.
//
//   node tests/node/driven.js <url> <transports: JSON array or null>
//
// stdin, one JSON object a line:
//   {"id": n, "emit": name, "data": value}  emit with an ack (5 s), answered {"ack": n, ...}
//   {"close": true}                         disconnect and exit
// stdout, one JSON object a line:
//   {"connected": sid} | {"connect_error": message} | {"event": name, "data": value}
//   | {"ack": n, "data": value} | {"ack": n, "error": message} | {"disconnected": reason}
// The client exits on its own after the deadline below, or when stdin closes.

"use strict";

const readline = require("node:readline");
const { io } = require("socket.io-client");

const [url, transportsJson] = process.argv.slice(2);
const transports = JSON.parse(transportsJson || "null");

const deadline = setTimeout(() => finish(2), 120000);

function say(value) {
  process.stdout.write(JSON.stringify(value) + "\n");
}

function finish(code) {
  clearTimeout(deadline);
  socket.close();
  process.stdout.write("", () => process.exit(code));
}

const socket = io(url, {
  ...(transports ? { transports } : {}),
  forceNew: true,
  reconnection: false,
});
socket.on("connect", () => say({ connected: socket.io.engine.id }));
socket.on("connect_error", (error) => say({ connect_error: String(error.message || error) }));
socket.on("disconnect", (reason) => say({ disconnected: reason }));
socket.onAny((name, data) => say({ event: name, data: data === undefined ? null : data }));

const lines = readline.createInterface({ input: process.stdin });
lines.on("line", async (line) => {
  const command = JSON.parse(line);
  if (command.close) {
    socket.disconnect();
    finish(0);
    return;
  }
  try {
    const data = await socket.timeout(5000).emitWithAck(command.emit, command.data);
    say({ ack: command.id, data });
  } catch (error) {
    say({ ack: command.id, error: String(error.message || error) });
  }
});
lines.on("close", () => finish(0));
