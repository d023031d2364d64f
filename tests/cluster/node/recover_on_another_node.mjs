// The stock socket.io-client, with connection state recovery, loses its transport
// mid-stream and reconnects to ANOTHER node of the cluster. Prints one JSON line:
// {recovered, rejoined, chunks, seqs, final, events, pid, reason}.
// usage: node recover_on_another_node.mjs <url_a> <url_b> <session_id> <prompt> <drop_after>
import { io } from "socket.io-client";

const [urlA, urlB, sessionId, prompt, dropAfterRaw] = process.argv.slice(2);
const dropAfter = Number(dropAfterRaw);
const out = { recovered: null, rejoined: false, chunks: [], seqs: [], final: null, events: [] };
const deadline = setTimeout(() => finish("timeout"), 20000);

const socket = io(urlA, {
  transports: ["websocket"],
  auth: { recover: true },
  reconnectionDelay: 100,
  reconnectionDelayMax: 200,
});

function finish(reason) {
  clearTimeout(deadline);
  out.reason = reason;
  process.stdout.write(JSON.stringify(out) + "\n");
  socket.close();
  process.exit(0);
}

let dropped = false;
let joined = false;
for (const name of ["message", "stream_chunk", "stream_complete", "typing", "error"]) {
  socket.on(name, (data) => {
    out.events.push(name);
    out.seqs.push(data.seq);
    if (name === "stream_chunk") {
      out.chunks.push(data.content);
      if (!dropped && out.chunks.length >= dropAfter) {
        dropped = true;
        socket.io.uri = urlB; // the reconnect goes to the other node
        socket.io.engine.close();
      }
    }
    if (name === "message" && data.data.sender === "agent") out.final = data.data.content;
    if (name === "typing" && data.is_typing === false) finish("done");
  });
}

socket.on("connect", async () => {
  if (!joined) {
    joined = true;
    out.pid = socket._pid ?? null;
    await socket.emitWithAck("join_chat", { session_id: sessionId });
    await socket.emitWithAck("chat_message", { session_id: sessionId, message: prompt });
    return;
  }
  out.recovered = socket.recovered === true;
  if (!socket.recovered) {
    out.rejoined = true;
    const lastSeq = Math.max(0, ...out.seqs.filter((s) => typeof s === "number"));
    await socket.emitWithAck("join_chat", { session_id: sessionId, last_seq: lastSeq });
  }
});
