/**
 * <archon-chat-panel>: a chat side panel for the archon-chat gateway, usable from any page
 * or framework.
 *
 *   <archon-chat-panel agent-type="rag"></archon-chat-panel>
 *
 * Attributes
 *   agent-type   rag | document | task: type of the first session (default rag); the user
 *                can switch, which starts a new session of that type
 *   project-id   project the sessions belong to (also sent as the task agent's context)
 *   server       gateway origin when it is not the page's own (its CORS list must allow us)
 *   theme        light | dark (default: follow the system)
 *   storage-key  localStorage key remembering the conversation (default archon-chat:session);
 *                give each panel on a page its own
 *   image-hosts  hosts images in replies may load from, e.g. "https://cdn.example.com"
 *                (space or comma separated; default none: an image shows as a link with
 *                its alt text, so a reply cannot make the reader's browser fetch anything)
 *
 * Property
 *   tokenProvider  user mode (the gateway checks signed tokens): an async function the
 *                host page provides, returning a fresh token of its signed-in user. The
 *                panel then also offers the user's recent conversations.
 *
 * The panel connects only once it is visible (never while `hidden` or inside a hidden
 * container) and keeps its conversation across reloads. It dispatches composed, bubbling
 * events: archon-chat:status {status}, archon-chat:session {sessionId, agentType},
 * archon-chat:message {message}, archon-chat:chunk {content, payload},
 * archon-chat:complete {payload}, archon-chat:typing {isTyping}, archon-chat:error {error}.
 */
import { agentChatService, AgentChatService } from './agentChatService.js';
import { parseHosts, renderMarkdown } from './markdown.js';
import { panelStyles } from './archon-chat-panel.styles.js';

const AGENTS = {
  rag: {
    label: 'RAG',
    who: 'RAG agent',
    tagline: 'Answers from the knowledge base',
    intro: 'Ask questions about the knowledge base; answers cite their sources.',
    placeholder: 'Ask the knowledge base…',
    suggestions: ['What is Archon?', 'How does resume after a reconnect work?'],
    options: [
      { key: 'match_count', label: 'Passages to cite', type: 'number', min: 1, max: 50, value: '5' },
      { key: 'source_filter', label: 'Only sources matching', type: 'text', placeholder: 'e.g. configuration' },
    ],
  },
  document: {
    label: 'Document',
    who: 'Document agent',
    tagline: 'Analysis and drafting',
    intro: 'Analyse a text or draft documentation from the knowledge base.',
    placeholder: 'Paste a text to analyse, or name a topic to draft…',
    suggestions: ['Draft a guide to configuring archon-chat', 'Summarise the wire contract'],
    options: [
      { key: 'format', label: 'Format', type: 'select', choices: ['markdown', 'plain'], value: 'markdown' },
      { key: 'style', label: 'Style', type: 'select', choices: ['technical', 'concise', 'friendly', 'formal'], value: 'technical' },
      { key: 'mode', label: 'Mode', type: 'select', choices: ['auto', 'analyze', 'draft'], value: 'auto' },
      { key: 'document', label: 'Knowledge-base document', type: 'text', placeholder: 'path or title (optional)' },
    ],
  },
  task: {
    label: 'Task',
    who: 'Task agent',
    tagline: 'Planning and task breakdown',
    intro: 'Break a feature down into an ordered plan with acceptance criteria.',
    placeholder: 'Describe a feature to plan…',
    suggestions: ['Plan adding single sign-on', 'Break down a CSV export feature'],
    options: [
      { key: 'detail_level', label: 'Detail level', type: 'select', choices: ['low', 'medium', 'high'], value: 'medium' },
    ],
  },
};

const REFUSALS = {
  rate_limited: 'You are sending messages too quickly. Wait a moment, then try again.',
  session_busy: 'The agent still has several messages to answer. Wait for it to catch up.',
  session_full: 'This conversation is full. Start a new one to carry on.',
  message_too_large: 'That message is too long to send.',
  queue_full: 'Too many messages are waiting for the connection.',
  unauthorized: 'The chat server needs an API key.',
  network_error: 'The chat server cannot be reached.',
};

// What a reader is told when a reply fails; the upstream wording goes in a details element.
const FAILURES = {
  agent_unavailable: 'The agent service is not available right now. Try again in a moment.',
  agent_timeout: 'The agent took too long to answer. Try again in a moment.',
  agent_protocol_error: 'The agent sent a reply that could not be read.',
  agent_error: 'The agent could not answer this message.',
  owner_lost: 'The reply was interrupted by a server problem. Try again.',
  internal_error: 'Something went wrong on the chat server. Try again.',
};
const FAILURE_DEFAULT = 'The agent could not answer this message.';

const STATUS_TEXT = { online: 'Online', connecting: 'Connecting…', offline: 'Offline' };
const WIDTH_KEY = 'archon-chat:width';
const OPTIONS_KEY = 'archon-chat:options';
const STICK_SLACK_PX = 48;
const START_RETRY_MS = [1000, 2000, 5000, 10000, 30000];

const ICONS = {
  logo: '<svg viewBox="0 0 24 24" fill="currentColor" aria-hidden="true"><path d="M12 2l2.2 6.1L20 10l-5.8 1.9L12 18l-2.2-6.1L4 10l5.8-1.9z"/><path d="M19 15l.9 2.1L22 18l-2.1.9L19 21l-.9-2.1L16 18l2.1-.9z" opacity=".7"/></svg>',
  send: '<svg viewBox="0 0 24 24" fill="none" stroke="currentColor" stroke-width="2.2" stroke-linecap="round" stroke-linejoin="round" aria-hidden="true"><path d="M12 19V5M5 12l7-7 7 7"/></svg>',
  stop: '<svg viewBox="0 0 12 12" fill="currentColor" aria-hidden="true"><rect width="12" height="12" rx="2"/></svg>',
  plus: '<svg viewBox="0 0 24 24" fill="none" stroke="currentColor" stroke-width="2" stroke-linecap="round" aria-hidden="true"><path d="M12 5v14M5 12h14"/></svg>',
  sliders: '<svg viewBox="0 0 24 24" fill="none" stroke="currentColor" stroke-width="2" stroke-linecap="round" aria-hidden="true"><path d="M4 7h10M18 7h2M4 17h4M12 17h8"/><circle cx="16" cy="7" r="2"/><circle cx="10" cy="17" r="2"/></svg>',
  clock: '<svg viewBox="0 0 24 24" fill="none" stroke="currentColor" stroke-width="2" stroke-linecap="round" aria-hidden="true"><circle cx="12" cy="12" r="9"/><path d="M12 7v5l3 2"/></svg>',
  alert: '<svg viewBox="0 0 24 24" fill="none" stroke="currentColor" stroke-width="2" stroke-linecap="round" aria-hidden="true"><circle cx="12" cy="12" r="9"/><path d="M12 8v5M12 16h.01"/></svg>',
  stopped: '<svg viewBox="0 0 24 24" fill="none" stroke="currentColor" stroke-width="2" aria-hidden="true"><circle cx="12" cy="12" r="9"/><rect x="9" y="9" width="6" height="6" rx="1" fill="currentColor" stroke="none"/></svg>',
};

const TEMPLATE = `
<section class="panel" part="panel" aria-labelledby="title">
  <header>
    <div class="title-row">
      <div class="logo">${ICONS.logo}</div>
      <div class="titles">
        <h2 id="title">Agent chat</h2>
        <p class="subtitle" id="subtitle"></p>
      </div>
      <div class="status" part="status" data-status="offline" role="status">
        <span class="dot" aria-hidden="true"></span><span class="status-text">Offline</span>
      </div>
      <button type="button" class="text-button reconnect" part="reconnect" hidden>Reconnect</button>
      <button type="button" class="icon-button recent-toggle" part="recent-toggle" hidden
              aria-label="Recent conversations" title="Recent conversations"
              aria-expanded="false" aria-controls="recent">${ICONS.clock}</button>
      <button type="button" class="icon-button new-chat" part="new-chat"
              aria-label="New conversation" title="New conversation">${ICONS.plus}</button>
    </div>
    <div class="controls">
      <div class="agent-picker" role="radiogroup" aria-label="Agent">
        ${Object.entries(AGENTS)
          .map(
            ([type, a]) =>
              `<label><input type="radio" name="agent" value="${type}"><span>${a.label}</span></label>`,
          )
          .join('')}
      </div>
      <button type="button" class="icon-button options-toggle" part="options-toggle"
              aria-label="Agent options" title="Agent options" aria-expanded="false"
              aria-controls="options">${ICONS.sliders}</button>
    </div>
    <div class="options" id="options" part="options" hidden></div>
    <div class="recent" id="recent" part="recent" hidden>
      <ul class="recent-list" aria-label="Recent conversations"></ul>
      <p class="recent-note" hidden></p>
    </div>
  </header>
  <div class="scroller" part="conversation">
    <div class="empty" part="empty">
      <div class="logo">${ICONS.logo}</div>
      <h3 class="empty-title"></h3>
      <p class="empty-intro"></p>
      <div class="suggestions"></div>
    </div>
    <ol class="log" part="log" role="log" aria-live="polite" aria-label="Conversation"></ol>
    <ol class="outbox" part="outbox" aria-label="Messages not sent yet"></ol>
  </div>
  <button type="button" class="jump" hidden>↓ New messages</button>
  <div class="typing" part="typing" hidden>
    <span class="dots" aria-hidden="true"><i></i><i></i><i></i></span>
    <span class="typing-text"></span>
  </div>
  <form class="composer" part="composer">
    <div class="composer-box">
      <label class="visually-hidden" for="input">Message</label>
      <textarea id="input" part="input" rows="1" autocomplete="off"></textarea>
      <button type="button" class="stop" part="stop" hidden>${ICONS.stop}<span>Stop</span></button>
      <button type="submit" class="send" part="send" aria-label="Send message" title="Send" disabled>${ICONS.send}</button>
    </div>
    <p class="hint" id="hint"><kbd>Enter</kbd> to send · <kbd>Shift</kbd>+<kbd>Enter</kbd> for a new line</p>
  </form>
  <div class="key-dialog" part="key-dialog" hidden>
    <form role="dialog" aria-modal="true" aria-labelledby="key-title">
      <h3 id="key-title">API key needed</h3>
      <p class="key-text">This chat server needs an API key. It is kept in this browser.</p>
      <label class="visually-hidden" for="key-input">API key</label>
      <input id="key-input" type="password" autocomplete="off" placeholder="API key" required>
      <div class="actions">
        <button type="button" class="text-button key-cancel">Cancel</button>
        <button type="submit" class="primary">Connect</button>
      </div>
    </form>
  </div>
</section>
<div class="resize" part="resize-handle" role="separator" aria-orientation="vertical"
     aria-label="Resize chat panel" tabindex="0"></div>`;

let sheet = null;
function styleSheet() {
  if (!sheet) {
    sheet = new CSSStyleSheet();
    sheet.replaceSync(panelStyles);
  }
  return sheet;
}

function newId() {
  return globalThis.crypto?.randomUUID?.() ?? `${Date.now()}-${Math.random().toString(16).slice(2)}`;
}

function readJson(key, fallback) {
  try {
    const raw = localStorage.getItem(key);
    return raw ? JSON.parse(raw) : fallback;
  } catch {
    return fallback;
  }
}

function writeJson(key, value) {
  try {
    if (value === null) localStorage.removeItem(key);
    else localStorage.setItem(key, JSON.stringify(value));
  } catch {
    // storage disabled or full: the panel still works, it just forgets on reload
  }
}

function formatTime(timestamp) {
  const date = timestamp ? new Date(timestamp) : new Date();
  if (Number.isNaN(date.getTime())) return '';
  return date.toLocaleTimeString([], { hour: '2-digit', minute: '2-digit' });
}

export class ArchonChatPanel extends HTMLElement {
  static get observedAttributes() {
    return ['server'];
  }

  constructor() {
    super();
    const root = this.attachShadow({ mode: 'open' });
    root.adoptedStyleSheets = [styleSheet()];
    root.innerHTML = TEMPLATE;
    const $ = (selector) => root.querySelector(selector);
    this._ui = {
      status: $('.status'),
      statusText: $('.status-text'),
      reconnect: $('.reconnect'),
      newChat: $('.new-chat'),
      recentToggle: $('.recent-toggle'),
      recent: $('.recent'),
      recentList: $('.recent-list'),
      recentNote: $('.recent-note'),
      subtitle: $('#subtitle'),
      picker: $('.agent-picker'),
      optionsToggle: $('.options-toggle'),
      options: $('.options'),
      scroller: $('.scroller'),
      empty: $('.empty'),
      emptyTitle: $('.empty-title'),
      emptyIntro: $('.empty-intro'),
      suggestions: $('.suggestions'),
      log: $('.log'),
      outbox: $('.outbox'),
      jump: $('.jump'),
      typing: $('.typing'),
      typingText: $('.typing-text'),
      form: $('.composer'),
      input: $('#input'),
      send: $('.send'),
      stop: $('.stop'),
      resize: $('.resize'),
      keyDialog: $('.key-dialog'),
      keyForm: $('.key-dialog form'),
      keyInput: $('#key-input'),
      keyText: $('.key-text'),
      keyCancel: $('.key-cancel'),
    };
    this._service = null;
    this._sessionId = null;
    this._agentType = null;
    this._entries = new Map(); // message id -> entry
    this._pending = new Map(); // client_message_id -> entry not yet confirmed by the room
    this._streaming = new Set(); // message ids of replies streaming now
    this._dirty = new Set();
    this._renderQueued = false;
    this._typing = false;
    this._stick = true;
    this._started = false;
    this._starting = null;
    this._startAttempt = 0;
    this._startTimer = null;
    this._startNote = null;
    this._keyRequest = null;
    this._observer = null;
    this._visible = false;
    this._bindUi();
  }

  // ------------------------------------------------------------------ public API

  /** The AgentChatService in use (the page-wide one unless `server` is set). */
  get service() {
    if (!this._service) {
      const server = this.getAttribute('server');
      this._service = server ? new AgentChatService({ baseUrl: server }) : agentChatService;
    }
    return this._service;
  }

  set service(value) {
    this._stop();
    this._service = value;
    if (this._tokenProvider) value.setTokenProvider(this._tokenProvider);
    if (this.isConnected && this._visible) this._start();
  }

  /** User mode: `() => Promise<string>` returning a fresh token of the page's user. */
  get tokenProvider() {
    return this._tokenProvider ?? null;
  }

  set tokenProvider(provider) {
    this._tokenProvider = provider ?? null;
    this.service.setTokenProvider(this._tokenProvider);
    this._ui.recentToggle.hidden = !this._tokenProvider;
    if (!this._tokenProvider) this._showRecent(false);
  }

  /** Open a stored conversation of the user (from the recent list). */
  openConversation(sessionId) {
    const service = this.service;
    const old = this._sessionId;
    if (old === sessionId) return Promise.resolve();
    if (old) {
      service.offStatusChange(old);
      service.offSessionChange(old);
      service.offOutboxChange(old);
      service.disconnectWebSocket(old);
    }
    clearTimeout(this._startTimer);
    this._sessionId = null;
    this._started = true;
    this._setStatus('connecting');
    this._starting = service.getSession(sessionId).then(
      (info) => this._open(info),
      (exc) => {
        this._started = false;
        this._setStatus('offline');
        this._systemNote(this._describe(exc), true);
      },
    );
    return this._starting;
  }

  get sessionId() {
    return this._sessionId;
  }

  get agentType() {
    return this._agentType ?? this._initialAgentType();
  }

  get status() {
    return this._ui.status.dataset.status;
  }

  /** Start a new conversation (of `agentType`, default the current one). */
  newConversation(agentType = this.agentType) {
    return this._switchSession(agentType);
  }

  /** Send `text` as the user would. */
  send(text) {
    return this._send(text);
  }

  /** Stop the reply in progress. */
  stop() {
    if (this._sessionId) this.service.stopResponse(this._sessionId);
  }

  reconnect() {
    if (!this._started) this._start();
    else if (this._sessionId) this.service.reconnect(this._sessionId);
  }

  // ------------------------------------------------------------------ lifecycle

  connectedCallback() {
    clearTimeout(this._teardownTimer);
    this._restoreWidth();
    this._renderAgent(this.agentType);
    if (!this._observer) {
      // Connect only when the panel is actually shown: a hidden widget must not open a
      // socket on every page load.
      this._observer = new IntersectionObserver((records) => {
        const visible = records.some((r) => r.isIntersecting);
        this._visible = visible;
        if (visible && !this._started) this._start();
      });
    }
    this._observer.observe(this);
  }

  disconnectedCallback() {
    this._observer?.disconnect();
    // A move within the document calls disconnected then connected; only a real removal
    // (no reconnection within this task) closes the conversation.
    this._teardownTimer = setTimeout(() => {
      if (!this.isConnected) this._stop();
    }, 0);
  }

  attributeChangedCallback(name, oldValue, newValue) {
    if (name === 'server' && oldValue !== newValue && this._service) {
      this._stop();
      this._service = null;
      if (this.isConnected && this._visible) this._start();
    }
  }

  // ------------------------------------------------------------------ session

  _storageKey() {
    return this.getAttribute('storage-key') || 'archon-chat:session';
  }

  _initialAgentType() {
    const type = this.getAttribute('agent-type');
    return AGENTS[type] ? type : 'rag';
  }

  _projectId() {
    return this.getAttribute('project-id') || undefined;
  }

  _start() {
    if (this._started) return this._starting;
    this._started = true;
    clearTimeout(this._startTimer);
    this._setStatus('connecting');
    this.service.onAuthRequired((info) => this._askForKey(info));
    this._starting = this._loadSession().then(
      (info) => {
        this._startAttempt = 0;
        this._startNote = null;
        return this._open(info);
      },
      (exc) => {
        this._started = false;
        this._setStatus('offline');
        // One note, updated on every retry, rather than a new one each time.
        this._startNote?.remove();
        this._startNote = this._systemNote(this._describe(exc), true);
        if (exc.code !== 'unauthorized') {
          const delay = START_RETRY_MS[Math.min(this._startAttempt, START_RETRY_MS.length - 1)];
          this._startAttempt += 1;
          this._startTimer = setTimeout(() => {
            if (this.isConnected && !this._started) this._start();
          }, delay);
        }
      },
    );
    return this._starting;
  }

  async _loadSession() {
    const stored = readJson(this._storageKey(), null);
    if (stored?.session_id) {
      try {
        return await this.service.getSession(stored.session_id);
      } catch (exc) {
        if (exc.code !== 'session_not_found') throw exc;
      }
    }
    const created = await this.service.createSession(this._projectId(), this._initialAgentType());
    return { ...created, messages: [], last_seq: 0 };
  }

  /** Show the session's history and connect to it; resolves once the session is set
   * (messages sent from then on queue in the service until the room is joined). */
  _open(info) {
    const service = this.service;
    this._sessionId = info.session_id;
    this._agentType = AGENTS[info.agent_type] ? info.agent_type : 'rag';
    writeJson(this._storageKey(), { session_id: info.session_id, agent_type: this._agentType });
    this._clearConversation();
    this._renderAgent(this._agentType);
    let lastSeq = 0;
    for (const message of info.messages ?? []) {
      this._onMessage(message, false);
      lastSeq = Math.max(lastSeq, message.seq ?? 0);
    }
    this._scrollToEnd();
    const id = info.session_id;
    service.onStatusChange(id, (status) => this._setStatus(status));
    service.onSessionChange(id, (newId, oldId, newInfo) => this._onSessionReplaced(newId, newInfo));
    service.onOutboxChange(id, (items) => this._onOutbox(items));
    this._emit('session', { sessionId: id, agentType: this._agentType });
    // A refused connection is also reported through the status and onError; nothing more
    // to show here.
    service
      .connectWebSocket(
        id,
        (message) => this._onMessage(message, true),
        (isTyping) => this._onTyping(isTyping),
        (content, payload) => this._onChunk(content, payload),
        (payload) => this._onComplete(payload),
        (error) => this._onError(error),
        { lastSeq },
      )
      .catch(() => {});
  }

  _stop() {
    clearTimeout(this._startTimer);
    if (!this._started) return;
    this._started = false;
    const id = this._sessionId;
    if (id && this._service) {
      this._service.offStatusChange(id);
      this._service.offSessionChange(id);
      this._service.offOutboxChange(id);
      this._service.disconnectWebSocket(id);
    }
    this._setStatus('offline');
  }

  _switchSession(agentType) {
    const service = this.service;
    const old = this._sessionId;
    if (old) {
      service.offStatusChange(old);
      service.offSessionChange(old);
      service.offOutboxChange(old);
      service.disconnectWebSocket(old);
    }
    clearTimeout(this._startTimer);
    this._sessionId = null;
    this._started = true;
    this._clearConversation();
    this._renderAgent(agentType);
    this._setStatus('connecting');
    this._starting = service.createSession(this._projectId(), agentType).then(
      (created) => this._open({ ...created, messages: [], last_seq: 0 }),
      (exc) => {
        this._started = false;
        this._setStatus('offline');
        this._systemNote(this._describe(exc), true);
      },
    );
    return this._starting;
  }

  _onSessionReplaced(newId, info) {
    this._sessionId = newId;
    this._agentType = AGENTS[info?.agent_type] ? info.agent_type : this._agentType;
    writeJson(this._storageKey(), { session_id: newId, agent_type: this._agentType });
    this._streaming.clear();
    this._onTyping(false);
    this._systemNote('The server no longer had this conversation, so a new one was started.');
    this._emit('session', { sessionId: newId, agentType: this._agentType });
  }

  // ------------------------------------------------------------------ events from the service

  _onMessage(message, live) {
    if (!message?.id) return;
    if (live) this._emit('message', { message });
    if (message.sender === 'user') {
      const pending = message.client_message_id && this._pending.get(message.client_message_id);
      let entry = this._entries.get(message.id);
      if (pending && !entry) {
        entry = pending;
        this._pending.delete(message.client_message_id);
        entry.li.classList.remove('pending', 'sending', 'failed');
        entry.note.replaceChildren();
        this._ui.log.append(entry.li);
      } else if (pending) {
        pending.li.remove(); // already shown through another path
        this._pending.delete(message.client_message_id);
      }
      if (!entry) entry = this._createEntry('user', message.id);
      entry.messageId = message.id;
      entry.li.dataset.messageId = message.id;
      entry.li.dataset.seq = String(message.seq ?? '');
      entry.text = message.content ?? '';
      entry.bubble.textContent = entry.text;
      entry.time.textContent = formatTime(message.timestamp);
      entry.time.dateTime = message.timestamp ?? '';
      this._entries.set(message.id, entry);
    } else {
      const entry = this._entries.get(message.id) ?? this._createEntry('agent', message.id);
      entry.li.dataset.seq = String(message.seq ?? '');
      entry.text = message.content ?? '';
      entry.time.textContent = formatTime(message.timestamp);
      entry.time.dateTime = message.timestamp ?? '';
      entry.final = true; // the stored text is authoritative; later chunks are stale
      this._setAgentStatus(entry, message.status ?? 'complete', message.error);
      this._renderEntry(entry);
    }
    this._afterChange();
  }

  _onChunk(content, payload) {
    this._emit('chunk', { content, payload });
    const id = payload.message_id;
    const entry = this._entries.get(id) ?? this._createEntry('agent', id);
    if (!this._streaming.has(id) && !entry.final) {
      this._streaming.add(id);
      entry.li.classList.add('streaming');
      entry.li.setAttribute('aria-busy', 'true');
      entry.li.dataset.status = 'streaming';
    }
    if (entry.final) return; // the full text already arrived
    entry.text += content;
    this._dirty.add(entry);
    this._queueRender();
    this._updateComposer();
  }

  _onComplete(payload) {
    this._emit('complete', { payload });
    const entry = this._entries.get(payload.message_id);
    this._streaming.delete(payload.message_id);
    if (entry) {
      if (!entry.final && payload.status) this._setAgentStatus(entry, payload.status);
      entry.li.classList.remove('streaming');
      entry.li.removeAttribute('aria-busy');
      this._renderEntry(entry);
    }
    this._updateComposer();
    this._afterChange();
  }

  _onTyping(isTyping) {
    if (this._typing !== isTyping) this._emit('typing', { isTyping });
    this._typing = isTyping;
    this._ui.typing.hidden = !isTyping;
    this._ui.typingText.textContent = `${AGENTS[this.agentType].who} is typing…`;
    if (!isTyping) {
      // The turn is over: nothing can still be streaming (a missed stream_complete, say).
      for (const id of this._streaming) {
        const entry = this._entries.get(id);
        entry?.li.classList.remove('streaming');
        entry?.li.removeAttribute('aria-busy');
      }
      this._streaming.clear();
    }
    this._updateComposer();
    this._afterChange();
  }

  _onError(error) {
    this._emit('error', { error });
    if (error.message_id) {
      const entry = this._entries.get(error.message_id) ?? this._createEntry('agent', error.message_id);
      this._setAgentStatus(entry, 'failed', { code: error.code, error: error.error });
      this._renderEntry(entry);
    } else if (error.code !== 'session_not_found') {
      this._systemNote(REFUSALS[error.code] ?? error.error ?? 'Something went wrong.', true);
    }
    this._afterChange();
  }

  _onOutbox(items) {
    const states = new Map(items.map((x) => [x.client_message_id, x.state]));
    for (const [cid, entry] of this._pending) {
      const state = states.get(cid);
      if (!state || entry.li.classList.contains('failed')) continue;
      const waiting = state === 'queued';
      entry.li.classList.toggle('pending', waiting);
      entry.li.classList.toggle('sending', !waiting);
      entry.li.dataset.state = waiting ? 'pending' : 'sending';
      if (waiting) {
        this._setNote(entry, ICONS.clock, 'Not sent yet: waiting for the connection');
      } else {
        entry.note.replaceChildren();
      }
    }
  }

  // ------------------------------------------------------------------ sending

  _send(rawText) {
    const text = rawText.trim();
    if (!text) return;
    const cid = newId();
    const entry = this._createEntry('user', null, this._ui.outbox);
    entry.text = text;
    entry.bubble.textContent = text;
    entry.time.textContent = formatTime();
    entry.li.dataset.clientId = cid;
    const online = this.status === 'online';
    entry.li.classList.add(online ? 'sending' : 'pending');
    entry.li.dataset.state = online ? 'sending' : 'pending';
    if (!online) this._setNote(entry, ICONS.clock, 'Not sent yet: waiting for the connection');
    this._pending.set(cid, entry);
    this._stick = true;
    this._afterChange();
    this._deliver(cid, entry);
  }

  /** The session to send to, opening one first if the panel has none yet. */
  async _session() {
    if (!this._started) this._start();
    await this._starting;
    if (!this._sessionId) {
      throw Object.assign(new Error(REFUSALS.network_error), { code: 'network_error' });
    }
    return this._sessionId;
  }

  _deliver(cid, entry) {
    this._session()
      .then((sessionId) =>
        this.service.sendMessage(sessionId, entry.text, this._context(), { clientMessageId: cid }),
      )
      .then(
      (answer) => {
        if (this._pending.get(cid) !== entry) return; // the room's echo confirmed it already
        if (answer.message_id && this._entries.has(answer.message_id)) {
          entry.li.remove();
          this._pending.delete(cid);
        } else {
          entry.li.classList.remove('pending');
          entry.li.dataset.state = 'sending';
          entry.note.replaceChildren();
        }
      },
      (exc) => {
        if (this._pending.get(cid) !== entry) return;
        entry.li.classList.remove('pending', 'sending');
        entry.li.classList.add('failed');
        entry.li.dataset.state = 'failed';
        const retry = document.createElement('button');
        retry.type = 'button';
        retry.textContent = 'Retry';
        retry.addEventListener('click', () => {
          entry.li.classList.remove('failed');
          entry.li.classList.add('sending');
          entry.note.replaceChildren();
          this._deliver(cid, entry);
        });
        this._setNote(entry, ICONS.alert, this._describe(exc), true);
        entry.note.append(' ', retry);
      },
    );
  }

  _context() {
    const type = this.agentType;
    const values = readJson(OPTIONS_KEY, {})[type] ?? {};
    const context = {};
    for (const opt of AGENTS[type].options) {
      const raw = values[opt.key] ?? opt.value;
      if (raw === undefined || raw === '') continue;
      context[opt.key] = opt.type === 'number' ? Number(raw) : raw;
    }
    if (type === 'task' && this._projectId()) context.project_id = this._projectId();
    return context;
  }

  // ------------------------------------------------------------------ rendering

  _createEntry(sender, messageId, container = this._ui.log) {
    const li = document.createElement('li');
    li.className = `msg ${sender}`;
    li.setAttribute('part', `message ${sender}-message`);
    const meta = document.createElement('div');
    meta.className = 'meta';
    const who = document.createElement('span');
    who.className = 'who';
    who.textContent = sender === 'user' ? 'You' : AGENTS[this.agentType].who;
    const time = document.createElement('time');
    meta.append(who, time);
    const bubble = document.createElement('div');
    bubble.className = 'bubble';
    bubble.setAttribute('part', 'bubble');
    const note = document.createElement('div');
    note.className = 'note';
    li.append(meta, bubble, note);
    if (messageId) li.dataset.messageId = messageId;
    container.append(li);
    const entry = { li, bubble, note, time, sender, text: '', messageId, final: false };
    if (messageId) this._entries.set(messageId, entry);
    this._updateEmpty();
    return entry;
  }

  _setAgentStatus(entry, status, error) {
    entry.li.dataset.status = status;
    if (status === 'cancelled') {
      this._setNote(entry, ICONS.stopped, 'Stopped');
    } else if (status === 'failed') {
      if (error) entry.failure = error;
      const failure = entry.failure ?? {};
      this._setNote(entry, ICONS.alert, FAILURES[failure.code] ?? FAILURE_DEFAULT, true);
      entry.note.setAttribute('role', 'alert');
      if (failure.error || failure.code) {
        const details = document.createElement('details');
        const summary = document.createElement('summary');
        summary.textContent = 'Details';
        const detail = document.createElement('code');
        detail.textContent = [failure.error, failure.code && `(${failure.code})`]
          .filter(Boolean)
          .join(' ');
        details.append(summary, detail);
        entry.note.append(details);
      }
    } else {
      entry.note.replaceChildren();
    }
  }

  _setNote(entry, icon, text, isError = false) {
    entry.note.className = isError ? 'note error' : 'note';
    entry.note.innerHTML = icon; // our own constant SVG markup
    const span = document.createElement('span');
    span.textContent = text;
    entry.note.append(span);
  }

  _renderEntry(entry) {
    this._dirty.delete(entry);
    if (entry.sender === 'agent') {
      const imageHosts = parseHosts(this.getAttribute('image-hosts'));
      entry.bubble.replaceChildren(renderMarkdown(entry.text, { imageHosts }));
    }
    else entry.bubble.textContent = entry.text;
  }

  _queueRender() {
    if (this._renderQueued) return;
    this._renderQueued = true;
    const flush = () => {
      this._renderQueued = false;
      for (const entry of this._dirty) this._renderEntry(entry);
      this._dirty.clear();
      this._afterChange();
    };
    // Re-rendering the markdown once per frame keeps long replies cheap; a hidden tab
    // gets no frames, so fall back to a timer there.
    if (document.visibilityState === 'visible') requestAnimationFrame(flush);
    else setTimeout(flush, 100);
  }

  _systemNote(text, isError = false) {
    const li = document.createElement('li');
    li.className = 'msg system';
    li.setAttribute('part', 'message system-message');
    const note = document.createElement('div');
    note.className = isError ? 'note error' : 'note';
    if (isError) note.setAttribute('role', 'alert');
    note.textContent = text;
    li.append(note);
    this._ui.log.append(li);
    this._updateEmpty();
    this._afterChange();
    return li;
  }

  _clearConversation() {
    this._ui.log.replaceChildren();
    this._ui.outbox.replaceChildren();
    this._entries.clear();
    this._pending.clear();
    this._streaming.clear();
    this._dirty.clear();
    this._typing = false;
    this._ui.typing.hidden = true;
    this._stick = true;
    this._updateEmpty();
    this._updateComposer();
  }

  _updateEmpty() {
    this._ui.empty.hidden = this._ui.log.childElementCount + this._ui.outbox.childElementCount > 0;
  }

  _updateComposer() {
    const busy = this._typing || this._streaming.size > 0;
    this._ui.stop.hidden = !busy;
    this._ui.send.disabled = !this._ui.input.value.trim();
  }

  _renderAgent(type) {
    const agent = AGENTS[type] ?? AGENTS.rag;
    for (const radio of this._ui.picker.querySelectorAll('input')) {
      radio.checked = radio.value === type;
    }
    this._ui.subtitle.textContent = agent.tagline;
    this._ui.input.placeholder = agent.placeholder;
    this._ui.emptyTitle.textContent = `Chat with the ${agent.who}`;
    this._ui.emptyIntro.textContent = agent.intro;
    this._ui.suggestions.replaceChildren(
      ...agent.suggestions.map((text) => {
        const b = document.createElement('button');
        b.type = 'button';
        b.textContent = text;
        b.addEventListener('click', () => this._send(text));
        return b;
      }),
    );
    this._renderOptions(type);
  }

  _renderOptions(type) {
    const saved = readJson(OPTIONS_KEY, {});
    const values = saved[type] ?? {};
    const fields = AGENTS[type].options.map((opt) => {
      const label = document.createElement('label');
      if (opt.type === 'text') label.className = 'wide';
      const caption = document.createElement('span');
      caption.textContent = opt.label;
      let control;
      if (opt.type === 'select') {
        control = document.createElement('select');
        for (const choice of opt.choices) control.add(new Option(choice, choice));
      } else {
        control = document.createElement('input');
        control.type = opt.type;
        if (opt.min !== undefined) control.min = String(opt.min);
        if (opt.max !== undefined) control.max = String(opt.max);
        if (opt.placeholder) control.placeholder = opt.placeholder;
      }
      control.name = opt.key;
      control.value = values[opt.key] ?? opt.value ?? '';
      control.addEventListener('change', () => {
        const all = readJson(OPTIONS_KEY, {});
        all[type] = { ...(all[type] ?? {}), [opt.key]: control.value };
        writeJson(OPTIONS_KEY, all);
      });
      label.append(caption, control);
      return label;
    });
    this._ui.options.replaceChildren(...fields);
  }

  _setStatus(status) {
    const ui = this._ui;
    if (ui.status.dataset.status === status) return;
    ui.status.dataset.status = status;
    ui.statusText.textContent = STATUS_TEXT[status] ?? status;
    ui.reconnect.hidden = status === 'online';
    this._emit('status', { status });
  }

  // ------------------------------------------------------------------ scrolling

  _afterChange() {
    if (this._stick) this._scrollToEnd();
    else this._ui.jump.hidden = false;
  }

  _scrollToEnd() {
    const s = this._ui.scroller;
    s.scrollTop = s.scrollHeight;
    this._ui.jump.hidden = true;
  }

  _nearBottom() {
    const s = this._ui.scroller;
    return s.scrollHeight - s.scrollTop - s.clientHeight <= STICK_SLACK_PX;
  }

  // ------------------------------------------------------------------ API key

  _askForKey({ refused }) {
    const ui = this._ui;
    if (this._keyRequest) return this._keyRequest.promise;
    let resolve;
    const promise = new Promise((r) => {
      resolve = r;
    });
    this._keyRequest = { promise, resolve };
    ui.keyText.textContent = refused
      ? 'That key was refused. Check it and try again.'
      : 'This chat server needs an API key. It is kept in this browser.';
    ui.keyText.classList.toggle('error', Boolean(refused));
    ui.keyInput.value = '';
    ui.keyDialog.hidden = false;
    ui.keyInput.focus();
    return promise;
  }

  _answerKey(key) {
    const request = this._keyRequest;
    this._keyRequest = null;
    this._ui.keyDialog.hidden = true;
    request?.resolve(key);
  }

  // ------------------------------------------------------------------ UI wiring

  _bindUi() {
    const ui = this._ui;
    ui.form.addEventListener('submit', (e) => {
      e.preventDefault();
      const text = ui.input.value;
      if (!text.trim()) return;
      ui.input.value = '';
      this._autosize();
      this._updateComposer();
      this._send(text);
    });
    ui.input.addEventListener('keydown', (e) => {
      if (e.key === 'Enter' && !e.shiftKey && !e.isComposing) {
        e.preventDefault();
        ui.form.requestSubmit();
      }
    });
    ui.input.addEventListener('input', () => {
      this._autosize();
      this._updateComposer();
    });
    ui.stop.addEventListener('click', () => this.stop());
    ui.reconnect.addEventListener('click', () => this.reconnect());
    ui.newChat.addEventListener('click', () => this.newConversation());
    ui.recentToggle.addEventListener('click', () => this._showRecent(ui.recent.hidden));
    ui.picker.addEventListener('change', (e) => {
      const type = e.target.value;
      if (AGENTS[type] && type !== this._agentType) this._switchSession(type);
    });
    ui.optionsToggle.addEventListener('click', () => {
      const open = ui.options.hidden;
      ui.options.hidden = !open;
      ui.optionsToggle.setAttribute('aria-expanded', String(open));
    });
    ui.scroller.addEventListener('scroll', () => {
      this._stick = this._nearBottom();
      if (this._stick) ui.jump.hidden = true;
    });
    ui.jump.addEventListener('click', () => {
      this._stick = true;
      this._scrollToEnd();
    });
    ui.keyForm.addEventListener('submit', (e) => {
      e.preventDefault();
      const key = ui.keyInput.value.trim();
      if (key) this._answerKey(key);
    });
    ui.keyCancel.addEventListener('click', () => this._answerKey(null));
    this._bindResize();
  }

  /** Show (and load) or hide the user's recent conversations. */
  async _showRecent(open) {
    const ui = this._ui;
    ui.recent.hidden = !open;
    ui.recentToggle.setAttribute('aria-expanded', String(open));
    if (!open) return;
    ui.recentNote.hidden = true;
    ui.recentList.replaceChildren();
    let page;
    try {
      page = await this.service.listSessions({ limit: 20 });
    } catch (exc) {
      ui.recentNote.textContent = this._describe(exc);
      ui.recentNote.hidden = false;
      return;
    }
    if (!page.sessions.length) {
      ui.recentNote.textContent = 'No conversations yet.';
      ui.recentNote.hidden = false;
    }
    for (const session of page.sessions) {
      const item = document.createElement('li');
      const button = document.createElement('button');
      button.type = 'button';
      button.className = 'recent-item';
      button.dataset.sessionId = session.session_id;
      if (session.session_id === this._sessionId) button.setAttribute('aria-current', 'true');
      const label = AGENTS[session.agent_type]?.label ?? session.agent_type;
      const when = new Date(session.updated_at);
      const count = session.message_count;
      button.textContent = `${label} · ${count} message${count === 1 ? '' : 's'}`;
      const time = document.createElement('time');
      time.dateTime = session.updated_at;
      time.textContent = Number.isNaN(when.getTime()) ? '' : when.toLocaleString();
      button.append(time);
      button.addEventListener('click', () => {
        this._showRecent(false);
        this.openConversation(session.session_id);
      });
      item.append(button);
      ui.recentList.append(item);
    }
  }

  _autosize() {
    const input = this._ui.input;
    input.style.height = 'auto';
    input.style.height = `${Math.min(input.scrollHeight, 180)}px`;
  }

  _bindResize() {
    const handle = this._ui.resize;
    let startX = 0;
    let startWidth = 0;
    const onMove = (e) => this._setWidth(startWidth + (startX - e.clientX));
    const onUp = (e) => {
      handle.releasePointerCapture(e.pointerId);
      handle.classList.remove('dragging');
      handle.removeEventListener('pointermove', onMove);
      handle.removeEventListener('pointerup', onUp);
      this._saveWidth();
    };
    handle.addEventListener('pointerdown', (e) => {
      startX = e.clientX;
      startWidth = this.getBoundingClientRect().width;
      handle.setPointerCapture(e.pointerId);
      handle.classList.add('dragging');
      handle.addEventListener('pointermove', onMove);
      handle.addEventListener('pointerup', onUp);
      e.preventDefault();
    });
    handle.addEventListener('keydown', (e) => {
      const step = e.shiftKey ? 64 : 16;
      const width = this.getBoundingClientRect().width;
      if (e.key === 'ArrowLeft') this._setWidth(width + step);
      else if (e.key === 'ArrowRight') this._setWidth(width - step);
      else return;
      e.preventDefault();
      this._saveWidth();
    });
  }

  _setWidth(px) {
    const max = Math.max(320, window.innerWidth * 0.9);
    const width = Math.round(Math.min(Math.max(px, 300), max));
    this.style.setProperty('--archon-chat-width', `${width}px`);
    this._ui.resize.setAttribute('aria-valuenow', String(width));
  }

  _saveWidth() {
    writeJson(WIDTH_KEY, Math.round(this.getBoundingClientRect().width));
  }

  _restoreWidth() {
    const width = readJson(WIDTH_KEY, null);
    if (Number.isFinite(width)) this._setWidth(width);
  }

  // ------------------------------------------------------------------ helpers

  _describe(exc) {
    if (exc?.code === 'network_error') return exc.message || REFUSALS.network_error;
    return REFUSALS[exc?.code] ?? (exc?.message || 'Something went wrong.');
  }

  _emit(name, detail) {
    this.dispatchEvent(new CustomEvent(`archon-chat:${name}`, { detail, bubbles: true, composed: true }));
  }
}

if (!customElements.get('archon-chat-panel')) {
  customElements.define('archon-chat-panel', ArchonChatPanel);
}
