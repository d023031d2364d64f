"""A fast mock agents service: the agents SSE contract, driven by its prompt.

It answers ``POST /agents/{agent_type}/stream`` with ``text/event-stream`` (design.md
section 3): ``data: {"type": "stream_chunk", "content": ...}`` events, then
``data: {"type": "stream_complete"}``. Its shape comes from the prompt, so one running
service serves every scenario::

    bench n=<chunks> size=<chars per chunk> pace=<seconds between chunks>
          first=<seconds before the first chunk> id=<stream token> tag=<reply tag>
          [digest=1]

Each chunk's content starts with a marker ``~<tag>.<index>:<send time>~`` (the send time is
``time.monotonic()``, a clock shared by every process of the machine), padded with dots
to ``size`` characters, so a client can measure each chunk's latency and find gaps and
duplicates even when chunks were merged on the way.

For every stream token it records when the stream started and ended and how: complete,
or the moment the client disconnected (a watcher waits on the socket's readability
while the chunks go out, so a disconnect is seen when it happens, not at the next
write), and, for a stream that asked with ``digest=1``, the SHA-256 of the text it sent (its
chunks' contents in order: what a client's final text must equal). ``GET /stats?prefix=<p>``
returns those records; ``POST /reset`` forgets them.

It must never be the bottleneck: plain non-blocking sockets under trio's low-level
wait functions, a hand-written HTTP/1.1 reader for the one client it expects (httpx),
responses framed with chunked transfer encoding so connections stay alive. Paced
streams are written by one :class:`Pacer` task from a heap of due times (a sleeping
task per stream cost ~45 us of CPU per chunk; the heap costs a few); a stream's own
task only steps in when its socket is full. Streams at pace 0 write back to back.
"""

from __future__ import annotations

import argparse
import hashlib
import heapq
import itertools
import json
import re
import socket
import sys
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, urlsplit

import trio

MAX_HEAD = 64 * 1024
MAX_BODY = 4 * 1024 * 1024
#: records kept for /stats; the oldest go first past it
MAX_RECORDS = 200_000
#: chunks written back to back at pace 0 before yielding to other streams
BURST = 8
MARKER = re.compile(r"~(\w+)\.(\d+):(\d+\.\d+)~")
SPEC_FIELD = re.compile(r"(\w+)=(\S+)")
AGENTS = ("rag", "document", "task")


@dataclass(frozen=True, slots=True)
class StreamSpec:
    n: int = 20
    size: int = 48
    pace: float = 0.0
    first: float = 0.0
    token: str = ""
    #: marks this reply's chunks, so a late chunk of an earlier reply is never counted
    tag: str = "x"
    #: record the SHA-256 of the text sent (the chunks' contents in order), for /stats
    digest: bool = False


def parse_spec(prompt: str) -> StreamSpec:
    """The stream a prompt asks for; anything not of the grammar gets the defaults."""
    if not prompt.startswith("bench "):
        return StreamSpec()
    fields = dict(SPEC_FIELD.findall(prompt))
    return StreamSpec(
        n=max(0, min(int(fields.get("n", 20)), 1_000_000)),
        size=max(0, min(int(fields.get("size", 48)), 1_000_000)),
        pace=max(0.0, float(fields.get("pace", 0.0))),
        first=max(0.0, float(fields.get("first", 0.0))),
        token=fields.get("id", ""),
        tag=fields.get("tag", "x") if fields.get("tag", "x").isalnum() else "x",
        digest=fields.get("digest") == "1",
    )


def spec_prompt(spec: StreamSpec) -> str:
    return (
        f"bench n={spec.n} size={spec.size} pace={spec.pace} first={spec.first} "
        f"id={spec.token} tag={spec.tag}" + (" digest=1" if spec.digest else "")
    )


def chunk_content(index: int, sent: float, size: int, tag: str = "x") -> str:
    marker = f"~{tag}.{index}:{sent:.6f}~"
    return marker + "." * (size - len(marker)) if size > len(marker) else marker


def markers(content: str) -> list[tuple[str, int, float]]:
    """(tag, index, send time) of every chunk marker in ``content``."""
    return [(tag, int(i), float(t)) for tag, i, t in MARKER.findall(content)]


def _http_chunk(payload: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(payload), payload)


def _sse_chunk(content: str) -> bytes:
    # The content is ASCII without quotes or backslashes: no JSON escaping needed.
    return _http_chunk(b'data: {"type":"stream_chunk","content":"%s"}\n\n' % content.encode())


SSE_COMPLETE = _http_chunk(b'data: {"type":"stream_complete"}\n\n') + b"0\r\n\r\n"
STREAM_HEAD = (
    b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncache-control: no-cache\r\n"
    b"transfer-encoding: chunked\r\n\r\n"
)


@dataclass(slots=True)
class StreamRecord:
    token: str
    agent_type: str
    started: float
    n: int
    chunks_sent: int = 0
    status: str = "streaming"  # complete | disconnected
    ended: float | None = None
    #: the text sent so far, hashed (only for streams that asked for ``digest=1``)
    hasher: Any = None

    def sent(self, content: str) -> None:
        """One chunk's content went out (wholly, or its rest is pending in order)."""
        self.chunks_sent += 1
        if self.hasher is not None:
            self.hasher.update(content.encode())

    def to_json(self) -> dict[str, Any]:
        return {
            "text_sha256": None if self.hasher is None else self.hasher.hexdigest(),
            "agent_type": self.agent_type,
            "started": self.started,
            "n": self.n,
            "chunks_sent": self.chunks_sent,
            "status": self.status,
            "ended": self.ended,
        }


class Disconnected(Exception):
    pass


async def _recv(conn: socket.socket) -> bytes:
    while True:
        try:
            return conn.recv(65536)
        except BlockingIOError:
            await trio.lowlevel.wait_readable(conn)
        except OSError as exc:
            raise Disconnected from exc


async def _send_all(conn: socket.socket, data: bytes) -> None:
    view = memoryview(data)
    while view:
        try:
            sent = conn.send(view)
        except BlockingIOError:
            await trio.lowlevel.wait_writable(conn)
            continue
        except OSError as exc:
            raise Disconnected from exc
        view = view[sent:]


def _response(status: str, body: bytes, content_type: bytes = b"application/json") -> bytes:
    return b"HTTP/1.1 %s\r\ncontent-type: %s\r\ncontent-length: %d\r\n\r\n%s" % (
        status.encode(),
        content_type,
        len(body),
        body,
    )


class PacedStream:
    """A paced stream between the :class:`Pacer` and its own task."""

    __slots__ = ("conn", "due", "index", "pending", "record", "spec", "state", "wake")

    def __init__(self, conn: socket.socket, spec: StreamSpec, record: StreamRecord) -> None:
        self.conn = conn
        self.spec = spec
        self.record = record
        self.index = 0
        self.due = 0.0
        self.pending = b""
        #: QUEUED (in the heap), BLOCKED (its task flushes), DONE, GONE (disconnected)
        self.state = "QUEUED"
        self.wake = trio.Event()


class Pacer:
    """Writes the next chunk of every paced stream that is due, from one task."""

    def __init__(self, agent: MockAgent) -> None:
        self.agent = agent
        self.heap: list[tuple[float, int, PacedStream]] = []
        self.order = itertools.count()
        self.changed = trio.Event()

    def add(self, stream: PacedStream, due: float) -> None:
        stream.due = due
        stream.state = "QUEUED"
        if not self.heap or due < self.heap[0][0]:
            self.changed.set()
        heapq.heappush(self.heap, (due, next(self.order), stream))

    async def run(self) -> None:
        while True:
            if not self.heap or self.heap[0][0] > trio.current_time():
                with trio.move_on_at(self.heap[0][0] if self.heap else float("inf")):
                    await self.changed.wait()
                self.changed = trio.Event()
                continue
            # Serve everything due within half a millisecond in one round.
            now = trio.current_time()
            limit = now + 0.0005
            while self.heap and self.heap[0][0] <= limit:
                _, _, stream = heapq.heappop(self.heap)
                if stream.state == "QUEUED":
                    self._write(stream, now)
            await trio.lowlevel.checkpoint()

    def _write(self, stream: PacedStream, now: float) -> None:
        spec = stream.spec
        content = chunk_content(stream.index, time.monotonic(), spec.size, spec.tag)
        data = _sse_chunk(content)
        try:
            sent = stream.conn.send(data)
        except BlockingIOError:
            sent = 0
        except OSError:
            stream.state = "GONE"
            stream.wake.set()
            return
        stream.index += 1
        stream.record.sent(content)
        self.agent.chunks_total += 1
        # Keep the schedule, but never burst to catch up after a stall.
        stream.due = max(stream.due + spec.pace, now)
        if sent < len(data):
            stream.pending = data[sent:]
            stream.state = "BLOCKED"
            stream.wake.set()
        elif stream.index >= spec.n:
            stream.state = "DONE"
            stream.wake.set()
        else:
            self.add(stream, stream.due)


class MockAgent:
    """The service's state: stream records and counters."""

    def __init__(self) -> None:
        self.pacer = Pacer(self)
        self.records: OrderedDict[str, StreamRecord] = OrderedDict()
        self.active = 0
        self.streams_total = 0
        self.chunks_total = 0
        self.connections = 0

    async def serve(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Serve until cancelled; reports the bound port through ``task_status``."""
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind((host, port))
        listener.listen(4096)
        listener.setblocking(False)
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self.pacer.run)
                task_status.started(listener.getsockname()[1])
                while True:
                    await trio.lowlevel.wait_readable(listener)
                    # Drain the accept queue: connects arrive in bursts of thousands.
                    while True:
                        try:
                            conn, _ = listener.accept()
                        except BlockingIOError:
                            break
                        except OSError:
                            # A client that gave up before its accept (ECONNABORTED), or
                            # out of descriptors for a moment: neither ends the service.
                            await trio.sleep(0.001)
                            break
                        conn.setblocking(False)
                        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                        nursery.start_soon(self._connection, conn)
        finally:
            listener.close()

    async def _connection(self, conn: socket.socket) -> None:
        self.connections += 1
        buf = bytearray()
        try:
            while True:
                request = await self._read_request(conn, buf)
                if request is None:
                    return
                method, target, body = request
                if not await self._route(conn, method, target, body):
                    return
        except Disconnected:
            pass
        finally:
            self.connections -= 1
            conn.close()

    async def _read_request(
        self, conn: socket.socket, buf: bytearray
    ) -> tuple[str, str, bytes] | None:
        while (end := buf.find(b"\r\n\r\n")) < 0:
            if len(buf) > MAX_HEAD:
                raise Disconnected
            data = await _recv(conn)
            if not data:
                if buf:
                    raise Disconnected
                return None
            buf += data
        head = bytes(buf[:end]).decode("latin-1")
        del buf[: end + 4]
        request_line, *header_lines = head.split("\r\n")
        method, target, _ = request_line.split(" ", 2)
        length = 0
        for line in header_lines:
            name, _, value = line.partition(":")
            if name.strip().lower() == "content-length":
                length = int(value.strip())
        if length > MAX_BODY:
            raise Disconnected
        while len(buf) < length:
            data = await _recv(conn)
            if not data:
                raise Disconnected
            buf += data
        body = bytes(buf[:length])
        del buf[:length]
        return method, target, body

    async def _route(self, conn: socket.socket, method: str, target: str, body: bytes) -> bool:
        """Answer one request; False when the connection must close."""
        url = urlsplit(target)
        parts = url.path.strip("/").split("/")
        if method == "POST" and len(parts) == 3 and parts[0] == "agents" and parts[2] == "stream":
            try:
                prompt = str(json.loads(body).get("prompt", ""))
                spec = parse_spec(prompt)
            except (ValueError, AttributeError):
                await _send_all(conn, _response("400 Bad Request", b'{"detail":"bad request"}'))
                return True
            return await self._stream(conn, parts[1], spec)
        if method == "GET" and url.path == "/health":
            reply = _response("200 OK", b'{"status":"ok"}')
        elif method == "GET" and url.path == "/agents":
            reply = _response("200 OK", json.dumps({"agents": list(AGENTS)}).encode())
        elif method == "GET" and url.path == "/stats":
            prefix = parse_qs(url.query).get("prefix", [""])[0]
            reply = _response("200 OK", json.dumps(self.stats(prefix)).encode())
        elif method == "POST" and url.path == "/reset":
            self.records.clear()
            reply = _response("200 OK", b"{}")
        else:
            reply = _response("404 Not Found", b'{"detail":"not found"}')
        await _send_all(conn, reply)
        return True

    def stats(self, prefix: str = "") -> dict[str, Any]:
        return {
            "active": self.active,
            "connections": self.connections,
            "streams_total": self.streams_total,
            "chunks_total": self.chunks_total,
            "streams": {
                token: record.to_json()
                for token, record in self.records.items()
                if token.startswith(prefix)
            },
        }

    async def _stream(self, conn: socket.socket, agent_type: str, spec: StreamSpec) -> bool:
        record = StreamRecord(spec.token, agent_type, time.monotonic(), spec.n)
        if spec.digest:
            record.hasher = hashlib.sha256()
        if spec.token:
            self.records[spec.token] = record
            if len(self.records) > MAX_RECORDS:
                self.records.popitem(last=False)
        self.active += 1
        self.streams_total += 1
        try:
            await _send_all(conn, STREAM_HEAD)
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._watch, conn, record, nursery.cancel_scope)
                # Caught here, inside: out of the nursery it would come wrapped in a group.
                try:
                    await self._write_chunks(conn, spec, record)
                    await _send_all(conn, SSE_COMPLETE)
                except Disconnected:
                    self._disconnected(record)
                else:
                    # No checkpoint between the last write and this line: the watcher
                    # cannot mistake the client's close after a whole stream for a cancel.
                    record.status, record.ended = "complete", time.monotonic()
                nursery.cancel_scope.cancel()
        except Disconnected:
            self._disconnected(record)
        finally:
            self.active -= 1
        return record.status == "complete"

    def _disconnected(self, record: StreamRecord) -> None:
        if record.status == "streaming":
            record.status, record.ended = "disconnected", time.monotonic()

    async def _watch(
        self, conn: socket.socket, record: StreamRecord, scope: trio.CancelScope
    ) -> None:
        # A client sends nothing while its response streams, so readability means it
        # closed (EOF or reset): record the moment and stop writing.
        await trio.lowlevel.wait_readable(conn)
        self._disconnected(record)
        scope.cancel()

    async def _write_chunks(
        self, conn: socket.socket, spec: StreamSpec, record: StreamRecord
    ) -> None:
        if spec.pace > 0:
            await self._write_paced(conn, spec, record)
            return
        if spec.first > 0:
            await trio.sleep(spec.first)
        for index in range(spec.n):
            if index % BURST == 0:
                await trio.lowlevel.checkpoint()
            content = chunk_content(index, time.monotonic(), spec.size, spec.tag)
            await _send_all(conn, _sse_chunk(content))
            record.sent(content)
            self.chunks_total += 1

    async def _write_paced(
        self, conn: socket.socket, spec: StreamSpec, record: StreamRecord
    ) -> None:
        stream = PacedStream(conn, spec, record)
        if spec.n == 0:
            return
        self.pacer.add(stream, trio.current_time() + spec.first)
        try:
            while True:
                await stream.wake.wait()
                stream.wake = trio.Event()
                if stream.state == "BLOCKED":
                    await _send_all(conn, stream.pending)
                    stream.pending = b""
                    if stream.index >= spec.n:
                        return
                    self.pacer.add(stream, max(stream.due, trio.current_time()))
                elif stream.state == "DONE":
                    return
                else:
                    raise Disconnected
        finally:
            # Cancelled (the client left) or finished: the pacer skips it from now on.
            if stream.state == "QUEUED":
                stream.state = "GONE"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.mock_agent", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args(argv)

    async def run() -> None:
        agent = MockAgent()
        async with trio.open_nursery() as nursery:
            port = await nursery.start(agent.serve, args.host, args.port)
            print(f"mock-agent: serving on http://{args.host}:{port}", flush=True)

    try:
        trio.run(run)
    except KeyboardInterrupt:
        sys.exit(0)


if __name__ == "__main__":
    main()
