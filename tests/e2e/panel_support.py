"""Real pieces for the browser panel tests: a scripted agents service, the gateway as a
subprocess, and a headless Debian Chromium driven by Playwright's sync API.

Playwright's sync API blocks whatever loop it runs in, so nothing here uses trio: the
agents service is a threaded ``http.server`` in the test process, the gateway is an
``archon-chat serve`` subprocess on 127.0.0.1, and every wait has its own deadline.
"""

from __future__ import annotations

import json
import os
import queue
import re
import select
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from playwright.sync_api import Browser, BrowserContext, Page, Playwright

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
#: Ceiling of any single browser wait (Playwright's default for the context).
WAIT_MS = 15_000
GATEWAY_START_S = 30.0
GATEWAY_STOP_S = 10.0
REPO = Path(__file__).resolve().parents[2]
SERVING = re.compile(r"archon-chat: serving on (http://127\.0\.0\.1:(\d+))")

# ---------------------------------------------------------------------------------------
# Scripted agents service
# ---------------------------------------------------------------------------------------


@dataclass
class Reply:
    """What the agents service streams for one prompt."""

    chunks: Sequence[str]
    delay_s: float = 0.08  # between chunks: slow enough to watch the reply grow
    first_delay_s: float = 0.3  # before the first chunk: the typing indicator shows alone
    error: str | None = None  # an SSE ``error`` event after the chunks, instead of completing

    @property
    def text(self) -> str:
        return "".join(self.chunks)


def words(n: int, prefix: str = "w") -> list[str]:
    """``n`` distinct word chunks, so a gap or a repeat in the text is visible."""
    return [f"{prefix}{i:02d} " for i in range(n)]


@dataclass
class AgentRequest:
    path: str
    body: dict[str, Any]


@dataclass
class ScriptedAgents:
    """The agents SSE contract on a real socket; the reply is chosen by the prompt.

    Records every request and every prompt whose client went away before the stream
    ended (``disconnects``), so a test can assert that a stop reached upstream.
    """

    replies: dict[str, Reply] = field(default_factory=dict)
    default: Reply = field(default_factory=lambda: Reply(["Hello ", "from ", "the ", "agent."]))
    requests: list[AgentRequest] = field(default_factory=list)
    disconnects: list[str] = field(default_factory=list)
    completed: list[str] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _server: ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        assert self._server is not None
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def script(self, prompt: str, reply: Reply) -> Reply:
        self.replies[prompt] = reply
        return reply

    def prompts(self) -> list[str]:
        with self._lock:
            return [r.body.get("prompt", "") for r in self.requests]

    def wait_disconnect(self, prompt: str, timeout_s: float = 10.0) -> None:
        deadline = time.monotonic() + timeout_s
        while prompt not in self.disconnects:
            if time.monotonic() > deadline:
                raise AssertionError(f"the agents service never saw {prompt!r} disconnect")
            time.sleep(0.02)

    def start(self) -> None:
        agents = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                if self.path == "/health":
                    self._json(200, {"status": "ok"})
                elif self.path == "/agents":
                    self._json(200, {"agents": ["rag", "document", "task"]})
                else:
                    self._json(404, {"detail": "Not found", "code": "not_found"})

            def do_POST(self) -> None:
                match = re.fullmatch(r"/agents/(rag|document|task)/stream", self.path)
                length = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(length) or b"{}")
                if match is None:
                    self._json(404, {"detail": "Unknown agent", "code": "not_found"})
                    return
                with agents._lock:
                    agents.requests.append(AgentRequest(self.path, body))
                prompt = body.get("prompt", "")
                reply = agents.replies.get(prompt, agents.default)
                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream")
                self.send_header("Cache-Control", "no-cache")
                self.end_headers()
                try:
                    self._pause(reply.first_delay_s)
                    for chunk in reply.chunks:
                        self._event({"type": "stream_chunk", "content": chunk})
                        self._pause(reply.delay_s)
                    if reply.error is not None:
                        self._event({"type": "error", "error": reply.error})
                    else:
                        self._event({"type": "stream_complete"})
                except (BrokenPipeError, ConnectionResetError, _ClientGone):
                    with agents._lock:
                        agents.disconnects.append(prompt)
                    return
                with agents._lock:
                    agents.completed.append(prompt)

            def _event(self, data: dict[str, Any]) -> None:
                self.wfile.write(f"data: {json.dumps(data)}\n\n".encode())
                self.wfile.flush()

            def _pause(self, seconds: float) -> None:
                # Sleep in small steps, watching for the client closing its end: a
                # cancelled turn must be seen here at once, not at the next write.
                deadline = time.monotonic() + seconds
                while True:
                    if self._client_gone():
                        raise _ClientGone
                    left = deadline - time.monotonic()
                    if left <= 0:
                        return
                    time.sleep(min(left, 0.02))

            def _client_gone(self) -> bool:
                conn = self.connection
                readable, _, _ = select.select([conn], [], [], 0)
                if not readable:
                    return False
                try:
                    return bool(conn.recv(1, socket.MSG_PEEK) == b"")
                except OSError:
                    return True

            def _json(self, status: int, body: Any) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()


class _ClientGone(Exception):
    pass


class StaticSite:
    """Another origin on 127.0.0.1: serves ``files`` (URL path -> (content type, bytes))."""

    def __init__(self, files: dict[str, tuple[str, bytes]]) -> None:
        site = files

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                content_type, body = site.get(self.path.split("?")[0], ("text/plain", b""))
                self.send_response(200 if body else 404)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()


# ---------------------------------------------------------------------------------------
# The gateway as a subprocess
# ---------------------------------------------------------------------------------------


class Gateway:
    """``archon-chat serve`` in a subprocess; restartable on the same port and database."""

    def __init__(self, tmp: Path, agents_url: str, env: dict[str, str] | None = None) -> None:
        self.tmp = tmp
        self.db = tmp / "chat.db"
        self.log = tmp / "gateway.log"
        self.env = {
            **os.environ,
            "AGENT_SERVICE_URL": agents_url,
            "ARCHON_CHAT_KB_INDEX": str(tmp / "kb.db"),
            "SOCKETIO_PING_INTERVAL": "0.5",
            "SOCKETIO_PING_TIMEOUT": "1",
            # Long enough to ride out a cut connection or a reload mid-reply.
            "ARCHON_CHAT_GRACE_S": "10",
            "ARCHON_CHAT_SHUTDOWN_GRACE_S": "1",
            "ARCHON_CHAT_LOG_LEVEL": "WARNING",
            **(env or {}),
        }
        self.port = 0
        self.url = ""
        self._proc: subprocess.Popen[str] | None = None

    def start(self) -> str:
        assert self._proc is None
        log = self.log.open("a")
        self._proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "archon_chat.cli",
                "serve",
                "--port",
                str(self.port),
                "--db",
                str(self.db),
            ],
            stdout=subprocess.PIPE,
            stderr=log,
            env=self.env,
            cwd=REPO,
            text=True,
        )
        log.close()
        lines: queue.Queue[str] = queue.Queue()
        stdout = self._proc.stdout
        assert stdout is not None

        def pump() -> None:
            for line in stdout:
                lines.put(line)

        threading.Thread(target=pump, daemon=True).start()
        deadline = time.monotonic() + GATEWAY_START_S
        while True:
            left = deadline - time.monotonic()
            if left <= 0 or self._proc.poll() is not None:
                self.kill()
                raise AssertionError(f"the gateway did not start:\n{self.log.read_text()}")
            try:
                line = lines.get(timeout=min(left, 0.2))
            except queue.Empty:
                continue
            match = SERVING.search(line)
            if match:
                self.url, self.port = match.group(1), int(match.group(2))
                return self.url

    def stop(self) -> None:
        """SIGTERM (graceful shutdown), then SIGKILL past the deadline."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(GATEWAY_STOP_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(GATEWAY_STOP_S)

    def kill(self) -> None:
        proc, self._proc = self._proc, None
        if proc is not None:
            proc.kill()
            proc.wait(GATEWAY_STOP_S)

    def wait_session_gone(self, session_id: str, timeout_s: float = 15.0) -> None:
        """Wait until the gateway answers 404 for the session (expired and swept)."""
        from urllib.error import HTTPError

        deadline = time.monotonic() + timeout_s
        while True:
            try:
                self.session(session_id)
            except HTTPError as exc:
                if exc.code == 404:
                    return
                raise
            if time.monotonic() > deadline:
                raise AssertionError(f"session {session_id} never expired")
            time.sleep(0.1)

    def session(self, session_id: str) -> dict[str, Any]:
        """``GET /api/agent-chat/sessions/{id}`` (stdlib HTTP, no event loop)."""
        from urllib.request import Request, urlopen

        headers = {}
        key = self.env.get("ARCHON_CHAT_API_KEY")
        if key:
            headers["Authorization"] = f"Bearer {key}"
        request = Request(f"{self.url}/api/agent-chat/sessions/{session_id}", headers=headers)
        with urlopen(request, timeout=5) as response:
            body: dict[str, Any] = json.loads(response.read())
            return body


# ---------------------------------------------------------------------------------------
# Chromium
# ---------------------------------------------------------------------------------------


def launch_chromium(playwright: Playwright) -> Browser:
    return playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)


#: Installed before any page script: records the panel's events in ``window.__chat``.
RECORDER = """
window.__chat = {chunks: [], messages: [], statuses: [], typing: [], errors: [], sessions: []};
for (const [name, key] of [['chunk', 'chunks'], ['message', 'messages'], ['status', 'statuses'],
                           ['typing', 'typing'], ['error', 'errors'], ['session', 'sessions']]) {
  window.addEventListener('archon-chat:' + name, (e) => window.__chat[key].push(e.detail));
}
"""


def new_context(browser: Browser, **options: Any) -> BrowserContext:
    context = browser.new_context(viewport={"width": 1280, "height": 800}, **options)
    context.set_default_timeout(WAIT_MS)
    context.add_init_script(RECORDER)
    return context


class Panel:
    """The <archon-chat-panel> of a page, seen the way a user sees it."""

    def __init__(self, page: Page, selector: str = "archon-chat-panel") -> None:
        self.page = page
        self.host = page.locator(selector)
        self.status = self.host.locator(".status")
        self.input = self.host.locator("textarea")
        self.typing = self.host.locator(".typing")
        self.stop_button = self.host.locator("button.stop")
        self.user_bubbles = self.host.locator(".log .msg.user")
        self.agent_bubbles = self.host.locator(".log .msg.agent")
        self.pending = self.host.locator(".outbox .msg.user")

    def wait_status(self, *statuses: str) -> str:
        """Wait until the status badge shows one of ``statuses``; return the one shown."""
        either = ", ".join(f".status[data-status='{s}']" for s in statuses)
        self.host.locator(either).wait_for()
        return str(self.status.get_attribute("data-status"))

    def send(self, text: str) -> None:
        self.input.fill(text)
        self.input.press("Enter")

    def session_id(self) -> str:
        value = self.page.evaluate("document.querySelector('archon-chat-panel').sessionId")
        assert isinstance(value, str)
        return value

    def agent_text(self, index: int = -1) -> str:
        return self.agent_bubbles.nth(index).locator(".bubble").inner_text().strip()

    def wait_turn_done(self) -> None:
        """The reply ended: typing off and no bubble streaming."""
        self.typing.wait_for(state="hidden")
        self.host.locator(".msg.streaming").wait_for(state="detached")

    def wait_agent_text(self, fragment: str, index: int = -1) -> None:
        """Wait until the agent bubble ``index`` shows ``fragment``."""
        self.page.wait_for_function(
            """([fragment, index]) => {
                const root = document.querySelector('archon-chat-panel').shadowRoot;
                const all = root.querySelectorAll('.log .msg.agent .bubble');
                const bubble = all[index < 0 ? all.length + index : index];
                return Boolean(bubble && bubble.innerText.includes(fragment));
            }""",
            arg=[fragment, index],
        )

    def last_message(self, sender: str) -> dict[str, Any]:
        """The last ChatMessage of ``sender`` the panel received live."""
        message = self.page.evaluate(
            """(sender) => window.__chat.messages.map((d) => d.message)
                 .filter((m) => m.sender === sender).at(-1)""",
            sender,
        )
        assert isinstance(message, dict), f"no {sender} message received"
        return message

    def chunks_of(self, message_id: str) -> str:
        """Concatenation of every stream_chunk delta the panel received for a reply."""
        text = self.page.evaluate(
            """(id) => window.__chat.chunks
                 .filter((c) => c.payload.message_id === id)
                 .map((c) => c.content).join('')""",
            message_id,
        )
        assert isinstance(text, str)
        return text

    def watch_text(
        self, until: str, index: int = -1, timeout_s: float = WAIT_MS / 1000
    ) -> list[str]:
        """Every distinct text the agent bubble shows until it shows ``until``."""
        seen: list[str] = []
        deadline = time.monotonic() + timeout_s
        bubble = self.agent_bubbles.nth(index).locator(".bubble")
        while True:
            try:
                text = bubble.inner_text(timeout=1000).strip()
            except Exception:  # not rendered yet
                text = ""
            if text and (not seen or seen[-1] != text):
                seen.append(text)
            if text == until:
                return seen
            if time.monotonic() > deadline:
                raise AssertionError(f"the reply never became {until!r}; saw {seen!r}")
            time.sleep(0.02)


def iter_prefix_violations(states: Sequence[str], final: str) -> Iterator[str]:
    """States that are not a prefix of the final text (a gap or a duplicate shows here)."""
    squashed_final = " ".join(final.split())
    for state in states:
        if not squashed_final.startswith(" ".join(state.split())):
            yield state
