// The stock socket.io-client loses its transport mid-stream. Prints one JSON line:
// {recovered, rejoined, chunks, seqs, final, events, pid}.
// usage: node recover_mid_stream.mjs <url> <session_id> <prompt> <drop_after_chunks> [opt-in]
//        [url_after_drop]
// With "opt-in" (the default) the client asks for recovery (auth {recover: true}); with
// "plain" it sends no auth at all, as a page that knows nothing of our option. With
// url_after_drop, the reconnect goes there (another node of a cluster).
import { io } from "socket.io-client";

const [url, sessionId, prompt, dropAfterRaw, ask = "opt-in", urlAfterDrop] =
  process.argv.slice(2);
const dropAfter = Number(dropAfterRaw);
const out = { recovered: null, rejoined: false, chunks: [], seqs: [], final: null, events: [] };
const deadline = setTimeout(() => finish("timeout"), 20000);

const socket = io(url, {
  transports: ["websocket"],
  ...(ask === "opt-in" ? { auth: { recover: true } } : {}),
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
        if (urlAfterDrop) socket.io.uri = urlAfterDrop; // the reconnect goes there
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
    out.pid = socket._pid ?? null; // set only when the server offers recovery
    await socket.emitWithAck("join_chat", { session_id: sessionId });
    await socket.emitWithAck("chat_message", { session_id: sessionId, message: prompt });
    return;
  }
  out.recovered = socket.recovered === true; // undefined when the server offers no pid
  if (!socket.recovered) {
    out.rejoined = true;
    const lastSeq = Math.max(0, ...out.seqs.filter((s) => typeof s === "number"));
    await socket.emitWithAck("join_chat", { session_id: sessionId, last_seq: lastSeq });
  }
});
