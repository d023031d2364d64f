"""Redis servers for the tests: the machine's (127.0.0.1:6379, or
``ARCHON_CHAT_TEST_REDIS_URL``) when it answers PING, else a private ``redis-server`` this
module starts (Debian's binary, on a free port, nothing persisted). Never a skip: without
either, the tests fail.

Tests share a server but not keys: ``redis_url`` hands each test a key prefix of its own
and deletes every key under it afterwards. ``private_redis`` is a server of the test's
own, which it may stop, kill and start again on the same port (the outage tests).

The cleanup speaks RESP over a plain socket, so it needs no event loop and no client
library.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import pytest

SHARED_URL = os.environ.get("ARCHON_CHAT_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
READY_TIMEOUT_S = 10.0
STOP_TIMEOUT_S = 10.0

Reply = bytes | int | list["Reply"] | None


class RespError(Exception):
    """The server answered a command with an error reply."""


class RespConnection:
    """A minimal synchronous RESP2 client: enough for PING, SELECT, SCAN and DEL."""

    def __init__(self, host: str, port: int, *, timeout_s: float = 2.0) -> None:
        self._sock = socket.create_connection((host, port), timeout=timeout_s)
        self._file = self._sock.makefile("rb")

    @classmethod
    def to_url(cls, url: str, *, timeout_s: float = 2.0) -> RespConnection:
        """Connected to ``redis://host:port/db``, with ``db`` selected."""
        parts = urlsplit(url)
        conn = cls(parts.hostname or "127.0.0.1", parts.port or 6379, timeout_s=timeout_s)
        db = parts.path.strip("/")
        if db and db != "0":
            conn.command("SELECT", db)
        return conn

    def close(self) -> None:
        self._file.close()
        self._sock.close()

    def __enter__(self) -> RespConnection:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def command(self, *args: str | bytes) -> Reply:
        parts = [f"*{len(args)}\r\n".encode()]
        for arg in args:
            data = arg.encode() if isinstance(arg, str) else arg
            parts.append(b"$%d\r\n%s\r\n" % (len(data), data))
        self._sock.sendall(b"".join(parts))
        return self._reply()

    def _reply(self) -> Reply:
        line = self._file.readline()
        if not line.endswith(b"\r\n"):
            raise ConnectionError("Redis closed the connection")
        kind, body = line[:1], line[1:-2]
        if kind == b"+":
            return body
        if kind == b"-":
            raise RespError(body.decode(errors="replace"))
        if kind == b":":
            return int(body)
        if kind == b"$":
            size = int(body)
            if size < 0:
                return None
            data = self._file.read(size + 2)
            return data[:-2]
        if kind == b"*":
            count = int(body)
            return None if count < 0 else [self._reply() for _ in range(count)]
        raise ConnectionError(f"not a RESP reply: {line[:40]!r}")


def ping(url: str, *, timeout_s: float = 1.0) -> bool:
    """Whether a Redis server at ``url`` answers PING."""
    try:
        with RespConnection.to_url(url, timeout_s=timeout_s) as conn:
            return conn.command("PING") == b"PONG"
    except (OSError, RespError):
        return False


def _glob_escape(text: str) -> str:
    return "".join(f"\\{c}" if c in "*?[]\\" else c for c in text)


def delete_prefix(url: str, prefix: str) -> int:
    """Delete every key starting with ``prefix`` (SCAN MATCH, then DEL); how many went."""
    deleted = 0
    with RespConnection.to_url(url, timeout_s=10.0) as conn:
        cursor = b"0"
        while True:
            reply = conn.command(
                "SCAN", cursor, "MATCH", _glob_escape(prefix) + "*", "COUNT", "1000"
            )
            assert isinstance(reply, list) and len(reply) == 2, reply
            cursor_reply, keys = reply
            assert isinstance(cursor_reply, bytes) and isinstance(keys, list), reply
            batch = [k for k in keys if isinstance(k, bytes)]
            if batch:
                removed = conn.command("DEL", *batch)
                assert isinstance(removed, int), removed
                deleted += removed
            cursor = cursor_reply
            if cursor == b"0":
                return deleted


def keys_with_prefix(url: str, prefix: str) -> list[bytes]:
    """Every key starting with ``prefix`` (for assertions)."""
    found: list[bytes] = []
    with RespConnection.to_url(url) as conn:
        cursor = b"0"
        while True:
            reply = conn.command(
                "SCAN", cursor, "MATCH", _glob_escape(prefix) + "*", "COUNT", "1000"
            )
            assert isinstance(reply, list) and len(reply) == 2, reply
            cursor_reply, keys = reply
            assert isinstance(cursor_reply, bytes) and isinstance(keys, list), reply
            found.extend(k for k in keys if isinstance(k, bytes))
            cursor = cursor_reply
            if cursor == b"0":
                return found


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _redis_server_binary() -> str:
    for candidate in ("/usr/bin/redis-server", shutil.which("redis-server")):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    raise RuntimeError(
        f"no Redis answers at {SHARED_URL} and no redis-server to start one: "
        "`make test` installs Debian's redis-server"
    )


class PrivateRedis:
    """A ``redis-server`` of our own on 127.0.0.1, persisting nothing.

    ``stop()`` and ``kill()`` end it; ``start()`` brings it back on the same port, empty;
    ``pause()`` and ``resume()`` hang it and let it go on.
    Each call blocks until the server is ready or gone (tens of milliseconds).
    """

    def __init__(self, port: int = 0) -> None:
        self.port = port or free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="archon-chat-redis-"))
        self.log_path = self.dir / "redis.log"
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def description(self) -> str:
        return f"a private Redis server on 127.0.0.1:{self.port}"

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    @property
    def pid(self) -> int | None:
        return self._process.pid if self.running and self._process else None

    def start(self) -> None:
        """Start the server (if not running) and wait until it answers PING."""
        if self.running:
            return
        with open(self.log_path, "ab") as log:
            self._process = subprocess.Popen(
                [
                    _redis_server_binary(),
                    "--port",
                    str(self.port),
                    "--bind",
                    "127.0.0.1",
                    "--save",
                    "",
                    "--appendonly",
                    "no",
                    "--dir",
                    str(self.dir),
                    "--daemonize",
                    "no",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        deadline = time.monotonic() + READY_TIMEOUT_S
        while not ping(self.url, timeout_s=0.5):
            if self._process.poll() is not None:
                raise RuntimeError(f"redis-server exited at start:\n{self.log_tail()}")
            if time.monotonic() > deadline:
                self.kill()
                raise RuntimeError(
                    f"redis-server not ready in {READY_TIMEOUT_S} s:\n{self.log_tail()}"
                )
            time.sleep(0.01)

    def stop(self) -> None:
        """SIGTERM, and wait for the process to end (SIGKILL past a deadline)."""
        self._end(signal.SIGTERM)

    def kill(self) -> None:
        """SIGKILL, and reap the process."""
        self._end(signal.SIGKILL)

    def pause(self) -> None:
        """SIGSTOP: connections stay open but nothing answers (a hung server, not a dead one)."""
        assert self._process is not None and self.running, "not running"
        self._process.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        """SIGCONT: carry on where ``pause()`` stopped it, keys and connections intact."""
        assert self._process is not None and self.running, "not running"
        self._process.send_signal(signal.SIGCONT)

    def _end(self, sig: signal.Signals) -> None:
        process = self._process
        if process is None:
            return
        if process.poll() is None:
            process.send_signal(sig)
            process.send_signal(signal.SIGCONT)  # a paused server would keep SIGTERM pending
            try:
                process.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        self._process = None

    def close(self) -> None:
        """Stop the server and remove its folder."""
        self.kill()
        shutil.rmtree(self.dir, ignore_errors=True)

    def log_tail(self, lines: int = 30) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""
        return "\n".join(text.splitlines()[-lines:])


def start_private_redis(attempts: int = 3) -> PrivateRedis:
    """A running private server; a port taken between choosing and binding it is retried."""
    for attempt in range(attempts):
        server = PrivateRedis()
        try:
            server.start()
            return server
        except RuntimeError:
            server.close()
            if attempt == attempts - 1:
                raise
    raise AssertionError("unreachable")


@dataclass(frozen=True)
class RedisTarget:
    """Where a test's keys go: a server URL and a key prefix of the test's own."""

    url: str
    prefix: str


@contextlib.contextmanager
def any_server(shared_url: str = SHARED_URL) -> Iterator[tuple[str, str]]:
    """(url, description) of the machine's server if it answers, else of a private one."""
    if ping(shared_url):
        parts = urlsplit(shared_url)
        yield shared_url, f"the Redis server at {parts.hostname}:{parts.port}"
        return
    server = start_private_redis()
    try:
        yield server.url, server.description
    finally:
        server.close()


@contextlib.contextmanager
def prefixed(url: str) -> Iterator[RedisTarget]:
    """``url`` with a fresh key prefix (``t<8 hex>:``); its keys are deleted on the way out."""
    target = RedisTarget(url, f"t{secrets.token_hex(4)}:")
    try:
        yield target
    finally:
        delete_prefix(target.url, target.prefix)


# -- fixtures (registered in tests/conftest.py) ----------------------------------------

#: the servers this run used, for the summary line
SERVERS_USED: list[str] = []
PRIVATE_USED = "private Redis servers on free ports, for the outage tests"


@pytest.fixture(scope="session")
def redis_server() -> Iterator[str]:
    """The URL of this run's shared Redis server."""
    with any_server() as (url, description):
        SERVERS_USED.append(description)
        yield url


@pytest.fixture
def redis_url(redis_server: str) -> Iterator[RedisTarget]:
    """The shared server and a key prefix of this test's own, whose keys go at teardown."""
    with prefixed(redis_server) as target:
        yield target


@pytest.fixture
def private_redis() -> Iterator[PrivateRedis]:
    """A running server of this test's own, which it may stop and start; gone afterwards."""
    server = start_private_redis()
    if PRIVATE_USED not in SERVERS_USED:
        SERVERS_USED.append(PRIVATE_USED)
    try:
        yield server
    finally:
        server.close()
