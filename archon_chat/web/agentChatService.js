/**
 * agentChatService: the browser client of the archon-chat gateway.
 *
 * REST (`/api/agent-chat`) creates sessions, loads history and sends messages; one
 * Socket.IO connection per connected session carries the session's events
 * (`message`, `stream_chunk`, `stream_complete`, `typing`, `error`).
 *
 * Guarantees, whatever the network does:
 * - Every event of a session carries a `seq`; an event whose seq was already seen is
 *   dropped, so a replay after a reconnect never duplicates text.
 * - Connection state recovery is opted in (`auth.recover`). After a reconnect the
 *   socket.io client reports `recovered` when the server replayed what was missed;
 *   otherwise the service re-joins with `last_seq` and the server replays the gap.
 * - Messages sent while the connection is down wait in a bounded queue and go out, in
 *   order, once the session is joined again. Each carries a `client_message_id`, so a
 *   send retried after a lost response is a no-op on the server: never lost, never doubled.
 * - A session the server no longer knows (`session_not_found`) is replaced by a new one
 *   of the same agent type; handlers and queued messages move over and
 *   `onSessionChange` callbacks are told.
 * - With an API key configured on the server, the first refusal calls the
 *   `onAuthRequired` callback for the key, which is then kept in localStorage.
 * - In user mode the host page passes `tokenProvider`: an async function returning a
 *   fresh signed token for its user. The service asks it for a token before the one it
 *   holds expires, on every (re)connect (socket.io's `auth` callback), when the server
 *   says a connected socket's token is about to expire (`error` with `token_expired`: the
 *   fresh token goes out as `refresh_token`, so the socket stays), and once more when a
 *   request is refused with 401. Tokens are never stored.
 *
 * The seed's reconnect settings map onto socket.io-client's options:
 * `enableAutoReconnect` → `reconnection`, `maxReconnectAttempts` → `reconnectionAttempts`,
 * `reconnectInterval` → `reconnectionDelay` (doubling up to 5× that, with jitter).
 * Engine.IO's heartbeat is driven by the server's ping; with `enableHeartbeat` the service
 * also drops a connection that stayed silent for `heartbeatInterval` (or 1.5 server ping
 * intervals if longer) and reconnects, which catches dead links after sleep or a network
 * change sooner than the transport's own timeout.
 */
import { io } from 'socket.io-client';

export const DEFAULT_WS_CONFIG = Object.freeze({
  maxReconnectAttempts: 10,
  reconnectInterval: 1000,
  heartbeatInterval: 30000,
  enableAutoReconnect: true,
  enableHeartbeat: true,
});

/** Messages that may wait for the connection, per session; beyond it a send is refused. */
export const MAX_QUEUED_MESSAGES = 50;

const API_PREFIX = '/api/agent-chat';
const API_KEY_STORAGE = 'archon-chat:api-key';
const REQUEST_TIMEOUT_MS = 15000;
/** A token this close to its `exp` is replaced before use. */
const TOKEN_MARGIN_MS = 30000;
const SESSION_EVENTS = ['message', 'stream_chunk', 'stream_complete', 'typing', 'error'];
/** Refusals of a join that say "retry": the session was momentarily too busy to answer. */
const RETRY_JOIN = new Set(['session_busy', 'internal_error']);

/** An error answered by the gateway (`code` from its JSON body) or by this client. */
export class ChatServiceError extends Error {
  constructor(message, code, status = 0) {
    super(message);
    this.name = 'ChatServiceError';
    this.code = code;
    this.status = status;
  }
}

/** The request got no usable answer (server down, network gone, timeout, 5xx): retry. */
export class NetworkError extends ChatServiceError {
  constructor(message) {
    super(message, 'network_error');
    this.name = 'NetworkError';
  }
}

function newClientMessageId() {
  if (globalThis.crypto?.randomUUID) return crypto.randomUUID();
  const bytes = new Uint8Array(16);
  crypto.getRandomValues(bytes);
  return Array.from(bytes, (b) => b.toString(16).padStart(2, '0')).join('');
}

/** The `exp` of a JWT in milliseconds (0 when it cannot be read: ask for a fresh one). */
function tokenExpiry(token) {
  try {
    const part = token.split('.')[1].replace(/-/g, '+').replace(/_/g, '/');
    const exp = JSON.parse(atob(part.padEnd(part.length + ((4 - (part.length % 4)) % 4), '='))).exp;
    return Number.isFinite(exp) ? exp * 1000 : 0;
  } catch {
    return 0;
  }
}

function defaultStorage() {
  try {
    return globalThis.localStorage ?? null;
  } catch {
    return null; // storage disabled (privacy mode, sandboxed frame)
  }
}

export class AgentChatService {
  /**
   * @param {object} [options]
   * @param {string} [options.baseUrl] gateway origin, e.g. `https://chat.example.com`
   *   (default: the page's own origin)
   * @param {Storage|null} [options.storage] where the API key is kept (default localStorage)
   * @param {string} [options.apiKey] a key to use instead of the stored one
   * @param {object} [options.wsConfig] reconnect settings, see DEFAULT_WS_CONFIG
   * @param {() => Promise<string>} [options.tokenProvider] user mode: returns a fresh
   *   token of the page's user (see setTokenProvider)
   */
  constructor({
    baseUrl = '',
    storage = defaultStorage(),
    apiKey,
    wsConfig,
    tokenProvider,
  } = {}) {
    this.baseUrl = baseUrl.replace(/\/+$/, '');
    this.wsConfig = { ...DEFAULT_WS_CONFIG, ...wsConfig };
    this._storage = storage;
    this._apiKey = apiKey ?? this._readStoredKey();
    this._conns = new Map(); // session id -> connection record
    this._statusCallbacks = new Map(); // session id -> status callback
    this._sessionChangeCallbacks = new Map(); // session id -> callbacks
    this._outboxCallbacks = new Map(); // session id -> callback(queued items)
    this._sessionInfo = new Map(); // session id -> {agent_type, project_id}
    this._authRequired = null;
    this._keyPrompt = null;
    this._tokenProvider = tokenProvider ?? null;
    this._token = '';
    this._tokenFetch = null;
    if (typeof window !== 'undefined') {
      window.addEventListener('online', () => this._reconnectAll(['offline', 'connecting']));
      window.addEventListener('offline', () => this._onBrowserOffline());
    }
    if (typeof document !== 'undefined') {
      // A laptop waking up: try at once rather than after the remaining backoff.
      document.addEventListener('visibilitychange', () => {
        if (document.visibilityState === 'visible') this._reconnectAll(['offline']);
      });
    }
  }

  /** Change reconnect settings; they apply to connections opened afterwards. */
  configure(wsConfig) {
    this.wsConfig = { ...this.wsConfig, ...wsConfig };
  }

  // ------------------------------------------------------------------ REST

  /** Create a session; resolves to `{session_id, agent_type, project_id, created_at}`. */
  async createSession(projectId, agentType = 'rag') {
    const body = { agent_type: agentType };
    if (projectId !== undefined && projectId !== null && projectId !== '') {
      body.project_id = projectId;
    }
    const info = await this._request('POST', '/sessions', body);
    this._sessionInfo.set(info.session_id, {
      agent_type: info.agent_type,
      project_id: info.project_id ?? null,
    });
    return info;
  }

  /**
   * The user's sessions, most recently active first (user mode): resolves to
   * `{sessions: [{session_id, agent_type, project_id, created_at, updated_at, last_seq,
   * message_count}], next}`; pass `next` as `before` for the following page (null: none).
   */
  async listSessions({ limit = 20, before = null } = {}) {
    const query = new URLSearchParams({ limit: String(limit) });
    if (before) query.set('before', before);
    return this._request('GET', `/sessions?${query}`);
  }

  /** The session with its history: `{session_id, agent_type, last_seq, messages, ...}`. */
  async getSession(sessionId) {
    const info = await this._request('GET', `/sessions/${encodeURIComponent(sessionId)}`);
    this._sessionInfo.set(info.session_id, {
      agent_type: info.agent_type,
      project_id: info.project_id ?? null,
    });
    return info;
  }

  /**
   * Send a user message. Resolves to `{status, message_id, client_message_id}` once the
   * gateway accepted it; the agent's reply streams to the connected handlers.
   *
   * While the session's connection is down the message waits in a bounded queue (see
   * `onOutboxChange`) and the promise resolves when it goes out. Rejects with a
   * ChatServiceError whose `code` is the gateway's (`message_too_large`, `session_busy`,
   * `rate_limited`, `session_full`, ...) or `queue_full`.
   *
   * @param {object} [options]
   * @param {string} [options.clientMessageId] idempotency key (default: a new UUID)
   */
  sendMessage(sessionId, message, context, options = {}) {
    const clientMessageId = options.clientMessageId ?? newClientMessageId();
    const conn = this._conns.get(sessionId);
    if (!conn) {
      return this._postMessage(sessionId, message, context, clientMessageId);
    }
    if (conn.outbox.length >= MAX_QUEUED_MESSAGES) {
      return Promise.reject(
        new ChatServiceError('Too many messages are waiting for the connection', 'queue_full'),
      );
    }
    return new Promise((resolve, reject) => {
      conn.outbox.push({
        clientMessageId,
        message,
        context,
        state: 'queued',
        resolve,
        reject,
      });
      this._notifyOutbox(conn);
      this._flush(conn);
    });
  }

  /** Ask the server to stop the reply in progress; the partial reply is kept as cancelled. */
  stopResponse(sessionId) {
    const conn = this._conns.get(sessionId);
    if (conn?.socket.connected) {
      conn.socket.emit('stop_response', { session_id: conn.sessionId });
      return true;
    }
    return false;
  }

  // ------------------------------------------------------------------ Socket.IO

  /**
   * Connect the session's events to handlers. Resolves once the room is joined (the
   * server's `connection_confirmed`); rejects if the server refuses the connection.
   *
   * onMessage(chatMessage), onTyping(isTyping), onChunk(deltaText, payload),
   * onComplete(payload), onError({error, code, message_id?, seq?}).
   *
   * @param {object} [options]
   * @param {number} [options.lastSeq] the last seq the caller already shows (e.g. the
   *   largest `seq` of the history it loaded): the server replays everything after it.
   *   Without it, only the reply in progress is replayed.
   */
  connectWebSocket(sessionId, onMessage, onTyping, onChunk, onComplete, onError, options = {}) {
    const previous = this._conns.get(sessionId);
    if (previous) this._teardown(previous, false);
    const info = this._sessionInfo.get(sessionId) ?? {};
    const conn = {
      sessionId,
      agentType: info.agent_type ?? 'rag',
      projectId: info.project_id ?? null,
      handlers: { onMessage, onTyping, onChunk, onComplete, onError },
      lastSeq: Number.isInteger(options.lastSeq) ? options.lastSeq : null,
      joined: false,
      status: 'offline',
      outbox: [],
      flushing: false,
      retryTimer: null,
      watchdog: null,
      lastHeard: Date.now(),
      lastPing: 0,
      pingGapMs: 0,
      sent: new Map(), // message id -> client_message_id, for messages this client sent
      replacing: null,
      closed: false,
      socket: null,
    };
    conn.ready = new Promise((resolve, reject) => {
      conn.resolveReady = resolve;
      conn.rejectReady = reject;
    });
    conn.ready.catch(() => {}); // a refusal is also reported through onError/status
    this._conns.set(sessionId, conn);
    conn.socket = this._openSocket(conn);
    this._setStatus(conn, 'connecting');
    conn.socket.connect();
    return conn.ready;
  }

  /** Leave the session's room and close its connection; queued messages are rejected. */
  disconnectWebSocket(sessionId) {
    const conn = this._conns.get(sessionId);
    if (conn) this._teardown(conn, true);
  }

  /** Reconnect now (e.g. from a "Reconnect" button) instead of waiting for the backoff. */
  reconnect(sessionId) {
    const conn = this._conns.get(sessionId);
    if (!conn || conn.socket.connected) return;
    this._setStatus(conn, 'connecting');
    // Closing the manager cancels its pending backoff timer; connect() opens at once.
    // The socket keeps its recovery id, so the server can still replay what was missed.
    conn.socket.io.disconnect();
    conn.socket.connect();
  }

  /** Current status of a connected session: 'online' | 'connecting' | 'offline'. */
  getStatus(sessionId) {
    return this._conns.get(sessionId)?.status ?? 'offline';
  }

  onStatusChange(sessionId, callback) {
    this._statusCallbacks.set(sessionId, callback);
    const conn = this._conns.get(sessionId);
    if (conn) callback(conn.status);
  }

  offStatusChange(sessionId) {
    this._statusCallbacks.delete(sessionId);
  }

  /** callback(newSessionId, oldSessionId, sessionInfo) when a session had to be replaced. */
  onSessionChange(sessionId, callback) {
    const list = this._sessionChangeCallbacks.get(sessionId) ?? [];
    list.push(callback);
    this._sessionChangeCallbacks.set(sessionId, list);
  }

  offSessionChange(sessionId) {
    this._sessionChangeCallbacks.delete(sessionId);
  }

  /**
   * callback(items) whenever the messages waiting to go out change; each item is
   * `{client_message_id, message, state: 'queued' | 'sending'}`.
   */
  onOutboxChange(sessionId, callback) {
    this._outboxCallbacks.set(sessionId, callback);
  }

  offOutboxChange(sessionId) {
    this._outboxCallbacks.delete(sessionId);
  }

  // ------------------------------------------------------------------ user tokens

  /**
   * User mode: `provider()` → Promise<string> returns a fresh signed token (a JWT the
   * host application mints for its signed-in user). Replaces any API key.
   */
  setTokenProvider(provider) {
    this._tokenProvider = provider ?? null;
    this._token = '';
  }

  /** A token valid for a while yet; `fresh` forces a new one. Concurrent asks share one. */
  _userToken(fresh = false) {
    if (!fresh && this._token && tokenExpiry(this._token) - Date.now() > TOKEN_MARGIN_MS) {
      return Promise.resolve(this._token);
    }
    if (!this._tokenFetch) {
      this._tokenFetch = Promise.resolve()
        .then(() => this._tokenProvider())
        .then((token) => {
          if (typeof token !== 'string' || !token) {
            throw new ChatServiceError('No token for this user', 'unauthorized', 401);
          }
          this._token = token;
          return token;
        })
        .finally(() => {
          this._tokenFetch = null;
        });
    }
    return this._tokenFetch;
  }

  /** What REST sends as the bearer credential and Socket.IO as `auth.token`. */
  async _credential(fresh = false) {
    return this._tokenProvider ? this._userToken(fresh) : this._apiKey;
  }

  // ------------------------------------------------------------------ API key

  /**
   * callback({refused}) → Promise<string | null>: asked for the API key when the server
   * refuses a request; `refused` is true when a key was tried and rejected. Resolve null
   * to give up.
   */
  onAuthRequired(callback) {
    this._authRequired = callback;
  }

  /** Use this key from now on and remember it (empty: forget it). */
  setApiKey(key) {
    this._apiKey = key || '';
    try {
      if (this._apiKey) this._storage?.setItem(API_KEY_STORAGE, this._apiKey);
      else this._storage?.removeItem(API_KEY_STORAGE);
    } catch {
      // storage full or disabled: the key still works for this page
    }
  }

  hasApiKey() {
    return Boolean(this._apiKey);
  }

  _readStoredKey() {
    try {
      return this._storage?.getItem(API_KEY_STORAGE) ?? '';
    } catch {
      return '';
    }
  }

  /** Resolves once a new key is set; concurrent refusals share one prompt. */
  _askForKey(refused) {
    if (!this._authRequired) {
      return Promise.reject(new ChatServiceError('An API key is required', 'unauthorized', 401));
    }
    if (!this._keyPrompt) {
      this._keyPrompt = Promise.resolve(this._authRequired({ refused }))
        .then((key) => {
          if (!key) throw new ChatServiceError('An API key is required', 'unauthorized', 401);
          this.setApiKey(key);
        })
        .finally(() => {
          this._keyPrompt = null;
        });
    }
    return this._keyPrompt;
  }

  // ------------------------------------------------------------------ internals: REST

  async _request(method, path, body) {
    let refreshed = false;
    for (;;) {
      const sentKey = await this._credential(refreshed);
      const headers = { Accept: 'application/json' };
      if (body !== undefined) headers['Content-Type'] = 'application/json';
      if (sentKey) headers.Authorization = `Bearer ${sentKey}`;
      const abort = new AbortController();
      const timer = setTimeout(() => abort.abort(), REQUEST_TIMEOUT_MS);
      let response;
      try {
        response = await fetch(`${this.baseUrl}${API_PREFIX}${path}`, {
          method,
          headers,
          body: body === undefined ? undefined : JSON.stringify(body),
          signal: abort.signal,
        });
      } catch (exc) {
        throw new NetworkError(`Cannot reach the chat server (${exc.message})`);
      } finally {
        clearTimeout(timer);
      }
      let payload = null;
      try {
        payload = await response.json();
      } catch {
        payload = null;
      }
      if (response.ok) return payload;
      const code = payload?.code ?? `http_${response.status}`;
      if (this._tokenProvider && response.status === 401 && !refreshed) {
        refreshed = true; // expired or revoked: one more try with a fresh token
        continue;
      }
      if (!this._tokenProvider && (response.status === 401 || code === 'unauthorized')) {
        // Another request may already have brought a new key: retry with it first.
        if (this._apiKey === sentKey) await this._askForKey(Boolean(sentKey));
        continue;
      }
      const detail = payload?.detail ?? `Request failed with status ${response.status}`;
      if (response.status >= 500) throw new NetworkError(detail);
      throw new ChatServiceError(detail, code, response.status);
    }
  }

  async _postMessage(sessionId, message, context, clientMessageId) {
    const body = { message, client_message_id: clientMessageId };
    if (context !== undefined && context !== null) body.context = context;
    const answer = await this._request(
      'POST',
      `/sessions/${encodeURIComponent(sessionId)}/messages`,
      body,
    );
    return { ...answer, client_message_id: clientMessageId };
  }

  // ------------------------------------------------------------------ internals: socket

  _openSocket(conn) {
    const cfg = this.wsConfig;
    const socket = io(this.baseUrl || undefined, {
      path: '/socket.io/',
      autoConnect: false,
      forceNew: true,
      reconnection: cfg.enableAutoReconnect,
      reconnectionAttempts: cfg.maxReconnectAttempts,
      reconnectionDelay: cfg.reconnectInterval,
      reconnectionDelayMax: cfg.reconnectInterval * 5,
      randomizationFactor: 0.5,
      // A function, so every (re)connect carries the current key or a fresh token.
      auth: (cb) => {
        this._credential().then(
          (token) => cb(token ? { recover: true, token } : { recover: true }),
          () => cb({ recover: true }),
        );
      },
    });

    const heard = () => {
      conn.lastHeard = Date.now();
    };
    socket.io.on('ping', () => {
      // The server pings every pingInterval; the largest gap seen tells how long an idle
      // but healthy connection may stay silent.
      const now = Date.now();
      if (conn.lastPing) conn.pingGapMs = Math.max(conn.pingGapMs, now - conn.lastPing);
      conn.lastPing = now;
      heard();
    });
    socket.io.on('packet', heard);
    socket.io.on('open', () => {
      conn.lastPing = 0;
      conn.pingGapMs = 0;
      heard();
    });
    socket.io.on('reconnect_attempt', () => this._setStatus(conn, this._downStatus()));
    socket.io.on('reconnect_failed', () => this._setStatus(conn, 'offline'));

    socket.on('connect', () => {
      heard();
      conn.tokenRetried = false;
      this._startWatchdog(conn);
      if (socket.recovered && conn.joined) {
        // The server restored our room membership and replayed what we missed.
        this._setStatus(conn, 'online');
        this._flush(conn);
        return;
      }
      conn.joined = false;
      this._join(conn);
    });

    socket.on('connect_error', (err) => {
      if (socket.active) {
        // A transport failure: socket.io keeps retrying with backoff.
        this._setStatus(conn, this._downStatus());
        return;
      }
      const data = err?.data ?? {};
      const code = data.code ?? err?.message;
      if (this._tokenProvider && (code === 'unauthorized' || code === 'token_expired')) {
        // One retry with a fresh token; a second refusal is final.
        if (conn.tokenRetried) {
          this._fail(conn, new ChatServiceError(data.detail ?? 'Not signed in', code, 401));
          return;
        }
        conn.tokenRetried = true;
        this._userToken(true).then(
          () => {
            if (!conn.closed) socket.connect();
          },
          (exc) => this._fail(conn, exc),
        );
        return;
      }
      if (code === 'unauthorized') {
        this._setStatus(conn, 'offline');
        this._askForKey(this.hasApiKey()).then(
          () => {
            if (!conn.closed) {
              this._setStatus(conn, 'connecting');
              socket.connect();
            }
          },
          (exc) => this._fail(conn, exc),
        );
        return;
      }
      this._fail(conn, new ChatServiceError(data.message ?? err.message, code ?? 'refused'));
    });

    socket.on('disconnect', (reason) => {
      this._stopWatchdog(conn);
      if (conn.closed) return;
      if (reason === 'io server disconnect') {
        // The server dropped us on purpose (e.g. we fell behind); resume at once.
        this._setStatus(conn, 'connecting');
        socket.connect();
        return;
      }
      this._setStatus(conn, socket.active ? this._downStatus() : 'offline');
    });

    socket.on('connection_confirmed', (payload) => {
      if (payload?.session_id !== conn.sessionId) return;
      conn.joined = true;
      if (payload.reload) {
        // More was missed than the server replays over the socket: fetch it over REST.
        this._reload(conn, conn.lastSeq ?? 0);
      }
      if (Number.isInteger(payload.last_seq)) {
        conn.lastSeq = Math.max(conn.lastSeq ?? 0, payload.last_seq);
      }
      conn.handlers.onTyping?.(Boolean(payload.typing));
      this._setStatus(conn, 'online');
      conn.resolveReady(payload);
      this._flush(conn);
    });

    for (const name of SESSION_EVENTS) {
      socket.on(name, (payload) => this._onSessionEvent(conn, name, payload));
    }
    return socket;
  }

  /** Deliver the stored messages after `afterSeq` (a rejoin told to reload them). */
  async _reload(conn, afterSeq) {
    try {
      const session = await this.getSession(conn.sessionId);
      for (const message of session.messages ?? []) {
        if ((message.seq ?? 0) > afterSeq && !conn.closed) conn.handlers.onMessage?.(message);
      }
    } catch (exc) {
      conn.handlers.onError?.({ code: exc?.code ?? 'reload_failed', error: String(exc?.message ?? exc) });
    }
  }

  _join(conn) {
    const data = { session_id: conn.sessionId };
    if (conn.lastSeq !== null) data.last_seq = conn.lastSeq;
    conn.socket.emit('join_chat', data);
  }

  _onSessionEvent(conn, name, payload) {
    if (!payload || typeof payload !== 'object') return;
    if (name === 'error' && payload.code === 'token_expired' && this._tokenProvider) {
      // Our token is about to lapse: hand the server a fresh one, keeping the socket.
      this._userToken(true).then(
        (token) => conn.socket.emit('refresh_token', { token }),
        (exc) => conn.handlers.onError?.({ code: exc.code ?? 'unauthorized', error: exc.message }),
      );
      return;
    }
    if (name === 'error' && payload.seq === undefined) {
      // A refusal addressed to this socket alone (no seq): not part of the session's log.
      if (payload.code === 'session_not_found' && payload.session_id === conn.sessionId) {
        this._replaceSession(conn);
        return;
      }
      if (!conn.joined && RETRY_JOIN.has(payload.code) && conn.socket.connected) {
        // The join itself was refused for a passing reason: try it again shortly.
        setTimeout(() => {
          if (!conn.closed && !conn.joined && conn.socket.connected) this._join(conn);
        }, this.wsConfig.reconnectInterval);
        return;
      }
      conn.handlers.onError?.(payload);
      return;
    }
    if (payload.session_id !== conn.sessionId) return;
    if (Number.isInteger(payload.seq)) {
      if (conn.lastSeq !== null && payload.seq <= conn.lastSeq) return; // seen already
      conn.lastSeq = payload.seq;
    }
    const h = conn.handlers;
    switch (name) {
      case 'message': {
        const message = { ...payload.data };
        const clientMessageId = this._claimSent(conn, message);
        if (clientMessageId) message.client_message_id = clientMessageId;
        h.onMessage?.(message);
        break;
      }
      case 'stream_chunk':
        h.onChunk?.(payload.content ?? '', payload);
        break;
      case 'stream_complete':
        h.onComplete?.(payload);
        break;
      case 'typing':
        h.onTyping?.(Boolean(payload.is_typing));
        break;
      case 'error':
        h.onError?.(payload);
        break;
    }
  }

  /**
   * Which of our sends this user message is. The id is known once the POST answered;
   * the room's echo may come first, then the oldest message in flight with the same
   * text is the one.
   */
  _claimSent(conn, message) {
    if (message.sender !== 'user') return undefined;
    const known = conn.sent.get(message.id);
    if (known) return known;
    const item = conn.outbox.find(
      (x) => x.state === 'sending' && !x.echoed && x.message === message.content,
    );
    if (!item) return undefined;
    item.echoed = message.id;
    conn.sent.set(message.id, item.clientMessageId);
    return item.clientMessageId;
  }

  async _flush(conn) {
    if (conn.flushing || conn.closed) return;
    conn.flushing = true;
    clearTimeout(conn.retryTimer);
    try {
      while (conn.outbox.length && conn.status === 'online' && !conn.closed) {
        const item = conn.outbox[0];
        item.state = 'sending';
        this._notifyOutbox(conn);
        const body = { message: item.message, client_message_id: item.clientMessageId };
        if (item.context !== undefined && item.context !== null) body.context = item.context;
        let answer;
        try {
          answer = await this._request(
            'POST',
            `/sessions/${encodeURIComponent(conn.sessionId)}/messages`,
            body,
          );
        } catch (exc) {
          if (exc instanceof NetworkError) {
            // Unknown whether it arrived; the retry carries the same client_message_id.
            item.state = 'queued';
            this._notifyOutbox(conn);
            conn.retryTimer = setTimeout(() => this._flush(conn), this.wsConfig.reconnectInterval);
            return;
          }
          if (exc instanceof ChatServiceError && exc.code === 'session_not_found') {
            item.state = 'queued';
            this._notifyOutbox(conn);
            conn.flushing = false;
            await this._replaceSession(conn);
            return;
          }
          conn.outbox.shift();
          this._notifyOutbox(conn);
          item.reject(exc);
          continue;
        }
        conn.outbox.shift();
        if (answer?.message_id) conn.sent.set(answer.message_id, item.clientMessageId);
        this._notifyOutbox(conn);
        item.resolve({ ...answer, client_message_id: item.clientMessageId });
      }
    } finally {
      conn.flushing = false;
    }
  }

  _notifyOutbox(conn) {
    const cb = this._outboxCallbacks.get(conn.sessionId);
    cb?.(
      conn.outbox.map((x) => ({
        client_message_id: x.clientMessageId,
        message: x.message,
        state: x.state,
      })),
    );
  }

  /** The server forgot the session: carry on in a new one of the same agent type. */
  _replaceSession(conn) {
    if (!conn.replacing) {
      conn.replacing = (async () => {
        const oldId = conn.sessionId;
        let info;
        try {
          info = await this.createSession(conn.projectId ?? undefined, conn.agentType);
        } catch (exc) {
          this._fail(conn, exc);
          return;
        }
        if (conn.closed) return;
        const newId = info.session_id;
        conn.sessionId = newId;
        conn.lastSeq = null;
        conn.joined = false;
        conn.sent.clear();
        this._conns.delete(oldId);
        this._conns.set(newId, conn);
        for (const map of [this._statusCallbacks, this._outboxCallbacks]) {
          if (map.has(oldId)) {
            map.set(newId, map.get(oldId));
            map.delete(oldId);
          }
        }
        const changeCallbacks = this._sessionChangeCallbacks.get(oldId) ?? [];
        this._sessionChangeCallbacks.delete(oldId);
        this._sessionChangeCallbacks.set(newId, changeCallbacks);
        for (const cb of changeCallbacks) cb(newId, oldId, info);
        this._setStatus(conn, 'connecting');
        if (conn.socket.connected) this._join(conn);
      })().finally(() => {
        conn.replacing = null;
      });
    }
    return conn.replacing;
  }

  _fail(conn, exc) {
    this._setStatus(conn, 'offline');
    conn.rejectReady(exc);
    conn.handlers.onError?.({
      type: 'error',
      session_id: conn.sessionId,
      error: exc.message,
      code: exc.code ?? 'connection_failed',
    });
  }

  /** While socket.io retries: 'connecting', unless the browser knows it has no network. */
  _downStatus() {
    return globalThis.navigator?.onLine === false ? 'offline' : 'connecting';
  }

  _setStatus(conn, status) {
    if (conn.status === status) return;
    conn.status = status;
    if (status !== 'online') clearTimeout(conn.retryTimer);
    this._statusCallbacks.get(conn.sessionId)?.(status);
  }

  _startWatchdog(conn) {
    this._stopWatchdog(conn);
    if (!this.wsConfig.enableHeartbeat) return;
    const check = () => {
      if (!conn.pingGapMs) return; // the server's ping rhythm is not known yet
      const limit = Math.max(this.wsConfig.heartbeatInterval, conn.pingGapMs * 1.5);
      if (conn.socket.connected && Date.now() - conn.lastHeard > limit) {
        // Silent for too long: the link is dead even if the transport has not noticed.
        conn.socket.io.engine?.close();
      }
    };
    conn.watchdog = setInterval(check, Math.min(this.wsConfig.heartbeatInterval, 5000));
  }

  _stopWatchdog(conn) {
    clearInterval(conn.watchdog);
    conn.watchdog = null;
  }

  /** Reconnect now every connection whose status is one of `statuses`. */
  _reconnectAll(statuses) {
    for (const conn of this._conns.values()) {
      if (!conn.closed && !conn.socket.connected && statuses.includes(conn.status)) {
        this.reconnect(conn.sessionId);
      }
    }
  }

  _onBrowserOffline() {
    for (const conn of this._conns.values()) {
      if (conn.closed) continue;
      this._setStatus(conn, 'offline');
      // The link is gone; closing it now lets socket.io start resuming instead of
      // waiting for the heartbeat to time out.
      if (conn.socket.connected) conn.socket.io.engine?.close();
    }
  }

  _teardown(conn, leave) {
    conn.closed = true;
    this._stopWatchdog(conn);
    clearTimeout(conn.retryTimer);
    if (leave && conn.socket.connected) {
      conn.socket.emit('leave_chat', { session_id: conn.sessionId });
    }
    conn.socket.disconnect();
    conn.socket.removeAllListeners();
    conn.socket.io.removeAllListeners();
    for (const item of conn.outbox.splice(0)) {
      item.reject(new ChatServiceError('Disconnected before the message was sent', 'disconnected'));
    }
    conn.rejectReady(new ChatServiceError('Disconnected', 'disconnected'));
    if (this._conns.get(conn.sessionId) === conn) {
      this._conns.delete(conn.sessionId);
      this._setStatus(conn, 'offline');
    }
  }
}

/** The page-wide service, on the page's own origin (the seed's `agentChatService`). */
export const agentChatService = new AgentChatService();
export default agentChatService;
