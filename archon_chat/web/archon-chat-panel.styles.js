/**
 * Styles of <archon-chat-panel>, adopted by its shadow root (no flash of unstyled content,
 * no build step). Colours are custom properties, so a host page can theme the panel from
 * outside: `archon-chat-panel { --archon-accent: #0a7d5a; }`.
 */
const css = String.raw;

export const panelStyles = css`
:host {
  --archon-accent: #4f46e5;
  --archon-accent-strong: #4338ca;
  --archon-on-accent: #ffffff;
  --archon-bg: #ffffff;
  --archon-surface: #f5f6f8;
  --archon-surface-2: #eceef2;
  --archon-border: #e1e4ea;
  --archon-text: #1c2230;
  --archon-muted: #5d6778;
  --archon-online: #16a34a;
  --archon-connecting: #d97706;
  --archon-offline: #9ca3af;
  --archon-danger: #dc2626;
  --archon-danger-bg: #fef2f2;
  --archon-code-bg: #eef0f4;
  --archon-shadow: 0 0 0 1px rgb(15 23 42 / 0.04), -8px 0 24px rgb(15 23 42 / 0.06);
  --archon-radius: 14px;
  --archon-font: ui-sans-serif, system-ui, -apple-system, "Segoe UI", Roboto, "Helvetica Neue",
    Arial, sans-serif;
  --archon-mono: ui-monospace, SFMono-Regular, Menlo, Consolas, "Liberation Mono", monospace;

  position: relative;
  display: flex;
  box-sizing: border-box;
  width: var(--archon-chat-width, 420px);
  min-width: 300px;
  max-width: 100%;
  height: 100%;
  min-height: 360px;
  color: var(--archon-text);
  background: var(--archon-bg);
  font: 14px/1.5 var(--archon-font);
  color-scheme: light;
}
:host([hidden]) { display: none; }

@media (prefers-color-scheme: dark) {
  :host(:not([theme="light"])) {
    --archon-accent: #818cf8;
    --archon-accent-strong: #a5b4fc;
    --archon-on-accent: #0f1020;
    --archon-bg: #15171c;
    --archon-surface: #1e2128;
    --archon-surface-2: #272b34;
    --archon-border: #2e333d;
    --archon-text: #e7e9ee;
    --archon-muted: #9aa3b2;
    --archon-offline: #6b7280;
    --archon-danger: #f87171;
    --archon-danger-bg: #2a1618;
    --archon-code-bg: #272b34;
    --archon-shadow: -8px 0 24px rgb(0 0 0 / 0.35);
    color-scheme: dark;
  }
}
:host([theme="dark"]) {
  --archon-accent: #818cf8;
  --archon-accent-strong: #a5b4fc;
  --archon-on-accent: #0f1020;
  --archon-bg: #15171c;
  --archon-surface: #1e2128;
  --archon-surface-2: #272b34;
  --archon-border: #2e333d;
  --archon-text: #e7e9ee;
  --archon-muted: #9aa3b2;
  --archon-offline: #6b7280;
  --archon-danger: #f87171;
  --archon-danger-bg: #2a1618;
  --archon-code-bg: #272b34;
  --archon-shadow: -8px 0 24px rgb(0 0 0 / 0.35);
  color-scheme: dark;
}

*, *::before, *::after { box-sizing: border-box; }
button, input, select, textarea { font: inherit; color: inherit; }
[hidden] { display: none !important; }
.visually-hidden {
  position: absolute; width: 1px; height: 1px; overflow: hidden;
  clip: rect(0 0 0 0); white-space: nowrap;
}
:focus-visible { outline: 2px solid var(--archon-accent); outline-offset: 2px; }

/* ---- frame ---------------------------------------------------------------------- */
.resize {
  position: absolute; inset: 0 auto 0 -3px; width: 7px; z-index: 3;
  cursor: col-resize; touch-action: none;
}
.resize::after {
  content: ""; position: absolute; inset: 0 3px; background: transparent;
  transition: background 0.15s;
}
.resize:hover::after, .resize:focus-visible::after, .resize.dragging::after {
  background: var(--archon-accent);
}
.resize:focus-visible { outline: none; }

.panel {
  position: relative;
  display: flex; flex-direction: column;
  width: 100%; height: 100%; min-height: 0;
  border-left: 1px solid var(--archon-border);
  box-shadow: var(--archon-shadow);
  background: var(--archon-bg);
}

/* ---- header --------------------------------------------------------------------- */
header {
  flex: none;
  padding: 14px 16px 12px;
  border-bottom: 1px solid var(--archon-border);
  background: var(--archon-bg);
}
.title-row { display: flex; align-items: center; gap: 10px; }
.logo {
  display: grid; place-items: center; flex: none;
  width: 30px; height: 30px; border-radius: 9px;
  background: linear-gradient(135deg, var(--archon-accent), #a855f7);
  color: #fff;
}
.logo svg { width: 17px; height: 17px; }
h2 { margin: 0; font-size: 15px; font-weight: 650; letter-spacing: -0.01em; }
.subtitle {
  margin: 0; color: var(--archon-muted); font-size: 12px;
  white-space: nowrap; overflow: hidden; text-overflow: ellipsis;
}
.titles { min-width: 0; flex: 1; }

.status {
  display: inline-flex; align-items: center; gap: 6px; flex: none;
  padding: 3px 9px 3px 8px; border-radius: 999px;
  background: var(--archon-surface); color: var(--archon-muted);
  font-size: 12px; font-weight: 550; white-space: nowrap;
}
.status .dot {
  width: 8px; height: 8px; border-radius: 50%; background: var(--archon-offline);
}
.status[data-status="online"] .dot { background: var(--archon-online); }
.status[data-status="connecting"] .dot {
  background: var(--archon-connecting); animation: pulse 1.2s ease-in-out infinite;
}
.status[data-status="offline"] { color: var(--archon-danger); }
@keyframes pulse { 50% { opacity: 0.35; } }

.icon-button, .text-button {
  display: inline-grid; place-items: center; flex: none;
  border: 1px solid transparent; border-radius: 8px; background: transparent;
  color: var(--archon-muted); cursor: pointer;
}
.icon-button { width: 32px; height: 32px; }
.icon-button svg { width: 18px; height: 18px; }
.icon-button:hover, .text-button:hover { background: var(--archon-surface); color: var(--archon-text); }
.text-button { padding: 3px 10px; height: 28px; font-size: 12px; font-weight: 600; }
.reconnect {
  border-color: var(--archon-border); color: var(--archon-accent);
}

.controls { display: flex; align-items: center; gap: 8px; margin-top: 12px; }
.agent-picker {
  display: flex; flex: 1; gap: 2px; padding: 3px;
  border-radius: 10px; background: var(--archon-surface);
}
.agent-picker label {
  flex: 1; position: relative; display: block; cursor: pointer;
}
.agent-picker input { position: absolute; opacity: 0; pointer-events: none; }
.agent-picker span {
  display: block; padding: 5px 8px; border-radius: 8px;
  text-align: center; font-size: 12.5px; font-weight: 600; color: var(--archon-muted);
  transition: background 0.15s, color 0.15s;
}
.agent-picker input:checked + span {
  background: var(--archon-bg); color: var(--archon-text);
  box-shadow: 0 1px 2px rgb(15 23 42 / 0.12);
}
.agent-picker input:focus-visible + span { outline: 2px solid var(--archon-accent); }
.options-toggle[aria-expanded="true"] { background: var(--archon-surface); color: var(--archon-text); }

.options {
  display: grid; grid-template-columns: 1fr 1fr; gap: 10px;
  margin-top: 12px; padding: 12px; border-radius: 10px;
  background: var(--archon-surface);
}
.options label { display: grid; gap: 4px; font-size: 12px; color: var(--archon-muted); }
.options label.wide { grid-column: 1 / -1; }
.options input, .options select {
  width: 100%; padding: 6px 8px; border-radius: 7px;
  border: 1px solid var(--archon-border); background: var(--archon-bg);
  font-size: 13px;
}

.recent-toggle[aria-expanded="true"] { background: var(--archon-surface); color: var(--archon-text); }
.recent {
  margin-top: 12px; padding: 6px; border-radius: 10px; background: var(--archon-surface);
  max-height: 240px; overflow-y: auto;
}
.recent-list { list-style: none; margin: 0; padding: 0; display: grid; gap: 2px; }
.recent-item {
  display: flex; justify-content: space-between; gap: 8px; width: 100%;
  padding: 6px 8px; border: 0; border-radius: 7px; background: transparent;
  color: var(--archon-text); font: inherit; font-size: 13px; text-align: left; cursor: pointer;
}
.recent-item:hover, .recent-item[aria-current="true"] { background: var(--archon-bg); }
.recent-item time { color: var(--archon-muted); font-size: 12px; }
.recent-note { margin: 6px 8px; font-size: 12px; color: var(--archon-muted); }

/* ---- conversation --------------------------------------------------------------- */
.scroller {
  flex: 1; min-height: 0; overflow-y: auto; overscroll-behavior: contain;
  padding: 16px 16px 8px; scroll-behavior: auto;
}
.empty {
  margin: 12% 8px 0; text-align: center; color: var(--archon-muted);
}
.empty .logo { margin: 0 auto 12px; width: 44px; height: 44px; border-radius: 13px; }
.empty .logo svg { width: 24px; height: 24px; }
.empty h3 { margin: 0 0 4px; color: var(--archon-text); font-size: 15px; }
.empty p { margin: 0 auto; max-width: 30ch; font-size: 13px; }
.suggestions { display: flex; flex-wrap: wrap; justify-content: center; gap: 6px; margin-top: 14px; }
.suggestions button {
  padding: 5px 11px; border-radius: 999px; cursor: pointer;
  border: 1px solid var(--archon-border); background: var(--archon-bg);
  font-size: 12.5px; color: var(--archon-text);
}
.suggestions button:hover { border-color: var(--archon-accent); color: var(--archon-accent); }

ol { list-style: none; margin: 0; padding: 0; }
.msg { display: flex; flex-direction: column; margin: 0 0 14px; }
.msg.user { align-items: flex-end; }
.msg.agent { align-items: flex-start; }
.meta {
  display: flex; gap: 8px; align-items: baseline;
  margin: 0 4px 3px; font-size: 11.5px; color: var(--archon-muted);
}
.meta .who { font-weight: 600; }
.bubble {
  max-width: 92%; padding: 9px 13px; border-radius: var(--archon-radius);
  overflow-wrap: anywhere;
}
.msg.user .bubble {
  background: var(--archon-accent); color: var(--archon-on-accent);
  border-bottom-right-radius: 5px; white-space: pre-wrap;
}
.msg.agent .bubble {
  background: var(--archon-surface); border-bottom-left-radius: 5px;
}
.msg.agent .bubble:empty::before { content: "\2026"; color: var(--archon-muted); }
.msg.pending .bubble, .msg.sending .bubble { opacity: 0.62; }
.msg.failed .bubble { background: var(--archon-danger-bg); color: var(--archon-text); }
.msg.agent[data-status="failed"] .bubble { border: 1px solid color-mix(in srgb, var(--archon-danger) 35%, transparent); }
/* A reply that ended before any text has no bubble: no "still typing" placeholder. */
.msg.agent:is([data-status="failed"], [data-status="cancelled"]) .bubble:empty { display: none; }

/* the caret sits at the end of the text, inside the last paragraph, item or code block */
.streaming .bubble > :last-child:not(ul, ol, pre, table, hr)::after,
.streaming .bubble > :is(ul, ol):last-child > li:last-child::after,
.streaming .bubble > pre:last-child > code::after,
.streaming .bubble:empty::after {
  content: ""; display: inline-block; width: 7px; height: 1.05em; margin-left: 2px;
  vertical-align: -0.15em; border-radius: 1px; background: var(--archon-accent);
  animation: blink 1s steps(2, start) infinite;
}
.streaming .bubble:empty::before { content: none; }
@keyframes blink { to { visibility: hidden; } }

.note {
  display: flex; align-items: center; gap: 6px;
  margin: 4px 4px 0; font-size: 12px; color: var(--archon-muted);
}
.note svg { width: 13px; height: 13px; flex: none; }
.note.error { color: var(--archon-danger); }
.note { flex-wrap: wrap; }
.note details { flex-basis: 100%; color: var(--archon-muted); }
.note summary { cursor: pointer; width: max-content; }
.note details code { font: 11px var(--archon-mono); overflow-wrap: anywhere; }
.bubble a.image-link { font-style: italic; }
.note button {
  padding: 0 2px; border: 0; background: none; cursor: pointer;
  color: var(--archon-accent); font-weight: 600; text-decoration: underline;
}
.msg.system { align-items: center; }
.msg.system .note {
  margin: 0; padding: 6px 12px; border-radius: 999px;
  background: var(--archon-surface); text-align: center;
}
.msg.system .note.error { background: var(--archon-danger-bg); }

/* markdown inside agent bubbles */
.bubble > :first-child { margin-top: 0; }
.bubble > :last-child { margin-bottom: 0; }
.bubble p, .bubble ul, .bubble ol, .bubble pre, .bubble blockquote, .bubble table { margin: 0 0 0.6em; }
.bubble ul, .bubble ol { padding-left: 1.3em; list-style: revert; }
.bubble li + li { margin-top: 0.15em; }
.bubble h1, .bubble h2, .bubble h3, .bubble h4 { margin: 0.7em 0 0.35em; font-size: 1.02em; line-height: 1.3; }
.bubble h1 { font-size: 1.15em; }
.bubble a { color: var(--archon-accent); }
.msg.user .bubble a { color: inherit; }
.bubble code {
  padding: 0.1em 0.35em; border-radius: 5px; background: var(--archon-code-bg);
  font: 0.9em var(--archon-mono);
}
.bubble pre {
  padding: 10px 12px; border-radius: 9px; overflow-x: auto;
  background: var(--archon-code-bg);
}
.bubble pre code { padding: 0; background: none; }
.bubble blockquote {
  padding-left: 10px; border-left: 3px solid var(--archon-border); color: var(--archon-muted);
}
.bubble table { border-collapse: collapse; font-size: 0.95em; }
.bubble th, .bubble td { padding: 3px 8px; border: 1px solid var(--archon-border); }
.bubble img { max-width: 100%; }
.bubble hr { border: 0; border-top: 1px solid var(--archon-border); }

.jump {
  position: absolute; left: 50%; bottom: 132px; transform: translateX(-50%); z-index: 2;
  padding: 5px 12px; border-radius: 999px; cursor: pointer;
  border: 1px solid var(--archon-border); background: var(--archon-bg); color: var(--archon-text);
  font-size: 12px; font-weight: 600; box-shadow: 0 4px 14px rgb(15 23 42 / 0.12);
}

/* ---- typing + composer ------------------------------------------------------------ */
.typing {
  display: flex; align-items: center; gap: 8px; flex: none;
  padding: 2px 20px 6px; font-size: 12px; color: var(--archon-muted);
}
.dots { display: inline-flex; gap: 3px; }
.dots i {
  width: 5px; height: 5px; border-radius: 50%; background: var(--archon-accent);
  animation: bounce 1.1s infinite ease-in-out;
}
.dots i:nth-child(2) { animation-delay: 0.15s; }
.dots i:nth-child(3) { animation-delay: 0.3s; }
@keyframes bounce { 0%, 70%, 100% { opacity: 0.3; transform: none; } 35% { opacity: 1; transform: translateY(-3px); } }

.composer { flex: none; padding: 0 12px 12px; }
.composer-box {
  display: flex; align-items: flex-end; gap: 6px;
  padding: 6px 6px 6px 12px; border-radius: 14px;
  border: 1px solid var(--archon-border); background: var(--archon-bg);
  box-shadow: 0 1px 2px rgb(15 23 42 / 0.05);
}
.composer-box:focus-within {
  border-color: var(--archon-accent);
  box-shadow: 0 0 0 3px color-mix(in srgb, var(--archon-accent) 18%, transparent);
}
textarea {
  flex: 1; min-height: 24px; max-height: 180px; margin: 5px 0; padding: 0;
  border: 0; outline: none; resize: none; background: transparent; line-height: 1.45;
}
textarea:focus-visible { outline: none; }
textarea::placeholder { color: var(--archon-muted); }
.send, .stop {
  display: inline-flex; align-items: center; justify-content: center; gap: 6px; flex: none;
  height: 34px; border-radius: 10px; border: 0; cursor: pointer; font-weight: 600;
}
.send { width: 34px; background: var(--archon-accent); color: var(--archon-on-accent); }
.send:hover { background: var(--archon-accent-strong); }
.send:disabled { opacity: 0.4; cursor: default; background: var(--archon-accent); }
.send svg { width: 17px; height: 17px; }
.stop {
  padding: 0 11px; font-size: 12.5px;
  background: var(--archon-surface-2); color: var(--archon-text);
}
.stop:hover { background: var(--archon-danger-bg); color: var(--archon-danger); }
.stop svg { width: 11px; height: 11px; }
.hint { margin: 6px 4px 0; font-size: 11px; color: var(--archon-muted); text-align: center; }
kbd { font: inherit; font-weight: 600; }

/* ---- API key dialog ----------------------------------------------------------------- */
.key-dialog {
  position: absolute; inset: 0; z-index: 5;
  display: grid; place-items: center; padding: 24px;
  background: color-mix(in srgb, var(--archon-bg) 80%, transparent);
  backdrop-filter: blur(3px);
}
.key-dialog form {
  width: 100%; max-width: 320px; padding: 18px; border-radius: 14px;
  border: 1px solid var(--archon-border); background: var(--archon-bg);
  box-shadow: 0 12px 32px rgb(15 23 42 / 0.18);
}
.key-dialog h3 { margin: 0 0 6px; font-size: 15px; }
.key-dialog p { margin: 0 0 12px; font-size: 13px; color: var(--archon-muted); }
.key-dialog p.error { color: var(--archon-danger); }
.key-dialog input {
  width: 100%; padding: 8px 10px; border-radius: 8px;
  border: 1px solid var(--archon-border); background: var(--archon-bg);
}
.key-dialog .actions { display: flex; justify-content: flex-end; gap: 8px; margin-top: 12px; }
.key-dialog .primary {
  padding: 7px 14px; border: 0; border-radius: 8px; cursor: pointer; font-weight: 600;
  background: var(--archon-accent); color: var(--archon-on-accent);
}

@media (prefers-reduced-motion: reduce) {
  *, *::before, *::after { animation: none !important; transition: none !important; }
}
`;
