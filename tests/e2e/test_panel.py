"""The browser panel in a real Chromium, against the real gateway and a scripted agents
service.

Each test drives the page the way a user does (type, Enter, Stop, reload) and checks what
the user sees, plus what the panel received (its ``archon-chat:*`` events, recorded by an
init script) and what the agents service saw. The gateway runs as an ``archon-chat serve``
subprocess (Playwright's sync API would block a trio loop); the agents service is a
threaded HTTP server in this process streaming slow scripted replies.

Ceilings: every browser wait is bounded by the context's default timeout
(``panel_support.WAIT_MS``, 15 s); starting the gateway by 30 s, stopping it by 10 s.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Browser, Dialog, Page, Playwright, sync_playwright

from .panel_support import (
    Gateway,
    Panel,
    Reply,
    ScriptedAgents,
    StaticSite,
    iter_prefix_violations,
    launch_chromium,
    new_context,
    words,
)

pytestmark = [pytest.mark.slow, pytest.mark.browser]

REPO = Path(__file__).resolve().parents[2]
#: ``make screenshot`` sets this to ``docs/panel.png``; a test run never writes the repository.
SCREENSHOT_ENV = "ARCHON_CHAT_PANEL_SCREENSHOT"
WEB = REPO / "archon_chat" / "web"
NODE_MODULES = REPO / "node_modules"
VENDOR = [
    NODE_MODULES / "socket.io-client" / "dist" / "socket.io.esm.min.js",
    NODE_MODULES / "marked" / "lib" / "marked.esm.js",
    NODE_MODULES / "dompurify" / "dist" / "purify.es.mjs",
]


def squash(text: str) -> str:
    return " ".join(text.split())


@pytest.fixture(scope="module")
def playwright() -> Iterator[Playwright]:
    with sync_playwright() as p:
        yield p


@pytest.fixture(scope="module")
def browser(playwright: Playwright) -> Iterator[Browser]:
    browser = launch_chromium(playwright)
    yield browser
    browser.close()


@pytest.fixture(scope="module")
def agents() -> Iterator[ScriptedAgents]:
    service = ScriptedAgents()
    service.start()
    yield service
    service.stop()


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory, agents: ScriptedAgents) -> Iterator[Gateway]:
    gw = Gateway(tmp_path_factory.mktemp("gateway"), agents.url)
    gw.start()
    yield gw
    gw.stop()


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    context = new_context(browser)
    page = context.new_page()
    yield page
    context.close()


def open_panel(page: Page, url: str) -> Panel:
    page.goto(url)
    panel = Panel(page)
    panel.wait_status("online")
    return panel


def test_reply_streams_in_progressively(
    gateway: Gateway, agents: ScriptedAgents, page: Page
) -> None:
    reply = agents.script("Tell me a story", Reply(words(24), first_delay_s=0.6))
    panel = open_panel(page, gateway.url)

    panel.send("Tell me a story")
    panel.typing.wait_for(state="visible")
    assert "typing" in panel.typing.inner_text()
    assert panel.stop_button.is_visible()
    states = panel.watch_text(until=reply.text.strip())
    panel.wait_turn_done()

    assert len(states) >= 4, f"the reply did not stream in: {states}"
    assert not list(iter_prefix_violations(states, reply.text))
    assert panel.user_bubbles.count() == 1
    assert panel.user_bubbles.locator(".bubble").inner_text() == "Tell me a story"
    message = panel.last_message("agent")
    assert message["content"] == reply.text
    assert message["status"] == "complete"
    assert panel.chunks_of(message["id"]) == reply.text
    assert page.evaluate("window.__chat.typing.map((t) => t.isTyping)") == [True, False]
    assert panel.stop_button.is_hidden()
    assert agents.prompts().count("Tell me a story") == 1


def test_stop_ends_the_reply_and_reaches_the_agent(
    gateway: Gateway, agents: ScriptedAgents, page: Page
) -> None:
    reply = agents.script("Write a long essay", Reply(words(300, "e"), delay_s=0.05))
    panel = open_panel(page, gateway.url)

    panel.send("Write a long essay")
    panel.wait_agent_text("e03")
    panel.stop_button.click()

    stopped = panel.host.locator(".log .msg.agent[data-status='cancelled']")
    stopped.wait_for()
    agents.wait_disconnect("Write a long essay")
    panel.wait_turn_done()
    assert "Stopped" in stopped.locator(".note").inner_text()
    shown = squash(panel.agent_text())
    assert squash(reply.text).startswith(shown)
    assert len(shown) < len(squash(reply.text))
    assert panel.stop_button.is_hidden()
    stored = gateway.session(panel.session_id())["messages"][-1]
    assert stored["status"] == "cancelled"
    assert squash(stored["content"]) == shown


def test_cut_connection_mid_reply_resumes_without_gap_or_duplicate(
    gateway: Gateway, agents: ScriptedAgents, page: Page
) -> None:
    reply = agents.script("Count slowly", Reply(words(40, "n"), delay_s=0.08))
    panel = open_panel(page, gateway.url)

    panel.send("Count slowly")
    panel.wait_agent_text("n04")
    before = panel.agent_text()
    page.context.set_offline(True)
    panel.wait_status("offline", "connecting")
    # While the browser is cut off, the agent keeps writing (the gateway holds the turn
    # for the grace period); the panel must catch up with exactly what it missed.
    received = page.evaluate("window.__chat.chunks.length")
    page.wait_for_timeout(1000)
    assert page.evaluate("window.__chat.chunks.length") == received, "the cut did not cut"
    page.context.set_offline(False)
    panel.wait_status("online")
    after = panel.watch_text(until=reply.text.strip())
    panel.wait_turn_done()

    assert not list(iter_prefix_violations([before, *after], reply.text))
    message = panel.last_message("agent")
    assert message["content"] == reply.text
    assert panel.chunks_of(message["id"]) == reply.text
    statuses = [s["status"] for s in page.evaluate("window.__chat.statuses")]
    assert statuses[-1] == "online"
    assert "online" in statuses[:-1]
    assert panel.agent_bubbles.count() == 1
    assert agents.prompts().count("Count slowly") == 1


def test_server_restart_sends_the_pending_message_once(
    tmp_path: Path, agents: ScriptedAgents, page: Page
) -> None:
    reply = agents.script("Sent while the server was down", Reply(words(8, "r")))
    gw = Gateway(tmp_path, agents.url)
    gw.start()
    try:
        panel = open_panel(page, gw.url)
        panel.send("First question")
        panel.wait_turn_done()
        panel.wait_agent_text("agent.")

        gw.stop()
        panel.wait_status("connecting", "offline")
        panel.send("Sent while the server was down")
        pending = panel.pending.filter(has_text="Sent while the server was down")
        pending.wait_for()
        assert pending.get_attribute("data-state") == "pending"
        assert "waiting for the connection" in pending.locator(".note").inner_text()
        assert "Sent while the server was down" not in agents.prompts()

        gw.start()  # same port, same database
        panel.wait_status("online")
        panel.pending.first.wait_for(state="detached")
        panel.wait_agent_text("r07", index=1)
        panel.wait_turn_done()

        texts = panel.user_bubbles.locator(".bubble").all_inner_texts()
        assert texts == ["First question", "Sent while the server was down"]
        assert panel.agent_text() == reply.text.strip()
        assert agents.prompts().count("Sent while the server was down") == 1
        stored = gw.session(panel.session_id())["messages"]
        sent = [m for m in stored if m["content"] == "Sent while the server was down"]
        assert len(sent) == 1
    finally:
        gw.stop()


def test_reload_keeps_the_conversation_even_mid_reply(
    gateway: Gateway, agents: ScriptedAgents, page: Page
) -> None:
    first = agents.script("Remember the number 42", Reply(["Noted: ", "42."]))
    second = agents.script("Keep talking", Reply(words(30, "k"), delay_s=0.08))
    panel = open_panel(page, gateway.url)
    panel.send("Remember the number 42")
    panel.wait_agent_text("Noted: 42.")
    panel.wait_turn_done()
    session_id = panel.session_id()

    panel.send("Keep talking")
    panel.wait_agent_text("k03")
    page.reload()
    panel.wait_status("online")
    assert panel.session_id() == session_id
    panel.watch_text(until=second.text.strip())
    panel.wait_turn_done()

    texts = panel.user_bubbles.locator(".bubble").all_inner_texts()
    assert texts == ["Remember the number 42", "Keep talking"]
    assert panel.agent_text(0) == first.text
    assert panel.agent_text(1) == second.text.strip()
    ids = page.evaluate(
        """() => [...document.querySelector('archon-chat-panel').shadowRoot
                  .querySelectorAll('.log .msg')].map((li) => li.dataset.messageId)"""
    )
    assert len(ids) == 4 and len(set(ids)) == 4

    page.reload()
    panel.wait_status("online")
    assert panel.agent_bubbles.count() == 2
    assert panel.agent_text(1) == second.text.strip()


def test_agent_markup_is_inert(gateway: Gateway, agents: ScriptedAgents, page: Page) -> None:
    hostile = (
        "Look: <img src=x onerror=\"window.__xss='img'\"> and "
        "<script>window.__xss='script'</script> and "
        "[a link](javascript:window.__xss='link') and **bold** text."
    )
    # Cut mid-tag so that partial markup is rendered while streaming, too.
    agents.script("Show me HTML", Reply([hostile[i : i + 9] for i in range(0, len(hostile), 9)]))
    dialogs: list[str] = []

    def on_dialog(dialog: Dialog) -> None:
        dialogs.append(dialog.message)
        dialog.dismiss()

    page.on("dialog", on_dialog)
    panel = open_panel(page, gateway.url)

    user_text = "<img src=x onerror=\"window.__xss='user'\">"
    panel.send(user_text)
    panel.send("Show me HTML")
    panel.wait_agent_text("bold", index=1)
    panel.wait_turn_done()

    bubble = panel.agent_bubbles.last.locator(".bubble")
    assert bubble.locator("strong").inner_text() == "bold"
    assert bubble.locator("script").count() == 0
    assert bubble.locator("img").count() == 0  # a stand-in link, never fetched
    for link in bubble.locator("a").all():
        assert not (link.get_attribute("href") or "").lower().startswith("javascript:")
    # The javascript: link is plain text, not a link that does nothing.
    assert "and a link and" in squash(bubble.inner_text())
    assert bubble.locator("a", has_text="a link").count() == 0
    assert panel.user_bubbles.first.locator(".bubble").inner_text() == user_text
    assert panel.user_bubbles.first.locator("img").count() == 0
    assert page.evaluate("window.__xss") is None
    assert dialogs == []


def test_agent_error_is_shown_in_the_conversation(
    gateway: Gateway, agents: ScriptedAgents, page: Page
) -> None:
    agents.script("Break please", Reply(["Partial "], error="the model is unavailable"))
    panel = open_panel(page, gateway.url)
    panel.send("Break please")
    failed = panel.host.locator(".log .msg.agent[data-status='failed']")
    failed.wait_for()
    panel.wait_turn_done()
    note = failed.locator(".note")
    assert "The agent could not answer this message." in note.inner_text()
    assert note.get_attribute("role") == "alert"
    assert "the model is unavailable" not in note.inner_text()  # until the reader asks
    note.locator("summary").click()
    assert "the model is unavailable (agent_error)" in note.locator("details").inner_text()
    assert panel.agent_text() == "Partial"


def test_a_reply_that_fails_before_any_text_shows_no_typing_placeholder(
    gateway: Gateway, agents: ScriptedAgents, page: Page
) -> None:
    agents.script("Fail at once", Reply([], first_delay_s=0.1, error="Agent service error: 500"))
    panel = open_panel(page, gateway.url)
    panel.send("Fail at once")
    failed = panel.host.locator(".log .msg.agent[data-status='failed']")
    failed.wait_for()
    panel.wait_turn_done()
    assert failed.locator(".bubble").is_hidden()  # no empty bubble, so no "…"
    placeholder = page.evaluate(
        """() => {
            const root = document.querySelector('archon-chat-panel').shadowRoot;
            const bubble = root.querySelector(".msg.agent[data-status='failed'] .bubble");
            return getComputedStyle(bubble).display;
        }"""
    )
    assert placeholder == "none"
    note = failed.locator(".note")
    assert note.is_visible()
    assert squash(note.inner_text()).startswith("The agent could not answer this message.")
    note.locator("summary").click()
    assert "Agent service error: 500" in note.locator("details").inner_text()


PNG_1X1 = bytes.fromhex(
    "89504e470d0a1a0a0000000d4948445200000001000000010806000000"
    "1f15c4890000000d49444154789c6360000002000154a24f5d0000000049454e44ae426082"
)


def test_images_in_replies_load_only_from_listed_hosts(
    gateway: Gateway, agents: ScriptedAgents, page: Page
) -> None:
    agents.script(
        "Show pictures",
        Reply(
            [
                "A pixel ![a tracking pixel](http://tracker.test/p.png?reader=1) ",
                "and a logo ![the logo](http://images.test/logo.png).",
            ]
        ),
    )
    fetched: list[str] = []
    page.on("request", lambda request: fetched.append(request.url))
    page.route(
        re.compile(r"^http://(tracker|images)\.test/"),
        lambda route: route.fulfill(status=200, content_type="image/png", body=PNG_1X1),
    )
    panel = open_panel(page, gateway.url)

    panel.send("Show pictures")
    panel.wait_agent_text("and a logo")
    panel.wait_turn_done()
    bubble = panel.agent_bubbles.last.locator(".bubble")
    assert bubble.locator("img").count() == 0
    links = bubble.locator("a.image-link")
    assert links.all_inner_texts() == ["[image: a tracking pixel]", "[image: the logo]"]
    assert links.first.get_attribute("href") == "http://tracker.test/p.png?reader=1"

    # The embedding page lists a host: its images load, the others still do not.
    page.evaluate(
        "document.querySelector('archon-chat-panel')"
        ".setAttribute('image-hosts', 'https://cdn.example http://images.test')"
    )
    with page.expect_request("http://images.test/logo.png"):
        panel.send("Show pictures")
    panel.wait_turn_done()
    bubble = panel.agent_bubbles.last.locator(".bubble")
    assert bubble.locator("img").get_attribute("src") == "http://images.test/logo.png"
    assert bubble.locator("a.image-link").all_inner_texts() == ["[image: a tracking pixel]"]
    assert not [url for url in fetched if "tracker.test" in url]


def test_switching_agent_starts_a_session_of_that_type(
    gateway: Gateway, agents: ScriptedAgents, page: Page
) -> None:
    panel = open_panel(page, gateway.url)
    first = panel.session_id()
    panel.host.locator(".agent-picker label", has_text="Task").click()
    page.wait_for_function(
        "(first) => { const p = document.querySelector('archon-chat-panel');"
        " return p.sessionId && p.sessionId !== first && p.agentType === 'task'; }",
        arg=first,
    )
    panel.wait_status("online")
    assert gateway.session(panel.session_id())["agent_type"] == "task"

    panel.host.locator(".options-toggle").click()
    panel.host.locator("select[name='detail_level']").select_option("high")
    panel.send("Plan a CSV export")
    panel.wait_turn_done()
    panel.wait_agent_text("agent.")
    request = next(r for r in reversed(agents.requests) if r.body["prompt"] == "Plan a CSV export")
    assert request.path == "/agents/task/stream"
    assert request.body["context"] == {"detail_level": "high"}


def test_auto_scroll_pauses_while_the_reader_scrolls_up(
    gateway: Gateway, agents: ScriptedAgents, page: Page
) -> None:
    lines = [f"line {i}\n\n" for i in range(90)]
    reply = agents.script("Many lines", Reply(lines, delay_s=0.06))
    panel = open_panel(page, gateway.url)
    scroller = panel.host.locator(".scroller")
    panel.send("Many lines")
    panel.wait_agent_text("line 25")
    at_bottom = scroller.evaluate("(s) => s.scrollHeight - s.scrollTop - s.clientHeight")
    assert at_bottom < 50
    # The reader scrolls up (and keeps at it until the panel has noticed, as a person
    # scrolling with a wheel would): new text must no longer pull the view down.
    page.wait_for_function(
        """() => {
            const root = document.querySelector('archon-chat-panel').shadowRoot;
            const s = root.querySelector('.scroller');
            const jump = root.querySelector('button.jump');
            if (s.scrollTop !== 0 && jump.hidden) s.scrollTo(0, 0);
            return s.scrollTop === 0 && !jump.hidden;
        }"""
    )
    panel.wait_agent_text("line 60")
    assert scroller.evaluate("(s) => s.scrollTop") == 0
    jump = panel.host.locator("button.jump")
    assert jump.is_visible()
    panel.wait_agent_text("line 89")
    panel.wait_turn_done()
    assert scroller.evaluate("(s) => s.scrollTop") == 0
    assert panel.last_message("agent")["content"] == reply.text
    jump.click()
    assert scroller.evaluate("(s) => s.scrollHeight - s.scrollTop - s.clientHeight") < 50


def test_hidden_panel_does_not_connect(gateway: Gateway, page: Page) -> None:
    traffic: list[str] = []
    page.on(
        "request",
        lambda r: traffic.append(r.url) if "/socket.io/" in r.url or "/api/" in r.url else None,
    )
    hidden_page = """<!doctype html><html><head>
      <script type="importmap">{"imports": {
        "socket.io-client": "/vendor/socket.io.esm.min.js",
        "marked": "/vendor/marked.esm.js", "dompurify": "/vendor/purify.es.mjs"}}</script>
      <script type="module" src="/static/archon-chat-panel.js"></script>
      </head><body style="height: 100vh; margin: 0; display: flex; justify-content: flex-end">
      <archon-chat-panel hidden></archon-chat-panel></body></html>"""
    page.route(
        f"{gateway.url}/embedded",
        lambda route: route.fulfill(status=200, content_type="text/html", body=hidden_page),
    )
    page.goto(f"{gateway.url}/embedded")
    page.wait_for_function("customElements.get('archon-chat-panel') !== undefined")
    # Two frames: IntersectionObserver has reported whatever it was going to report.
    page.evaluate("new Promise((r) => requestAnimationFrame(() => requestAnimationFrame(r)))")
    page.wait_for_timeout(300)
    assert traffic == []

    page.evaluate("document.querySelector('archon-chat-panel').hidden = false")
    Panel(page).wait_status("online")
    assert any("/api/agent-chat/sessions" in url for url in traffic)
    assert any("/socket.io/" in url for url in traffic)


def test_api_key_is_asked_once(tmp_path: Path, agents: ScriptedAgents, page: Page) -> None:
    gw = Gateway(tmp_path, agents.url, env={"ARCHON_CHAT_API_KEY": "s3cret-key"})
    gw.start()
    try:
        page.goto(gw.url)
        panel = Panel(page)
        dialog = panel.host.locator(".key-dialog")
        dialog.wait_for()
        key_input = dialog.locator("input")
        key_input.fill("wrong-key")
        key_input.press("Enter")
        dialog.locator(".key-text.error").wait_for()
        assert "refused" in dialog.locator(".key-text").inner_text()
        key_input.fill("s3cret-key")
        key_input.press("Enter")
        panel.wait_status("online")
        assert dialog.is_hidden()
        panel.send("Hello with a key")
        panel.wait_agent_text("agent.")
        panel.wait_turn_done()

        page.reload()
        panel.wait_status("online")
        assert dialog.is_hidden()
        assert panel.user_bubbles.count() == 1
    finally:
        gw.stop()


def test_screenshot_mid_stream(
    gateway: Gateway, agents: ScriptedAgents, page: Page, tmp_path: Path
) -> None:
    agents.script(
        "What is Archon?",
        Reply(
            [
                "**archon-chat** is a real-time chat gateway: a browser panel talks ",
                "Socket.IO to a Python server on trio, which streams each agent's reply ",
                "chunk by chunk.\n\nSources: `overview.md`, `architecture.md`",
            ],
            delay_s=0.02,
            first_delay_s=0.05,
        ),
    )
    resume = (
        "When the connection drops mid-reply, the panel **resumes without a gap**:\n\n"
        "1. socket.io-client reconnects with exponential backoff;\n"
        "2. the server replays what the socket missed (connection state recovery);\n"
        "3. otherwise the panel re-joins with `last_seq` and the gateway replays "
        "every event after it;\n"
        "4. events whose `seq` was already seen are dropped, so no text is repeated.\n\n"
        "Messages written while offline wait as *pending* and are sent once."
    )
    agents.script(
        "How does resume work?",
        Reply([resume[i : i + 6] for i in range(0, len(resume), 6)], delay_s=0.06),
    )
    panel = open_panel(page, gateway.url)
    panel.send("What is Archon?")
    panel.wait_agent_text("architecture.md")
    panel.wait_turn_done()
    panel.send("How does resume work?")
    panel.wait_agent_text("otherwise the panel", index=1)
    target = Path(os.environ.get(SCREENSHOT_ENV) or tmp_path / "panel.png")
    page.screenshot(path=str(target))
    assert target.stat().st_size > 10_000  # a real picture of the panel, not a blank page
    assert panel.host.locator(".msg.streaming").count() == 1
    panel.wait_turn_done()


def test_expired_session_is_replaced_and_the_message_still_goes_out(
    tmp_path: Path, agents: ScriptedAgents, page: Page
) -> None:
    agents.script("Are you still there?", Reply(["Yes, ", "in a new session."]))
    # Sessions expire 1.8 s after their last activity; the sweeper looks every 0.2 s.
    gw = Gateway(
        tmp_path,
        agents.url,
        env={"SESSION_TTL_HOURS": "0.0005", "ARCHON_CHAT_SWEEP_INTERVAL_S": "0.2"},
    )
    gw.start()
    try:
        panel = open_panel(page, gw.url)
        old = panel.session_id()
        gw.wait_session_gone(old)

        panel.send("Are you still there?")
        panel.wait_agent_text("in a new session.")
        panel.wait_turn_done()
        new = panel.session_id()
        assert new != old
        assert "new one was started" in panel.host.locator(".msg.system").inner_text()
        assert panel.user_bubbles.locator(".bubble").all_inner_texts() == ["Are you still there?"]
        sessions = page.evaluate("window.__chat.sessions.map((s) => s.sessionId)")
        assert sessions[-1] == new
        stored = page.evaluate("localStorage.getItem('archon-chat:session')")
        assert new in stored
    finally:
        gw.stop()


def test_embedded_in_a_page_of_another_origin(
    tmp_path: Path, agents: ScriptedAgents, page: Page
) -> None:
    """The README's plain-HTML example: the panel's files served by the host site, the
    gateway elsewhere, allowed by its CORS list."""
    files = {f"/chat/{p.name}": ("text/javascript", p.read_bytes()) for p in WEB.glob("*.js")}
    files.update({f"/vendor/{p.name}": ("text/javascript", p.read_bytes()) for p in VENDOR})
    site = StaticSite(files)
    gw = Gateway(tmp_path, agents.url, env={"ARCHON_CHAT_CORS_ORIGINS": site.url})
    gw.start()
    try:
        files["/"] = ("text/html", EMBEDDING_PAGE.replace("GATEWAY", gw.url).encode())
        panel = open_panel(page, f"{site.url}/")
        assert gw.session(panel.session_id())["agent_type"] == "document"
        panel.send("Hello from another site")
        panel.wait_agent_text("agent.")
        panel.wait_turn_done()
    finally:
        gw.stop()
        site.stop()


EMBEDDING_PAGE = """<!doctype html>
<html>
<head>
  <script type="importmap">
    {"imports": {"socket.io-client": "/vendor/socket.io.esm.min.js",
                 "marked": "/vendor/marked.esm.js",
                 "dompurify": "/vendor/purify.es.mjs"}}
  </script>
  <script type="module" src="/chat/archon-chat-panel.js"></script>
</head>
<body style="margin: 0; display: flex; height: 100vh">
  <main style="flex: 1">The host application</main>
  <archon-chat-panel server="GATEWAY" agent-type="document"></archon-chat-panel>
</body>
</html>
"""


def test_keyboard_and_labels(gateway: Gateway, page: Page) -> None:
    panel = open_panel(page, gateway.url)
    box = panel.host.get_by_role("textbox", name="Message")
    box.fill("line one")
    box.press("Shift+Enter")
    box.press_sequentially("line two")
    assert box.input_value() == "line one\nline two"
    assert panel.user_bubbles.count() == 0 and panel.pending.count() == 0
    box.press("Enter")
    panel.user_bubbles.first.wait_for()
    assert panel.user_bubbles.first.locator(".bubble").inner_text() == "line one\nline two"
    assert box.input_value() == ""

    assert panel.host.get_by_role("log", name="Conversation").get_attribute("aria-live")
    for name in ("Send message", "New conversation", "Agent options"):
        assert panel.host.get_by_role("button", name=name).count() == 1
    assert panel.host.get_by_role("radiogroup", name="Agent").count() == 1
    assert panel.host.get_by_role("separator", name="Resize chat panel").count() == 1
    # The agent picker is reachable by keyboard and switches agent with the arrows.
    panel.host.get_by_role("radio", name="RAG").focus()
    page.keyboard.press("ArrowRight")
    page.wait_for_function("document.querySelector('archon-chat-panel').agentType === 'document'")


def test_width_is_resizable_and_remembered(gateway: Gateway, page: Page) -> None:
    panel = open_panel(page, gateway.url)
    before = panel.host.bounding_box()
    handle = panel.host.locator(".resize").bounding_box()
    assert before is not None and handle is not None
    x, y = handle["x"] + handle["width"] / 2, handle["y"] + handle["height"] / 2
    page.mouse.move(x, y)
    page.mouse.down()
    page.mouse.move(x - 120, y, steps=6)
    page.mouse.up()
    after = panel.host.bounding_box()
    assert after is not None
    assert after["width"] == pytest.approx(before["width"] + 120, abs=2)

    page.reload()
    panel.wait_status("online")
    reloaded = panel.host.bounding_box()
    assert reloaded is not None
    assert reloaded["width"] == pytest.approx(after["width"], abs=2)


@pytest.mark.parametrize(
    ("scheme", "theme", "dark"),
    [
        ("light", None, False),
        ("dark", None, True),
        ("dark", "light", False),
        ("light", "dark", True),
    ],
)
def test_light_and_dark_schemes(
    gateway: Gateway, browser: Browser, scheme: str, theme: str | None, dark: bool
) -> None:
    context = new_context(browser, color_scheme=scheme)
    try:
        page = context.new_page()
        page.goto(gateway.url)
        if theme:
            page.evaluate(
                f"document.querySelector('archon-chat-panel').setAttribute('theme', '{theme}')"
            )
        background = page.evaluate(
            """() => getComputedStyle(document.querySelector('archon-chat-panel')
                     .shadowRoot.querySelector('.panel')).backgroundColor"""
        )
        red, green, blue = (int(v) for v in re.findall(r"\d+", background)[:3])
        luminance = (0.2126 * red + 0.7152 * green + 0.0722 * blue) / 255
        assert (luminance < 0.3) is dark, background
    finally:
        context.close()


USER_PAGE = """<!doctype html><html><head>
  <script type="importmap">{"imports": {
    "socket.io-client": "/vendor/socket.io.esm.min.js",
    "marked": "/vendor/marked.esm.js", "dompurify": "/vendor/purify.es.mjs"}}</script>
  <script type="module">
    import '/static/archon-chat-panel.js';
    const panel = document.querySelector('archon-chat-panel');
    panel.tokenProvider = () => window.mintToken();
    panel.hidden = false;
  </script>
  </head><body style="height: 100vh; margin: 0; display: flex; justify-content: flex-end">
  <archon-chat-panel hidden storage-key="user-mode"></archon-chat-panel></body></html>"""


def test_user_mode_tokens_refresh_and_recent_conversations(
    tmp_path: Path, agents: ScriptedAgents, page: Page
) -> None:
    import jwt

    secret = "a-secret-of-at-least-32-bytes-for-hs256!"
    env = {"ARCHON_CHAT_JWT_SECRET": secret, "ARCHON_CHAT_TOKEN_REFRESH_WINDOW_S": "2"}
    gw = Gateway(tmp_path, agents.url, env=env)
    gw.start()
    minted: list[float] = []

    def mint() -> str:
        minted.append(time.time())
        now = int(time.time())
        return jwt.encode({"sub": "alice", "iat": now, "exp": now + 4}, secret)

    try:
        page.expose_function("mintToken", mint)
        page.route(
            f"{gw.url}/user",
            lambda route: route.fulfill(status=200, content_type="text/html", body=USER_PAGE),
        )
        page.goto(f"{gw.url}/user")
        panel = Panel(page)
        panel.wait_status("online")
        assert minted, "the panel never asked the page for a token"
        panel.send("First conversation")
        panel.wait_agent_text("agent.")
        panel.wait_turn_done()
        first = panel.session_id()

        # The socket outlives several of its 4-second tokens: told before each expiry,
        # the panel hands the server a fresh token and stays connected.
        asked = len(minted)
        seen = page.evaluate("window.__chat.statuses.length")
        page.wait_for_timeout(6000)
        assert page.evaluate("(n) => window.__chat.statuses.slice(n)", seen) == []
        assert panel.status.get_attribute("data-status") == "online"
        assert len(minted) > asked

        page.evaluate("document.querySelector('archon-chat-panel').newConversation()")
        page.wait_for_function(
            "(id) => document.querySelector('archon-chat-panel').sessionId !== id", arg=first
        )
        panel.wait_status("online")
        assert panel.user_bubbles.count() == 0

        toggle = panel.host.locator(".recent-toggle")
        toggle.click()
        items = panel.host.locator(".recent-item")
        items.nth(1).wait_for()
        assert items.count() == 2
        panel.host.locator(f".recent-item[data-session-id='{first}']").click()
        panel.wait_status("online")
        assert panel.session_id() == first
        assert panel.user_bubbles.count() == 1
        assert "First conversation" in panel.user_bubbles.first.inner_text()
    finally:
        gw.stop()
