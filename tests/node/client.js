// Drives the npm socket.io-client against a server started by the pytest suite
// (tests/e2e/test_socketio_npm.py), and prints one JSON line with what it saw.
//
//   node tests/node/client.js <url> <scenario> <transports: JSON array or null>
//
// Every scenario is bounded by the overall deadline below; on expiry it prints
// {"error": "timeout", ...} and exits non-zero.

"use strict";

const { io } = require("socket.io-client");

const [url, scenario, transportsJson] = process.argv.slice(2);
const transports = JSON.parse(transportsJson || "null");
const base = transports ? { transports } : {};
const trace = [];

const deadline = setTimeout(() => {
  finish({ error: "timeout", scenario, trace }, 2);
}, 15000);

function finish(result, code = 0) {
  clearTimeout(deadline);
  process.stdout.write(JSON.stringify(result) + "\n");
  process.exit(code);
}

function once(emitter, event) {
  return new Promise((resolve) => emitter.once(event, (...args) => resolve(args)));
}

function until(predicate) {
  return new Promise((resolve) => {
    const check = () => (predicate() ? resolve() : setTimeout(check, 5));
    check();
  });
}

function connect(path, options) {
  return io(url + path, { ...base, forceNew: true, reconnection: false, ...options });
}

async function settledTransport(socket) {
  // With the default transports the upgrade to websocket happens after the connect.
  if (!transports && socket.io.engine.transport.name !== "websocket") {
    await once(socket.io.engine, "upgrade");
  }
  return socket.io.engine.transport.name;
}

const scenarios = {
  async basic() {
    const s = connect("/", { auth: { token: "secret" } });
    await once(s, "connect");
    const transport = await settledTransport(s);
    s.on("question", (data, ack) => ack({ double: data.n * 2 }));
    const news = new Promise((resolve) => s.once("news", (...args) => resolve(args)));
    const echo = await s.timeout(5000).emitWithAck("echo", { a: [1, "é", null] });
    const answer = await s.timeout(5000).emitWithAck("provoke");
    const result = { id: s.id, transport, echo, news: await news, answer };
    s.disconnect();
    return result;
  },

  async refusal() {
    const s = connect("/", { auth: { token: "wrong" } });
    const [err] = await once(s, "connect_error");
    s.close();
    return { message: err.message, active: s.active };
  },

  async namespaces() {
    const root = connect("/", { auth: { token: "secret" } });
    const admin = root.io.socket("/admin", { auth: { token: "secret" } });
    const nope = root.io.socket("/nope");
    const [nopeErr] = await Promise.all([
      once(nope, "connect_error").then(([e]) => e),
      once(root, "connect"),
      once(admin, "connect"),
    ]);
    const whoRoot = await root.timeout(5000).emitWithAck("whoami");
    const whoAdmin = await admin.timeout(5000).emitWithAck("whoami");
    const result = {
      rootId: root.id,
      adminId: admin.id,
      whoRoot,
      whoAdmin,
      nope: nopeErr.message,
    };
    root.disconnect();
    admin.disconnect();
    return result;
  },

  async binary() {
    const s = connect("/", { auth: { token: "secret" } });
    await once(s, "connect");
    await settledTransport(s);
    const file = new Promise((resolve) => s.once("file", (meta, blob) => resolve([meta, blob])));
    const back = await s.timeout(5000).emitWithAck("reverse", Buffer.from([1, 2, 3, 255]));
    const [meta, blob] = await file;
    s.disconnect();
    return {
      back: Array.from(back),
      meta,
      blob: Array.from(blob),
      isBuffer: Buffer.isBuffer(blob),
    };
  },

  async rooms() {
    const a = connect("/", { auth: { token: "secret" } });
    const b = connect("/", { auth: { token: "secret" } });
    const c = connect("/", { auth: { token: "secret" } });
    await Promise.all([once(a, "connect"), once(b, "connect"), once(c, "connect")]);
    const heard = { a: [], b: [], c: [] };
    for (const [name, s] of Object.entries({ a, b, c })) {
      s.on("heard", (data) => heard[name].push(data.text));
    }
    await a.timeout(5000).emitWithAck("join", "lobby");
    await b.timeout(5000).emitWithAck("join", "lobby");
    await a.timeout(5000).emitWithAck("shout", "lobby", "hello");
    await until(() => heard.b.length === 1);
    // One more round trip each so anything wrongly delivered would have arrived.
    await Promise.all([a, b, c].map((s) => s.timeout(5000).emitWithAck("echo", 1)));
    for (const s of [a, b, c]) s.disconnect();
    return heard;
  },

  // Cut the transport after tick 3; the server emits ticks 4-6 while it is down, then
  // 7-9 once the socket is back (recovered, or re-joined when it was not). Environment:
  // RECOVER=1 opts in to recovery; RECONNECT_DELAY_MS sets the reconnection delay.
  async drop() {
    const recover = process.env.RECOVER === "1";
    const delay = Number(process.env.RECONNECT_DELAY_MS || 50);
    const s = io(url, {
      ...base,
      forceNew: true,
      auth: recover ? { token: "secret", recover: true } : { token: "secret" },
      reconnectionDelay: delay,
      reconnectionDelayMax: delay,
      randomizationFactor: 0,
    });
    const ticks = [];
    const arities = [];
    const offsets = [];
    const connects = [];
    const reasons = [];
    let cut = false;
    s.on("disconnect", (reason) => reasons.push(reason));
    s.on("connect", async () => {
      connects.push({ id: s.id, recovered: s.recovered === true });
      if (!recover || !s.recovered) await s.timeout(5000).emitWithAck("join", "stream");
      if (connects.length === 2) s.emit("rejoined");
    });
    s.on("tick", (...args) => {
      ticks.push(args[0]);
      arities.push(args.length);
      if (args.length > 1) offsets.push(args[args.length - 1]);
      if (args[0] === 3 && !cut) {
        cut = true;
        s.io.engine.close();
      }
    });
    await until(() => connects.length === 1);
    await settledTransport(s);
    await s.timeout(5000).emitWithAck("start_ticks", "stream");
    await until(() => ticks.includes(9));
    const result = structuredClone({ ticks, arities, offsets, connects, reasons });
    s.disconnect();
    return result;
  },

  // User mode (tests/e2e/test_users.py): two users, each with a session, given in the
  // environment; A tries B's session, B chats in it. Prints what each socket received.
  async users() {
    const env = process.env;
    const a = connect("/", { auth: (cb) => cb({ token: env.TOKEN_A }) });
    const b = connect("/", { auth: (cb) => cb({ token: env.TOKEN_B }) });
    const seen = { a: [], b: [] };
    a.onAny((name, data) => seen.a.push([name, data?.session_id ?? null, data?.code ?? null]));
    b.onAny((name, data) => seen.b.push([name, data?.session_id ?? null, data?.code ?? null]));
    await Promise.all([once(a, "connect"), once(b, "connect")]);
    const acks = {};
    for (const event of ["join_chat", "chat_message", "stop_response"]) {
      const data = { session_id: env.SESSION_B, message: "hi" };
      acks[event] = await a.timeout(5000).emitWithAck(event, data);
    }
    acks.b_join = await b.timeout(5000).emitWithAck("join_chat", { session_id: env.SESSION_B });
    acks.b_send = await b
      .timeout(5000)
      .emitWithAck("chat_message", { session_id: env.SESSION_B, message: "slow" });
    await until(() => seen.b.some(([name]) => name === "stream_complete"));
    a.disconnect();
    b.disconnect();
    return { acks, seen };
  },

  // User mode: a connection recovered (connection state recovery) by its own user gets
  // its rooms back; one whose token now names another user is refused.
  async recover_as_other() {
    const env = process.env;
    let token = env.TOKEN_A;
    const s = io(url, {
      ...base,
      forceNew: true,
      auth: (cb) => cb({ token, recover: true }),
      reconnectionDelay: 50,
      reconnectionDelayMax: 50,
      randomizationFactor: 0,
    });
    await once(s, "connect");
    const join = await s.timeout(5000).emitWithAck("join_chat", { session_id: env.SESSION_A });
    s.io.engine.close();
    await once(s, "connect");
    const sameUser = { recovered: s.recovered === true };
    token = env.TOKEN_B;
    s.io.engine.close();
    const otherUser = await Promise.race([
      once(s, "connect").then(() => ({ connected: true, recovered: s.recovered === true })),
      once(s, "connect_error").then(([err]) => ({ refused: err.data?.code ?? err.message })),
    ]);
    s.close();
    return { join: join.status, sameUser, otherUser };
  },
};

(async () => {
  const run = scenarios[scenario];
  if (!run) finish({ error: `unknown scenario ${scenario}` }, 2);
  try {
    finish(await run());
  } catch (err) {
    finish({ error: String(err && err.stack ? err.stack : err), trace }, 1);
  }
})();
